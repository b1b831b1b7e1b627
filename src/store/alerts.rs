//! The alert book: the lifecycle of each alert in SQLite (raised, acknowledged by
//! whom, resolved, published), the thresholds and SpO₂ scale a nurse set per
//! resident, and the record of who entered each staff observation set.
//!
//! Every committed change to an alert is also sent on a broadcast channel
//! ([`AlertBook::subscribe`]) so that a live page can follow it; nobody has to
//! listen, and the alerts page works without it (it reads the book).
//!
//! Alerts are rare (a few a day), so the book keeps its own write connection
//! beside the readings writer instead of queueing behind group commits; SQLite's
//! WAL lock and the busy timeouts of both connections serialise the writes. Every
//! call is blocking: use it from `spawn_blocking` or a blocking thread.
//!
//! "One open alert per cause" is enforced by a partial unique index, and `sync`
//! compares the open alerts in the database with the causes that hold now, so a
//! restart reloads what is open and raises nothing twice.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::StoreError;
use crate::clinical::alerts::{Cause, Thresholds};
use crate::clinical::news2::Spo2Scale;
use crate::model::{ReadingId, Timestamp};

/// What happened to an alert, as sent to live listeners after the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertChangeKind {
    Raised,
    Acknowledged,
    Resolved,
}

/// One committed change to one alert. Listeners read the alert itself from the
/// book (`AlertBook::get`); the change only says which and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertChange {
    pub id: i64,
    pub kind: AlertChangeKind,
}

/// Changes kept for a listener that falls behind; a lagging listener gets
/// `RecvError::Lagged` and should re-read the whole list.
const CHANGES_BACKLOG: usize = 64;

/// One alert as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub id: i64,
    /// UUIDv7, the alert's identity on the wire.
    pub uuid: String,
    pub cause_key: String,
    pub resident_id: Option<i64>,
    /// The resident's pseudonymous reference, for the wire.
    pub resident_reference: Option<String>,
    pub rule: String,
    pub severity: String,
    pub level: String,
    pub score: Option<u8>,
    pub message: String,
    pub raised_at: Timestamp,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<Timestamp>,
    pub resolved_at: Option<Timestamp>,
    pub published: bool,
}

/// What one `sync` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Ids of the alerts raised now.
    pub raised: Vec<i64>,
    /// Ids of the alerts resolved now.
    pub resolved: Vec<i64>,
}

/// The alert tables, through one connection.
pub struct AlertBook {
    conn: Connection,
    changes: tokio::sync::broadcast::Sender<AlertChange>,
    /// Bumped as every method that writes starts (they all take `&mut self`),
    /// so that a reader who read under the book's lock can later tell, without
    /// the lock, whether what it read may have changed (the overview's cache).
    generation: Arc<AtomicU64>,
}

const COLUMNS: &str = "a.id, a.uuid, a.cause_key, a.resident_id, r.reference, a.rule, a.severity,
    a.level, a.score, a.message, a.raised_at_ms, a.acknowledged_by, a.acknowledged_at_ms,
    a.resolved_at_ms, a.published";

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    let ts = |v: Option<i64>| v.map(Timestamp::from_unix_ms);
    Ok(AlertRecord {
        id: row.get(0)?,
        uuid: row.get(1)?,
        cause_key: row.get(2)?,
        resident_id: row.get(3)?,
        resident_reference: row.get(4)?,
        rule: row.get(5)?,
        severity: row.get(6)?,
        level: row.get(7)?,
        score: row
            .get::<_, Option<i64>>(8)?
            .and_then(|s| u8::try_from(s).ok()),
        message: row.get(9)?,
        raised_at: Timestamp::from_unix_ms(row.get(10)?),
        acknowledged_by: row.get(11)?,
        acknowledged_at: ts(row.get(12)?),
        resolved_at: ts(row.get(13)?),
        published: row.get::<_, i64>(14)? != 0,
    })
}

impl AlertBook {
    /// Opens the book on a database that `Store::open` has already migrated.
    pub fn open(path: &Path) -> Result<AlertBook, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version < super::SCHEMA_VERSION {
            return Err(StoreError::NotMigrated {
                found: version,
                needed: super::SCHEMA_VERSION,
            });
        }
        let (changes, _) = tokio::sync::broadcast::channel(CHANGES_BACKLOG);
        Ok(AlertBook {
            conn,
            changes,
            generation: Arc::default(),
        })
    }

    /// The book's change counter (see the field); read it under the book's
    /// lock together with what it counts.
    pub fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    fn changing(&mut self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Follows every alert raised, acknowledged or resolved from now on (after
    /// its commit). For the live page (SSE); the alerts page does not need it.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AlertChange> {
        self.changes.subscribe()
    }

    fn announce(&self, id: i64, kind: AlertChangeKind) {
        // No listener is normal (no page open): nothing to do.
        let _ = self.changes.send(AlertChange { id, kind });
    }

    /// Makes the open alerts match `causes`: raises each cause with no open alert,
    /// resolves each open alert whose cause no longer holds, leaves the rest.
    pub fn sync(&mut self, causes: &[Cause], now: Timestamp) -> Result<SyncReport, StoreError> {
        self.changing();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let open: HashMap<String, i64> = {
            let mut st =
                tx.prepare("SELECT cause_key, id FROM alerts WHERE resolved_at_ms IS NULL")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut report = SyncReport::default();
        {
            let mut insert = tx.prepare(
                "INSERT INTO alerts (uuid, cause_key, resident_id, rule, severity, level, score,
                                     message, raised_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut seen = std::collections::HashSet::new();
            for c in causes {
                // A key given twice is one cause; a second insert would break
                // the one-open-alert index and lose the whole sync.
                if open.contains_key(&c.key) || !seen.insert(c.key.as_str()) {
                    continue;
                }
                insert.execute(params![
                    ReadingId::new(now).to_string(),
                    c.key,
                    c.resident_id,
                    c.rule,
                    c.severity.as_str(),
                    c.level,
                    c.score.map(i64::from),
                    c.message,
                    now.unix_ms(),
                ])?;
                report.raised.push(tx.last_insert_rowid());
            }
            let mut resolve = tx.prepare("UPDATE alerts SET resolved_at_ms = ?2 WHERE id = ?1")?;
            let mut gone: Vec<(&String, &i64)> = open
                .iter()
                .filter(|(k, _)| !causes.iter().any(|c| &c.key == *k))
                .collect();
            gone.sort();
            for (_, id) in gone {
                resolve.execute(params![id, now.unix_ms()])?;
                report.resolved.push(*id);
            }
        }
        tx.commit()?;
        for id in &report.raised {
            self.announce(*id, AlertChangeKind::Raised);
        }
        for id in &report.resolved {
            self.announce(*id, AlertChangeKind::Resolved);
        }
        Ok(report)
    }

    /// Records that `by` has seen alert `id`. Acknowledging twice keeps the first.
    pub fn acknowledge(&mut self, id: i64, by: &str, now: Timestamp) -> Result<(), StoreError> {
        self.changing();
        let n = self.conn.execute(
            "UPDATE alerts SET acknowledged_by = ?2, acknowledged_at_ms = ?3
             WHERE id = ?1 AND acknowledged_at_ms IS NULL",
            params![id, by, now.unix_ms()],
        )?;
        if n == 0 && self.get(id)?.is_none() {
            return Err(StoreError::UnknownAlert(id));
        }
        if n > 0 {
            self.announce(id, AlertChangeKind::Acknowledged);
        }
        Ok(())
    }

    /// One alert.
    pub fn get(&self, id: i64) -> Result<Option<AlertRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM alerts a LEFT JOIN residents r ON r.id = a.resident_id
                     WHERE a.id = ?1"
                ),
                [id],
                record,
            )
            .optional()?)
    }

    /// The open alerts (most severe, then newest first), then up to `resolved`
    /// recently resolved ones.
    pub fn list(&self, resolved: usize) -> Result<Vec<AlertRecord>, StoreError> {
        let rank = "CASE a.severity WHEN 'emergency' THEN 0 WHEN 'urgent' THEN 1 ELSE 2 END";
        let mut out: Vec<AlertRecord> = {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM alerts a LEFT JOIN residents r ON r.id = a.resident_id
                 WHERE a.resolved_at_ms IS NULL ORDER BY {rank}, a.id DESC"
            ))?;
            st.query_map([], record)?.collect::<Result<_, _>>()?
        };
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM alerts a LEFT JOIN residents r ON r.id = a.resident_id
             WHERE a.resolved_at_ms IS NOT NULL ORDER BY a.resolved_at_ms DESC LIMIT ?1"
        ))?;
        let limit = i64::try_from(resolved).unwrap_or(i64::MAX);
        for r in st.query_map([limit], record)? {
            out.push(r?);
        }
        Ok(out)
    }

    /// Alerts not yet acknowledged by the broker, oldest first.
    pub fn unpublished(&self, max: usize) -> Result<Vec<AlertRecord>, StoreError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM alerts a LEFT JOIN residents r ON r.id = a.resident_id
             WHERE a.published = 0 ORDER BY a.id LIMIT ?1"
        ))?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = st.query_map([limit], record)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The broker has acknowledged alert `id`.
    pub fn mark_published(&mut self, id: i64) -> Result<(), StoreError> {
        self.changing();
        self.conn
            .execute("UPDATE alerts SET published = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Each device assigned to a resident: address, resident, last heard, battery.
    #[allow(clippy::type_complexity)]
    pub fn device_states(
        &self,
    ) -> Result<Vec<(String, Option<i64>, Option<Timestamp>, Option<u8>)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT address, resident_id, last_seen_ms, battery_percent FROM devices
             WHERE resident_id IS NOT NULL ORDER BY address",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<i64>>(2)?.map(Timestamp::from_unix_ms),
                    r.get::<_, Option<i64>>(3)?
                        .and_then(|b| u8::try_from(b.clamp(0, 100)).ok()),
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every nurse-set threshold, by resident id.
    pub fn thresholds(&self) -> Result<HashMap<i64, Thresholds>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT resident_id, spo2_low, pulse_low, pulse_high, systolic_low, systolic_high,
                    temperature_low, temperature_high FROM resident_thresholds",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    Thresholds {
                        spo2_low: r.get(1)?,
                        pulse_low: r.get(2)?,
                        pulse_high: r.get(3)?,
                        systolic_low: r.get(4)?,
                        systolic_high: r.get(5)?,
                        temperature_low: r.get(6)?,
                        temperature_high: r.get(7)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn require_resident(&self, resident_id: i64) -> Result<(), StoreError> {
        let exists: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM residents WHERE id = ?1 AND archived = 0",
                [resident_id],
                |r| r.get(0),
            )
            .optional()?;
        match exists {
            Some(_) => Ok(()),
            None => Err(StoreError::UnknownResident(resident_id)),
        }
    }

    /// The SpO₂ scale of every resident a nurse has set one for; the others are
    /// on scale 1.
    pub fn spo2_scales(&self) -> Result<HashMap<i64, Spo2Scale>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT resident_id, spo2_scale FROM resident_clinical")?;
        let rows = st
            .query_map([], |r| {
                let scale = match r.get::<_, i64>(1)? {
                    2 => Spo2Scale::Two,
                    _ => Spo2Scale::One,
                };
                Ok((r.get(0)?, scale))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Sets a resident's SpO₂ scale and writes who did it into the audit record
    /// (`pairing_events`, `what = "spo2_scale"`), in one transaction.
    pub fn set_spo2_scale(
        &mut self,
        resident_id: i64,
        scale: Spo2Scale,
        by: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.changing();
        self.require_resident(resident_id)?;
        let n = match scale {
            Spo2Scale::One => 1,
            Spo2Scale::Two => 2,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO resident_clinical (resident_id, spo2_scale, set_by, set_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![resident_id, n, by, now.unix_ms()],
        )?;
        tx.execute(
            "INSERT INTO pairing_events (at_ms, device, what, who, detail)
             VALUES (?1, NULL, 'spo2_scale', ?2, ?3)",
            params![
                now.unix_ms(),
                by,
                format!("resident {resident_id}: SpO2 scale {n}")
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Who entered the newest observation sets of a resident, newest first:
    /// (taken at, entered by, reading ids).
    pub fn observation_sets(
        &self,
        resident_id: i64,
        max: usize,
    ) -> Result<Vec<(Timestamp, String, Vec<String>)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT taken_at_ms, entered_by, reading_ids FROM observation_sets
             WHERE resident_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st
            .query_map(params![resident_id, max as i64], |r| {
                let ids: String = r.get(2)?;
                Ok((
                    Timestamp::from_unix_ms(r.get(0)?),
                    r.get(1)?,
                    ids.split(' ').map(str::to_owned).collect(),
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Stores a nurse's thresholds for a resident, replacing earlier ones.
    pub fn set_thresholds(
        &mut self,
        resident_id: i64,
        t: &Thresholds,
        by: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.changing();
        self.require_resident(resident_id)?;
        self.conn.execute(
            "INSERT OR REPLACE INTO resident_thresholds (resident_id, spo2_low, pulse_low,
                pulse_high, systolic_low, systolic_high, temperature_low, temperature_high,
                set_by, set_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                resident_id,
                t.spo2_low,
                t.pulse_low,
                t.pulse_high,
                t.systolic_low,
                t.systolic_high,
                t.temperature_low,
                t.temperature_high,
                by,
                now.unix_ms()
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clinical::alerts::Severity;

    fn cause(key: &str) -> Cause {
        Cause {
            key: key.into(),
            resident_id: None,
            rule: "disk-low",
            severity: Severity::Warning,
            message: "only 10 MB of disk free".into(),
            score: None,
            level: "warning",
        }
    }

    fn book(dir: &tempfile::TempDir) -> AlertBook {
        let path = dir.path().join("carehub.db");
        let mut conn = Connection::open(&path).unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        AlertBook::open(&path).unwrap()
    }

    /// Other connections write the same file (the store's writer, the accounts
    /// and audit log): the book waits its turn and never fails for it. (The
    /// book's transactions are IMMEDIATE because a deferred one that reads and
    /// then writes fails at once with "database is locked" when another
    /// connection committed in between, whatever the busy timeout; seen under
    /// the web load bench. This test does not hit that window reliably; it
    /// guards the waiting.)
    #[test]
    fn sync_waits_for_other_writers_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        // WAL, as the store's writer sets it on the real file.
        Connection::open(dir.path().join("carehub.db"))
            .unwrap()
            .pragma_update(None, "journal_mode", "WAL")
            .unwrap();
        let mut b = book(&dir);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = {
            let path = dir.path().join("carehub.db");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = Connection::open(path).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.execute(
                        "INSERT INTO pairing_events (at_ms, what) VALUES (?1, 'test')",
                        [n as i64],
                    )
                    .unwrap();
                    n += 1;
                    // As web requests do: often, not back to back (a writer that
                    // never pauses would starve any other past its busy timeout).
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                n
            })
        };
        let mut failures = Vec::new();
        for i in 0..400i64 {
            let causes = if i % 2 == 0 {
                vec![cause("gateway/disk")]
            } else {
                vec![]
            };
            if let Err(e) = b.sync(&causes, Timestamp::from_unix_ms(i)) {
                failures.push(e.to_string());
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = other.join().unwrap();
        assert!(writes > 0, "the other writer ran");
        assert!(
            failures.is_empty(),
            "{} of 400 failed: {:?}",
            failures.len(),
            failures.first()
        );
    }

    #[test]
    fn raises_once_resolves_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let t = |ms| Timestamp::from_unix_ms(ms);
        let mut b = book(&dir);
        // The same key twice in one evaluation is one alert, not an error.
        let r = b
            .sync(&[cause("gateway/disk"), cause("gateway/disk")], t(1000))
            .unwrap();
        assert_eq!(r.raised.len(), 1);
        let id = r.raised[0];
        // The cause still holds: nothing new, also after reopening the file.
        assert_eq!(
            b.sync(&[cause("gateway/disk")], t(2000)).unwrap(),
            SyncReport::default()
        );
        drop(b);
        let mut b = AlertBook::open(&dir.path().join("carehub.db")).unwrap();
        assert_eq!(
            b.sync(&[cause("gateway/disk")], t(3000)).unwrap(),
            SyncReport::default()
        );
        b.acknowledge(id, "Nurse Kay", t(3500)).unwrap();
        b.acknowledge(id, "Someone Else", t(3600)).unwrap();
        let r = b.sync(&[], t(4000)).unwrap();
        assert_eq!(r.resolved, vec![id]);
        assert_eq!(b.sync(&[], t(5000)).unwrap(), SyncReport::default());
        let a = b.get(id).unwrap().unwrap();
        assert_eq!(a.acknowledged_by.as_deref(), Some("Nurse Kay"));
        assert_eq!(a.acknowledged_at, Some(t(3500)));
        assert_eq!(a.raised_at, t(1000));
        assert_eq!(a.resolved_at, Some(t(4000)));
        // The cause returning is a new alert, not the old one reopened.
        let r = b.sync(&[cause("gateway/disk")], t(6000)).unwrap();
        assert_eq!(r.raised.len(), 1);
        assert_ne!(r.raised[0], id);
        assert_eq!(b.list(10).unwrap().len(), 2);
        assert!(matches!(
            b.acknowledge(9999, "x", t(7000)),
            Err(StoreError::UnknownAlert(9999))
        ));
    }

    #[test]
    fn the_database_refuses_a_second_open_alert_for_one_cause() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = book(&dir);
        b.sync(&[cause("gateway/disk")], Timestamp::from_unix_ms(1))
            .unwrap();
        let dup = b.conn.execute(
            "INSERT INTO alerts (uuid, cause_key, rule, severity, level, message, raised_at_ms)
             VALUES ('x', 'gateway/disk', 'disk-low', 'warning', 'warning', 'm', 2)",
            [],
        );
        assert!(dup.is_err(), "a duplicate open alert was accepted");
    }

    #[test]
    fn unpublished_until_marked() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = book(&dir);
        let t = Timestamp::from_unix_ms(1);
        let r = b.sync(&[cause("a"), cause("b")], t).unwrap();
        assert_eq!(b.unpublished(10).unwrap().len(), 2);
        b.mark_published(r.raised[0]).unwrap();
        let left = b.unpublished(10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, r.raised[1]);
    }

    #[test]
    fn thresholds_round_trip_and_need_a_resident() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = book(&dir);
        let now = Timestamp::from_unix_ms(1);
        let t = Thresholds {
            spo2_low: 88.0,
            ..Thresholds::default()
        };
        assert!(matches!(
            b.set_thresholds(7, &t, "Nurse Kay", now),
            Err(StoreError::UnknownResident(7))
        ));
        b.conn
            .execute(
                "INSERT INTO residents (id, display_name, room, reference) VALUES (7, 'Ada', '1', 'r-7')",
                [],
            )
            .unwrap();
        b.set_thresholds(7, &t, "Nurse Kay", now).unwrap();
        assert_eq!(b.thresholds().unwrap().get(&7), Some(&t));
    }
}
