//! The database file damaged while the daemon runs (issue 21,
//! docs/decisions/0015): `carehub run` with the simulator builds a backlog
//! while the broker is down; the test overwrites pages in the middle of the
//! readings table of the live file; the broker comes up and the uplink's drain
//! meets the damage. The daemon must say so and stop on purpose (non-zero, no
//! panic); started again, as systemd does, it moves the file aside, starts a
//! fresh one, copies into it every undelivered reading that can still be read,
//! and says so on the Gateway page, in the status JSON and in a technical alert.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::mqtt_support::{Broker, Pki, Subscriber};
use super::support::{Daemon, free_port, http_get, wait_for, web_state_dir};

fn write_config(dir: &Path, pki: &Pki, port: u16, web: u16) -> PathBuf {
    let p = pki.pair("gateway");
    let text = format!(
        "[site]\nid = \"oak-house\"\ngateway_id = \"gw-test\"\n\
         [sensors]\nsource = \"simulator\"\n\
         [simulator]\nresidents = 10\nevery_ms = 250\n\
         [store]\npath = \"{db}\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\nhttps = false\n\
         [uplink]\nenabled = true\nhost = \"localhost\"\nport = {port}\n\
         ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         keep_alive_s = 5\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\n",
        db = dir.join("carehub.db").display(),
        ca = pki.path("ca.pem").display(),
        cert = p.cert.display(),
        key = p.key.display(),
    );
    let path = dir.join("carehub.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path, log: &Path) -> Daemon {
    let child = super::support::carehub_as_service()
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Daemon { child: Some(child) }
}

fn uuid(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes)
        .expect("a stored id is 16 bytes")
        .hyphenated()
        .to_string()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const OUTBOX: &str = "SELECT first_seq, last_seq FROM outbox_vital
                      UNION ALL SELECT first_seq, last_seq FROM outbox_room";

fn outbox_depth(db: &Path) -> Option<i64> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.query_row(
        &format!("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM ({OUTBOX})"),
        [],
        |r| r.get(0),
    )
    .ok()
}

/// Every undelivered reading of the file: sequence number → id.
fn outbox_ids(c: &Connection) -> BTreeMap<i64, String> {
    c.prepare(&format!(
        "SELECT t.seq, t.id FROM readings_text t JOIN ({OUTBOX}) o
           ON t.seq BETWEEN o.first_seq AND o.last_seq"
    ))
    .unwrap()
    .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
    .unwrap()
    .map(|r| {
        let (seq, id) = r.unwrap();
        (seq, uuid(&id))
    })
    .collect()
}

/// The leaf pages of the readings table, left (oldest) to right.
fn reading_leaves(c: &Connection) -> Vec<i64> {
    c.prepare(
        "SELECT pageno FROM dbstat WHERE name = 'readings' AND pagetype = 'leaf' ORDER BY path",
    )
    .unwrap()
    .query_map([], |r| r.get(0))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn gateway_json(addr: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) = http_get(addr, "/api/v1/gateway")?;
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

#[test]
fn a_database_damaged_while_running_is_reported_replaced_and_its_readable_backlog_kept() {
    let pki = Pki::new();
    // Not started yet: the uplink cannot connect and a backlog builds up.
    let mut broker = Broker::new(&pki, "server");
    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], web));
    let config = write_config(dir.path(), &pki, broker.port, web);
    let db = dir.path().join("carehub.db");
    let log1 = dir.path().join("carehub-1.log");
    let mut daemon = start(&config, &log1);
    wait_for(Duration::from_secs(60), || {
        outbox_depth(&db).filter(|n| *n >= 2000)
    })
    .expect("a backlog of 2,000 readings builds up while the broker is down");

    // Every page of the file current (the WAL emptied), then the undelivered
    // readings as they are, then garbage over three leaves in the middle of
    // the readings table: pages the writer, appending at the end, never
    // touches again.
    let test = Connection::open(&db).unwrap();
    test.busy_timeout(Duration::from_secs(10)).unwrap();
    let (busy, _, _): (i64, i64, i64) = test
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0, "the checkpoint completed");
    let before = outbox_ids(&test);
    let leaves = reading_leaves(&test);
    assert!(leaves.len() > 20, "{} leaves", leaves.len());
    let damaged_pages: Vec<i64> = leaves[leaves.len() / 2 - 1..=leaves.len() / 2 + 1].to_vec();
    let page_size: i64 = test
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    drop(test);
    let damaged_at = unix_ms();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        for &p in &damaged_pages {
            f.seek(SeekFrom::Start(((p - 1) * page_size) as u64))
                .unwrap();
            f.write_all(&vec![0x5a; page_size as usize]).unwrap();
        }
        f.sync_all().unwrap();
    }

    // Readings committed after the damage (to the file's last pages, which
    // read), before anything meets it: they must not be lost either.
    let top = |db: &Path| -> Option<i64> {
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?
            .query_row("SELECT max(seq) FROM readings", [], |r| r.get(0))
            .ok()
    };
    let top_at_damage = top(&db).expect("the last reading's seq");
    wait_for(Duration::from_secs(60), || {
        top(&db).filter(|t| *t > top_at_damage)
    })
    .expect("readings are committed after the damage");

    // The broker comes up; the drain reads the backlog oldest first and meets
    // the damaged pages.
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let status = wait_for(Duration::from_secs(90), || {
        daemon.child.as_mut().unwrap().try_wait().unwrap()
    });
    let first_log = std::fs::read_to_string(&log1).unwrap();
    let status =
        status.unwrap_or_else(|| panic!("the daemon did not stop on the damage\n{first_log}"));
    let stopped_at = unix_ms();
    daemon.child = None;
    assert!(
        !status.success(),
        "stopped on purpose, with a failure for systemd to restart it\n{first_log}"
    );
    assert!(
        first_log.contains("ALARM: the database file is damaged")
            && first_log.contains("database disk image is malformed")
            && first_log.contains("stopped because the database file"),
        "the damage and the stop are logged in words\n{first_log}"
    );
    assert!(!first_log.contains("panicked"), "{first_log}");

    // Started again, as systemd's Restart=on-failure does.
    let log2 = dir.path().join("carehub-2.log");
    let daemon = start(&config, &log2);
    web_state_dir(addr, dir.path());
    let g = wait_for(Duration::from_secs(60), || gateway_json(addr)).unwrap_or_else(|| {
        panic!(
            "the daemon came back\n{}",
            std::fs::read_to_string(&log2).unwrap()
        )
    });
    let storage = &g["storage"];
    let words = storage["corruption"]
        .as_str()
        .unwrap_or_else(|| panic!("the status JSON says the database was damaged: {g}"));
    assert!(
        words.contains("found damaged") && words.contains("moved to"),
        "{words}"
    );
    assert!(storage["corruption_found_at"].is_string(), "{g}");
    assert_eq!(storage["replaced_at_start"], true, "{g}");
    let (_, page) = http_get(addr, "/gateway").unwrap();
    assert!(
        page.contains("DATABASE REPLACED"),
        "the Gateway page says so"
    );
    let alert = wait_for(Duration::from_secs(30), || {
        let (status, body) = http_get(addr, "/api/v1/alerts")?;
        assert_eq!(status, 200, "{body}");
        let alerts: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        alerts
            .into_iter()
            .find(|a| a["cause"] == "gateway/database")
    })
    .expect("a technical alert says the database was damaged");
    assert_eq!(alert["severity"], "urgent", "{alert}");

    // The damaged file is kept aside, as it was; the fresh one is sound.
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("carehub.db.corrupt-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let bytes = std::fs::read(&aside[0]).unwrap();
    let p = damaged_pages[0];
    assert!(
        bytes[((p - 1) * page_size) as usize..(p * page_size) as usize]
            .iter()
            .all(|b| *b == 0x5a),
        "the damaged file is kept as it was"
    );
    let fresh = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let check: String = fresh
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (found_at, unreadable_recorded): (i64, i64) = fresh
        .query_row(
            "SELECT found_at_ms, unreadable FROM store_damage ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        (damaged_at..=stopped_at).contains(&found_at),
        "the record says when the damage was found while running"
    );

    // Which of the undelivered readings the test itself can still read in the
    // damaged file, row by row: those must not be lost.
    let old = Connection::open_with_flags(&aside[0], OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    type Rows<'a> = Vec<(&'a i64, &'a String)>;
    let (readable, unreadable): (Rows, Rows) = before.iter().partition(|(seq, _)| {
        old.query_row(
            "SELECT id FROM readings_text WHERE seq = ?1",
            [**seq],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .is_ok()
    });
    assert!(
        !unreadable.is_empty() && unreadable.len() < 200,
        "the damage cost some rows: {} of {}",
        unreadable.len(),
        before.len()
    );
    assert_eq!(
        unreadable_recorded,
        unreadable.len() as i64,
        "the record counts exactly the undelivered readings that could not be read"
    );
    eprintln!(
        "undelivered before the damage: {}; unreadable after it: {}; damaged pages: {damaged_pages:?} of {} leaves",
        before.len(),
        unreadable.len(),
        leaves.len()
    );
    let readable: BTreeSet<&String> = readable.into_iter().map(|(_, id)| id).collect();
    // Delivered before the stop, or copied into the fresh file and delivered
    // since: every one reaches the cloud.
    let missing = wait_for(Duration::from_secs(60), || {
        let got = sub.reading_ids();
        let missing: Vec<&&String> = readable
            .iter()
            .filter(|id| !got.contains_key(id.as_str()))
            .collect();
        missing.is_empty().then_some(())
    });
    if missing.is_none() {
        let got = sub.reading_ids();
        let lost: Vec<&&String> = readable
            .iter()
            .filter(|id| !got.contains_key(id.as_str()))
            .collect();
        panic!(
            "{} readable undelivered readings never reached the cloud, e.g. {:?}\n{}",
            lost.len(),
            lost.first(),
            std::fs::read_to_string(&log2).unwrap()
        );
    }
    // Readings received after the damage and before the stop (in the damaged
    // file's last pages, which read) are delivered or in the fresh file;
    // readings keep coming after the restart.
    let last_before = *before.keys().next_back().unwrap();
    let after_damage: Vec<String> = old
        .prepare("SELECT id, received_at_ms FROM readings_text WHERE seq > ?1")
        .unwrap()
        .query_map([last_before], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .filter(|(_, received)| *received >= damaged_at)
        .map(|(id, _)| uuid(&id))
        .collect();
    assert!(
        !after_damage.is_empty(),
        "readings were received after the damage"
    );
    let in_fresh: BTreeSet<String> = fresh
        .prepare("SELECT id FROM readings_text")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|id| uuid(&id.unwrap()))
        .collect();
    let got = sub.reading_ids();
    let lost: Vec<&String> = after_damage
        .iter()
        .filter(|id| !in_fresh.contains(*id) && !got.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} readings received after the damage are lost, e.g. {:?}",
        lost.len(),
        after_damage.len(),
        lost.first()
    );
    // The restarted daemon goes on receiving (on a busy machine its first
    // commit can come a while after its answers above).
    let since_restart = wait_for(Duration::from_secs(60), || {
        let n: i64 = fresh
            .query_row(
                "SELECT count(*) FROM readings WHERE received_at_ms > ?1",
                [stopped_at],
                |r| r.get(0),
            )
            .ok()?;
        (n > 0).then_some(n)
    });
    assert!(
        since_restart.is_some(),
        "readings received after the restart"
    );
    let out = daemon.stop(libc::SIGTERM);
    let second_log = std::fs::read_to_string(&log2).unwrap();
    assert!(
        out.status.success(),
        "a clean stop on the fresh file\n{second_log}"
    );
    assert!(!second_log.contains("panicked"), "{second_log}");
}
