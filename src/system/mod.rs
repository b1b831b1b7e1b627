//! The daemon's relations with its host: signals, the clock, stage health, and
//! systemd (notifications, the watchdog, the journal, privileges, reload).

pub mod clock;
pub mod fault;
pub mod health;
pub mod logging;
pub mod memory;
pub mod notify;
pub mod privileges;
pub mod probe;
pub mod reload;
pub mod watchdog;

/// Resolves on the first SIGINT or SIGTERM. The signal streams are created when
/// this is called, before the daemon's loop, so no early signal is missed.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Whether the kernel says the clock is synchronised (NTP has set it and is
/// keeping it). A gateway without a real-time clock boots in the past: readings
/// taken before sync are flagged so the cloud can tell.
pub fn clock_synchronised() -> bool {
    // SAFETY: ntp_adjtime with modes = 0 only reads the kernel's state into the
    // zeroed struct we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::ntp_adjtime(&mut tx) };
    clock_state_synchronised(state, tx.status)
}

/// A failed call (-1: e.g. a seccomp filter that denies `adjtimex`) leaves the
/// zeroed status, whose UNSYNC bit is clear: that must read as "not known to be
/// synchronised", never as synchronised.
fn clock_state_synchronised(state: libc::c_int, status: libc::c_int) -> bool {
    state >= 0 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_adjtimex_is_not_a_synchronised_clock() {
        assert!(!clock_state_synchronised(-1, 0));
        assert!(!clock_state_synchronised(libc::TIME_ERROR, 0));
        assert!(!clock_state_synchronised(libc::TIME_OK, libc::STA_UNSYNC));
        assert!(clock_state_synchronised(libc::TIME_OK, 0));
    }
}
