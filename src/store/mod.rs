//! The durable buffer: every reading is committed to SQLite before anything else
//! happens to it, and leaves the outbox only when the cloud has acknowledged it.
//!
//! One writer thread owns the only write connection and commits in groups (up to
//! `commit_max_readings` or `commit_max_delay_ms`), so that fsyncs per reading stay
//! low. A producer learns that its readings are stored only once their transaction
//! has committed. The uplink leases batches (vital signs first, oldest first), then
//! acks or releases them; leases live in the writer's memory only, so a restart
//! releases every lease by construction (at-least-once delivery; each reading keeps
//! its stable id so that the receiver drops duplicates). The outbox is bounded by
//! rows, bytes, age and a floor of free disk space; evictions take room data before
//! vital signs and are always counted and logged. Readers (the web page) use their
//! own read-only connections, off the async executor.

pub mod accounts;
mod alert_book;
#[doc(hidden)]
pub mod crash_child;
mod ids;
mod lease_read;
mod limits;
mod outbox;
mod reader;
mod recover;
mod registry;
mod schema;
mod vocab;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{StoreConfig, Synchronous};
use crate::model::{Device, Reading, Resident, ResidentId, Subject, Timestamp};

pub use alert_book::{
    AlertBook, AlertChange, AlertChangeKind, AlertRecord, OpenAlerts, SyncReport,
};
pub use lease_read::{LeaseReader, LeaseRuns, LeaseSink};
pub use limits::free_disk_bytes;
pub use limits::{EvictionReason, MaintenanceReport};
pub use outbox::Class;
pub use reader::{
    HistoryValue, LatestValue, Reader, ResidentOverview, ResidentRecord, StatsSnapshot,
    unsent_readings,
};
pub use registry::{
    DeviceState, PairingRecord, RegistryChange, Seen, StoredKey, StoredPairingEvent,
};
pub use schema::VERSION as SCHEMA_VERSION;
#[doc(hidden)]
pub use schema::migrate_to;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (disk full, I/O error, corrupt file).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer carehub.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    /// The writer thread has stopped; nothing more can be stored.
    #[error("the store writer has stopped")]
    Closed,
    /// The directory for the database could not be made.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `PRAGMA integrity_check` did not say "ok".
    #[error("integrity check failed: {0}")]
    Corrupt(String),
    /// A corrupt database could not be moved aside.
    #[error("cannot move the corrupt database {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An ack or release named a lease the store does not hold (already acked or
    /// released, or issued before a restart or `release_all`).
    #[error("no such lease {0}")]
    UnknownLease(u64),
    /// A reading's quantity, unit or status has no code: this build's `ALL` lists
    /// in `model` miss a word (a bug; the group is not stored).
    #[error("no code for the words of a reading: {0}")]
    UnknownWord(String),
    /// The filesystem is full: the group was not stored. The store keeps running
    /// and frees what it may (history, then room data).
    #[error("the disk is full; readings not stored: {0}")]
    DiskFull(rusqlite::Error),
    /// The blocking task reading a lease failed (a bug; the lease is released).
    #[error("the lease reading task failed: {0}")]
    ReadTask(String),
    /// Reading ids hold 48 bits of sequence number and this database has used
    /// them all (at a million readings a second, after nine years): start a new
    /// database.
    #[error("the database has used every sequence number a reading id can hold")]
    SequenceExhausted,
    /// No alert has this id.
    #[error("no such alert {0}")]
    UnknownAlert(i64),
    /// No current resident has this id.
    #[error("no such resident {0}")]
    UnknownResident(i64),
    /// The alert book was opened on a database the store has not migrated yet.
    #[error("database schema version {found} is older than {needed}; open the store first")]
    NotMigrated { found: i64, needed: i64 },
    /// Another resident already has this pseudonymous reference.
    #[error("the reference {0} is already used by another resident")]
    ReferenceTaken(String),
    /// No resident has this id (or it is archived, for a change that needs it not to be).
    #[error("no resident {0}")]
    NoSuchResident(i64),
    /// The resident still has devices assigned; archiving would leave their
    /// readings attributed to someone who has left.
    #[error("resident {id} still has {devices} device(s) assigned")]
    DevicesAssigned { id: i64, devices: u64 },
}

impl StoreError {
    /// Whether this error says the file is not a sound SQLite database (its
    /// pages are damaged, or it is not a database at all), as opposed to a
    /// refusal that may pass (busy, locked, a full disk, an I/O error, a
    /// constraint). Only this kind is mended by moving the file aside.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt(_) => true,
            StoreError::Sqlite(e) | StoreError::DiskFull(e) => sqlite_is_corruption(e),
            _ => false,
        }
    }
}

/// Whether SQLite said the file is damaged: `SQLITE_CORRUPT` (reads report it
/// as "database disk image is malformed"), `SQLITE_NOTADB`, or one of their
/// extended codes. A busy, locked, full or failing disk is not corruption.
pub(crate) fn sqlite_is_corruption(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
        ),
        _ => false,
    }
}

/// Identifies one lease handed to the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u64);

/// A batch of readings handed out for delivery; ack or release it by `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub id: LeaseId,
    pub readings: Vec<LeasedReading>,
}

/// One reading in a lease, with the pseudonymous reference of its resident (the
/// display name never leaves the gateway).
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedReading {
    pub reading: Reading,
    pub resident_reference: Option<String>,
}

type Reply<T> = oneshot::Sender<Result<T, Arc<StoreError>>>;

/// Who entered a set of observations by hand, and for whom (`observation_sets`).
#[derive(Debug, Clone, PartialEq)]
pub struct EnteredBy {
    pub resident_id: i64,
    pub taken_at: Timestamp,
    /// `staff:<username>` of the signed-in account.
    pub entered_by: String,
    pub entered_at: Timestamp,
}

/// What became of a refused lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The lease's readings are now held (else released, to be tried again).
    pub held: bool,
    /// Refusals in a row of the readings at the lease's head, this one included.
    pub refusals: u32,
    /// Readings held in all, after this.
    pub held_readings: u64,
}

/// A request to the writer thread.
#[derive(Debug)]
pub(crate) enum Command {
    Ingest {
        readings: Vec<Reading>,
        /// Who entered these readings by hand, recorded in the same transaction.
        entered: Option<EnteredBy>,
        committed: Option<Reply<()>>,
    },
    Provision {
        residents: Vec<Resident>,
        devices: Vec<Device>,
        committed: Reply<()>,
    },
    /// A lease as runs of sequence numbers; the leaser reads the rows itself.
    Lease {
        max: usize,
        reply: Reply<Option<LeaseRuns>>,
    },
    /// What reading a lease found; sent before its ack, on the same channel.
    LeaseRead {
        report: lease_read::ReadReport,
    },
    Ack {
        lease: LeaseId,
        reply: Reply<()>,
    },
    Release {
        lease: LeaseId,
        reply: Reply<()>,
    },
    /// Every lease back to waiting except those in `keep` (leases waiting
    /// for end-to-end receipts).
    ReleaseAll {
        keep: Vec<LeaseId>,
        reply: Reply<()>,
    },
    /// The broker refused a message of this lease (MQTT 5 reason code): release
    /// it, or hold its readings once refused `hold_after` times in a row.
    Refuse {
        lease: LeaseId,
        hold_after: u32,
        reply: Reply<Refused>,
    },
    /// Every held reading back to waiting.
    RetryHeld {
        reply: Reply<u64>,
    },
    Maintain {
        now: Timestamp,
        reply: Reply<MaintenanceReport>,
    },
    /// The wall clock stepped by `delta_ms`: the readings of this run stamped
    /// before it while the clock was not synchronised are corrected.
    ClockStepped {
        delta_ms: i64,
        reply: Reply<u64>,
    },
    /// One event of the pairing record and its registry change.
    Record {
        record: PairingRecord,
        committed: Option<Reply<()>>,
    },
    /// Signal strength and last-seen of registered devices.
    Seen {
        seen: Vec<Seen>,
        /// How far each meter's records are filed (queued after the readings
        /// they came with).
        racp: Vec<crate::sensor::racp::RacpSave>,
    },
    /// Adds, edits or archives a resident, in a transaction of its own so that a
    /// refused change (a reference already taken) never fails a group of readings.
    Resident {
        change: ResidentChange,
        reply: Reply<ResidentId>,
    },
}

/// A change staff make to the residents list (the web page and API).
#[derive(Debug, Clone, PartialEq)]
pub enum ResidentChange {
    /// A new resident; the store picks the id.
    Add {
        display_name: String,
        room: String,
        reference: String,
    },
    /// New name, room and reference for a resident who is not archived.
    Edit(Resident),
    /// Hides the resident from every page; the readings stay as history.
    Archive(ResidentId),
}

/// The record of a damaged database (`store_damage`, in the fresh file that
/// replaced it, so that it outlives the restart): found while running or by the
/// integrity check at start-up, and what became of its readings.
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptionAlarm {
    /// Where the bad file now lies, for a technician to inspect; `None` when the
    /// start-up check found the file sound after all (the damage was reported
    /// while running, then not found again).
    pub moved_to: Option<PathBuf>,
    pub reason: String,
    /// When the damage was first found (while running, or at start-up).
    pub at: Timestamp,
    /// Undelivered readings copied out of the damaged file into the fresh one.
    pub recovered: u64,
    /// Readings received after the damage was found, kept in the rescue file
    /// and brought into the fresh one.
    pub rescued: u64,
    /// Outbox readings (or whole ranges, counted as one) that could not be read
    /// back: they stay only in the damaged file.
    pub unreadable: u64,
}

/// Damage found while running: the daemon stops on purpose so that the
/// start-up check replaces the file (docs/decisions/0015).
#[derive(Debug, Clone, PartialEq)]
pub struct DamageFound {
    pub at: Timestamp,
    /// Who met it (`"commit"`, `"lease read"`, `"read"`, `"maintenance"`) and
    /// SQLite's words.
    pub reason: String,
}

/// Counters the writer keeps for status pages and metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Woken after every commit that stored readings or changed the registry,
    /// so that whoever shows them (the pages' event watcher) need not poll.
    pub changed: tokio::sync::Notify,
    pub readings_committed: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// Unix ms of the last successful commit; 0 before the first.
    pub last_commit_ms: AtomicI64,
    /// Readings waiting in the outbox (leased or not).
    pub outbox_readings: AtomicU64,
    /// Estimated bytes of reading data waiting in the outbox.
    pub outbox_bytes: AtomicU64,
    /// The last commit failed because the filesystem was full.
    pub disk_full: AtomicBool,
    /// The writer is trying a commit again after I/O errors from the storage
    /// (a failed write or sync); cleared when a commit succeeds.
    pub storage_failing: AtomicBool,
    /// Free bytes on the database's filesystem at the last check.
    pub free_disk_bytes: AtomicU64,
    /// Evicted readings since the database was made, by reason and class
    /// ([`EvictionReason::index`]); persisted in the `evictions` table.
    pub evicted: [AtomicU64; limits::EVICTION_SLOTS],
    /// Delivered readings purged from history (retention or disk pressure).
    pub history_purged: AtomicU64,
    /// The newest record of a damaged database (`store_damage`), loaded at
    /// every start: it stays visible after the restart that replaced the file.
    pub corruption: Mutex<Option<CorruptionAlarm>>,
    /// Damage found while running (set once; the daemon then stops).
    pub damage: Mutex<Option<DamageFound>>,
    /// This start replaced a damaged database (or brought in a rescue file):
    /// the storage has just failed, whatever the age of the record.
    pub replaced_at_start: AtomicBool,
    /// Cancelled when damage is found while running: the daemon's signal to
    /// stop so that systemd restarts it into the start-up check.
    pub damage_found: tokio_util::sync::CancellationToken,
    /// Commits that changed residents or devices (provisioning, pairing record,
    /// sightings, resident changes): the web pages' live updates watch it.
    pub registry_changes: AtomicU64,
    /// Changes to the alert book (raised, cleared, resolved, announced again,
    /// acknowledged): the pages showing alerts watch it, so that an alert
    /// reaches them without waiting for the next reading.
    pub alert_changes: AtomicU64,
}

impl StoreStats {
    /// The alert book changed: counted, and the watchers of [`Self::changed`]
    /// (the pages' event stream) woken.
    pub fn note_alerts_changed(&self) {
        self.alert_changes.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Reports `e` if it says the file is damaged: records when and how (in
    /// memory and in the marker file beside the database, which the next
    /// start-up reads, since the database itself may not be readable), logs
    /// the alarm once and tells the daemon to stop. Returns whether it was
    /// corruption. Blocking (one small file write): call it from the writer
    /// thread or a blocking task.
    pub(crate) fn report_if_damaged(&self, db: &Path, during: &str, e: &StoreError) -> bool {
        if !e.is_corruption() {
            return false;
        }
        let mut damage = self.damage.lock().unwrap_or_else(PoisonError::into_inner);
        if damage.is_none() {
            let found = DamageFound {
                at: Timestamp::now(),
                reason: format!("{during}: {e}"),
            };
            tracing::error!(
                error = %e,
                during,
                db = %db.display(),
                "ALARM: the database file is damaged; carehub stops so that its start-up check moves it aside and starts a fresh one (systemd restarts it)"
            );
            if let Err(err) = recover::write_marker(db, &found) {
                tracing::error!(error = %err, "cannot write the damage marker beside the database");
            }
            *damage = Some(found);
            self.damage_found.cancel();
        }
        true
    }

    /// Readings and bytes that left the outbox (acked or evicted). Never wraps
    /// below zero: the counters are estimates kept beside the database.
    pub(crate) fn outbox_left(&self, rows: u64, bytes: u64) {
        self.outbox_readings.fetch_sub(
            rows.min(self.outbox_readings.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.outbox_bytes.fetch_sub(
            bytes.min(self.outbox_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }

    pub fn last_commit(&self) -> Option<Timestamp> {
        match self.last_commit_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Timestamp::from_unix_ms(ms)),
        }
    }

    /// Evicted readings for one reason and class.
    #[allow(
        clippy::indexing_slicing,
        reason = "EvictionReason::index is below the length of evicted by construction"
    )]
    pub fn evicted(&self, reason: EvictionReason, class: Class) -> u64 {
        self.evicted[reason.index(class)].load(Ordering::Relaxed)
    }
}

/// The sending side of the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    stats: Arc<StoreStats>,
    path: Arc<PathBuf>,
    /// The leaser's read-only connection, opened at the first lease. There is
    /// one leaser (the uplink), so nobody waits for it.
    lease_reader: Arc<Mutex<Option<LeaseReader>>>,
}

impl StoreHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Arc<StoreError>> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(make(done))
            .await
            .map_err(|_| Arc::new(StoreError::Closed))?;
        wait.await.map_err(|_| Arc::new(StoreError::Closed))?
    }

    /// Stores `readings` and returns once their transaction has committed.
    pub async fn ingest(&self, readings: Vec<Reading>) -> Result<(), Arc<StoreError>> {
        self.call(|done| Command::Ingest {
            readings,
            entered: None,
            committed: Some(done),
        })
        .await
    }

    /// Stores a set of observations staff entered, with the record of who
    /// entered it, in one transaction: never the readings without who entered
    /// them. Returns once committed.
    pub async fn ingest_entered(
        &self,
        readings: Vec<Reading>,
        entered: EnteredBy,
    ) -> Result<(), Arc<StoreError>> {
        self.call(|done| Command::Ingest {
            readings,
            entered: Some(entered),
            committed: Some(done),
        })
        .await
    }

    /// Adds, edits or archives a resident; returns the resident's id once committed.
    pub async fn change_resident(
        &self,
        change: ResidentChange,
    ) -> Result<ResidentId, Arc<StoreError>> {
        self.call(|reply| Command::Resident { change, reply }).await
    }

    /// Queues `readings` without waiting for the commit (waits only for room in
    /// the queue). For producers that have nobody to acknowledge to.
    pub async fn ingest_nowait(&self, readings: Vec<Reading>) -> Result<(), StoreError> {
        self.tx
            .send(Command::Ingest {
                readings,
                entered: None,
                committed: None,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// The wall clock stepped by `delta_ms` (NTP set it): the readings this run
    /// stored while the clock was not synchronised, every one stamped before
    /// the step, get their times moved by it and are marked corrected
    /// (`clock_synced = 2`); so does their `latest` row. Returns how many.
    /// Readings stamped after the step must be handed over after this returns.
    pub async fn clock_stepped(&self, delta_ms: i64) -> Result<u64, Arc<StoreError>> {
        self.call(|reply| Command::ClockStepped { delta_ms, reply })
            .await
    }

    /// Records residents and devices (insert or update), e.g. the simulator's roster.
    pub async fn provision(
        &self,
        residents: Vec<Resident>,
        devices: Vec<Device>,
    ) -> Result<(), Arc<StoreError>> {
        self.call(|committed| Command::Provision {
            residents,
            devices,
            committed,
        })
        .await
    }

    /// Records a pairing event and its registry change; returns once committed,
    /// so the caller can let the change take effect knowing a restart keeps it.
    pub async fn record(&self, record: PairingRecord) -> Result<(), Arc<StoreError>> {
        self.call(|committed| Command::Record {
            record,
            committed: Some(committed),
        })
        .await
    }

    /// A handle for events recorded from synchronous code (the BlueZ agent, the
    /// pairing policy). It does not keep the writer alive: shutdown still ends
    /// when the stages holding real handles have stopped.
    pub fn event_sink(&self) -> EventSink {
        EventSink {
            tx: self.tx.downgrade(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Leases up to `max` readings not already leased: vital signs before room data,
    /// oldest first. `Ok(None)` when nothing is waiting.
    pub async fn lease(&self, max: usize) -> Result<Option<Lease>, Arc<StoreError>> {
        Ok(self
            .lease_into(max, Vec::new())
            .await?
            .map(|(id, readings, _)| Lease { id, readings }))
    }

    /// Leases up to `max` readings like [`StoreHandle::lease`] and reads them
    /// into `sink` on the leaser's own read-only connection, in a blocking
    /// thread: the writer thread only picks the sequence numbers. Returns the
    /// lease, the sink and how many readings went into it (at least one);
    /// `Ok(None)` when nothing readable is waiting.
    pub async fn lease_into<S: LeaseSink>(
        &self,
        max: usize,
        mut sink: S,
    ) -> Result<Option<(LeaseId, S, u64)>, Arc<StoreError>> {
        loop {
            let Some(runs) = self.call(|reply| Command::Lease { max, reply }).await? else {
                return Ok(None);
            };
            let id = runs.id;
            let reader = self.lease_reader.clone();
            let path = self.path.clone();
            let stats = self.stats.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut reader = reader.lock().unwrap_or_else(PoisonError::into_inner);
                let read = (|| {
                    let reader = match &mut *reader {
                        Some(r) => r,
                        None => reader.insert(LeaseReader::open(&path)?),
                    };
                    reader.read(&runs, &mut sink)
                })();
                match read {
                    Ok(report) => Ok::<_, StoreError>((report, sink)),
                    Err(e) => {
                        // The outbox's pages refuse: the daemon stops to have the
                        // file replaced; the readings stay undelivered.
                        stats.report_if_damaged(&path, "lease read", &e);
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|e| StoreError::ReadTask(e.to_string()));
            let (report, back) = match read.and_then(|r| r) {
                Ok(done) => done,
                Err(e) => {
                    // Make the lease leasable again; if that fails too, the
                    // uplink's release_all at its next connection does it.
                    let _ = self.release(id).await;
                    return Err(Arc::new(e));
                }
            };
            sink = back;
            let readings = report.readings;
            self.tx
                .send(Command::LeaseRead { report })
                .await
                .map_err(|_| Arc::new(StoreError::Closed))?;
            if readings > 0 {
                return Ok(Some((id, sink, readings)));
            }
            // Nothing readable in it (rows of a newer build, left in place, or
            // evicted meanwhile): the writer has dropped that lease and leases
            // past it.
        }
    }

    /// The cloud has them: delete from the outbox, keep in local history.
    pub async fn ack(&self, lease: LeaseId) -> Result<(), Arc<StoreError>> {
        self.call(|reply| Command::Ack { lease, reply }).await
    }

    /// Not delivered: make them leasable again.
    pub async fn release(&self, lease: LeaseId) -> Result<(), Arc<StoreError>> {
        self.call(|reply| Command::Release { lease, reply }).await
    }

    /// The broker refused a message of `lease`: the lease is released, or, once
    /// the same readings were refused `hold_after` times in a row, held: kept in
    /// the outbox but not leased again until [`StoreHandle::retry_held`], so
    /// that the readings behind them still go.
    pub async fn refuse(
        &self,
        lease: LeaseId,
        hold_after: u32,
    ) -> Result<Refused, Arc<StoreError>> {
        self.call(|reply| Command::Refuse {
            lease,
            hold_after,
            reply,
        })
        .await
    }

    /// Makes every held reading leasable again; returns how many were held.
    pub async fn retry_held(&self) -> Result<u64, Arc<StoreError>> {
        self.call(|reply| Command::RetryHeld { reply }).await
    }

    /// On reconnect and at start-up: every lease back to waiting (held readings
    /// stay held).
    pub async fn release_all(&self) -> Result<(), Arc<StoreError>> {
        self.release_all_but(Vec::new()).await
    }

    /// Like [`StoreHandle::release_all`], but the leases in `keep` stay leased
    /// (in receipts mode, those the broker has and whose receipt is awaited).
    pub async fn release_all_but(&self, keep: Vec<LeaseId>) -> Result<(), Arc<StoreError>> {
        self.call(|reply| Command::ReleaseAll { keep, reply }).await
    }

    /// Runs retention, the age cap and the disk floor now, as if the time were
    /// `now` (the writer also runs them every [`MAINTENANCE_EVERY`]).
    pub async fn maintain(&self, now: Timestamp) -> Result<MaintenanceReport, Arc<StoreError>> {
        self.call(|reply| Command::Maintain { now, reply }).await
    }

    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }
}

/// Queues pairing events and sightings for the writer without waiting.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::WeakSender<Command>,
    runtime: Option<tokio::runtime::Handle>,
}

impl EventSink {
    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        let tx = self.tx.upgrade().ok_or(StoreError::Closed)?;
        match tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
            // The queue is full of readings: wait for room off this thread rather
            // than drop a record of who paired what.
            Err(mpsc::error::TrySendError::Full(cmd)) => match &self.runtime {
                Some(rt) => {
                    rt.spawn(async move {
                        if tx.send(cmd).await.is_err() {
                            tracing::error!("store closed: a pairing event was not recorded");
                        }
                    });
                    Ok(())
                }
                None => Err(StoreError::Closed),
            },
        }
    }

    /// Queues one event of the pairing record (not waiting for the commit).
    pub fn record(&self, record: PairingRecord) -> Result<(), StoreError> {
        self.send(Command::Record {
            record,
            committed: None,
        })
    }

    /// Records one event and waits until it is committed, for changes that must
    /// be durable before they take effect (a bond the page will show).
    pub async fn record_committed(&self, record: PairingRecord) -> Result<(), Arc<StoreError>> {
        let tx = self.tx.upgrade().ok_or(Arc::new(StoreError::Closed))?;
        let (done, wait) = oneshot::channel();
        tx.send(Command::Record {
            record,
            committed: Some(done),
        })
        .await
        .map_err(|_| Arc::new(StoreError::Closed))?;
        drop(tx);
        wait.await.map_err(|_| Arc::new(StoreError::Closed))?
    }

    /// Queues what the radio heard from registered devices.
    pub fn seen(&self, seen: Vec<Seen>) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.send(Command::Seen {
            seen,
            racp: Vec::new(),
        })
    }

    /// Queues how far each meter's records are filed (and a renumbering
    /// found). Queued after the readings of those records, it is committed
    /// with them or after them, never before.
    pub fn racp_filed(&self, racp: Vec<crate::sensor::racp::RacpSave>) -> Result<(), StoreError> {
        if racp.is_empty() {
            return Ok(());
        }
        self.send(Command::Seen {
            seen: Vec::new(),
            racp,
        })
    }
}

/// The page cache of the writer's connection, in KiB: SQLite's default size,
/// said here so that the daemon's whole budget is in one place.
pub(crate) const WRITER_CACHE_KIB: i64 = 2048;

/// The page cache of every other connection (the readers for the pages and
/// alerts, the uplink's lease reader, the alert book, accounts and audit), in
/// KiB. Each would otherwise grow to SQLite's default 2 MiB as it touches
/// pages: with nine connections, up to 18 MiB of heap over a long run, more
/// than the gateway's whole memory budget (docs/reliability.md, memory). They
/// read recent rows and small tables; the writer's cache holds the hot pages.
pub(crate) const SIDE_CACHE_KIB: i64 = 256;

/// All of SQLite's heap in the process, in KiB: a soft limit (`PRAGMA
/// soft_heap_limit`, set when the writer opens). Past it, no allocation fails:
/// each connection's page cache reuses its own least recently used pages
/// instead of growing. Schemas and statements of the nine connections take
/// about 0.75 MiB; the rest is page cache, which otherwise fills towards the
/// bounds above for an hour as the file grows (docs/reliability.md, memory).
/// A page not cached is read again from the operating system's cache.
pub(crate) const SQLITE_HEAP_KIB: i64 = 1024;

/// SQLite's heap in this process now, in bytes (every connection's caches,
/// schemas and statements).
pub fn sqlite_heap_bytes() -> i64 {
    // SAFETY: sqlite3_memory_used reads a counter under SQLite's own mutex; it
    // takes no pointer and is safe to call from any thread at any time.
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}

/// `conn`'s page cache bound in KiB, as set by [`bound_memory`] (tests).
#[cfg(test)]
pub(crate) fn page_cache_kib(conn: &rusqlite::Connection) -> i64 {
    -conn
        .query_row("PRAGMA cache_size", [], |r| r.get::<_, i64>(0))
        .unwrap()
}

/// Each connection's lookaside (SQLite's own pool for its small allocations):
/// slot size in bytes and how many. SQLite's default sets 48 KiB aside in
/// every connection (30 slots of 1,200 bytes and 93 of 128 carved from
/// 1,200 × 40), written through at once: 430 KiB resident for the nine
/// connections. These 9,600 bytes make 6 large and 18 small slots; what does
/// not fit goes to malloc. The daemon's statements are prepared once and
/// cached, so parsing, which uses lookaside most, is rare.
pub(crate) const LOOKASIDE: (i32, i32) = (1200, 8);

/// Bounds `conn`'s memory: its page cache to `kib` KiB, its lookaside to
/// [`LOOKASIDE`]. Call it right after opening, before any statement.
pub(crate) fn bound_memory(conn: &rusqlite::Connection, kib: i64) -> rusqlite::Result<()> {
    let (size, count) = LOOKASIDE;
    // SAFETY: the handle is `conn`'s own and open; a null buffer asks SQLite
    // to allocate the lookaside itself; the two ints are what
    // SQLITE_DBCONFIG_LOOKASIDE takes after the buffer.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            size,
            count,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("setting the connection's lookaside".into()),
        ));
    }
    // A negative cache_size is a size in KiB, whatever the page size.
    conn.pragma_update(None, "cache_size", -kib)
}

/// How often the writer runs retention, the age cap and the disk check on its own.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// An open store: the writer's handle, a reader, and the thread to join on shutdown.
pub struct Store {
    pub handle: StoreHandle,
    pub reader: Reader,
    pub writer: std::thread::JoinHandle<()>,
}

/// Settings the writer needs, from `[store]`.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub path: PathBuf,
    pub commit_max_readings: usize,
    pub commit_max_delay: Duration,
    pub synchronous: Synchronous,
    pub max_outbox_readings: u64,
    pub max_outbox_bytes: u64,
    pub max_outbox_age: Duration,
    pub min_free_disk_bytes: u64,
    pub history: Duration,
}

impl StoreSettings {
    /// The defaults of `[store]` with the database at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        let mut s = StoreSettings::from(&StoreConfig::default());
        s.path = path.into();
        s
    }
}

const DAY: Duration = Duration::from_secs(86_400);
const MB: u64 = 1024 * 1024;

impl From<&StoreConfig> for StoreSettings {
    fn from(c: &StoreConfig) -> Self {
        StoreSettings {
            path: c.path.clone(),
            commit_max_readings: c.commit_max_readings,
            commit_max_delay: Duration::from_millis(c.commit_max_delay_ms),
            synchronous: c.synchronous,
            max_outbox_readings: c.max_outbox_readings,
            max_outbox_bytes: c.max_outbox_mb.saturating_mul(MB),
            max_outbox_age: DAY * c.max_outbox_age_days,
            min_free_disk_bytes: c.min_free_disk_mb.saturating_mul(MB),
            history: DAY * c.history_days,
        }
    }
}

impl Store {
    /// Opens (creating and migrating if needed) the database and starts the writer
    /// thread. A database that fails its integrity check is moved aside and a fresh
    /// one started, with an alarm in the stats; a database from a newer build is
    /// refused. Blocking: call it from start-up code or `spawn_blocking`.
    pub fn open(
        settings: StoreSettings,
        runtime: tokio::runtime::Handle,
        heartbeat: crate::system::health::Heartbeat,
    ) -> Result<Store, StoreError> {
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let stats = Arc::new(StoreStats::default());
        // Damage found while the last run was running: when and how.
        let marker = recover::read_marker(&settings.path);
        let (conn, moved_to) = match writer::open_write_connection(&settings) {
            Ok(conn) => (conn, None),
            Err(e) if e.is_corruption() => {
                let moved_to = move_aside(&settings.path)?;
                tracing::error!(error = %e, moved_to = %moved_to.display(), "ALARM: the database was corrupt; it was moved aside and a fresh one started");
                let conn = writer::open_write_connection(&settings)?;
                (conn, Some((moved_to, e.to_string())))
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel(256);
        let mut writer = writer::prepare(conn, settings.clone(), stats.clone(), heartbeat)?;
        let rescue = rescue_path(&settings.path);
        if moved_to.is_some() || marker.is_some() || rescue.exists() {
            let alarm = recover::recover(
                &mut writer,
                moved_to.as_ref().map(|(p, _)| p.as_path()),
                &rescue,
                // What was met first, while running; else the check's words.
                marker
                    .as_ref()
                    .map(|m| m.reason.clone())
                    .or(moved_to.as_ref().map(|(_, why)| why.clone())),
                marker.as_ref().map(|m| m.at),
            )?;
            recover::finish(&settings.path, &rescue);
            stats.replaced_at_start.store(true, Ordering::Relaxed);
            tracing::error!(
                recovered = alarm.recovered,
                rescued = alarm.rescued,
                unreadable = alarm.unreadable,
                "ALARM: the damaged database's undelivered readings were copied into the fresh one as far as they could be read"
            );
        }
        *stats
            .corruption
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = writer.last_damage()?;
        let writer = writer.start(rx, runtime);
        Ok(Store {
            handle: StoreHandle {
                tx,
                stats: stats.clone(),
                path: Arc::new(settings.path.clone()),
                lease_reader: Arc::default(),
            },
            reader: Reader::new(settings.path, stats),
            writer,
        })
    }
}

/// The fresh store file beside the database that the writer commits to once
/// the database turned out damaged while running (`recover`, decision 0015).
fn rescue_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".rescue");
    PathBuf::from(p)
}

/// Renames the database and its WAL and shared-memory files to
/// `<name>.corrupt-<unix ms>[-wal|-shm]`; returns the new database path.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = Timestamp::now().unix_ms();
    let mut moved_to = path.as_os_str().to_owned();
    moved_to.push(format!(".corrupt-{stamp}"));
    let moved_to = PathBuf::from(moved_to);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = moved_to.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => {
                return Err(StoreError::MoveAside {
                    path: PathBuf::from(from),
                    source,
                });
            }
        }
    }
    Ok(moved_to)
}

/// The key of a subject in the `latest` table and the wire.
pub(crate) fn subject_key(subject: &Subject, device: &crate::model::DeviceAddress) -> String {
    match subject {
        Subject::Resident(id) => format!("resident:{}", id.0),
        Subject::Room(room) => format!("room:{room}"),
        Subject::Unassigned => format!("device:{device}"),
    }
}

#[cfg(test)]
mod tests;
