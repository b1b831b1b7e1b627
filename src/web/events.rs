//! `GET /events`: server-sent events telling open pages that what they show has
//! changed, so that `live.js` re-fetches them.
//!
//! One watcher task per process compares counters (readings committed,
//! registry changes, the uplink's state and last error) when the store says it
//! committed, at most every [`MIN_GAP`], and once a second, and publishes on a
//! small broadcast channel; clients never touch SQLite. A slow
//! client that falls behind the channel's few slots is told `resync` (refresh
//! everything) instead of being buffered for, so memory does not grow with
//! slow clients. Streams carry a keep-alive comment every 15 s, end when the
//! daemon shuts down, and are capped at [`MAX_CLIENTS`] at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::store::StoreStats;
use crate::uplink::UplinkStatus;

/// Open event streams at most; each holds a connection (and, over HTTP/1.1, one
/// of a browser's six per host), so a page beyond the cap refreshes by itself.
pub const MAX_CLIENTS: usize = 64;
/// How often the watcher compares counters without being woken by a commit.
pub const TICK: Duration = Duration::from_secs(1);
/// The shortest time between two publications of changes: the delay a page can
/// add to a reading is this plus its fetch (the goal is 250 ms to the page).
pub const MIN_GAP: Duration = Duration::from_millis(150);
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Slots of the broadcast channel; a client further behind gets `resync`.
const SLOTS: usize = 16;

/// What changed; the event's name on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Readings were committed.
    Readings,
    /// Residents or devices changed (assignment, pairing, sightings, provisioning).
    Devices,
    /// The uplink's state or last error changed.
    Uplink,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Readings => "readings",
            Change::Devices => "devices",
            Change::Uplink => "uplink",
        }
    }
}

/// The broadcast side and the count of open streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Change>,
    clients: Arc<AtomicUsize>,
    /// Ends every stream at shutdown, so that graceful shutdown is not held up.
    cancel: CancellationToken,
}

impl Events {
    pub fn new(cancel: CancellationToken) -> Self {
        Events {
            tx: broadcast::channel(SLOTS).0,
            clients: Arc::new(AtomicUsize::new(0)),
            cancel,
        }
    }

    pub fn publish(&self, change: Change) {
        // No subscriber is not an error: nobody has a page open.
        let _ = self.tx.send(change);
    }

    /// Open event streams now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Compares the counters when the store says it committed (at most once
    /// every [`MIN_GAP`]) and every [`TICK`] (the uplink's state has no
    /// signal), and publishes what changed, until cancelled.
    pub async fn watch(self, stats: Arc<StoreStats>, uplink: Arc<UplinkStatus>) {
        let mut last = Seen::now(&stats, &uplink);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Registered before the counters are read, so that a commit made
            // between the reading and the waiting still wakes us.
            let committed = stats.changed.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            let now = Seen::now(&stats, &uplink);
            let changes = last.changes(&now);
            last = now;
            if !changes.is_empty() {
                for change in changes {
                    self.publish(change);
                }
                // Commits come every few tens of ms under load: pages hear of
                // them in groups, so that they fetch a few times a second, not
                // once per commit. Then look again at once.
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    () = tokio::time::sleep(MIN_GAP) => continue,
                }
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                _ = tick.tick() => {}
                () = committed => {}
            }
        }
    }
}

/// The counters the watcher compares.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    readings: u64,
    registry: u64,
    uplink: (&'static str, Option<crate::model::Timestamp>),
}

impl Seen {
    fn now(stats: &StoreStats, uplink: &UplinkStatus) -> Seen {
        let u = uplink.snapshot();
        Seen {
            readings: stats.readings_committed.load(Ordering::Relaxed),
            registry: stats.registry_changes.load(Ordering::Relaxed),
            uplink: (u.state.as_str(), u.last_error.map(|(t, _)| t)),
        }
    }

    fn changes(&self, now: &Seen) -> Vec<Change> {
        let mut out = Vec::new();
        if now.readings != self.readings {
            out.push(Change::Readings);
        }
        if now.registry != self.registry {
            out.push(Change::Devices);
        }
        if now.uplink != self.uplink {
            out.push(Change::Uplink);
        }
        out
    }
}

/// Decrements the count of open streams when a stream ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /events`
pub async fn stream(State(state): State<AppState>) -> Response {
    let events = state.events;
    let taken = events
        .clients
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_CLIENTS).then_some(n + 1)
        });
    if taken.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "60")],
            "Too many pages are open with live updates; this one will refresh by itself.",
        )
            .into_response();
    }
    let slot = Slot(events.clients.clone());
    let rx = events.tx.subscribe();
    let cancel = events.cancel.clone();
    let stream = futures_util::stream::unfold(
        (rx, slot, cancel),
        |(mut rx, slot, cancel)| async move {
            let event = tokio::select! {
                () = cancel.cancelled() => return None,
                r = rx.recv() => match r {
                    Ok(change) => Event::default().event(change.as_str()).data(change.as_str()),
                    // Behind by more than the channel holds: skip to now, refresh all.
                    Err(broadcast::error::RecvError::Lagged(_)) => Event::default().event("resync").data("resync"),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok::<_, std::convert::Infallible>(event), (rx, slot, cancel)))
        },
    );
    (
        [("cache-control", "no-store"), ("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_names_its_change() {
        let base = Seen {
            readings: 1,
            registry: 1,
            uplink: ("connected", None),
        };
        let check = |now: Seen, expected: &[Change]| assert_eq!(base.changes(&now), expected);
        check(base.clone(), &[]);
        check(
            Seen {
                readings: 2,
                ..base.clone()
            },
            &[Change::Readings],
        );
        check(
            Seen {
                registry: 5,
                ..base.clone()
            },
            &[Change::Devices],
        );
        check(
            Seen {
                uplink: ("connected", Some(crate::model::Timestamp::from_unix_ms(1))),
                ..base.clone()
            },
            &[Change::Uplink],
        );
        check(
            Seen {
                readings: 9,
                uplink: ("stopped", None),
                ..base.clone()
            },
            &[Change::Readings, Change::Uplink],
        );
    }

    /// A commit reaches open pages when the store says so, not at the next
    /// once-a-second look: with tokio's clock paused, the event arrives before
    /// any virtual time passes (the 1 s tick would need a whole second), and a
    /// commit made during the pause between two publications is published
    /// right after that pause, not a second later.
    #[tokio::test(start_paused = true)]
    async fn a_commit_is_published_without_waiting_for_the_tick() {
        let stats = Arc::new(StoreStats::default());
        let uplink = Arc::new(UplinkStatus::new(crate::uplink::ConnectionState::Disabled));
        let cancel = CancellationToken::new();
        let events = Events::new(cancel.clone());
        let mut rx = events.tx.subscribe();
        let watcher = tokio::spawn(events.clone().watch(stats.clone(), uplink));
        // Let the watcher take its first look and wait.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let commit = |stats: &StoreStats| {
            stats.readings_committed.fetch_add(1, Ordering::Relaxed);
            stats.changed.notify_waiters();
        };
        let t0 = tokio::time::Instant::now();
        commit(&stats);
        let first = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert_eq!(first.ok().and_then(Result::ok), Some(Change::Readings));
        assert!(t0.elapsed() < Duration::from_millis(10));
        // During the pause that follows a publication.
        commit(&stats);
        let second = tokio::time::timeout(MIN_GAP + Duration::from_millis(10), rx.recv()).await;
        assert_eq!(second.ok().and_then(Result::ok), Some(Change::Readings));
        assert!(t0.elapsed() <= MIN_GAP + Duration::from_millis(10));
        cancel.cancel();
        watcher.await.unwrap();
    }
}
