//! Caps under load: producers ingest far more than the outbox may hold while an
//! uplink drains slowly. The outbox stays within its cap, only room data is
//! evicted while room data is there to evict, no vital sign is lost, and every
//! reading is accounted for: acked + evicted = ingested, never silently gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use carehub::config::Synchronous;
use carehub::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value,
};
use carehub::store::{Class, EvictionReason, Store, StoreSettings};
use carehub::system::health::Health;

const PRODUCERS: u64 = 4;
const BATCHES: u64 = 50;
const PER_BATCH: u64 = 100;
/// One reading in five is a vital sign: 4,000 in all, fewer than the cap, so that
/// there is always room data to evict first and no vital sign may be evicted.
const CAP: u64 = 6000;

fn reading(n: u64) -> Reading {
    let vital = n.is_multiple_of(5);
    Reading {
        id: ReadingId::new(Timestamp::now()),
        device: DeviceAddress([0xC0, 0, 0, 0, 1, (n % 11) as u8]),
        subject: if vital {
            Subject::Resident(ResidentId(1))
        } else {
            Subject::Room("Lounge".into())
        },
        quantity: if vital {
            Quantity::BodyTemperature
        } else {
            Quantity::Humidity
        },
        value: Value::Number(36.0 + (n % 10) as f64 / 10.0),
        unit: if vital { Unit::Celsius } else { Unit::Percent },
        measured_at: None,
        received_at: Timestamp::now(),
        clock_synced: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_hold_under_load_and_every_reading_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        commit_max_readings: 200,
        commit_max_delay: Duration::from_millis(2),
        synchronous: Synchronous::Normal,
        max_outbox_readings: CAP,
        min_free_disk_bytes: 0,
        ..StoreSettings::at(dir.path().join("caps.db"))
    };
    let mut health = Health::default();
    let store = Store::open(
        settings,
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .unwrap();
    let mut vital_ids = HashSet::new();
    let batches_done = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let batches: Vec<Vec<Reading>> = (0..BATCHES)
            .map(|b| {
                (0..PER_BATCH)
                    .map(|i| reading((p * BATCHES + b) * PER_BATCH + i))
                    .collect()
            })
            .collect();
        for r in batches.iter().flatten() {
            if r.quantity.is_vital_sign() {
                vital_ids.insert(r.id);
            }
        }
        let h = store.handle.clone();
        let done = batches_done.clone();
        producers.push(tokio::spawn(async move {
            for batch in batches {
                h.ingest(batch).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // A slow uplink: one lease of 50 per two batches of 100 committed, so that
    // the outbox outgrows its cap whatever the speed of the machine.
    let h = store.handle.clone();
    let mut acked = HashSet::new();
    let mut rounds = 0u64;
    while !producers.iter().all(|p| p.is_finished()) {
        if rounds * 2 >= batches_done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        rounds += 1;
        if let Some(l) = h.lease(50).await.unwrap() {
            for r in &l.readings {
                assert!(acked.insert(r.reading.id), "a reading acked twice");
            }
            h.ack(l.id).await.unwrap();
        }
    }
    for p in producers {
        p.await.unwrap();
    }
    let depth = store.reader.outbox_depth().unwrap();
    assert!(depth <= CAP, "outbox holds {depth} > cap {CAP}");
    let stats = store.reader.stats().unwrap();
    assert_eq!(
        stats.outbox_depth, depth,
        "the writer's count agrees with the database"
    );
    while let Some(l) = h.lease(500).await.unwrap() {
        for r in &l.readings {
            assert!(acked.insert(r.reading.id), "a reading acked twice");
        }
        h.ack(l.id).await.unwrap();
    }
    let s = h.stats();
    let room_evicted = s.evicted(EvictionReason::Readings, Class::Room);
    let vital_evicted = s.evicted(EvictionReason::Readings, Class::Vital);
    assert!(
        room_evicted > 0,
        "the load never reached the cap; the test proves nothing"
    );
    assert_eq!(
        vital_evicted, 0,
        "vital signs evicted while room data was waiting"
    );
    let total = PRODUCERS * BATCHES * PER_BATCH;
    assert_eq!(
        acked.len() as u64 + room_evicted,
        total,
        "readings unaccounted for"
    );
    assert!(
        vital_ids.iter().all(|id| acked.contains(id)),
        "a vital sign was lost"
    );
    assert_eq!(store.reader.stats().unwrap().evicted_total(), room_evicted);
    drop(h);
    let Store { handle, writer, .. } = store;
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
}
