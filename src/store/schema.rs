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
//!
//! From version 8 a reading's id is stored only when it came with one (migrated
//! rows, staff observation sets); otherwise it is derived from `seq` and the
//! epoch's prefix (`ids.rs`). The device is a code (`device_codes`) and the
//! device's time an offset from the received time; `readings_text` shows all three
//! as before.

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
    // 4 (web accounts, issue 7): staff accounts, server-side sessions (only the
    // SHA-256 of each token is kept), failed sign-ins (so a restart does not reset
    // a lock-out), one-time codes (the first-start setup code, the demo sign-in
    // link; hashes only) and the audit log of views and changes.
    r#"
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('admin', 'nurse', 'carer')),
        disabled      INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL,
        created_by    TEXT
    );
    CREATE TABLE sessions (
        token_hash    BLOB PRIMARY KEY,
        user_id       INTEGER NOT NULL REFERENCES users(id),
        csrf          TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL,
        client        TEXT
    ) WITHOUT ROWID;
    CREATE INDEX sessions_user ON sessions (user_id);
    CREATE TABLE login_failures (
        seq   INTEGER PRIMARY KEY,
        key   TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures (key, at_ms);
    CREATE TABLE one_time_codes (
        code_hash     BLOB PRIMARY KEY,
        kind          TEXT NOT NULL,
        user_id       INTEGER REFERENCES users(id),
        expires_at_ms INTEGER NOT NULL,
        used_at_ms    INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE audit_log (
        seq    INTEGER PRIMARY KEY,
        at_ms  INTEGER NOT NULL,
        who    TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        client TEXT NOT NULL,
        status INTEGER NOT NULL
    );
    "#,
    // 5: alerts (issue 8): the
    // lifecycle of each alert, and the thresholds a nurse set per resident. The
    // partial unique index is the "one open alert per cause" rule, enforced by
    // SQLite itself so that no code path can open a duplicate.
    r#"
    CREATE TABLE alerts (
        id                 INTEGER PRIMARY KEY,
        uuid               TEXT NOT NULL UNIQUE,
        cause_key          TEXT NOT NULL,
        resident_id        INTEGER,
        rule               TEXT NOT NULL,
        severity           TEXT NOT NULL,
        level              TEXT NOT NULL,
        score              INTEGER,
        message            TEXT NOT NULL,
        raised_at_ms       INTEGER NOT NULL,
        acknowledged_by    TEXT,
        acknowledged_at_ms INTEGER,
        resolved_at_ms     INTEGER,
        published          INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX alerts_open_cause ON alerts (cause_key) WHERE resolved_at_ms IS NULL;
    CREATE INDEX alerts_unpublished ON alerts (id) WHERE published = 0;
    CREATE TABLE resident_thresholds (
        resident_id      INTEGER PRIMARY KEY REFERENCES residents(id),
        spo2_low         REAL NOT NULL,
        pulse_low        REAL NOT NULL,
        pulse_high       REAL NOT NULL,
        systolic_low     REAL NOT NULL,
        systolic_high    REAL NOT NULL,
        temperature_low  REAL NOT NULL,
        temperature_high REAL NOT NULL,
        set_by           TEXT NOT NULL,
        set_at_ms        INTEGER NOT NULL
    );
    "#,
    // 6: staff observation sets and the SpO2 scale per resident (issue 8,
    // alerts2). The values of a set are ordinary readings (device 00:..:00, in
    // `readings` and the outbox); `observation_sets` records who entered them and
    // which readings they are. `resident_clinical` holds the scale a nurse chose;
    // each change also goes into the audit record (`pairing_events`).
    r#"
    CREATE TABLE observation_sets (
        id            INTEGER PRIMARY KEY,
        resident_id   INTEGER NOT NULL REFERENCES residents(id),
        taken_at_ms   INTEGER NOT NULL,
        entered_by    TEXT NOT NULL,
        entered_at_ms INTEGER NOT NULL,
        reading_ids   TEXT NOT NULL
    );
    CREATE TABLE resident_clinical (
        resident_id INTEGER PRIMARY KEY REFERENCES residents(id),
        spo2_scale  INTEGER NOT NULL CHECK (spo2_scale IN (1, 2)),
        set_by      TEXT NOT NULL,
        set_at_ms   INTEGER NOT NULL
    );
    "#,
    // 7 (store and uplink performance, issues 4 and 5): fewer bytes and fewer
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
    // 8 (bytes per reading, issue 4): a smaller row. A reading's id is no longer
    // stored when the store made it: it is derived from the sequence number and the
    // random prefix of the writer's epoch (`reading_id_epochs`, see `ids.rs`), so
    // `id` is NULL for new rows and kept for migrated ones. The device becomes a
    // code (`device_codes`), and the device's time is stored as its offset from the
    // received time (a few bytes instead of six). The view `readings_text` shows
    // the id, the address and the device's time as before.
    r#"
    CREATE TABLE device_codes (code INTEGER PRIMARY KEY, address BLOB NOT NULL UNIQUE);
    INSERT INTO device_codes (address) SELECT DISTINCT device FROM readings ORDER BY 1;
    CREATE TABLE reading_id_epochs (
        first_seq INTEGER PRIMARY KEY,
        prefix    BLOB NOT NULL CHECK (length(prefix) = 10)
    );
    CREATE TABLE readings_v8 (
        seq                INTEGER PRIMARY KEY,
        id                 BLOB,
        device_code        INTEGER NOT NULL,
        resident_id        INTEGER,
        room               TEXT,
        quantity_code      INTEGER NOT NULL,
        value              REAL,
        status_code        INTEGER NOT NULL,
        unit_code          INTEGER NOT NULL,
        measured_offset_ms INTEGER,
        received_at_ms     INTEGER NOT NULL,
        clock_synced       INTEGER NOT NULL
    );
    INSERT INTO readings_v8 (seq, id, device_code, resident_id, room, quantity_code, value,
                             status_code, unit_code, measured_offset_ms, received_at_ms,
                             clock_synced)
        SELECT r.seq, r.id, d.code, r.resident_id, r.room, r.quantity_code, r.value,
               r.status_code, r.unit_code, r.measured_at_ms - r.received_at_ms,
               r.received_at_ms, r.clock_synced
        FROM readings r JOIN device_codes d ON d.address = r.device
        ORDER BY r.seq;
    DROP VIEW readings_text;
    DROP TABLE readings;
    ALTER TABLE readings_v8 RENAME TO readings;
    CREATE VIEW readings_text AS
        SELECT r.seq,
               coalesce(r.id,
                        unhex((SELECT hex(e.prefix) FROM reading_id_epochs e
                               WHERE e.first_seq <= r.seq ORDER BY e.first_seq DESC LIMIT 1)
                              || printf('%012X', r.seq))) AS id,
               d.address AS device, r.resident_id, r.room, q.quantity, r.value, s.status,
               u.unit, r.received_at_ms + r.measured_offset_ms AS measured_at_ms,
               r.received_at_ms, r.clock_synced
        FROM readings r
        JOIN device_codes d ON d.code = r.device_code
        JOIN quantity_codes q ON q.code = r.quantity_code
        JOIN status_codes s ON s.code = r.status_code
        JOIN unit_codes u ON u.code = r.unit_code;
    "#,
    // 9 (encrypted sensors): a device's bind key, set by staff when it is
    // registered, and the last encryption counters accepted from it, so that a
    // frame captured before a restart of the gateway is not accepted after it.
    r#"
    ALTER TABLE devices ADD COLUMN bind_key BLOB CHECK (bind_key IS NULL OR length(bind_key) = 16);
    ALTER TABLE devices ADD COLUMN bthome_counter INTEGER;
    ALTER TABLE devices ADD COLUMN mibeacon_counter INTEGER;
    "#,
    // 10 (clinical safety, issue 15): the alert lifecycle of clinical alarm
    // practice. `absent_since_ms`: the cause stopped holding (reset when it holds
    // again); `cleared_at_ms`: it stayed away for the minimum hold (a clinical
    // alert stays open, "cleared, not yet seen", until acknowledged; a technical
    // one is resolved then). `announced_at_ms`/`announcements`: an unacknowledged
    // emergency alert is announced again. What the alert was computed from travels
    // with it (partial, missing, parameter, reading ids). `latest` keeps the
    // device's own time beside the trusted one, for "check clock". pvvx/ATC
    // counters are saved like BTHome's. `device_assignments` is the history of who
    // each device belonged to, so that a stored measurement is filed by its time.
    r#"
    ALTER TABLE alerts ADD COLUMN absent_since_ms INTEGER;
    ALTER TABLE alerts ADD COLUMN cleared_at_ms INTEGER;
    ALTER TABLE alerts ADD COLUMN announced_at_ms INTEGER;
    ALTER TABLE alerts ADD COLUMN announcements INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE alerts ADD COLUMN partial INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN missing TEXT NOT NULL DEFAULT '';
    ALTER TABLE alerts ADD COLUMN parameter TEXT;
    ALTER TABLE alerts ADD COLUMN reading_ids TEXT NOT NULL DEFAULT '';
    ALTER TABLE latest ADD COLUMN device_time_ms INTEGER;
    ALTER TABLE devices ADD COLUMN pvvx_counter INTEGER;
    CREATE TABLE device_assignments (
        id          INTEGER PRIMARY KEY,
        address     TEXT NOT NULL,
        resident_id INTEGER,
        room        TEXT,
        from_ms     INTEGER NOT NULL,
        until_ms    INTEGER
    );
    CREATE INDEX device_assignments_address ON device_assignments (address, from_ms);
    INSERT INTO device_assignments (address, resident_id, room, from_ms)
        SELECT address, resident_id, room, coalesce(assigned_at_ms, 0) FROM devices
        WHERE resident_id IS NOT NULL OR room IS NOT NULL;
    "#,
    // 11 (issue 21): the record of a damaged database, kept in the fresh file
    // that replaced it so that the Gateway page and the alert still say so after
    // the restart: when it was found, why, where the damaged file lies, and what
    // became of its undelivered readings (docs/decisions/0015).
    r#"
    CREATE TABLE store_damage (
        id             INTEGER PRIMARY KEY,
        found_at_ms    INTEGER NOT NULL,
        reason         TEXT NOT NULL,
        moved_to       TEXT,
        recovered      INTEGER NOT NULL,
        rescued        INTEGER NOT NULL,
        unreadable     INTEGER NOT NULL,
        recorded_at_ms INTEGER NOT NULL
    );
    "#,
    // 12 (virtual BLE lab, issue 18): the last glucose record sequence number
    // filed from each meter, so that after a restart the meter is asked (RACP)
    // only for newer records and none is filed twice.
    r#"
    ALTER TABLE devices ADD COLUMN racp_sequence INTEGER;
    "#,
    // 13 (hazard H35): a meter's numbering can start again (memory cleared,
    // reset, the number wrapping): the base time of the last record filed
    // (the meter's own clock, YYYYMMDDhhmmss as it gave it) tells a repeat
    // from a renumbered meter's new record; the last record before the latest
    // renumbering tells a wrapped meter's old records from new ones; when and
    // at which number the numbering started again is kept for staff (a
    // technical alert).
    r#"
    ALTER TABLE devices ADD COLUMN racp_base_time INTEGER;
    ALTER TABLE devices ADD COLUMN racp_before_sequence INTEGER;
    ALTER TABLE devices ADD COLUMN racp_before_base_time INTEGER;
    ALTER TABLE devices ADD COLUMN racp_renumbered_at_ms INTEGER;
    ALTER TABLE devices ADD COLUMN racp_renumbered_sequence INTEGER;
    "#,
    // 14 (hazard H35's residual): a meter whose numbering started again and
    // whose clock went back too gives base times that tell nothing: the
    // gateway keeps a fingerprint of each glucose record it filed (number,
    // base time and offset, value, unit, type; 16 bytes), the last 4,096 per
    // meter by running number `n`, written with the progress; a record is a
    // repeat only when that record was filed. `racp_numbering_from` is the
    // running number of the first record of the meter's current numbering;
    // `racp_legacy` marks meters that filed records before fingerprints were
    // kept (judged by the base time as well until 4,096 are kept).
    r#"
    CREATE TABLE glucose_filed (
        device TEXT    NOT NULL,
        n      INTEGER NOT NULL,
        record BLOB    NOT NULL,
        PRIMARY KEY (device, n)
    ) WITHOUT ROWID;
    ALTER TABLE devices ADD COLUMN racp_numbering_from INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN racp_legacy INTEGER NOT NULL DEFAULT 0;
    UPDATE devices SET racp_legacy = 1 WHERE racp_sequence IS NOT NULL;
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
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
