//! Clinical rules, pure: no IO, no clock (the caller passes `now`).
//!
//! - the freshness rule every screen and message obeys: a value older than the
//!   configured window is stale and is never presented as current;
//! - `news2`: the National Early Warning Score 2 (RCP 2017).

pub mod news2;

use std::time::Duration;

use crate::model::Timestamp;

/// Whether a value may be shown as the resident's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Current,
    /// Older than the window: show it only as "last reading N min ago".
    Stale,
    /// Timed in the future beyond clock tolerance: the device clock is wrong, so
    /// its age is unknown; never shown as current.
    FutureDated,
}

/// Device clocks drift; a value this far ahead of the gateway is still accepted.
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(120);

/// Classifies a value taken at `taken_at`, seen at `now`.
pub fn freshness(taken_at: Timestamp, now: Timestamp, stale_after: Duration) -> Freshness {
    if taken_at > now.saturating_add(FUTURE_TOLERANCE) {
        Freshness::FutureDated
    } else if taken_at.age_at(now) > stale_after {
        Freshness::Stale
    } else {
        Freshness::Current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_boundaries() {
        let now = Timestamp::from_unix_ms(10_000_000);
        let hour = Duration::from_secs(3600);
        let check = |age_ms: i64, expected| {
            assert_eq!(
                freshness(Timestamp::from_unix_ms(now.unix_ms() - age_ms), now, hour),
                expected,
                "age {age_ms} ms"
            );
        };
        check(0, Freshness::Current);
        check(3_600_000, Freshness::Current);
        check(3_600_001, Freshness::Stale);
        check(-120_000, Freshness::Current);
        check(-120_001, Freshness::FutureDated);
    }
}
