//! `GET /events`: server-sent events telling open pages that what they show has
//! changed, so that `live.js` re-fetches them.
//!
//! One watcher task per process compares counters (readings committed,
//! registry changes, alert book changes, the uplink's state and last error)
//! when the store says it committed or the alert stage says alerts changed, at most every [`MIN_GAP`], and once a second, and publishes on a
//! small broadcast channel; clients never touch SQLite. A slow
//! client that falls behind the channel's few slots is told `resync` (refresh
//! everything) instead of being buffered for, so memory does not grow with
//! slow clients. Streams carry a keep-alive comment every 15 s, end when the
//! daemon shuts down, and are capped at [`MAX_CLIENTS`] at once and
//! [`MAX_PER_USER`] per account, so one user (or one stolen session) cannot
//! take every place.
//!
//! A stream belongs to the session that opened it: sign-out ends it at once
//! ([`Events::end_session`]), and every [`KEEP_ALIVE`] it checks that its
//! session still holds (idle or absolute time-out, account disabled, password
//! reset) and ends when it does not. A tablet signed out never keeps receiving.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// Open event streams per account at most: a few tabs on a few devices.
pub const MAX_PER_USER: usize = 8;
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
    /// An alert was raised, cleared, resolved, announced again or acknowledged.
    Alerts,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Readings => "readings",
            Change::Devices => "devices",
            Change::Uplink => "uplink",
            Change::Alerts => "alerts",
        }
    }
}

/// The broadcast side and the count of open streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Change>,
    clients: Arc<AtomicUsize>,
    /// Streams per account and per session.
    owners: Arc<Mutex<Owners>>,
    /// Ends every stream at shutdown, so that graceful shutdown is not held up.
    cancel: CancellationToken,
}

impl Events {
    pub fn new(cancel: CancellationToken) -> Self {
        Events {
            tx: broadcast::channel(SLOTS).0,
            clients: Arc::new(AtomicUsize::new(0)),
            owners: Arc::default(),
            cancel,
        }
    }

    /// Ends every stream of the session with this token hash (sign-out).
    pub fn end_session(&self, session: &[u8; 32]) {
        let owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, _)) = owners.sessions.get(session) {
            token.cancel();
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
    alerts: u64,
    uplink: (&'static str, Option<crate::model::Timestamp>),
}

impl Seen {
    fn now(stats: &StoreStats, uplink: &UplinkStatus) -> Seen {
        let u = uplink.snapshot();
        Seen {
            readings: stats.readings_committed.load(Ordering::Relaxed),
            registry: stats.registry_changes.load(Ordering::Relaxed),
            alerts: stats.alert_changes.load(Ordering::Relaxed),
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
        if now.alerts != self.alerts {
            out.push(Change::Alerts);
        }
        out
    }
}

/// Who holds the open streams.
#[derive(Debug, Default)]
struct Owners {
    per_user: HashMap<String, usize>,
    /// A token that ends the session's streams, and how many it has.
    sessions: HashMap<[u8; 32], (CancellationToken, usize)>,
}

/// One stream's place: given back (in all, per user, per session) when it ends.
struct Slot {
    clients: Arc<AtomicUsize>,
    owners: Arc<Mutex<Owners>>,
    user: String,
    session: Option<[u8; 32]>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
        let mut o = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = o.per_user.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.per_user.remove(&self.user);
            }
        }
        if let Some(s) = self.session
            && let Some((_, n)) = o.sessions.get_mut(&s)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.sessions.remove(&s);
            }
        }
    }
}

fn too_many(words: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "60")],
        words,
    )
        .into_response()
}

/// What ends a stream besides shutdown.
enum End {
    /// The session was signed out or no longer holds.
    Session,
}

/// `GET /events`
pub async fn stream(
    State(state): State<AppState>,
    principal: Option<axum::Extension<super::auth::Principal>>,
) -> Response {
    let events = state.events.clone();
    let Some(axum::Extension(who)) = principal else {
        // The policy lets only signed-in callers here.
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let taken = events
        .clients
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_CLIENTS).then_some(n + 1)
        });
    if taken.is_err() {
        return too_many(
            "Too many pages are open with live updates; this one will refresh by itself.",
        );
    }
    let (session_token, slot) = {
        let mut o = events.owners.lock().unwrap_or_else(|p| p.into_inner());
        let mine = o.per_user.get(&who.username).copied().unwrap_or(0);
        if mine >= MAX_PER_USER {
            drop(o);
            events.clients.fetch_sub(1, Ordering::Relaxed);
            return too_many(
                "You have too many pages open with live updates; this one will refresh by itself.",
            );
        }
        *o.per_user.entry(who.username.clone()).or_insert(0) += 1;
        let token = who.session.map(|s| {
            let e = o
                .sessions
                .entry(s)
                .or_insert_with(|| (events.cancel.child_token(), 0));
            e.1 += 1;
            e.0.clone()
        });
        let slot = Slot {
            clients: events.clients.clone(),
            owners: events.owners.clone(),
            user: who.username.clone(),
            session: who.session,
        };
        (token.unwrap_or_else(|| events.cancel.child_token()), slot)
    };
    let rx = events.tx.subscribe();
    let mut check = tokio::time::interval(KEEP_ALIVE);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (accounts, limits, session) = (state.accounts.clone(), state.auth.limits, who.session);
    let stream = futures_util::stream::unfold(
        (rx, slot, session_token, check),
        move |(mut rx, slot, ended, mut check)| {
            let accounts = accounts.clone();
            async move {
                let event = loop {
                    let why = tokio::select! {
                        () = ended.cancelled() => Some(End::Session),
                        _ = check.tick() => {
                            // Still signed in? (Not counted as use of the session.)
                            let Some(hash) = session else { continue };
                            let accounts = accounts.clone();
                            let holds = tokio::task::spawn_blocking(move || {
                                accounts.session_unused(&hash, limits, crate::model::Timestamp::now())
                            })
                            .await;
                            match holds {
                                Ok(Ok(Some(_))) => None,
                                // Signed out, expired, disabled, or unreadable: end.
                                _ => Some(End::Session),
                            }
                        }
                        r = rx.recv() => match r {
                            Ok(change) => break Event::default().event(change.as_str()).data(change.as_str()),
                            // Behind by more than the channel holds: skip to now, refresh all.
                            Err(broadcast::error::RecvError::Lagged(_)) => break Event::default().event("resync").data("resync"),
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    };
                    if let Some(End::Session) = why {
                        return None;
                    }
                };
                Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (rx, slot, ended, check),
                ))
            }
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
            alerts: 1,
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
        check(
            Seen {
                alerts: 2,
                ..base.clone()
            },
            &[Change::Alerts],
        );
    }

    /// An alert raised (or acknowledged) reaches open pages at once, though no
    /// reading was committed: before, the overview heard of it only with the
    /// next reading, which in a quiet home can be minutes away.
    #[tokio::test(start_paused = true)]
    async fn an_alert_is_published_without_waiting_for_a_reading() {
        let stats = Arc::new(StoreStats::default());
        let uplink = Arc::new(UplinkStatus::new(crate::uplink::ConnectionState::Disabled));
        let cancel = CancellationToken::new();
        let events = Events::new(cancel.clone());
        let mut rx = events.tx.subscribe();
        let watcher = tokio::spawn(events.clone().watch(stats.clone(), uplink));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let t0 = tokio::time::Instant::now();
        stats.note_alerts_changed();
        let got = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert_eq!(got.ok().and_then(Result::ok), Some(Change::Alerts));
        assert!(t0.elapsed() < Duration::from_millis(10));
        cancel.cancel();
        watcher.await.unwrap();
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
