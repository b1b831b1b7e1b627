//! `GET /events`: server-sent events telling open pages that what they show has
//! changed, so that `live.js` re-fetches them.
//!
//! One watcher task per process compares counters once a second (readings
//! committed, registry changes, the uplink's state and last error) and
//! publishes on a small broadcast channel; clients never touch SQLite. A slow
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
/// How often the watcher compares counters.
pub const TICK: Duration = Duration::from_secs(1);
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

    /// Compares the counters every [`TICK`] and publishes what changed, until
    /// cancelled.
    pub async fn watch(self, stats: Arc<StoreStats>, uplink: Arc<UplinkStatus>) {
        let mut last = Seen::now(&stats, &uplink);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = Seen::now(&stats, &uplink);
            for change in last.changes(&now) {
                self.publish(change);
            }
            last = now;
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
}
