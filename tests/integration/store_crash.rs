//! Crash test of the store: a child process ingests and drains at full speed and
//! is killed with SIGKILL at a random moment, again and again on the same file.
//! After each kill the database must pass `PRAGMA integrity_check`, hold every
//! reading whose commit was reported before the kill (in the outbox or in
//! history), and hold no id twice. Half the readings bring their ids, half get
//! them from the store (schema v8: from the sequence number and the prefix of the
//! run's epoch; every kill and restart begins a new epoch on the same file).
//!
//! 50 kills by default; `CAREHUB_CRASH_RUNS=500` for a longer run.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use carehub::model::ReadingId;
use carehub::store::crash_child::{brings_ids, measured_ms, reading_id};
use rand::{Rng, SeedableRng};

#[test]
fn store_survives_sigkill_at_random_moments() {
    let runs: u32 = std::env::var("CAREHUB_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test: {runs} kills, seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    // Each committed reading: its id when it brought one, and its device time.
    let mut committed: Vec<(Option<ReadingId>, i64)> = Vec::new();
    let mut total_kills_mid_work = 0;
    for run in 0..runs {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carehub"))
            .args(["store-crash-child", "--db"])
            .arg(&db)
            .args(["--run", &run.to_string()])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let collector = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut buf = String::new();
            loop {
                buf.clear();
                match reader.read_line(&mut buf) {
                    Ok(0) | Err(_) => break,
                    // Only whole lines count: a line cut by the kill was never reported.
                    Ok(_) if buf.ends_with('\n') => {
                        if buf == "ready\n" {
                            let _ = ready_tx.send(());
                        } else {
                            lines.push(buf.trim_end().to_owned());
                        }
                    }
                    Ok(_) => break,
                }
            }
            lines
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("run {run}: the child never became ready"));
        std::thread::sleep(Duration::from_millis(rng.random_range(5..250)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "run {run}: the child was meant to die, not exit"
        );
        let lines = collector.join().unwrap();
        if !lines.is_empty() {
            total_kills_mid_work += 1;
        }
        for line in &lines {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f[0], "c", "run {run}: unexpected line {line:?}");
            let (r, p, first, n): (u32, u8, u32, u32) = (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            );
            assert_eq!(r, run);
            committed.extend((first..first + n).map(|i| {
                (
                    brings_ids(p).then(|| reading_id(r, p, i)),
                    measured_ms(r, p, i),
                )
            }));
        }
        check(&db, &committed, run);
    }
    assert!(
        total_kills_mid_work >= runs * 9 / 10,
        "only {total_kills_mid_work} of {runs} kills came after some commits; the test is not exercising the store"
    );
}

fn check(db: &std::path::Path, committed: &[(Option<ReadingId>, i64)], run: u32) {
    let c = rusqlite::Connection::open(db).unwrap();
    let verdict: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok", "run {run}: integrity check");
    let times: HashSet<i64> = c
        .prepare("SELECT received_at_ms + measured_offset_ms FROM readings")
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let ids: HashSet<Vec<u8>> = c
        .prepare("SELECT id FROM readings WHERE id IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let missing: Vec<String> = committed
        .iter()
        .filter(|(id, t)| {
            !times.contains(t) || id.is_some_and(|id| !ids.contains(&id.as_bytes()[..]))
        })
        .take(5)
        .map(|(id, t)| format!("{id:?} at {t}"))
        .collect();
    assert!(
        missing.is_empty(),
        "run {run}: committed readings lost: {missing:?}"
    );
    // Every reading stored without an id lies in an epoch, so it has one; the
    // ids brought along are unique. (Derived ids are unique by construction: one
    // sequence number per row, one random prefix per run.)
    let (nameless, dup_brought): (i64, i64) = c
        .query_row(
            "SELECT (SELECT count(*) FROM readings r WHERE r.id IS NULL AND NOT EXISTS
                        (SELECT 1 FROM reading_id_epochs e WHERE e.first_seq <= r.seq)),
                    (SELECT count(id) - count(DISTINCT id) FROM readings)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(nameless, 0, "run {run}: a reading with no id and no epoch");
    assert_eq!(dup_brought, 0, "run {run}: an id brought twice");
    // Through the view, which rebuilds ids and addresses: no id twice among the
    // readings waiting, whichever run stored them.
    let dup_ids: i64 = c
        .query_row(
            "SELECT count(*) - count(DISTINCT r.id) FROM readings_text r
             JOIN (SELECT first_seq, last_seq FROM outbox_vital
                   UNION ALL SELECT first_seq, last_seq FROM outbox_room) o
               ON r.seq BETWEEN o.first_seq AND o.last_seq",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dup_ids, 0, "run {run}: an id twice in the outbox");
    let in_both: i64 = c
        .query_row(
            "WITH o AS (SELECT 'vital' AS class, first_seq, last_seq FROM outbox_vital
                       UNION ALL SELECT 'room', first_seq, last_seq FROM outbox_room)
             SELECT count(*) FROM o a JOIN o b
               ON (a.first_seq < b.first_seq OR (a.first_seq = b.first_seq AND a.class < b.class))
              AND b.first_seq <= a.last_seq",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        in_both, 0,
        "run {run}: outbox ranges overlap (a reading twice, or in both classes)"
    );
    let orphans: i64 = c
        .query_row(
            "SELECT (SELECT coalesce(sum(last_seq - first_seq + 1), 0)
                     FROM (SELECT first_seq, last_seq FROM outbox_vital
                           UNION ALL SELECT first_seq, last_seq FROM outbox_room))
                  - (SELECT count(*) FROM readings r
                     JOIN (SELECT first_seq, last_seq FROM outbox_vital
                           UNION ALL SELECT first_seq, last_seq FROM outbox_room) o
                       ON r.seq BETWEEN o.first_seq AND o.last_seq)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0, "run {run}: an outbox entry without its reading");
}
