//! The outbox as ranges of consecutive sequence numbers, one table per class
//! (`outbox_vital`, `outbox_room`; schema v4).
//!
//! The writer inserts a commit's vital signs first and its room data after them,
//! so each class's readings of one commit have consecutive sequence numbers and
//! cost one row `(first_seq, last_seq)`, or none when the range extends the one
//! before. Taking readings out (an ack, an eviction) deletes, trims or splits the
//! ranges that hold them: a lease of a thousand readings is a few statements, not
//! a thousand deletes. Every sequence number inside a range has its row in
//! `readings`.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::model::Quantity;

/// Which outbox a reading waits in: vital signs outrank room data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Vital,
    Room,
}

impl Class {
    /// In eviction order: room data goes first.
    pub const EVICTION_ORDER: [Class; 2] = [Class::Room, Class::Vital];

    pub fn of(q: Quantity) -> Class {
        if q.is_vital_sign() {
            Class::Vital
        } else {
            Class::Room
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Vital => "vital",
            Class::Room => "room",
        }
    }

    pub(super) fn table(self) -> &'static str {
        match self {
            Class::Vital => "outbox_vital",
            Class::Room => "outbox_room",
        }
    }
}

/// Sorted sequence numbers as runs of consecutive numbers `(first, last)`.
pub(super) fn runs(sorted: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for seq in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

/// Whether `seq` lies in one of the sorted, disjoint `ranges`.
pub(super) fn contains(ranges: &[(i64, i64)], seq: i64) -> bool {
    let i = ranges.partition_point(|&(first, _)| first <= seq);
    i.checked_sub(1)
        .and_then(|j| ranges.get(j))
        .is_some_and(|&(_, last)| last >= seq)
}

/// Puts `[first, last]` in the outbox of `class`, extending the range that ends
/// just before it.
pub(super) fn add(
    conn: &Connection,
    class: Class,
    first: i64,
    last: i64,
) -> Result<(), StoreError> {
    let table = class.table();
    let extended = conn
        .prepare_cached(&format!(
            "UPDATE {table} SET last_seq = ?2
             WHERE first_seq = (SELECT max(first_seq) FROM {table}) AND last_seq = ?1 - 1"
        ))?
        .execute([first, last])?;
    if extended == 0 {
        conn.prepare_cached(&format!(
            "INSERT INTO {table} (first_seq, last_seq) VALUES (?1, ?2)"
        ))?
        .execute([first, last])?;
    }
    Ok(())
}

/// Takes the sorted, disjoint `runs` out of the outbox of `class`. Returns the
/// parts of them that were in it (sorted), so the caller counts only those.
pub(super) fn remove(
    conn: &Connection,
    class: Class,
    runs: &[(i64, i64)],
) -> Result<Vec<(i64, i64)>, StoreError> {
    let table = class.table();
    let mut before = conn.prepare_cached(&format!(
        "SELECT first_seq, last_seq FROM {table} WHERE first_seq < ?1 ORDER BY first_seq DESC LIMIT 1"
    ))?;
    let mut inside = conn.prepare_cached(&format!(
        "SELECT first_seq, last_seq FROM {table} WHERE first_seq BETWEEN ?1 AND ?2 ORDER BY first_seq"
    ))?;
    let mut trim = conn.prepare_cached(&format!(
        "UPDATE {table} SET last_seq = ?2 WHERE first_seq = ?1"
    ))?;
    let mut delete = conn.prepare_cached(&format!("DELETE FROM {table} WHERE first_seq = ?1"))?;
    let mut insert = conn.prepare_cached(&format!(
        "INSERT INTO {table} (first_seq, last_seq) VALUES (?1, ?2)"
    ))?;
    let mut removed = Vec::new();
    for &(a, b) in runs {
        // A range that starts before the run and reaches into it: keep its head,
        // and its tail if it reaches beyond the run.
        let head: Option<(i64, i64)> = before
            .query_row([a], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((f, l)) = head
            && l >= a
        {
            removed.push((a, l.min(b)));
            trim.execute([f, a - 1])?;
            if l > b {
                insert.execute([b + 1, l])?;
            }
        }
        // Ranges that start inside the run: gone, but for a tail beyond it.
        let starts: Vec<(i64, i64)> = inside
            .query_map([a, b], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (f, l) in starts {
            removed.push((f, l.min(b)));
            delete.execute([f])?;
            if l > b {
                insert.execute([b + 1, l])?;
            }
        }
    }
    removed.sort_unstable();
    Ok(removed)
}

/// Readings in the outbox of `class`, counted from its ranges.
pub(super) fn depth(conn: &Connection, class: Class) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        &format!(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM {}",
            class.table()
        ),
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// SQL joining the outbox of `class` (alias `o`) to its readings (alias `r`), for
/// a `FROM` clause; with [`from_seq_sql`] as the `WHERE` clause and
/// `ORDER BY o.first_seq, r.seq`, SQLite walks ranges by `first_seq` and readings
/// by `seq` within each: sequence order without sorting.
pub(super) fn joined_sql(class: Class) -> String {
    format!(
        "{} o JOIN readings r ON r.seq BETWEEN o.first_seq AND o.last_seq",
        class.table()
    )
}

/// The ranges of `class` that may hold sequence numbers from `?1` on (the one
/// that may hold `?1`, and every later one), `(first_seq, last_seq)` in order:
/// what a lease walks, without reading a reading.
pub(super) fn ranges_from_sql(class: Class) -> String {
    let table = class.table();
    format!(
        "SELECT first_seq, last_seq FROM {table}
         WHERE first_seq >= coalesce((SELECT max(first_seq) FROM {table} WHERE first_seq <= ?1), 0)
         ORDER BY first_seq"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_runs(seqs: &[i64], want: &[(i64, i64)]) {
        assert_eq!(runs(seqs.iter().copied()), want, "runs of {seqs:?}");
    }

    #[test]
    fn runs_group_consecutive_numbers() {
        check_runs(&[], &[]);
        check_runs(&[5], &[(5, 5)]);
        check_runs(&[1, 2, 3, 7, 8, 10], &[(1, 3), (7, 8), (10, 10)]);
    }

    #[test]
    fn contains_finds_a_number_only_inside_a_range() {
        let r = [(1, 3), (7, 8), (10, 10)];
        let inside: Vec<i64> = (0..12).filter(|&s| contains(&r, s)).collect();
        assert_eq!(inside, [1, 2, 3, 7, 8, 10]);
    }

    fn table(conn: &Connection) -> Vec<(i64, i64)> {
        conn.prepare("SELECT first_seq, last_seq FROM outbox_vital ORDER BY first_seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Starts from `ranges`, removes `take`; checks what was removed and what is left.
    fn check_remove(
        ranges: &[(i64, i64)],
        take: &[(i64, i64)],
        removed: &[(i64, i64)],
        left: &[(i64, i64)],
    ) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE outbox_vital (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL)",
        )
        .unwrap();
        for &(f, l) in ranges {
            add(&conn, Class::Vital, f, l).unwrap();
        }
        assert_eq!(
            remove(&conn, Class::Vital, take).unwrap(),
            removed,
            "removed from {ranges:?} taking {take:?}"
        );
        assert_eq!(table(&conn), left, "left of {ranges:?} taking {take:?}");
    }

    #[test]
    fn remove_deletes_trims_and_splits_ranges() {
        // A whole range, as a lease of one commit's readings.
        check_remove(&[(1, 10), (21, 30)], &[(1, 10)], &[(1, 10)], &[(21, 30)]);
        // The head of a range.
        check_remove(&[(1, 10)], &[(1, 4)], &[(1, 4)], &[(5, 10)]);
        // The tail of a range.
        check_remove(&[(1, 10)], &[(7, 10)], &[(7, 10)], &[(1, 6)]);
        // The middle: the range splits.
        check_remove(&[(1, 10)], &[(4, 6)], &[(4, 6)], &[(1, 3), (7, 10)]);
        // A run across two ranges and the gap between them.
        check_remove(
            &[(1, 10), (21, 30)],
            &[(5, 25)],
            &[(5, 10), (21, 25)],
            &[(1, 4), (26, 30)],
        );
        // Numbers not in the outbox (acked or evicted before): nothing to count.
        check_remove(&[(1, 10)], &[(11, 20)], &[], &[(1, 10)]);
        // Several runs of one lease.
        check_remove(
            &[(1, 10), (21, 30)],
            &[(1, 2), (5, 5), (21, 30)],
            &[(1, 2), (5, 5), (21, 30)],
            &[(3, 4), (6, 10)],
        );
    }

    #[test]
    fn add_extends_the_range_that_ends_just_before() {
        check_remove(
            &[(1, 10), (11, 20), (25, 30)],
            &[],
            &[],
            &[(1, 20), (25, 30)],
        );
    }
}
