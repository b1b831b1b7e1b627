//! Staff accounts, sessions, failed sign-ins, one-time codes and the audit log:
//! the SQL behind the web UI's security (`crate::web::auth`).
//!
//! These tables are written by the web layer, not by the reading pipeline, so they
//! have their own connection (behind a mutex) rather than a place in the writer's
//! queue: a sign-in never waits behind a group commit of readings, and the writer
//! never touches these tables. SQLite serialises the two writers (`busy_timeout`).
//! Every method blocks: call them from `spawn_blocking`, never on the executor.
//!
//! Secrets are never stored: sessions and one-time codes are kept as the SHA-256
//! of their random token, passwords as Argon2id PHC strings.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::StoreError;
use crate::config::Synchronous;
use crate::model::Timestamp;

/// What a staff member may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Views residents, acknowledges alerts.
    Carer,
    /// Also residents, thresholds, pairing and assignment, alerts.
    Nurse,
    /// Also users, settings, devices and the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Carer, Role::Nurse, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Carer => "carer",
            Role::Nurse => "nurse",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One staff account.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub created_by: Option<String>,
}

/// An account with its password hash, for sign-in only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// A live session found by its token.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub user: User,
    /// The synchronizer token every state-changing request must carry.
    pub csrf: String,
    pub created_at: Timestamp,
}

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionLimits {
    /// A session not used for this long is gone.
    pub idle: Duration,
    /// A session is gone this long after sign-in, used or not.
    pub absolute: Duration,
}

/// Sessions are marked used at most this often, so that every page view does not
/// write to the SD card; idle time-outs are therefore exact to within this.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What a one-time code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// Creates the first admin (`/setup`).
    Setup,
    /// Signs in as the code's user (`carehub demo`'s link).
    SignIn,
}

impl CodeKind {
    fn as_str(self) -> &'static str {
        match self {
            CodeKind::Setup => "setup",
            CodeKind::SignIn => "signin",
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: Timestamp,
    /// The username, or "anonymous", "cli (carehub pair)".
    pub who: String,
    /// E.g. "view residents overview", "POST /pairing/assign", "sign in failed".
    pub action: String,
    /// What it was about: the request path, a username, a device address.
    pub target: String,
    /// The client's address.
    pub client: String,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// The accounts tables on their own connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Accounts {
    conn: Arc<Mutex<Connection>>,
    audit: AuditWriter,
    /// Sessions as `session` last found them in the table, so that a page view
    /// within [`TOUCH_EVERY`] of the last mark needs no trip to SQLite (see
    /// `live_session`). Every method that changes sessions or accounts forgets
    /// them all.
    live: Arc<Mutex<HashMap<[u8; 32], LiveSession>>>,
}

/// A session and its `last_seen_ms` as stored.
#[derive(Debug, Clone)]
struct LiveSession {
    session: Session,
    last_seen: Timestamp,
}

/// Sessions remembered at most; past it they are all forgotten (and found in
/// the table again).
const LIVE_SESSIONS: usize = 4096;

mod audit;
mod codes;
mod sessions;
mod users;

use audit::AuditWriter;
pub use audit::{
    AUDIT_BUDGET_BYTES, AUDIT_EXPORT_DIR, AUDIT_FIELD_CHARS, AUDIT_MAINTAIN_EVERY, AUDIT_RETENTION,
    Maintained, REFRESH_WINDOW, TALLY_KEYS, TALLY_WINDOW, csv_cell, maintain,
};

/// Adding or changing an account was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The username is taken (names compare without case).
    #[error("there is already an account called {0:?}")]
    Taken(String),
    /// The change would leave no enabled admin.
    #[error("this is the last admin account: add another admin first")]
    LastAdmin,
    /// No such account.
    #[error("no such account")]
    NoSuchUser,
}

impl From<rusqlite::Error> for AccountError {
    fn from(e: rusqlite::Error) -> Self {
        AccountError::Store(StoreError::Sqlite(e))
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Accounts {
    /// The page cache bound of this connection, in KiB (a test's view).
    #[cfg(test)]
    pub(crate) fn page_cache_kib(&self) -> i64 {
        crate::store::page_cache_kib(&self.conn.lock().unwrap())
    }

    /// Opens a connection on the store's database, which `Store::open` has
    /// already migrated.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Accounts, StoreError> {
        let open = || -> Result<Connection, StoreError> {
            let conn = Connection::open(path)?;
            crate::store::bound_memory(&conn, crate::store::SIDE_CACHE_KIB)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            let sync = match synchronous {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", sync)?;
            conn.pragma_update(None, "foreign_keys", true)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok(conn)
        };
        Ok(Accounts {
            conn: Arc::new(Mutex::new(open()?)),
            audit: AuditWriter::start(
                open()?,
                path.parent()
                    .unwrap_or_else(|| Path::new("."))
                    .join(AUDIT_EXPORT_DIR),
            ),
            live: Arc::default(),
        })
    }

    /// Forgets every remembered session: called after every committed change to
    /// sessions or accounts. A session remembered before the change is forgotten
    /// here; one remembered after it was read after the commit (`session` reads
    /// and remembers under the connection's lock).
    fn forget_live(&self) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut conn)?)
    }
}

#[cfg(test)]
mod tests;
