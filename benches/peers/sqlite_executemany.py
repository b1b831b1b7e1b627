#!/usr/bin/env python3
"""Peer reference for benches/store.rs: Python's sqlite3 `executemany` into the
same schema (carehub v8: `readings` with integer codes, the device as a code and no
stored id, as carehub stores a sensor's reading; the per-priority outbox range
tables) at the same settings (1 KiB pages, WAL, synchronous=FULL, the WAL
checkpointed at about 4 MiB), `batch` readings per transaction.

Prints one JSON object: readings, seconds, readings_per_s, write_bytes_per_reading.
Usage: sqlite_executemany.py DB READINGS BATCH
"""
import json
import os
import sqlite3
import sys
import time

SCHEMA = """
CREATE TABLE quantity_codes (code INTEGER PRIMARY KEY, quantity TEXT NOT NULL UNIQUE);
CREATE TABLE unit_codes (code INTEGER PRIMARY KEY, unit TEXT NOT NULL UNIQUE);
CREATE TABLE status_codes (code INTEGER PRIMARY KEY, status TEXT NOT NULL UNIQUE);
INSERT INTO status_codes VALUES (0, 'ok');
INSERT INTO quantity_codes VALUES (1, 'heart_rate'), (2, 'temperature');
INSERT INTO unit_codes VALUES (1, '/min'), (2, 'Cel');
CREATE TABLE device_codes (code INTEGER PRIMARY KEY, address BLOB NOT NULL UNIQUE);
CREATE TABLE reading_id_epochs (
    first_seq INTEGER PRIMARY KEY,
    prefix    BLOB NOT NULL CHECK (length(prefix) = 10)
);
INSERT INTO reading_id_epochs VALUES (1, randomblob(10));
CREATE TABLE readings (
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
CREATE TABLE outbox_vital (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE outbox_room (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
"""


def write_bytes():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def rows(start, n, now_ms):
    """The same mix as the Rust bench: two vital signs for every room reading.
    Like carehub, a batch's vital signs go first and its room data after them, so
    each class of a batch is one range of sequence numbers."""
    vital_rows, room_rows = [], []
    for i in range(start, start + n):
        device = 1 + i % 40  # the code of C0:00:00:00:00:xx
        if i % 3 != 2:
            vital_rows.append([None, device, 1 + i % 40, None, 1, 60.0 + i % 40, 0, 1, None, now_ms + i, 1])
        else:
            room_rows.append([None, device, None, "Lounge", 2, 21.5, 0, 2, None, now_ms + i, 1])
    out_r, ranges = [], []
    seq = start + 1
    for table, group in (("outbox_vital", vital_rows), ("outbox_room", room_rows)):
        if group:
            ranges.append((table, seq, seq + len(group) - 1))
        for row in group:
            out_r.append(tuple([seq] + row))
            seq += 1
    return out_r, ranges


def main():
    db, total, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(db + suffix)
        except FileNotFoundError:
            pass
    conn = sqlite3.connect(db, isolation_level=None)
    # The settings carehub gives a new database (src/store/writer.rs).
    conn.execute("PRAGMA page_size=1024")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=4000")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO device_codes VALUES (?, ?)",
                     [(1 + d, bytes([0xC0, 0, 0, 0, 0, d])) for d in range(40)])
    now_ms = int(time.time() * 1000)
    before = write_bytes()
    t0 = time.perf_counter()
    done = 0
    while done < total:
        n = min(batch, total - done)
        r, ranges = rows(done, n, now_ms)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", r)
        for table, first, last in ranges:
            conn.execute(f"INSERT INTO {table} VALUES (?, ?)", (first, last))
        conn.execute("COMMIT")
        done += n
    secs = time.perf_counter() - t0
    conn.close()
    wb = write_bytes() - before
    print(json.dumps({
        "readings": total,
        "seconds": secs,
        "readings_per_s": total / secs,
        "write_bytes_per_reading": wb / total,
    }))


if __name__ == "__main__":
    main()
