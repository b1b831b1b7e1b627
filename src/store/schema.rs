//! The database schema and its migrations, numbered by `PRAGMA user_version`.
//!
//! Each migration takes the database from version N-1 to N inside one transaction;
//! a database newer than this build is refused rather than guessed at.
//!
//! From version 2 every reading lives once in `readings` (the local history, kept
//! `history_days`), and the outbox is two rowid-only tables of sequence numbers,
//! one per priority class. An ack deletes a few bytes from an outbox table instead
//! of copying the reading, which keeps bytes written per reading low on SD cards.
//!
//! From version 4 the outbox tables hold ranges `(first_seq, last_seq)` of
//! consecutive sequence numbers, and quantity, unit and status are integer codes
//! (`quantity_codes`, `unit_codes`, `status_codes`; the view `readings_text`
//! joins them back into words).

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
    // 4 (store and uplink performance, issues 4 and 5): fewer bytes and fewer
    // statements per reading. Quantity, unit and status become small integer codes
    // kept in three lookup tables (status "ok" is 0, which SQLite stores in no
    // bytes at all); the columns are renamed so that SQL written for the text
    // columns fails loudly instead of matching nothing, and `readings_text` shows
    // the words. The outbox tables hold ranges of consecutive sequence numbers
    // instead of one row per reading: the writer inserts each commit's vital signs
    // and its room data as two consecutive runs, so a commit adds one range row per
    // class and an ack of a lease deletes or trims a few ranges.
    r#"
    CREATE TABLE quantity_codes (code INTEGER PRIMARY KEY, quantity TEXT NOT NULL UNIQUE);
    CREATE TABLE unit_codes (code INTEGER PRIMARY KEY, unit TEXT NOT NULL UNIQUE);
    CREATE TABLE status_codes (code INTEGER PRIMARY KEY, status TEXT NOT NULL UNIQUE);
    INSERT INTO status_codes (code, status) VALUES (0, 'ok');
    INSERT INTO quantity_codes (quantity) SELECT DISTINCT quantity FROM readings ORDER BY 1;
    INSERT INTO unit_codes (unit) SELECT DISTINCT unit FROM readings ORDER BY 1;
    INSERT OR IGNORE INTO status_codes (status) SELECT DISTINCT status FROM readings ORDER BY 1;
    CREATE TABLE readings_v4 (
        seq            INTEGER PRIMARY KEY,
        id             BLOB NOT NULL,
        device         BLOB NOT NULL,
        resident_id    INTEGER,
        room           TEXT,
        quantity_code  INTEGER NOT NULL,
        value          REAL,
        status_code    INTEGER NOT NULL,
        unit_code      INTEGER NOT NULL,
        measured_at_ms INTEGER,
        received_at_ms INTEGER NOT NULL,
        clock_synced   INTEGER NOT NULL
    );
    INSERT INTO readings_v4 (seq, id, device, resident_id, room, quantity_code, value,
                             status_code, unit_code, measured_at_ms, received_at_ms, clock_synced)
        SELECT r.seq, r.id, r.device, r.resident_id, r.room, q.code, r.value, s.code, u.code,
               r.measured_at_ms, r.received_at_ms, r.clock_synced
        FROM readings r
        JOIN quantity_codes q ON q.quantity = r.quantity
        JOIN status_codes s ON s.status = r.status
        JOIN unit_codes u ON u.unit = r.unit
        ORDER BY r.seq;
    DROP TABLE readings;
    ALTER TABLE readings_v4 RENAME TO readings;
    CREATE VIEW readings_text AS
        SELECT r.seq, r.id, r.device, r.resident_id, r.room, q.quantity, r.value, s.status,
               u.unit, r.measured_at_ms, r.received_at_ms, r.clock_synced
        FROM readings r
        JOIN quantity_codes q ON q.code = r.quantity_code
        JOIN status_codes s ON s.code = r.status_code
        JOIN unit_codes u ON u.code = r.unit_code;
    CREATE TABLE outbox_vital_v4 (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
    CREATE TABLE outbox_room_v4 (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
    INSERT INTO outbox_vital_v4 (first_seq, last_seq)
        SELECT min(seq), max(seq)
        FROM (SELECT seq, seq - row_number() OVER (ORDER BY seq) AS run FROM outbox_vital)
        GROUP BY run ORDER BY 1;
    INSERT INTO outbox_room_v4 (first_seq, last_seq)
        SELECT min(seq), max(seq)
        FROM (SELECT seq, seq - row_number() OVER (ORDER BY seq) AS run FROM outbox_room)
        GROUP BY run ORDER BY 1;
    DROP TABLE outbox_vital;
    DROP TABLE outbox_room;
    ALTER TABLE outbox_vital_v4 RENAME TO outbox_vital;
    ALTER TABLE outbox_room_v4 RENAME TO outbox_room;
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
