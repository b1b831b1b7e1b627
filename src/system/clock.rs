//! Steps of the wall clock, seen against the boot clock.
//!
//! A Pi has no battery clock: it boots at 1970, or at the time saved at the last
//! shutdown, and NTP later *steps* the wall clock (`CLOCK_REALTIME`) by weeks.
//! `CLOCK_BOOTTIME` never steps (it counts from boot, suspend included), so the
//! difference `realtime - boottime` is constant while nobody sets the clock and
//! changes by the step when somebody does: NTP's slewing moves it by at most
//! 0.5 ms a second, far below [`STEP_MS`]. Ingest watches it and has the store
//! correct the readings stamped before a step (docs/decisions/0014).

use crate::model::Timestamp;

/// A change of `realtime - boottime` beyond this between two looks is a step.
pub const STEP_MS: i64 = 1_000;

/// Milliseconds since boot, suspend included; `None` if the kernel refuses.
fn boottime_ms() -> Option<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we own and reads nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    // `time_t` and `c_long` are 32 bits on 32-bit ARM: widen where they are.
    #[allow(clippy::useless_conversion)]
    let ms = i64::from(ts.tv_sec) * 1_000 + i64::from(ts.tv_nsec) / 1_000_000;
    (rc == 0).then_some(ms)
}

/// A step of the wall clock, seen between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// How far the wall clock moved, beyond the time that passed (positive:
    /// forward, as NTP moves a clock that booted in the past).
    pub delta_ms: i64,
    /// The earliest wall-clock time a stamp taken after the step can have.
    earliest_after_ms: i64,
    /// The latest wall-clock time a stamp taken after the step can have.
    latest_after_ms: i64,
}

impl Step {
    /// Whether a time stamped by the wall clock (and not yet known to be
    /// corrected) was taken before the step: forward, it is earlier than any
    /// stamp after the step can be; backward, later than any can be.
    pub fn stamped_before(&self, at: Timestamp) -> bool {
        let t = at.unix_ms();
        if self.delta_ms > 0 {
            t < self.earliest_after_ms
        } else {
            t > self.latest_after_ms
        }
    }
}

/// Watches `realtime - boottime`.
#[derive(Debug, Clone, Copy)]
pub struct ClockWatch {
    boot_ms: i64,
    offset_ms: i64,
}

impl ClockWatch {
    /// `None` where the boot clock cannot be read (then no step is ever seen).
    pub fn new() -> Option<ClockWatch> {
        let boot_ms = boottime_ms()?;
        Some(ClockWatch {
            boot_ms,
            offset_ms: Timestamp::now().unix_ms() - boot_ms,
        })
    }

    /// Looks again: the step since the last look, if the clock was set.
    pub fn check(&mut self) -> Option<Step> {
        let boot_ms = boottime_ms()?;
        let now_ms = Timestamp::now().unix_ms();
        self.observe(boot_ms, now_ms)
    }

    fn observe(&mut self, boot_ms: i64, now_ms: i64) -> Option<Step> {
        let offset_ms = now_ms - boot_ms;
        let delta_ms = offset_ms - self.offset_ms;
        let last_boot_ms = self.boot_ms;
        self.boot_ms = boot_ms;
        self.offset_ms = offset_ms;
        (delta_ms.abs() > STEP_MS).then_some(Step {
            delta_ms,
            earliest_after_ms: last_boot_ms + offset_ms,
            latest_after_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_told_from_time_passing_and_slewing() {
        let mut w = ClockWatch {
            boot_ms: 10_000,
            offset_ms: 1_000_000,
        };
        // A second passes on both clocks, with 0.5 ms of slew: no step.
        assert_eq!(w.observe(11_000, 1_011_000), None);
        assert_eq!(w.observe(12_000, 1_012_000), None);
        // NTP sets the clock 30 days forward between two looks.
        let month = 30 * 86_400_000;
        let step = w.observe(13_000, 1_013_000 + month).expect("a step");
        assert_eq!(step.delta_ms, month);
        // Stamped by the old clock during the last second: before the step.
        assert!(step.stamped_before(Timestamp::from_unix_ms(1_012_500)));
        // Stamped by the new clock: after it.
        assert!(!step.stamped_before(Timestamp::from_unix_ms(1_012_500 + month)));
        assert_eq!(w.observe(14_000, 1_014_000 + month), None, "once");
        // Backward by an hour.
        let step = w
            .observe(15_000, 1_015_000 + month - 3_600_000)
            .expect("a step");
        assert_eq!(step.delta_ms, -3_600_000);
        assert!(step.stamped_before(Timestamp::from_unix_ms(1_014_800 + month)));
        assert!(!step.stamped_before(Timestamp::from_unix_ms(1_014_800 + month - 3_600_000)));
    }

    #[test]
    fn the_boot_clock_is_readable_here() {
        assert!(ClockWatch::new().is_some());
    }
}
