//! The database schema and its migrations, numbered by `PRAGMA user_version`.
//!
//! Each migration takes the database from version N-1 to N inside one transaction;
//! a database newer than this build is refused rather than guessed at.
//!
//! From version 2 every reading lives once in `readings` (the local history, kept
//! `history_days`), and the outbox is two rowid-only tables of sequence numbers,
//! one per priority class. An ack deletes a few bytes from an outbox table instead
//! of copying the reading, which keeps bytes written per reading low on SD cards.

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
    // 2: the outbox/history split. The reading row moves to `readings` with the
    // device address as 6 bytes; the outbox becomes sequence numbers only, split by
    // priority so that leasing vital signs first needs no index. Eviction counts
    // persist in `evictions` so that they survive restarts.
    r#"
    CREATE TABLE readings (
        seq            INTEGER PRIMARY KEY,
        id             BLOB NOT NULL,
        device         BLOB NOT NULL,
        resident_id    INTEGER,
        room           TEXT,
        quantity       TEXT NOT NULL,
        value          REAL,
        status         TEXT NOT NULL,
        unit           TEXT NOT NULL,
        measured_at_ms INTEGER,
        received_at_ms INTEGER NOT NULL,
        clock_synced   INTEGER NOT NULL
    );
    CREATE TABLE outbox_vital (seq INTEGER PRIMARY KEY);
    CREATE TABLE outbox_room (seq INTEGER PRIMARY KEY);
    CREATE TABLE evictions (
        reason TEXT NOT NULL,
        class  TEXT NOT NULL,
        count  INTEGER NOT NULL,
        PRIMARY KEY (reason, class)
    ) WITHOUT ROWID;
    INSERT INTO readings (seq, id, device, resident_id, room, quantity, value, status, unit,
                          measured_at_ms, received_at_ms, clock_synced)
        SELECT seq, id, unhex(replace(device, ':', '')), resident_id, room, quantity, value,
               status, unit, measured_at_ms, received_at_ms, clock_synced
        FROM outbox ORDER BY seq;
    INSERT INTO outbox_vital (seq) SELECT seq FROM outbox WHERE vital != 0 ORDER BY seq;
    INSERT INTO outbox_room (seq) SELECT seq FROM outbox WHERE vital = 0 ORDER BY seq;
    DROP TABLE outbox;
    "#,
    // 3: the device registry's pairing state and the pairing record. Whether
    // BlueZ holds a bond, when it was made, when the device was last assigned and
    // its last signal strength survive restarts; `pairing_events` is the record of
    // every window opened or closed, pairing, agent refusal, assignment,
    // un-assignment and removal, with who asked (the API caller's address, "cli",
    // or "gateway" for what the gateway did by itself).
    r#"
    ALTER TABLE devices ADD COLUMN paired INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN bonded_at_ms INTEGER;
    ALTER TABLE devices ADD COLUMN assigned_at_ms INTEGER;
    ALTER TABLE devices ADD COLUMN rssi INTEGER;
    CREATE TABLE pairing_events (
        seq    INTEGER PRIMARY KEY,
        at_ms  INTEGER NOT NULL,
        device TEXT,
        what   TEXT NOT NULL,
        who    TEXT,
        detail TEXT
    );
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, VERSION)
}

/// Brings the database up to `target` (tests build every earlier version with it).
pub fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: VERSION,
        });
    }
    let target = usize::try_from(target.min(VERSION)).unwrap_or(0);
    let start = usize::try_from(current).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(start) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
