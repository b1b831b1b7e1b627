//! NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017).
//!
//! Pure: a set of observations in, the score out. Each parameter is first rounded to
//! the resolution the chart is written in (whole numbers; temperature to 0.1 °C), as
//! a clinician would record it, then scored by the chart's bands. A set with missing
//! parameters is scored from what it has and says what is missing: a partial score
//! is never presented as a full one.

/// ACVPU: the consciousness scale NEWS2 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consciousness {
    Alert,
    /// New confusion.
    Confusion,
    Voice,
    Pain,
    Unresponsive,
}

impl Consciousness {
    pub fn parse(s: &str) -> Option<Consciousness> {
        match s.to_ascii_uppercase().as_str() {
            "A" => Some(Consciousness::Alert),
            "C" => Some(Consciousness::Confusion),
            "V" => Some(Consciousness::Voice),
            "P" => Some(Consciousness::Pain),
            "U" => Some(Consciousness::Unresponsive),
            _ => None,
        }
    }
}

/// Which SpO₂ scale applies. Scale 2 is only for residents with confirmed
/// hypercapnic respiratory failure, and only when a clinician has chosen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spo2Scale {
    #[default]
    One,
    Two,
}

/// One set of observations. `None` is "not observed", never zero.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observations {
    /// Breaths per minute.
    pub resp_rate: Option<f64>,
    /// Percent.
    pub spo2: Option<f64>,
    pub spo2_scale: Spo2Scale,
    /// `Some(true)` on supplemental oxygen, `Some(false)` on air.
    pub on_oxygen: Option<bool>,
    /// mmHg.
    pub systolic: Option<f64>,
    /// Beats per minute.
    pub pulse: Option<f64>,
    pub consciousness: Option<Consciousness>,
    /// Degrees Celsius.
    pub temperature: Option<f64>,
}

/// The parameters of the chart, in its order; the names are the wire vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parameter {
    RespRate,
    Spo2,
    Oxygen,
    Systolic,
    Pulse,
    Consciousness,
    Temperature,
}

impl Parameter {
    pub const ALL: [Parameter; 7] = [
        Parameter::RespRate,
        Parameter::Spo2,
        Parameter::Oxygen,
        Parameter::Systolic,
        Parameter::Pulse,
        Parameter::Consciousness,
        Parameter::Temperature,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Parameter::RespRate => "resp_rate",
            Parameter::Spo2 => "spo2",
            Parameter::Oxygen => "oxygen",
            Parameter::Systolic => "systolic",
            Parameter::Pulse => "pulse",
            Parameter::Consciousness => "consciousness",
            Parameter::Temperature => "temperature",
        }
    }
}

/// The clinical risk band and the response it calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Band {
    /// Aggregate 0–4 with no single parameter scoring 3.
    Low,
    /// A single parameter scoring 3 (aggregate under 5): urgent ward-based response.
    LowMedium,
    /// Aggregate 5–6: urgent response.
    Medium,
    /// Aggregate 7 or more: emergency response.
    High,
}

impl Band {
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Low => "low",
            Band::LowMedium => "low-medium",
            Band::Medium => "medium",
            Band::High => "high",
        }
    }
}

/// A NEWS2 score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    pub total: u8,
    pub band: Band,
    /// The score of each parameter that was observed, in chart order.
    pub components: Vec<(Parameter, u8)>,
    /// The parameters that were not observed; empty for a full score.
    pub missing: Vec<Parameter>,
}

impl Score {
    pub fn partial(&self) -> bool {
        !self.missing.is_empty()
    }

    pub fn component(&self, p: Parameter) -> Option<u8> {
        self.components
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, s)| *s)
    }
}

/// An observation no living resident can have: refused rather than scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObservationError {
    /// A value outside what the parameter can physically be.
    #[error("{parameter} {value} is impossible (expected {range})")]
    Impossible {
        parameter: &'static str,
        value: f64,
        range: &'static str,
    },
}

fn check(
    parameter: &'static str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
    range: &'static str,
) -> Result<(), ObservationError> {
    match value {
        Some(v) if !(v.is_finite() && (lo..=hi).contains(&v)) => {
            Err(ObservationError::Impossible {
                parameter,
                value: v,
                range,
            })
        }
        _ => Ok(()),
    }
}

/// ACVPU in words, from the stored code (see `Quantity::Consciousness`).
pub fn acvpu_words(code: f64) -> &'static str {
    match code {
        0.0 => "A (alert)",
        1.0 => "C (new confusion)",
        2.0 => "V (responds to voice)",
        3.0 => "P (responds to pain)",
        4.0 => "U (unresponsive)",
        _ => "unknown code",
    }
}

impl Parameter {
    /// The parameter as a carer says it, for the alert texts staff act on
    /// ("oxygen saturation", not "SpO₂").
    pub fn spoken(self) -> &'static str {
        match self {
            Parameter::RespRate => "breathing rate",
            Parameter::Spo2 => "oxygen saturation",
            Parameter::Oxygen => "air or oxygen",
            Parameter::Systolic => "systolic blood pressure",
            Parameter::Pulse => "pulse",
            Parameter::Consciousness => "consciousness",
            Parameter::Temperature => "temperature",
        }
    }

    /// A value of this parameter in the chart's unit, with the unit, as an
    /// alert text shows it ("91 %", "38.4 °C", "on oxygen", "V (voice)").
    pub fn value_words(self, v: f64) -> String {
        match self {
            Parameter::RespRate => format!("{v:.0} /min"),
            Parameter::Spo2 => format!("{v:.0} %"),
            Parameter::Pulse => format!("{v:.0} /min"),
            Parameter::Systolic => format!("{v:.0} mmHg"),
            Parameter::Temperature => format!("{v:.1} °C"),
            Parameter::Oxygen if v == 1.0 => "on oxygen".to_owned(),
            Parameter::Oxygen => "on air".to_owned(),
            Parameter::Consciousness => acvpu_words(v).to_owned(),
        }
    }

    /// The parameter in staff's words, for pages and alert texts.
    pub fn label(self) -> &'static str {
        match self {
            Parameter::RespRate => "respiration rate",
            Parameter::Spo2 => "SpO₂",
            Parameter::Oxygen => "air or oxygen",
            Parameter::Systolic => "systolic pressure",
            Parameter::Pulse => "pulse",
            Parameter::Consciousness => "consciousness",
            Parameter::Temperature => "temperature",
        }
    }

    /// The range of values a living person can have for this parameter, in the
    /// chart's units, with its words for staff; `None` for the coded ones.
    /// A value outside it is a sensor fault (a thermometer pointed at a wall),
    /// never a score.
    ///
    /// The one source of these ranges: the scorer, the alert rules and the staff
    /// observation form all read them here (docs/safety/hazard-log.md, H-RANGE).
    /// SpO₂ below 50 % is outside any pulse oximeter's declared accuracy and is a
    /// probe off the finger far more often than a person; a pulse below 20 or above
    /// 250 /min is a lost signal or motion; a systolic pressure below 40 mmHg is no
    /// cuff's measurement; body temperature reaches 25 °C in the severe
    /// hypothermia a frail resident can be found in, so that stays in.
    pub fn plausible_range(self) -> Option<(f64, f64, &'static str)> {
        match self {
            Parameter::RespRate => Some((0.0, 80.0, "0 to 80 /min")),
            Parameter::Spo2 => Some((50.0, 100.0, "50 to 100 %")),
            Parameter::Systolic => Some((40.0, 300.0, "40 to 300 mmHg")),
            Parameter::Pulse => Some((20.0, 250.0, "20 to 250 /min")),
            Parameter::Temperature => Some((25.0, 45.0, "25.0 to 45.0 °C")),
            Parameter::Oxygen | Parameter::Consciousness => None,
        }
    }

    /// Whether `v` (in the chart's unit) is one a person can have.
    pub fn plausible(self, v: f64) -> bool {
        v.is_finite()
            && self
                .plausible_range()
                .is_none_or(|(lo, hi, _)| (lo..=hi).contains(&v))
    }
}

impl Observations {
    /// Refuses values outside what a person can have ([`Parameter::plausible_range`]).
    pub fn validate(&self) -> Result<(), ObservationError> {
        for (p, v) in [
            (Parameter::RespRate, self.resp_rate),
            (Parameter::Spo2, self.spo2),
            (Parameter::Systolic, self.systolic),
            (Parameter::Pulse, self.pulse),
            (Parameter::Temperature, self.temperature),
        ] {
            if let Some((lo, hi, range)) = p.plausible_range() {
                check(p.label(), v, lo, hi, range)?;
            }
        }
        Ok(())
    }
}

/// Scores a set of observations by the RCP 2017 chart.
pub fn score(obs: &Observations) -> Result<Score, ObservationError> {
    obs.validate()?;
    let whole = |v: f64| v.round() as i64;
    let tenth = |v: f64| (v * 10.0).round() as i64; // temperature in 0.1 °C

    let mut components = Vec::new();
    let mut missing = Vec::new();
    let mut put = |p: Parameter, s: Option<u8>| match s {
        Some(s) => components.push((p, s)),
        None => missing.push(p),
    };

    put(
        Parameter::RespRate,
        obs.resp_rate.map(whole).map(|r| match r {
            ..=8 => 3,
            9..=11 => 1,
            12..=20 => 0,
            21..=24 => 2,
            _ => 3,
        }),
    );
    put(
        Parameter::Spo2,
        obs.spo2.map(whole).and_then(|s| match obs.spo2_scale {
            Spo2Scale::One => Some(match s {
                ..=91 => 3,
                92..=93 => 2,
                94..=95 => 1,
                _ => 0,
            }),
            Spo2Scale::Two => match (s, obs.on_oxygen) {
                (..=83, _) => Some(3),
                (84..=85, _) => Some(2),
                (86..=87, _) => Some(1),
                (88..=92, _) => Some(0),
                // 93 or more scores only on oxygen and 0 on air. Not knowing
                // which, the chart cannot be read: SpO2 is left out (the score
                // is partial), never scored 0 as if on air.
                (93..=94, Some(true)) => Some(1),
                (95..=96, Some(true)) => Some(2),
                (_, Some(true)) => Some(3),
                (_, Some(false)) => Some(0),
                (_, None) => None,
            },
        }),
    );
    put(
        Parameter::Oxygen,
        obs.on_oxygen.map(|o| if o { 2 } else { 0 }),
    );
    put(
        Parameter::Systolic,
        obs.systolic.map(whole).map(|s| match s {
            ..=90 => 3,
            91..=100 => 2,
            101..=110 => 1,
            111..=219 => 0,
            _ => 3,
        }),
    );
    put(
        Parameter::Pulse,
        obs.pulse.map(whole).map(|p| match p {
            ..=40 => 3,
            41..=50 => 1,
            51..=90 => 0,
            91..=110 => 1,
            111..=130 => 2,
            _ => 3,
        }),
    );
    put(
        Parameter::Consciousness,
        obs.consciousness
            .map(|c| if c == Consciousness::Alert { 0 } else { 3 }),
    );
    put(
        Parameter::Temperature,
        obs.temperature.map(tenth).map(|t| match t {
            ..=350 => 3,
            351..=360 => 1,
            361..=380 => 0,
            381..=390 => 1,
            _ => 2,
        }),
    );

    let total: u8 = components.iter().map(|(_, s)| s).sum();
    let any_three = components.iter().any(|(_, s)| *s == 3);
    let band = match total {
        7.. => Band::High,
        5..=6 => Band::Medium,
        _ if any_three => Band::LowMedium,
        _ => Band::Low,
    };
    Ok(Score {
        total,
        band,
        components,
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(p: Parameter, obs: Observations) -> u8 {
        score(&obs).unwrap().component(p).unwrap()
    }

    /// Each row: the value and the score the chart gives it, on both sides of every boundary.
    #[test]
    fn every_boundary_of_every_row() {
        let rr = |v: f64| {
            one(
                Parameter::RespRate,
                Observations {
                    resp_rate: Some(v),
                    ..Default::default()
                },
            )
        };
        for (v, s) in [
            (0.0, 3),
            (8.0, 3),
            (9.0, 1),
            (11.0, 1),
            (12.0, 0),
            (20.0, 0),
            (21.0, 2),
            (24.0, 2),
            (25.0, 3),
            (60.0, 3),
        ] {
            assert_eq!(rr(v), s, "resp rate {v}");
        }
        let spo2 = |v: f64| {
            one(
                Parameter::Spo2,
                Observations {
                    spo2: Some(v),
                    ..Default::default()
                },
            )
        };
        for (v, s) in [
            (50.0, 3),
            (91.0, 3),
            (92.0, 2),
            (93.0, 2),
            (94.0, 1),
            (95.0, 1),
            (96.0, 0),
            (100.0, 0),
        ] {
            assert_eq!(spo2(v), s, "spo2 scale 1 {v}");
        }
        let sys = |v: f64| {
            one(
                Parameter::Systolic,
                Observations {
                    systolic: Some(v),
                    ..Default::default()
                },
            )
        };
        for (v, s) in [
            (60.0, 3),
            (90.0, 3),
            (91.0, 2),
            (100.0, 2),
            (101.0, 1),
            (110.0, 1),
            (111.0, 0),
            (219.0, 0),
            (220.0, 3),
        ] {
            assert_eq!(sys(v), s, "systolic {v}");
        }
        let pulse = |v: f64| {
            one(
                Parameter::Pulse,
                Observations {
                    pulse: Some(v),
                    ..Default::default()
                },
            )
        };
        for (v, s) in [
            (30.0, 3),
            (40.0, 3),
            (41.0, 1),
            (50.0, 1),
            (51.0, 0),
            (90.0, 0),
            (91.0, 1),
            (110.0, 1),
            (111.0, 2),
            (130.0, 2),
            (131.0, 3),
        ] {
            assert_eq!(pulse(v), s, "pulse {v}");
        }
        let temp = |v: f64| {
            one(
                Parameter::Temperature,
                Observations {
                    temperature: Some(v),
                    ..Default::default()
                },
            )
        };
        for (v, s) in [
            (34.0, 3),
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
            (39.0, 1),
            (39.1, 2),
            (41.0, 2),
        ] {
            assert_eq!(temp(v), s, "temperature {v}");
        }
        let acvpu = |c: &str| {
            one(
                Parameter::Consciousness,
                Observations {
                    consciousness: Consciousness::parse(c),
                    ..Default::default()
                },
            )
        };
        for (c, s) in [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3)] {
            assert_eq!(acvpu(c), s, "consciousness {c}");
        }
        let o2 = |o: bool| {
            one(
                Parameter::Oxygen,
                Observations {
                    on_oxygen: Some(o),
                    ..Default::default()
                },
            )
        };
        assert_eq!((o2(false), o2(true)), (0, 2));
    }

    #[test]
    fn spo2_scale_two_on_air_and_on_oxygen() {
        let s2 = |v: f64, oxygen: bool| {
            one(
                Parameter::Spo2,
                Observations {
                    spo2: Some(v),
                    spo2_scale: Spo2Scale::Two,
                    on_oxygen: Some(oxygen),
                    ..Default::default()
                },
            )
        };
        for oxygen in [false, true] {
            for (v, s) in [
                (80.0, 3),
                (83.0, 3),
                (84.0, 2),
                (85.0, 2),
                (86.0, 1),
                (87.0, 1),
                (88.0, 0),
                (92.0, 0),
            ] {
                assert_eq!(s2(v, oxygen), s, "scale 2 {v} oxygen {oxygen}");
            }
        }
        for v in [93.0, 94.0, 96.0, 97.0, 100.0] {
            assert_eq!(s2(v, false), 0, "scale 2 {v} on air");
        }
        for (v, s) in [
            (93.0, 1),
            (94.0, 1),
            (95.0, 2),
            (96.0, 2),
            (97.0, 3),
            (100.0, 3),
        ] {
            assert_eq!(s2(v, true), s, "scale 2 {v} on oxygen");
        }
    }

    /// Issue 15: on scale 2 with air or oxygen not recorded, 93 % or more
    /// cannot be read off the chart: SpO2 is missing (partial), never 0. Below
    /// 93 the chart does not depend on oxygen and SpO2 is scored.
    #[test]
    fn scale_two_with_oxygen_unknown_leaves_spo2_out_above_92() {
        let s2 = |v: f64| {
            score(&Observations {
                spo2: Some(v),
                spo2_scale: Spo2Scale::Two,
                on_oxygen: None,
                ..Default::default()
            })
            .unwrap()
        };
        for v in [93.0, 97.0, 100.0] {
            let s = s2(v);
            assert_eq!(s.component(Parameter::Spo2), None, "{v}");
            assert!(s.missing.contains(&Parameter::Spo2), "{v}");
        }
        for (v, points) in [(83.0, 3), (86.0, 1), (92.0, 0)] {
            assert_eq!(s2(v).component(Parameter::Spo2), Some(points), "{v}");
        }
    }

    #[test]
    fn chart_resolution_rounding() {
        let temp = |v: f64| {
            one(
                Parameter::Temperature,
                Observations {
                    temperature: Some(v),
                    ..Default::default()
                },
            )
        };
        assert_eq!(temp(35.04), 3); // recorded as 35.0
        assert_eq!(temp(35.05), 1); // recorded as 35.1
        let pulse = |v: f64| {
            one(
                Parameter::Pulse,
                Observations {
                    pulse: Some(v),
                    ..Default::default()
                },
            )
        };
        assert_eq!(pulse(90.4), 0);
        assert_eq!(pulse(90.5), 1);
    }

    fn full(
        rr: f64,
        spo2: f64,
        oxygen: bool,
        sys: f64,
        pulse: f64,
        c: Consciousness,
        t: f64,
    ) -> Observations {
        Observations {
            resp_rate: Some(rr),
            spo2: Some(spo2),
            spo2_scale: Spo2Scale::One,
            on_oxygen: Some(oxygen),
            systolic: Some(sys),
            pulse: Some(pulse),
            consciousness: Some(c),
            temperature: Some(t),
        }
    }

    #[test]
    fn bands_including_the_single_three_rule() {
        use Consciousness::*;
        let band = |o: Observations| {
            let s = score(&o).unwrap();
            (s.total, s.band, s.partial())
        };
        assert_eq!(
            band(full(16.0, 97.0, false, 125.0, 72.0, Alert, 36.8)),
            (0, Band::Low, false)
        );
        assert_eq!(
            band(full(22.0, 95.0, false, 125.0, 95.0, Alert, 36.8)),
            (4, Band::Low, false)
        );
        // One parameter scoring 3 with a low total: low-medium.
        assert_eq!(
            band(full(16.0, 97.0, false, 125.0, 72.0, Confusion, 36.8)),
            (3, Band::LowMedium, false)
        );
        assert_eq!(
            band(full(16.0, 90.0, false, 125.0, 72.0, Alert, 36.8)),
            (3, Band::LowMedium, false)
        );
        // 5-6 is medium even with a 3 in it.
        assert_eq!(
            band(full(22.0, 90.0, false, 125.0, 72.0, Alert, 36.8)),
            (5, Band::Medium, false)
        );
        assert_eq!(
            band(full(22.0, 94.0, true, 125.0, 95.0, Alert, 36.8)),
            (6, Band::Medium, false)
        );
        assert_eq!(
            band(full(26.0, 91.0, true, 88.0, 135.0, Voice, 39.5)),
            (19, Band::High, false)
        );
        assert_eq!(
            band(full(22.0, 93.0, true, 125.0, 95.0, Alert, 36.8)),
            (7, Band::High, false)
        );
    }

    #[test]
    fn partial_sets_say_what_is_missing() {
        let s = score(&Observations {
            spo2: Some(90.0),
            pulse: Some(120.0),
            ..Default::default()
        })
        .unwrap();
        assert!(s.partial());
        assert_eq!(s.total, 5);
        assert_eq!(s.band, Band::Medium);
        let missing: Vec<_> = s.missing.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            missing,
            [
                "resp_rate",
                "oxygen",
                "systolic",
                "consciousness",
                "temperature"
            ]
        );
        let empty = score(&Observations::default()).unwrap();
        assert_eq!(
            (empty.total, empty.band, empty.missing.len()),
            (0, Band::Low, 7)
        );
    }

    #[test]
    fn impossible_values_are_refused() {
        for o in [
            Observations {
                spo2: Some(140.0),
                ..Default::default()
            },
            Observations {
                resp_rate: Some(-1.0),
                ..Default::default()
            },
            Observations {
                pulse: Some(f64::NAN),
                ..Default::default()
            },
            Observations {
                temperature: Some(370.0),
                ..Default::default()
            },
            Observations {
                systolic: Some(-20.0),
                ..Default::default()
            },
        ] {
            assert!(score(&o).is_err(), "{o:?}");
        }
    }
}
