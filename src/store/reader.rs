//! Read-only access for the web page and status: its own connections, never the
//! writer's, used from blocking threads only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use std::sync::atomic::Ordering;

use super::limits::{Class, EvictionReason};
use super::{CorruptionAlarm, StoreError, StoreStats};
use crate::model::{
    Device, DeviceAddress, DeviceKind, Quantity, ResidentId, SpecialValue, Subject, Timestamp,
    Unit, Value,
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
    /// Free bytes on the database's filesystem at the last check.
    pub free_disk_bytes: u64,
    /// Set when start-up found the database corrupt and moved it aside.
    pub corruption: Option<CorruptionAlarm>,
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
    pub taken_at: Timestamp,
    pub device: DeviceAddress,
}

/// A resident and the newest value of each quantity measured for them.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidentOverview {
    pub id: ResidentId,
    pub display_name: String,
    pub room: String,
    pub latest: Vec<LatestValue>,
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
            free_disk_bytes: s.free_disk_bytes.load(Ordering::Relaxed),
            corruption: s.corruption.lock().unwrap().clone(),
        })
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.pool.lock().unwrap().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(2))?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.pool.lock().unwrap();
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
                "SELECT quantity, value, status, unit, taken_at_ms, device FROM latest WHERE subject = ?1",
            )?;
            let rows: Vec<(i64, String, String)> = residents
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, display_name, room) in rows {
                let mut values: Vec<LatestValue> = latest
                    .query_map([format!("resident:{id}")], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<f64>>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    })?
                    .filter_map(|row| row.ok().and_then(|(q, v, s, u, t, d)| latest_value(&q, v, &s, &u, t, &d)))
                    .collect();
                values.sort_by_key(|v| v.quantity);
                out.push(ResidentOverview { id: ResidentId(id), display_name, room, latest: values });
            }
            Ok(out)
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

/// Rebuilds a value from its row; a row this build cannot read (a quantity or unit
/// from a newer version) is skipped rather than shown wrongly.
fn latest_value(
    q: &str,
    v: Option<f64>,
    status: &str,
    unit: &str,
    t: i64,
    device: &str,
) -> Option<LatestValue> {
    let value = match (status, v) {
        ("ok", Some(n)) if n.is_finite() => Value::Number(n),
        (s, _) => Value::Special(SpecialValue::parse(s)?),
    };
    Some(LatestValue {
        quantity: Quantity::parse(q)?,
        value,
        unit: Unit::from_ucum(unit)?,
        taken_at: Timestamp::from_unix_ms(t),
        device: device.parse().ok()?,
    })
}
