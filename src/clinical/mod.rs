//! Clinical rules, pure: no IO, no clock (the caller passes `now`).
//!
//! - the freshness rule every screen and message obeys: a value older than the
//!   configured window is stale and is never presented as current;
//! - `news2`: the National Early Warning Score 2 (RCP 2017).

pub mod alert_rules;
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
pub const FUTURE_TOLERANCE: Duration = crate::model::CLOCK_TOLERANCE;

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

/// One sensor value offered to the early-warning score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitalSample {
    pub quantity: crate::model::Quantity,
    pub value: crate::model::Value,
    pub unit: crate::model::Unit,
    /// When the value was true as far as the gateway trusts it
    /// (`model::trusted_time`: never a device time ahead of its receipt).
    pub taken_at: Timestamp,
    /// The device's own time, when it gave one; kept beside `taken_at`, never in
    /// its place. Ahead of `taken_at` beyond the tolerance: the clock is wrong.
    pub device_time: Option<Timestamp>,
    /// The device that measured it (`None` for a value typed by staff).
    pub device: Option<crate::model::DeviceAddress>,
    /// The stored reading, for the alert's `reading_ids`.
    pub reading_id: Option<crate::model::ReadingId>,
}

impl VitalSample {
    /// How far the device's clock is ahead of the trusted time, when it is ahead
    /// beyond the tolerance ("check clock").
    pub fn clock_ahead(&self) -> Option<Duration> {
        self.device_time
            .filter(|d| *d > self.taken_at.saturating_add(FUTURE_TOLERANCE))
            .map(|d| self.taken_at.age_at(d))
    }
}

/// A value left out of the score because no person can have it (a sensor
/// fault): shown to staff as implausible, never scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Implausible {
    pub parameter: news2::Parameter,
    /// As the sensor sent it, in its own unit.
    pub value: f64,
    pub unit: crate::model::Unit,
    pub taken_at: Timestamp,
}

/// A NEWS2 score built from the newest readings (sensors and staff entries).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorScore {
    pub score: news2::Score,
    /// Not every value it uses is within the window of now: show it as stale,
    /// never as current, and raise or clear no alert from it.
    pub stale: bool,
    /// The oldest value the score uses: its age is the score's age.
    pub oldest: Timestamp,
    /// The newest value the score uses.
    pub newest: Timestamp,
    /// Values left out as implausible (also listed in `score.missing`).
    pub implausible: Vec<Implausible>,
    /// The stored readings the score was computed from.
    pub reading_ids: Vec<crate::model::ReadingId>,
}

/// The NEWS2 parameter a value is and the value in the chart's unit (mmHg, °C,
/// coded values only where the scale has the code); `None` for anything the
/// chart cannot use.
pub fn chart_value(
    quantity: crate::model::Quantity,
    unit: crate::model::Unit,
    n: f64,
) -> Option<(news2::Parameter, f64)> {
    use crate::model::{Quantity as Q, Unit as U};
    use news2::Parameter as P;
    let whole = |n: f64, max: f64| (n.fract() == 0.0 && (0.0..=max).contains(&n)).then_some(n);
    Some(match (quantity, unit) {
        (Q::RespirationRate, U::PerMinute) => (P::RespRate, n),
        // Coded values: only the codes the scale has.
        (Q::Consciousness, U::One) => (P::Consciousness, whole(n, 4.0)?),
        (Q::SupplementalOxygen, U::One) => (P::Oxygen, whole(n, 1.0)?),
        (Q::Spo2, U::Percent) => (P::Spo2, n),
        (Q::PulseRate | Q::HeartRate, U::PerMinute) => (P::Pulse, n),
        (Q::SystolicPressure, U::MillimetreOfMercury) => (P::Systolic, n),
        (Q::SystolicPressure, U::Kilopascal) => (P::Systolic, n * 7.500_617),
        (Q::BodyTemperature, U::Celsius) => (P::Temperature, n),
        (Q::BodyTemperature, U::Fahrenheit) => (P::Temperature, (n - 32.0) * 5.0 / 9.0),
        _ => return None,
    })
}

/// A value of a NEWS2 parameter that no person can have (a sensor fault): shown
/// as implausible ("check the sensor"), never scored.
pub fn implausible(
    quantity: crate::model::Quantity,
    unit: crate::model::Unit,
    value: crate::model::Value,
) -> bool {
    value
        .number()
        .and_then(|n| chart_value(quantity, unit, n))
        .is_some_and(|(p, v)| !p.plausible(v))
}

/// Scores the newest readings: what the sensors measured (SpO₂, pulse, systolic
/// pressure, temperature) and what staff entered in an observation set
/// (respiration rate, consciousness, air or oxygen, or any of the others), on the
/// resident's SpO₂ `scale`.
///
/// The window is anchored at `now`: only values taken within `window` of now are
/// used, and the score is then current. When no value is that recent, the score
/// is built from the values within `window` of the newest one and is `stale`
/// (shown as such, never as current). A value in a unit the chart cannot use is
/// missing; a value no person can have (`Parameter::plausible`) is left out and
/// listed as implausible, and every other parameter is still scored. Without a
/// staff entry respiration rate, consciousness and oxygen are missing, so the
/// score says it is partial. `None` when no value can be used at all.
pub fn news2_from_readings(
    samples: &[VitalSample],
    scale: news2::Spo2Scale,
    now: Timestamp,
    window: Duration,
) -> Option<SensorScore> {
    use news2::Parameter as P;
    let usable = |s: &VitalSample| chart_value(s.quantity, s.unit, s.value.number()?);
    // The newest usable value of each parameter (pulse from an oximeter or a strap).
    let mut newest: Vec<(P, f64, &VitalSample)> = Vec::new();
    for s in samples {
        let Some((p, v)) = usable(s) else { continue };
        match newest.iter_mut().find(|(np, _, _)| *np == p) {
            Some(slot) if slot.2.taken_at >= s.taken_at => {}
            Some(slot) => *slot = (p, v, s),
            None => newest.push((p, v, s)),
        }
    }
    let latest = newest.iter().map(|(_, _, s)| s.taken_at).max()?;
    let current_floor = now.saturating_sub(window);
    let stale = latest < current_floor;
    let floor = if stale {
        latest.saturating_sub(window)
    } else {
        current_floor
    };
    newest.retain(|(_, _, s)| s.taken_at >= floor);
    let mut implausible = Vec::new();
    newest.retain(|(p, v, s)| {
        let ok = p.plausible(*v);
        if !ok && let Some(n) = s.value.number() {
            implausible.push(Implausible {
                parameter: *p,
                value: n,
                unit: s.unit,
                taken_at: s.taken_at,
            });
        }
        ok
    });
    let get = |p: P| {
        newest
            .iter()
            .find(|(np, _, _)| *np == p)
            .map(|(_, v, _)| *v)
    };
    use news2::Consciousness as C;
    let obs = news2::Observations {
        resp_rate: get(P::RespRate),
        spo2: get(P::Spo2),
        spo2_scale: scale,
        on_oxygen: get(P::Oxygen).map(|v| v == 1.0),
        pulse: get(P::Pulse),
        systolic: get(P::Systolic),
        consciousness: get(P::Consciousness).and_then(|v| {
            [C::Alert, C::Confusion, C::Voice, C::Pain, C::Unresponsive]
                .get(v as usize)
                .copied()
        }),
        temperature: get(P::Temperature),
    };
    // Every value left is plausible, so the chart cannot refuse the set.
    let score = news2::score(&obs).ok()?;
    let used: Vec<&VitalSample> = newest
        .iter()
        .filter(|(p, _, _)| score.component(*p).is_some())
        .map(|(_, _, s)| *s)
        .collect();
    let times = || used.iter().map(|s| s.taken_at);
    let (oldest, newest_used) = match (times().min(), times().max()) {
        (Some(o), Some(n)) => (o, n),
        // Nothing scored: only implausible values (or SpO2 unreadable on scale 2).
        _ => (latest, latest),
    };
    if used.is_empty() && implausible.is_empty() {
        return None;
    }
    Some(SensorScore {
        reading_ids: used.iter().filter_map(|s| s.reading_id).collect(),
        score,
        stale,
        oldest,
        newest: newest_used,
        implausible,
    })
}

#[cfg(test)]
mod sensor_score_tests {
    use super::*;
    use crate::model::{Quantity as Q, SpecialValue, Unit as U, Value};

    fn at(min_ago: i64) -> Timestamp {
        Timestamp::from_unix_ms(100_000_000 - min_ago * 60_000)
    }

    fn s(quantity: Q, v: f64, unit: U, min_ago: i64) -> VitalSample {
        VitalSample {
            quantity,
            value: Value::Number(v),
            unit,
            taken_at: at(min_ago),
            device_time: None,
            device: None,
            reading_id: None,
        }
    }

    #[test]
    fn uses_only_values_within_the_window_of_the_newest() {
        let now = at(0);
        let hour = Duration::from_secs(3600);
        let samples = [
            s(Q::Spo2, 91.0, U::Percent, 1),
            s(Q::PulseRate, 120.0, U::PerMinute, 1),
            // Fahrenheit converted: 102.2 °F = 39.0 °C scores 1.
            s(Q::BodyTemperature, 102.2, U::Fahrenheit, 30),
            // Too old relative to the newest: counted as missing, not scored.
            s(Q::SystolicPressure, 85.0, U::MillimetreOfMercury, 90),
        ];
        let r = news2_from_readings(&samples, news2::Spo2Scale::One, now, hour).unwrap();
        assert_eq!(r.score.total, 3 + 2 + 1);
        assert!(!r.stale);
        assert!(r.score.missing.contains(&news2::Parameter::Systolic));
        assert_eq!(r.oldest, at(30));
    }

    #[test]
    fn a_special_value_is_missing_not_zero_and_old_scores_are_stale() {
        let hour = Duration::from_secs(3600);
        let samples = [
            VitalSample {
                quantity: Q::Spo2,
                value: Value::Special(SpecialValue::NotANumber),
                unit: U::Percent,
                taken_at: at(70),
                device_time: None,
                device: None,
                reading_id: None,
            },
            s(Q::PulseRate, 72.0, U::PerMinute, 70),
        ];
        let r = news2_from_readings(&samples, news2::Spo2Scale::One, at(0), hour).unwrap();
        assert!(r.score.missing.contains(&news2::Parameter::Spo2));
        assert!(r.stale, "newest value is 70 min old");
        assert!(news2_from_readings(&[], news2::Spo2Scale::One, at(0), hour).is_none());
    }

    fn full_set(spo2: f64, oxygen: f64) -> Vec<VitalSample> {
        vec![
            s(Q::RespirationRate, 18.0, U::PerMinute, 5),
            s(Q::Consciousness, 0.0, U::One, 5),
            s(Q::SupplementalOxygen, oxygen, U::One, 5),
            s(Q::Spo2, spo2, U::Percent, 1),
            s(Q::PulseRate, 72.0, U::PerMinute, 1),
            s(Q::SystolicPressure, 125.0, U::MillimetreOfMercury, 1),
            s(Q::BodyTemperature, 37.0, U::Celsius, 1),
        ]
    }

    #[test]
    fn a_staff_set_completes_the_sensor_values_into_a_full_score() {
        let hour = Duration::from_secs(3600);
        let r =
            news2_from_readings(&full_set(97.0, 0.0), news2::Spo2Scale::One, at(0), hour).unwrap();
        assert!(r.score.missing.is_empty(), "{:?}", r.score.missing);
        assert_eq!(r.score.total, 0);
        // Consciousness "V" scores 3 on its own (the single-3 rule).
        let mut v = full_set(97.0, 0.0);
        v[1] = s(Q::Consciousness, 2.0, U::One, 5);
        let r = news2_from_readings(&v, news2::Spo2Scale::One, at(0), hour).unwrap();
        assert_eq!(r.score.total, 3);
        assert_eq!(r.score.band, news2::Band::LowMedium);
        // A code the scale does not have is missing, never scored as alert.
        v[1] = s(Q::Consciousness, 7.0, U::One, 5);
        let r = news2_from_readings(&v, news2::Spo2Scale::One, at(0), hour).unwrap();
        assert!(r.score.missing.contains(&news2::Parameter::Consciousness));
    }

    #[test]
    fn scale_two_scores_spo2_on_oxygen_as_the_chart_says() {
        let hour = Duration::from_secs(3600);
        let total = |spo2, oxygen, scale| {
            news2_from_readings(&full_set(spo2, oxygen), scale, at(0), hour)
                .unwrap()
                .score
                .total
        };
        // 90 % on air: scale 1 scores 3; scale 2 (target 88–92) scores 0.
        assert_eq!(total(90.0, 0.0, news2::Spo2Scale::One), 3);
        assert_eq!(total(90.0, 0.0, news2::Spo2Scale::Two), 0);
        // 97 % on oxygen: scale 1 scores 2 (oxygen) only; scale 2 scores 3 for
        // the SpO2 and 2 for the oxygen.
        assert_eq!(total(97.0, 1.0, news2::Spo2Scale::One), 2);
        assert_eq!(total(97.0, 1.0, news2::Spo2Scale::Two), 5);
    }
}
