#!/usr/bin/env python3
"""Peer reference for benches/store.rs: Python's sqlite3 `executemany` into the
same schema (carehub v2 `readings` plus the per-priority outbox tables) at the same
settings (WAL, synchronous=FULL), `batch` readings per transaction.

Prints one JSON object: readings, seconds, readings_per_s, write_bytes_per_reading.
Usage: sqlite_executemany.py DB READINGS BATCH
"""
import json
import os
import sqlite3
import sys
import time
import uuid

SCHEMA = """
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
"""


def write_bytes():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def rows(start, n, now_ms):
    """The same mix as the Rust bench: two vital signs for every room reading."""
    out_r, out_v, out_m = [], [], []
    for i in range(start, start + n):
        seq = i + 1
        vital = i % 3 != 2
        device = bytes([0xC0, 0, 0, 0, 0, i % 40])
        rid = uuid.uuid4().bytes  # same size as the UUIDv7 carehub stores
        if vital:
            out_r.append((seq, rid, device, 1 + i % 40, None, "heart_rate", 60.0 + i % 40, "ok", "/min", None, now_ms + i, 1))
            out_v.append((seq,))
        else:
            out_r.append((seq, rid, device, None, "Lounge", "temperature", 21.5, "ok", "Cel", None, now_ms + i, 1))
            out_m.append((seq,))
    return out_r, out_v, out_m


def main():
    db, total, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(db + suffix)
        except FileNotFoundError:
            pass
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    now_ms = int(time.time() * 1000)
    before = write_bytes()
    t0 = time.perf_counter()
    done = 0
    while done < total:
        n = min(batch, total - done)
        r, v, m = rows(done, n, now_ms)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", r)
        conn.executemany("INSERT INTO outbox_vital VALUES (?)", v)
        conn.executemany("INSERT INTO outbox_room VALUES (?)", m)
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
