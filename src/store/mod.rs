//! The durable buffer: every reading is committed to SQLite before anything else
//! happens to it.
//!
//! One writer thread owns the only write connection and commits in groups (up to
//! `commit_max_readings` or `commit_max_delay_ms`), so that fsyncs per reading stay
//! low. A producer learns that its readings are stored only once their transaction
//! has committed. Readers (the web page) use their own read-only connections, off the
//! async executor.

mod reader;
mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::config::{StoreConfig, Synchronous};
use crate::model::{Device, Reading, Resident, Subject, Timestamp};

pub use reader::{LatestValue, Reader, ResidentOverview};
pub use schema::VERSION as SCHEMA_VERSION;

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
}

/// A request to the writer thread.
#[derive(Debug)]
pub(crate) enum Command {
    Ingest {
        readings: Vec<Reading>,
        committed: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
    },
    Provision {
        residents: Vec<Resident>,
        devices: Vec<Device>,
        committed: oneshot::Sender<Result<(), Arc<StoreError>>>,
    },
}

/// Counters the writer keeps for status pages and metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub readings_committed: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// Unix ms of the last successful commit; 0 before the first.
    pub last_commit_ms: AtomicI64,
}

impl StoreStats {
    pub fn last_commit(&self) -> Option<Timestamp> {
        match self.last_commit_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Timestamp::from_unix_ms(ms)),
        }
    }
}

/// The sending side of the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    stats: Arc<StoreStats>,
}

impl StoreHandle {
    /// Stores `readings` and returns once their transaction has committed.
    pub async fn ingest(&self, readings: Vec<Reading>) -> Result<(), Arc<StoreError>> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Ingest {
                readings,
                committed: Some(done),
            })
            .await
            .map_err(|_| Arc::new(StoreError::Closed))?;
        wait.await.map_err(|_| Arc::new(StoreError::Closed))?
    }

    /// Queues `readings` without waiting for the commit (waits only for room in
    /// the queue). For producers that have nobody to acknowledge to.
    pub async fn ingest_nowait(&self, readings: Vec<Reading>) -> Result<(), StoreError> {
        self.tx
            .send(Command::Ingest {
                readings,
                committed: None,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Records residents and devices (insert or update), e.g. the simulator's roster.
    pub async fn provision(
        &self,
        residents: Vec<Resident>,
        devices: Vec<Device>,
    ) -> Result<(), Arc<StoreError>> {
        let (committed, wait) = oneshot::channel();
        self.tx
            .send(Command::Provision {
                residents,
                devices,
                committed,
            })
            .await
            .map_err(|_| Arc::new(StoreError::Closed))?;
        wait.await.map_err(|_| Arc::new(StoreError::Closed))?
    }

    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }
}

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
    pub commit_max_delay: std::time::Duration,
    pub synchronous: Synchronous,
}

impl From<&StoreConfig> for StoreSettings {
    fn from(c: &StoreConfig) -> Self {
        StoreSettings {
            path: c.path.clone(),
            commit_max_readings: c.commit_max_readings,
            commit_max_delay: std::time::Duration::from_millis(c.commit_max_delay_ms),
            synchronous: c.synchronous,
        }
    }
}

impl Store {
    /// Opens (creating and migrating if needed) the database and starts the writer
    /// thread. Blocking: call it from start-up code or `spawn_blocking`.
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
        let conn = writer::open_write_connection(&settings)?;
        let stats = Arc::new(StoreStats::default());
        let (tx, rx) = mpsc::channel(256);
        let writer = writer::spawn(
            conn,
            rx,
            settings.clone(),
            stats.clone(),
            runtime,
            heartbeat,
        );
        Ok(Store {
            handle: StoreHandle { tx, stats },
            reader: Reader::new(settings.path),
            writer,
        })
    }
}

/// The key of a subject in the `latest` table and the wire.
pub(crate) fn subject_key(subject: &Subject, device: &crate::model::DeviceAddress) -> String {
    match subject {
        Subject::Resident(id) => format!("resident:{}", id.0),
        Subject::Room(room) => format!("room:{room}"),
        Subject::Unassigned => format!("device:{device}"),
    }
}
