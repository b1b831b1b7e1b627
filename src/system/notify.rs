//! The systemd notification protocol (`sd_notify`): READY, STATUS, RELOADING,
//! STOPPING and WATCHDOG, sent through libsystemd to the socket named by
//! `NOTIFY_SOCKET`.
//!
//! Without `NOTIFY_SOCKET` (a terminal, a test, another supervisor) every call is
//! a no-op, so the daemon's code never asks "am I under systemd?". A failed send is
//! logged and never stops the daemon: the data path matters more than the report.

use std::time::Duration;

/// What can go wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// libsystemd could not send the datagram to `NOTIFY_SOCKET`.
    #[error("cannot notify systemd: {0}")]
    Send(#[source] systemd::Error),
    /// `WATCHDOG_USEC` is set but libsystemd cannot make sense of it.
    #[error("cannot read the watchdog timeout: {0}")]
    Watchdog(#[source] systemd::Error),
}

/// Sends state changes to systemd, or nothing when not started by systemd.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    active: bool,
}

impl Notifier {
    /// Active exactly when the environment names a notification socket.
    pub fn from_env() -> Notifier {
        Notifier {
            active: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
        }
    }

    /// A notifier that never sends, for tests and embedding.
    pub fn disabled() -> Notifier {
        Notifier { active: false }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The service's `WatchdogSec=`, if systemd asked this process for pings.
    /// libsystemd checks `WATCHDOG_PID` against our pid, so a child that inherits
    /// the variables does not mistake the parent's watchdog for its own.
    pub fn watchdog_timeout(&self) -> Result<Option<Duration>, NotifyError> {
        if !self.active {
            return Ok(None);
        }
        let usec = systemd::daemon::watchdog_enabled().map_err(NotifyError::Watchdog)?;
        Ok((usec > 0).then(|| Duration::from_micros(usec)))
    }

    /// Sends `pairs` as one message; `Ok(false)` when inactive.
    pub fn send(&self, pairs: &[(&str, &str)]) -> Result<bool, NotifyError> {
        if !self.active {
            return Ok(false);
        }
        systemd::daemon::notify(pairs.iter()).map_err(NotifyError::Send)
    }

    /// The daemon is up: storing, listening and receiving. `status` says what it is doing.
    pub fn ready(&self, status: &str) {
        self.log_failure(self.send(&[
            (systemd::daemon::STATE_READY, "1"),
            (systemd::daemon::STATE_STATUS, status),
        ]));
    }

    /// The one-line status `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.log_failure(self.send(&[(systemd::daemon::STATE_STATUS, status)]));
    }

    /// "Every stage is making progress"; only the supervisor sends it, after checking.
    pub fn watchdog(&self) {
        self.log_failure(self.send(&[(systemd::daemon::STATE_WATCHDOG, "1")]));
    }

    /// The configuration is being re-read; [`Notifier::ready`] ends the reload.
    /// `MONOTONIC_USEC` is what `Type=notify-reload` (systemd 253+) requires; older
    /// managers ignore it.
    pub fn reloading(&self) {
        let now = monotonic_usec().to_string();
        self.log_failure(self.send(&[
            (systemd::daemon::STATE_RELOADING, "1"),
            ("MONOTONIC_USEC", &now),
            (systemd::daemon::STATE_STATUS, "reloading the configuration"),
        ]));
    }

    /// Shutdown has begun; systemd stops expecting watchdog pings.
    pub fn stopping(&self, status: &str) {
        self.log_failure(self.send(&[
            (systemd::daemon::STATE_STOPPING, "1"),
            (systemd::daemon::STATE_STATUS, status),
        ]));
    }

    fn log_failure(&self, result: Result<bool, NotifyError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "systemd notification not sent");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares reload times on.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC is
    // always available on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let n = Notifier::disabled();
        assert!(!n.send(&[("READY", "1")]).unwrap());
        assert_eq!(n.watchdog_timeout().unwrap(), None);
    }

    #[test]
    fn monotonic_time_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a, "{a} {b}");
    }
}
