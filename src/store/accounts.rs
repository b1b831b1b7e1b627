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

/// An audit entry waiting for its commit, and who waits for it.
type PendingAudit = (
    AuditEntry,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// What the audit writer is sent.
enum AuditMsg {
    /// Commit this entry and say when it is.
    Entry(PendingAudit),
    /// Count this event of someone not signed in; nobody waits for it.
    Anonymous(AuditEntry),
    /// Time passed: write the tallies of past windows, keep the log in budget.
    Tick,
    /// Write every tally now (all windows), then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Audit entries at most in one transaction.
const AUDIT_BATCH: usize = 256;

/// The longest `who`, `action`, `target` and `client` kept, in characters; a
/// longer value is cut and marked with "…". Names, paths and addresses fit.
pub const AUDIT_FIELD_CHARS: [usize; 4] = [64, 160, 256, 64];

/// Anonymous events (failed sign-ins, refused links and setup codes, refused
/// anonymous changes) are counted in windows this long, and each window
/// becomes one row per kind, client and name.
pub const TALLY_WINDOW: Duration = Duration::from_secs(60);

/// Distinct (kind, client, name) tallies kept in one window; beyond this the
/// name is not told apart ("(various)"), so memory and rows stay bounded
/// however many names an attacker sends.
pub const TALLY_KEYS: usize = 256;

/// Audit rows are kept this long (13 months), then exported and deleted.
pub const AUDIT_RETENTION: Duration = Duration::from_secs(396 * 86_400);

/// The audit log's own disk budget: its rows (estimated from their lengths)
/// and its exports each stay under half. Readings never make room for it, and
/// it never grows into the room readings need (`docs/security.md`).
pub const AUDIT_BUDGET_BYTES: u64 = 64 * 1024 * 1024;

/// How often retention and the budget are checked.
pub const AUDIT_MAINTAIN_EVERY: Duration = Duration::from_secs(3600);

/// The folder beside the database where rows are exported before deletion.
pub const AUDIT_EXPORT_DIR: &str = "audit-export";

/// Estimated bytes per row beyond its text (row header, integers, index).
const ROW_OVERHEAD: u64 = 48;

/// The audit log's writer: a thread with its own connection that commits every
/// entry queued while the previous commit ran in one transaction (group commit).
/// Each caller still waits for the commit of its own entry, so a view is never
/// answered unaudited, but 50 staff screens share one fsync instead of queueing
/// for one each (behind which sign-ins and session checks waited, on the same
/// connection). The thread ends when the last `Accounts` clone is dropped, after
/// committing what was queued and writing the tallies.
///
/// Anonymous events are not rows each: they are tallied in memory
/// ([`TALLY_WINDOW`], [`TALLY_KEYS`]) and queued without waiting (`try_send`);
/// when the queue is full they are counted as dropped and that count is written
/// with the next tallies. A ticker thread wakes the writer every few seconds.
#[derive(Debug, Clone)]
struct AuditWriter {
    tx: tokio::sync::mpsc::Sender<AuditMsg>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for AuditMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditMsg")
    }
}

/// How often the ticker wakes the writer.
const TICK_EVERY: Duration = Duration::from_secs(5);

impl AuditWriter {
    fn start(conn: Connection, export_dir: std::path::PathBuf) -> AuditWriter {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * AUDIT_BATCH);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let state = WriterState {
            tallies: Tallies::default(),
            dropped: dropped.clone(),
            export_dir,
            last_maintained: None,
        };
        std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || audit_writer(conn, rx, state))
            .expect(
                "spawning a thread at start-up only fails when the process is out of resources",
            );
        // The ticker holds only a weak sender, so it never keeps the writer alive.
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("audit-ticker".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK_EVERY);
                    let Some(tx) = weak.upgrade() else { return };
                    let _ = tx.try_send(AuditMsg::Tick);
                }
            })
            .expect(
                "spawning a thread at start-up only fails when the process is out of resources",
            );
        AuditWriter { tx, dropped }
    }
}

/// Counts of anonymous events in the current windows.
#[derive(Debug, Default)]
struct Tallies {
    /// (action, client, target) → first entry of the window and its count.
    open: HashMap<(String, String, String), (AuditEntry, u64)>,
}

impl Tallies {
    fn add(&mut self, e: AuditEntry) {
        let e = capped(e);
        let mut key = (e.action.clone(), e.client.clone(), e.target.clone());
        if !self.open.contains_key(&key) && self.open.len() >= TALLY_KEYS {
            key.2 = "(various)".to_owned();
        }
        let entry = self.open.entry(key.clone()).or_insert_with(|| {
            (
                AuditEntry {
                    target: key.2.clone(),
                    ..e.clone()
                },
                0,
            )
        });
        entry.1 += 1;
    }

    /// The rows of windows that began at least [`TALLY_WINDOW`] before `now`
    /// (all of them with `all`).
    fn due(&mut self, now: Timestamp, all: bool) -> Vec<AuditEntry> {
        let mut out = Vec::new();
        self.open.retain(|_, (first, n)| {
            if all || first.at.age_at(now) >= TALLY_WINDOW {
                out.push(tally_row(first, *n));
                false
            } else {
                true
            }
        });
        out.sort_by_key(|e| e.at.unix_ms());
        out
    }
}

/// One row for `n` events like `first`.
fn tally_row(first: &AuditEntry, n: u64) -> AuditEntry {
    let mut row = first.clone();
    if n > 1 {
        row.action = format!(
            "{} ({n} times within {} s)",
            first.action,
            TALLY_WINDOW.as_secs()
        );
    }
    row
}

struct WriterState {
    tallies: Tallies,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    export_dir: std::path::PathBuf,
    last_maintained: Option<std::time::Instant>,
}

fn audit_writer(
    mut conn: Connection,
    mut rx: tokio::sync::mpsc::Receiver<AuditMsg>,
    mut st: WriterState,
) {
    let mut batch: Vec<PendingAudit> = Vec::with_capacity(AUDIT_BATCH);
    let mut first = rx.blocking_recv();
    while let Some(msg) = first {
        let mut tick = false;
        let mut flushed = Vec::new();
        let mut take = |msg: AuditMsg, batch: &mut Vec<PendingAudit>| match msg {
            AuditMsg::Entry(p) => batch.push(p),
            AuditMsg::Anonymous(e) => st.tallies.add(e),
            AuditMsg::Tick => tick = true,
            AuditMsg::Flush(done) => flushed.push(done),
        };
        take(msg, &mut batch);
        while batch.len() < AUDIT_BATCH {
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch),
                Err(_) => break,
            }
        }
        let mut rows = st.tallies.due(Timestamp::now(), !flushed.is_empty());
        rows.extend(dropped_row(&st.dropped));
        commit_batch(&mut conn, &mut batch, &rows);
        for done in flushed {
            let _ = done.send(());
        }
        if tick
            && st
                .last_maintained
                .is_none_or(|t| t.elapsed() >= AUDIT_MAINTAIN_EVERY)
        {
            st.last_maintained = Some(std::time::Instant::now());
            if let Err(e) = maintain(
                &mut conn,
                &st.export_dir,
                Timestamp::now(),
                AUDIT_BUDGET_BYTES,
            ) {
                tracing::error!(error = %e, "audit log retention not applied");
            }
        }
        first = rx.blocking_recv();
    }
    // Every sender is gone: what is left in the tallies is written too.
    let mut rows = st.tallies.due(Timestamp::now(), true);
    rows.extend(dropped_row(&st.dropped));
    commit_batch(&mut conn, &mut batch, &rows);
}

/// A row saying how many anonymous events found the queue full, if any did.
fn dropped_row(dropped: &std::sync::atomic::AtomicU64) -> Option<AuditEntry> {
    let n = dropped.swap(0, std::sync::atomic::Ordering::AcqRel);
    (n > 0).then(|| AuditEntry {
        at: Timestamp::now(),
        who: "anonymous".to_owned(),
        action: format!("{n} anonymous events not itemised (audit queue full)"),
        target: String::new(),
        client: String::new(),
        status: 0,
    })
}

/// Commits `batch` and `rows` together and answers each waiting caller.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<PendingAudit>, rows: &[AuditEntry]) {
    if batch.is_empty() && rows.is_empty() {
        return;
    }
    let together = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (e, _) in batch.iter() {
            insert_audit(&tx, e)?;
        }
        for e in rows {
            insert_audit(&tx, e)?;
        }
        tx.commit()
    })();
    match together {
        Ok(()) => {
            for (_, done) in batch.drain(..) {
                // The caller may have gone (its request was dropped): fine.
                let _ = done.send(Ok(()));
            }
        }
        // The transaction rolled back: each entry alone, with its own answer.
        Err(_) => {
            for (e, done) in batch.drain(..) {
                let _ = done.send(insert_audit(conn, &e).map_err(StoreError::from));
            }
            for e in rows {
                if let Err(e) = insert_audit(conn, e) {
                    tracing::error!(error = %e, "audit tally not written");
                }
            }
        }
    }
}

/// `s` cut to `max` characters, marked with "…" when cut.
fn cap(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((i, _)) if s.chars().count() > max => format!("{}…", &s[..i]),
        _ => s.to_owned(),
    }
}

/// `e` with every text field within [`AUDIT_FIELD_CHARS`].
fn capped(e: AuditEntry) -> AuditEntry {
    let [who, action, target, client] = AUDIT_FIELD_CHARS;
    AuditEntry {
        who: cap(&e.who, who),
        action: cap(&e.action, action),
        target: cap(&e.target, target),
        client: cap(&e.client, client),
        ..e
    }
}

fn insert_audit(c: &Connection, e: &AuditEntry) -> rusqlite::Result<()> {
    let [who, action, target, client] = AUDIT_FIELD_CHARS;
    c.prepare_cached(
        "INSERT INTO audit_log (at_ms, who, action, target, client, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        e.at.unix_ms(),
        cap(&e.who, who),
        cap(&e.action, action),
        cap(&e.target, target),
        cap(&e.client, client),
        e.status
    ])
    .map(drop)
}

/// What one retention pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Rows exported and then deleted.
    pub purged: u64,
    /// Export files deleted to keep the exports within their half.
    pub exports_removed: u64,
}

/// Retention and budget: rows older than [`AUDIT_RETENTION`], and the oldest
/// rows while the table's estimate is over half of `budget`, are first written
/// to a CSV file in `export_dir` (synced), then deleted. The oldest export
/// files are deleted while the exports together are over the other half (with
/// an error in the log: they should have been collected by then).
pub fn maintain(
    conn: &mut Connection,
    export_dir: &Path,
    now: Timestamp,
    budget: u64,
) -> Result<Maintained, StoreError> {
    let mut done = Maintained::default();
    let half = budget / 2;
    let cutoff = now.saturating_sub(AUDIT_RETENTION).unix_ms();
    let expired: i64 = conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM audit_log WHERE at_ms < ?1",
        [cutoff],
        |r| r.get(0),
    )?;
    let (bytes, rows): (i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(length(CAST(who AS BLOB)) + length(CAST(action AS BLOB))
                 + length(CAST(target AS BLOB)) + length(CAST(client AS BLOB))), 0), COUNT(*)
         FROM audit_log",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let estimate =
        u64::try_from(bytes).unwrap_or(0) + u64::try_from(rows).unwrap_or(0) * ROW_OVERHEAD;
    // Over budget: drop the oldest rows down to 90 % of the half.
    let mut upto = expired;
    if estimate > half && rows > 0 {
        let per_row = (estimate / u64::try_from(rows).unwrap_or(1)).max(1);
        let excess = estimate - half * 9 / 10;
        let drop_rows = i64::try_from(excess.div_ceil(per_row)).unwrap_or(i64::MAX);
        let nth: Option<i64> = conn
            .query_row(
                "SELECT seq FROM audit_log ORDER BY seq LIMIT 1 OFFSET ?1",
                [drop_rows.saturating_sub(1)],
                |r| r.get(0),
            )
            .optional()?;
        upto = upto.max(nth.unwrap_or(i64::MAX));
    }
    if upto > 0 {
        done.purged = export_then_delete(conn, export_dir, upto)?;
    }
    done.exports_removed = trim_exports(export_dir, half);
    Ok(done)
}

/// Writes every row with `seq <= upto` to a new CSV file and syncs it, then
/// deletes those rows; returns how many.
fn export_then_delete(conn: &mut Connection, dir: &Path, upto: i64) -> Result<u64, StoreError> {
    use std::io::Write;
    let io = |e: std::io::Error| StoreError::CreateDir {
        path: dir.to_owned(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (first, last, n): (Option<i64>, Option<i64>, i64) = tx.query_row(
        "SELECT MIN(seq), MAX(seq), COUNT(*) FROM audit_log WHERE seq <= ?1",
        [upto],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(0);
    };
    let path = dir.join(format!("audit-{first:012}-{last:012}.csv"));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        writeln!(f, "seq,time,who,action,target,client,status").map_err(io)?;
        let mut st = tx.prepare(
            "SELECT seq, at_ms, who, action, target, client, status FROM audit_log
             WHERE seq <= ?1 ORDER BY seq",
        )?;
        let mut rows = st.query([upto])?;
        while let Some(r) = rows.next()? {
            let cells: [String; 7] = [
                r.get::<_, i64>(0)?.to_string(),
                Timestamp::from_unix_ms(r.get(1)?).to_rfc3339(),
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get::<_, i64>(6)?.to_string(),
            ];
            let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
            // (Every cell is quoted and defused: see `csv_cell`.)
            writeln!(f, "{}", line.join(",")).map_err(io)?;
        }
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [upto])?;
    tx.commit()?;
    tracing::info!(rows = n, file = %path.display(), "audit log: old rows exported, then deleted");
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Deletes the oldest export files while they add up to more than `max` bytes,
/// never the newest.
fn trim_exports(dir: &Path, max: u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<(String, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.starts_with("audit-") && name.ends_with(".csv"))
                .then(|| Some((name, e.metadata().ok()?.len())))?
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    // The newest export is never deleted: it was written to be collected.
    files.pop();
    let mut removed = 0;
    for (name, len) in files {
        if total <= max {
            break;
        }
        if std::fs::remove_file(dir.join(&name)).is_ok() {
            tracing::error!(file = %name, "audit export deleted to keep the audit log within its disk budget: collect the exports sooner");
            total -= len;
            removed += 1;
        }
    }
    removed
}

/// A CSV cell, always quoted, that no spreadsheet reads as a formula whatever
/// separator it splits on: a `'` goes before a leading `=`, `+`, `-`, `@`, tab
/// or carriage return, and before any of those that follows a `,`, `;`, `|`,
/// tab or line break inside the text (a program importing with `;` as its
/// separator splits `a;=HYPERLINK(…)` into a second cell that begins with `=`).
pub fn csv_cell(s: &str) -> String {
    let trigger = |c: char| matches!(c, '=' | '+' | '-' | '@' | '\t' | '\r');
    let separator = |c: char| matches!(c, ',' | ';' | '|' | '\t' | '\n' | '\r');
    let mut out = String::with_capacity(s.len() + 4);
    out.push('"');
    let mut at_cell_start = true;
    for c in s.chars() {
        if at_cell_start && trigger(c) {
            out.push('\'');
        }
        if c == '"' {
            out.push('"');
        }
        out.push(c);
        // Spaces and quotes after a separator still leave the next cell's start.
        at_cell_start = separator(c) || (at_cell_start && matches!(c, ' ' | '"'));
    }
    out.push('"');
    out
}

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

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let role: String = r.get(2)?;
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        // The CHECK constraint admits only these three.
        role: Role::parse(&role).unwrap_or(Role::Carer),
        disabled: r.get::<_, i64>(3)? != 0,
        created_at: Timestamp::from_unix_ms(r.get(4)?),
        created_by: r.get(5)?,
    })
}

const USER_COLUMNS: &str = "u.id, u.username, u.role, u.disabled, u.created_at_ms, u.created_by";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Accounts {
    /// Opens a connection on the store's database, which `Store::open` has
    /// already migrated.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Accounts, StoreError> {
        let open = || -> Result<Connection, StoreError> {
            let conn = Connection::open(path)?;
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

    /// Whether an enabled admin exists (if not, the setup code is offered).
    pub fn has_admin(&self) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0)",
                [],
                |r| r.get(0),
            )
        })
    }

    /// Adds an account.
    pub fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        created_by: &str,
        now: Timestamp,
    ) -> Result<User, AccountError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let inserted = conn.execute(
            "INSERT INTO users (username, password_hash, role, created_at_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (username) DO NOTHING",
            params![
                username,
                password_hash,
                role.as_str(),
                now.unix_ms(),
                created_by
            ],
        )?;
        if inserted == 0 {
            return Err(AccountError::Taken(username.to_owned()));
        }
        let id = conn.last_insert_rowid();
        Ok(conn.query_row(
            &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"),
            [id],
            user_from_row,
        )?)
    }

    /// The account and its hash, for sign-in; names compare without case.
    pub fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {USER_COLUMNS}, u.password_hash FROM users u WHERE u.username = ?1"
                ),
                [username],
                |r| {
                    Ok(Credentials {
                        user: user_from_row(r)?,
                        password_hash: r.get(6)?,
                    })
                },
            )
            .optional()
        })
    }

    pub fn user(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"),
                [id],
                user_from_row,
            )
            .optional()
        })
    }

    /// Every account, by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {USER_COLUMNS} FROM users u ORDER BY u.username"
            ))?;
            st.query_map([], user_from_row)?.collect()
        })
    }

    /// Disables (and signs out) or re-enables an account. Disabling the last
    /// enabled admin is refused.
    pub fn set_disabled(&self, id: i64, disabled: bool) -> Result<User, AccountError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let user = tx
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"),
                [id],
                user_from_row,
            )
            .optional()?
            .ok_or(AccountError::NoSuchUser)?;
        if disabled && user.role == Role::Admin && !user.disabled {
            let admins: i64 = tx.query_row(
                "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0",
                [],
                |r| r.get(0),
            )?;
            if admins <= 1 {
                return Err(AccountError::LastAdmin);
            }
        }
        tx.execute(
            "UPDATE users SET disabled = ?2 WHERE id = ?1",
            params![id, disabled],
        )?;
        if disabled {
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        }
        tx.commit()?;
        self.forget_live();
        Ok(User { disabled, ..user })
    }

    /// Sets a new password hash and ends every session of the account.
    pub fn set_password(&self, id: i64, password_hash: &str) -> Result<(), AccountError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2 WHERE id = ?1",
            params![id, password_hash],
        )?;
        if n == 0 {
            return Err(AccountError::NoSuchUser);
        }
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        tx.commit()?;
        self.forget_live();
        Ok(())
    }

    /// Stores a new session under the hash of its token.
    pub fn create_session(
        &self,
        token_hash: &[u8; 32],
        user_id: i64,
        csrf: &str,
        client: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf, created_at_ms, last_seen_ms, client)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![&token_hash[..], user_id, csrf, now.unix_ms(), client],
            )
            .map(drop)
        })
    }

    /// The live session with this token hash, marking it used. A session past
    /// its idle or absolute limit, or of a disabled account, is deleted and not
    /// returned.
    pub fn session(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        self.check_session(token_hash, limits, now, true)
    }

    /// As [`session`](Self::session), but for a request the page made on its
    /// own (a live refresh, the event stream): the session is not marked used,
    /// so a tablet left on a live page still signs out when its idle time is up.
    pub fn session_unused(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        self.check_session(token_hash, limits, now, false)
    }

    fn check_session(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
        touch: bool,
    ) -> Result<Option<Session>, StoreError> {
        // The row is read and remembered under the connection's lock, so a change
        // to sessions or accounts commits either before the read or after the
        // remembering, and then forgets it (`forget_live`).
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let c: &mut Connection = &mut conn;
        let found = c
            .query_row(
                &format!(
                    "SELECT {USER_COLUMNS}, s.csrf, s.created_at_ms, s.last_seen_ms
                     FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.token_hash = ?1"
                ),
                [&token_hash[..]],
                |r| {
                    Ok((
                        user_from_row(r)?,
                        r.get::<_, String>(6)?,
                        Timestamp::from_unix_ms(r.get(7)?),
                        Timestamp::from_unix_ms(r.get(8)?),
                    ))
                },
            )
            .optional()?;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(token_hash);
        let Some((user, csrf, created_at, last_seen)) = found else {
            return Ok(None);
        };
        let expired = last_seen.age_at(now) >= limits.idle
            || created_at.age_at(now) >= limits.absolute
            || user.disabled;
        if expired {
            c.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [&token_hash[..]],
            )?;
            return Ok(None);
        }
        let mut last_seen = last_seen;
        if touch && last_seen.age_at(now) >= TOUCH_EVERY {
            c.execute(
                "UPDATE sessions SET last_seen_ms = ?2 WHERE token_hash = ?1",
                params![&token_hash[..], now.unix_ms()],
            )?;
            last_seen = now;
        }
        let session = Session {
            user,
            csrf,
            created_at,
        };
        if live.len() >= LIVE_SESSIONS {
            live.clear();
        }
        live.insert(
            *token_hash,
            LiveSession {
                session: session.clone(),
                last_seen,
            },
        );
        Ok(Some(session))
    }

    /// The session with this token hash as [`session`](Self::session) would
    /// answer, without blocking: `Some` only when it was found in the table
    /// less than [`TOUCH_EVERY`] ago (by its mark), nothing about it or its
    /// account has changed since, and it is within its limits at `now`;
    /// otherwise `None`, and the caller asks `session`.
    pub fn live_session(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
    ) -> Option<Session> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let l = live.get(token_hash)?;
        let seen = l.last_seen.age_at(now);
        let usable = l.last_seen <= now
            && seen < TOUCH_EVERY
            && seen < limits.idle
            && l.session.created_at.age_at(now) < limits.absolute
            && !l.session.user.disabled;
        usable.then(|| l.session.clone())
    }

    /// Ends a session (sign out, or the old session at a new sign-in).
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let deleted = self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [&token_hash[..]],
            )
            .map(drop)
        });
        self.forget_live();
        deleted
    }

    /// Deletes sessions past their limits; returns how many.
    pub fn purge_sessions(
        &self,
        limits: SessionLimits,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let purged = self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE last_seen_ms <= ?1 OR created_at_ms <= ?2",
                params![
                    now.unix_ms().saturating_sub(ms(limits.idle)),
                    now.unix_ms().saturating_sub(ms(limits.absolute))
                ],
            )
        });
        self.forget_live();
        purged
    }

    /// Failed sign-ins under `key` (an account or a client address) since `since`.
    pub fn failures_since(&self, key: &str, since: Timestamp) -> Result<u32, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM login_failures WHERE key = ?1 AND at_ms > ?2",
                params![key, since.unix_ms()],
                |r| r.get(0),
            )
        })
    }

    /// Failed sign-ins under `key` since `since`, and when the last was.
    pub fn failures(
        &self,
        key: &str,
        since: Timestamp,
    ) -> Result<(u32, Option<Timestamp>), StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*), MAX(at_ms) FROM login_failures WHERE key = ?1 AND at_ms > ?2",
                params![key, since.unix_ms()],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<i64>>(1)?.map(Timestamp::from_unix_ms),
                    ))
                },
            )
        })
    }

    /// Forgets every failure under a key that starts with `prefix` (an admin
    /// unlocking an account from every address); returns how many.
    pub fn clear_failures_with_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM login_failures WHERE substr(key, 1, length(?1)) = ?1",
                [prefix],
            )
        })
    }

    /// Counts one failed sign-in under each key, and forgets failures older than
    /// `forget_before` so the table stays small.
    pub fn record_failure(
        &self,
        keys: &[&str],
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for key in keys {
            tx.execute(
                "INSERT INTO login_failures (key, at_ms) VALUES (?1, ?2)",
                params![key, now.unix_ms()],
            )?;
        }
        tx.execute(
            "DELETE FROM login_failures WHERE at_ms < ?1",
            [forget_before.unix_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets the failures under `key` (after a successful sign-in).
    pub fn clear_failures(&self, key: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM login_failures WHERE key = ?1", [key])
                .map(drop)
        })
    }

    /// Stores a one-time code; any older unused code of the same kind is voided,
    /// so only the newest printed code works.
    pub fn create_code(
        &self,
        code_hash: &[u8; 32],
        kind: CodeKind,
        user_id: Option<i64>,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM one_time_codes WHERE kind = ?1",
            [kind.as_str()],
        )?;
        tx.execute(
            "INSERT INTO one_time_codes (code_hash, kind, user_id, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![&code_hash[..], kind.as_str(), user_id, expires_at.unix_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a one-time code would be accepted now, without using it: checked
    /// before the slow work its use is for.
    pub fn code_valid(
        &self,
        code_hash: &[u8; 32],
        kind: CodeKind,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM one_time_codes
                 WHERE code_hash = ?1 AND kind = ?2 AND used_at_ms IS NULL AND expires_at_ms > ?3)",
                params![&code_hash[..], kind.as_str(), now.unix_ms()],
                |r| r.get(0),
            )
        })
    }

    /// Uses a one-time code: `Some(user id of the code)` the first time, before it
    /// expires; `None` for an unknown, used or expired code.
    pub fn use_code(
        &self,
        code_hash: &[u8; 32],
        kind: CodeKind,
        now: Timestamp,
    ) -> Result<Option<Option<i64>>, StoreError> {
        self.with(|c| {
            let user: Option<Option<i64>> = c
                .query_row(
                    "UPDATE one_time_codes SET used_at_ms = ?3
                     WHERE code_hash = ?1 AND kind = ?2 AND used_at_ms IS NULL AND expires_at_ms > ?3
                     RETURNING user_id",
                    params![&code_hash[..], kind.as_str(), now.unix_ms()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(user)
        })
    }

    /// Appends to the audit log; returns once the entry is committed. Entries
    /// queued together share one transaction (see `AuditWriter`). Async: this
    /// never blocks the executor.
    pub async fn audit(&self, e: AuditEntry) -> Result<(), StoreError> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.audit
            .tx
            .send(AuditMsg::Entry((e, done)))
            .await
            .map_err(|_| StoreError::Closed)?;
        committed.await.map_err(|_| StoreError::Closed)?
    }

    /// Counts an event of someone not signed in: tallied, not a row each (see
    /// `AuditWriter`). Never waits; when the queue is full the event is only
    /// counted.
    pub fn audit_anonymous(&self, e: AuditEntry) {
        if self.audit.tx.try_send(AuditMsg::Anonymous(e)).is_err() {
            self.audit
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Writes every anonymous tally now instead of at the end of its window
    /// (at shutdown, and for tests); returns once they are committed.
    pub async fn flush_audit_tallies(&self) -> Result<(), StoreError> {
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.audit
            .tx
            .send(AuditMsg::Flush(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        flushed.await.map_err(|_| StoreError::Closed)
    }

    /// Audit entries newest first, skipping `offset`.
    pub fn audit_page(&self, offset: u64, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT at_ms, who, action, target, client, status FROM audit_log
                 ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
            )?;
            st.query_map(
                params![
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(AuditEntry {
                        at: Timestamp::from_unix_ms(r.get(0)?),
                        who: r.get(1)?,
                        action: r.get(2)?,
                        target: r.get(3)?,
                        client: r.get(4)?,
                        status: r.get(5)?,
                    })
                },
            )?
            .collect()
        })
    }

    pub fn audit_count(&self) -> Result<u64, StoreError> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Accounts {
        let mut conn = Connection::open(dir.join("a.db")).unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        Accounts::open(&dir.join("a.db"), Synchronous::Normal).unwrap()
    }

    const LIMITS: SessionLimits = SessionLimits {
        idle: Duration::from_secs(1800),
        absolute: Duration::from_secs(12 * 3600),
    };

    #[test]
    fn the_last_admin_cannot_be_disabled_but_a_second_one_can() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let t = Timestamp::from_unix_ms(1_000_000);
        assert!(!a.has_admin().unwrap());
        let first = a.create_user("Ann", "h", Role::Admin, "setup", t).unwrap();
        assert!(a.has_admin().unwrap());
        assert!(matches!(
            a.set_disabled(first.id, true),
            Err(AccountError::LastAdmin)
        ));
        assert!(matches!(
            a.create_user("ann", "h", Role::Nurse, "x", t),
            Err(AccountError::Taken(_))
        ));
        let second = a.create_user("bob", "h", Role::Admin, "Ann", t).unwrap();
        assert!(a.set_disabled(first.id, true).unwrap().disabled);
        assert!(matches!(
            a.set_disabled(second.id, true),
            Err(AccountError::LastAdmin)
        ));
    }

    #[test]
    fn sessions_end_when_idle_at_their_absolute_limit_and_with_their_account() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let t0 = Timestamp::from_unix_ms(10_000_000);
        let u = a.create_user("ann", "h", Role::Nurse, "t", t0).unwrap();
        let h = [7u8; 32];
        a.create_session(&h, u.id, "c", "127.0.0.1", t0).unwrap();
        // Used every 20 minutes: stays alive past the idle limit in total.
        let mut t = t0;
        for _ in 0..5 {
            t = t.saturating_add(Duration::from_secs(20 * 60));
            assert!(a.session(&h, LIMITS, t).unwrap().is_some(), "at {t:?}");
        }
        // Idle for 30 minutes: gone, and stays gone.
        let late = t.saturating_add(Duration::from_secs(30 * 60));
        assert_eq!(a.session(&h, LIMITS, late).unwrap(), None);
        assert_eq!(a.session(&h, LIMITS, t).unwrap(), None);

        let h2 = [8u8; 32];
        a.create_session(&h2, u.id, "c", "x", t0).unwrap();
        let limits = SessionLimits {
            idle: Duration::from_secs(12 * 3600),
            absolute: Duration::from_secs(3600),
        };
        assert!(
            a.session(&h2, limits, t0.saturating_add(Duration::from_secs(3599)))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            a.session(&h2, limits, t0.saturating_add(Duration::from_secs(3600)))
                .unwrap(),
            None
        );

        let h3 = [9u8; 32];
        a.create_session(&h3, u.id, "c", "x", t0).unwrap();
        a.create_user("boss", "h", Role::Admin, "t", t0).unwrap();
        a.set_disabled(u.id, true).unwrap();
        assert_eq!(a.session(&h3, LIMITS, t0).unwrap(), None);
    }

    #[test]
    fn a_one_time_code_works_once_and_not_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let t = Timestamp::from_unix_ms(5_000_000);
        let later = t.saturating_add(Duration::from_secs(3600));
        a.create_code(&[1; 32], CodeKind::Setup, None, later)
            .unwrap();
        assert_eq!(a.use_code(&[1; 32], CodeKind::SignIn, t).unwrap(), None);
        assert_eq!(a.use_code(&[2; 32], CodeKind::Setup, t).unwrap(), None);
        assert_eq!(
            a.use_code(&[1; 32], CodeKind::Setup, t).unwrap(),
            Some(None)
        );
        assert_eq!(a.use_code(&[1; 32], CodeKind::Setup, t).unwrap(), None);
        a.create_code(&[3; 32], CodeKind::Setup, None, later)
            .unwrap();
        assert_eq!(a.use_code(&[3; 32], CodeKind::Setup, later).unwrap(), None);
    }

    #[test]
    fn failures_are_counted_per_key_and_survive_a_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let t = Timestamp::from_unix_ms(50_000_000);
        for _ in 0..3 {
            a.record_failure(&["user:ann", "ip:10.0.0.9"], t, Timestamp::from_unix_ms(0))
                .unwrap();
        }
        drop(a);
        let a = Accounts::open(&dir.path().join("a.db"), Synchronous::Normal).unwrap();
        let since = t.saturating_sub(Duration::from_secs(900));
        assert_eq!(a.failures_since("user:ann", since).unwrap(), 3);
        assert_eq!(a.failures_since("ip:10.0.0.9", since).unwrap(), 3);
        assert_eq!(a.failures_since("user:bob", since).unwrap(), 0);
        assert_eq!(a.failures_since("user:ann", t).unwrap(), 0);
        a.clear_failures("user:ann").unwrap();
        assert_eq!(a.failures_since("user:ann", since).unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_audit_entry_is_committed_when_audit_returns_though_entries_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let db = dir.path().join("a.db");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (a, db) = (a.clone(), db.clone());
                tokio::spawn(async move {
                    let target = format!("/residents/{i}");
                    a.audit(AuditEntry {
                        at: Timestamp::from_unix_ms(1_000 + i),
                        who: "ann".into(),
                        action: "view resident".into(),
                        target: target.clone(),
                        client: "127.0.0.1".into(),
                        status: 200,
                    })
                    .await
                    .unwrap();
                    // Committed: another connection sees it at once.
                    let other = Connection::open(&db).unwrap();
                    let n: i64 = other
                        .query_row(
                            "SELECT COUNT(*) FROM audit_log WHERE target = ?1",
                            [&target],
                            |r| r.get(0),
                        )
                        .unwrap();
                    assert_eq!(n, 1, "{target}");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(a.audit_count().unwrap(), 200);
        // The newest first, as the audit page reads them.
        assert_eq!(a.audit_page(0, 1).unwrap().len(), 1);
    }

    #[test]
    fn a_page_refreshing_itself_does_not_keep_its_session_alive() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let t0 = Timestamp::from_unix_ms(10_000_000);
        let after = |s: u64| t0.saturating_add(Duration::from_secs(s));
        let u = a.create_user("ann", "h", Role::Carer, "t", t0).unwrap();
        let h = [7u8; 32];
        a.create_session(&h, u.id, "c", "127.0.0.1", t0).unwrap();
        let idle = LIMITS.idle.as_secs();
        // A tablet left on a live page: it refreshes every 30 s until the idle
        // limit, each refresh answered, none counted as use.
        let mut t = 30;
        while t < idle {
            assert!(
                a.session_unused(&h, LIMITS, after(t)).unwrap().is_some(),
                "at {t} s"
            );
            t += 30;
        }
        assert_eq!(a.session_unused(&h, LIMITS, after(idle)).unwrap(), None);
        assert_eq!(a.live_session(&h, LIMITS, after(idle)), None);
        assert_eq!(
            a.session(&h, LIMITS, after(idle)).unwrap(),
            None,
            "signed out after the idle limit"
        );
        // Staff using the page do keep it alive.
        let h2 = [8u8; 32];
        a.create_session(&h2, u.id, "c", "127.0.0.1", t0).unwrap();
        assert!(a.session(&h2, LIMITS, after(idle - 10)).unwrap().is_some());
        assert!(
            a.session_unused(&h2, LIMITS, after(idle + 10))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_session_is_marked_used_at_most_every_touch_interval_and_its_idle_limit_holds_to_within_it()
    {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let db = Connection::open(dir.path().join("a.db")).unwrap();
        let last_seen = || -> i64 {
            db.query_row("SELECT last_seen_ms FROM sessions", [], |r| r.get(0))
                .unwrap()
        };
        let t0 = Timestamp::from_unix_ms(10_000_000);
        let after = |s: u64| t0.saturating_add(Duration::from_secs(s));
        let u = a.create_user("ann", "h", Role::Carer, "t", t0).unwrap();
        let h = [5u8; 32];
        a.create_session(&h, u.id, "c", "127.0.0.1", t0).unwrap();
        // Used within TOUCH_EVERY of the last mark: not written.
        let just_under = TOUCH_EVERY.as_secs() - 1;
        assert!(a.session(&h, LIMITS, after(just_under)).unwrap().is_some());
        assert_eq!(last_seen(), t0.unix_ms());
        // Used TOUCH_EVERY after it: marked.
        let touch = TOUCH_EVERY.as_secs();
        assert!(a.session(&h, LIMITS, after(touch)).unwrap().is_some());
        assert_eq!(last_seen(), after(touch).unix_ms());
        // Last used just under TOUCH_EVERY after that mark: the idle limit counts
        // from the mark, so it ends at most TOUCH_EVERY early, never late.
        assert!(
            a.session(&h, LIMITS, after(touch + just_under))
                .unwrap()
                .is_some()
        );
        let idle = LIMITS.idle.as_secs();
        let end = after(touch + idle);
        assert!(
            a.session(&h, LIMITS, end.saturating_sub(Duration::from_millis(1)))
                .unwrap()
                .is_some()
        );
        // (That use was TOUCH_EVERY past the mark, so it marked again.)
        assert_eq!(last_seen(), end.unix_ms() - 1);
        let h2 = [6u8; 32];
        a.create_session(&h2, u.id, "c", "127.0.0.1", t0).unwrap();
        assert!(a.session(&h2, LIMITS, after(just_under)).unwrap().is_some());
        assert_eq!(
            a.session(&h2, LIMITS, after(idle)).unwrap(),
            None,
            "idle from the last mark (t0), though used {just_under} s later"
        );
    }

    #[test]
    fn a_remembered_session_answers_as_the_table_would_and_is_forgotten_by_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let t0 = Timestamp::from_unix_ms(20_000_000);
        let at = |ms: u64| t0.saturating_add(Duration::from_millis(ms));
        let u = a.create_user("ann", "h", Role::Nurse, "t", t0).unwrap();
        let h = [1u8; 32];
        a.create_session(&h, u.id, "c", "x", t0).unwrap();
        // Not remembered before the table has been asked.
        assert_eq!(a.live_session(&h, LIMITS, t0), None);
        let s = a.session(&h, LIMITS, t0).unwrap().unwrap();
        assert_eq!(a.live_session(&[2u8; 32], LIMITS, t0), None);
        // Within TOUCH_EVERY of the mark: the same answer as the table.
        let touch = u64::try_from(TOUCH_EVERY.as_millis()).unwrap();
        for ms in [0, 1, 30_000, touch - 1] {
            assert_eq!(a.live_session(&h, LIMITS, at(ms)), Some(s.clone()), "{ms}");
            assert_eq!(a.session(&h, LIMITS, at(ms)).unwrap(), Some(s.clone()));
        }
        // From TOUCH_EVERY on, the table is asked (and marks the session used).
        assert_eq!(a.live_session(&h, LIMITS, at(touch)), None);
        assert!(a.session(&h, LIMITS, at(touch)).unwrap().is_some());
        assert!(a.live_session(&h, LIMITS, at(touch + 1)).is_some());
        // A clock set back is not trusted.
        assert_eq!(a.live_session(&h, LIMITS, at(touch - 1)), None);
        // An idle limit shorter than TOUCH_EVERY holds without the table.
        let short = SessionLimits {
            idle: Duration::from_secs(10),
            ..LIMITS
        };
        assert!(a.live_session(&h, short, at(touch + 9_999)).is_some());
        assert_eq!(a.live_session(&h, short, at(touch + 10_000)), None);

        // Every change to accounts or sessions forgets what was remembered.
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: [Change<'_>; 4] = [
            ("password", Box::new(|| a.set_password(u.id, "h2").unwrap())),
            (
                "disabled",
                Box::new(|| drop(a.set_disabled(u.id, true).unwrap())),
            ),
            ("signed out", Box::new(|| a.delete_session(&h).unwrap())),
            (
                "purged",
                Box::new(|| {
                    let none = SessionLimits {
                        idle: Duration::ZERO,
                        absolute: Duration::ZERO,
                    };
                    a.purge_sessions(none, at(touch + 2)).unwrap();
                }),
            ),
        ];
        for (what, change) in changes {
            a.set_disabled(u.id, false).unwrap();
            a.delete_session(&h).unwrap();
            a.create_session(&h, u.id, "c", "x", at(touch + 1)).unwrap();
            assert!(
                a.session(&h, LIMITS, at(touch + 1)).unwrap().is_some(),
                "{what}"
            );
            assert!(
                a.live_session(&h, LIMITS, at(touch + 2)).is_some(),
                "{what}"
            );
            change();
            assert_eq!(a.live_session(&h, LIMITS, at(touch + 2)), None, "{what}");
            assert_eq!(
                a.session(&h, LIMITS, at(touch + 2)).unwrap(),
                None,
                "{what}"
            );
        }
    }

    fn entry(target: &str) -> AuditEntry {
        AuditEntry {
            at: Timestamp::now(),
            who: "anonymous".into(),
            action: "sign in failed".into(),
            target: target.into(),
            client: "192.0.2.7".into(),
            status: 401,
        }
    }

    /// Regression (issue 17, finding 2): a 2,000,000-character name was logged
    /// whole, and every failed sign-in or refused link was a row of its own.
    #[tokio::test]
    async fn anonymous_events_are_tallied_and_fields_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let huge = "x".repeat(2_000_000);
        for _ in 0..1000 {
            a.audit_anonymous(entry(&huge));
        }
        a.audit(AuditEntry {
            who: "ann".into(),
            action: "view residents overview".into(),
            ..entry(&huge)
        })
        .await
        .unwrap();
        a.flush_audit_tallies().await.unwrap();
        let rows = a.audit_page(0, 100).unwrap();
        // One tally (plus, if the queue was ever full, one "not itemised" row)
        // and the signed-in view.
        assert!(rows.len() <= 3, "{}", rows.len());
        let tally = rows
            .iter()
            .find(|r| r.action.starts_with("sign in failed"))
            .unwrap();
        assert!(
            tally.action.contains("times within 60 s"),
            "{}",
            tally.action
        );
        for r in &rows {
            assert!(
                r.target.chars().count() <= AUDIT_FIELD_CHARS[2],
                "{}",
                r.target.len()
            );
        }
        let size = std::fs::metadata(dir.path().join("a.db")).unwrap().len();
        assert!(size < 1024 * 1024, "database grew to {size} bytes");
    }

    #[test]
    fn old_rows_and_rows_over_budget_are_exported_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let exports = dir.path().join(AUDIT_EXPORT_DIR);
        let now = Timestamp::now();
        let old = now.saturating_sub(AUDIT_RETENTION + Duration::from_secs(86_400));
        {
            let c = a.conn.lock().unwrap();
            for i in 0..10 {
                insert_audit(
                    &c,
                    &AuditEntry {
                        at: old,
                        ..entry(&format!("old{i}"))
                    },
                )
                .unwrap();
            }
            for i in 0..1000 {
                insert_audit(
                    &c,
                    &AuditEntry {
                        at: now,
                        ..entry(&format!("new{i:04};=1"))
                    },
                )
                .unwrap();
            }
        }
        let mut c = a.conn.lock().unwrap();
        // A large budget: only the expired rows go.
        let done = maintain(&mut c, &exports, now, AUDIT_BUDGET_BYTES).unwrap();
        assert_eq!(done.purged, 10);
        let files: Vec<_> = std::fs::read_dir(&exports).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(text.lines().count(), 11, "{text}");
        assert!(text.contains("\"old9\""), "{text}");
        // A budget of 40 KB (20 KB for rows, about 100 bytes each): the oldest
        // go, exported first, and what is left fits.
        let done = maintain(&mut c, &exports, now, 40_000).unwrap();
        assert!(done.purged > 700, "{done:?}");
        let left: i64 = c
            .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left as u64 + done.purged, 1000);
        let newest_kept: String = c
            .query_row(
                "SELECT target FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(newest_kept, "new0999;=1");
        // The exports are over their 20 KB half by now: the oldest file goes,
        // never the newest.
        assert_eq!(done.exports_removed, 1);
        let files: Vec<_> = std::fs::read_dir(&exports).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        assert!(text.contains("new0000;'=1"), "{}", &text[..200]);
    }
}
