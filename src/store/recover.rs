//! What happens to a damaged database (docs/decisions/0015).
//!
//! Damage found while running (a commit, a lease's read, a page's read or the
//! minute's maintenance meets `SQLITE_CORRUPT` or `SQLITE_NOTADB`) is written
//! to a marker file beside the database (`<db>.damaged`: when, and SQLite's
//! words), since the database itself may not take a write; the daemon then
//! stops on purpose. A commit that met the damage, and every one after it until
//! the writer exits, goes to a fresh store file beside it (`<db>.rescue`), so
//! that nothing received meanwhile is lost.
//!
//! At the next start the integrity check moves the damaged file aside
//! (`<db>.corrupt-<ms>`, never deleted) and a fresh database is made; then,
//! before the writer's thread starts, this module copies into it what can
//! still be read: the registry tables (residents, devices and their history,
//! nurses' limits and scales, staff accounts) and every undelivered reading of
//! the outbox, row by row where a page refuses, each with the id it had; then
//! the readings of the rescue file. The record of it all (`store_damage`)
//! lives in the fresh file, which passed its check, so the Gateway page and the
//! technical alert still say so after the restart. Only then are the marker and
//! the rescue file removed.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::lease_read::{decode_row, read_vocab, rows_sql};
use super::outbox::Class;
use super::writer::{DamageRow, Writer};
use super::{CorruptionAlarm, DamageFound, StoreError};
use crate::model::{Reading, Timestamp};

/// Readings handed to the writer at a time while recovering.
const CHUNK: usize = 1000;

/// The registry tables copied from a damaged file of this schema version, in
/// an order that keeps foreign keys whole (residents before what names them).
const REGISTRY_TABLES: [&str; 7] = [
    "residents",
    "devices",
    // The glucose records filed per meter (H35): without them a meter's
    // records sent again would be filed twice.
    "glucose_filed",
    "device_assignments",
    "resident_thresholds",
    "resident_clinical",
    "users",
];

fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The marker of damage found while running.
fn marker_path(db: &Path) -> PathBuf {
    beside(db, ".damaged")
}

/// Writes the marker (`found_at_ms`, then the reason, a line each) and syncs it.
pub(super) fn write_marker(db: &Path, found: &DamageFound) -> std::io::Result<()> {
    use std::io::Write;
    let reason = found.reason.replace('\n', " ");
    let mut f = std::fs::File::create(marker_path(db))?;
    writeln!(f, "{}\n{reason}", found.at.unix_ms())?;
    f.sync_all()
}

/// The marker left by a run that found damage, if any (an unreadable one
/// still says that damage was found, now).
pub(super) fn read_marker(db: &Path) -> Option<DamageFound> {
    let text = std::fs::read_to_string(marker_path(db)).ok()?;
    let mut lines = text.lines();
    let at = lines
        .next()
        .and_then(|l| l.trim().parse::<i64>().ok())
        .map_or_else(Timestamp::now, Timestamp::from_unix_ms);
    let reason = lines
        .next()
        .filter(|l| !l.is_empty())
        .unwrap_or("damage reported while running")
        .to_owned();
    Some(DamageFound { at, reason })
}

/// Removes the rescue file and the marker once their contents are committed
/// to the fresh database.
pub(super) fn finish(db: &Path, rescue: &Path) {
    for path in [
        rescue.to_path_buf(),
        beside(rescue, "-wal"),
        beside(rescue, "-shm"),
        marker_path(db),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove a recovery file")
            }
        }
    }
}

/// What reading one file's outbox gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Copied {
    /// Readings stored in the fresh database.
    pub readings: u64,
    /// Readings that could not be read (a whole range or table counts one).
    pub unreadable: u64,
}

/// Brings what can be read of the damaged file (`damaged`, when start-up
/// moved one aside) and of the rescue file into the fresh database behind
/// `writer`, and records it. `reason` and `found_at` come from the check or the
/// marker.
pub(super) fn recover(
    writer: &mut Writer,
    damaged: Option<&Path>,
    rescue: &Path,
    reason: Option<String>,
    found_at: Option<Timestamp>,
) -> Result<CorruptionAlarm, StoreError> {
    let mut from_damaged = Copied::default();
    if let Some(path) = damaged {
        copy_registry(writer.conn(), path);
        from_damaged = copy_outbox(path, &mut |chunk| writer.import(chunk))?;
    }
    let mut rescued = Copied::default();
    if rescue.exists() {
        rescued = copy_outbox(rescue, &mut |chunk| writer.import(chunk))?;
    }
    writer.count_outbox()?;
    let alarm = CorruptionAlarm {
        moved_to: damaged.map(Path::to_path_buf),
        reason: reason.unwrap_or_else(|| "damage reported while running".to_owned()),
        at: found_at.unwrap_or_else(Timestamp::now),
        recovered: from_damaged.readings,
        rescued: rescued.readings,
        unreadable: from_damaged.unreadable + rescued.unreadable,
    };
    writer.record_damage(&DamageRow {
        at: alarm.at,
        reason: &alarm.reason,
        moved_to: alarm.moved_to.as_deref(),
        recovered: alarm.recovered,
        rescued: alarm.rescued,
        unreadable: alarm.unreadable,
    })?;
    Ok(alarm)
}

/// `file:` URI of `path`, read-only, for ATTACH.
fn read_only_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.display().to_string().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    uri
}

/// Copies the registry tables of the damaged file, each whole or not at all
/// (a table whose pages refuse stays behind, logged), when its schema is this
/// build's.
fn copy_registry(conn: &mut Connection, damaged: &Path) {
    if let Err(e) = conn.execute("ATTACH DATABASE ?1 AS damaged", [read_only_uri(damaged)]) {
        tracing::error!(error = %e, "cannot open the damaged database to copy its registry");
        return;
    }
    let version: Result<i64, _> = conn.query_row("PRAGMA damaged.user_version", [], |r| r.get(0));
    match version {
        Ok(v) if v == super::SCHEMA_VERSION => {
            for table in REGISTRY_TABLES {
                let sql =
                    format!("INSERT OR IGNORE INTO main.{table} SELECT * FROM damaged.{table}");
                match conn.execute(&sql, []) {
                    Ok(n) => tracing::warn!(table, rows = n, "copied from the damaged database"),
                    Err(e) => {
                        tracing::error!(error = %e, table, "cannot copy this table from the damaged database; it stays there only")
                    }
                }
            }
            // A meter whose filed records' fingerprints stayed behind is
            // judged by its records' base times as well, as one paired
            // before they were kept (H35), rather than refiling them all.
            if let Err(e) = conn.execute(
                "UPDATE main.devices SET racp_legacy = 1 WHERE racp_sequence IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM main.glucose_filed g WHERE g.device = address)",
                [],
            ) {
                tracing::error!(error = %e, "cannot mark the glucose meters whose filed records were not copied");
            }
        }
        Ok(v) => {
            tracing::error!(
                version = v,
                "the damaged database has another schema version; its registry is not copied"
            )
        }
        Err(e) => tracing::error!(error = %e, "cannot read the damaged database's schema version"),
    }
    if let Err(e) = conn.execute("DETACH DATABASE damaged", []) {
        tracing::warn!(error = %e, "cannot detach the damaged database");
    }
}

/// Reads every outbox reading of the store file at `path` that can be read, in
/// chunks into `store`; a range that refuses is read again one row at a time.
pub(super) fn copy_outbox(
    path: &Path,
    store: &mut dyn FnMut(Vec<Reading>) -> Result<u64, StoreError>,
) -> Result<Copied, StoreError> {
    let mut copied = Copied::default();
    let conn = match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot open to recover its outbox");
            copied.unreadable += 1;
            return Ok(copied);
        }
    };
    let vocab = match read_vocab(&conn) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot read the codes of the readings; no outbox reading can be recovered");
            copied.unreadable += 1;
            return Ok(copied);
        }
    };
    let mut chunk: Vec<Reading> = Vec::with_capacity(CHUNK);
    let mut flush = |chunk: &mut Vec<Reading>, copied: &mut Copied| -> Result<(), StoreError> {
        if !chunk.is_empty() {
            copied.readings += store(std::mem::take(chunk))?;
        }
        Ok(())
    };
    let mut one = conn.prepare(&format!(
        "{} LIMIT 1",
        rows_sql().replace("r.seq BETWEEN ?1 AND ?2", "r.seq = ?1")
    ))?;
    let mut rows_of = conn.prepare(&rows_sql())?;
    for class in [Class::Vital, Class::Room] {
        let ranges: Result<Vec<(i64, i64)>, rusqlite::Error> = conn
            .prepare(&format!(
                "SELECT first_seq, last_seq FROM {} ORDER BY first_seq",
                class.table()
            ))
            .and_then(|mut q| q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect());
        let ranges = match ranges {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, class = class.as_str(), "cannot read this outbox's ranges; its readings stay in the damaged file");
                copied.unreadable += 1;
                continue;
            }
        };
        for (first, last) in ranges {
            // The next sequence number not yet read in this range.
            let mut next = first;
            // A read that refuses is recovered from below; a write into the
            // fresh database that refuses stops the start.
            let mut import_error = None;
            let whole: Result<(), StoreError> = (|| {
                let mut rows = rows_of.query([first, last])?;
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    match decode_row(&vocab, row)? {
                        Some(r) => chunk.push(r),
                        None => copied.unreadable += 1,
                    }
                    next = seq + 1;
                    if chunk.len() >= CHUNK
                        && let Err(e) = flush(&mut chunk, &mut copied)
                    {
                        import_error = Some(e);
                        return Ok(());
                    }
                }
                Ok(())
            })();
            if let Some(e) = import_error {
                return Err(e);
            }
            if let Err(e) = whole {
                tracing::warn!(error = %e, first = next, last, "an outbox range refuses; reading it one row at a time");
                for seq in next..=last {
                    let row = one
                        .query_row([seq], |row| Ok(decode_row(&vocab, row)))
                        .optional();
                    match row {
                        Ok(Some(Ok(Some(r)))) => chunk.push(r),
                        // Gone (evicted): nothing to recover.
                        Ok(None) => {}
                        Ok(Some(Ok(None) | Err(_))) | Err(_) => copied.unreadable += 1,
                    }
                    if chunk.len() >= CHUNK {
                        flush(&mut chunk, &mut copied)?;
                    }
                }
            }
        }
    }
    flush(&mut chunk, &mut copied)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use rusqlite::ffi;

    use super::*;
    use crate::config::Synchronous;
    use crate::model::{DeviceAddress, Quantity, ReadingId, ResidentId, Subject, Unit, Value};
    use crate::store::rescue_path;
    use crate::store::{Store, StoreSettings};
    use crate::system::health::Health;

    fn sqlite(code: std::os::raw::c_int) -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None))
    }

    fn check(e: StoreError, corruption: bool) {
        assert_eq!(e.is_corruption(), corruption, "{e:?}");
    }

    #[test]
    fn corruption_is_told_apart_from_other_refusals() {
        check(sqlite(ffi::SQLITE_CORRUPT), true);
        check(sqlite(ffi::SQLITE_CORRUPT_INDEX), true);
        check(sqlite(ffi::SQLITE_CORRUPT_SEQUENCE), true);
        check(sqlite(ffi::SQLITE_NOTADB), true);
        check(StoreError::Corrupt("*** in database main ***".into()), true);
        // Refusals that pass, or that moving the file aside would not mend.
        check(sqlite(ffi::SQLITE_BUSY), false);
        check(sqlite(ffi::SQLITE_LOCKED), false);
        check(sqlite(ffi::SQLITE_FULL), false);
        check(sqlite(ffi::SQLITE_IOERR), false);
        check(sqlite(ffi::SQLITE_IOERR_FSYNC), false);
        check(sqlite(ffi::SQLITE_CONSTRAINT), false);
        check(sqlite(ffi::SQLITE_READONLY), false);
        check(sqlite(ffi::SQLITE_CANTOPEN), false);
        check(StoreError::Closed, false);
        check(StoreError::UnknownWord("x".into()), false);
        check(
            StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows),
            false,
        );
    }

    fn settings(dir: &Path) -> StoreSettings {
        StoreSettings {
            commit_max_readings: 500,
            commit_max_delay: Duration::from_millis(1),
            synchronous: Synchronous::Full,
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

    async fn close(store: Store) {
        let Store { handle, writer, .. } = store;
        drop(handle);
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
    }

    /// Reading number `n`, its number in the last bytes of its id.
    fn reading(n: u64) -> Reading {
        let mut id = [0u8; 16];
        id[6] = 0x70;
        id[8..].copy_from_slice(&n.to_be_bytes());
        let vital = !n.is_multiple_of(3);
        Reading {
            id: ReadingId::from_bytes(id),
            device: DeviceAddress([0xC0, 0, 0, 0, 0, (n % 5) as u8]),
            subject: if vital {
                Subject::Resident(ResidentId(1))
            } else {
                Subject::Room("Lounge".into())
            },
            quantity: if vital {
                Quantity::HeartRate
            } else {
                Quantity::Temperature
            },
            value: Value::Number(60.0 + (n % 40) as f64),
            unit: if vital {
                Unit::PerMinute
            } else {
                Unit::Celsius
            },
            measured_at: None,
            received_at: Timestamp::from_unix_ms(1_800_000_000_000 + n as i64),
            clock_synced: true,
        }
    }

    fn number(id: ReadingId) -> u64 {
        u64::from_be_bytes(id.as_bytes()[8..].try_into().unwrap())
    }

    /// The numbers of every reading in the store's outbox.
    async fn outbox(store: &Store) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        while let Some(lease) = store.handle.lease(10_000).await.unwrap() {
            out.extend(lease.readings.iter().map(|r| number(r.reading.id)));
        }
        store.handle.release_all().await.unwrap();
        out
    }

    /// The leaf pages of the readings table, left to right.
    fn reading_leaves(db: &Path) -> Vec<i64> {
        let c = Connection::open(db).unwrap();
        c.prepare(
            "SELECT pageno FROM dbstat WHERE name = 'readings' AND pagetype = 'leaf' ORDER BY path",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Overwrites pages (1 KiB, the store's size) of the main file with garbage.
    fn damage(db: &Path, pages: &[i64]) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        for &p in pages {
            f.seek(SeekFrom::Start((p as u64 - 1) * 1024)).unwrap();
            f.write_all(&[0x5a; 1024]).unwrap();
        }
        f.sync_all().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_of_a_damaged_page_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(settings(dir.path()));
        store
            .handle
            .ingest((1..=2000).map(reading).collect())
            .await
            .unwrap();
        close(store).await;
        let db = dir.path().join("t.db");
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        let leaves = reading_leaves(&db);
        damage(&db, &[leaves[leaves.len() / 2]]);
        let c = Connection::open(&db).unwrap();
        let e: StoreError = c
            .query_row("SELECT sum(value) FROM readings", [], |r| {
                r.get::<_, Option<f64>>(0)
            })
            .unwrap_err()
            .into();
        assert!(e.to_string().contains("malformed"), "{e}");
        assert!(e.is_corruption(), "{e:?}");
    }

    /// A commit meets damaged pages while the store runs: its readings, and
    /// every group after it, go to the rescue file; the damage is reported with
    /// its time. The next start moves the file aside, copies every undelivered
    /// reading it can still read (row by row around the damaged pages) and the
    /// rescued ones, with their ids, and records it all in the fresh file.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_commit_meeting_damage_keeps_its_readings_and_the_restart_recovers_what_reads() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let store = open(settings(dir.path()));
        store
            .handle
            .ingest((1..=2000).map(reading).collect())
            .await
            .unwrap();
        let test = Connection::open(&db).unwrap();
        test.busy_timeout(Duration::from_secs(5)).unwrap();
        test.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        let leaves = reading_leaves(&db);
        // A page in the middle (read back row by row at the restart) and the
        // last one, where the next commit inserts.
        damage(&db, &[leaves[leaves.len() / 2], leaves[leaves.len() - 1]]);
        // Another connection's commit: the writer reads its pages from the
        // file again, as after any change it did not make itself.
        test.execute_batch("CREATE TABLE scratch (x); DROP TABLE scratch;")
            .unwrap();
        let before = Timestamp::now();
        assert!(!store.handle.stats().damage_found.is_cancelled());
        store
            .handle
            .ingest((2001..=2050).map(reading).collect())
            .await
            .expect("the group meeting the damage is kept in the rescue file");
        store
            .handle
            .ingest((2051..=2100).map(reading).collect())
            .await
            .expect("and so is the next");
        let stats = store.handle.stats().clone();
        assert!(
            stats.damage_found.is_cancelled(),
            "the daemon is told to stop"
        );
        let found = stats.damage.lock().unwrap().clone().expect("damage found");
        assert!(found.reason.starts_with("commit: "), "{}", found.reason);
        assert!(found.at >= before);
        assert!(rescue_path(&db).exists());
        assert!(marker_path(&db).exists());
        // Nothing is leased from the rescue file.
        assert_eq!(store.handle.lease(10).await.unwrap(), None);
        close(store).await;
        drop(test);

        let store = open(settings(dir.path()));
        let alarm = store
            .reader
            .stats()
            .unwrap()
            .corruption
            .expect("the damage is recorded");
        let moved_to = alarm.moved_to.clone().expect("moved aside");
        assert_eq!(alarm.at, found.at, "the time it was found, not the restart");
        assert_eq!(alarm.reason, found.reason);
        // What the test itself can still read of the damaged file, row by row.
        let damaged =
            Connection::open_with_flags(&moved_to, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        // (Sequence numbers are not the readings' numbers: a commit numbers its
        // vital signs first.)
        let readable: BTreeSet<u64> = (1..=2000)
            .filter_map(|seq| {
                damaged
                    .query_row("SELECT id FROM readings WHERE seq = ?1", [seq], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })
                    .ok()
            })
            .map(|id| number(ReadingId::from_bytes(id.try_into().unwrap())))
            .collect();
        assert!(
            readable.len() > 1500 && readable.len() < 2000,
            "the damage cost some rows, not most: {} readable",
            readable.len()
        );
        let rescued: BTreeSet<u64> = (2001..=2100).collect();
        let want: BTreeSet<u64> = readable.union(&rescued).copied().collect();
        assert_eq!(outbox(&store).await, want);
        assert_eq!(
            store
                .handle
                .stats()
                .outbox_readings
                .load(std::sync::atomic::Ordering::Relaxed),
            want.len() as u64,
            "the outbox's count includes what was brought in"
        );
        assert_eq!(alarm.recovered, readable.len() as u64);
        assert_eq!(alarm.rescued, 100);
        assert_eq!(alarm.unreadable, 2000 - readable.len() as u64);
        assert!(!rescue_path(&db).exists(), "the rescue file is consumed");
        assert!(!marker_path(&db).exists());
        let ok: String = Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        close(store).await;

        // The next start: the record stays, nothing is moved or copied again.
        let store = open(settings(dir.path()));
        assert_eq!(store.reader.stats().unwrap().corruption, Some(alarm));
        assert_eq!(outbox(&store).await, want);
        close(store).await;
    }
}
