//! The audit log: its writer thread (group commit, tallies of anonymous events),
//! retention and disk budget (export, then delete), and reading it back.

use super::*;

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
pub(super) struct AuditWriter {
    tx: tokio::sync::mpsc::Sender<AuditMsg>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// The views a page's own refreshes repeat: see [`Accounts::audit_refresh`].
    refreshed: Arc<Mutex<RecentViews>>,
}

/// A page's own refresh (`live.js`, after each change the event stream
/// announces) repeats a view its user already had: one row per user and page in
/// [`REFRESH_WINDOW`], not one per refresh. A tablet left on the overview of a
/// busy home refreshes several times a second; a row each would fill the log's
/// budget in days, wear the SD card and make every refresh wait for a commit.
pub const REFRESH_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Users × pages remembered at most; beyond it the oldest are forgotten (a
/// forgotten one costs one more row, never one fewer).
const RECENT_VIEWS_CAP: usize = 4096;

/// When each (user, action, page) view was last written.
#[derive(Debug, Default)]
struct RecentViews(HashMap<(String, String, String), Timestamp>);

impl RecentViews {
    /// Whether a refresh at `entry.at` is to be written: no view of the same
    /// page by the same user is remembered within the window before it.
    fn due(&self, entry: &AuditEntry) -> bool {
        let key = (
            entry.who.clone(),
            entry.action.clone(),
            entry.target.clone(),
        );
        self.0
            .get(&key)
            .is_none_or(|last| entry.at < *last || entry.at.saturating_sub(REFRESH_WINDOW) >= *last)
    }

    /// Remembers a written entry: refreshes of the same page by the same user
    /// within the window after it are not written again.
    fn note(&mut self, entry: &AuditEntry) {
        if self.0.len() >= RECENT_VIEWS_CAP {
            let cutoff = entry.at.saturating_sub(REFRESH_WINDOW);
            self.0.retain(|_, at| *at > cutoff);
            if self.0.len() >= RECENT_VIEWS_CAP {
                self.0.clear();
            }
        }
        self.0.insert(
            (
                entry.who.clone(),
                entry.action.clone(),
                entry.target.clone(),
            ),
            entry.at,
        );
    }
}

impl std::fmt::Debug for AuditMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditMsg")
    }
}

/// How often the ticker wakes the writer.
const TICK_EVERY: Duration = Duration::from_secs(5);

impl AuditWriter {
    #[allow(
        clippy::expect_used,
        reason = "start-up: a thread cannot be spawned only when the process is out of resources, and then the gateway cannot run"
    )]
    pub(super) fn start(conn: Connection, export_dir: std::path::PathBuf) -> AuditWriter {
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
        AuditWriter {
            tx,
            dropped,
            refreshed: Arc::default(),
        }
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

pub(super) fn insert_audit(c: &Connection, e: &AuditEntry) -> rusqlite::Result<()> {
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

impl Accounts {
    /// Appends to the audit log; returns once the entry is committed. Entries
    /// queued together share one transaction (see `AuditWriter`). Async: this
    /// never blocks the executor.
    pub async fn audit(&self, e: AuditEntry) -> Result<(), StoreError> {
        self.audit
            .refreshed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .note(&e);
        let (done, committed) = tokio::sync::oneshot::channel();
        self.audit
            .tx
            .send(AuditMsg::Entry((e, done)))
            .await
            .map_err(|_| StoreError::Closed)?;
        committed.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a view a page made on its own (a live refresh), unless the same
    /// user's view of the same page was written within [`REFRESH_WINDOW`]:
    /// then it is already in the log and nothing is written. Returns whether a
    /// row was written.
    pub async fn audit_refresh(&self, e: AuditEntry) -> Result<bool, StoreError> {
        let due = self
            .audit
            .refreshed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .due(&e);
        if due {
            self.audit(e).await?;
        }
        Ok(due)
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
