//! The daemon's relations with its host: signals, the clock, stage health.

pub mod health;

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
    state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}
