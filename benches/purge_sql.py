# Times the history purge's SQL, before and after issue 21, on a month-long outage's file:
# python3 benches/purge_sql.py READINGS READINGS_PER_COMMIT FILE (docs/reliability.md).
import sqlite3, time, os, sys
N = int(sys.argv[1]); PER_COMMIT = int(sys.argv[2]); path = sys.argv[3]
DAY = 86_400_000
now = 1_800_000_000_000
if not os.path.exists(path):
    c = sqlite3.connect(path)
    c.executescript("""
    PRAGMA page_size=1024; PRAGMA journal_mode=WAL;
    CREATE TABLE readings (seq INTEGER PRIMARY KEY, id BLOB, device_code INTEGER NOT NULL,
      resident_id INTEGER, room TEXT, quantity_code INTEGER NOT NULL, value REAL,
      status_code INTEGER NOT NULL, unit_code INTEGER NOT NULL, measured_offset_ms INTEGER,
      received_at_ms INTEGER NOT NULL, clock_synced INTEGER NOT NULL);
    CREATE TABLE outbox_vital (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
    CREATE TABLE outbox_room (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
    """)
    # Readings received over 30 days; each commit of PER_COMMIT: 2/3 vital first, then room.
    c.execute("""WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq+1 FROM s WHERE seq < ?)
      INSERT INTO readings SELECT seq, NULL, seq % 40, 1 + seq % 40, NULL, 1, 60.0, 1, 1, NULL,
        ? - (30 * ? * (? - seq)) / ?, 1 FROM s""", (N, now, DAY, N, N))
    v = PER_COMMIT * 2 // 3
    c.execute("""WITH RECURSIVE k(b) AS (SELECT 0 UNION ALL SELECT b + ? FROM k WHERE b + ? < ?)
      INSERT INTO outbox_vital SELECT b + 1, b + ? FROM k""", (PER_COMMIT, PER_COMMIT, N, v))
    c.execute("""WITH RECURSIVE k(b) AS (SELECT 0 UNION ALL SELECT b + ? FROM k WHERE b + ? < ?)
      INSERT INTO outbox_room SELECT b + ? + 1, min(b + ?, ?) FROM k""", (PER_COMMIT, PER_COMMIT, N, v, PER_COMMIT, N))
    c.commit(); c.close()
c = sqlite3.connect(path)
cutoff = now - 7 * DAY
print(f"{N} readings, {PER_COMMIT} a commit, file {os.path.getsize(path)/1e6:.0f} MB, "
      f"ranges {c.execute('select (select count(*) from outbox_vital)+(select count(*) from outbox_room)').fetchone()[0]}")
t = time.time()
q = c.execute("""SELECT r.seq, r.received_at_ms,
    coalesce((SELECT v.last_seq FROM outbox_vital v WHERE v.first_seq <= r.seq ORDER BY v.first_seq DESC LIMIT 1), -1) >= r.seq
    OR coalesce((SELECT m.last_seq FROM outbox_room m WHERE m.first_seq <= r.seq ORDER BY m.first_seq DESC LIMIT 1), -1) >= r.seq
    FROM readings r ORDER BY r.seq""")
n = 0
for seq, rec, inbox in q:
    if rec >= cutoff: break
    n += 1
print(f"old scan (one pass, finds nothing to purge): {n} readings read in {time.time()-t:.2f} s")
# The new walk (limits::purge_history), PURGE_STEPS 2000 per call, 10 calls a pass.
def at_or_after(t, seq):
    r = c.execute(f"SELECT first_seq, last_seq FROM {t} WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (seq,)).fetchone()
    if r and r[1] >= seq: return r
    return c.execute(f"SELECT first_seq, last_seq FROM {t} WHERE first_seq > ? ORDER BY first_seq LIMIT 1", (seq,)).fetchone()
def call(pos, mx=10000, steps_max=2000):
    purged = 0; steps = 0
    while purged < mx and steps < steps_max:
        steps += 1
        inside = None; gap_end = 2**62
        for t in ("outbox_room", "outbox_vital"):
            r = at_or_after(t, pos)
            if r is None: continue
            if r[0] <= pos: inside = max(inside or r[1], r[1])
            else: gap_end = min(gap_end, r[0] - 1)
        if inside is not None: pos = inside + 1; continue
        rows = c.execute("SELECT seq, received_at_ms FROM readings WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?", (pos, gap_end, mx - purged)).fetchall()
        for s, rec in rows:
            if rec >= cutoff: return pos, purged, True
            purged += 1; pos = s + 1
        if len(rows) < mx - purged + len(rows) and len(rows) < mx:
            if gap_end == 2**62: return pos, purged, True
            pos = gap_end + 1
    return pos, purged, False
pos = 0; calls = 0; worst = 0; total = time.time(); passes = 0
while True:
    passes += 1
    tp = time.time()
    done = False
    for _ in range(10):
        t1 = time.time(); pos, p, swept = call(pos); calls += 1
        worst = max(worst, time.time() - t1)
        if swept: done = True; break
    print(f"  new pass {passes}: {time.time()-tp:.3f} s")
    if done: break
print(f"new walk: a sweep of {calls} calls over {passes} passes, {time.time()-total:.2f} s in all, slowest call {worst*1000:.0f} ms")
