//! The writer thread: the only connection that writes, committing in groups, and
//! the keeper of leases, caps and retention.
//!
//! Leases live only in this thread's memory: a lease is a promise to one uplink
//! connection, so a restart (or `release_all` on reconnect) makes every reading
//! leasable again without touching the disk. Leasing needs no writes at all; an
//! ack takes the lease's runs of sequence numbers out of the outbox ranges, and the
//! reading itself stays in `readings` as history.
//!
//! Only readings need `synchronous = FULL`: a commit that holds nothing but acks
//! is made with `NORMAL` (no fsync of its own; the next full commit or checkpoint
//! syncs it). An ack lost in a power cut only means those readings are sent again,
//! which at-least-once delivery allows; WAL mode keeps the file consistent either
//! way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::ids::{self, Epochs};
use super::lease_read::{LeaseRuns, ReadReport};
use super::limits::{self, EvictionReason, MaintenanceReport};
use super::outbox::Class;
use super::vocab::{Codes, Vocab};
use super::{
    Command, LeaseId, ResidentChange, StoreError, StoreSettings, StoreStats, outbox, schema,
    subject_key,
};
use crate::config::Synchronous;
use crate::model::{DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp};
use crate::system::health::Heartbeat;

const IDLE_BEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// Readings deleted per transaction when the disk is low: small, because each
/// transaction needs WAL space of its own.
const DISK_BATCH: usize = 500;
/// At most this many such transactions per check.
const MAKE_ROOM_ROUNDS: usize = 50;
/// Transactions of [`limits::BATCH`] readings one maintenance pass may take for
/// the age cap, and calls of the history purge: the pass is bounded (a month's
/// backlog is worked off over several minutes), and the heartbeat is beaten
/// between them.
const MAINTENANCE_BATCHES: usize = 10;

/// The WAL's size before a checkpoint, about (see [`open_write_connection`]).
const WAL_BYTES: i64 = 4096 * 1000;

/// Opens the write connection, checks the file's integrity and migrates it.
pub(super) fn open_write_connection(settings: &StoreSettings) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(&settings.path)?;
    super::bound_memory(&conn, super::WRITER_CACHE_KIB)?;
    // 1 KiB pages: every commit rewrites a few pages that it barely changes (the
    // tail of `readings`, its parent, the outbox ranges, `latest`, page 1), and
    // smaller pages make those cost less in the WAL: 88 instead of 101 bytes
    // written per reading at steady state (docs/performance.md). Only a new file
    // takes it; an existing database keeps its page size.
    conn.pragma_update(None, "page_size", 1024)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Counted in pages: about 4 MiB of WAL whatever the page size (the default
    // 1000 pages of 4 KiB), so that 1 KiB pages do not checkpoint four times as often.
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_BYTES / page_size.max(512))?;
    let sync = match settings.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Process-wide: bounds the readers' caches too, opened after this one.
    conn.pragma_update(None, "soft_heap_limit", super::SQLITE_HEAP_KIB * 1024)?;
    let verdict: String = conn.query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt(verdict));
    }
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// Builds the writer on an open connection (codes, epoch, outbox totals); the
/// store may bring readings in ([`Writer::import`]) before it [`Writer::start`]s.
pub(super) fn prepare(
    mut conn: Connection,
    settings: StoreSettings,
    stats: Arc<StoreStats>,
    heartbeat: Heartbeat,
) -> Result<Writer, StoreError> {
    limits::load_counts(&conn, &stats)?;
    let mut vocab = Vocab::load(&mut conn)?;
    let (epochs, next_seq, prefix) = Epochs::begin(&mut conn)?;
    vocab.epochs = epochs;
    let writer = Writer {
        conn,
        sync_lowered: false,
        vocab,
        next_seq,
        prefix,
        settings,
        stats,
        leases: HashMap::new(),
        leased: [BTreeMap::new(), BTreeMap::new()],
        cursor: [0, 0],
        next_lease: 1,
        refusals: HashMap::new(),
        held: Vec::new(),
        last_maintenance: Instant::now(),
        purge_cursor: limits::PurgeCursor::default(),
        unsynced_since: None,
        started_ms: Timestamp::now().unix_ms(),
        heartbeat,
        rescue: None,
    };
    writer.count_outbox()?;
    Ok(writer)
}

/// The stored record of a damaged database, for [`Writer::record_damage`].
pub(super) struct DamageRow<'a> {
    pub at: Timestamp,
    pub reason: &'a str,
    pub moved_to: Option<&'a std::path::Path>,
    pub recovered: u64,
    pub rescued: u64,
    pub unreadable: u64,
}

/// One lease: its runs of sequence numbers, and what reading it found.
#[derive(Debug)]
struct Held {
    /// `(class, first, last)`, as handed out less the unreadable rows.
    runs: Vec<(Class, i64, i64)>,
    /// Readings read and their estimated bytes, once the leaser has said.
    read: Option<(u64, u64)>,
}

/// The runs of a lease held after repeated refusals, and its readings.
type HeldAside = (Vec<(Class, i64, i64)>, u64);

pub(super) struct Writer {
    conn: Connection,
    /// The connection is at `synchronous=NORMAL` for a commit of acks only.
    sync_lowered: bool,
    vocab: Vocab,
    /// The sequence number of the next reading stored: above every one stored or
    /// covered by an epoch before this run, so that no id is made twice
    /// (`ids.rs`). Given explicitly, never left to SQLite, which would reuse the
    /// numbers of deleted rows at the end of the table.
    next_seq: i64,
    /// The random prefix of this run's epoch: every reading this run stores
    /// without an id gets its id from it (`ids.rs`).
    prefix: ids::Prefix,
    settings: StoreSettings,
    stats: Arc<StoreStats>,
    leases: HashMap<u64, Held>,
    /// Per class (vital, room): every leased run, `first → last`. Leases never
    /// overlap, so neither do these.
    leased: [BTreeMap<i64, i64>; 2],
    /// Per class (vital, room): no leasable reading has a smaller sequence number.
    cursor: [i64; 2],
    next_lease: u64,
    /// Refusals in a row, by the `(class, first)` of the refused lease's first
    /// run: a lease released after a refusal is leased again from the same head.
    refusals: HashMap<(Class, i64), u32>,
    /// Runs set aside after repeated refusals, with their readings: kept in
    /// `leased` too, so that no lease takes them until `retry_held`.
    held: Vec<HeldAside>,
    last_maintenance: Instant,
    /// Where the history purge goes on from at the next maintenance pass.
    purge_cursor: limits::PurgeCursor,
    /// The first sequence number this run stored with an unsynchronised clock
    /// since the last step was corrected: where a correction starts.
    unsynced_since: Option<i64>,
    /// When this run began, by the wall clock of the time (maybe a wrong one).
    started_ms: i64,
    /// The writer's heartbeat, also beaten between the tries of a commit that
    /// failed for an I/O error: the writer is working, the storage is failing.
    heartbeat: Heartbeat,
    /// Set once a commit met a damaged database: from then on every group is
    /// committed to the rescue file beside it, nothing is leased, and the
    /// daemon is stopping (docs/decisions/0015).
    rescue: Option<std::path::PathBuf>,
}

fn slot(class: Class) -> usize {
    match class {
        Class::Vital => 0,
        Class::Room => 1,
    }
}

/// Whether to wait for more commands to share a commit: only ingests gain from
/// grouping; leases and acks are answered at once.
fn groupable(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Ingest { .. }
            | Command::Provision { .. }
            | Command::Record {
                committed: None,
                ..
            }
            | Command::Seen { .. }
    )
}

fn readings_in(cmd: &Command) -> usize {
    match cmd {
        Command::Ingest { readings, .. } => readings.len(),
        _ => 1,
    }
}

/// A failed read, write or sync of the file (`SQLITE_IOERR`: a failing SD card,
/// a USB disk pulled and put back, an `fsync` refused). SQLite has rolled the
/// transaction back; the same commit may succeed a moment later.
fn is_io_error(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::SystemIoFailure
    )
}

/// How long one commit is tried again while the storage fails with I/O errors,
/// before its commands are answered with the error (and sensor readings in it
/// are lost, counted in `commit_errors`). Meanwhile producers wait or, for
/// sensor frames, the bounded channels fill and frames are counted as dropped.
const IO_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

fn is_disk_full(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull
    )
}

impl Writer {
    /// Starts the writer's thread.
    #[allow(
        clippy::expect_used,
        reason = "start-up: a thread cannot be spawned only when the process is out of resources, and then the gateway cannot run"
    )]
    pub(super) fn start(
        self,
        rx: mpsc::Receiver<Command>,
        runtime: tokio::runtime::Handle,
    ) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || self.run(rx, runtime))
            .expect("spawning a thread at start-up only fails when the process is out of resources")
    }

    /// The outbox's totals and the free disk space, into the stats (after an
    /// import: once, since it reads the whole outbox).
    pub(super) fn count_outbox(&self) -> Result<(), StoreError> {
        let (rows, bytes) = limits::outbox_totals(&self.conn)?;
        self.stats.outbox_readings.store(rows, Ordering::Relaxed);
        self.stats.outbox_bytes.store(bytes, Ordering::Relaxed);
        if let Some(free) = limits::free_disk_bytes(&self.settings.path) {
            self.stats.free_disk_bytes.store(free, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Stores readings brought back from a damaged database or a rescue file,
    /// each with the id it had there, into the outbox, before the thread
    /// starts. Returns how many.
    pub(super) fn import(&mut self, readings: Vec<Reading>) -> Result<u64, StoreError> {
        let n = readings.len() as u64;
        if n == 0 {
            return Ok(0);
        }
        let group = [Command::Ingest {
            readings,
            entered: None,
            committed: None,
        }];
        self.write_group(&group)?;
        // Readings of an earlier run keep their times: a clock step of this run
        // never moves them (docs/decisions/0014).
        self.unsynced_since = None;
        Ok(n)
    }

    /// The write connection, for copying tables before the thread starts.
    pub(super) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Records a damaged database in `store_damage`.
    pub(super) fn record_damage(&mut self, d: &DamageRow<'_>) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO store_damage (found_at_ms, reason, moved_to, recovered, rescued,
                                       unreadable, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                d.at.unix_ms(),
                d.reason,
                d.moved_to.map(|p| p.display().to_string()),
                i64::try_from(d.recovered).unwrap_or(i64::MAX),
                i64::try_from(d.rescued).unwrap_or(i64::MAX),
                i64::try_from(d.unreadable).unwrap_or(i64::MAX),
                Timestamp::now().unix_ms(),
            ],
        )?;
        Ok(())
    }

    /// The newest record of a damaged database, if any.
    pub(super) fn last_damage(&self) -> Result<Option<super::CorruptionAlarm>, StoreError> {
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(self
            .conn
            .query_row(
                "SELECT found_at_ms, reason, moved_to, recovered, rescued, unreadable
                 FROM store_damage ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(super::CorruptionAlarm {
                        at: Timestamp::from_unix_ms(r.get(0)?),
                        reason: r.get(1)?,
                        moved_to: r.get::<_, Option<String>>(2)?.map(std::path::PathBuf::from),
                        recovered: count(r.get(3)?),
                        rescued: count(r.get(4)?),
                        unreadable: count(r.get(5)?),
                    })
                },
            )
            .optional()?)
    }

    /// A commit met a damaged database: from now on the writer commits to a
    /// fresh store file beside it (`<db>.rescue`), which the next start brings
    /// into the fresh database; leases are forgotten (their readings stay in
    /// the damaged file's outbox, recovered from there as far as readable).
    fn enter_rescue(&mut self) -> Result<(), StoreError> {
        let path = super::rescue_path(&self.settings.path);
        let settings = StoreSettings {
            path: path.clone(),
            ..self.settings.clone()
        };
        let mut conn = open_write_connection(&settings)?;
        let mut vocab = Vocab::load(&mut conn)?;
        let (epochs, next_seq, prefix) = Epochs::begin(&mut conn)?;
        vocab.epochs = epochs;
        self.conn = conn;
        self.sync_lowered = false;
        self.vocab = vocab;
        self.next_seq = next_seq;
        self.prefix = prefix;
        self.unsynced_since = None;
        self.leases.clear();
        self.leased = [BTreeMap::new(), BTreeMap::new()];
        self.cursor = [0, 0];
        self.refusals.clear();
        self.held.clear();
        tracing::error!(rescue = %path.display(), "readings received from now on are committed to the rescue file beside the damaged database");
        self.rescue = Some(path);
        Ok(())
    }

    /// Collects commands into groups and handles each group, until every sender
    /// has gone; then commits what is left and returns.
    fn run(mut self, mut rx: mpsc::Receiver<Command>, runtime: tokio::runtime::Handle) {
        // Timers are made outside `block_on`; they need the runtime's context.
        let _context = runtime.enter();
        loop {
            self.heartbeat.beat();
            if self.last_maintenance.elapsed() >= super::MAINTENANCE_EVERY
                && let Err(e) = self.maintain_reported(Timestamp::now())
            {
                tracing::error!(error = %e, "store maintenance failed; will retry");
            }
            // Wake at least once a second while idle, so that the heartbeat says the
            // writer is waiting, not stuck.
            let first = match runtime.block_on(tokio::time::timeout(IDLE_BEAT, rx.recv())) {
                Ok(Some(cmd)) => cmd,
                Ok(None) => break,
                Err(_) => continue,
            };
            let mut waiting = groupable(&first);
            let mut count = readings_in(&first);
            let mut group = vec![first];
            let deadline =
                tokio::time::Instant::from_std(Instant::now() + self.settings.commit_max_delay);
            while count < self.settings.commit_max_readings {
                let next = match rx.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) if waiting => {
                        match runtime.block_on(tokio::time::timeout_at(deadline, rx.recv())) {
                            Ok(Some(cmd)) => Some(cmd),
                            Ok(None) | Err(_) => None,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => None,
                };
                let Some(cmd) = next else { break };
                waiting &= groupable(&cmd);
                count += readings_in(&cmd);
                group.push(cmd);
            }
            self.handle_group(group);
        }
        tracing::debug!("store writer stopped: every producer has gone and all is committed");
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "slot(class) is 0 or 1, the length of cursor and leased"
    )]
    fn handle_group(&mut self, group: Vec<Command>) {
        // Acks naming a lease this writer holds; any other is answered UnknownLease.
        let acks: HashSet<u64> = group
            .iter()
            .filter_map(|c| match c {
                Command::Ack { lease, .. } => Some(lease.0),
                _ => None,
            })
            .filter(|id| self.leases.contains_key(id))
            .collect();
        let mut result = self.write_group(&group);
        if let Err(e) = &result
            && is_disk_full(e)
        {
            self.on_disk_full(e);
            result = self.write_group(&group);
        }
        if let Err(e) = &result
            && is_io_error(e)
        {
            result = self.retry_after_io_error(&group, e);
        }
        // The database is damaged: the group is not lost, nor split (every
        // command would meet the same pages): it is committed to the rescue
        // file, and the daemon stops to have the file replaced.
        if let Err(e) = &result
            && self.rescue.is_none()
            && self
                .stats
                .report_if_damaged(&self.settings.path, "commit", e)
        {
            result = match self.enter_rescue() {
                Ok(()) => self.write_group(&group),
                Err(rescue_error) => {
                    tracing::error!(error = %rescue_error, "cannot open the rescue file; this group is lost");
                    result
                }
            };
        }
        // One command refused (a constraint, a trigger, a word this build cannot
        // code) must not cost the others of its group their commit: sensor
        // readings handed over with `ingest_nowait` have nobody to try again. The
        // group was rolled back whole; each command is written again alone, and
        // only the refused one is answered with its error. A full disk refuses
        // them all alike, so that is not split.
        if let Err(e) = &result
            && group.len() > 1
            && !is_disk_full(e)
        {
            tracing::warn!(error = %e, commands = group.len(), "a commit was refused; writing its commands one by one");
            for cmd in group {
                self.handle_group(vec![cmd]);
            }
            return;
        }
        let now = Timestamp::now();
        let outcome: Result<(), Arc<StoreError>> = match result {
            Ok(written) => {
                let stats = &self.stats;
                stats
                    .readings_committed
                    .fetch_add(written.readings, Ordering::Relaxed);
                if written.committed {
                    // Release: whoever sees the new count sees the commit (the
                    // overview's cache in `web` keys on it).
                    stats.commits.fetch_add(1, Ordering::Release);
                    stats.last_commit_ms.store(now.unix_ms(), Ordering::Relaxed);
                }
                stats
                    .outbox_readings
                    .fetch_add(written.readings, Ordering::Relaxed);
                stats
                    .outbox_bytes
                    .fetch_add(written.bytes, Ordering::Relaxed);
                let (rows, bytes) = (written.acked_readings, written.acked_bytes);
                stats.outbox_left(rows, bytes);
                for id in &acks {
                    if let Some(held) = self.leases.remove(id) {
                        if let Some(&(class, first, _)) = held.runs.first() {
                            // Delivered: no longer refused in a row.
                            self.refusals.remove(&(class, first));
                        }
                        for (class, first, _) in held.runs {
                            self.leased[slot(class)].remove(&first);
                        }
                    }
                }
                let registry = group.iter().any(|c| {
                    matches!(
                        c,
                        Command::Provision { .. } | Command::Record { .. } | Command::Seen { .. }
                    )
                });
                if registry {
                    stats.registry_changes.fetch_add(1, Ordering::Release);
                }
                if written.readings > 0 || registry {
                    stats.changed.notify_waiters();
                }
                if stats.disk_full.swap(false, Ordering::Relaxed) {
                    tracing::info!("the disk has room again; readings are being stored");
                }
                Ok(())
            }
            Err(e) => {
                self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                let e = if is_disk_full(&e) {
                    match e {
                        StoreError::Sqlite(inner) => StoreError::DiskFull(inner),
                        other => other,
                    }
                } else {
                    e
                };
                tracing::error!(error = %e, commands = group.len(), "store commit failed; the group was not stored");
                Err(Arc::new(e))
            }
        };
        // Caps are enforced before anyone hears back, so that a producer that saw its
        // commit also sees the outbox within bounds, and no lease hands out a
        // reading about to be evicted.
        let wrote = group.iter().any(|c| matches!(c, Command::Ingest { .. }));
        if wrote && let Err(e) = self.enforce_caps() {
            tracing::error!(error = %e, "cannot enforce the outbox caps; will retry after the next commit");
        }
        for cmd in group {
            match cmd {
                Command::Ingest { committed, .. } => {
                    if let Some(reply) = committed {
                        // The producer may have stopped waiting; the data is stored either way.
                        let _ = reply.send(outcome.clone());
                    }
                }
                Command::Provision { committed, .. } => {
                    let _ = committed.send(outcome.clone());
                }
                Command::Ack { lease, reply } => {
                    let r = match &outcome {
                        Ok(()) if !acks.contains(&lease.0) => {
                            Err(Arc::new(StoreError::UnknownLease(lease.0)))
                        }
                        other => other.clone(),
                    };
                    let _ = reply.send(r);
                }
                Command::Lease { max, reply } => {
                    // Nothing is sent from the rescue file: its readings reach
                    // the outbox of the fresh database at the next start.
                    let leased = match self.rescue {
                        Some(_) => Ok(None),
                        None => self.lease(max).map_err(Arc::new),
                    };
                    let _ = reply.send(leased);
                }
                Command::LeaseRead { report } => self.lease_read(report),
                Command::Release { lease, reply } => {
                    let _ = reply.send(self.release(lease).map_err(Arc::new));
                }
                Command::ReleaseAll { keep, reply } => {
                    if keep.is_empty() {
                        self.release_all();
                    } else {
                        self.release_all_but(&keep);
                    }
                    let _ = reply.send(Ok(()));
                }
                Command::Refuse {
                    lease,
                    hold_after,
                    reply,
                } => {
                    let _ = reply.send(self.refuse(lease, hold_after).map_err(Arc::new));
                }
                Command::RetryHeld { reply } => {
                    let _ = reply.send(Ok(self.retry_held()));
                }
                Command::Maintain { now, reply } => {
                    let _ = reply.send(self.maintain_reported(now).map_err(Arc::new));
                }
                Command::ClockStepped { delta_ms, reply } => {
                    let _ = reply.send(self.correct_clock(delta_ms).map_err(Arc::new));
                }
                Command::Record { committed, record } => match committed {
                    Some(reply) => {
                        let _ = reply.send(outcome.clone());
                    }
                    None => {
                        if let Err(e) = &outcome {
                            tracing::error!(error = %e, event = %record.what, "pairing event not recorded");
                        }
                    }
                },
                Command::Seen { .. } => {}
                Command::Resident { change, reply } => {
                    let r = self.change_resident(&change);
                    if r.is_ok() {
                        self.stats.registry_changes.fetch_add(1, Ordering::Release);
                    }
                    let _ = reply.send(r.map_err(Arc::new));
                }
            }
        }
    }

    /// Applies one resident change in its own transaction.
    fn change_resident(&mut self, change: &ResidentChange) -> Result<ResidentId, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let taken = |reference: &str, id: Option<i64>| -> Result<(), StoreError> {
            let other: Option<i64> = tx
                .query_row(
                    "SELECT id FROM residents WHERE reference = ?1 AND id IS NOT ?2",
                    params![reference, id],
                    |r| r.get(0),
                )
                .optional()?;
            match other {
                Some(_) => Err(StoreError::ReferenceTaken(reference.to_owned())),
                None => Ok(()),
            }
        };
        let id = match change {
            ResidentChange::Add {
                display_name,
                room,
                reference,
            } => {
                taken(reference, None)?;
                tx.execute(
                    "INSERT INTO residents (display_name, room, reference) VALUES (?1, ?2, ?3)",
                    params![display_name, room, reference],
                )?;
                ResidentId(tx.last_insert_rowid())
            }
            ResidentChange::Edit(r) => {
                taken(&r.reference, Some(r.id.0))?;
                let n = tx.execute(
                    "UPDATE residents SET display_name = ?2, room = ?3, reference = ?4
                     WHERE id = ?1 AND archived = 0",
                    params![r.id.0, r.display_name, r.room, r.reference],
                )?;
                if n == 0 {
                    return Err(StoreError::NoSuchResident(r.id.0));
                }
                r.id
            }
            ResidentChange::Archive(id) => {
                let devices: i64 = tx.query_row(
                    "SELECT count(*) FROM devices WHERE resident_id = ?1",
                    [id.0],
                    |r| r.get(0),
                )?;
                if devices > 0 {
                    return Err(StoreError::DevicesAssigned {
                        id: id.0,
                        devices: devices.unsigned_abs(),
                    });
                }
                let n = tx.execute(
                    "UPDATE residents SET archived = 1 WHERE id = ?1 AND archived = 0",
                    [id.0],
                )?;
                if n == 0 {
                    return Err(StoreError::NoSuchResident(id.0));
                }
                *id
            }
        };
        tx.commit()?;
        Ok(id)
    }

    /// Tries a group again while its commit fails with I/O errors, for up to
    /// [`IO_RETRY_FOR`], waiting longer each time and beating the heartbeat (the
    /// web stage and alerts stay up; restarting the daemon would not mend the
    /// storage). Nothing is counted as committed until a commit succeeds: SQLite
    /// rolled each failed one back, and each try writes the group again from
    /// memory, never trusting what a refused sync may have left on the disk.
    fn retry_after_io_error(
        &mut self,
        group: &[Command],
        first: &StoreError,
    ) -> Result<Written, StoreError> {
        self.stats.storage_failing.store(true, Ordering::Relaxed);
        tracing::error!(error = %first, commands = group.len(), "the storage failed a commit; trying again");
        let started = Instant::now();
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
            self.heartbeat.beat();
            std::thread::sleep(wait);
            self.heartbeat.beat();
            wait = (wait * 2).min(std::time::Duration::from_secs(2));
            let result = self.write_group(group);
            match &result {
                Err(e) if is_io_error(e) && started.elapsed() < IO_RETRY_FOR => continue,
                Ok(_) => {
                    self.stats.storage_failing.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the storage commits again; the commit that failed is stored"
                    );
                }
                Err(_) => {}
            }
            return result;
        }
    }

    fn write_group(&mut self, group: &[Command]) -> Result<Written, StoreError> {
        // Leases, releases and the like write nothing: no transaction for them.
        let writes = group.iter().any(|c| {
            matches!(
                c,
                Command::Ingest { .. }
                    | Command::Provision { .. }
                    | Command::Record { .. }
                    | Command::Seen { .. }
                    | Command::Ack { .. }
            )
        });
        if !writes {
            return Ok(Written::default());
        }
        let acks_only = group.iter().all(|c| {
            !matches!(
                c,
                Command::Ingest { .. }
                    | Command::Provision { .. }
                    | Command::Record { .. }
                    | Command::Seen { .. }
                    | Command::Resident { .. }
            )
        });
        if acks_only && self.settings.synchronous == Synchronous::Full {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
            self.sync_lowered = true;
        } else if self.sync_lowered {
            // The last restore failed: nothing else commits until FULL is back.
            self.conn.pragma_update(None, "synchronous", "FULL")?;
            self.sync_lowered = false;
        }
        let result = self.write_group_tx(group);
        if self.sync_lowered && self.conn.pragma_update(None, "synchronous", "FULL").is_ok() {
            self.sync_lowered = false;
        }
        result
    }

    fn write_group_tx(&mut self, group: &[Command]) -> Result<Written, StoreError> {
        let ingested = || {
            group
                .iter()
                .filter_map(|c| match c {
                    Command::Ingest { readings, .. } => Some(readings),
                    _ => None,
                })
                .flatten()
        };
        let mut new_devices: Vec<DeviceAddress> = ingested()
            .map(|r| r.device)
            .filter(|d| !self.vocab.knows_device(d))
            .collect();
        if !new_devices.is_empty() {
            new_devices.sort_unstable();
            new_devices.dedup();
            self.vocab.add_devices(&mut self.conn, &new_devices)?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut w = Written::default();
        // Sequence numbers are taken for good only when the commit succeeds; a
        // rolled-back group leaves nothing that used them.
        let mut next_seq = self.next_seq;
        let mut unsynced = self.unsynced_since;
        {
            let mut batch = Batch::new(&tx, self.prefix)?;
            // Vital signs first, then room data, so that each class's readings of
            // this commit have consecutive sequence numbers: one outbox range each.
            for class in [Class::Vital, Class::Room] {
                let mut run: Option<(i64, i64)> = None;
                let readings = group
                    .iter()
                    .filter_map(|c| match c {
                        Command::Ingest { readings, .. } => Some(readings),
                        _ => None,
                    })
                    .flatten()
                    .filter(|r| Class::of(r.quantity) == class);
                for r in readings {
                    let codes = self.vocab.codes(r).ok_or_else(|| {
                        StoreError::UnknownWord(format!(
                            "{:?}",
                            (r.device, r.quantity, r.unit, r.value)
                        ))
                    })?;
                    if next_seq > ids::MAX_SEQ {
                        return Err(StoreError::SequenceExhausted);
                    }
                    let seq = next_seq;
                    next_seq += 1;
                    batch.add(r, seq, codes)?;
                    if !r.clock_synced && unsynced.is_none_or(|u| seq < u) {
                        unsynced = Some(seq);
                    }
                    run = match run {
                        Some((first, last)) if last + 1 == seq => Some((first, seq)),
                        Some((first, last)) => {
                            outbox::add(&tx, class, first, last)?;
                            Some((seq, seq))
                        }
                        None => Some((seq, seq)),
                    };
                    w.readings += 1;
                    w.bytes += limits::row_bytes(r);
                }
                if let Some((first, last)) = run {
                    outbox::add(&tx, class, first, last)?;
                }
            }
            for cmd in group {
                match cmd {
                    Command::Provision {
                        residents, devices, ..
                    } => super::registry::provision(&tx, residents, devices)?,
                    Command::Record { record, .. } => super::registry::write_record(&tx, record)?,
                    Command::Seen { seen, racp } => {
                        super::registry::write_seen(&tx, seen)?;
                        super::registry::write_racp(&tx, racp)?;
                    }
                    Command::Ingest {
                        readings,
                        entered: Some(e),
                        ..
                    } => write_entered(&tx, readings, e)?,
                    Command::Ack { lease, .. } => {
                        if let Some(held) = self.leases.get(&lease.0) {
                            let (rows, bytes) = delete_from_outbox(&tx, held)?;
                            w.acked_readings += rows;
                            w.acked_bytes += bytes;
                        }
                    }
                    _ => {}
                }
            }
            batch.finish(&tx)?;
        }
        tx.commit()?;
        w.committed = true;
        self.next_seq = next_seq;
        self.unsynced_since = unsynced;
        Ok(w)
    }

    /// Moves the times of this run's readings stamped while the clock was not
    /// synchronised by the clock's step, marks them corrected, and moves their
    /// `latest` rows with them (only where the row still shows that reading).
    /// A device time (`measured_at`) within [`crate::model::CLOCK_TOLERANCE`]
    /// of our wrong clock agreed with it (a device set from the gateway) and
    /// moves with it; one further off is the device's own clock and stays.
    /// Readings of an earlier run stay marked unsynchronised: the boot clock
    /// they were stamped against is gone.
    fn correct_clock(&mut self, delta_ms: i64) -> Result<u64, StoreError> {
        const TOLERANCE_MS: i64 = crate::model::CLOCK_TOLERANCE.as_millis() as i64;
        let Some(since) = self.unsynced_since else {
            return Ok(0);
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let latest: Vec<(String, String, Vec<u8>, i64)> = tx
            .prepare("SELECT subject, quantity, reading_id, taken_at_ms FROM latest")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        {
            let mut row = tx.prepare_cached(
                "SELECT received_at_ms FROM readings WHERE seq = ?1 AND clock_synced = 0",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE latest SET taken_at_ms = ?3 WHERE subject = ?1 AND quantity = ?2",
            )?;
            for (subject, quantity, id, taken) in latest {
                let Some(seq) = ids::seq_of(&self.prefix, &id) else {
                    continue;
                };
                if seq < since {
                    continue;
                }
                let received: Option<i64> = row.query_row([seq], |r| r.get(0)).optional()?;
                if received.is_some_and(|r| (taken - r).abs() <= TOLERANCE_MS) {
                    update.execute(params![subject, quantity, taken.saturating_add(delta_ms)])?;
                }
            }
        }
        let n = tx.execute(
            "UPDATE readings SET received_at_ms = received_at_ms + ?1,
                                 measured_offset_ms = CASE WHEN abs(measured_offset_ms) <= ?3
                                     THEN measured_offset_ms ELSE measured_offset_ms - ?1 END,
                                 clock_synced = 2
             WHERE seq >= ?2 AND clock_synced = 0",
            params![delta_ms, since, TOLERANCE_MS],
        )?;
        // Devices last heard and assignments made in this run before the step
        // were stamped by the same wrong clock: between this run's start and
        // now, both by it. (The alert stage moves the alerts: the alert book
        // counts its own changes.)
        let old_now = Timestamp::now().unix_ms().saturating_sub(delta_ms);
        for (table, column) in [
            ("devices", "last_seen_ms"),
            ("devices", "assigned_at_ms"),
            ("device_assignments", "from_ms"),
        ] {
            tx.execute(
                &format!(
                    "UPDATE {table} SET {column} = {column} + ?1 WHERE {column} BETWEEN ?2 AND ?3"
                ),
                params![delta_ms, self.started_ms, old_now],
            )?;
        }
        tx.commit()?;
        self.unsynced_since = None;
        // The overview's cache is keyed on commits: this one changed `latest`.
        self.stats.commits.fetch_add(1, Ordering::Release);
        self.stats.changed.notify_waiters();
        Ok(n as u64)
    }

    /// Leases up to `max` readings: vital before room, oldest first, skipping
    /// readings already leased. Reads only the outbox's ranges, never a reading:
    /// the leaser reads the rows itself ([`super::lease_read`]).
    #[allow(
        clippy::indexing_slicing,
        reason = "slot(class) is 0 or 1, the length of cursor and leased"
    )]
    fn lease(&mut self, max: usize) -> Result<Option<LeaseRuns>, StoreError> {
        let mut runs = Vec::new();
        let mut count = 0usize;
        for class in [Class::Vital, Class::Room] {
            if count >= max {
                break;
            }
            let s = slot(class);
            let mut q = self.conn.prepare_cached(&outbox::ranges_from_sql(class))?;
            let mut rows = q.query([self.cursor[s]])?;
            'ranges: while count < max {
                let Some(row) = rows.next()? else { break };
                let (first, last): (i64, i64) = (row.get(0)?, row.get(1)?);
                let from = first.max(self.cursor[s]);
                if from > last {
                    continue;
                }
                for (a, b) in unleased(&self.leased[s], from, last) {
                    let room = u64::try_from(max - count).unwrap_or(u64::MAX);
                    let take = u64::try_from(b - a + 1).unwrap_or(0).min(room);
                    let end = a + i64::try_from(take).unwrap_or(0) - 1;
                    runs.push((class, a, end));
                    count += usize::try_from(take).unwrap_or(0);
                    self.cursor[s] = end + 1;
                    if count >= max {
                        break 'ranges;
                    }
                }
                self.cursor[s] = last + 1;
            }
        }
        if runs.is_empty() {
            return Ok(None);
        }
        let id = self.next_lease;
        self.next_lease += 1;
        for &(class, a, b) in &runs {
            self.leased[slot(class)].insert(a, b);
        }
        self.leases.insert(
            id,
            Held {
                runs: runs.clone(),
                read: None,
            },
        );
        Ok(Some(LeaseRuns {
            id: LeaseId(id),
            runs,
        }))
    }

    /// The leaser has read a lease: keep its count and bytes for the ack, and
    /// take the rows it could not read out of it (they stay in the outbox, past
    /// the cursor, as if never leased). A lease with nothing readable is dropped.
    #[allow(
        clippy::indexing_slicing,
        reason = "slot(class) is 0 or 1, the length of cursor and leased"
    )]
    fn lease_read(&mut self, report: ReadReport) {
        let Some(held) = self.leases.get_mut(&report.lease.0) else {
            return;
        };
        for (class, seq) in report.unreadable {
            let leased = &mut self.leased[slot(class)];
            let Some(i) = held
                .runs
                .iter()
                .position(|&(c, a, b)| c == class && a <= seq && seq <= b)
            else {
                continue;
            };
            let (_, a, b) = held.runs.remove(i);
            leased.remove(&a);
            let mut at = i;
            for (x, y) in [(a, seq - 1), (seq + 1, b)] {
                if x <= y {
                    held.runs.insert(at, (class, x, y));
                    leased.insert(x, y);
                    at += 1;
                }
            }
        }
        if report.readings == 0 {
            if let Some(held) = self.leases.remove(&report.lease.0) {
                for (class, first, _) in held.runs {
                    self.leased[slot(class)].remove(&first);
                }
            }
            return;
        }
        held.read = Some((report.readings, report.bytes));
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "slot(class) is 0 or 1, the length of cursor and leased"
    )]
    fn release(&mut self, lease: LeaseId) -> Result<(), StoreError> {
        let held = self
            .leases
            .remove(&lease.0)
            .ok_or(StoreError::UnknownLease(lease.0))?;
        for (class, first, _) in held.runs {
            self.leased[slot(class)].remove(&first);
            let c = &mut self.cursor[slot(class)];
            *c = (*c).min(first);
        }
        Ok(())
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "slot(class) is 0 or 1, the length of cursor and leased"
    )]
    fn release_all(&mut self) {
        self.leases.clear();
        self.leased = [BTreeMap::new(), BTreeMap::new()];
        self.cursor = [0, 0];
        // Held readings stay set aside (they are not leases).
        for (runs, _) in &self.held {
            for &(class, a, b) in runs {
                self.leased[slot(class)].insert(a, b);
            }
        }
    }

    /// Every lease but those in `keep` back to waiting (held readings stay held).
    fn release_all_but(&mut self, keep: &[LeaseId]) {
        let others: Vec<u64> = self
            .leases
            .keys()
            .copied()
            .filter(|id| !keep.contains(&LeaseId(*id)))
            .collect();
        for id in others {
            let _ = self.release(LeaseId(id));
        }
    }

    /// A message of `lease` was refused by the broker: release the lease, or
    /// hold its runs once the readings at its head were refused `hold_after`
    /// times in a row.
    fn refuse(&mut self, lease: LeaseId, hold_after: u32) -> Result<super::Refused, StoreError> {
        let head = {
            let held = self
                .leases
                .get(&lease.0)
                .ok_or(StoreError::UnknownLease(lease.0))?;
            held.runs.first().map(|&(class, a, _)| (class, a))
        };
        let refusals = match head {
            Some(h) => {
                let n = self.refusals.entry(h).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            None => 1,
        };
        let hold = refusals >= hold_after.max(1);
        if hold {
            if let Some(h) = head {
                self.refusals.remove(&h);
            }
            // The runs stay in `leased`: no lease takes them until retry_held.
            if let Some(held) = self.leases.remove(&lease.0) {
                let readings = held.read.map_or_else(
                    || {
                        held.runs
                            .iter()
                            .map(|&(_, a, b)| u64::try_from(b - a + 1).unwrap_or(0))
                            .sum()
                    },
                    |(n, _)| n,
                );
                self.held.push((held.runs, readings));
            }
        } else {
            self.release(lease)?;
        }
        Ok(super::Refused {
            held: hold,
            refusals,
            held_readings: self.held_readings(),
        })
    }

    fn held_readings(&self) -> u64 {
        self.held.iter().map(|(_, n)| n).sum()
    }

    /// Every held run back to waiting; returns the readings that were held.
    #[allow(
        clippy::indexing_slicing,
        reason = "slot(class) is 0 or 1, the length of cursor and leased"
    )]
    fn retry_held(&mut self) -> u64 {
        let n = self.held_readings();
        for (runs, _) in std::mem::take(&mut self.held) {
            for (class, first, _) in runs {
                self.leased[slot(class)].remove(&first);
                let c = &mut self.cursor[slot(class)];
                *c = (*c).min(first);
            }
        }
        self.refusals.clear();
        n
    }

    /// After a commit that added readings: evict while a cap on readings or bytes is
    /// exceeded, and make room when free disk space is below the floor. Evicts 1%
    /// beyond the cap so that a full outbox does not evict on every commit.
    fn enforce_caps(&mut self) -> Result<(), StoreError> {
        let max_rows = self.settings.max_outbox_readings;
        let max_bytes = self.settings.max_outbox_bytes;
        if self.stats.outbox_readings.load(Ordering::Relaxed) > max_rows {
            let target = max_rows - max_rows / 100;
            limits::evict_until(&mut self.conn, EvictionReason::Readings, &self.stats, |s| {
                let n = s.outbox_readings.load(Ordering::Relaxed);
                (n > target).then(|| {
                    usize::try_from(n - target)
                        .unwrap_or(usize::MAX)
                        .min(limits::BATCH)
                })
            })?;
        }
        if self.stats.outbox_bytes.load(Ordering::Relaxed) > max_bytes {
            let target = max_bytes - max_bytes / 100;
            limits::evict_until(&mut self.conn, EvictionReason::Bytes, &self.stats, |s| {
                let b = s.outbox_bytes.load(Ordering::Relaxed);
                let n = s.outbox_readings.load(Ordering::Relaxed).max(1);
                let per = (s.outbox_bytes.load(Ordering::Relaxed) / n).max(1);
                (b > target).then(|| {
                    usize::try_from((b - target).div_ceil(per))
                        .unwrap_or(usize::MAX)
                        .min(limits::BATCH)
                })
            })?;
        }
        self.check_disk()?;
        Ok(())
    }

    /// Below the free-space floor the database must not grow: free space inside
    /// the file (history, then room, then vital) until it has a reserve to reuse,
    /// in small transactions because each one needs WAL space itself, then hand
    /// the WAL's disk space back. Returns readings freed.
    fn check_disk(&mut self) -> Result<u64, StoreError> {
        let Some(free) = limits::free_disk_bytes(&self.settings.path) else {
            return Ok(0);
        };
        self.stats.free_disk_bytes.store(free, Ordering::Relaxed);
        let floor = self.settings.min_free_disk_bytes;
        if free >= floor {
            return Ok(0);
        }
        let reserve = (floor / 2).max(64 * 1024);
        if limits::reusable_bytes(&self.conn)? >= reserve {
            return Ok(0);
        }
        tracing::warn!(
            free_bytes = free,
            floor_bytes = floor,
            "free disk space below the floor; freeing space inside the database"
        );
        self.make_room(reserve)
    }

    fn make_room(&mut self, reserve: u64) -> Result<u64, StoreError> {
        let mut freed = 0;
        for _ in 0..MAKE_ROOM_ROUNDS {
            let n = limits::free_one_batch(&mut self.conn, DISK_BATCH, &self.stats)?;
            freed += n;
            if n == 0 || limits::reusable_bytes(&self.conn)? >= reserve {
                break;
            }
        }
        self.truncate_wal();
        Ok(freed)
    }

    /// Checkpoints and truncates the WAL, returning its disk space to the system.
    fn truncate_wal(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "cannot truncate the WAL");
        }
    }

    fn on_disk_full(&mut self, e: &StoreError) {
        if !self.stats.disk_full.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "ALARM: the disk is full; freeing history and room data, readings may be refused until space returns");
        }
        self.truncate_wal();
        let reserve = (self.settings.min_free_disk_bytes / 2).max(64 * 1024);
        match self.make_room(reserve) {
            Ok(n) => tracing::warn!(
                freed = n,
                "freed readings inside the database after disk full"
            ),
            Err(e) => tracing::error!(error = %e, "cannot free space inside the database"),
        }
    }

    /// [`Writer::maintain`], reporting a damaged database it meets; nothing
    /// to maintain in the rescue file.
    fn maintain_reported(&mut self, now: Timestamp) -> Result<MaintenanceReport, StoreError> {
        if self.rescue.is_some() {
            self.last_maintenance = Instant::now();
            return Ok(MaintenanceReport::default());
        }
        let result = self.maintain(now);
        if let Err(e) = &result {
            self.stats
                .report_if_damaged(&self.settings.path, "maintenance", e);
        }
        result
    }

    /// Retention of history, the age cap of the outbox, and the disk floor.
    fn maintain(&mut self, now: Timestamp) -> Result<MaintenanceReport, StoreError> {
        self.last_maintenance = Instant::now();
        let mut report = MaintenanceReport::default();
        let age_cutoff = now.saturating_sub(self.settings.max_outbox_age).unix_ms();
        let heartbeat = &self.heartbeat;
        report.evicted_for_age = limits::evict_older_than(
            &mut self.conn,
            age_cutoff,
            MAINTENANCE_BATCHES,
            &self.stats,
            &mut || heartbeat.beat(),
        )?;
        // Bounded: at most MAINTENANCE_BATCHES calls, each of bounded work; a
        // backlog of history to purge (after an outage) is worked off over the
        // next passes, from where this one stopped.
        let history_cutoff = now.saturating_sub(self.settings.history).unix_ms();
        for _ in 0..MAINTENANCE_BATCHES {
            let p = limits::purge_history(
                &mut self.conn,
                Some(history_cutoff),
                limits::BATCH,
                &mut self.purge_cursor,
                &self.stats,
            )?;
            self.heartbeat.beat();
            report.history_purged += p.readings;
            if p.swept {
                break;
            }
        }
        if report.history_purged > 0 {
            tracing::info!(
                purged = report.history_purged,
                "purged delivered readings older than the history window"
            );
        }
        report.freed_for_disk = self.check_disk()?;
        Ok(report)
    }
}

/// What one group wrote.
#[derive(Debug, Default)]
struct Written {
    /// A transaction was committed (a group of leases alone makes none).
    committed: bool,
    readings: u64,
    bytes: u64,
    acked_readings: u64,
    acked_bytes: u64,
}

/// The parts of `[from, to]` not in `leased` (disjoint runs `first → last`), in
/// order.
fn unleased(leased: &BTreeMap<i64, i64>, from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut pos = from;
    if let Some((_, &last)) = leased.range(..from).next_back() {
        pos = pos.max(last + 1);
    }
    for (&first, &last) in leased.range(from..=to) {
        if first > pos {
            out.push((pos, first - 1));
        }
        pos = pos.max(last + 1);
    }
    if pos <= to {
        out.push((pos, to));
    }
    out
}

/// Takes a lease's readings out of the outbox; returns the readings and bytes that
/// were still there (an eviction may have taken some first). The bytes are the
/// leaser's count, in proportion when some were gone.
fn delete_from_outbox(
    tx: &rusqlite::Transaction<'_>,
    held: &Held,
) -> Result<(u64, u64), StoreError> {
    let mut rows = 0u64;
    for class in [Class::Vital, Class::Room] {
        let runs: Vec<(i64, i64)> = held
            .runs
            .iter()
            .filter(|r| r.0 == class)
            .map(|&(_, a, b)| (a, b))
            .collect();
        if runs.is_empty() {
            continue;
        }
        let removed = outbox::remove(tx, class, &runs)?;
        rows += removed
            .iter()
            .map(|&(a, b)| u64::try_from(b - a + 1).unwrap_or(0))
            .sum::<u64>();
    }
    let bytes = match held.read {
        Some((read, bytes)) if read > 0 => {
            u64::try_from(u128::from(bytes) * u128::from(rows.min(read)) / u128::from(read))
                .unwrap_or(bytes)
        }
        _ => rows * limits::MIN_ROW_BYTES,
    };
    Ok((rows, bytes))
}

/// The derived rows of one group (latest value per subject and quantity, device
/// last-seen and battery), collapsed in memory so that a group of a thousand
/// readings from a few devices costs a few updates, not a thousand. The insert
/// statement is looked up once per group, not once per reading.
struct Batch<'a, 't> {
    insert: rusqlite::CachedStatement<'t>,
    /// The prefix of this run's reading ids (`ids.rs`).
    prefix: ids::Prefix,
    /// Keyed by subject, device (for unassigned readings only) and quantity,
    /// borrowed so that the hot path allocates nothing; with the reading's id.
    latest: HashMap<(&'a Subject, Option<DeviceAddress>, Quantity), (&'a Reading, ReadingId)>,
    seen: HashMap<DeviceAddress, i64>,
    battery: HashMap<DeviceAddress, i64>,
}

impl<'a, 't> Batch<'a, 't> {
    fn new(tx: &'t rusqlite::Transaction<'_>, prefix: ids::Prefix) -> Result<Self, StoreError> {
        Ok(Batch {
            insert: tx.prepare_cached(
                "INSERT INTO readings (seq, id, device_code, resident_id, room, quantity_code,
                                       value, status_code, unit_code, measured_offset_ms,
                                       received_at_ms, clock_synced)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?,
            prefix,
            latest: HashMap::new(),
            seen: HashMap::new(),
            battery: HashMap::new(),
        })
    }

    /// Inserts `r` as reading number `seq`. Its id is stored only when it came
    /// with one; otherwise it is derived from `seq` when read (`ids.rs`).
    fn add(&mut self, r: &'a Reading, seq: i64, codes: Codes) -> Result<(), StoreError> {
        let (resident, room) = match &r.subject {
            Subject::Resident(id) => (Some(id.0), None),
            Subject::Room(room) => (None, Some(room.as_str())),
            Subject::Unassigned => (None, None),
        };
        let (stored_id, id) = if r.id.is_unassigned() {
            (None, ids::derive(&self.prefix, seq))
        } else {
            (Some(&r.id.as_bytes()[..]), r.id)
        };
        let received = r.received_at.unix_ms();
        self.insert.execute(params![
            seq,
            stored_id,
            codes.device,
            resident,
            room,
            codes.quantity,
            r.value.number(),
            codes.status,
            codes.unit,
            // Wrapping both ways, so that any pair of times comes back exactly.
            r.measured_at.map(|m| m.unix_ms().wrapping_sub(received)),
            received,
            r.clock_synced,
        ])?;
        let device = matches!(r.subject, Subject::Unassigned).then_some(r.device);
        let key = (&r.subject, device, r.quantity);
        match self.latest.get(&key) {
            // By the trusted time: a device clock running fast never makes an
            // old value look newest (issue 15).
            Some((prev, _)) if prev.trusted_at() > r.trusted_at() => {}
            _ => {
                self.latest.insert(key, (r, id));
            }
        }
        let seen = self.seen.entry(r.device).or_insert(i64::MIN);
        *seen = (*seen).max(r.received_at.unix_ms());
        if r.quantity == Quantity::BatteryLevel
            && let Some(pct) = r.value.number()
        {
            self.battery.insert(r.device, pct.round() as i64);
        }
        Ok(())
    }

    fn finish(self, tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
        let mut latest = tx.prepare_cached(
            "INSERT INTO latest (subject, quantity, value, status, unit, taken_at_ms, device,
                                 reading_id, device_time_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (subject, quantity) DO UPDATE SET
                value = excluded.value, status = excluded.status, unit = excluded.unit,
                taken_at_ms = excluded.taken_at_ms, device = excluded.device,
                reading_id = excluded.reading_id, device_time_ms = excluded.device_time_ms
             WHERE excluded.taken_at_ms >= latest.taken_at_ms",
        )?;
        for ((subject, _, quantity), (r, id)) in &self.latest {
            latest.execute(params![
                subject_key(subject, &r.device),
                quantity.as_str(),
                r.value.number(),
                r.value.status(),
                r.unit.ucum(),
                r.trusted_at().unix_ms(),
                r.device.to_string(),
                &id.as_bytes()[..],
                r.measured_at.map(Timestamp::unix_ms),
            ])?;
        }
        let mut seen = tx.prepare_cached(
            "UPDATE devices SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?2) WHERE address = ?1",
        )?;
        for (device, ms) in &self.seen {
            seen.execute(params![device.to_string(), ms])?;
        }
        let mut battery =
            tx.prepare_cached("UPDATE devices SET battery_percent = ?2 WHERE address = ?1")?;
        for (device, pct) in &self.battery {
            battery.execute(params![device.to_string(), pct])?;
        }
        Ok(())
    }
}

/// Records who entered `readings` (their own ids, given by the producer).
fn write_entered(
    tx: &rusqlite::Transaction<'_>,
    readings: &[Reading],
    e: &super::EnteredBy,
) -> Result<(), StoreError> {
    let ids: Vec<String> = readings.iter().map(|r| r.id.to_string()).collect();
    tx.prepare_cached(
        "INSERT INTO observation_sets (resident_id, taken_at_ms, entered_by, entered_at_ms,
                                       reading_ids)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        e.resident_id,
        e.taken_at.unix_ms(),
        e.entered_by,
        e.entered_at.unix_ms(),
        ids.join(" ")
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_unleased(leased: &[(i64, i64)], from: i64, to: i64, want: &[(i64, i64)]) {
        let map: BTreeMap<i64, i64> = leased.iter().copied().collect();
        assert_eq!(
            unleased(&map, from, to),
            want,
            "{from}..={to} less {leased:?}"
        );
    }

    #[test]
    fn unleased_leaves_out_every_leased_run() {
        check_unleased(&[], 1, 10, &[(1, 10)]);
        check_unleased(&[(1, 10)], 1, 10, &[]);
        // A run that starts before the range and reaches into it.
        check_unleased(&[(1, 4)], 3, 10, &[(5, 10)]);
        // One that ends before it.
        check_unleased(&[(1, 2)], 3, 10, &[(3, 10)]);
        // Runs inside it, one reaching beyond.
        check_unleased(&[(4, 5), (7, 7), (9, 12)], 1, 10, &[(1, 3), (6, 6), (8, 8)]);
        // Adjacent runs of two leases.
        check_unleased(&[(1, 3), (4, 6)], 1, 8, &[(7, 8)]);
    }
}
