//! Reading ids that cost no bytes on disk (schema v8): a UUIDv8 made of a random
//! prefix and the reading's sequence number.
//!
//! Every start of the writer begins an *epoch*: a row of `reading_id_epochs` with
//! 74 fresh random bits (SQLite's `randomblob`, seeded from the OS) and the first
//! sequence number it covers, above every sequence number and epoch before it. The
//! id of a reading stored with a NULL `id` is the prefix of the epoch its `seq` falls
//! in, followed by `seq` in 48 bits. So an id is
//! - stable: `seq` and the epoch table never change for a stored reading, so a
//!   resend carries the same id;
//! - unique on this gateway: the writer hands out sequence numbers from its epoch's
//!   first on, never again one it used in this run;
//! - unique everywhere else: a new database (one moved aside after corruption, a
//!   replacement SD card), a copied or restored database and another gateway all
//!   start a new epoch with new random bits before they store anything, so their
//!   ids cannot repeat ours even where their sequence numbers do.
//!
//! Readings that came with an id (migrated from v7, staff observation sets) keep it
//! in the `id` column. See `docs/decisions/0011-reading-ids-from-seq.md`.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::model::ReadingId;

/// Sequence numbers an id can hold (48 bits).
pub(super) const MAX_SEQ: i64 = (1 << 48) - 1;

/// The first 10 bytes of a UUIDv8, version and variant bits set.
pub(super) type Prefix = [u8; 10];

/// A prefix from 10 random bytes: version 8 in the high nibble of byte 6, variant
/// `10` in the top bits of byte 8 (RFC 9562); 74 bits stay random.
fn prefix_from(mut random: [u8; 10]) -> Prefix {
    random[6] = 0x80 | (random[6] & 0x0F);
    random[8] = 0x80 | (random[8] & 0x3F);
    random
}

/// The id of the reading numbered `seq` in the epoch of `prefix`.
pub(super) fn derive(prefix: &Prefix, seq: i64) -> ReadingId {
    let mut b = [0u8; 16];
    b[..10].copy_from_slice(prefix);
    b[10..].copy_from_slice(&(seq & MAX_SEQ).to_be_bytes()[2..]);
    ReadingId::from_bytes(b)
}

/// The sequence number of a reading id derived from `prefix` (this run's epoch);
/// `None` for any other id.
pub(super) fn seq_of(prefix: &Prefix, id: &[u8]) -> Option<i64> {
    let (head, tail) = (id.get(..10)?, id.get(10..16)?);
    if id.len() != 16 || head != prefix {
        return None;
    }
    let mut b = [0u8; 8];
    b.get_mut(2..)?.copy_from_slice(tail);
    Some(i64::from_be_bytes(b))
}

/// The epochs of one database, oldest first.
#[derive(Debug, Default)]
pub(super) struct Epochs(Vec<(i64, Prefix)>);

impl Epochs {
    /// Begins a new epoch (replacing the newest one if it holds no reading, so that
    /// a crash loop does not grow the table) and loads them all. Returns them, the
    /// first sequence number of the new epoch and its prefix.
    pub(super) fn begin(conn: &mut Connection) -> Result<(Epochs, i64, Prefix), StoreError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let max_seq: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM readings", [], |r| {
            r.get(0)
        })?;
        let last: Option<i64> = tx
            .query_row("SELECT max(first_seq) FROM reading_id_epochs", [], |r| {
                r.get(0)
            })
            .optional()?
            .flatten();
        let first = max_seq.max(last.unwrap_or(0)) + 1;
        if let Some(last) = last
            && last > max_seq
        {
            // No reading has a sequence number in it: nothing was ever derived from
            // it that the table must keep explaining.
            tx.execute("DELETE FROM reading_id_epochs WHERE first_seq = ?1", [last])?;
        }
        let prefix = prefix_from(tx.query_row("SELECT randomblob(10)", [], |r| r.get(0))?);
        tx.execute(
            "INSERT INTO reading_id_epochs (first_seq, prefix) VALUES (?1, ?2)",
            rusqlite::params![first, &prefix[..]],
        )?;
        tx.commit()?;
        Ok((Epochs::load(conn)?, first, prefix))
    }

    /// Every epoch of the database.
    pub(super) fn load(conn: &Connection) -> Result<Epochs, StoreError> {
        let mut q =
            conn.prepare("SELECT first_seq, prefix FROM reading_id_epochs ORDER BY first_seq")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (first, prefix) = row?;
            // A prefix of another length (a newer build's format) explains nothing
            // here: the readings of that epoch stay unreadable, not misnamed.
            if let Ok(prefix) = Prefix::try_from(prefix.as_slice()) {
                out.push((first, prefix));
            }
        }
        Ok(Epochs(out))
    }

    /// The id of a reading stored without one; `None` when no epoch covers `seq`.
    pub(super) fn id_of(&self, seq: i64) -> Option<ReadingId> {
        let i = self.0.partition_point(|&(first, _)| first <= seq);
        let (_, prefix) = self.0.get(i.checked_sub(1)?)?;
        (0..=MAX_SEQ).contains(&seq).then(|| derive(prefix, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_uuid_v8_ending_in_its_sequence_number() {
        let id = derive(&prefix_from([0xFF; 10]), 0x0102_0304_0506);
        let s = id.to_string();
        // Version 8, variant 10xx, the sequence number in the last 12 hex digits.
        assert_eq!(s, "ffffffff-ffff-8fff-bfff-010203040506");
        let id = derive(&prefix_from([0; 10]), 1);
        assert_eq!(id.to_string(), "00000000-0000-8000-8000-000000000001");
        assert!(!id.is_unassigned());
    }

    fn check_id_of(epochs: &[(i64, u8)], seq: i64, want: Option<u8>) {
        let e = Epochs(
            epochs
                .iter()
                .map(|&(f, b)| (f, prefix_from([b; 10])))
                .collect(),
        );
        let got = e.id_of(seq).map(|id| id.as_bytes()[0]);
        assert_eq!(got, want, "seq {seq} in {epochs:?}");
    }

    #[test]
    fn a_sequence_number_takes_the_prefix_of_its_epoch() {
        check_id_of(&[], 5, None);
        check_id_of(&[(10, 1)], 9, None);
        check_id_of(&[(10, 1)], 10, Some(1));
        check_id_of(&[(10, 1), (20, 2)], 19, Some(1));
        check_id_of(&[(10, 1), (20, 2)], 20, Some(2));
        check_id_of(&[(10, 1), (20, 2)], 1_000_000, Some(2));
        check_id_of(&[(10, 1)], MAX_SEQ + 1, None);
    }
}
