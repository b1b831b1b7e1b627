//! The supervisor: checks every stage's heartbeat and only then pings the systemd
//! watchdog, and keeps the STATUS line current.
//!
//! A watchdog ping here means "healthy", not "alive": when any registered stage
//! (sensor source, ingest, store writer, alerts, uplink) has made no progress for
//! [`WatchdogPlan::stall_after`], pings stop, the STATUS line names the stalled
//! stages, and systemd restarts the service once `WatchdogSec` passes without a
//! ping. A new stage is supervised by one line: `health.register("name")` before
//! the daemon freezes `Health` into an `Arc`.
//!
//! The web stage is registered with `register_self_healing`: its stall is
//! reported (STATUS `degraded: web …`, an error in the log, `/healthz` 503) but
//! the pings go on. Anyone on the care home's network can slow the staff pages
//! down; if that stopped the watchdog, systemd would kill the sensors, the
//! alerts and the uplink every `WatchdogSec` for as long as the attack lasted
//! and, after `StartLimitBurst`, leave the gateway failed. The web stage mends
//! itself instead (per-address connection limits, head and handshake time-outs,
//! and the probe shedding the busiest client: `web::conn`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::notify::Notifier;
use crate::model::Timestamp;

/// Every stage beats at least once a second even when idle (see each stage), so a
/// stage is only called stalled after clearly more than that.
pub const STALL_FLOOR: Duration = Duration::from_secs(3);

/// Without a systemd watchdog, a stage is reported stalled after this long (the
/// same window `/healthz` uses).
pub const STALL_WITHOUT_WATCHDOG: Duration = Duration::from_secs(30);

/// How often the STATUS line is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// When to ping and when to call a stage stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogPlan {
    /// `None`: no watchdog was asked for; only stalls are logged and reported.
    pub ping_every: Option<Duration>,
    /// A stage whose last beat is older than this is stalled.
    pub stall_after: Duration,
}

impl WatchdogPlan {
    /// Pings four times per `WatchdogSec` (systemd recommends at least twice), so a
    /// late tick never costs a restart. A stage is stalled after half the timeout
    /// but never sooner than [`STALL_FLOOR`]: a hung stage then stops the pings and
    /// systemd restarts the service at most `stall_after + timeout` after the hang.
    pub fn for_timeout(timeout: Option<Duration>) -> WatchdogPlan {
        match timeout {
            Some(t) => WatchdogPlan {
                ping_every: Some((t / 4).max(Duration::from_millis(10))),
                stall_after: (t / 2).max(STALL_FLOOR),
            },
            None => WatchdogPlan {
                ping_every: None,
                stall_after: STALL_WITHOUT_WATCHDOG,
            },
        }
    }
}

/// What the supervisor needs; `describe` writes the healthy STATUS line.
pub struct Supervisor<F> {
    pub health: Arc<Health>,
    pub notifier: Notifier,
    pub plan: WatchdogPlan,
    pub describe: F,
}

impl<F: Fn() -> String + Send + 'static> Supervisor<F> {
    /// Runs until `cancel`; the first STATUS goes out at once.
    pub async fn run(self, cancel: CancellationToken) {
        // Without a watchdog the stall check still runs, at the status cadence.
        let check_every = self.plan.ping_every.unwrap_or(STATUS_EVERY);
        let mut check = tokio::time::interval(check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(STATUS_EVERY);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled_before: Vec<&'static str> = Vec::new();
        loop {
            let refresh_status = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = check.tick() => false,
                _ = status.tick() => true,
            };
            let now = Timestamp::now();
            let stalled = self.health.stalled(now, self.plan.stall_after);
            let gating = self.health.stalled_gating(now, self.plan.stall_after);
            if !stalled.is_empty() && gating.is_empty() {
                // Only self-healing stages: reported, and the watchdog kept.
                if self.plan.ping_every.is_some() && !refresh_status {
                    self.notifier.watchdog();
                }
                if stalled != stalled_before || refresh_status {
                    let line = degraded_line(&stalled, self.plan);
                    if stalled != stalled_before {
                        tracing::error!(stages = ?stalled, "{line}");
                    }
                    self.notifier.status(&line);
                }
            } else if stalled.is_empty() {
                if !stalled_before.is_empty() {
                    tracing::info!(stages = ?stalled_before, "stalled stages are moving again");
                }
                if self.plan.ping_every.is_some() && !refresh_status {
                    self.notifier.watchdog();
                }
                if refresh_status || !stalled_before.is_empty() {
                    self.notifier.status(&(self.describe)());
                }
            } else if stalled != stalled_before || refresh_status {
                let line = stalled_line(&stalled, self.plan);
                if stalled != stalled_before {
                    tracing::error!(stages = ?stalled, "{line}");
                }
                self.notifier.status(&line);
            }
            stalled_before = stalled;
        }
    }
}

/// The STATUS line while only self-healing stages are stalled.
pub fn degraded_line(stalled: &[&str], plan: WatchdogPlan) -> String {
    format!(
        "degraded: {} (no progress for over {} s); recovering itself, watchdog kept",
        stalled.join(", "),
        plan.stall_after.as_secs()
    )
}

/// The STATUS line while stages are stalled.
pub fn stalled_line(stalled: &[&str], plan: WatchdogPlan) -> String {
    let consequence = if plan.ping_every.is_some() {
        "watchdog withheld"
    } else {
        "no watchdog configured"
    };
    format!(
        "stalled: {} (no progress for over {} s); {consequence}",
        stalled.join(", "),
        plan.stall_after.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(timeout_ms: Option<u64>, ping_ms: Option<u64>, stall_ms: u64) {
        let plan = WatchdogPlan::for_timeout(timeout_ms.map(Duration::from_millis));
        assert_eq!(
            plan,
            WatchdogPlan {
                ping_every: ping_ms.map(Duration::from_millis),
                stall_after: Duration::from_millis(stall_ms),
            },
            "timeout {timeout_ms:?}"
        );
    }

    #[test]
    fn plan_follows_the_watchdog_timeout() {
        check(Some(30_000), Some(7_500), 15_000);
        // Short timeouts keep the floor: idle stages beat once a second.
        check(Some(2_000), Some(500), 3_000);
        check(Some(20), Some(10), 3_000);
        check(None, None, 30_000);
    }

    #[test]
    fn stalled_line_names_the_stages_and_the_consequence() {
        let plan = WatchdogPlan::for_timeout(Some(Duration::from_secs(30)));
        assert_eq!(
            stalled_line(&["ingest", "web"], plan),
            "stalled: ingest, web (no progress for over 15 s); watchdog withheld"
        );
        assert_eq!(
            degraded_line(&["web"], plan),
            "degraded: web (no progress for over 15 s); recovering itself, watchdog kept"
        );
    }
}
