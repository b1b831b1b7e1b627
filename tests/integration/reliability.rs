//! The whole daemon under SIGKILL: `carehub run` with the simulator and the uplink
//! to a real mutual-TLS mosquitto with a cloud subscriber, killed with SIGKILL at a
//! random moment, again and again on the same database (ingest, commits, leases and
//! acks all in flight).
//!
//! After every kill, read from the file the daemon left behind:
//! - `PRAGMA integrity_check` is `ok`;
//! - every reading seen committed after an earlier kill is still there, with the
//!   same content (nothing committed is lost or changed);
//! - every reading no longer in the outbox was received by the subscriber (a
//!   reading leaves the outbox only when the cloud has it).
//!
//! At the end one undisturbed run drains the outbox: every committed reading
//! reaches the subscriber, and a reading received more than once is the same
//! reading each time.
//!
//! 6 kills by default (CI); `CAREHUB_KILL_ROUNDS=100` for the benchmark run in
//! `docs/reliability.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::mqtt_support::{Broker, Pki, Subscriber};
use super::support::{Daemon, free_port, wait_for};

/// What the subscriber and the database are compared on.
#[derive(Debug, Clone, PartialEq)]
struct Content {
    quantity: String,
    value: Option<f64>,
    unit: String,
    status: String,
}

/// Every reading in the file, by id, and the ids still in the outbox.
fn read_db(db: &Path) -> (BTreeMap<String, Content>, std::collections::HashSet<String>) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "integrity_check after a kill");
    let mut all = BTreeMap::new();
    let mut outbox = std::collections::HashSet::new();
    let mut stmt = conn
        .prepare(
            "SELECT t.id, t.quantity, t.value, t.unit, t.status,
                    EXISTS (SELECT 1 FROM outbox_vital o WHERE t.seq BETWEEN o.first_seq AND o.last_seq)
                 OR EXISTS (SELECT 1 FROM outbox_room o WHERE t.seq BETWEEN o.first_seq AND o.last_seq)
             FROM readings_text t",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let id: Vec<u8> = r.get(0)?;
            Ok((
                id,
                Content {
                    quantity: r.get(1)?,
                    value: r.get(2)?,
                    unit: r.get(3)?,
                    status: r.get(4)?,
                },
                r.get::<_, bool>(5)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, content, in_outbox) = row.unwrap();
        let id = uuid::Uuid::from_slice(&id)
            .expect("a stored id is 16 bytes")
            .hyphenated()
            .to_string();
        if in_outbox {
            outbox.insert(id.clone());
        }
        all.insert(id, content);
    }
    (all, outbox)
}

/// Every reading the subscriber has, by id, with each copy's content.
fn received(sub: &Subscriber) -> HashMap<String, Vec<Content>> {
    sub.reading_ids()
        .into_iter()
        .map(|(id, copies)| {
            let copies = copies
                .into_iter()
                .map(|v| Content {
                    quantity: v["quantity"].as_str().unwrap().to_owned(),
                    value: v["value"].as_f64(),
                    unit: v["unit"].as_str().unwrap().to_owned(),
                    status: v["status"].as_str().unwrap().to_owned(),
                })
                .collect();
            (id, copies)
        })
        .collect()
}

fn write_config(dir: &Path, pki: &Pki, port: u16) -> std::path::PathBuf {
    let p = pki.pair("gateway");
    let text = format!(
        "[site]\nid = \"oak-house\"\ngateway_id = \"gw-test\"\n\
         [sensors]\nsource = \"simulator\"\n\
         [simulator]\nresidents = 40\n\
         [store]\npath = \"{db}\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\nhttps = false\n\
         [uplink]\nenabled = true\nhost = \"localhost\"\nport = {port}\n\
         ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         keep_alive_s = 5\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\n",
        db = dir.join("carehub.db").display(),
        web = free_port(),
        ca = pki.path("ca.pem").display(),
        cert = p.cert.display(),
        key = p.key.display(),
    );
    let path = dir.join("carehub.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path) -> Daemon {
    let child = super::support::carehub_as_service()
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon { child: Some(child) }
}

/// Compares the file after a kill with everything known before it.
fn check_round(
    round: u32,
    db: &Path,
    committed: &mut BTreeMap<String, Content>,
    sub: &Subscriber,
) -> usize {
    let (now, outbox) = read_db(db);
    for (id, content) in committed.iter() {
        match now.get(id) {
            Some(c) => assert_eq!(c, content, "round {round}: reading {id} changed"),
            None => panic!("round {round}: committed reading {id} is gone"),
        }
    }
    // Acks travel after the PUBACK, and the subscriber may still be receiving
    // what the broker accepted just before the kill: give it a moment, then
    // every reading out of the outbox must be there.
    let delivered: Vec<&String> = now.keys().filter(|id| !outbox.contains(*id)).collect();
    let missing = wait_for(Duration::from_secs(10), || {
        let got = received(sub);
        let missing: Vec<&String> = delivered
            .iter()
            .copied()
            .filter(|id| !got.contains_key(*id))
            .collect();
        missing.is_empty().then_some(())
    });
    if missing.is_none() {
        let got = received(sub);
        let lost: Vec<&&String> = delivered
            .iter()
            .filter(|id| !got.contains_key(**id))
            .collect();
        panic!(
            "round {round}: {} readings left the outbox but never reached the subscriber, e.g. {:?}",
            lost.len(),
            lost.iter().take(3).collect::<Vec<_>>()
        );
    }
    let new = now.len() - committed.len();
    *committed = now;
    new
}

#[test]
fn daemon_killed_in_a_loop_loses_nothing_and_sends_only_what_it_stored() {
    let rounds: u32 = std::env::var("CAREHUB_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("daemon kill test: {rounds} kills, seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pki, broker.port);
    let db = dir.path().join("carehub.db");
    let mut committed = BTreeMap::new();
    let started = Instant::now();
    for round in 0..rounds {
        let daemon = start(&config);
        // Kill anywhere from start-up (schema, recovery, first connect) to a
        // steady stream of commits and acks.
        std::thread::sleep(Duration::from_millis(rng.random_range(300..3000)));
        let out = daemon.stop(libc::SIGKILL);
        assert!(!out.status.success(), "round {round}: meant to die");
        if !db.exists() {
            continue; // killed before the store was created
        }
        let new = check_round(round, &db, &mut committed, &sub);
        eprintln!(
            "round {round}: {new} new readings, {} in all",
            committed.len()
        );
    }
    assert!(
        !committed.is_empty(),
        "no round got as far as committing a reading: the test proved nothing"
    );

    // One run left alone drains what the kills left behind.
    let daemon = start(&config);
    let before: Vec<String> = committed.keys().cloned().collect();
    let drained = wait_for(Duration::from_secs(60), || {
        let got = received(&sub);
        before.iter().all(|id| got.contains_key(id)).then_some(())
    });
    let out = daemon.stop(libc::SIGTERM);
    assert!(out.status.success(), "a clean stop after the drain");
    let got = received(&sub);
    assert!(
        drained.is_some(),
        "{} of {} committed readings never reached the subscriber",
        before.iter().filter(|id| !got.contains_key(*id)).count(),
        before.len()
    );
    let (all, _) = read_db(&db);
    let mut repeats = 0;
    for id in &before {
        let copies = &got[id];
        repeats += copies.len() - 1;
        for c in copies {
            assert_eq!(
                c, &all[id],
                "reading {id}: a copy differs from what was stored"
            );
        }
    }
    eprintln!(
        "{rounds} kills in {:.1} s: {} readings committed, all received; {repeats} repeated deliveries, each equal to the stored reading",
        started.elapsed().as_secs_f64(),
        before.len()
    );
}
