//! Issue 15's table-driven pipeline tests: readings in (through the real store
//! and its `latest` table), then the score, its freshness, the alerts the stage
//! raises and the words on the overview page out. Each row is one way a
//! deteriorating resident once stopped being flagged, or a value was shown as
//! what it was not.

use super::test_support::{alert_stage, get, setup};
use crate::model::*;

const MIN: i64 = 60_000;

/// One reading of the table: quantity, value, unit, device time relative to
/// now in minutes (`None`: the format carries none), received minutes ago.
type In = (Quantity, f64, Unit, Option<i64>, i64);

struct Case {
    name: &'static str,
    readings: &'static [In],
    scale_two: bool,
    /// Words the overview must show.
    shows: &'static [&'static str],
    /// Words it must not show.
    hides: &'static [&'static str],
    /// The alert keys open after one evaluation, sorted.
    alerts: &'static [&'static str],
}

use Quantity as Q;
use Unit as U;

const CASES: &[Case] = &[
    Case {
        // A cuff still on summer time: its clock an hour ahead. The value counts
        // from its receipt: current, scored and alerted, and the clock is named.
        name: "device clock an hour ahead",
        readings: &[
            (Q::Spo2, 97.0, U::Percent, Some(-5), 5),
            (Q::Spo2, 91.0, U::Percent, Some(60), 0),
        ],
        scale_two: false,
        shows: &[
            "CHECK CLOCK",
            "device clock ahead; timed on receipt",
            "NEWS2 3",
        ],
        hides: &["STALE"],
        alerts: &[
            "device:C0:00:00:00:00:01/clock",
            "resident:1/news2-single-3:spo2",
        ],
    },
    Case {
        // A spot-check device uploading its memory: taken 90 min ago, received
        // now. Not current: no score shown as current, no alert raised from it.
        name: "device time in the past (stored measurement)",
        readings: &[(Q::Spo2, 85.0, U::Percent, Some(-90), 0)],
        scale_two: false,
        shows: &["STALE", "last reading 2 h ago"],
        hides: &["CHECK CLOCK", "HIGH"],
        alerts: &[],
    },
    Case {
        // The window is anchored at now: a 70-minute-old temperature is left out
        // (missing), the rest is current, and the score says how old it is.
        name: "mixed ages",
        readings: &[
            (Q::Spo2, 97.0, U::Percent, None, 1),
            (Q::PulseRate, 131.0, U::PerMinute, None, 50),
            (Q::BodyTemperature, 37.0, U::Celsius, None, 70),
        ],
        scale_two: false,
        shows: &[
            "NEWS2 3 (partial)",
            "from values up to 50 min old",
            "temperature",
        ],
        hides: &[],
        alerts: &["resident:1/news2-single-3:pulse"],
    },
    Case {
        // A thermometer pointed at a wall: left out, named, and every other
        // parameter still scored and alerted on.
        name: "implausible value",
        readings: &[
            (Q::BodyTemperature, 20.0, U::Celsius, None, 0),
            (Q::PulseRate, 131.0, U::PerMinute, None, 0),
            (Q::Spo2, 91.0, U::Percent, None, 0),
        ],
        scale_two: false,
        shows: &["20.0°C — check the sensor", "NEWS2 6 (partial)"],
        hides: &[],
        alerts: &[
            "resident:1/news2-single-3:pulse",
            "resident:1/news2-single-3:spo2",
            "resident:1/news2:medium",
        ],
    },
    Case {
        // The thermometer settling at 41 °C is not a fever: its own quantity,
        // never scored.
        name: "intermediate temperature",
        readings: &[
            (Q::IntermediateTemperature, 41.0, U::Celsius, None, 0),
            (Q::Spo2, 97.0, U::Percent, None, 0),
        ],
        scale_two: false,
        shows: &["NEWS2 0 (partial)"],
        hides: &["NEWS2 2"],
        alerts: &[],
    },
    Case {
        // Scale 2, air or oxygen not recorded: 97 % cannot be read off the
        // chart. SpO₂ is missing, never scored 0 as if on air.
        name: "scale 2 with oxygen unknown",
        readings: &[
            (Q::Spo2, 97.0, U::Percent, None, 0),
            (Q::PulseRate, 72.0, U::PerMinute, None, 0),
        ],
        scale_two: true,
        shows: &["NEWS2 0 (partial)", "SpO₂"],
        hides: &[],
        alerts: &[],
    },
    Case {
        // Start-up: the sensor registered a moment ago and not heard yet is not
        // "silent: never heard".
        name: "start-up",
        readings: &[],
        scale_two: false,
        shows: &["No readings yet"],
        hides: &["silent"],
        alerts: &[],
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn readings_in_score_freshness_alerts_and_page_words_out() {
    let mut failures = Vec::new();
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let (store, state) = setup(dir.path()).await;
        let now = Timestamp::now();
        let readings: Vec<Reading> = case
            .readings
            .iter()
            .map(|&(quantity, v, unit, device_min, received_min_ago)| {
                let received = Timestamp::from_unix_ms(now.unix_ms() - received_min_ago * MIN);
                Reading {
                    id: ReadingId::UNASSIGNED,
                    device: "C0:00:00:00:00:01".parse().unwrap(),
                    subject: Subject::Resident(ResidentId(1)),
                    quantity,
                    value: Value::Number(v),
                    unit,
                    measured_at: device_min
                        .map(|m| Timestamp::from_unix_ms(now.unix_ms() + m * MIN)),
                    received_at: received,
                    clock_synced: true,
                }
            })
            .collect();
        if !readings.is_empty() {
            store.handle.ingest(readings).await.unwrap();
        }
        if case.scale_two {
            state
                .alerts
                .lock()
                .unwrap()
                .set_spo2_scale(1, crate::clinical::news2::Spo2Scale::Two, "nurse", now)
                .unwrap();
        }
        // With the lifecycle's own minimum hold, started now.
        let stage = crate::alert_stage::AlertStage {
            lifecycle: Default::default(),
            started_at: now,
            ..alert_stage(&state, &store, dir.path())
        };
        stage.evaluate_once(now).await.unwrap();
        let open: Vec<String> = state
            .alerts
            .lock()
            .unwrap()
            .list(0)
            .unwrap()
            .into_iter()
            .map(|a| a.cause_key)
            .collect();
        let mut open_sorted = open.clone();
        open_sorted.sort();
        if open_sorted != case.alerts {
            failures.push(format!(
                "{}: alerts {open_sorted:?}, want {:?}",
                case.name, case.alerts
            ));
        }
        let (_, page) = get(&state, "/").await;
        let tile = page
            .split("<article class=\"tile")
            .nth(1)
            .unwrap_or_default();
        for w in case.shows {
            if !tile.contains(w) {
                failures.push(format!(
                    "{}: the tile does not say {w:?}:\n{tile}",
                    case.name
                ));
            }
        }
        // Everything above the footer (which explains STALE in general).
        let body = page.split("<footer").next().unwrap_or_default();
        for w in case.hides {
            if body.contains(w) {
                failures.push(format!("{}: the page says {w:?}:\n{tile}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
