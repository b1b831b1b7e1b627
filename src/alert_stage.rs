//! The alert stage: a task that gathers what the gateway knows (latest vitals,
//! devices, backlog, certificate, disk), asks the pure rules in
//! `clinical::alert_rules` which causes hold, and drives the alert lifecycle in the
//! alert book (raise once; clinical alerts latch until acknowledged, technical
//! ones clear after the minimum hold; unacknowledged emergencies are announced
//! again; see `store::alert_book`).
//!
//! It evaluates as soon as new readings are committed (woken by
//! `StoreStats::changed`, at most once per `EVAL_GAP`; a `POLL` each second
//! catches a wake-up missed during an evaluation) and every `every`
//! regardless, so that silence, a growing backlog or an expiring certificate
//! are noticed when nothing arrives at all. It wakes the
//! uplink through `changed` whenever an alert is raised, so that it is published
//! at once when the broker is reachable; unpublished alerts stay in SQLite until
//! the broker acknowledges them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clinical::VitalSample;
use crate::clinical::alert_rules::{
    DeviceState, GatewayState, Lifecycle, Limits, ResidentState, Snapshot, evaluate,
};
use crate::model::Timestamp;
use crate::store::{AlertBook, Reader, StoreError, StoreStats};
use crate::system::health::Heartbeat;
use crate::uplink::UplinkStatus;

/// What can go wrong in the alert stage.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// Reading the state or writing the alert book failed.
    #[error("alert store: {0}")]
    Store(#[from] StoreError),
    /// The blocking task that talks to SQLite died.
    #[error("alert task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// How often the stage looks for newly committed readings when no commit
/// wakes it (`StoreStats::changed` is missed while an evaluation runs).
const POLL: Duration = Duration::from_secs(1);

/// The shortest time between two evaluations woken by commits.
const EVAL_GAP: Duration = Duration::from_millis(200);

/// After a step of the clock, how long the stage waits for ingest to have the
/// store correct the times stamped before it (ingest looks every second).
const CLOCK_SETTLE: Duration = Duration::from_secs(3);

/// The alert book shared by the stage, the web API and the uplink; every use is
/// short and blocking, so a plain mutex inside `spawn_blocking` is enough.
pub type SharedBook = Arc<Mutex<AlertBook>>;

/// Opens the shared book (blocking).
pub fn open_book(path: &std::path::Path) -> Result<SharedBook, StoreError> {
    Ok(Arc::new(Mutex::new(AlertBook::open(path)?)))
}

/// The alert stage's state and wiring.
pub struct AlertStage {
    pub book: SharedBook,
    pub reader: Reader,
    /// The database path, for the free-disk check.
    pub db_path: PathBuf,
    pub limits: Limits,
    /// How alerts live once raised (minimum hold, announcing again).
    pub lifecycle: Lifecycle,
    /// When the gateway started: no sensor is silent before it has been
    /// listening for `sensor_silent_after`.
    pub started_at: Timestamp,
    pub every: Duration,
    pub store_stats: Arc<StoreStats>,
    /// `None` when the uplink is disabled: no backlog or certificate alerts then.
    pub uplink: Option<Arc<UplinkStatus>>,
    /// Notified when alerts are raised, for the publisher.
    pub changed: Arc<Notify>,
    pub heartbeat: Heartbeat,
    /// The web stage's heartbeat (its probe's answers): `gateway/web` is
    /// raised when it stops. `None` in tests without a web server.
    pub web: Option<Heartbeat>,
    pub cancel: CancellationToken,
}

impl AlertStage {
    pub async fn run(mut self) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = u64::MAX;
        let mut last_eval: Option<tokio::time::Instant> = None;
        let mut clock = crate::system::clock::ClockWatch::new();
        let mut settle_until: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                _ = poll.tick() => {}
                // A commit: evaluate now, not at the next tick, but at most once
                // every EVAL_GAP (a busy home commits several times a second).
                () = self.store_stats.changed.notified() => {
                    let wait = last_eval.map_or(Duration::ZERO, |t| EVAL_GAP.saturating_sub(t.elapsed()));
                    if !wait.is_zero() {
                        tokio::select! {
                            () = self.cancel.cancelled() => break,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            self.heartbeat.beat();
            // The clock was set: ingest has the store correct what was stamped
            // before the step; judging silence or staleness meanwhile would
            // compare old stamps with the new clock (docs/decisions/0014).
            if let Some(step) = clock.as_mut().and_then(|c| c.check()) {
                self.clock_stepped(step.delta_ms).await;
                settle_until = Some(tokio::time::Instant::now() + CLOCK_SETTLE);
            }
            if settle_until.is_some_and(|t| tokio::time::Instant::now() < t) {
                continue;
            }
            let committed = self.store_stats.readings_committed.load(Ordering::Relaxed);
            let due = last_eval.is_none_or(|t| t.elapsed() >= self.every);
            if committed == seen && !due {
                continue;
            }
            seen = committed;
            last_eval = Some(tokio::time::Instant::now());
            match self.evaluate_once(Timestamp::now()).await {
                Ok(r) => {
                    if r != crate::store::SyncReport::default() {
                        tracing::info!(raised = ?r.raised, cleared = ?r.cleared, resolved = ?r.resolved, announced_again = ?r.reannounced, "alerts changed");
                        // Pages hear of it now, not at the next reading.
                        self.store_stats.note_alerts_changed();
                    }
                    if !r.raised.is_empty() || !r.reannounced.is_empty() {
                        self.changed.notify_one();
                    }
                }
                Err(e) => tracing::error!(error = %e, "alert evaluation failed; retrying"),
            }
        }
    }

    /// The clock stepped: this run's alert times, stamped by the old clock
    /// between the gateway's start and now, move by the step, and so does the
    /// start.
    async fn clock_stepped(&mut self, delta_ms: i64) {
        let from_ms = self.started_at.unix_ms();
        let to_ms = Timestamp::now().unix_ms().saturating_sub(delta_ms);
        self.started_at = Timestamp::from_unix_ms(from_ms.saturating_add(delta_ms));
        let book = self.book.clone();
        let moved = tokio::task::spawn_blocking(move || {
            let mut book = book
                .lock()
                .map_err(|_| "the alert book's lock is poisoned".to_owned())?;
            book.clock_stepped(delta_ms, from_ms, to_ms)
                .map_err(|e| e.to_string())
        })
        .await;
        match moved {
            Ok(Ok(n)) => tracing::warn!(
                step_s = delta_ms / 1000,
                alert_times = n,
                "the clock was set (stepped): this run's alert times moved with it"
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot move the alert times by the clock's step")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot move the alert times by the clock's step")
            }
        }
    }

    /// Gathers the snapshot, evaluates the rules and syncs the book once.
    pub async fn evaluate_once(
        &self,
        now: Timestamp,
    ) -> Result<crate::store::SyncReport, AlertError> {
        let reader = self.reader.clone();
        let book = self.book.clone();
        let limits = self.limits.clone();
        let lifecycle = self.lifecycle;
        let started_at = self.started_at;
        let db_path = self.db_path.clone();
        let uplink = self.uplink.as_ref().map(|u| u.snapshot());
        let web_unanswered_for = self.web.as_ref().map(|b| b.last().age_at(now));
        tokio::task::spawn_blocking(move || {
            let thresholds = book
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .thresholds()?;
            let scales = book
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .spo2_scales()?;
            let residents = reader
                .residents_overview()?
                .into_iter()
                .map(|r| ResidentState {
                    id: r.id.0,
                    display_name: r.display_name,
                    room: r.room,
                    vitals: r
                        .latest
                        .iter()
                        .map(|l| VitalSample {
                            quantity: l.quantity,
                            value: l.value,
                            unit: l.unit,
                            taken_at: l.taken_at,
                            device_time: l.device_time,
                            device: Some(l.device),
                            reading_id: l.reading_id,
                        })
                        .collect(),
                    thresholds: thresholds.get(&r.id.0).copied(),
                    spo2_scale: scales.get(&r.id.0).copied().unwrap_or_default(),
                })
                .collect();
            let devices = book
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .device_states()?
                .into_iter()
                .map(
                    |(address, resident_id, last_seen, assigned_at, battery, renumbered)| {
                        DeviceState {
                            address,
                            resident_id,
                            last_seen,
                            assigned_at,
                            battery_percent: battery,
                            meter_renumbered: renumbered,
                        }
                    },
                )
                .collect();
            let stats = reader.stats()?;
            let gateway = GatewayState {
                backlog_age: uplink.as_ref().and(stats.oldest_unsent_age(now)),
                cert_days_left: uplink
                    .as_ref()
                    .and_then(|u| u.certificate_expires_at)
                    .map(|t| (t.unix_ms() - now.unix_ms()).div_euclid(86_400_000)),
                disk_free_bytes: crate::store::free_disk_bytes(&db_path),
                web_unanswered_for,
                uplink_held_readings: uplink.as_ref().map_or(0, |u| u.held_readings),
                database_damaged_at: stats
                    .damage
                    .as_ref()
                    .map(|d| d.at)
                    .or(stats.corruption.as_ref().map(|c| c.at)),
            };
            let eval = evaluate(
                &Snapshot {
                    residents,
                    devices,
                    gateway,
                    started_at: Some(started_at),
                },
                &limits,
                now,
            );
            Ok(book
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sync(&eval, &lifecycle, now)?)
        })
        .await?
    }
}
