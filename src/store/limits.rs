//! Bounds on the buffer: caps on outbox readings, bytes and age, a floor of free
//! disk space, and retention of delivered history.
//!
//! Evictions take room/ambient readings before vital signs, oldest first, and are
//! counted by reason and class in the `evictions` table (so the counts survive
//! restarts), in [`super::StoreStats`] and in a warning log line; never silent.
//! Every function here runs on the writer thread, each batch in its own short
//! transaction so that ingest is never blocked for long.

use std::path::Path;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, params};

use super::outbox::{self, Class};
use super::{StoreError, StoreStats};
use crate::model::{Reading, Subject};

/// Why readings were evicted from the outbox before delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    /// `max_outbox_readings` reached.
    Readings,
    /// `max_outbox_mb` reached.
    Bytes,
    /// Older than `max_outbox_age_days`.
    Age,
    /// Free disk space below `min_free_disk_mb`, or the disk full.
    Disk,
}

pub(super) const EVICTION_SLOTS: usize = 8;

impl EvictionReason {
    pub const ALL: [EvictionReason; 4] = [
        EvictionReason::Readings,
        EvictionReason::Bytes,
        EvictionReason::Age,
        EvictionReason::Disk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictionReason::Readings => "readings",
            EvictionReason::Bytes => "bytes",
            EvictionReason::Age => "age",
            EvictionReason::Disk => "disk",
        }
    }

    pub(super) fn index(self, class: Class) -> usize {
        let r = match self {
            EvictionReason::Readings => 0,
            EvictionReason::Bytes => 1,
            EvictionReason::Age => 2,
            EvictionReason::Disk => 3,
        };
        r * 2 + usize::from(class == Class::Room)
    }

    fn parse(s: &str) -> Option<EvictionReason> {
        EvictionReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Undelivered readings evicted for age.
    pub evicted_for_age: u64,
    /// Readings evicted or history purged because free disk space was low.
    pub freed_for_disk: u64,
    /// Delivered readings older than the history window, purged.
    pub history_purged: u64,
}

/// The estimated bytes of one reading in the outbox, as SQL over a `readings` row:
/// about what a row with its codes takes in the file (schema v8), plus its room's
/// name and its id when one is stored. [`row_bytes`] computes the same from a
/// [`Reading`]; a test keeps them equal.
pub(super) const ROW_BYTES_SQL: &str =
    "(32 + coalesce(octet_length(r.room), 0) + coalesce(length(r.id), 0))";

/// [`ROW_BYTES_SQL`] of a reading without a room and without a stored id.
pub(super) const MIN_ROW_BYTES: u64 = 32;

/// The estimated bytes of one reading in the outbox (see [`ROW_BYTES_SQL`]).
pub(super) fn row_bytes(r: &Reading) -> u64 {
    let room = match &r.subject {
        Subject::Room(room) => room.len(),
        _ => 0,
    };
    let id = if r.id.is_unassigned() { 0 } else { 16 };
    MIN_ROW_BYTES + (room + id) as u64
}

/// Rows deleted per transaction by retention and the disk floor.
pub(super) const BATCH: usize = 10_000;

/// Loads the persisted eviction counts into `stats`.
#[allow(
    clippy::indexing_slicing,
    reason = "EvictionReason::index is below the length of StoreStats::evicted by construction"
)]
pub(super) fn load_counts(conn: &Connection, stats: &StoreStats) -> Result<(), StoreError> {
    let mut q = conn.prepare("SELECT reason, class, count FROM evictions")?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (reason, class, count) = row?;
        let class = if class == Class::Vital.as_str() {
            Class::Vital
        } else {
            Class::Room
        };
        if let Some(reason) = EvictionReason::parse(&reason) {
            stats.evicted[reason.index(class)]
                .store(u64::try_from(count).unwrap_or(0), Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The outbox's depth and estimated bytes, counted from the database.
pub(super) fn outbox_totals(conn: &Connection) -> Result<(u64, u64), StoreError> {
    let mut rows = 0u64;
    let mut bytes = 0u64;
    for class in Class::EVICTION_ORDER {
        let (n, b): (i64, i64) = conn.query_row(
            &format!(
                "SELECT count(*), coalesce(sum({ROW_BYTES_SQL}), 0) FROM {}",
                outbox::joined_sql(class)
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        rows += u64::try_from(n).unwrap_or(0);
        bytes += u64::try_from(b).unwrap_or(0);
    }
    Ok((rows, bytes))
}

/// Deletes the given outbox readings of `class` (outbox row and reading row) and
/// records the eviction. Returns (readings, bytes) actually evicted.
#[allow(
    clippy::indexing_slicing,
    reason = "EvictionReason::index is below the length of StoreStats::evicted by construction"
)]
fn evict_seqs(
    conn: &mut Connection,
    class: Class,
    seqs: &[(i64, u64)],
    reason: EvictionReason,
    stats: &StoreStats,
) -> Result<(u64, u64), StoreError> {
    if seqs.is_empty() {
        return Ok((0, 0));
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut rows = 0u64;
    let mut bytes = 0u64;
    {
        let removed = outbox::remove(&tx, class, &outbox::runs(seqs.iter().map(|s| s.0)))?;
        let mut del_reading = tx.prepare_cached("DELETE FROM readings WHERE seq = ?1")?;
        for &(seq, b) in seqs {
            if outbox::contains(&removed, seq) {
                rows += 1;
                bytes += b;
                del_reading.execute([seq])?;
            }
        }
        tx.execute(
            "INSERT INTO evictions (reason, class, count) VALUES (?1, ?2, ?3)
             ON CONFLICT (reason, class) DO UPDATE SET count = count + excluded.count",
            params![reason.as_str(), class.as_str(), rows as i64],
        )?;
    }
    tx.commit()?;
    stats.evicted[reason.index(class)].fetch_add(rows, Ordering::Relaxed);
    stats.outbox_left(rows, bytes);
    if rows > 0 {
        tracing::warn!(
            evicted = rows,
            class = class.as_str(),
            reason = reason.as_str(),
            total_for_reason = stats.evicted[reason.index(class)].load(Ordering::Relaxed),
            "outbox full: evicted undelivered readings, oldest first"
        );
    }
    Ok((rows, bytes))
}

/// The oldest outbox readings of `class`, up to `n`, with their estimated bytes;
/// with `older_than_ms`, only those received before it (stopping at the first
/// newer one, since sequence order is arrival order) and stamped by a
/// synchronised clock: a Pi has no battery clock, and a reading stamped before NTP
/// set the time may look decades old without being so.
fn oldest(
    conn: &Connection,
    class: Class,
    n: usize,
    older_than_ms: Option<i64>,
) -> Result<Vec<(i64, u64)>, StoreError> {
    let mut q = conn.prepare_cached(&format!(
        "SELECT r.seq, {ROW_BYTES_SQL}, r.received_at_ms, r.clock_synced FROM {}
         ORDER BY o.first_seq, r.seq",
        outbox::joined_sql(class)
    ))?;
    let mut rows = q.query([])?;
    let mut out = Vec::new();
    // Readings stepped over (unsynchronised clock) count too: a call reads at
    // most `n + OLDEST_SKIP` rows.
    let mut skipped = 0usize;
    while out.len() < n && skipped < OLDEST_SKIP {
        let Some(row) = rows.next()? else { break };
        let received: i64 = row.get(2)?;
        if let Some(cutoff) = older_than_ms {
            if received >= cutoff {
                break;
            }
            if !row.get::<_, bool>(3)? {
                skipped += 1;
                continue;
            }
        }
        out.push((
            row.get(0)?,
            u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        ));
    }
    Ok(out)
}

/// Readings stamped by an unsynchronised clock that one [`oldest`] call steps
/// over before it gives up: the age cap's pass stays bounded even behind a long
/// run of them (they are never evicted for age: their age is not known).
const OLDEST_SKIP: usize = 100_000;

/// Evicts oldest-first, room before vital, while `still_over` says how many more
/// must go (one transaction per answer).
pub(super) fn evict_until(
    conn: &mut Connection,
    reason: EvictionReason,
    stats: &StoreStats,
    mut still_over: impl FnMut(&StoreStats) -> Option<usize>,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for class in Class::EVICTION_ORDER {
        while let Some(n) = still_over(stats) {
            let seqs = oldest(conn, class, n.max(1), None)?;
            if seqs.is_empty() {
                break;
            }
            total += evict_seqs(conn, class, &seqs, reason, stats)?.0;
        }
    }
    Ok(total)
}

/// Evicts undelivered readings received before `cutoff_ms`, both classes, at
/// most `max_batches` transactions of [`BATCH`] each (the rest waits for the
/// next pass); `beat` is called between them.
pub(super) fn evict_older_than(
    conn: &mut Connection,
    cutoff_ms: i64,
    max_batches: usize,
    stats: &StoreStats,
    beat: &mut dyn FnMut(),
) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut batches = 0;
    for class in Class::EVICTION_ORDER {
        while batches < max_batches {
            batches += 1;
            let seqs = oldest(conn, class, BATCH, Some(cutoff_ms))?;
            beat();
            if seqs.is_empty() {
                break;
            }
            total += evict_seqs(conn, class, &seqs, EvictionReason::Age, stats)?.0;
        }
    }
    Ok(total)
}

/// Where the history purge goes on from: the purge walks the delivered readings
/// (the gaps between the outbox's ranges) in sequence order, a bounded amount of
/// work per call, and starts again from the first reading once it has reached a
/// reading inside the history window or the last one. Readings delivered behind
/// the cursor (an ack of an old reading) are found on the next sweep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PurgeCursor {
    next_seq: i64,
}

/// Steps one [`purge_history`] call may take: an outbox range stepped over, or a
/// gap between ranges looked into. Each is a few primary-key lookups, so a call
/// stays in milliseconds however long the outbox is (a month of outage at 200
/// sensors is ~10^5 ranges): the writer's heartbeat never waits on it.
pub(super) const PURGE_STEPS: usize = 2_000;

/// What one [`purge_history`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Purged {
    /// Delivered readings deleted.
    pub readings: u64,
    /// The sweep reached its end (the last reading, or one inside the window):
    /// the next call starts again from the first reading.
    pub swept: bool,
}

/// The outbox range of `class` holding `seq`, else the first one after it.
fn range_at_or_after(
    conn: &Connection,
    class: Class,
    seq: i64,
) -> Result<Option<(i64, i64)>, StoreError> {
    let table = class.table();
    let at = conn
        .prepare_cached(&format!(
            "SELECT first_seq, last_seq FROM {table} WHERE first_seq <= ?1
             ORDER BY first_seq DESC LIMIT 1"
        ))?
        .query_row([seq], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .optional()?;
    if let Some((first, last)) = at
        && last >= seq
    {
        return Ok(Some((first, last)));
    }
    Ok(conn
        .prepare_cached(&format!(
            "SELECT first_seq, last_seq FROM {table} WHERE first_seq > ?1
             ORDER BY first_seq LIMIT 1"
        ))?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Deletes up to `max` delivered readings (in neither outbox), oldest first, from
/// `cursor` on; with `before_ms`, only those received before it (the sweep ends
/// at the first reading received later: sequence order is arrival order). At
/// most [`PURGE_STEPS`] steps: a call may purge nothing and still not be
/// through; call again.
///
/// Never reads an undelivered reading: it steps over the outbox's ranges by
/// their bounds and reads only the gaps between them, by sequence number.
pub(super) fn purge_history(
    conn: &mut Connection,
    before_ms: Option<i64>,
    max: usize,
    cursor: &mut PurgeCursor,
    stats: &StoreStats,
) -> Result<Purged, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut pos = cursor.next_seq;
    let mut runs: Vec<(i64, i64)> = Vec::new();
    let mut purged = 0usize;
    let mut swept = false;
    let mut steps = 0;
    while purged < max && steps < PURGE_STEPS {
        steps += 1;
        // The gap from `pos` to the next range of either class, unless `pos` is
        // inside a range: then step over it.
        let mut inside: Option<i64> = None;
        let mut gap_end = i64::MAX;
        for class in Class::EVICTION_ORDER {
            match range_at_or_after(&tx, class, pos)? {
                Some((first, last)) if first <= pos => {
                    inside = Some(inside.map_or(last, |l| l.max(last)));
                }
                Some((first, _)) => gap_end = gap_end.min(first.saturating_sub(1)),
                None => {}
            }
        }
        if let Some(last) = inside {
            pos = last.saturating_add(1);
            continue;
        }
        let limit = max - purged;
        let mut q = tx.prepare_cached(
            "SELECT seq, received_at_ms FROM readings WHERE seq BETWEEN ?1 AND ?2
             ORDER BY seq LIMIT ?3",
        )?;
        let mut rows = q.query(params![pos, gap_end, limit as i64])?;
        let mut seen = 0usize;
        let mut last_old = None;
        let mut newer = false;
        while let Some(row) = rows.next()? {
            seen += 1;
            let received: i64 = row.get(1)?;
            if before_ms.is_some_and(|cutoff| received >= cutoff) {
                newer = true;
                break;
            }
            last_old = Some(row.get::<_, i64>(0)?);
            purged += 1;
        }
        if let Some(last) = last_old {
            runs.push((pos, last));
            pos = last.saturating_add(1);
        }
        if newer {
            swept = true;
            break;
        }
        if seen < limit {
            // The gap is exhausted.
            if gap_end == i64::MAX {
                swept = true;
                break;
            }
            pos = gap_end.saturating_add(1);
        }
    }
    {
        let mut del = tx.prepare_cached("DELETE FROM readings WHERE seq BETWEEN ?1 AND ?2")?;
        for &(first, last) in &runs {
            del.execute([first, last])?;
        }
    }
    tx.commit()?;
    cursor.next_seq = if swept { 0 } else { pos };
    let n = purged as u64;
    stats.history_purged.fetch_add(n, Ordering::Relaxed);
    Ok(Purged { readings: n, swept })
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Bytes inside the database file that SQLite can reuse without growing it.
pub(super) fn reusable_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from(free.saturating_mul(page)).unwrap_or(0))
}

/// Makes room inside the database when the disk is low or full: delivered history
/// first, then room data, then vital signs, one batch of `batch`. Returns how many
/// readings went.
pub(super) fn free_one_batch(
    conn: &mut Connection,
    batch: usize,
    stats: &StoreStats,
) -> Result<u64, StoreError> {
    // History first, from the first reading: a sweep is a bounded number of
    // steps per call, and the number of calls is bounded by the outbox's ranges.
    let mut cursor = PurgeCursor::default();
    let purged = loop {
        let p = purge_history(conn, None, batch, &mut cursor, stats)?;
        if p.readings > 0 || p.swept {
            break p.readings;
        }
    };
    if purged > 0 {
        tracing::warn!(
            purged,
            "disk space low: purged the oldest delivered history"
        );
        return Ok(purged);
    }
    for class in Class::EVICTION_ORDER {
        let seqs = oldest(conn, class, batch, None)?;
        if !seqs.is_empty() {
            return Ok(evict_seqs(conn, class, &seqs, EvictionReason::Disk, stats)?.0);
        }
    }
    Ok(0)
}
