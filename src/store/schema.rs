//! The database schema and its migrations, numbered by `PRAGMA user_version`.
//!
//! Each migration takes the database from version N-1 to N inside one transaction;
//! a database newer than this build is refused rather than guessed at.

use rusqlite::Connection;

use super::StoreError;

/// Migration N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    // 1: residents, devices, the outbox of readings not yet delivered, and the
    // latest value per subject and quantity for the staff page.
    r#"
    CREATE TABLE residents (
        id           INTEGER PRIMARY KEY,
        display_name TEXT NOT NULL,
        room         TEXT NOT NULL,
        reference    TEXT NOT NULL UNIQUE,
        archived     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE devices (
        address         TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,
        model           TEXT,
        name            TEXT,
        resident_id     INTEGER REFERENCES residents(id),
        room            TEXT,
        battery_percent INTEGER,
        last_seen_ms    INTEGER
    );
    -- Append-only, keyed by rowid: inserts touch one b-tree page at the end.
    CREATE TABLE outbox (
        seq            INTEGER PRIMARY KEY,
        id             BLOB NOT NULL,
        device         TEXT NOT NULL,
        resident_id    INTEGER,
        room           TEXT,
        quantity       TEXT NOT NULL,
        value          REAL,
        status         TEXT NOT NULL,
        unit           TEXT NOT NULL,
        measured_at_ms INTEGER,
        received_at_ms INTEGER NOT NULL,
        clock_synced   INTEGER NOT NULL,
        vital          INTEGER NOT NULL
    );
    CREATE TABLE latest (
        subject     TEXT NOT NULL,
        quantity    TEXT NOT NULL,
        value       REAL,
        status      TEXT NOT NULL,
        unit        TEXT NOT NULL,
        taken_at_ms INTEGER NOT NULL,
        device      TEXT NOT NULL,
        reading_id  BLOB NOT NULL,
        PRIMARY KEY (subject, quantity)
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
