//! Test-only fault injection: makes one stage hang so that tests can show the
//! watchdog stops when a stage stops making progress.
//!
//! Exists only in debug builds (`cfg(debug_assertions)`), which is what
//! `cargo test` builds the binary as. In release builds [`hang_requested`] is a
//! constant `false`: the environment variable is never read and the hang paths
//! are compiled out.
//!
//! `CAREHUB_TEST_HANG_STAGE=ingest` — the ingest stage never starts, so frames
//! back up and the sensor stage blocks behind it.
//! `CAREHUB_TEST_HANG_STAGE=web` — every HTTP request hangs without an answer.

/// The environment variable that names the stage to hang (debug builds only).
#[cfg(debug_assertions)]
pub const HANG_STAGE_VAR: &str = "CAREHUB_TEST_HANG_STAGE";

/// Whether the test asked `stage` to hang.
#[cfg(debug_assertions)]
pub fn hang_requested(stage: &str) -> bool {
    let asked = std::env::var(HANG_STAGE_VAR).is_ok_and(|v| v == stage);
    if asked {
        tracing::warn!(
            stage,
            "test fault hook: this stage will hang ({HANG_STAGE_VAR})"
        );
    }
    asked
}

/// Release builds carry no fault hooks.
#[cfg(not(debug_assertions))]
pub fn hang_requested(_stage: &str) -> bool {
    false
}
