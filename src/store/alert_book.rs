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
//!
//! The lifecycle (`clinical::alert_rules::Lifecycle`, IEC 60601-1-8's latching and
//! non-latching alarms): a cause that stops holding is noted (`absent_since`);
//! once it has stayed away for the minimum hold the alert is *cleared*. A
//! technical alert is then resolved (its clearing recorded); a clinical alert
//! stays open ("cleared at 14:32, not yet seen") until a member of staff
//! acknowledges it, and an acknowledged one is resolved when it clears. A cause
//! that cannot be judged now (stale data) changes nothing. An unacknowledged
//! emergency alert is announced again after `reannounce_after`: it is marked
//! unpublished so the uplink sends it again, with its announcement number.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::StoreError;
use crate::clinical::alert_rules::{AlertClass, Evaluation, Lifecycle, Thresholds};
use crate::clinical::news2::Spo2Scale;
use crate::model::{ReadingId, Timestamp};

/// What happened to an alert, as sent to live listeners after the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertChangeKind {
    Raised,
    Acknowledged,
    /// The cause stayed away for the minimum hold (a clinical alert stays open).
    Cleared,
    Resolved,
    /// Announced again: nobody has acknowledged it.
    Reannounced,
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
    /// When its cause stopped holding, once it stayed away for the minimum hold.
    pub cleared_at: Option<Timestamp>,
    /// When it was last announced (raised, or announced again).
    pub announced_at: Timestamp,
    /// 1 when raised, +1 at each announcement again.
    pub announcements: u32,
    /// The score behind it was partial.
    pub partial: bool,
    /// The NEWS2 parameters the score lacked (wire names).
    pub missing: Vec<String>,
    /// The parameter that scored 3 or crossed a limit (wire name).
    pub parameter: Option<String>,
    /// The readings it was computed from.
    pub reading_ids: Vec<String>,
}

impl AlertRecord {
    pub fn class(&self) -> AlertClass {
        AlertClass::of_rule(&self.rule)
    }

    /// Open, its cause cleared, nobody has seen it yet ("cleared at 14:32, not
    /// yet seen").
    pub fn cleared_unseen(&self) -> bool {
        self.resolved_at.is_none() && self.cleared_at.is_some() && self.acknowledged_at.is_none()
    }
}

/// The first of the open alerts, most urgent first, and how many are open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenAlerts {
    pub first: Vec<AlertRecord>,
    pub total: usize,
}

/// What one `sync` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Ids of the alerts raised now.
    pub raised: Vec<i64>,
    /// Ids of the alerts resolved now.
    pub resolved: Vec<i64>,
    /// Ids of the clinical alerts cleared now and kept open until acknowledged.
    pub cleared: Vec<i64>,
    /// Ids of the alerts announced again now.
    pub reannounced: Vec<i64>,
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
    a.resolved_at_ms, a.published, a.cleared_at_ms, a.announced_at_ms, a.announcements,
    a.partial, a.missing, a.parameter, a.reading_ids";

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
        cleared_at: ts(row.get(15)?),
        announced_at: Timestamp::from_unix_ms(
            row.get::<_, Option<i64>>(16)?
                .unwrap_or(row.get::<_, i64>(10)?),
        ),
        announcements: u32::try_from(row.get::<_, i64>(17)?).unwrap_or(1),
        partial: row.get::<_, i64>(18)? != 0,
        missing: words(&row.get::<_, String>(19)?),
        parameter: row.get(20)?,
        reading_ids: words(&row.get::<_, String>(21)?),
    })
}

fn words(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

impl AlertBook {
    /// The page cache bound of this connection, in KiB (a test's view).
    #[cfg(test)]
    pub(crate) fn page_cache_kib(&self) -> i64 {
        super::page_cache_kib(&self.conn)
    }

    /// Opens the book on a database that `Store::open` has already migrated.
    pub fn open(path: &Path) -> Result<AlertBook, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        super::bound_memory(&conn, super::SIDE_CACHE_KIB)?;
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

    /// Makes the open alerts follow the evaluation (see the module doc): raises
    /// each cause with no open alert, notes the absence of each cause that no
    /// longer holds and clears it after `life.clear_hold` (resolving a technical
    /// alert or an acknowledged one; a clinical alert nobody has seen stays open),
    /// leaves undetermined ones as they are, and announces again each emergency
    /// alert nobody has acknowledged for `life.reannounce_after`.
    pub fn sync(
        &mut self,
        eval: &Evaluation,
        life: &Lifecycle,
        now: Timestamp,
    ) -> Result<SyncReport, StoreError> {
        self.changing();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        struct Open {
            id: i64,
            key: String,
            rule: String,
            severity: String,
            acknowledged: bool,
            absent_since: Option<i64>,
            cleared: bool,
            announced_at: i64,
        }
        let open: Vec<Open> = {
            let mut st = tx.prepare(
                "SELECT id, cause_key, rule, severity, acknowledged_at_ms IS NOT NULL,
                        absent_since_ms, cleared_at_ms IS NOT NULL,
                        coalesce(announced_at_ms, raised_at_ms)
                 FROM alerts WHERE resolved_at_ms IS NULL ORDER BY id",
            )?;
            st.query_map([], |r| {
                Ok(Open {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    rule: r.get(2)?,
                    severity: r.get(3)?,
                    acknowledged: r.get(4)?,
                    absent_since: r.get(5)?,
                    cleared: r.get(6)?,
                    announced_at: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?
        };
        let now_ms = now.unix_ms();
        let hold_ms = i64::try_from(life.clear_hold.as_millis()).unwrap_or(i64::MAX);
        let again_ms = i64::try_from(life.reannounce_after.as_millis()).unwrap_or(i64::MAX);
        let mut report = SyncReport::default();
        {
            let mut insert = tx.prepare(
                "INSERT INTO alerts (uuid, cause_key, resident_id, rule, severity, level, score,
                                     message, raised_at_ms, announced_at_ms, partial, missing,
                                     parameter, reading_ids)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut seen = std::collections::HashSet::new();
            for c in &eval.causes {
                // A key given twice is one cause; a second insert would break
                // the one-open-alert index and lose the whole sync.
                if open.iter().any(|o| o.key == c.key) || !seen.insert(c.key.as_str()) {
                    continue;
                }
                let join = |w: Vec<String>| w.join(" ");
                insert.execute(params![
                    ReadingId::new(now).to_string(),
                    c.key,
                    c.resident_id,
                    c.rule,
                    c.severity.as_str(),
                    c.level,
                    c.score.map(i64::from),
                    c.message,
                    now_ms,
                    c.partial,
                    join(c.missing.iter().map(|p| p.as_str().to_owned()).collect()),
                    c.parameter.map(|p| p.as_str()),
                    join(c.reading_ids.iter().map(ToString::to_string).collect()),
                ])?;
                report.raised.push(tx.last_insert_rowid());
            }
            let mut back = tx.prepare(
                "UPDATE alerts SET absent_since_ms = NULL, cleared_at_ms = NULL WHERE id = ?1",
            )?;
            let mut away = tx.prepare("UPDATE alerts SET absent_since_ms = ?2 WHERE id = ?1")?;
            let mut clear = tx.prepare(
                "UPDATE alerts SET cleared_at_ms = absent_since_ms,
                    resolved_at_ms = CASE WHEN ?2 THEN ?3 ELSE NULL END
                 WHERE id = ?1",
            )?;
            let mut again = tx.prepare(
                "UPDATE alerts SET announced_at_ms = ?2, announcements = announcements + 1,
                    published = 0 WHERE id = ?1",
            )?;
            for o in &open {
                let holds = eval.causes.iter().any(|c| c.key == o.key);
                if holds {
                    // Back before it cleared (or, for a latched alert, after):
                    // it is the same alert, active again.
                    if o.absent_since.is_some() || o.cleared {
                        back.execute([o.id])?;
                    }
                } else if o.cleared || eval.is_undetermined(&o.key) {
                    // Cleared and waiting for staff, or cannot be judged now.
                } else {
                    if o.absent_since.is_none() {
                        away.execute(params![o.id, now_ms])?;
                    }
                    let since = o.absent_since.unwrap_or(now_ms);
                    if now_ms.saturating_sub(since) >= hold_ms {
                        let resolve =
                            o.acknowledged || AlertClass::of_rule(&o.rule) == AlertClass::Technical;
                        clear.execute(params![o.id, resolve, now_ms])?;
                        if resolve {
                            report.resolved.push(o.id);
                            continue;
                        }
                        report.cleared.push(o.id);
                    }
                }
                if o.severity == "emergency"
                    && !o.acknowledged
                    && now_ms.saturating_sub(o.announced_at) >= again_ms
                {
                    again.execute(params![o.id, now_ms])?;
                    report.reannounced.push(o.id);
                }
            }
        }
        tx.commit()?;
        for id in &report.raised {
            self.announce(*id, AlertChangeKind::Raised);
        }
        for id in &report.cleared {
            self.announce(*id, AlertChangeKind::Cleared);
        }
        for id in &report.resolved {
            self.announce(*id, AlertChangeKind::Resolved);
        }
        for id in &report.reannounced {
            self.announce(*id, AlertChangeKind::Reannounced);
        }
        Ok(report)
    }

    /// Records that `by` has seen alert `id`. Acknowledging twice keeps the first.
    /// An alert whose cause has already cleared is resolved by it (a latched
    /// clinical alert ends only here).
    pub fn acknowledge(&mut self, id: i64, by: &str, now: Timestamp) -> Result<(), StoreError> {
        self.changing();
        let n = self.conn.execute(
            "UPDATE alerts SET acknowledged_by = ?2, acknowledged_at_ms = ?3,
                resolved_at_ms = CASE WHEN resolved_at_ms IS NOT NULL THEN resolved_at_ms
                                      WHEN cleared_at_ms IS NOT NULL THEN ?3 END
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

    /// The `limit` most urgent open alerts (emergencies, then urgent, then the
    /// rest; within each those nobody has acknowledged first, newest first),
    /// and how many are open in all. The overview shows these; the alerts page
    /// shows every one (`list`).
    pub fn most_urgent_open(&self, limit: usize) -> Result<OpenAlerts, StoreError> {
        let rank = "CASE a.severity WHEN 'emergency' THEN 0 WHEN 'urgent' THEN 1 ELSE 2 END";
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM alerts a LEFT JOIN residents r ON r.id = a.resident_id
             WHERE a.resolved_at_ms IS NULL
             ORDER BY {rank}, a.acknowledged_at_ms IS NOT NULL, a.id DESC LIMIT ?1"
        ))?;
        let max = i64::try_from(limit).unwrap_or(i64::MAX);
        let first = st
            .query_map([max], record)?
            .collect::<Result<Vec<_>, _>>()?;
        let total: i64 = self.conn.query_row(
            "SELECT count(*) FROM alerts WHERE resolved_at_ms IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(OpenAlerts {
            total: usize::try_from(total).unwrap_or(0).max(first.len()),
            first,
        })
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

    /// The wall clock stepped by `delta_ms` (docs/decisions/0014): every alert
    /// time between `from_ms` and `to_ms` (this run's start and the step, both
    /// by the old clock) was stamped by the wrong clock and moves by the step.
    pub fn clock_stepped(
        &mut self,
        delta_ms: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<u64, StoreError> {
        self.changing();
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for column in [
            "raised_at_ms",
            "acknowledged_at_ms",
            "resolved_at_ms",
            "absent_since_ms",
            "cleared_at_ms",
            "announced_at_ms",
        ] {
            n += tx.execute(
                &format!(
                    "UPDATE alerts SET {column} = {column} + ?1 WHERE {column} BETWEEN ?2 AND ?3"
                ),
                rusqlite::params![delta_ms, from_ms, to_ms],
            )?;
        }
        tx.commit()?;
        Ok(n as u64)
    }

    /// Each device assigned to a resident: address, resident, last heard, assigned
    /// at, battery, and when and at which number a glucose meter's record
    /// numbering last started again.
    #[allow(clippy::type_complexity)]
    pub fn device_states(
        &self,
    ) -> Result<
        Vec<(
            String,
            Option<i64>,
            Option<Timestamp>,
            Option<Timestamp>,
            Option<u8>,
            Option<(Timestamp, u16)>,
        )>,
        StoreError,
    > {
        let mut st = self.conn.prepare(
            "SELECT address, resident_id, last_seen_ms, assigned_at_ms, battery_percent,
                    racp_renumbered_at_ms, racp_renumbered_sequence FROM devices
             WHERE resident_id IS NOT NULL ORDER BY address",
        )?;
        let rows = st
            .query_map([], |r| {
                let renumbered_at = r.get::<_, Option<i64>>(5)?.map(Timestamp::from_unix_ms);
                let renumbered_sequence = r
                    .get::<_, Option<i64>>(6)?
                    .and_then(|n| u16::try_from(n).ok());
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<i64>>(2)?.map(Timestamp::from_unix_ms),
                    r.get::<_, Option<i64>>(3)?.map(Timestamp::from_unix_ms),
                    r.get::<_, Option<i64>>(4)?
                        .and_then(|b| u8::try_from(b.clamp(0, 100)).ok()),
                    renumbered_at.zip(renumbered_sequence),
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
    use crate::clinical::alert_rules::{Cause, Severity};

    fn cause(key: &str) -> Cause {
        Cause {
            key: key.into(),
            resident_id: None,
            rule: "disk-low",
            severity: Severity::Warning,
            message: "only 10 MB of disk free".into(),
            score: None,
            level: "warning",
            partial: false,
            missing: Vec::new(),
            parameter: None,
            reading_ids: Vec::new(),
        }
    }

    /// No minimum hold: a cause that stops holding clears at once.
    const AT_ONCE: Lifecycle = Lifecycle {
        clear_hold: std::time::Duration::ZERO,
        reannounce_after: std::time::Duration::from_secs(3600),
    };

    fn sync(b: &mut AlertBook, causes: &[Cause], now: Timestamp) -> Result<SyncReport, StoreError> {
        let eval = Evaluation {
            causes: causes.to_vec(),
            undetermined: Vec::new(),
        };
        b.sync(&eval, &AT_ONCE, now)
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
            if let Err(e) = sync(&mut b, &causes, Timestamp::from_unix_ms(i)) {
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
        let r = sync(
            &mut b,
            &[cause("gateway/disk"), cause("gateway/disk")],
            t(1000),
        )
        .unwrap();
        assert_eq!(r.raised.len(), 1);
        let id = r.raised[0];
        // The cause still holds: nothing new, also after reopening the file.
        assert_eq!(
            sync(&mut b, &[cause("gateway/disk")], t(2000)).unwrap(),
            SyncReport::default()
        );
        drop(b);
        let mut b = AlertBook::open(&dir.path().join("carehub.db")).unwrap();
        assert_eq!(
            sync(&mut b, &[cause("gateway/disk")], t(3000)).unwrap(),
            SyncReport::default()
        );
        b.acknowledge(id, "Nurse Kay", t(3500)).unwrap();
        b.acknowledge(id, "Someone Else", t(3600)).unwrap();
        let r = sync(&mut b, &[], t(4000)).unwrap();
        assert_eq!(r.resolved, vec![id]);
        assert_eq!(sync(&mut b, &[], t(5000)).unwrap(), SyncReport::default());
        let a = b.get(id).unwrap().unwrap();
        assert_eq!(a.acknowledged_by.as_deref(), Some("Nurse Kay"));
        assert_eq!(a.acknowledged_at, Some(t(3500)));
        assert_eq!(a.raised_at, t(1000));
        assert_eq!(a.resolved_at, Some(t(4000)));
        // The cause returning is a new alert, not the old one reopened.
        let r = sync(&mut b, &[cause("gateway/disk")], t(6000)).unwrap();
        assert_eq!(r.raised.len(), 1);
        assert_ne!(r.raised[0], id);
        assert_eq!(b.list(10).unwrap().len(), 2);
        assert!(matches!(
            b.acknowledge(9999, "x", t(7000)),
            Err(StoreError::UnknownAlert(9999))
        ));
    }

    fn clinical(key: &str, severity: Severity) -> Cause {
        Cause {
            key: key.into(),
            resident_id: None,
            rule: "news2",
            severity,
            message: "Ada: NEWS2 7, high risk".into(),
            score: Some(7),
            level: "high",
            partial: true,
            missing: vec![crate::clinical::news2::Parameter::RespRate],
            parameter: None,
            reading_ids: Vec::new(),
        }
    }

    const MIN: i64 = 60_000;

    /// The lifecycle, step by step: (minute, causes holding, undetermined
    /// prefixes, acknowledge?) in, the report and the alert's state out.
    struct Step {
        minute: i64,
        holds: bool,
        undetermined: bool,
        ack: bool,
        /// (raised, cleared, resolved, announced again) counts of this step.
        report: (usize, usize, usize, usize),
        /// Open, cleared, acknowledged after the step.
        state: (bool, bool, bool),
    }

    fn run(cause: Cause, steps: &[Step]) -> AlertBook {
        let dir = tempfile::tempdir().unwrap();
        let mut b = book(&dir);
        let life = Lifecycle {
            clear_hold: std::time::Duration::from_secs(10 * 60),
            reannounce_after: std::time::Duration::from_secs(15 * 60),
        };
        let mut id = None;
        for (i, st) in steps.iter().enumerate() {
            let now = Timestamp::from_unix_ms(st.minute * MIN);
            if st.ack {
                b.acknowledge(id.unwrap(), "Nurse Kay", now).unwrap();
            }
            let eval = Evaluation {
                causes: if st.holds {
                    vec![cause.clone()]
                } else {
                    vec![]
                },
                undetermined: if st.undetermined {
                    vec![cause.key.clone()]
                } else {
                    vec![]
                },
            };
            let r = b.sync(&eval, &life, now).unwrap();
            id = id.or(r.raised.first().copied());
            assert_eq!(
                (
                    r.raised.len(),
                    r.cleared.len(),
                    r.resolved.len(),
                    r.reannounced.len()
                ),
                st.report,
                "step {i} (minute {})",
                st.minute
            );
            let a = b.get(id.unwrap()).unwrap().unwrap();
            assert_eq!(
                (
                    a.resolved_at.is_none(),
                    a.cleared_at.is_some(),
                    a.acknowledged_at.is_some()
                ),
                st.state,
                "step {i} (minute {}): {a:?}",
                st.minute
            );
        }
        // The tempdir goes; the book's connection keeps the file open.
        std::mem::forget(dir);
        b
    }

    fn step(
        minute: i64,
        holds: bool,
        ack: bool,
        report: (usize, usize, usize, usize),
        state: (bool, bool, bool),
    ) -> Step {
        Step {
            minute,
            holds,
            undetermined: false,
            ack,
            report,
            state,
        }
    }

    /// Issue 15: a clinical alert latches. Its cause clearing (after the
    /// minimum hold) leaves it open as "cleared, not yet seen"; only a member of
    /// staff acknowledging it ends it. Meanwhile it is announced again.
    #[test]
    fn a_clinical_alert_stays_until_acknowledged_even_after_its_cause_cleared() {
        let b = run(
            clinical("resident:1/news2:high", Severity::Emergency),
            &[
                step(0, true, false, (1, 0, 0, 0), (true, false, false)),
                step(5, false, false, (0, 0, 0, 0), (true, false, false)),
                // Ten minutes away: cleared, still open.
                step(15, false, false, (0, 1, 0, 1), (true, true, false)),
                step(120, false, false, (0, 0, 0, 1), (true, true, false)),
                // Acknowledged: resolved there and then.
                step(121, false, true, (0, 0, 0, 0), (false, true, true)),
            ],
        );
        let a = &b.list(10).unwrap()[0];
        assert_eq!(a.cleared_at, Some(Timestamp::from_unix_ms(5 * MIN)));
        assert_eq!(a.resolved_at, Some(Timestamp::from_unix_ms(121 * MIN)));
        assert_eq!(a.announcements, 3);
    }

    /// An announcement again is sent again: the alert is unpublished until the
    /// broker has the new announcement, whose number the message carries.
    #[test]
    fn announcing_again_republishes_the_alert() {
        let mut b = run(
            clinical("resident:1/news2:high", Severity::Emergency),
            &[step(0, true, false, (1, 0, 0, 0), (true, false, false))],
        );
        let id = b.list(0).unwrap()[0].id;
        b.mark_published(id).unwrap();
        assert!(b.unpublished(10).unwrap().is_empty());
        let eval = Evaluation {
            causes: vec![clinical("resident:1/news2:high", Severity::Emergency)],
            undetermined: vec![],
        };
        let life = Lifecycle::default();
        let r = b
            .sync(&eval, &life, Timestamp::from_unix_ms(15 * MIN))
            .unwrap();
        assert_eq!(r.reannounced, vec![id]);
        let again = b.unpublished(10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].announcements, 2);
        let msg = crate::uplink::payload::AlertMessage::from_record("gw", &again[0]);
        assert_eq!(msg.announcement, 2);
        // Acknowledged: never announced again.
        b.acknowledge(id, "Nurse Kay", Timestamp::from_unix_ms(16 * MIN))
            .unwrap();
        b.mark_published(id).unwrap();
        let r = b
            .sync(&eval, &life, Timestamp::from_unix_ms(60 * MIN))
            .unwrap();
        assert!(r.reannounced.is_empty());
        assert!(b.unpublished(10).unwrap().is_empty());
    }

    /// Acknowledged while its cause holds: open until the cause has cleared.
    /// A cause back within the hold keeps the same alert, and a latched cleared
    /// alert whose cause returns is active again, not a second alert.
    #[test]
    fn acknowledged_alerts_resolve_when_cleared_and_returning_causes_reuse_the_alert() {
        run(
            clinical("resident:1/news2:medium", Severity::Urgent),
            &[
                step(0, true, false, (1, 0, 0, 0), (true, false, false)),
                step(20, false, false, (0, 0, 0, 0), (true, false, false)),
                step(30, false, false, (0, 1, 0, 0), (true, true, false)),
                // Back before anyone saw it: active again, the same alert.
                step(31, true, false, (0, 0, 0, 0), (true, false, false)),
                step(32, true, true, (0, 0, 0, 0), (true, false, true)),
                step(33, false, false, (0, 0, 0, 0), (true, false, true)),
                step(43, false, false, (0, 0, 1, 0), (false, true, true)),
            ],
        );
    }

    /// Issue 15: a value on a boundary (a pulse moving between 130 and 131)
    /// raises one alert and keeps it; it never raises and clears in a loop.
    #[test]
    fn a_cause_flapping_on_a_boundary_raises_once_and_never_clears() {
        let mut steps = vec![step(0, true, false, (1, 0, 0, 0), (true, false, false))];
        for m in 1..60 {
            steps.push(step(
                m,
                m % 2 == 0,
                false,
                (0, 0, 0, 0),
                (true, false, false),
            ));
        }
        run(
            clinical("resident:1/threshold:pulse", Severity::Urgent),
            &steps,
        );
        // The same for a technical alert (a battery on its limit).
        let mut steps = vec![step(0, true, false, (1, 0, 0, 0), (true, false, false))];
        for m in 1..60 {
            steps.push(step(
                m,
                m % 3 != 0,
                false,
                (0, 0, 0, 0),
                (true, false, false),
            ));
        }
        run(cause("device:A4:C1:38:00:00:01/battery-low"), &steps);
    }

    /// Technical alerts clear themselves after the hold, and the clearing is
    /// recorded (cleared at, resolved at); nobody needs to acknowledge them.
    #[test]
    fn a_technical_alert_clears_itself_and_the_clearing_is_recorded() {
        let b = run(
            cause("gateway/disk"),
            &[
                step(0, true, false, (1, 0, 0, 0), (true, false, false)),
                step(1, false, false, (0, 0, 0, 0), (true, false, false)),
                step(11, false, false, (0, 0, 1, 0), (false, true, false)),
            ],
        );
        let a = &b.list(10).unwrap()[0];
        assert_eq!(a.cleared_at, Some(Timestamp::from_unix_ms(MIN)));
        assert_eq!(a.resolved_at, Some(Timestamp::from_unix_ms(11 * MIN)));
        // A warning is never announced again.
        assert_eq!(a.announcements, 1);
    }

    /// Stale data is not a cleared cause: an undetermined alert stays as it is,
    /// however long the data stays stale.
    #[test]
    fn an_alert_that_cannot_be_judged_is_left_as_it_is() {
        let mut steps = vec![step(0, true, false, (1, 0, 0, 0), (true, false, false))];
        for m in [30, 90, 600] {
            let mut s = step(m, false, false, (0, 0, 0, 0), (true, false, false));
            s.undetermined = true;
            steps.push(s);
        }
        run(
            clinical("resident:1/news2-single-3:pulse", Severity::Urgent),
            &steps,
        );
    }

    #[test]
    fn the_database_refuses_a_second_open_alert_for_one_cause() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = book(&dir);
        sync(&mut b, &[cause("gateway/disk")], Timestamp::from_unix_ms(1)).unwrap();
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
        let r = sync(&mut b, &[cause("a"), cause("b")], t).unwrap();
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
