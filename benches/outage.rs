//! A month without internet, compressed: the outbox filled to its caps
//! (`max_outbox_readings` 5,000,000, `max_outbox_mb` 512) with readings received
//! over the last 30 days, the fast way (through the store's own writer, 10,000 a
//! commit), then measured:
//!
//! 1. eviction order and counts once the caps are reached;
//! 2. the writer's maintenance pass (age cap, history retention, disk floor) on
//!    that file, as it runs every minute on the writer thread;
//! 3. exec to READY=1 of `carehub run` on that file with the page cache dropped
//!    and reads throttled to SD-card speed (a cgroup v1 `blkio` limit,
//!    `OUTAGE_READ_MBPS`, default 20; root only, otherwise unthrottled and said);
//! 4. the drain to a real mutual-TLS mosquitto once the link is back: time until
//!    the subscriber has every reading, and the daemon's peak memory.
//!
//! `cargo bench --bench outage`; `OUTAGE_READINGS=1000000` for a smaller run.
//! Results go to `docs/reliability.md`. Nothing here asserts a time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

#[path = "../tests/integration/mqtt_support.rs"]
#[allow(dead_code)]
mod mqtt_support;
#[path = "../tests/integration/support.rs"]
#[allow(dead_code)]
mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carehub::config::Synchronous;
use carehub::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value,
};
use carehub::store::{Store, StoreSettings};
use carehub::system::health::Health;
use mqtt_support::{Broker, Pki, client_tls};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

const DAY_MS: i64 = 86_400_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reading `i` of `n`, received `30 days × (n - i) / n` ago: two vital signs
/// for every room reading, from the simulator's first 40 residents.
fn reading(i: u64, n: u64, now_ms: i64) -> Reading {
    let vital = i % 3 != 2;
    let age_ms = (30 * DAY_MS) as i128 * (n - i) as i128 / n as i128;
    Reading {
        id: ReadingId::UNASSIGNED,
        device: DeviceAddress([0xC0, 0, 0, 0, 0, (i % 40) as u8]),
        subject: if vital {
            Subject::Resident(ResidentId(1 + (i % 40) as i64))
        } else {
            Subject::Room("Lounge".into())
        },
        quantity: if vital {
            Quantity::HeartRate
        } else {
            Quantity::Temperature
        },
        value: Value::Number(if vital { 60.0 + (i % 40) as f64 } else { 21.5 }),
        unit: if vital {
            Unit::PerMinute
        } else {
            Unit::Celsius
        },
        measured_at: None,
        received_at: Timestamp::from_unix_ms(now_ms - age_ms as i64 + 60_000),
        clock_synced: true,
    }
}

fn write_config(dir: &Path, uplink: Option<(&Pki, u16)>) -> PathBuf {
    let mut text = format!(
        "[site]\nid = \"oak-house\"\ngateway_id = \"gw-test\"\n\
         [sensors]\nsource = \"simulator\"\n[simulator]\nresidents = 40\n\
         [store]\npath = \"{db}\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\nhttps = false\n",
        db = dir.join("carehub.db").display(),
        web = support::free_port(),
    );
    if let Some((pki, port)) = uplink {
        let p = pki.pair("gateway");
        text.push_str(&format!(
            "[uplink]\nenabled = true\nhost = \"localhost\"\nport = {port}\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n",
            ca = pki.path("ca.pem").display(),
            cert = p.cert.display(),
            key = p.key.display(),
        ));
    }
    let path = dir.join("carehub.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// A cgroup v1 blkio group that limits reads from the database's disk, if this
/// machine has one and we may make it.
fn throttle(db_dir: &Path, mbps: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(db_dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    // A partition's limit goes on its whole disk: find it in /sys/dev/block.
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let disk = if sys.join("partition").exists() {
        std::fs::read_to_string(sys.parent()?.join("dev")).ok()?
    } else {
        format!("{major}:{minor}")
    };
    let group = PathBuf::from("/sys/fs/cgroup/blkio/carehub-outage-bench");
    std::fs::create_dir_all(&group).ok()?;
    std::fs::write(
        group.join("blkio.throttle.read_bps_device"),
        format!("{} {}", disk.trim(), mbps * 1024 * 1024),
    )
    .ok()?;
    Some(group)
}

fn drop_caches() -> bool {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn spawn(config: &Path, notify: &Path, group: Option<&Path>) -> Child {
    let mut cmd = Command::new("sh");
    let exe = env!("CARGO_BIN_EXE_carehub");
    let script = match group {
        Some(g) => format!(
            "echo $$ > {}/cgroup.procs && exec {exe} run --config {}",
            g.display(),
            config.display()
        ),
        None => format!("exec {exe} run --config {}", config.display()),
    };
    cmd.args(["-c", &script])
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "30000000")
        .env("INVOCATION_ID", "carehub-outage-bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start carehub")
}

fn wait_ready(socket: &UnixDatagram, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = socket.recv(&mut buf).ok()?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return Some(Instant::now());
        }
    }
    None
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// Counts readings arriving on the readings topic.
fn count_readings(pki: &Pki, port: u16, count: Arc<AtomicU64>) {
    let tls = client_tls(pki, "subscriber");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut o = MqttOptions::new("outage-cloud", "localhost", port);
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
            o.set_keep_alive(Duration::from_secs(30));
            o.set_max_packet_size(16 << 20, 16 << 20);
            let (client, mut events) = AsyncClient::new(o, 1000);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe("carehub/v1/+/+/readings", QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                            let n = v["readings"].as_array().map_or(0, Vec::len);
                            count.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    });
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("OUTAGE_READINGS", 5_200_000);
    let mbps = env_u64("OUTAGE_READ_MBPS", 20);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let db = dir.path().join("carehub.db");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");

    // The daemon makes the schema and the simulator's residents once.
    let config = write_config(dir.path(), None);
    let child = spawn(&config, &notify_path, None);
    wait_ready(&notify, Duration::from_secs(60)).expect("first start");
    stop(child);

    // 1. A month of readings, through the store's writer, with the daemon's caps.
    let settings = StoreSettings {
        commit_max_readings: 10_000,
        synchronous: Synchronous::Full,
        max_outbox_readings: 5_000_000,
        max_outbox_bytes: 512 * 1024 * 1024,
        ..StoreSettings::at(&db)
    };
    let mut health = Health::default();
    let store = Store::open(
        settings,
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .expect("open");
    let now_ms = Timestamp::now().unix_ms();
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let k = 10_000.min(n - i);
        let chunk: Vec<Reading> = (i..i + k).map(|j| reading(j, n, now_ms)).collect();
        i += k;
        if i < n {
            store.handle.ingest_nowait(chunk).await.expect("queue");
        } else {
            store.handle.ingest(chunk).await.expect("commit");
        }
    }
    let fill_s = started.elapsed().as_secs_f64();
    let stats = store.reader.stats().expect("stats");
    println!(
        "fill: {n} readings in {fill_s:.1} s ({:.0}/s); outbox {} readings, database {:.0} MB",
        n as f64 / fill_s,
        stats.outbox_depth,
        stats.database_bytes as f64 / 1e6
    );
    for e in &stats.evicted {
        println!("  evicted: {:?}", e);
    }

    // 2. The writer's maintenance pass, three times, as every minute.
    for pass in 1..=3 {
        let t = Instant::now();
        let report = store
            .handle
            .maintain(Timestamp::now())
            .await
            .expect("maintain");
        println!(
            "maintenance pass {pass}: {:.0} ms ({report:?})",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let Store { handle, writer, .. } = store;
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("join");

    // For comparison: the history purge's scan as it was before issue 21 (every
    // reading from the first, with two correlated subqueries each), on the same
    // file, read-only: what each minute's pass cost the writer thread.
    {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("db");
        let cutoff = Timestamp::now().unix_ms() - 7 * DAY_MS;
        let t = Instant::now();
        let mut q = c
            .prepare(
                "SELECT r.seq, r.received_at_ms,
                    coalesce((SELECT v.last_seq FROM outbox_vital v WHERE v.first_seq <= r.seq
                              ORDER BY v.first_seq DESC LIMIT 1), -1) >= r.seq
                    OR coalesce((SELECT m.last_seq FROM outbox_room m WHERE m.first_seq <= r.seq
                                 ORDER BY m.first_seq DESC LIMIT 1), -1) >= r.seq
                 FROM readings r ORDER BY r.seq",
            )
            .expect("old scan");
        let mut rows = q.query([]).expect("old scan");
        let mut scanned = 0u64;
        while let Some(row) = rows.next().expect("row") {
            if row.get::<_, i64>(1).expect("received") >= cutoff {
                break;
            }
            scanned += 1;
        }
        println!(
            "for comparison, the purge's scan before issue 21: {scanned} readings read in {:.0} ms, every minute",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }

    // 3. Start to READY on the full file: cold cache, reads at SD-card speed.
    let group = throttle(dir.path(), mbps);
    let cold = drop_caches();
    let t = Instant::now();
    let child = spawn(&config, &notify_path, group.as_deref());
    let ready = wait_ready(&notify, Duration::from_secs(600));
    println!(
        "exec to READY=1 on {:.0} MB: {} ({}, {})",
        file_len(&db) as f64 / 1e6,
        ready.map_or("none within 600 s".into(), |r| format!(
            "{:.1} s",
            r.duration_since(t).as_secs_f64()
        )),
        if cold {
            "page cache dropped"
        } else {
            "page cache NOT dropped (not root)"
        },
        match &group {
            Some(_) => format!("reads limited to {mbps} MB/s"),
            None => "reads NOT limited (no cgroup v1 blkio here)".into(),
        }
    );
    stop(child);
    if let Some(g) = &group {
        let _ = std::fs::remove_dir(g);
    }

    // 4. The link is back: drain to a real broker.
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let received = Arc::new(AtomicU64::new(0));
    count_readings(&pki, broker.port, received.clone());
    std::thread::sleep(Duration::from_secs(2));
    let config = write_config(dir.path(), Some((&pki, broker.port)));
    let backlog = {
        let c = rusqlite::Connection::open(&db).expect("db");
        c.query_row(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM
               (SELECT first_seq, last_seq FROM outbox_vital UNION ALL SELECT first_seq, last_seq FROM outbox_room)",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("backlog") as u64
    };
    let t = Instant::now();
    let child = spawn(&config, &notify_path, None);
    let pid = child.id();
    let mut peak = 0;
    while received.load(Ordering::Relaxed) < backlog && t.elapsed() < Duration::from_secs(1800) {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(status_kib(pid, "VmRSS"));
    }
    let drain_s = t.elapsed().as_secs_f64();
    peak = peak.max(status_kib(pid, "VmHWM"));
    println!(
        "drain: {} of {backlog} readings at the subscriber in {drain_s:.1} s ({:.0}/s, start-up included); carehub peak RSS {:.1} MiB",
        received.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed) as f64 / drain_s,
        peak as f64 / 1024.0
    );
    stop(child);
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
