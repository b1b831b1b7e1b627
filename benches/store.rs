//! Benchmark of the store, with its peers in the same run: durable ingest rate
//! (`synchronous=FULL`), bytes written to disk per reading (from `/proc/self/io`
//! `write_bytes`), and the lease+ack drain rate, at 1, 10, 100 and 1000 readings per
//! commit; SQLite with one transaction per reading (the naive way) and Python's
//! sqlite3 `executemany` into the same schema (`benches/peers/`) as references.
//!
//! Run: `cargo bench --bench store` (prints a Markdown table for
//! docs/performance.md). `CAREHUB_BENCH_DIR` picks the directory (default under the
//! target directory; it must be a real disk, not tmpfs, or fsync is free).
//! `CAREHUB_BENCH_QUICK=1` runs smaller sizes; `CAREHUB_BENCH_FOCUS=1` runs only
//! the rows the goals name (ingest at 1,000 and 10,000 per commit, steady state,
//! the 1,000,000 backlog drain), for quick comparisons while tuning.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carehub::config::Synchronous;
use carehub::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value,
};
use carehub::store::{Store, StoreHandle, StoreSettings};
use carehub::system::health::Health;

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes:")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Median time of one overwrite of 4 KiB followed by `fdatasync`, the floor of a
/// `synchronous=FULL` commit on this disk (the WAL file is reused, so a commit does
/// not grow it); measured in the same run because it moves with other disk users.
fn sync_floor(dir: &Path) -> Duration {
    use std::io::{Seek, Write};
    let path = dir.join("sync-floor.tmp");
    let mut f = std::fs::File::create(&path).expect("sync probe");
    f.write_all(&[0u8; 4096]).expect("write");
    f.sync_all().expect("sync");
    let mut times: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            f.rewind().expect("seek");
            f.write_all(&[1u8; 4096]).expect("write");
            f.sync_data().expect("fdatasync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    times.sort();
    times[times.len() / 2]
}

/// Two vital signs for every room reading, from 40 devices. As from the ingest
/// stage, the store gives each its id (schema v8).
fn reading(i: u64, now: Timestamp) -> Reading {
    let vital = i % 3 != 2;
    let received = Timestamp::from_unix_ms(now.unix_ms() + (i / 1000) as i64);
    Reading {
        id: ReadingId::UNASSIGNED,
        device: DeviceAddress([0xC0, 0, 0, 0, 0, (i % 40) as u8]),
        subject: if vital {
            Subject::Resident(ResidentId(1 + (i % 40) as i64))
        } else {
            Subject::Room("Lounge".into())
        },
        quantity: if vital {
            Quantity::HeartRate
        } else {
            Quantity::Temperature
        },
        value: Value::Number(if vital { 60.0 + (i % 40) as f64 } else { 21.5 }),
        unit: if vital {
            Unit::PerMinute
        } else {
            Unit::Celsius
        },
        measured_at: None,
        received_at: received,
        clock_synced: true,
    }
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    path
}

fn open(path: &Path, batch: usize) -> Store {
    let settings = StoreSettings {
        commit_max_readings: batch,
        commit_max_delay: Duration::from_millis(20),
        synchronous: Synchronous::Full,
        max_outbox_readings: u64::MAX / 2,
        max_outbox_bytes: u64::MAX / 2,
        min_free_disk_bytes: 0,
        ..StoreSettings::at(path)
    };
    let mut health = Health::default();
    Store::open(
        settings,
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .expect("open the bench database")
}

async fn close(store: Store) {
    let Store { handle, writer, .. } = store;
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("join");
}

/// Queues `n` readings in chunks of `batch` (the writer commits `batch` per
/// transaction) and waits for the last commit: every reading is durable at the end.
async fn ingest(h: &StoreHandle, n: u64, batch: usize, start: u64) {
    let now = Timestamp::now();
    let mut i = start;
    let end = start + n;
    while i < end {
        let k = (batch as u64).min(end - i);
        let chunk: Vec<Reading> = (i..i + k).map(|j| reading(j, now)).collect();
        i += k;
        if i < end {
            h.ingest_nowait(chunk).await.expect("queue");
        } else {
            h.ingest(chunk).await.expect("commit");
        }
    }
}

struct Row {
    what: String,
    batch: usize,
    readings: u64,
    per_s: f64,
    bytes_per_reading: f64,
}

async fn bench_ingest(dir: &Path, batch: usize, n: u64) -> Row {
    let store = open(&fresh(dir, "ingest.db"), batch);
    let wb = write_bytes();
    let t = Instant::now();
    ingest(&store.handle, n, batch, 0).await;
    let secs = t.elapsed().as_secs_f64();
    close(store).await;
    Row {
        what: "carehub durable ingest".into(),
        batch,
        readings: n,
        per_s: n as f64 / secs,
        bytes_per_reading: (write_bytes() - wb) as f64 / n as f64,
    }
}

/// Ingest and drain together, as in service: the bytes of a reading's whole life
/// in the outbox (insert, lease, ack).
async fn bench_steady(dir: &Path, batch: usize, n: u64) -> Row {
    let store = open(&fresh(dir, "steady.db"), batch);
    let h = store.handle.clone();
    let wb = write_bytes();
    let t = Instant::now();
    let producer = {
        let h = h.clone();
        tokio::spawn(async move { ingest(&h, n, batch, 0).await })
    };
    let mut drained = 0u64;
    while drained < n {
        match h.lease(batch).await.expect("lease") {
            Some(l) => {
                drained += l.readings.len() as u64;
                h.ack(l.id).await.expect("ack");
            }
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    producer.await.expect("producer");
    let secs = t.elapsed().as_secs_f64();
    drop(h);
    close(store).await;
    Row {
        what: "carehub ingest + lease + ack (steady state)".into(),
        batch,
        readings: n,
        per_s: n as f64 / secs,
        bytes_per_reading: (write_bytes() - wb) as f64 / n as f64,
    }
}

/// Drains a backlog with up to `window` leases in flight (as an MQTT uplink with
/// several unacknowledged publishes would), acking each window together so that
/// the acks share a commit.
async fn bench_drain(dir: &Path, batch: usize, window: usize, backlog: u64) -> Row {
    let path = fresh(dir, "drain.db");
    let store = open(&path, 1000);
    ingest(&store.handle, backlog, 1000, 0).await;
    close(store).await;
    let store = open(&path, 1000);
    let h = store.handle.clone();
    let wb = write_bytes();
    let t = Instant::now();
    let mut drained = 0u64;
    loop {
        let mut acks = Vec::new();
        for _ in 0..window {
            let Some(l) = h.lease(batch).await.expect("lease") else {
                break;
            };
            drained += l.readings.len() as u64;
            let h = h.clone();
            acks.push(tokio::spawn(async move { h.ack(l.id).await.expect("ack") }));
        }
        if acks.is_empty() {
            break;
        }
        for a in acks {
            a.await.expect("ack task");
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(drained, backlog, "drained everything");
    drop(h);
    close(store).await;
    Row {
        what: format!("carehub lease + ack drain of a backlog, {window} lease(s) in flight"),
        batch,
        readings: backlog,
        per_s: backlog as f64 / secs,
        bytes_per_reading: (write_bytes() - wb) as f64 / backlog as f64,
    }
}

/// The naive way: the same schema, one autocommit transaction per reading.
fn bench_naive(dir: &Path, n: u64) -> Row {
    let path = fresh(dir, "naive.db");
    {
        let mut c = rusqlite::Connection::open(&path).expect("open");
        // The page size carehub gives a new database (src/store/writer.rs).
        c.pragma_update(None, "page_size", 1024).expect("page size");
        carehub::store::migrate_to(&mut c, carehub::store::SCHEMA_VERSION).expect("schema");
    }
    let c = rusqlite::Connection::open(&path).expect("open");
    c.pragma_update(None, "journal_mode", "WAL").expect("wal");
    c.pragma_update(None, "wal_autocheckpoint", 4000)
        .expect("checkpoint");
    c.pragma_update(None, "synchronous", "FULL").expect("sync");
    c.execute_batch(
        "INSERT OR IGNORE INTO quantity_codes (quantity) VALUES ('heart_rate'), ('temperature');
         INSERT OR IGNORE INTO unit_codes (unit) VALUES ('/min'), ('Cel');
         INSERT INTO reading_id_epochs (first_seq, prefix) VALUES (1, randomblob(10));",
    )
    .expect("codes");
    for d in 0..40u8 {
        c.execute(
            "INSERT INTO device_codes (code, address) VALUES (?1, ?2)",
            rusqlite::params![i64::from(d) + 1, &[0xC0u8, 0, 0, 0, 0, d][..]],
        )
        .expect("device code");
    }
    let code =
        |sql: &str, word: &str| -> i64 { c.query_row(sql, [word], |r| r.get(0)).expect("code") };
    let quantity_code = |q: Quantity| {
        code(
            "SELECT code FROM quantity_codes WHERE quantity = ?1",
            q.as_str(),
        )
    };
    let unit_code = |u: Unit| code("SELECT code FROM unit_codes WHERE unit = ?1", u.ucum());
    let codes = [
        (
            quantity_code(Quantity::HeartRate),
            unit_code(Unit::PerMinute),
        ),
        (
            quantity_code(Quantity::Temperature),
            unit_code(Unit::Celsius),
        ),
    ];
    let now = Timestamp::now();
    let wb = write_bytes();
    let t = Instant::now();
    for i in 0..n {
        let r = reading(i, now);
        let (resident, room) = match &r.subject {
            Subject::Resident(id) => (Some(id.0), None),
            Subject::Room(room) => (None, Some(room.clone())),
            Subject::Unassigned => (None, None),
        };
        let vital = r.quantity.is_vital_sign();
        let (q, u) = codes[usize::from(!vital)];
        // As carehub stores a reading from a sensor: no id (derived from seq), the
        // device as its code.
        c.execute(
            "INSERT INTO readings (device_code, resident_id, room, quantity_code, value,
                                   status_code, unit_code, measured_offset_ms, received_at_ms,
                                   clock_synced)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                i64::from(r.device.0[5]) + 1,
                resident,
                room,
                q,
                r.value.number(),
                u,
                r.measured_at.map(|m| m.unix_ms() - r.received_at.unix_ms()),
                r.received_at.unix_ms(),
                r.clock_synced,
            ],
        )
        .expect("insert");
        let seq = c.last_insert_rowid();
        let table = if vital { "outbox_vital" } else { "outbox_room" };
        c.execute(
            &format!("INSERT INTO {table} (first_seq, last_seq) VALUES (?1, ?1)"),
            [seq],
        )
        .expect("insert");
    }
    let secs = t.elapsed().as_secs_f64();
    Row {
        what: "naive rusqlite, one transaction per reading".into(),
        batch: 1,
        readings: n,
        per_s: n as f64 / secs,
        bytes_per_reading: (write_bytes() - wb) as f64 / n as f64,
    }
}

fn bench_python(dir: &Path, batch: usize, n: u64) -> Option<Row> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/sqlite_executemany.py");
    let db = fresh(dir, "python.db");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&db)
        .arg(n.to_string())
        .arg(batch.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "python peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Row {
        what: "Python sqlite3 executemany, same schema".into(),
        batch,
        readings: n,
        per_s: v["readings_per_s"].as_f64()?,
        bytes_per_reading: v["write_bytes_per_reading"].as_f64()?,
    })
}

fn main() {
    let quick = std::env::var_os("CAREHUB_BENCH_QUICK").is_some();
    let focus = std::env::var_os("CAREHUB_BENCH_FOCUS").is_some();
    let dir = std::env::var_os("CAREHUB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"))
                .join("bench-store")
        });
    std::fs::create_dir_all(&dir).expect("bench directory");
    let scale = |n: u64| if quick { (n / 10).max(100) } else { n };
    // Readings per size: enough for a few seconds each; one fsync per commit
    // makes the small batches slow, so they get fewer readings.
    let ingest_n = |b: usize| {
        scale(match b {
            1 => 5_000,
            10 => 50_000,
            100 => 300_000,
            _ => 1_000_000,
        })
    };
    let drain_n = |b: usize| {
        scale(match b {
            1 => 5_000,
            10 => 50_000,
            100 => 300_000,
            _ => 1_000_000,
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    let floor_before = sync_floor(&dir);
    rt.block_on(async {
        if focus {
            for b in [1000usize, 10_000] {
                rows.push(bench_ingest(&dir, b, ingest_n(b)).await);
            }
            rows.push(bench_steady(&dir, 1000, scale(500_000)).await);
            rows.push(bench_drain(&dir, 1000, 1, drain_n(1000)).await);
            rows.push(bench_drain(&dir, 1000, 4, drain_n(1000)).await);
            return;
        }
        for b in [1usize, 10, 100, 1000, 10_000] {
            rows.push(bench_ingest(&dir, b, ingest_n(b)).await);
            eprintln!("ingest {b} done");
        }
        rows.push(bench_naive(&dir, scale(5_000)));
        for b in [1usize, 10, 100, 1000] {
            match bench_python(&dir, b, ingest_n(b)) {
                Some(r) => rows.push(r),
                None => eprintln!("python3 peer not run (python3 missing or failed)"),
            }
        }
        rows.push(bench_steady(&dir, 1000, scale(500_000)).await);
        for b in [1usize, 10, 100, 1000] {
            rows.push(bench_drain(&dir, b, 1, drain_n(b)).await);
            eprintln!("drain {b} done");
        }
        rows.push(bench_drain(&dir, 1000, 4, drain_n(1000)).await);
    });
    println!("| what | readings per commit | readings | readings/s | bytes written per reading |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} |",
            r.what, r.batch, r.readings, r.per_s, r.bytes_per_reading
        );
    }
    println!("\npeak RSS of the bench process: {} KiB", peak_rss_kib());
    for (when, floor) in [("before", floor_before), ("after", sync_floor(&dir))] {
        println!(
            "fdatasync of 4 KiB {when} the run, median of 50: {:.2} ms, so at most {:.0} commits/s: {:.0} readings/s at 1,000 per commit with no other work",
            floor.as_secs_f64() * 1e3,
            1.0 / floor.as_secs_f64(),
            1000.0 / floor.as_secs_f64()
        );
    }
    for name in [
        "ingest.db",
        "steady.db",
        "drain.db",
        "naive.db",
        "python.db",
    ] {
        fresh(&dir, name);
    }
}
