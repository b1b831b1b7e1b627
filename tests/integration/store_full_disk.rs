//! Full-disk test of the store on a real, size-limited tmpfs that the test mounts
//! (as root): fill the filesystem, check that the store reports it and keeps
//! running, free the space, and check that it carries on without losing a
//! committed, undelivered reading. Not being able to mount is a failure.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use carehub::config::Synchronous;
use carehub::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value,
};
use carehub::store::{Store, StoreError, StoreSettings};
use carehub::system::health::Health;

/// Unmounts on drop, so that a failing test leaves no mount behind.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a size-limited tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn reading(n: u64) -> Reading {
    let vital = n.is_multiple_of(2);
    Reading {
        id: ReadingId::new(Timestamp::now()),
        device: DeviceAddress([0xC0, 0, 0, 0, 0, (n % 9) as u8]),
        subject: if vital {
            Subject::Resident(ResidentId(1))
        } else {
            Subject::Room("Lounge".into())
        },
        quantity: if vital {
            Quantity::Spo2
        } else {
            Quantity::Temperature
        },
        value: Value::Number(90.0 + (n % 10) as f64),
        unit: if vital { Unit::Percent } else { Unit::Celsius },
        measured_at: None,
        received_at: Timestamp::now(),
        clock_synced: true,
    }
}

/// Writes `path` until the filesystem refuses.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xAAu8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn ids_in_outbox(db: &Path) -> HashSet<Vec<u8>> {
    let c = rusqlite::Connection::open(db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    c.prepare(
        "SELECT r.id FROM readings_text r
         JOIN (SELECT first_seq, last_seq FROM outbox_vital
               UNION ALL SELECT first_seq, last_seq FROM outbox_room) o
           ON r.seq BETWEEN o.first_seq AND o.last_seq",
    )
    .unwrap()
    .query_map([], |r| r.get(0))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn full_disk_is_reported_survived_and_recovered_from() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(dir.path(), "8m");
    let db = dir.path().join("carehub.db");
    let settings = StoreSettings {
        commit_max_readings: 500,
        commit_max_delay: Duration::from_millis(2),
        synchronous: Synchronous::Full,
        min_free_disk_bytes: 512 * 1024,
        ..StoreSettings::at(&db)
    };
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut health = Health::default();
    let store = Store::open(
        settings.clone(),
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .unwrap();
    let h = store.handle.clone();

    // Some history (delivered) and some undelivered readings.
    let mut n = 0u64;
    let mut undelivered: Vec<ReadingId> = Vec::new();
    for _ in 0..10 {
        let batch: Vec<Reading> = (0..500)
            .map(|_| {
                n += 1;
                reading(n)
            })
            .collect();
        h.ingest(batch).await.unwrap();
    }
    while let Some(l) = h.lease(1000).await.unwrap() {
        h.ack(l.id).await.unwrap();
    }
    let batch: Vec<Reading> = (0..500)
        .map(|_| {
            n += 1;
            reading(n)
        })
        .collect();
    undelivered.extend(batch.iter().map(|r| r.id));
    h.ingest(batch).await.unwrap();

    // Leave less free space than the floor: the next commit must make room
    // inside the database by purging delivered history, not by evicting.
    let filler = dir.path().join("filler");
    fill(&filler);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(256 * 1024)).unwrap();
    drop(f);
    let batch: Vec<Reading> = (0..100)
        .map(|_| {
            n += 1;
            reading(n)
        })
        .collect();
    undelivered.extend(batch.iter().map(|r| r.id));
    h.ingest(batch).await.unwrap();
    let st = store.reader.stats().unwrap();
    assert!(st.free_disk_bytes < settings.min_free_disk_bytes);
    assert!(
        st.history_purged > 0,
        "the store freed no history below the disk floor"
    );
    assert_eq!(
        st.evicted_total(),
        0,
        "evicted undelivered readings while history could go"
    );

    // Now fill it completely.
    std::fs::remove_file(&filler).unwrap();
    fill(&filler);

    // Keep ingesting: the store must refuse with DiskFull at some point, keep
    // running, and say so in its stats.
    let mut saw_full = false;
    for _ in 0..400 {
        let batch: Vec<Reading> = (0..500)
            .map(|_| {
                n += 1;
                reading(n)
            })
            .collect();
        let ids: Vec<ReadingId> = batch.iter().map(|r| r.id).collect();
        match h.ingest(batch).await {
            Ok(()) => undelivered.extend(ids),
            Err(e) => {
                assert!(
                    matches!(*e, StoreError::DiskFull(_)),
                    "unexpected error {e}"
                );
                saw_full = true;
                break;
            }
        }
    }
    assert!(saw_full, "the disk never filled");
    let st = store.reader.stats().unwrap();
    assert!(st.disk_full, "the stats do not report the full disk");
    assert!(st.commit_errors > 0);

    // Space returns: the store carries on.
    std::fs::remove_file(&filler).unwrap();
    let batch: Vec<Reading> = (0..500)
        .map(|_| {
            n += 1;
            reading(n)
        })
        .collect();
    undelivered.extend(batch.iter().map(|r| r.id));
    h.ingest(batch).await.unwrap();
    let st = store.reader.stats().unwrap();
    assert!(
        !st.disk_full,
        "still reports a full disk after space returned"
    );
    assert_eq!(
        st.evicted
            .iter()
            .filter(|e| e.1 == carehub::store::Class::Vital)
            .map(|e| e.2)
            .sum::<u64>(),
        0,
        "vital signs were evicted while history could go"
    );

    drop(h);
    let Store { handle, writer, .. } = store;
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();

    let stored = ids_in_outbox(&db);
    let lost: Vec<String> = undelivered
        .iter()
        .filter(|id| !stored.contains(&id.as_bytes()[..]))
        .take(5)
        .map(|id| id.to_string())
        .collect();
    assert!(
        lost.is_empty(),
        "committed undelivered readings lost: {lost:?}"
    );
    drop(mount);
}
