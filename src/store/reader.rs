//! Read-only access for the web page and status: its own connections, never the
//! writer's, used from blocking threads only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use std::sync::atomic::Ordering;

use super::limits::EvictionReason;
use super::outbox::Class;
use super::{CorruptionAlarm, DamageFound, StoreError, StoreStats};
use crate::model::{
    Device, DeviceAddress, DeviceKind, Quantity, ReadingId, Resident, ResidentId, SpecialValue,
    Subject, Timestamp, Unit, Value,
};

/// The store's state for status pages and metrics, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    /// Readings waiting for the cloud's ack (leased or not).
    pub outbox_depth: u64,
    /// Estimated bytes of reading data waiting.
    pub outbox_bytes: u64,
    /// When the oldest waiting reading was received; `None` when nothing waits.
    pub oldest_unsent: Option<Timestamp>,
    /// Evicted readings since the database was made: (reason, class, count) for
    /// every pair, zeros included, so that a page can show "0 evicted".
    pub evicted: Vec<(EvictionReason, Class, u64)>,
    /// Delivered readings purged from history (retention or disk pressure).
    pub history_purged: u64,
    /// The database file plus its WAL, in bytes.
    pub database_bytes: u64,
    pub last_commit: Option<Timestamp>,
    pub readings_committed: u64,
    pub commit_errors: u64,
    /// The last commit attempt failed for a full disk; cleared by the next success.
    pub disk_full: bool,
    /// The writer is trying a commit again after I/O errors from the storage.
    pub storage_failing: bool,
    /// Free bytes on the database's filesystem at the last check.
    pub free_disk_bytes: u64,
    /// The newest record of a damaged database (kept across restarts).
    pub corruption: Option<CorruptionAlarm>,
    /// Damage found while running: the daemon is stopping to replace the file.
    pub damage: Option<DamageFound>,
    /// This run's start replaced a damaged database.
    pub replaced_at_start: bool,
}

impl StatsSnapshot {
    /// How long the oldest waiting reading has waited at `now`.
    pub fn oldest_unsent_age(&self, now: Timestamp) -> Option<std::time::Duration> {
        self.oldest_unsent.map(|t| t.age_at(now))
    }

    /// Evicted readings of every reason and class together.
    pub fn evicted_total(&self) -> u64 {
        self.evicted.iter().map(|e| e.2).sum()
    }
}

/// The newest value of one quantity for a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    pub quantity: Quantity,
    pub value: Value,
    pub unit: Unit,
    /// When it was true as far as the gateway trusts it (`model::trusted_time`).
    pub taken_at: Timestamp,
    pub device: DeviceAddress,
    /// The device's own time, when it gave one (ahead of `taken_at` beyond the
    /// tolerance: its clock is wrong).
    pub device_time: Option<Timestamp>,
    /// The stored reading it is.
    pub reading_id: Option<ReadingId>,
}

/// A resident and the newest value of each quantity measured for them.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidentOverview {
    pub id: ResidentId,
    pub display_name: String,
    pub room: String,
    pub latest: Vec<LatestValue>,
}

/// A resident as staff manage them, archived or not.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidentRecord {
    pub resident: Resident,
    pub archived: bool,
}

/// One stored reading of a resident, for the detail page's charts and table.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryValue {
    pub quantity: Quantity,
    pub value: Value,
    pub unit: Unit,
    pub taken_at: Timestamp,
    pub device: DeviceAddress,
}

/// Opens read-only connections on demand and keeps a few for reuse. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reader {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
    stats: Arc<StoreStats>,
}

const POOL_SIZE: usize = 4;

impl Reader {
    /// The page cache bound of this connection, in KiB (a test's view).
    #[cfg(test)]
    pub(crate) fn page_cache_kib(&self) -> i64 {
        self.with_conn(|c| Ok(super::page_cache_kib(c))).unwrap()
    }

    pub(super) fn new(path: PathBuf, stats: Arc<StoreStats>) -> Self {
        Reader {
            path,
            pool: Arc::new(Mutex::new(Vec::new())),
            stats,
        }
    }

    /// Outbox depth, oldest unsent reading, evictions, database size, last commit.
    pub fn stats(&self) -> Result<StatsSnapshot, StoreError> {
        let oldest: Option<i64> = self.with_conn(|c| {
            Ok(c.query_row(
                "SELECT min(received_at_ms) FROM readings WHERE seq IN
                    (SELECT min(first_seq) FROM outbox_vital
                     UNION ALL SELECT min(first_seq) FROM outbox_room)",
                [],
                |r| r.get(0),
            )?)
        })?;
        let s = &self.stats;
        let mut evicted = Vec::with_capacity(8);
        for reason in EvictionReason::ALL {
            for class in [Class::Vital, Class::Room] {
                evicted.push((reason, class, s.evicted(reason, class)));
            }
        }
        let size = |suffix: &str| {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        Ok(StatsSnapshot {
            outbox_depth: s.outbox_readings.load(Ordering::Relaxed),
            outbox_bytes: s.outbox_bytes.load(Ordering::Relaxed),
            oldest_unsent: oldest.map(Timestamp::from_unix_ms),
            evicted,
            history_purged: s.history_purged.load(Ordering::Relaxed),
            database_bytes: size("") + size("-wal"),
            last_commit: s.last_commit(),
            readings_committed: s.readings_committed.load(Ordering::Relaxed),
            commit_errors: s.commit_errors.load(Ordering::Relaxed),
            disk_full: s.disk_full.load(Ordering::Relaxed),
            storage_failing: s.storage_failing.load(Ordering::Relaxed),
            free_disk_bytes: s.free_disk_bytes.load(Ordering::Relaxed),
            corruption: s
                .corruption
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            replaced_at_start: s.replaced_at_start.load(Ordering::Relaxed),
            damage: s
                .damage
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        })
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(2))?;
                super::bound_memory(&c, super::SIDE_CACHE_KIB)?;
                c
            }
        };
        let out = f(&conn);
        if let Err(e) = &out {
            // A page read for the staff pages or the alerts that says the file
            // is damaged stops the daemon like a commit that does.
            self.stats.report_if_damaged(&self.path, "read", e);
        }
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_SIZE {
            pool.push(conn);
        }
        out
    }

    /// Every resident not archived, by room, with their newest values.
    pub fn residents_overview(&self) -> Result<Vec<ResidentOverview>, StoreError> {
        self.with_conn(|conn| {
            let mut residents = conn.prepare_cached(
                "SELECT id, display_name, room FROM residents WHERE archived = 0 ORDER BY id",
            )?;
            let mut latest = conn.prepare_cached(
                "SELECT quantity, value, status, unit, taken_at_ms, device, device_time_ms, reading_id
                 FROM latest WHERE subject = ?1",
            )?;
            let rows: Vec<(i64, String, String)> = residents
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, display_name, room) in rows {
                let mut values: Vec<LatestValue> = latest
                    .query_map([format!("resident:{id}")], latest_row)?
                    .filter_map(|row| row.ok().and_then(latest_value))
                    .collect();
                values.sort_by_key(|v| v.quantity);
                out.push(ResidentOverview { id: ResidentId(id), display_name, room, latest: values });
            }
            Ok(out)
        })
    }

    /// One resident, archived or not; `None` when there is no such id.
    pub fn resident(&self, id: ResidentId) -> Result<Option<ResidentRecord>, StoreError> {
        self.with_conn(|c| {
            Ok(c.prepare_cached(
                "SELECT id, display_name, room, reference, archived FROM residents WHERE id = ?1",
            )?
            .query_row([id.0], resident_record)
            .optional()?)
        })
    }

    /// Every resident, archived ones last, then by room and name.
    pub fn residents_all(&self) -> Result<Vec<ResidentRecord>, StoreError> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, display_name, room, reference, archived FROM residents
                 ORDER BY archived, room, display_name, id",
            )?;
            let rows = stmt.query_map([], resident_record)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// A resident's readings taken at or after `since`, oldest first: the
    /// detail page's charts and its table of the newest readings, from one scan.
    ///
    /// There is no per-resident index on `readings`: one would cost the writer
    /// an index page per resident in every commit (measured in
    /// `benches/web_pages.rs`: 2–3× the time and 4–8× the bytes written per
    /// reading). Instead the scan starts at the first row received at or
    /// after `since - RECEIVED_SLACK`, found by bisection on the rowid (rows are
    /// appended in the order they are received), and reads only that tail.
    /// Beat-to-beat (RR) intervals are left out: a heart-rate strap sends about
    /// one a second, for analysis in the cloud, not for a page.
    pub fn resident_history(
        &self,
        id: ResidentId,
        since: Timestamp,
    ) -> Result<Vec<HistoryValue>, StoreError> {
        self.with_conn(|c| {
            let first = first_seq_received_since(c, since.saturating_sub(RECEIVED_SLACK))?;
            // When taken, as far as the gateway trusts it (`model::trusted_time`):
            // a device time more than 2 minutes ahead of receipt is not used.
            let taken = "CASE WHEN measured_at_ms > received_at_ms + 120000 THEN received_at_ms
                              ELSE coalesce(measured_at_ms, received_at_ms) END";
            let mut stmt = c.prepare_cached(&format!(
                "SELECT quantity, value, status, unit, {taken}, device
                 FROM readings_text
                 WHERE seq >= ?3 AND resident_id = ?1
                   AND {taken} >= ?2
                   AND quantity != 'rr_interval'
                 ORDER BY {taken}, seq"
            ))?;
            history_rows(&mut stmt, rusqlite::params![id.0, since.unix_ms(), first])
        })
    }

    /// The newest value of each quantity measured for one resident.
    pub fn resident_latest(&self, id: ResidentId) -> Result<Vec<LatestValue>, StoreError> {
        self.with_conn(|conn| {
            let mut latest = conn.prepare_cached(
                "SELECT quantity, value, status, unit, taken_at_ms, device, device_time_ms, reading_id
                 FROM latest WHERE subject = ?1",
            )?;
            let mut values: Vec<LatestValue> = latest
                .query_map([format!("resident:{}", id.0)], latest_row)?
                .filter_map(|row| row.ok().and_then(latest_value))
                .collect();
            values.sort_by_key(|v| v.quantity);
            Ok(values)
        })
    }

    /// Every registered device and whom it is assigned to. Rows this build cannot
    /// read (an address or kind from a newer version) are skipped, not guessed at.
    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT address, kind, model, name, resident_id, room FROM devices ORDER BY address",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (address, kind, model, name, resident, room) = row?;
                let (Ok(address), Some(kind)) = (address.parse(), DeviceKind::parse(&kind)) else {
                    continue;
                };
                let subject = match (resident, room) {
                    (Some(id), _) => Subject::Resident(ResidentId(id)),
                    (None, Some(room)) => Subject::Room(room),
                    (None, None) => Subject::Unassigned,
                };
                out.push(Device { address, kind, model, name, subject });
            }
            Ok(out)
        })
    }

    /// Every registered device with its pairing state, battery, signal and last-seen.
    pub fn device_states(&self) -> Result<Vec<super::DeviceState>, StoreError> {
        self.with_conn(super::registry::device_states)
    }

    /// Whom each device belonged to and when, oldest first: (device, subject,
    /// from, until), for `ingest::Registry::load_history` at start.
    #[allow(clippy::type_complexity)]
    pub fn assignment_history(
        &self,
    ) -> Result<Vec<(DeviceAddress, Subject, Timestamp, Option<Timestamp>)>, StoreError> {
        self.with_conn(super::registry::assignment_history)
    }

    /// Every registered device's bind key with the counters saved for it, for
    /// the decoder at start.
    pub fn keys(&self) -> Result<Vec<super::StoredKey>, StoreError> {
        self.with_conn(super::registry::keys)
    }

    /// How far each glucose meter's records are filed, for the BLE source and
    /// ingest at start.
    pub fn racp_progress(
        &self,
    ) -> Result<Vec<(crate::model::DeviceAddress, crate::sensor::racp::SavedMeter)>, StoreError>
    {
        self.with_conn(super::registry::racp_progress)
    }

    /// The newest `limit` events of the pairing record, newest first.
    pub fn pairing_events(
        &self,
        limit: usize,
    ) -> Result<Vec<super::StoredPairingEvent>, StoreError> {
        self.with_conn(|c| super::registry::pairing_events(c, limit))
    }

    /// Readings waiting in the outbox, counted in the database.
    pub fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            Ok(super::outbox::depth(c, Class::Vital)? + super::outbox::depth(c, Class::Room)?)
        })
    }

    /// `PRAGMA integrity_check`: `Ok(())` when SQLite says "ok".
    pub fn integrity_check(&self) -> Result<Result<(), String>, StoreError> {
        self.with_conn(|c| {
            let verdict: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            Ok(if verdict == "ok" {
                Ok(())
            } else {
                Err(verdict)
            })
        })
    }
}

/// A row of `latest` as SQLite gives it.
type LatestRow = (
    String,
    Option<f64>,
    String,
    String,
    i64,
    String,
    Option<i64>,
    Vec<u8>,
);

fn latest_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LatestRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// Rebuilds a value from its row; a row this build cannot read (a quantity or unit
/// from a newer version) is skipped rather than shown wrongly.
fn latest_value(
    (q, v, status, unit, t, device, device_time, id): LatestRow,
) -> Option<LatestValue> {
    let value = match (status.as_str(), v) {
        ("ok", Some(n)) if n.is_finite() => Value::Number(n),
        (s, _) => Value::Special(SpecialValue::parse(s)?),
    };
    Some(LatestValue {
        quantity: Quantity::parse(&q)?,
        value,
        unit: Unit::from_ucum(&unit)?,
        taken_at: Timestamp::from_unix_ms(t),
        device: device.parse().ok()?,
        device_time: device_time.map(Timestamp::from_unix_ms),
        reading_id: <[u8; 16]>::try_from(id.as_slice())
            .ok()
            .map(ReadingId::from_bytes),
    })
}

/// How far before `since` the history scan starts, by received time: a value
/// measured by the device before it was received (a blood pressure cuff that
/// uploads its memory) is found when it was received up to this much later.
pub const RECEIVED_SLACK: std::time::Duration = std::time::Duration::from_secs(3600);

/// The first `seq` whose row was received at or after `t`, by bisection on the
/// rowid: about 20 point lookups for a million rows. Rows are appended in the
/// order they are received; where the gateway clock stepped back, the answer
/// may be off by the size of the step. One past the last row when none is.
fn first_seq_received_since(c: &Connection, t: Timestamp) -> Result<i64, StoreError> {
    let mut at = c.prepare_cached(
        "SELECT seq, received_at_ms FROM readings WHERE seq >= ?1 ORDER BY seq LIMIT 1",
    )?;
    let (lo, hi): (Option<i64>, Option<i64>) =
        c.query_row("SELECT min(seq), max(seq) FROM readings", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(hi)) = (lo, hi) else {
        return Ok(0);
    };
    // Invariant: every row before `lo` was received before `t`; `hi + 1` is
    // the answer when no row at or after `lo` qualifies.
    let mut hi = hi + 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, i64)> = at
            .query_row([mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            Some((seq, received)) if received < t.unix_ms() => lo = seq + 1,
            Some(_) | None => hi = mid,
        }
    }
    Ok(lo)
}

fn resident_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResidentRecord> {
    Ok(ResidentRecord {
        resident: Resident {
            id: ResidentId(r.get(0)?),
            display_name: r.get(1)?,
            room: r.get(2)?,
            reference: r.get(3)?,
        },
        archived: r.get(4)?,
    })
}

/// Rows of (quantity, value, status, unit, taken ms, device as 6 bytes); rows this
/// build cannot read are skipped, as in [`latest_value`].
fn history_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<HistoryValue>, StoreError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let q: String = r.get(0)?;
        let v: Option<f64> = r.get(1)?;
        let status: String = r.get(2)?;
        let unit: String = r.get(3)?;
        let t: i64 = r.get(4)?;
        let device: Vec<u8> = r.get(5)?;
        let value = match (status.as_str(), v) {
            ("ok", Some(n)) if n.is_finite() => Value::Number(n),
            (s, _) => match SpecialValue::parse(s) {
                Some(sv) => Value::Special(sv),
                None => continue,
            },
        };
        let (Some(quantity), Some(unit), Ok(device)) = (
            Quantity::parse(&q),
            Unit::from_ucum(&unit),
            <[u8; 6]>::try_from(device),
        ) else {
            continue;
        };
        out.push(HistoryValue {
            quantity,
            value,
            unit,
            taken_at: Timestamp::from_unix_ms(t),
            device: DeviceAddress(device),
        });
    }
    Ok(out)
}

/// Readings in a database's outbox (not yet acknowledged by the cloud), read
/// from the file with the daemon stopped (`carehub factory-reset`). A file that
/// is not there holds none.
pub fn unsent_readings(path: &std::path::Path) -> Result<u64, StoreError> {
    if !path.exists() {
        return Ok(0);
    }
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let n: i64 = c.query_row(
        "SELECT (SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM outbox_vital)
              + (SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM outbox_room)",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(received ms of rows at seq 1, 2, ..., `None` for a deleted row; t; the
    /// first row received at or after t)`. The answer may name a deleted seq
    /// before that row: what counts is that `seq >= answer` selects exactly the
    /// rows received since t.
    #[test]
    fn bisection_finds_the_first_row_received_since() {
        let check = |rows: &[Option<i64>], t: i64, first: i64| {
            let c = Connection::open_in_memory().unwrap();
            c.execute_batch(
                "CREATE TABLE readings (seq INTEGER PRIMARY KEY, received_at_ms INTEGER)",
            )
            .unwrap();
            for (i, r) in rows.iter().enumerate() {
                if let Some(ms) = r {
                    c.execute("INSERT INTO readings VALUES (?1, ?2)", [i as i64 + 1, *ms])
                        .unwrap();
                }
            }
            let got = first_seq_received_since(&c, Timestamp::from_unix_ms(t)).unwrap();
            let selected: Vec<i64> = (1..=rows.len() as i64)
                .filter(|s| *s >= got && rows[*s as usize - 1].is_some())
                .collect();
            let expected: Vec<i64> = (1..=rows.len() as i64)
                .filter(|s| *s >= first && rows[*s as usize - 1].is_some())
                .collect();
            assert_eq!(selected, expected, "{rows:?} since {t}: answer {got}");
        };
        check(&[], 5, 0);
        check(&[Some(10)], 5, 1);
        check(&[Some(10)], 10, 1);
        check(&[Some(10)], 11, 2);
        check(&[Some(1), Some(2), Some(3), Some(4), Some(5)], 3, 3);
        check(&[Some(1), Some(2), Some(3), Some(4), Some(5)], 0, 1);
        check(&[Some(1), Some(2), Some(3), Some(4), Some(5)], 6, 6);
        // Rows purged by retention leave gaps in the rowids.
        check(
            &[None, None, Some(3), None, Some(5), Some(6), None, Some(8)],
            4,
            5,
        );
        check(
            &[None, None, Some(3), None, Some(5), Some(6), None, Some(8)],
            7,
            8,
        );
        check(
            &[None, None, Some(3), None, Some(5), Some(6), None, Some(8)],
            2,
            3,
        );
        // Equal times (one group commit) all count.
        check(&[Some(1), Some(4), Some(4), Some(4), Some(9)], 4, 2);
    }
}
