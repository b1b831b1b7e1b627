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

/// Builds the `LD_PRELOAD` shim that makes `fsync` and `fdatasync` fail with EIO
/// while a flag file exists (`fault/failing_fsync.c`), with the machine's C
/// compiler; a missing compiler fails the test.
fn failing_fsync_shim(dir: &Path) -> std::path::PathBuf {
    fault_shim(dir, "failing_fsync")
}

/// Builds `fault/NAME.c` into `dir/NAME.so` with the machine's C compiler.
fn fault_shim(dir: &Path, name: &str) -> std::path::PathBuf {
    let so = dir.join(format!("{name}.so"));
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/integration/fault/{name}.c"));
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("a C compiler (cc) builds the fault shim: apt-get install gcc");
    assert!(
        out.status.success(),
        "the shim does not build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// The longest silence, in ms, of any sensor quantity that speaks every second,
/// from the readings stored between `from_ms` and `to_ms` (received times).
fn longest_gap_ms(db: &Path, from_ms: i64, to_ms: i64) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT r.device_code, r.quantity_code, r.received_at_ms FROM readings r
             JOIN quantity_codes q ON q.code = r.quantity_code
             WHERE q.quantity IN ('spo2', 'heart_rate', 'pulse_rate', 'temperature', 'body_temperature')
               AND r.received_at_ms BETWEEN ?1 AND ?2
             ORDER BY 1, 2, 3",
        )
        .unwrap();
    let rows: Vec<(i64, i64, i64)> = stmt
        .query_map([from_ms, to_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        rows.len() > 100,
        "too few readings to judge: {}",
        rows.len()
    );
    rows.windows(2)
        .filter(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
        .map(|w| w[1].2 - w[0].2)
        .max()
        .unwrap_or(0)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A storage that refuses `fsync` for a few seconds (a failing SD card): no
/// commit whose sync failed counts as stored, the commit is tried again from
/// memory until the storage takes it, so every sensor keeps its once-a-second
/// record across the fault, and everything the cloud received is in the file.
#[test]
fn a_failing_fsync_is_never_a_commit_and_the_readings_wait_for_the_storage() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let dir = tempfile::tempdir().unwrap();
    let shim = failing_fsync_shim(dir.path());
    let config = write_config(dir.path(), &pki, broker.port);
    // 10 residents, every sensor once a second: ~55 frames a second, so the
    // frames of a 5 s fault fit the source's channel (1,024).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("residents = 40", "residents = 10\nevery_ms = 1000");
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("carehub.db");
    let flag = dir.path().join("fail-fsync");
    let count = dir.path().join("fsync-refusals");
    let log = dir.path().join("carehub.log");
    let child = super::support::carehub_as_service()
        .args(["run", "--config"])
        .arg(&config)
        .env("LD_PRELOAD", &shim)
        .env("CAREHUB_FAIL_FSYNC_FLAG", &flag)
        .env("CAREHUB_FAIL_FSYNC_COUNT", &count)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child: Some(child) };
    wait_for(Duration::from_secs(30), || {
        (received(&sub).len() >= 200).then_some(())
    })
    .expect("readings flow before the fault");
    let fault_from = unix_ms();
    std::fs::write(&flag, b"").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    std::fs::remove_file(&flag).unwrap();
    let fault_to = unix_ms();
    let refusals = std::fs::metadata(&count).map(|m| m.len()).unwrap_or(0);
    assert!(
        refusals > 0,
        "the fault was never met: no fsync was refused"
    );
    // Let the held commit land and a few more seconds follow.
    std::thread::sleep(Duration::from_secs(5));
    let out = daemon.stop(libc::SIGTERM);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "clean stop after the fault\n{log}");
    // Readings received by the gateway during the fault are stored, not lost:
    // no sensor's once-a-second record has a hole the length of the fault.
    let gap = longest_gap_ms(&db, fault_from - 5_000, fault_to + 3_000);
    assert!(
        gap < 3_000,
        "a sensor's readings have a {gap} ms hole around a {} ms fault ({refusals} syncs refused)",
        fault_to - fault_from
    );
    assert!(
        log.contains("the storage failed a commit") && log.contains("the storage commits again"),
        "the fault and the recovery are logged\n{log}"
    );
    // Nothing reached the cloud that the file does not hold.
    let (stored, _) = read_db(&db);
    let got = received(&sub);
    let unknown: Vec<&String> = got.keys().filter(|id| !stored.contains_key(*id)).collect();
    assert!(
        unknown.is_empty(),
        "{} readings at the subscriber are not in the database, e.g. {:?}",
        unknown.len(),
        unknown.first()
    );
    for (id, copies) in &got {
        for c in copies {
            assert_eq!(c, &stored[id], "reading {id}");
        }
    }
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The short form of the soak (`benches/soak.rs` is the long one): ~200 sensors
/// once a second with the uplink on, for a minute. Open files and the WAL stay
/// bounded, and every reading committed reaches the subscriber. Memory is
/// printed, not asserted (a debug build; the bench measures the release one).
#[test]
fn a_minute_at_200_sensors_keeps_files_and_wal_bounded_and_delivers_everything() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pki, broker.port);
    // 36 residents: 36 × 5 devices + 18 straps = 198 sensors, each once a second.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("residents = 40", "residents = 36\nevery_ms = 1000");
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("carehub.db");
    let wal = dir.path().join("carehub.db-wal");
    let daemon = start(&config);
    let pid = daemon.child.as_ref().unwrap().id();
    let mut samples = Vec::new();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_secs(5));
        let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        samples.push((open_files(pid), rss_kib(pid), wal_bytes));
    }
    eprintln!("(open files, RSS KiB, WAL bytes) every 5 s: {samples:?}");
    // After the first 10 s (connections, pools, the first checkpoint) nothing
    // that holds files grows.
    let settled = samples[2].0;
    let most = samples.iter().map(|s| s.0).max().unwrap();
    assert!(
        most <= settled + 4,
        "open files grew from {settled} to {most}: {samples:?}"
    );
    let wal_max = samples.iter().map(|s| s.2).max().unwrap();
    assert!(
        wal_max <= 16 << 20,
        "the WAL reached {wal_max} bytes: {samples:?}"
    );
    let out = daemon.stop(libc::SIGTERM);
    assert!(out.status.success());
    let (stored, outbox) = read_db(&db);
    assert!(
        stored.len() > 198 * 40,
        "{} readings in a minute from 198 sensors",
        stored.len()
    );
    let got = received(&sub);
    let lost: Vec<&String> = stored
        .keys()
        .filter(|id| !outbox.contains(*id) && !got.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} delivered readings not received",
        lost.len()
    );
    assert!(
        outbox.len() < stored.len() / 20,
        "the uplink kept up: {} of {} still waiting at the stop",
        outbox.len(),
        stored.len()
    );
}

/// Mid-stream, the broker's place is taken by one whose certificate comes from
/// another CA (an impostor, or a certificate replaced by mistake): the daemon
/// refuses it with words that say so, sends it nothing, keeps its backlog, and
/// delivers all of it once the real broker is back.
#[test]
fn a_broker_from_another_ca_is_refused_in_words_and_the_backlog_waits() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pki, broker.port);
    let db = dir.path().join("carehub.db");
    let log = dir.path().join("carehub.log");
    let child = super::support::carehub_as_service()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child: Some(child) };
    wait_for(Duration::from_secs(30), || {
        (received(&sub).len() >= 100).then_some(())
    })
    .expect("readings flow to the real broker");

    broker.stop(libc::SIGTERM);
    let mut impostor = Broker::on_port(&pki, "impostor", broker.port);
    impostor.start();
    let words = "not signed by the configured CA";
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains(words)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no refusal in words\n{}",
            std::fs::read_to_string(&log).unwrap()
        )
    });
    // A few more seconds of readings pile up behind the refusal.
    std::thread::sleep(Duration::from_secs(3));
    let impostor_log = impostor.log_text();
    impostor.stop(libc::SIGTERM);
    assert!(
        !impostor_log.contains("New client connected"),
        "the gateway completed a connection to the impostor:\n{impostor_log}"
    );

    broker.start();
    let out = {
        let (stored, _) = read_db(&db);
        let drained = wait_for(Duration::from_secs(60), || {
            let got = received(&sub);
            stored.keys().all(|id| got.contains_key(id)).then_some(())
        });
        let out = daemon.stop(libc::SIGTERM);
        assert!(
            drained.is_some(),
            "the backlog stored before and during the impostor was not all delivered"
        );
        out
    };
    assert!(out.status.success());
}

/// A gateway without a battery clock: `carehub run` starts with the wall clock
/// 30 days behind and unsynchronised (`fault/clock_step.c`, an `LD_PRELOAD`
/// shim over `clock_gettime` and `ntp_adjtime`), then NTP steps it to the real
/// time and reports it synchronised. The readings received before the step are
/// corrected by it and marked so (`clock_synced = 2`): in the file no reading is
/// a month old, none is in the future, none stays unsynchronised; on the JSON API
/// every resident's vitals are current right after the step (sensors speak only
/// every 20 s, so most shown were received before it), and the unwell resident's
/// clinical alert is there with a raised time of this run, with no sensor
/// reported silent.
#[test]
fn a_clock_set_a_month_forward_by_ntp_corrects_what_was_received_before() {
    const MONTH_MS: i64 = 30 * 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let shim = fault_shim(dir.path(), "clock_step");
    let offset = dir.path().join("clock-offset");
    let unsync = dir.path().join("clock-unsynchronised");
    std::fs::write(&offset, format!("{}", -MONTH_MS)).unwrap();
    std::fs::write(&unsync, b"").unwrap();
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let db = dir.path().join("carehub.db");
    let config = dir.path().join("carehub.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"oak-house\"\ngateway_id = \"gw-test\"\n\
             [sensors]\nsource = \"simulator\"\n\
             [simulator]\nresidents = 3\nevery_ms = 20000\n\
             [store]\npath = \"{}\"\n\
             [web]\nlisten = \"127.0.0.1:{port}\"\nhttps = false\n",
            db.display()
        ),
    )
    .unwrap();
    super::support::web_state_dir(addr, dir.path());
    let log = dir.path().join("carehub.log");
    let started_ms = unix_ms();
    let child = super::support::carehub_as_service()
        .args(["run", "--config"])
        .arg(&config)
        .env("LD_PRELOAD", &shim)
        .env("CAREHUB_CLOCK_OFFSET_FILE", &offset)
        .env("CAREHUB_CLOCK_UNSYNC_FLAG", &unsync)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child: Some(child) };
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()
            .and_then(|c| c.query_row(sql, [], |r| r.get(0)).ok())
            .unwrap_or(0)
    };
    // Every resident's vitals in, each stamped by the wrong clock; and the
    // unwell resident's alert raised.
    let residents = |addr: std::net::SocketAddr| -> Option<serde_json::Value> {
        let (status, body) = super::support::http_get(addr, "/api/v1/residents")?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    wait_for(Duration::from_secs(60), || {
        let v = residents(addr)?;
        let all = v["residents"].as_array()?;
        (all.len() == 3
            && all
                .iter()
                .all(|r| r["vitals"].as_array().is_some_and(|x| x.len() >= 3)))
        .then_some(())
    })
    .expect("every resident's vitals before the step");
    let alerts_before = wait_for(Duration::from_secs(30), || {
        let (_, body) = super::support::http_get(addr, "/api/v1/alerts")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v.as_array()?
            .iter()
            .any(|a| a["class"] == "clinical" && a["resident_id"] == 3)
            .then_some(v)
    })
    .expect("the unwell resident's clinical alert before the step");
    let unsynced = count("SELECT count(*) FROM readings WHERE clock_synced = 0");
    let month_old = count(&format!(
        "SELECT count(*) FROM readings WHERE received_at_ms < {}",
        started_ms - MONTH_MS + 3_600_000
    ));
    assert!(
        unsynced > 0 && month_old == unsynced,
        "the shim holds the clock a month back, unsynchronised: {unsynced} unsynchronised, {month_old} a month old\n{alerts_before}"
    );

    // NTP sets the clock and says so.
    std::fs::write(&offset, b"0").unwrap();
    std::fs::remove_file(&unsync).unwrap();
    let stepped_ms = unix_ms();
    wait_for(Duration::from_secs(30), || {
        (count("SELECT count(*) FROM readings WHERE clock_synced = 2") >= unsynced).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the readings stamped before the step were not corrected\n{}",
            std::fs::read_to_string(&log).unwrap()
        )
    });
    // At once: what the page shows is current, none of it a month old or ahead.
    let v = residents(addr).expect("the API answers after the step");
    for r in v["residents"].as_array().unwrap() {
        for vital in r["vitals"].as_array().unwrap() {
            let age = vital["age_s"].as_i64().unwrap();
            assert!(
                vital["freshness"] == "current" && (0..120).contains(&age),
                "a vital of resident {} shows as {} ({age} s old) after the step: {vital}",
                r["id"],
                vital["freshness"]
            );
        }
    }
    // Readings flow on, now stamped by a synchronised clock.
    wait_for(Duration::from_secs(60), || {
        (count("SELECT count(*) FROM readings WHERE clock_synced = 1") >= 10).then_some(())
    })
    .expect("readings after the step, synchronised");
    // The alert stage moves this run's alert times when it next wakes.
    wait_for(Duration::from_secs(30), || {
        (count(&format!(
            "SELECT count(*) FROM alerts WHERE raised_at_ms < {}",
            stepped_ms - MONTH_MS / 2
        )) == 0)
            .then_some(())
    })
    .expect("the alerts raised before the step moved with the clock");
    let (_, body) = super::support::http_get(addr, "/api/v1/alerts").unwrap();
    let alerts: serde_json::Value = serde_json::from_str(&body).unwrap();
    let out = daemon.stop(libc::SIGTERM);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "clean stop\n{log}");
    assert!(
        log.contains("the clock was set"),
        "the step is logged\n{log}"
    );
    let ended_ms = unix_ms();

    // The file: nothing stamped before the step left unsynchronised (a reading
    // stamped after the step, before the kernel says synchronised, keeps the
    // flag with its right time: NTP steps the clock, then clears STA_UNSYNC),
    // nothing a month old, nothing ahead.
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM readings WHERE clock_synced = 0 AND received_at_ms < {}",
            stepped_ms - 5_000
        )),
        0,
        "every reading stamped before the step is corrected"
    );
    let (lo, hi) = (started_ms - 2_000, ended_ms + 2_000);
    for sql in [
        "SELECT min(received_at_ms) FROM readings",
        "SELECT max(received_at_ms) FROM readings",
        "SELECT min(received_at_ms + coalesce(measured_offset_ms, 0)) FROM readings",
        "SELECT max(received_at_ms + coalesce(measured_offset_ms, 0)) FROM readings",
        "SELECT min(taken_at_ms) FROM latest",
        "SELECT max(taken_at_ms) FROM latest",
        "SELECT min(raised_at_ms) FROM alerts",
    ] {
        let t = count(sql);
        assert!(
            (lo..=hi).contains(&t),
            "{sql}: {t}, outside this run ({lo}..={hi}; stepped at {stepped_ms})"
        );
    }
    let seen = count(&format!(
        "SELECT count(*) FROM devices WHERE last_seen_ms NOT BETWEEN {lo} AND {hi}"
    ));
    assert_eq!(seen, 0, "a device's last heard is outside this run");
    // Alerts kept working: the clinical alert is there, raised in this run by
    // the real clock, and no sensor was called silent by the step.
    let list = alerts.as_array().unwrap();
    assert!(
        list.iter()
            .any(|a| a["class"] == "clinical" && a["resident_id"] == 3),
        "the unwell resident's alert after the step: {alerts}"
    );
    assert!(
        !list
            .iter()
            .any(|a| a["rule"].as_str().is_some_and(|r| r.contains("silent"))),
        "no sensor silent because of the step: {alerts}"
    );
}
