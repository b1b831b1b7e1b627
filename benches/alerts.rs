//! The cost of one alert evaluation, the work the alert stage does after each
//! commit of new readings (at most once a second) and every 30 s otherwise.
//!
//! `cargo bench --bench alerts`; results in docs/performance.md. Two parts: the pure
//! rules over a large home (60 residents with four vitals each, 120 assigned
//! sensors), and the steady-state `AlertBook::sync` on a real SQLite file with 60
//! open alerts (every cause still holds: nothing is written).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use carehub::clinical::VitalSample;
use carehub::clinical::alert_rules::{
    DeviceState, GatewayState, Limits, ResidentState, Snapshot, evaluate,
};
use carehub::model::{Quantity, Timestamp, Unit, Value};

const NOW: i64 = 1_763_930_467_000;

fn snapshot() -> Snapshot {
    let at = Timestamp::from_unix_ms(NOW - 60_000);
    let v = |quantity, n, unit| VitalSample {
        quantity,
        value: Value::Number(n),
        unit,
        taken_at: at,
        device_time: None,
        device: None,
        reading_id: None,
    };
    let residents = (0..60)
        .map(|i| ResidentState {
            id: i,
            display_name: format!("Resident {i}"),
            room: format!("Room {i}"),
            vitals: vec![
                // Every third resident has SpO2 91: a single-3 alert.
                v(
                    Quantity::Spo2,
                    if i % 3 == 0 { 91.0 } else { 96.0 },
                    Unit::Percent,
                ),
                v(Quantity::PulseRate, 72.0 + (i % 50) as f64, Unit::PerMinute),
                v(Quantity::SystolicPressure, 125.0, Unit::MillimetreOfMercury),
                v(Quantity::BodyTemperature, 37.1, Unit::Celsius),
            ],
            thresholds: None,
            spo2_scale: Default::default(),
        })
        .collect();
    let devices = (0..120)
        .map(|i| DeviceState {
            address: format!("A4:C1:38:00:00:{i:02X}"),
            resident_id: Some(i / 2),
            last_seen: Some(at),
            assigned_at: None,
            battery_percent: Some(if i % 10 == 0 { 9 } else { 80 }),
            meter_renumbered: None,
        })
        .collect();
    Snapshot {
        residents,
        devices,
        gateway: GatewayState::default(),
        started_at: None,
    }
}

fn rules(c: &mut Criterion) {
    let s = snapshot();
    let limits = Limits::default();
    let now = Timestamp::from_unix_ms(NOW);
    let causes = evaluate(&s, &limits, now);
    // 20 single-3s, 4 of them also NEWS2 5 (pulse 111 and up), 12 low batteries.
    assert_eq!(
        causes.causes.len(),
        20 + 4 + 12,
        "the bench data raises what it says"
    );
    c.bench_function("alerts/evaluate 60 residents 120 sensors", |b| {
        b.iter(|| evaluate(black_box(&s), &limits, now))
    });

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bench.db");
    let mut conn = rusqlite::Connection::open(&path).expect("open");
    carehub::store::migrate_to(&mut conn, carehub::store::SCHEMA_VERSION).expect("migrate");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    drop(conn);
    let mut book = carehub::store::AlertBook::open(&path).expect("book");
    let life = Default::default();
    book.sync(&causes, &life, now).expect("first sync");
    c.bench_function("alerts/sync 36 open causes, nothing changes", |b| {
        b.iter(|| book.sync(black_box(&causes), &life, now).expect("sync"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = rules
}
criterion_main!(benches);
