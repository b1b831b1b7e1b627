//! Reading a lease's rows outside the writer thread.
//!
//! The writer hands a lease out as runs of sequence numbers and never reads its
//! rows: decoding them there (about a microsecond a reading) made the writer, which
//! also commits every ack, the ceiling of the uplink's drain. The leaser reads and
//! decodes the rows on its own read-only connection in a blocking thread instead.
//! That is safe because the row of a committed reading never changes: it can only
//! disappear (evicted while leased), and a row that is gone is simply not sent.
//! WAL lets this reader run beside the writer, and a read that starts after the
//! lease was handed out sees every row in it.
//!
//! What the read found goes back to the writer before the lease can be acked (a
//! [`ReadReport`] on the same channel, so it arrives first): the estimated bytes,
//! for the outbox's byte count, and the rows this build cannot read, which must
//! stay in the outbox untouched rather than be acked unsent.

use std::collections::hash_map::Entry;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::ids::Epochs;
use super::limits;
use super::outbox::Class;
use super::vocab::{Map, Vocab};
use super::{LeaseId, LeasedReading, StoreError};
use crate::model::{Reading, ReadingId, ResidentId, Subject, Timestamp};

/// A lease as the writer hands it out: runs of consecutive sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRuns {
    pub id: LeaseId,
    /// `(class, first, last)`, vital signs first, each class's runs in sequence
    /// order and disjoint.
    pub(super) runs: Vec<(Class, i64, i64)>,
}

impl LeaseRuns {
    /// Sequence numbers in the lease (an upper bound on its readings).
    pub fn len(&self) -> u64 {
        self.runs
            .iter()
            .map(|&(_, a, b)| u64::try_from(b - a + 1).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// What reading a lease found, for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadReport {
    pub lease: LeaseId,
    /// Readings handed to the sink.
    pub readings: u64,
    /// Their estimated bytes ([`limits::row_bytes`]).
    pub bytes: u64,
    /// Rows this build cannot read (a code from a newer build): left in the
    /// outbox, out of the lease.
    pub unreadable: Vec<(Class, i64)>,
}

/// Where a lease's readings go as they are read (a message encoder, a list).
pub trait LeaseSink: Send + 'static {
    /// One reading, in lease order, with its resident's pseudonymous reference
    /// (never the name); `None` for room data and unassigned devices.
    fn reading(&mut self, reading: Reading, reference: Option<&str>);
}

impl LeaseSink for Vec<LeasedReading> {
    fn reading(&mut self, reading: Reading, reference: Option<&str>) {
        self.push(LeasedReading {
            reading,
            resident_reference: reference.map(str::to_owned),
        });
    }
}

/// A read-only connection for reading leases, with the codes of the database.
pub struct LeaseReader {
    conn: Connection,
    vocab: Vocab,
}

impl std::fmt::Debug for LeaseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseReader").finish_non_exhaustive()
    }
}

/// The columns [`decode_row`] reads, from index 1 (0 is `seq`; schema v8).
const COLUMNS: &str = "r.id, r.device_code, r.resident_id, r.room, r.quantity_code, r.value,
                       r.status_code, r.unit_code, r.measured_offset_ms, r.received_at_ms,
                       r.clock_synced";

/// The rows of one run `?1..=?2`, in sequence order: `seq`, then [`COLUMNS`].
pub(super) fn rows_sql() -> String {
    format!(
        "SELECT r.seq, {COLUMNS} FROM readings r
         WHERE r.seq BETWEEN ?1 AND ?2 ORDER BY r.seq"
    )
}

impl LeaseReader {
    /// The page cache bound of this connection, in KiB (a test's view).
    #[cfg(test)]
    pub(crate) fn page_cache_kib(&self) -> i64 {
        super::page_cache_kib(&self.conn)
    }

    /// Opens `path` read-only. Blocking; open it after the store (whose writer
    /// adds this build's words to the code tables first).
    pub fn open(path: &Path) -> Result<LeaseReader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // It reads each lease's rows once, in order: a cache would not be read again.
        super::bound_memory(&conn, super::SIDE_CACHE_KIB)?;
        let vocab = read_vocab(&conn)?;
        Ok(LeaseReader { conn, vocab })
    }

    /// Reads the rows of `lease` in its order into `sink`, in one read
    /// transaction. Blocking.
    pub(crate) fn read(
        &mut self,
        lease: &LeaseRuns,
        sink: &mut impl LeaseSink,
    ) -> Result<ReadReport, StoreError> {
        let mut report = ReadReport {
            lease: lease.id,
            readings: 0,
            bytes: 0,
            unreadable: Vec::new(),
        };
        let tx = self.conn.transaction()?;
        let mut rows_of = tx.prepare_cached(&rows_sql())?;
        let mut reference_of =
            tx.prepare_cached("SELECT reference FROM residents WHERE id = ?1")?;
        // Each resident's reference, looked up once per lease rather than joined
        // to every row: a lease holds a few residents' readings many times over.
        let mut references: Map<i64, Option<String>> = Map::default();
        // The codes were read when this reader opened; a device first heard
        // since has a code it does not know yet. Read them again (once a lease)
        // before calling a row unreadable.
        let mut reloaded = false;
        for &(class, first, last) in &lease.runs {
            let mut rows = rows_of.query([first, last])?;
            while let Some(row) = rows.next()? {
                let mut decoded = decode_row(&self.vocab, row)?;
                if decoded.is_none() && !reloaded {
                    self.vocab = read_vocab(&tx)?;
                    reloaded = true;
                    decoded = decode_row(&self.vocab, row)?;
                }
                let Some(reading) = decoded else {
                    let seq: i64 = row.get(0)?;
                    // A row this build cannot read (from a newer version): it stays
                    // in the outbox untouched rather than being sent wrongly.
                    tracing::warn!(
                        seq,
                        "outbox reading not understood by this build; left in place"
                    );
                    report.unreadable.push((class, seq));
                    continue;
                };
                let reference = match reading.subject {
                    Subject::Resident(id) => match references.entry(id.0) {
                        Entry::Occupied(known) => known.into_mut().as_deref(),
                        Entry::Vacant(new) => new
                            .insert(reference_of.query_row([id.0], |r| r.get(0)).optional()?)
                            .as_deref(),
                    },
                    _ => None,
                };
                report.readings += 1;
                report.bytes += limits::row_bytes(&reading);
                sink.reading(reading, reference);
            }
        }
        drop(rows_of);
        drop(reference_of);
        tx.commit()?;
        Ok(report)
    }
}

/// The codes and the reading-id epochs of the database, without adding any.
pub(super) fn read_vocab(conn: &Connection) -> Result<Vocab, StoreError> {
    let mut vocab = Vocab::read(conn)?;
    vocab.epochs = Epochs::load(conn)?;
    Ok(vocab)
}

/// Rebuilds a reading from its row (`seq` at index 0, then [`COLUMNS`]);
/// `None` when a code, value or epoch is unknown to this build.
pub(super) fn decode_row(
    vocab: &Vocab,
    row: &rusqlite::Row<'_>,
) -> Result<Option<Reading>, StoreError> {
    // Schema v8: an id stored with the reading, else the one derived from its seq.
    let id = match row.get_ref(1)? {
        rusqlite::types::ValueRef::Null => vocab.reading_id(row.get(0)?),
        v => v
            .as_blob()
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(ReadingId::from_bytes),
    };
    let device = vocab.device(row.get(2)?);
    let resident: Option<i64> = row.get(3)?;
    let room: Option<String> = row.get(4)?;
    let quantity = vocab.quantity(row.get(5)?);
    let value = vocab.value(row.get(7)?, row.get(6)?);
    let unit = vocab.unit(row.get(8)?);
    let measured_offset: Option<i64> = row.get(9)?;
    let received: i64 = row.get(10)?;
    let synced: bool = row.get(11)?;
    let (Some(id), Some(device), Some(quantity), Some(value), Some(unit)) =
        (id, device, quantity, value, unit)
    else {
        return Ok(None);
    };
    let subject = match (resident, room) {
        (Some(id), _) => Subject::Resident(ResidentId(id)),
        (None, Some(room)) => Subject::Room(room),
        (None, None) => Subject::Unassigned,
    };
    Ok(Some(Reading {
        id,
        device,
        subject,
        quantity,
        value,
        unit,
        measured_at: measured_offset.map(|d| Timestamp::from_unix_ms(received.wrapping_add(d))),
        received_at: Timestamp::from_unix_ms(received),
        clock_synced: synced,
    }))
}
