//! Unit tests of the store on a real SQLite file: every lease state transition,
//! migrations from every earlier version, caps and eviction order, retention,
//! corruption at start-up.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::model::{DeviceAddress, Quantity, ReadingId, ResidentId, Unit, Value};
use crate::system::health::Health;

fn settings(dir: &Path) -> StoreSettings {
    StoreSettings {
        commit_max_readings: 100,
        commit_max_delay: Duration::from_millis(1),
        synchronous: Synchronous::Normal,
        // No floor: these tests must not depend on how full the build disk is.
        min_free_disk_bytes: 0,
        ..StoreSettings::at(dir.join("t.db"))
    }
}

fn open(s: StoreSettings) -> Store {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut health = Health::default();
    Store::open(
        s,
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .unwrap()
}

/// A reading numbered `n` (its id's last bytes), received `n` ms after a base time.
fn reading(n: u64, q: Quantity) -> Reading {
    let received = Timestamp::from_unix_ms(1_800_000_000_000 + n as i64);
    // A UUIDv7 layout with a fixed "random" part, so that the test knows every id.
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&received.unix_ms().to_be_bytes()[2..]);
    id[6] = 0x70;
    id[8..].copy_from_slice(&n.to_be_bytes());
    let (subject, unit) = if q.is_vital_sign() {
        (Subject::Resident(ResidentId(1)), Unit::PerMinute)
    } else {
        (Subject::Room("Lounge".into()), Unit::Celsius)
    };
    Reading {
        id: ReadingId::from_bytes(id),
        device: DeviceAddress([0xC0, 0, 0, 0, 0, (n % 7) as u8]),
        subject,
        quantity: q,
        value: Value::Number(60.0 + n as f64),
        unit,
        measured_at: None,
        received_at: received,
        clock_synced: true,
    }
}

fn ids(lease: &Lease) -> Vec<ReadingId> {
    lease.readings.iter().map(|r| r.reading.id).collect()
}

fn number(id: ReadingId) -> u64 {
    u64::from_be_bytes(id.as_bytes()[8..].try_into().unwrap())
}

async fn close(store: Store) {
    let Store { handle, writer, .. } = store;
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_gives_vital_signs_first_then_oldest_room_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest(vec![
        reading(1, Quantity::Temperature),
        reading(2, Quantity::HeartRate),
        reading(3, Quantity::Humidity),
        reading(4, Quantity::Spo2),
    ])
    .await
    .unwrap();
    let lease = h.lease(3).await.unwrap().unwrap();
    let got: Vec<u64> = ids(&lease).into_iter().map(number).collect();
    assert_eq!(got, vec![2, 4, 1]);
    // The reading round-trips whole, with the resident's reference absent (not provisioned).
    assert_eq!(lease.readings[0].reading, reading(2, Quantity::HeartRate));
    let rest = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&rest).into_iter().map(number).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(h.lease(10).await.unwrap(), None, "everything is leased");
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_moves_to_history_release_makes_leasable_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest((1..=6).map(|n| reading(n, Quantity::PulseRate)).collect())
        .await
        .unwrap();
    let a = h.lease(2).await.unwrap().unwrap();
    let b = h.lease(2).await.unwrap().unwrap();
    h.ack(a.id).await.unwrap();
    assert_eq!(store.reader.outbox_depth().unwrap(), 4);
    assert_eq!(h.stats().outbox_readings.load(Ordering::Relaxed), 4);
    // Acked readings stay in history.
    let history: i64 = rusqlite::Connection::open(dir.path().join("t.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(history, 6);
    // Acking twice, or releasing an acked lease, is refused and changes nothing.
    assert!(matches!(
        *h.ack(a.id).await.unwrap_err(),
        StoreError::UnknownLease(_)
    ));
    assert!(matches!(
        *h.release(a.id).await.unwrap_err(),
        StoreError::UnknownLease(_)
    ));
    h.release(b.id).await.unwrap();
    let c = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&c).into_iter().map(number).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    h.ack(c.id).await.unwrap();
    assert_eq!(h.lease(10).await.unwrap(), None);
    assert_eq!(store.reader.outbox_depth().unwrap(), 0);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn release_all_and_restart_release_every_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest((1..=4).map(|n| reading(n, Quantity::Co2)).collect())
        .await
        .unwrap();
    let a = h.lease(2).await.unwrap().unwrap();
    let _b = h.lease(2).await.unwrap().unwrap();
    h.release_all().await.unwrap();
    assert!(matches!(
        *h.ack(a.id).await.unwrap_err(),
        StoreError::UnknownLease(_)
    ));
    let all = h.lease(10).await.unwrap().unwrap();
    assert_eq!(all.readings.len(), 4);
    close(store).await;
    // A restart forgets leases: everything not acked is leasable again.
    let store = open(settings(dir.path()));
    let again = store.handle.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&again).into_iter().map(number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(store.reader.stats().unwrap().outbox_depth, 4);
    close(store).await;
}

/// Receipts mode: a reconnect releases every lease but those waiting for a
/// receipt, which stay leased (not sent again) and can still be acked.
#[tokio::test(flavor = "multi_thread")]
async fn release_all_but_keeps_the_leases_awaiting_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest((1..=6).map(|n| reading(n, Quantity::PulseRate)).collect())
        .await
        .unwrap();
    let a = h.lease(2).await.unwrap().unwrap();
    let b = h.lease(2).await.unwrap().unwrap();
    let c = h.lease(2).await.unwrap().unwrap();
    h.release_all_but(vec![b.id]).await.unwrap();
    // a and c are leasable again; b is not.
    let again = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&again).into_iter().map(number).collect::<Vec<_>>(),
        vec![1, 2, 5, 6]
    );
    assert!(matches!(
        *h.ack(a.id).await.unwrap_err(),
        StoreError::UnknownLease(_)
    ));
    assert!(matches!(
        *h.ack(c.id).await.unwrap_err(),
        StoreError::UnknownLease(_)
    ));
    // b's receipt comes: it leaves the outbox.
    h.ack(b.id).await.unwrap();
    assert_eq!(store.reader.outbox_depth().unwrap(), 4);
    close(store).await;
}

/// A lease refused again and again is held: kept in the outbox, skipped by
/// later leases (the readings behind it still go), kept held across
/// `release_all`, and leasable again after `retry_held`.
#[tokio::test(flavor = "multi_thread")]
async fn refused_leases_are_released_then_held_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest((1..=6).map(|n| reading(n, Quantity::Spo2)).collect())
        .await
        .unwrap();
    let nums = |l: &crate::store::Lease| ids(l).into_iter().map(number).collect::<Vec<_>>();
    // First refusal: released, the same readings come back.
    let a = h.lease(3).await.unwrap().unwrap();
    let r = h.refuse(a.id, 2).await.unwrap();
    assert_eq!((r.held, r.refusals, r.held_readings), (false, 1, 0));
    let a = h.lease(3).await.unwrap().unwrap();
    assert_eq!(nums(&a), vec![1, 2, 3]);
    // Second: held; the next lease skips them.
    let r = h.refuse(a.id, 2).await.unwrap();
    assert_eq!((r.held, r.refusals, r.held_readings), (true, 2, 3));
    let b = h.lease(10).await.unwrap().unwrap();
    assert_eq!(nums(&b), vec![4, 5, 6]);
    h.ack(b.id).await.unwrap();
    // A reconnect (release_all) does not undo the hold; nothing was deleted.
    h.release_all().await.unwrap();
    assert_eq!(h.lease(10).await.unwrap(), None);
    assert_eq!(store.reader.stats().unwrap().outbox_depth, 3);
    // A retry makes them leasable again, counting afresh.
    assert_eq!(h.retry_held().await.unwrap(), 3);
    let a = h.lease(10).await.unwrap().unwrap();
    assert_eq!(nums(&a), vec![1, 2, 3]);
    let r = h.refuse(a.id, 2).await.unwrap();
    assert_eq!((r.held, r.refusals), (false, 1));
    let a = h.lease(10).await.unwrap().unwrap();
    h.ack(a.id).await.unwrap();
    assert_eq!(store.reader.stats().unwrap().outbox_depth, 0);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leased_reading_carries_the_resident_reference_never_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.provision(
        vec![Resident {
            id: ResidentId(1),
            display_name: "Ada".into(),
            room: "1".into(),
            reference: "res-7f3a".into(),
        }],
        vec![],
    )
    .await
    .unwrap();
    h.ingest(vec![
        reading(1, Quantity::HeartRate),
        reading(2, Quantity::Humidity),
    ])
    .await
    .unwrap();
    let lease = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        lease.readings[0].resident_reference.as_deref(),
        Some("res-7f3a")
    );
    assert_eq!(lease.readings[1].resident_reference, None);
    assert_eq!(
        lease.readings[1].reading.subject,
        Subject::Room("Lounge".into())
    );
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn special_values_survive_the_outbox_as_specials() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let mut r = reading(1, Quantity::Spo2);
    r.value = Value::Special(SpecialValue::NotANumber);
    r.measured_at = Some(Timestamp::from_unix_ms(1_700_000_000_000));
    store.handle.ingest(vec![r.clone()]).await.unwrap();
    let lease = store.handle.lease(1).await.unwrap().unwrap();
    assert_eq!(lease.readings[0].reading, r);
    close(store).await;
}

use crate::model::SpecialValue;

#[tokio::test(flavor = "multi_thread")]
async fn row_cap_evicts_room_data_before_vital_signs_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.max_outbox_readings = 100;
    let store = open(s);
    let h = &store.handle;
    // 60 room readings, then 60 vital: 20 over the cap (plus 1% headroom: 21).
    h.ingest(
        (1..=60)
            .map(|n| reading(n, Quantity::Temperature))
            .collect(),
    )
    .await
    .unwrap();
    h.ingest(
        (61..=120)
            .map(|n| reading(n, Quantity::HeartRate))
            .collect(),
    )
    .await
    .unwrap();
    let st = store.reader.stats().unwrap();
    assert_eq!(st.outbox_depth, 99);
    assert_eq!(store.reader.outbox_depth().unwrap(), 99);
    assert_eq!(h.stats().evicted(EvictionReason::Readings, Class::Room), 21);
    assert_eq!(h.stats().evicted(EvictionReason::Readings, Class::Vital), 0);
    assert_eq!(st.evicted_total(), 21);
    let lease = h.lease(1000).await.unwrap().unwrap();
    let got: Vec<u64> = ids(&lease).into_iter().map(number).collect();
    let want: Vec<u64> = (61..=120).chain(22..=60).collect();
    assert_eq!(got, want, "vital first, then the newest room data");
    close(store).await;
    // Counts survive a restart.
    let store = open(settings(dir.path()));
    assert_eq!(
        store
            .handle
            .stats()
            .evicted(EvictionReason::Readings, Class::Room),
        21
    );
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn row_cap_evicts_vital_signs_when_no_room_data_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.max_outbox_readings = 50;
    let store = open(s);
    let h = &store.handle;
    h.ingest((1..=10).map(|n| reading(n, Quantity::Humidity)).collect())
        .await
        .unwrap();
    h.ingest((11..=60).map(|n| reading(n, Quantity::Spo2)).collect())
        .await
        .unwrap();
    // 60 > 50: target 50 - 0 = 50... headroom is 1% of 50 = 0, so exactly 10 go.
    assert_eq!(h.stats().evicted(EvictionReason::Readings, Class::Room), 10);
    h.ingest((61..=65).map(|n| reading(n, Quantity::Spo2)).collect())
        .await
        .unwrap();
    assert_eq!(h.stats().evicted(EvictionReason::Readings, Class::Vital), 5);
    let lease = h.lease(1000).await.unwrap().unwrap();
    let got: Vec<u64> = ids(&lease).into_iter().map(number).collect();
    assert_eq!(got, (16..=65).collect::<Vec<_>>());
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn byte_cap_evicts_until_under() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    let per = limits::row_bytes(&reading(1, Quantity::Temperature));
    s.max_outbox_bytes = per * 30;
    let store = open(s);
    store
        .handle
        .ingest(
            (1..=40)
                .map(|n| reading(n, Quantity::Temperature))
                .collect(),
        )
        .await
        .unwrap();
    let st = store.reader.stats().unwrap();
    assert!(
        st.outbox_bytes <= per * 30,
        "{} > {}",
        st.outbox_bytes,
        per * 30
    );
    // Eviction goes 1% below the cap, so that a full outbox does not evict on
    // every commit: 29 rows fit under 99% of 30 rows' bytes.
    assert_eq!(st.outbox_depth, 29);
    assert_eq!(
        store
            .handle
            .stats()
            .evicted(EvictionReason::Bytes, Class::Room),
        11
    );
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn byte_estimate_in_sql_matches_rust() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let mut rs: Vec<Reading> = (1..=5).map(|n| reading(n, Quantity::Temperature)).collect();
    rs[1].subject = Subject::Room("Salle à manger".into());
    rs[2].value = Value::Special(SpecialValue::Unsuccessful);
    rs.push(reading(9, Quantity::MeanArterialPressure));
    let want: u64 = rs.iter().map(limits::row_bytes).sum();
    store.handle.ingest(rs).await.unwrap();
    assert_eq!(
        store.handle.stats().outbox_bytes.load(Ordering::Relaxed),
        want
    );
    close(store).await;
    let store = open(settings(dir.path()));
    assert_eq!(
        store.handle.stats().outbox_bytes.load(Ordering::Relaxed),
        want,
        "recounted by SQL at start-up"
    );
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_evicts_old_undelivered_and_purges_old_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.max_outbox_age = Duration::from_secs(30 * 86_400);
    s.history = Duration::from_secs(7 * 86_400);
    let store = open(s);
    let h = &store.handle;
    let day = 86_400_000;
    let base = 1_800_000_000_000i64;
    let at = |n: u64, days_ago: i64, q| {
        let mut r = reading(n, q);
        r.received_at = Timestamp::from_unix_ms(base - days_ago * day + n as i64);
        r
    };
    // Old: 40 days (undelivered: evicted for age), 10 days (delivered: purged).
    h.ingest(vec![
        at(1, 40, Quantity::Temperature),
        at(2, 40, Quantity::HeartRate),
    ])
    .await
    .unwrap();
    h.ingest(vec![
        at(3, 10, Quantity::HeartRate),
        at(4, 10, Quantity::HeartRate),
    ])
    .await
    .unwrap();
    h.ingest(vec![
        at(5, 1, Quantity::HeartRate),
        at(6, 1, Quantity::HeartRate),
    ])
    .await
    .unwrap();
    // Deliver 3..6 (vital first: 2 is leased too; release it back).
    let lease = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&lease).into_iter().map(number).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6, 1]
    );
    h.release(lease.id).await.unwrap();
    h.ingest(vec![]).await.unwrap();
    let a = h.lease(10).await.unwrap().unwrap();
    h.release(a.id).await.unwrap();
    // Ack only 3..6 by leasing them alone: evict-for-age first.
    let report = h.maintain(Timestamp::from_unix_ms(base)).await.unwrap();
    assert_eq!(report.evicted_for_age, 2);
    assert_eq!(report.history_purged, 0, "nothing delivered yet");
    let b = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&b).into_iter().map(number).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    h.ack(b.id).await.unwrap();
    let report = h.maintain(Timestamp::from_unix_ms(base)).await.unwrap();
    assert_eq!(report.history_purged, 2);
    assert_eq!(h.stats().evicted(EvictionReason::Age, Class::Room), 1);
    assert_eq!(h.stats().evicted(EvictionReason::Age, Class::Vital), 1);
    let left: Vec<i64> = rusqlite::Connection::open(dir.path().join("t.db"))
        .unwrap()
        .prepare("SELECT received_at_ms FROM readings ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, vec![base - day + 5, base - day + 6]);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn age_cap_spares_readings_stamped_before_the_clock_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    let mut unsynced = reading(1, Quantity::HeartRate);
    unsynced.received_at = Timestamp::from_unix_ms(86_400_000); // 1970: no RTC, no NTP yet
    unsynced.clock_synced = false;
    let mut old = reading(2, Quantity::HeartRate);
    old.received_at = Timestamp::from_unix_ms(86_400_000 + 2);
    h.ingest(vec![unsynced.clone(), old, reading(3, Quantity::HeartRate)])
        .await
        .unwrap();
    let report = h
        .maintain(Timestamp::from_unix_ms(1_800_000_000_100))
        .await
        .unwrap();
    assert_eq!(report.evicted_for_age, 1);
    let lease = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&lease).into_iter().map(number).collect::<Vec<_>>(),
        vec![1, 3]
    );
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_report_oldest_unsent_and_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let st = store.reader.stats().unwrap();
    assert_eq!(
        (st.outbox_depth, st.oldest_unsent, st.last_commit),
        (0, None, None)
    );
    store
        .handle
        .ingest(vec![
            reading(5, Quantity::Humidity),
            reading(7, Quantity::HeartRate),
        ])
        .await
        .unwrap();
    let st = store.reader.stats().unwrap();
    assert_eq!(st.outbox_depth, 2);
    assert_eq!(
        st.oldest_unsent,
        Some(reading(5, Quantity::Humidity).received_at)
    );
    assert!(st.last_commit.is_some());
    assert!(st.database_bytes > 0);
    assert_eq!(st.corruption, None);
    assert!(!st.disk_full);
    close(store).await;
}

/// The v1 schema exactly as the walking skeleton created it, with one row.
fn make_v1(path: &Path) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    migrate_to(&mut c, 1).unwrap();
    c.execute(
        "INSERT INTO outbox (id, device, resident_id, room, quantity, value, status, unit,
                             measured_at_ms, received_at_ms, clock_synced, vital)
         VALUES (?1, 'C0:00:00:00:00:03', 1, NULL, 'heart_rate', 61, 'ok', '/min', NULL, ?2, 1, 1),
                (?3, 'C0:00:00:00:00:04', NULL, 'Lounge', 'temperature', NULL, 'nan', 'Cel', 5, ?2, 0, 0)",
        rusqlite::params![
            &reading(1, Quantity::HeartRate).id.as_bytes()[..],
            1_800_000_000_001i64,
            &reading(2, Quantity::Temperature).id.as_bytes()[..],
        ],
    )
    .unwrap();
}

/// The v2 schema with one assigned device and one reading, as issue-store left it.
fn make_v2(path: &Path) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    migrate_to(&mut c, 2).unwrap();
    c.execute_batch(
        "INSERT INTO residents (id, display_name, room, reference) VALUES (1, 'Ada', 'Room 1', 'ref-1');
         INSERT INTO devices (address, kind, resident_id, battery_percent, last_seen_ms)
             VALUES ('C0:00:00:00:00:03', 'heart_rate_monitor', 1, 80, 1800000000001);",
    )
    .unwrap();
    c.execute(
        "INSERT INTO readings (id, device, resident_id, room, quantity, value, status, unit,
                               measured_at_ms, received_at_ms, clock_synced)
         VALUES (?1, ?2, 1, NULL, 'heart_rate', 61, 'ok', '/min', NULL, 1800000000001, 1)",
        rusqlite::params![
            &reading(1, Quantity::HeartRate).id.as_bytes()[..],
            &[0xC0u8, 0, 0, 0, 0, 3][..],
        ],
    )
    .unwrap();
    c.execute("INSERT INTO outbox_vital (seq) VALUES (1)", [])
        .unwrap();
}

/// The v3 schema (text words, one outbox row per reading) with interleaved vital
/// and room readings, one of them already acked, one a special value.
fn make_v3(path: &Path) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    migrate_to(&mut c, 3).unwrap();
    c.execute_batch(
        "INSERT INTO residents (id, display_name, room, reference) VALUES (1, 'Ada', 'Room 1', 'ref-1');",
    )
    .unwrap();
    let rows = [
        (1, Quantity::HeartRate, Some(61.0), "ok", "/min"),
        (2, Quantity::Temperature, None, "nan", "Cel"),
        (3, Quantity::HeartRate, Some(62.0), "ok", "/min"),
        (4, Quantity::HeartRate, Some(63.0), "ok", "/min"),
        (5, Quantity::Temperature, Some(21.5), "ok", "Cel"),
    ];
    for (n, q, value, status, unit) in rows {
        let r = reading(n, q);
        let (resident, room) = match &r.subject {
            Subject::Resident(id) => (Some(id.0), None),
            _ => (None, Some("Lounge")),
        };
        // Reading 4 carries the device's own time, 90 s before it was received.
        let measured = (n == 4).then(|| r.received_at.unix_ms() - 90_000);
        c.execute(
            "INSERT INTO readings (seq, id, device, resident_id, room, quantity, value, status, unit,
                                   measured_at_ms, received_at_ms, clock_synced)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1)",
            rusqlite::params![
                n as i64,
                &r.id.as_bytes()[..],
                &r.device.0[..],
                resident,
                room,
                q.as_str(),
                value,
                status,
                unit,
                measured,
                r.received_at.unix_ms(),
            ],
        )
        .unwrap();
    }
    // Reading 3 was acked before the upgrade: it is history, not in the outbox.
    c.execute_batch(
        "INSERT INTO outbox_vital (seq) VALUES (1), (4);
         INSERT INTO outbox_room (seq) VALUES (2), (5);",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn migrates_from_every_earlier_version() {
    for from in 0..SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        match from {
            0 => drop(rusqlite::Connection::open(&path).unwrap()),
            1 => make_v1(&path),
            2 => make_v2(&path),
            3 => make_v3(&path),
            // Later versions add tables beside the v3 data set: build it, then
            // migrate to the version under test.
            n => {
                make_v3(&path);
                let mut c = rusqlite::Connection::open(&path).unwrap();
                migrate_to(&mut c, n).unwrap();
            }
        }
        // Every reading before the upgrade: its id, device, times, as stored then.
        type Row = (i64, Vec<u8>, Vec<u8>, i64, Option<i64>);
        let rows = |sql: &str| -> Vec<Row> {
            rusqlite::Connection::open(&path)
                .unwrap()
                .prepare(sql)
                .unwrap()
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let before = match from {
            0 | 1 => Vec::new(),
            // From v8 the row holds codes; the view shows what it stands for.
            8.. => rows(
                "SELECT seq, id, device, received_at_ms, measured_at_ms FROM readings_text ORDER BY seq",
            ),
            _ => rows(
                "SELECT seq, id, device, received_at_ms, measured_at_ms FROM readings ORDER BY seq",
            ),
        };
        let store = open(settings(dir.path()));
        if from >= 2 {
            let after = rows(
                "SELECT seq, id, device, received_at_ms, measured_at_ms FROM readings_text ORDER BY seq",
            );
            assert_eq!(
                after, before,
                "from {from}: every reading the same after the upgrade"
            );
        }
        let v: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION, "from {from}");
        let lease = store.handle.lease(10).await.unwrap();
        if from == 1 {
            let lease = lease.unwrap();
            let r: Vec<&Reading> = lease.readings.iter().map(|l| &l.reading).collect();
            assert_eq!(r.len(), 2);
            assert_eq!(r[0].id, reading(1, Quantity::HeartRate).id);
            assert_eq!(r[0].device, "C0:00:00:00:00:03".parse().unwrap());
            assert_eq!(r[0].value, Value::Number(61.0));
            assert_eq!(r[1].subject, Subject::Room("Lounge".into()));
            assert_eq!(r[1].value, Value::Special(SpecialValue::NotANumber));
            assert_eq!(r[1].measured_at, Some(Timestamp::from_unix_ms(5)));
            assert!(!r[1].clock_synced);
            assert_eq!(store.reader.stats().unwrap().outbox_depth, 2);
        } else if from == 2 {
            let lease = lease.unwrap();
            assert_eq!(lease.readings.len(), 1);
            assert_eq!(
                lease.readings[0].resident_reference.as_deref(),
                Some("ref-1")
            );
            // The device keeps its assignment, battery and last-seen; it is not
            // claimed to be paired, and nothing is in the record yet.
            let d = store.reader.device_states().unwrap();
            assert_eq!(d.len(), 1);
            assert_eq!(d[0].device.subject, Subject::Resident(ResidentId(1)));
            assert_eq!(
                (d[0].paired, d[0].bonded_at, d[0].assigned_at, d[0].rssi),
                (false, None, None, None)
            );
            assert_eq!(d[0].battery_percent, Some(80));
            assert_eq!(
                d[0].last_seen,
                Some(Timestamp::from_unix_ms(1_800_000_000_001))
            );
            assert!(store.reader.pairing_events(10).unwrap().is_empty());
        } else if from >= 3 {
            // Versions 3 and later are built from the same v3 data set.
            // Words became codes and back, specials stay specials, the acked reading
            // stays history, and the outbox order (vital first, oldest first) holds.
            let lease = lease.unwrap();
            let got: Vec<(u64, Quantity, Value, Unit)> = lease
                .readings
                .iter()
                .map(|l| {
                    let r = &l.reading;
                    (number(r.id), r.quantity, r.value, r.unit)
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    (1, Quantity::HeartRate, Value::Number(61.0), Unit::PerMinute),
                    (4, Quantity::HeartRate, Value::Number(63.0), Unit::PerMinute),
                    (
                        2,
                        Quantity::Temperature,
                        Value::Special(SpecialValue::NotANumber),
                        Unit::Celsius
                    ),
                    (5, Quantity::Temperature, Value::Number(21.5), Unit::Celsius),
                ]
            );
            assert_eq!(
                lease.readings[0].resident_reference.as_deref(),
                Some("ref-1")
            );
            assert_eq!(store.reader.stats().unwrap().outbox_depth, 4);
            let c = rusqlite::Connection::open(&path).unwrap();
            let words: Vec<(i64, String, String, String)> = c
                .prepare("SELECT seq, quantity, status, unit FROM readings_text ORDER BY seq")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(words.len(), 5, "every row converted, the acked one too");
            assert_eq!(
                words[1],
                (2, "temperature".into(), "nan".into(), "Cel".into())
            );
            store.handle.ack(lease.id).await.unwrap();
            assert_eq!(store.reader.outbox_depth().unwrap(), 0);
        } else {
            assert_eq!(lease, None);
        }
        // The accounts tables exist, empty: no account and no setup is carried over.
        let users: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 0, "from {from}");
        // New readings go in after the migrated ones.
        store
            .handle
            .ingest(vec![reading(3, Quantity::Spo2)])
            .await
            .unwrap();
        close(store).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_schema_is_refused_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let mut health = Health::default();
    let err = Store::open(
        settings(dir.path()),
        tokio::runtime::Handle::current(),
        health.register("s"),
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    assert!(path.exists(), "a newer database is left where it is");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_database_is_moved_aside_with_an_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    store
        .handle
        .ingest(
            (1..=2000)
                .map(|n| reading(n, Quantity::HeartRate))
                .collect(),
        )
        .await
        .unwrap();
    close(store).await;
    // Overwrite a page in the middle of the file with garbage.
    let path = dir.path().join("t.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 5 * 4096);
    for b in &mut bytes[3 * 4096..4 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();

    let store = open(settings(dir.path()));
    let alarm = store.reader.stats().unwrap().corruption.expect("an alarm");
    let moved_to = alarm.moved_to.clone().expect("moved aside");
    assert!(moved_to.exists(), "the bad file is kept for inspection");
    // Copying out what can be read leaves the damaged file as it was.
    assert_eq!(std::fs::read(&moved_to).unwrap(), bytes);
    // The fresh database works.
    store
        .handle
        .ingest(vec![reading(1, Quantity::Spo2)])
        .await
        .unwrap();
    assert_eq!(store.reader.outbox_depth().unwrap(), 1);
    close(store).await;
    // And the next start is clean: no crash loop, nothing moved again; the
    // record of the damage is still there (it lives in the fresh file).
    let store = open(settings(dir.path()));
    assert_eq!(store.reader.stats().unwrap().corruption, Some(alarm));
    close(store).await;
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.contains(".corrupt-") && !name.ends_with("-wal") && !name.ends_with("-shm")
        })
        .count();
    assert_eq!(aside, 1, "moved aside once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_database_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.db"), vec![0x42u8; 10_000]).unwrap();
    let store = open(settings(dir.path()));
    assert!(store.reader.stats().unwrap().corruption.is_some());
    store
        .handle
        .ingest(vec![reading(1, Quantity::Spo2)])
        .await
        .unwrap();
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_lease_and_ingest_never_hand_out_a_reading_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = store.handle.clone();
    let producer = tokio::spawn(async move {
        for b in 0..50u64 {
            let q = if b % 2 == 0 {
                Quantity::HeartRate
            } else {
                Quantity::Humidity
            };
            h.ingest((0..20).map(|i| reading(b * 20 + i + 1, q)).collect())
                .await
                .unwrap();
        }
    });
    let h = store.handle.clone();
    let mut seen = HashSet::new();
    let mut released_once = false;
    loop {
        match h.lease(37).await.unwrap() {
            Some(l) => {
                if !released_once && l.readings.len() > 5 {
                    released_once = true;
                    h.release(l.id).await.unwrap();
                    continue;
                }
                for r in &l.readings {
                    assert!(
                        seen.insert(r.reading.id),
                        "{} handed out twice",
                        r.reading.id
                    );
                }
                h.ack(l.id).await.unwrap();
            }
            None if producer.is_finished() => break,
            None => tokio::task::yield_now().await,
        }
    }
    producer.await.unwrap();
    while let Some(l) = h.lease(100).await.unwrap() {
        for r in &l.readings {
            assert!(seen.insert(r.reading.id));
        }
        h.ack(l.id).await.unwrap();
    }
    assert_eq!(seen.len(), 1000);
    assert_eq!(store.reader.outbox_depth().unwrap(), 0);
    drop(h);
    close(store).await;
}

fn record(at: i64, device: &str, what: &str, change: RegistryChange) -> PairingRecord {
    PairingRecord {
        at: Timestamp::from_unix_ms(at),
        device: Some(device.parse().unwrap()),
        what: what.into(),
        who: "127.0.0.1".into(),
        change,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pairing_state_and_record_survive_a_reopen() {
    use crate::model::{Device, DeviceKind};
    let dir = tempfile::tempdir().unwrap();
    let strap = "C0:FF:EE:00:00:02";
    let stranger: DeviceAddress = "DE:AD:BE:EF:00:09".parse().unwrap();
    let store = open(settings(dir.path()));
    store
        .handle
        .provision(
            vec![Resident {
                id: ResidentId(3),
                display_name: "Edith".into(),
                room: "Room 9".into(),
                reference: "ref-3".into(),
            }],
            vec![],
        )
        .await
        .unwrap();
    let bonded = RegistryChange::Bonded {
        kind: DeviceKind::HeartRateMonitor,
        name: Some("Strap".into()),
    };
    store
        .handle
        .record(record(10, strap, "paired", bonded))
        .await
        .unwrap();
    let assigned = Device {
        address: strap.parse().unwrap(),
        kind: DeviceKind::HeartRateMonitor,
        model: None,
        name: Some("Strap".into()),
        subject: Subject::Resident(ResidentId(3)),
    };
    store
        .handle
        .record(record(
            20,
            strap,
            "assigned to resident 3",
            RegistryChange::Assigned(assigned),
        ))
        .await
        .unwrap();
    // Sightings of a stranger are never persisted; of the strap, they are.
    let sink = store.handle.event_sink();
    sink.seen(vec![
        Seen {
            device: strap.parse().unwrap(),
            rssi: Some(-61),
            at: Timestamp::from_unix_ms(30),
            replay: None,
        },
        Seen {
            device: stranger,
            rssi: Some(-40),
            at: Timestamp::from_unix_ms(30),
            replay: None,
        },
    ])
    .unwrap();
    sink.record(PairingRecord {
        at: Timestamp::from_unix_ms(31),
        device: None,
        what: "window closed".into(),
        who: "cli".into(),
        change: RegistryChange::Note,
    })
    .unwrap();
    close(store).await;

    let store = open(settings(dir.path()));
    let d = store.reader.device_states().unwrap();
    assert_eq!(d.len(), 1, "the stranger got no row: {d:?}");
    let s = &d[0];
    assert_eq!(s.device.subject, Subject::Resident(ResidentId(3)));
    assert_eq!(s.device.name.as_deref(), Some("Strap"));
    assert!(s.paired);
    assert_eq!(s.bonded_at, Some(Timestamp::from_unix_ms(10)));
    assert_eq!(s.assigned_at, Some(Timestamp::from_unix_ms(20)));
    assert_eq!(
        (s.rssi, s.last_seen),
        (Some(-61), Some(Timestamp::from_unix_ms(30)))
    );
    let events: Vec<(String, Option<String>, Option<String>)> = store
        .reader
        .pairing_events(10)
        .unwrap()
        .into_iter()
        .map(|e| (e.what, e.device, e.who))
        .collect();
    let ip = Some("127.0.0.1".to_owned());
    assert_eq!(
        events,
        [
            ("window closed".to_owned(), None, Some("cli".to_owned())),
            (
                "assigned to resident 3".to_owned(),
                Some(strap.to_owned()),
                ip.clone()
            ),
            ("paired".to_owned(), Some(strap.to_owned()), ip.clone()),
        ]
    );

    // Un-assigning keeps the row (and the bond) but nobody owns the device;
    // removing the bond clears the paired state.
    store
        .handle
        .record(record(40, strap, "unassigned", RegistryChange::Unassigned))
        .await
        .unwrap();
    store
        .handle
        .record(record(
            50,
            strap,
            "bond removed",
            RegistryChange::BondRemoved,
        ))
        .await
        .unwrap();
    let s = &store.reader.device_states().unwrap()[0];
    assert_eq!(s.device.subject, Subject::Unassigned);
    assert_eq!((s.paired, s.bonded_at, s.assigned_at), (false, None, None));
    assert_eq!(
        store.reader.pairing_events(1).unwrap()[0].what,
        "bond removed"
    );
    close(store).await;
}

/// A reading of resident `id` taken `ms` after the base time, by device time
/// when `device_time`, else by received time.
fn resident_reading(n: u64, id: i64, q: Quantity, ms: i64, device_time: bool) -> Reading {
    let t = Timestamp::from_unix_ms(1_800_000_000_000 + ms);
    Reading {
        subject: Subject::Resident(ResidentId(id)),
        measured_at: device_time.then_some(t),
        received_at: if device_time {
            Timestamp::from_unix_ms(1_800_000_000_000 + 10_000_000)
        } else {
            t
        },
        ..reading(n, q)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resident_history_is_by_time_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    store
        .handle
        .ingest(vec![
            resident_reading(1, 1, Quantity::PulseRate, 3_000, false),
            // Measured earlier by the device's clock, received later: ordered by when taken.
            resident_reading(2, 1, Quantity::PulseRate, 1_000, true),
            resident_reading(3, 1, Quantity::Spo2, 2_000, false),
            resident_reading(4, 2, Quantity::PulseRate, 2_500, false),
            resident_reading(5, 1, Quantity::PulseRate, -5_000, false),
            // A device clock an hour ahead (issue 15): timed on its receipt.
            Reading {
                measured_at: Some(Timestamp::from_unix_ms(1_800_000_000_000 + 3_604_000)),
                ..resident_reading(6, 1, Quantity::Spo2, 4_000, false)
            },
        ])
        .await
        .unwrap();
    let since = Timestamp::from_unix_ms(1_800_000_000_000);
    let h = store.reader.resident_history(ResidentId(1), since).unwrap();
    // Resident 1 only, taken at or after `since`, in the order taken.
    let got: Vec<(Quantity, i64)> = h
        .iter()
        .map(|v| (v.quantity, v.taken_at.unix_ms() - since.unix_ms()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Quantity::PulseRate, 1_000),
            (Quantity::Spo2, 2_000),
            (Quantity::PulseRate, 3_000),
            (Quantity::Spo2, 4_000)
        ]
    );
    let later = Timestamp::from_unix_ms(since.unix_ms() + 2_500);
    let h = store.reader.resident_history(ResidentId(1), later).unwrap();
    assert_eq!(h.len(), 2);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resident_changes_are_refused_in_words_and_never_fail_readings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let add = |name: &str, reference: &str| ResidentChange::Add {
        display_name: name.into(),
        room: "Room 1".into(),
        reference: reference.into(),
    };
    let ada = store
        .handle
        .change_resident(add("Ada", "R-0001"))
        .await
        .unwrap();
    let err = store
        .handle
        .change_resident(add("Bea", "R-0001"))
        .await
        .unwrap_err();
    assert!(
        matches!(&*err, StoreError::ReferenceTaken(r) if r == "R-0001"),
        "{err}"
    );
    let bea = store
        .handle
        .change_resident(add("Bea", "R-0002"))
        .await
        .unwrap();
    let edit = |id: ResidentId, reference: &str| {
        ResidentChange::Edit(Resident {
            id,
            display_name: "Bea B".into(),
            room: "Room 2".into(),
            reference: reference.into(),
        })
    };
    let err = store
        .handle
        .change_resident(edit(bea, "R-0001"))
        .await
        .unwrap_err();
    assert!(matches!(&*err, StoreError::ReferenceTaken(_)), "{err}");
    // Keeping one's own reference is not a clash.
    store
        .handle
        .change_resident(edit(bea, "R-0002"))
        .await
        .unwrap();
    store
        .handle
        .provision(
            Vec::new(),
            vec![Device {
                address: DeviceAddress([0xC0, 0, 0, 0, 0, 9]),
                kind: crate::model::DeviceKind::PulseOximeter,
                model: None,
                name: None,
                subject: Subject::Resident(ada),
            }],
        )
        .await
        .unwrap();
    let err = store
        .handle
        .change_resident(ResidentChange::Archive(ada))
        .await
        .unwrap_err();
    assert!(
        matches!(&*err, StoreError::DevicesAssigned { devices: 1, .. }),
        "{err}"
    );
    // A refused change in the same breath as readings leaves the readings stored.
    let (refused, stored) = tokio::join!(
        store.handle.change_resident(add("Cy", "R-0002")),
        store.handle.ingest(vec![reading(1, Quantity::HeartRate)]),
    );
    assert!(refused.is_err());
    stored.unwrap();
    store
        .handle
        .change_resident(ResidentChange::Archive(bea))
        .await
        .unwrap();
    let err = store
        .handle
        .change_resident(ResidentChange::Archive(bea))
        .await
        .unwrap_err();
    assert!(matches!(&*err, StoreError::NoSuchResident(_)), "{err}");
    let err = store
        .handle
        .change_resident(edit(bea, "R-0002"))
        .await
        .unwrap_err();
    assert!(matches!(&*err, StoreError::NoSuchResident(_)), "{err}");
    let all = store.reader.residents_all().unwrap();
    let names: Vec<(&str, bool)> = all
        .iter()
        .map(|r| (r.resident.display_name.as_str(), r.archived))
        .collect();
    assert_eq!(names, vec![("Ada", false), ("Bea B", true)]);
    assert_eq!(
        store.reader.resident(bea).unwrap().map(|r| r.archived),
        Some(true)
    );
    assert_eq!(store.reader.resident(ResidentId(99)).unwrap(), None);
    assert_eq!(store.reader.residents_overview().unwrap().len(), 1);
    close(store).await;
}
/// The outbox ranges of `class`, from the file.
fn ranges(path: &Path, class: Class) -> Vec<(i64, i64)> {
    rusqlite::Connection::open(path)
        .unwrap()
        .prepare(&format!(
            "SELECT first_seq, last_seq FROM {} ORDER BY first_seq",
            class.table()
        ))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_puts_each_class_in_one_range_and_acks_take_ranges_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(settings(dir.path()));
    let h = &store.handle;
    // Interleaved classes in one commit: vital signs are stored first.
    let mixed: Vec<Reading> = (1..=9)
        .map(|n| {
            let q = if n % 3 == 0 {
                Quantity::Temperature
            } else {
                Quantity::HeartRate
            };
            reading(n, q)
        })
        .collect();
    h.ingest(mixed).await.unwrap();
    assert_eq!(ranges(&path, Class::Vital), vec![(1, 6)]);
    assert_eq!(ranges(&path, Class::Room), vec![(7, 9)]);
    // A commit of vital signs only extends the vital range it follows.
    h.ingest((10..=12).map(|n| reading(n, Quantity::Spo2)).collect())
        .await
        .unwrap();
    assert_eq!(ranges(&path, Class::Vital), vec![(1, 6), (10, 12)]);
    h.ingest((13..=14).map(|n| reading(n, Quantity::Spo2)).collect())
        .await
        .unwrap();
    assert_eq!(ranges(&path, Class::Vital), vec![(1, 6), (10, 14)]);
    // Leases out of order, acked out of order: ranges trimmed and split.
    let a = h.lease(4).await.unwrap().unwrap();
    let b = h.lease(4).await.unwrap().unwrap();
    // b holds 5, 6 (the end of the first range) and 10, 11 (the head of the second).
    h.ack(b.id).await.unwrap();
    assert_eq!(ranges(&path, Class::Vital), vec![(1, 4), (12, 14)]);
    h.ack(a.id).await.unwrap();
    assert_eq!(ranges(&path, Class::Vital), vec![(12, 14)]);
    assert_eq!(store.reader.outbox_depth().unwrap(), 6);
    assert_eq!(h.stats().outbox_readings.load(Ordering::Relaxed), 6);
    let rest = h.lease(100).await.unwrap().unwrap();
    assert_eq!(
        ids(&rest).into_iter().map(number).collect::<Vec<_>>(),
        vec![12, 13, 14, 3, 6, 9]
    );
    h.ack(rest.id).await.unwrap();
    assert!(ranges(&path, Class::Vital).is_empty());
    assert!(ranges(&path, Class::Room).is_empty());
    close(store).await;
}

/// The leaser reads a lease's rows itself; a row it cannot read (a code from a
/// newer build) is never acked with the others: it stays in the outbox, counted,
/// and later leases pass over it until the next release of everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_leaser_cannot_read_stays_in_the_outbox_after_the_ack() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest((1..=5).map(|n| reading(n, Quantity::HeartRate)).collect())
        .await
        .unwrap();
    let newer = rusqlite::Connection::open(&path).unwrap();
    newer
        .execute(
            "INSERT INTO quantity_codes (quantity) VALUES ('from_a_newer_build')",
            [],
        )
        .unwrap();
    newer
        .execute(
            "UPDATE readings SET quantity_code =
                (SELECT code FROM quantity_codes WHERE quantity = 'from_a_newer_build')
             WHERE seq = 3",
            [],
        )
        .unwrap();
    let lease = h.lease(10).await.unwrap().unwrap();
    assert_eq!(
        ids(&lease).into_iter().map(number).collect::<Vec<_>>(),
        vec![1, 2, 4, 5]
    );
    assert_eq!(h.lease(10).await.unwrap(), None);
    h.ack(lease.id).await.unwrap();
    assert_eq!(ranges(&path, Class::Vital), vec![(3, 3)]);
    assert_eq!(h.stats().outbox_readings.load(Ordering::Relaxed), 1);
    // These readings brought their own ids, so the row keeps one.
    assert_eq!(
        h.stats().outbox_bytes.load(Ordering::Relaxed),
        super::limits::MIN_ROW_BYTES + 16
    );
    // Leasing again finds nothing readable, however often it is released.
    h.release_all().await.unwrap();
    assert_eq!(h.lease(10).await.unwrap(), None);
    assert_eq!(ranges(&path, Class::Vital), vec![(3, 3)]);
    close(store).await;
}

/// A release puts the cursor back; leasing again skips what other leases hold,
/// including runs inside one range of the outbox.
#[tokio::test(flavor = "multi_thread")]
async fn releasing_a_lease_between_others_hands_out_only_its_readings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest((1..=10).map(|n| reading(n, Quantity::Spo2)).collect())
        .await
        .unwrap();
    let a = h.lease(3).await.unwrap().unwrap();
    let b = h.lease(3).await.unwrap().unwrap();
    let c = h.lease(3).await.unwrap().unwrap();
    h.release(b.id).await.unwrap();
    h.release(a.id).await.unwrap();
    let again = h.lease(100).await.unwrap().unwrap();
    assert_eq!(
        ids(&again).into_iter().map(number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 10],
        "c holds 7 to 9"
    );
    h.ack(c.id).await.unwrap();
    h.ack(again.id).await.unwrap();
    assert_eq!(store.reader.outbox_depth().unwrap(), 0);
    assert_eq!(h.stats().outbox_bytes.load(Ordering::Relaxed), 0);
    close(store).await;
}

/// The outbox is walked in sequence order by its ranges: a lease, the reading of
/// its rows, an eviction and the start-up count never sort the backlog (a million
/// rows sorted for a lease of a thousand would be the slowest thing the gateway
/// does).
#[test]
fn outbox_queries_never_sort_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    migrate_to(&mut c, SCHEMA_VERSION).unwrap();
    for class in [Class::Vital, Class::Room] {
        for sql in [
            outbox::ranges_from_sql(class),
            super::lease_read::rows_sql(),
            format!(
                "SELECT r.seq FROM {} ORDER BY o.first_seq, r.seq",
                outbox::joined_sql(class)
            ),
        ] {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let params: Vec<i64> = vec![0; stmt.parameter_count()];
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params), |r| {
                    r.get::<_, String>(3)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "{sql}\n{plan:#?}"
            );
            assert!(
                plan.iter().any(|step| step.contains("INTEGER PRIMARY KEY")),
                "readings found by seq: {sql}\n{plan:#?}"
            );
        }
    }
}

/// A reading as the ingest stage makes it: the store gives it its id.
fn sensor_reading(n: u64, q: Quantity) -> Reading {
    Reading {
        id: ReadingId::UNASSIGNED,
        ..reading(n, q)
    }
}

/// `(seq, id)` of every stored reading, as the view `readings_text` shows them.
fn view_ids(path: &Path) -> Vec<(i64, Option<Vec<u8>>)> {
    rusqlite::Connection::open(path)
        .unwrap()
        .prepare("SELECT seq, id FROM readings_text ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sensor_reading_gets_its_id_from_the_store_and_keeps_it_through_resends_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(settings(dir.path()));
    let mut far_back = sensor_reading(3, Quantity::HeartRate);
    // A device clock years behind the gateway: the offset is large, and exact.
    far_back.measured_at = Some(Timestamp::from_unix_ms(86_400_000));
    let mut ahead = sensor_reading(4, Quantity::Temperature);
    ahead.measured_at = Some(Timestamp::from_unix_ms(1_800_000_000_004 + 1_500));
    let sent = vec![
        sensor_reading(1, Quantity::HeartRate),
        sensor_reading(2, Quantity::HeartRate),
        far_back,
        ahead,
    ];
    store.handle.ingest(sent.clone()).await.unwrap();
    let first = store.handle.lease(10).await.unwrap().unwrap();
    let got = ids(&first);
    assert_eq!(got.len(), 4);
    assert!(
        got.iter()
            .all(|id| !id.is_unassigned() && id.to_string().as_bytes()[14] == b'8'),
        "UUIDv8 ids: {got:?}"
    );
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 4, "distinct");
    // Everything but the id comes back as it was sent.
    for (l, s) in first.readings.iter().zip(&sent) {
        assert_eq!(
            Reading {
                id: s.id,
                ..l.reading.clone()
            },
            *s
        );
    }
    // The view shows the same ids; the `latest` row names the newest reading's id.
    let view: Vec<Vec<u8>> = view_ids(&path)
        .into_iter()
        .map(|(_, id)| id.unwrap())
        .collect();
    let leased: Vec<Vec<u8>> = got.iter().map(|id| id.as_bytes().to_vec()).collect();
    assert_eq!(view, leased);
    let latest: Vec<u8> = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT reading_id FROM latest WHERE subject = 'resident:1' AND quantity = 'heart_rate'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        latest, leased[1],
        "reading 2 is the newest heart rate taken"
    );
    // Released and leased again: the same ids (a resend is recognised).
    store.handle.release(first.id).await.unwrap();
    let again = store.handle.lease(10).await.unwrap().unwrap();
    assert_eq!(ids(&again), got);
    close(store).await;
    // After a restart (a new epoch begins): still the same ids.
    let store = open(settings(dir.path()));
    let after = store.handle.lease(10).await.unwrap().unwrap();
    assert_eq!(ids(&after), got);
    // A reading brought with its own id (a staff observation set) keeps it.
    let own = reading(5, Quantity::Spo2);
    store.handle.ingest(vec![own.clone()]).await.unwrap();
    let next = store.handle.lease(10).await.unwrap().unwrap();
    assert_eq!(ids(&next), vec![own.id]);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_never_repeat_across_restarts_fresh_databases_or_a_purged_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut seen: HashSet<ReadingId> = HashSet::new();
    let mut check_new = |lease: &Lease, what: &str| {
        for id in ids(lease) {
            assert!(seen.insert(id), "{what}: id {id} made twice");
        }
    };
    let store = open(settings(dir.path()));
    let h = &store.handle;
    h.ingest(
        (1..=3)
            .map(|n| sensor_reading(n, Quantity::HeartRate))
            .collect(),
    )
    .await
    .unwrap();
    let a = h.lease(10).await.unwrap().unwrap();
    check_new(&a, "first run");
    h.ack(a.id).await.unwrap();
    // Every reading delivered and purged: the table is empty, and SQLite alone
    // would number the next reading 1 again.
    let report = h
        .maintain(Timestamp::from_unix_ms(1_900_000_000_000))
        .await
        .unwrap();
    assert_eq!(report.history_purged, 3);
    h.ingest(vec![sensor_reading(4, Quantity::HeartRate)])
        .await
        .unwrap();
    let b = h.lease(10).await.unwrap().unwrap();
    check_new(&b, "after the purge, same run");
    h.ack(b.id).await.unwrap();
    h.maintain(Timestamp::from_unix_ms(1_900_000_000_000))
        .await
        .unwrap();
    close(store).await;
    // Restarted on the emptied table.
    let store = open(settings(dir.path()));
    store
        .handle
        .ingest(vec![sensor_reading(5, Quantity::HeartRate)])
        .await
        .unwrap();
    let c = store.handle.lease(10).await.unwrap().unwrap();
    check_new(&c, "after a restart on an empty table");
    let stored = view_ids(&path);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].1.as_deref(),
        Some(&ids(&c)[0].as_bytes()[..]),
        "the view derives the same id"
    );
    close(store).await;
    // A fresh database (the old one moved aside, a new card): the same sequence
    // numbers, other ids.
    let other = tempfile::tempdir().unwrap();
    let store = open(settings(other.path()));
    store
        .handle
        .ingest(
            (1..=5)
                .map(|n| sensor_reading(n, Quantity::HeartRate))
                .collect(),
        )
        .await
        .unwrap();
    let d = store.handle.lease(10).await.unwrap().unwrap();
    check_new(&d, "a fresh database");
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copied_database_started_twice_makes_different_ids() {
    // A card image copied to a second gateway, or a backup restored: both copies
    // start from the same sequence numbers, and each start draws a new prefix.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let store = open(settings(a.path()));
    store
        .handle
        .ingest(vec![sensor_reading(1, Quantity::HeartRate)])
        .await
        .unwrap();
    close(store).await;
    std::fs::copy(a.path().join("t.db"), b.path().join("t.db")).unwrap();
    let mut made = Vec::new();
    for dir in [a.path(), b.path()] {
        let store = open(settings(dir));
        store
            .handle
            .ingest(vec![sensor_reading(2, Quantity::HeartRate)])
            .await
            .unwrap();
        let l = store.handle.lease(10).await.unwrap().unwrap();
        made.push(ids(&l));
        close(store).await;
    }
    assert_eq!(made[0][0], made[1][0], "the copied reading keeps its id");
    assert_ne!(
        made[0][1], made[1][1],
        "new readings differ between the copies"
    );
}

#[test]
fn a_new_database_has_small_pages_and_an_old_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |path: &Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let fresh = dir.path().join("new.db");
    drop(writer::open_write_connection(&StoreSettings::at(&fresh)).unwrap());
    assert_eq!(page_size(&fresh), 1024);
    let old = dir.path().join("old.db");
    make_v3(&old);
    drop(writer::open_write_connection(&StoreSettings::at(&old)).unwrap());
    assert_eq!(page_size(&old), 4096);
}

/// A set of observations staff entered and the record of who entered it commit
/// together: when the record cannot be written, the readings are not stored
/// either (and the caller is told), so no hand-entered value is ever stored
/// without who entered it.
#[tokio::test(flavor = "multi_thread")]
async fn entered_readings_and_who_entered_them_commit_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(settings(dir.path()));
    let h = &store.handle;
    let set = |n: u64| {
        vec![
            reading(n, Quantity::RespirationRate),
            reading(n + 1, Quantity::Temperature),
        ]
    };
    let entered = |who: &str| EnteredBy {
        resident_id: 1,
        taken_at: Timestamp::from_unix_ms(1_800_000_000_000),
        entered_by: who.into(),
        entered_at: Timestamp::from_unix_ms(1_800_000_000_500),
    };
    let db = rusqlite::Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    h.provision(
        vec![crate::model::Resident {
            id: ResidentId(1),
            display_name: "Ann".into(),
            room: "Room 1".into(),
            reference: "r1".into(),
        }],
        vec![],
    )
    .await
    .unwrap();

    h.ingest_entered(set(1), entered("staff:ann"))
        .await
        .unwrap();
    assert_eq!(count("SELECT count(*) FROM readings"), 2);
    let (who, ids): (String, String) = db
        .query_row(
            "SELECT entered_by, reading_ids FROM observation_sets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(who, "staff:ann");
    let want: Vec<String> = set(1).iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, want.join(" "));

    // The record cannot be written: nothing of the set is stored.
    db.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON observation_sets
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    assert!(
        h.ingest_entered(set(10), entered("staff:bob"))
            .await
            .is_err()
    );
    assert_eq!(
        count("SELECT count(*) FROM readings"),
        2,
        "readings stored without who entered them"
    );
    assert_eq!(count("SELECT count(*) FROM observation_sets"), 1);
    db.execute_batch("DROP TRIGGER refuse;").unwrap();
    close(store).await;
}

/// A command its group cannot commit (here an entered set the database refuses)
/// costs the other commands of the group nothing: sensor readings handed over
/// without waiting, which nobody would send again, are stored all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_command_does_not_fail_the_readings_grouped_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    // The writer waits this long for more after a first ingest: the two
    // commands below always share one group.
    let store = open(StoreSettings {
        commit_max_delay: Duration::from_millis(500),
        ..settings(dir.path())
    });
    let h = &store.handle;
    let db = rusqlite::Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    db.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON observation_sets
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    h.ingest_nowait(vec![
        reading(1, Quantity::HeartRate),
        reading(2, Quantity::Temperature),
    ])
    .await
    .unwrap();
    let refused = h
        .ingest_entered(
            vec![reading(3, Quantity::RespirationRate)],
            EnteredBy {
                resident_id: 1,
                taken_at: Timestamp::from_unix_ms(1_800_000_000_000),
                entered_by: "staff:ann".into(),
                entered_at: Timestamp::from_unix_ms(1_800_000_000_500),
            },
        )
        .await;
    assert!(refused.is_err(), "the refused set was stored");
    // Anything after the group is committed after it.
    h.ingest(vec![reading(4, Quantity::HeartRate)])
        .await
        .unwrap();
    let stored: Vec<i64> = db
        .prepare("SELECT CAST(value AS INTEGER) - 60 FROM readings ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored, [1, 2, 4], "readings lost with the refused set");
    assert_eq!(count("SELECT count(*) FROM observation_sets"), 0);
    assert_eq!(h.stats().outbox_readings.load(Ordering::Relaxed), 3);
    close(store).await;
}

/// A file made by the store, then filled by SQL: `n` readings, `seq` 1..=n,
/// received one second apart from `base`; the outbox holds, in each block of 10,
/// seqs 1-3 (vital) and 5-6 (room): two ranges per block, half the readings
/// undelivered, the rest delivered history.
async fn history_file(dir: &Path, n: i64, base: i64) -> rusqlite::Connection {
    close(open(settings(dir))).await;
    let conn = rusqlite::Connection::open(dir.join("t.db")).unwrap();
    conn.execute(
        "WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < ?1)
         INSERT INTO readings (seq, device_code, quantity_code, value, status_code,
                               unit_code, received_at_ms, clock_synced)
         SELECT seq, 1, 1, 60.0, 1, 1, ?2 + seq * 1000, 1 FROM s",
        [n, base],
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE k(b) AS (SELECT 0 UNION ALL SELECT b + 10 FROM k WHERE b + 10 < ?1)
         INSERT INTO outbox_vital (first_seq, last_seq) SELECT b + 1, b + 3 FROM k",
        [n],
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE k(b) AS (SELECT 0 UNION ALL SELECT b + 10 FROM k WHERE b + 10 < ?1)
         INSERT INTO outbox_room (first_seq, last_seq) SELECT b + 5, b + 6 FROM k",
        [n],
    )
    .unwrap();
    conn
}

fn undelivered(seq: i64) -> bool {
    matches!((seq - 1) % 10, 0..=2 | 4..=5)
}

fn seqs_left(conn: &rusqlite::Connection) -> Vec<i64> {
    conn.prepare("SELECT seq FROM readings ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_purge_is_bounded_per_call_and_purges_exactly_old_delivered_readings() {
    let dir = tempfile::tempdir().unwrap();
    let (n, base) = (30_000i64, 1_800_000_000_000i64);
    let mut conn = history_file(dir.path(), n, base).await;
    let stats = StoreStats::default();
    // The window starts at reading 25,001: older delivered readings go.
    let cutoff = base + 25_001 * 1000;
    let mut cursor = limits::PurgeCursor::default();
    let mut calls = 0;
    let mut total = 0;
    loop {
        let p = limits::purge_history(&mut conn, Some(cutoff), 1_000, &mut cursor, &stats).unwrap();
        calls += 1;
        assert!(p.readings <= 1_000, "a call purges at most its max");
        total += p.readings;
        if p.swept {
            break;
        }
        assert!(calls < 1_000, "the sweep ends");
    }
    let want: Vec<i64> = (1..=n).filter(|&s| undelivered(s) || s >= 25_001).collect();
    assert_eq!(
        seqs_left(&conn),
        want,
        "undelivered all kept, old delivered all gone"
    );
    assert_eq!(total, (n - want.len() as i64) as u64);
    assert_eq!(stats.history_purged.load(Ordering::Relaxed), total);
    assert!(
        calls > 10,
        "{calls} calls: each one bounded, not one long scan"
    );

    // Readings delivered behind the cursor (an ack of old readings) go on the
    // next sweep; a sweep over nothing to purge ends.
    conn.execute("DELETE FROM outbox_vital WHERE first_seq < 100", [])
        .unwrap();
    let mut cursor = limits::PurgeCursor::default();
    let mut purged = 0;
    loop {
        let p =
            limits::purge_history(&mut conn, Some(cutoff), 10_000, &mut cursor, &stats).unwrap();
        purged += p.readings;
        if p.swept {
            break;
        }
    }
    assert_eq!(
        purged, 30,
        "the 30 vital readings of the first 10 blocks, now delivered"
    );
    close_conn_check(&conn);
}

fn close_conn_check(conn: &rusqlite::Connection) {
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_purge_steps_over_a_long_undelivered_outbox_a_bounded_amount_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let (n, base) = (60_000i64, 1_800_000_000_000i64);
    let conn = history_file(dir.path(), n, base).await;
    // An outage: the first 50,000 readings are all undelivered, in 10,000 ranges.
    conn.execute("DELETE FROM outbox_vital", []).unwrap();
    conn.execute("DELETE FROM outbox_room", []).unwrap();
    conn.execute(
        "WITH RECURSIVE k(b) AS (SELECT 0 UNION ALL SELECT b + 5 FROM k WHERE b + 5 < 50000)
         INSERT INTO outbox_vital (first_seq, last_seq) SELECT b + 1, b + 5 FROM k",
        [],
    )
    .unwrap();
    let mut conn = conn;
    let stats = StoreStats::default();
    let mut cursor = limits::PurgeCursor::default();
    // Everything older than now: every delivered reading (50,001 on) goes.
    let cutoff = base + (n + 1) * 1000;
    let first = limits::purge_history(&mut conn, Some(cutoff), 1_000, &mut cursor, &stats).unwrap();
    assert_eq!(
        first,
        limits::Purged {
            readings: 0,
            swept: false
        },
        "the call stops after PURGE_STEPS ranges instead of reading the whole outbox"
    );
    let mut purged = 0;
    let mut calls = 1;
    loop {
        let p = limits::purge_history(&mut conn, Some(cutoff), 1_000, &mut cursor, &stats).unwrap();
        calls += 1;
        purged += p.readings;
        if p.swept {
            break;
        }
    }
    assert_eq!(purged, 10_000);
    assert!(calls >= 10_000 / limits::PURGE_STEPS + 10, "{calls} calls");
    assert_eq!(seqs_left(&conn), (1..=50_000).collect::<Vec<_>>());
    close_conn_check(&conn);
}

/// Every connection beside the writer's has a small page cache: nine
/// connections at SQLite's default 2 MiB each would be more than the gateway's
/// whole memory budget once a long run has touched enough pages.
#[tokio::test(flavor = "multi_thread")]
async fn every_connection_but_the_writers_has_a_bounded_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let path = s.path.clone();
    let store = open(s);
    assert_eq!(store.reader.page_cache_kib(), super::SIDE_CACHE_KIB);
    let lease = super::lease_read::LeaseReader::open(&path).unwrap();
    assert_eq!(lease.page_cache_kib(), super::SIDE_CACHE_KIB);
    let book = super::alert_book::AlertBook::open(&path).unwrap();
    assert_eq!(book.page_cache_kib(), super::SIDE_CACHE_KIB);
    let accounts = super::accounts::Accounts::open(&path, Synchronous::Normal).unwrap();
    assert_eq!(accounts.page_cache_kib(), super::SIDE_CACHE_KIB);
}

/// `conn`'s SQLite status counter `op`: (now, high-water mark).
fn db_status(conn: &rusqlite::Connection, op: i32) -> (i32, i32) {
    let (mut now, mut high) = (0, 0);
    // SAFETY: the handle is this open connection's; the out pointers live.
    let rc = unsafe { rusqlite::ffi::sqlite3_db_status(conn.handle(), op, &mut now, &mut high, 0) };
    assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
    (now, high)
}

/// The store bounds SQLite's heap for the whole process: a connection that
/// reads a file four times the budget keeps less than the budget cached, not
/// its own bound (SQLite's default 2 MiB), so the caches of the nine
/// connections cannot fill towards their bounds together.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_bounds_sqlite_heap_for_the_whole_process() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(settings(dir.path()));
    let budget = super::SQLITE_HEAP_KIB * 1024;
    let other = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&other).unwrap();
        let limit: i64 = conn
            .query_row("PRAGMA soft_heap_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, budget);
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        for _ in 0..50 {
            let tx = conn.unchecked_transaction().unwrap();
            for _ in 0..100 {
                tx.execute("INSERT INTO t VALUES (zeroblob(1000))", [])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
    }
    let conn = rusqlite::Connection::open(&other).unwrap();
    let cache_kib: i64 = conn
        .query_row("PRAGMA cache_size", [], |r| r.get(0))
        .unwrap();
    assert!(
        -cache_kib * 1024 > budget,
        "its own bound is above the budget"
    );
    let bytes: i64 = conn
        .query_row("SELECT sum(length(x)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(bytes > 4 * budget, "the file is bigger than the budget");
    let (used, _) = db_status(&conn, rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED);
    assert!(
        i64::from(used) < budget,
        "{used} bytes cached, budget {budget}"
    );
    assert!(super::sqlite_heap_bytes() > 0);
}

/// Every connection sets little aside for SQLite's small allocations: a
/// workload that keeps more than its slots busy on a connection with SQLite's
/// default lookaside uses at most [`super::LOOKASIDE`]'s on one bounded by
/// `bound_memory` (24 slots: 6 of 1,200 bytes, 18 of 128).
#[test]
fn every_connection_sets_little_aside_for_small_allocations() {
    let bounded = rusqlite::Connection::open_in_memory().unwrap();
    super::bound_memory(&bounded, super::SIDE_CACHE_KIB).unwrap();
    let default = rusqlite::Connection::open_in_memory().unwrap();
    let most_slots_used = |c: &rusqlite::Connection| {
        c.execute_batch(
            "CREATE TABLE t (a, b, c); CREATE INDEX t_a ON t (a);
             INSERT INTO t VALUES (1, 2, 'x'), (2, 3, 'y');",
        )
        .unwrap();
        // Statements held open at once, as a page's reads hold them.
        let statements: Vec<rusqlite::Statement> = (0..20)
            .map(|i| {
                c.prepare(&format!(
                    "SELECT count(*), max(b) FROM t WHERE a = {i} OR b IN (1, 2, 3) OR c LIKE 'x%'"
                ))
                .unwrap()
            })
            .collect();
        let (_, high) = db_status(c, rusqlite::ffi::SQLITE_DBSTATUS_LOOKASIDE_USED);
        drop(statements);
        high
    };
    let with_default = most_slots_used(&default);
    assert!(with_default > 24, "the workload wants {with_default} slots");
    let bounded_high = most_slots_used(&bounded);
    assert!(bounded_high <= 24, "{bounded_high} slots used");
}
