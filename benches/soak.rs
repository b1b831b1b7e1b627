//! The soak: the whole daemon (`carehub run`, built with the bench profile) with
//! ~200 simulated sensors each speaking once a second, the uplink on to a real
//! mutual-TLS mosquitto, and a cloud subscriber, for `SOAK_SECS` seconds (1,800
//! by default; 86,400 for the day-long run in `docs/reliability.md`).
//!
//! Every `SOAK_SAMPLE_SECS` (10) it samples the daemon from outside: resident
//! memory, open files, CPU time, bytes written to storage (`/proc/PID/io`
//! `write_bytes`), and the sizes of the database and its WAL; the samples go to
//! `SOAK_CSV` (default `target/soak.csv`) for the plots. The subscriber measures
//! each reading's delay from the gateway receiving the sensor's frame
//! (`received_at`) to the reading arriving at the cloud subscriber.
//!
//! A staff page is watched as `assets/live.js` watches it: a signed-in nurse's
//! `/events` stream, and on each event the overview fetched again (with the
//! `X-Carehub-Live` header the script sends, no more often than its
//! `MIN_GAP_MS`, at once for an alert). Each vital sign on the overview
//! carries its time (`<time class="age" datetime=...>`); a value seen for the
//! first time gives the delay from the gateway receiving its frame to the page
//! holding it; the database, read every 20 ms, gives frame → commit. Every
//! `SOAK_ALERT_EVERY_SECS` (20) a probe resident is added and
//! a nurse records an observation set that scores NEWS2 high; the time from that
//! reading being stored to its alert on the fetched overview is the alert delay.
//! Before the next probe, the last one's alerts are acknowledged and its
//! resident archived, so that the home does not grow through the run.
//!
//! At the end it prints the figures `docs/reliability.md` quotes: memory, files,
//! CPU, database and WAL first/last/peak, bytes written a day and what that means
//! for an SD card, and the delays' p50/p99. It asserts nothing about time.
//!
//! `cargo bench --bench soak`; `SOAK_SECS=120 cargo bench --bench soak` for a
//! quick look.

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

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_support::{Broker, Pki, client_tls};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `/proc/{pid}/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system): `/proc/{pid}/stat` fields 14 and 15.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes the process caused to be written to storage (`write_bytes`).
fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    t_s: f64,
    rss_kib: u64,
    fds: u64,
    cpu_s: f64,
    written: u64,
    db: u64,
    wal: u64,
    received: u64,
    /// Of `rss_kib`: anonymous pages (heap, stacks, SQLite's cache) and
    /// file-backed ones (the executable's code and the libraries'), which the
    /// kernel can drop and read again.
    rss_anon_kib: u64,
    rss_file_kib: u64,
}

/// The cloud side: counts readings and records each one's delay in ms.
struct Cloud {
    delays_ms: Arc<Mutex<Vec<f64>>>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cloud {
    fn start(pki: &Pki, port: u16) -> Cloud {
        let delays_ms = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let tls = client_tls(pki, "subscriber");
        let (d, st) = (delays_ms.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut o = MqttOptions::new("soak-cloud", "localhost", port);
                o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
                o.set_keep_alive(Duration::from_secs(10));
                o.set_max_packet_size(16 << 20, 16 << 20);
                let (client, mut events) = AsyncClient::new(o, 100);
                loop {
                    tokio::select! {
                        _ = st.notified() => break,
                        ev = events.poll() => match ev {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                let _ = client.subscribe("carehub/v1/+/+/readings", QoS::AtLeastOnce).await;
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let now = time::OffsetDateTime::now_utc();
                                let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&p.payload) else { continue };
                                let mut d = d.lock().expect("delays");
                                for r in msg["readings"].as_array().into_iter().flatten() {
                                    let Some(at) = r["received_at"].as_str() else { continue };
                                    if let Ok(at) = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339) {
                                        d.push((now - at).as_seconds_f64() * 1000.0);
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        },
                    }
                }
            });
        });
        Cloud {
            delays_ms,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> u64 {
        self.delays_ms.lock().expect("delays").len() as u64
    }

    fn stop(mut self) -> Vec<f64> {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.delays_ms.lock().expect("delays"))
    }
}

/// Wall-clock milliseconds since 1970, the unit of the page's `datetime`s.
fn now_ms() -> f64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e6
}

fn rfc3339_ms(s: &str) -> Option<f64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e6)
}

/// What the page watcher measured.
#[derive(Default)]
struct PageFigures {
    /// Frame received → the value on the fetched overview, ms.
    value_ms: Vec<f64>,
    /// Alerting reading stored → its alert on the fetched overview, ms.
    alert_ms: Vec<f64>,
    fetches: u64,
}

/// The probe whose alert the watcher looks for: its name and when its reading
/// was stored (wall-clock ms).
type Probe = Arc<Mutex<Option<(String, f64)>>>;

/// `live.js`'s `MIN_GAP_MS`, read from the script the daemon serves, so the
/// watcher fetches no more often than a browser would.
fn live_js_gap() -> Duration {
    let js = include_str!("../assets/live.js");
    let ms = js
        .split_once("var MIN_GAP_MS = ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .and_then(|(v, _)| v.trim().parse().ok())
        .expect("live.js has var MIN_GAP_MS = <ms>;");
    Duration::from_millis(ms)
}

/// The staff page, watched as `live.js` does: the event stream, and the
/// overview fetched again after an event, at most once per `MIN_GAP_MS` of
/// live.js and at once for an `alerts` event (events arriving meanwhile are
/// one more fetch).
fn watch_page(
    addr: SocketAddr,
    warm_up: Duration,
    probe: Probe,
    figures: Arc<Mutex<PageFigures>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    let mut seen: HashSet<String> = HashSet::new();
    let gap = live_js_gap();
    let mut last_fetch: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        // Short: a fetch held back by the gap is made on time.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        if write!(
            stream,
            "GET /events HTTP/1.1\r\nHost: {addr}\r\n{}Accept: text/event-stream\r\n\r\n",
            support::auth_header(addr)
        )
        .is_err()
        {
            continue;
        }
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        // When the next fetch is due, as live.js schedules it.
        let mut due: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => break, // the stream ended: open it again
                Ok(_) => {
                    if let Some(name) = line.strip_prefix("event:") {
                        let now = Instant::now();
                        let at = if name.trim() == "alerts" {
                            now
                        } else {
                            last_fetch.map_or(now, |t: Instant| (t + gap).max(now))
                        };
                        due = Some(due.map_or(at, |d| d.min(at)));
                    }
                    // Read on while more lines wait (a burst of events is one fetch).
                    if !lines.buffer().is_empty() {
                        continue;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
            if due.is_none_or(|d| d > Instant::now()) {
                continue;
            }
            due = None;
            last_fetch = Some(Instant::now());
            let Some((200, html)) = support::http_request(
                addr,
                "GET",
                "/",
                "Accept: text/html\r\nX-Carehub-Live: 1\r\n",
                "",
            ) else {
                continue;
            };
            let done = now_ms();
            let measuring = started.elapsed() >= warm_up;
            let mut f = figures.lock().expect("figures");
            f.fetches += 1;
            // Every value with its time: one not seen before is new on the
            // page (keyed by what it says, not by its place: tiles move when
            // residents are added). Values timed by the device's own clock in
            // whole seconds (GATT Date Time: a cuff, a thermometer) are left
            // out: their time is up to a second before the frame was received.
            for tile in html.split("<span class=\"v\">").skip(1) {
                let Some((text, rest)) = tile.split_once("</span>") else {
                    continue;
                };
                let Some(rest) = rest.strip_prefix("<time class=\"age\" datetime=\"") else {
                    continue;
                };
                let Some((at, _)) = rest.split_once('"') else {
                    continue;
                };
                if at.ends_with(".000Z") {
                    continue;
                }
                if seen.insert(format!("{text}@{at}"))
                    && measuring
                    && let Some(at) = rfc3339_ms(at)
                {
                    f.value_ms.push(done - at);
                }
            }
            let alerts = html
                .split_once("<section class=\"alerts\"")
                .and_then(|(_, rest)| rest.split_once("</section>"))
                .map(|(a, _)| a)
                .unwrap_or("");
            let mut p = probe.lock().expect("probe");
            if let Some((name, stored)) = p.as_ref()
                && alerts.contains(name.as_str())
            {
                f.alert_ms.push(done - stored);
                *p = None;
            }
        }
    }
}

/// Frame received → committed: the database read (read-only, beside the
/// writer, as WAL allows) every `every`; each reading committed since the last
/// look gives now − `received_at_ms`, so the figure is the commit delay plus at
/// most `every`.
fn watch_commits(
    db: PathBuf,
    every: Duration,
    warm_up: Duration,
    delays: Arc<Mutex<Vec<f64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    let mut last_seq: i64 = -1;
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        if conn.is_none() {
            conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok();
        }
        let Some(c) = conn.as_ref() else { continue };
        let rows: Vec<(i64, i64)> = c
            .prepare_cached("SELECT seq, received_at_ms FROM readings WHERE seq > ?1 ORDER BY seq")
            .and_then(|mut st| {
                st.query_map([last_seq], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .unwrap_or_default();
        let now = now_ms();
        let Some(&(top, _)) = rows.last() else {
            continue;
        };
        // The first look finds everything so far: a starting point, not delays.
        if last_seq >= 0 && started.elapsed() >= warm_up {
            let mut d = delays.lock().expect("delays");
            d.extend(rows.iter().map(|(_, at)| now - *at as f64));
        }
        last_seq = top;
    }
}

/// Adds a probe resident and records a nurse's observation set that scores
/// NEWS2 high for them; the time it was stored goes to `probe`.
/// A nurse's part in a steady home: the last probe's open alerts are
/// acknowledged and its resident archived (discharged) before the next probe
/// comes. The home stays at its residents plus one, as a real home does; until
/// 2026-12-03 every probe stayed, and the home grew by twenty residents an
/// hour with their open alerts (docs/reliability.md, memory).
fn discharge_probe(addr: SocketAddr, id: i64) -> Result<(), String> {
    let (status, reply) = support::http_request(addr, "GET", "/api/v1/alerts", "", "")
        .ok_or("no answer listing the alerts")?;
    if status != 200 {
        return Err(format!("listing the alerts: {status} {reply}"));
    }
    let alerts: serde_json::Value = serde_json::from_str(&reply).map_err(|e| e.to_string())?;
    for alert in alerts
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["resident_id"].as_i64() == Some(id) && a.get("acknowledged_at").is_none())
    {
        let alert_id = alert["id"].as_i64().ok_or(format!("no id in {alert}"))?;
        let (status, reply) = support::http_request(
            addr,
            "POST",
            &format!("/api/v1/alerts/{alert_id}/ack"),
            "",
            "",
        )
        .ok_or("no answer acknowledging a probe's alert")?;
        if !(200..300).contains(&status) {
            return Err(format!("acknowledging alert {alert_id}: {status} {reply}"));
        }
    }
    let (status, reply) =
        support::http_request(addr, "DELETE", &format!("/api/v1/residents/{id}"), "", "")
            .ok_or("no answer archiving a probe resident")?;
    if status != 204 {
        return Err(format!("archiving probe resident {id}: {status} {reply}"));
    }
    Ok(())
}

/// Adds probe resident `n` with a NEWS2-high observation set; returns its id.
fn raise_probe_alert(addr: SocketAddr, n: u64, probe: &Probe) -> Result<i64, String> {
    let name = format!("Latency probe {n}");
    let body = serde_json::json!({"display_name": name, "room": format!("Probe {n}"), "reference": format!("PRB-{n:04}")}).to_string();
    let (status, reply) = support::http_request(
        addr,
        "POST",
        "/api/v1/residents",
        "Content-Type: application/json\r\n",
        &body,
    )
    .ok_or("no answer adding a probe resident")?;
    if status != 201 && status != 200 {
        return Err(format!("adding a probe resident: {status} {reply}"));
    }
    let v: serde_json::Value = serde_json::from_str(&reply).map_err(|e| e.to_string())?;
    let id = v["id"]
        .as_i64()
        .or_else(|| v["resident"]["id"].as_i64())
        .ok_or(format!("no id in {reply}"))?;
    // NEWS2 well above 7: the overview shows the alert.
    let obs = r#"{"resp_rate": 28, "consciousness": "A", "on_oxygen": "no", "spo2": 85, "systolic": 88, "pulse": 132, "temperature": 39.4}"#;
    // From the request's start: the delay includes storing the set.
    let stored = now_ms();
    let (status, reply) = support::http_request(
        addr,
        "POST",
        &format!("/api/v1/residents/{id}/observations"),
        "Content-Type: application/json\r\n",
        obs,
    )
    .ok_or("no answer recording the probe's observations")?;
    if status != 201 {
        return Err(format!(
            "recording the probe's observations: {status} {reply}"
        ));
    }
    *probe.lock().expect("probe") = Some((name, stored));
    Ok(id)
}

fn write_config(dir: &Path, pki: &Pki, port: u16, residents: u64, web: u16) -> PathBuf {
    let p = pki.pair("gateway");
    let text = format!(
        "[site]\nid = \"oak-house\"\ngateway_id = \"gw-test\"\n\
         [sensors]\nsource = \"simulator\"\n\
         [simulator]\nresidents = {residents}\nevery_ms = 1000\n\
         [store]\npath = \"{db}\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\nhttps = false\n\
         [uplink]\nenabled = true\nhost = \"localhost\"\nport = {port}\n\
         ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n",
        db = dir.join("carehub.db").display(),
        ca = pki.path("ca.pem").display(),
        cert = p.cert.display(),
        key = p.key.display(),
    );
    let path = dir.join("carehub.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let secs = env_u64("SOAK_SECS", 1800);
    let every = env_u64("SOAK_SAMPLE_SECS", 10);
    // 36 residents: 36 × 5 devices + 18 heart-rate straps = 198 sensors.
    let residents = env_u64("SOAK_RESIDENTS", 36);
    let csv_path = std::env::var("SOAK_CSV").unwrap_or_else(|_| "target/soak.csv".into());

    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let cloud = Cloud::start(&pki, broker.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let web_port = support::free_port();
    let web = SocketAddr::from(([127, 0, 0, 1], web_port));
    support::web_state_dir(web, dir.path());
    let config = write_config(dir.path(), &pki, broker.port, residents, web_port);
    let alert_every = env_u64("SOAK_ALERT_EVERY_SECS", 20);
    let db = dir.path().join("carehub.db");
    let wal = dir.path().join("carehub.db-wal");
    // `SOAK_BIN` runs another build of the daemon (e.g. one made with another
    // release profile, to compare their memory) under the same load.
    let bin = std::env::var("SOAK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_carehub").into());
    let mut child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("INVOCATION_ID", "carehub-soak")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start carehub");
    let pid = child.id();
    eprintln!(
        "soak: {bin}: {residents} residents' sensors at 1 Hz for {secs} s, sampling every {every} s into {csv_path}"
    );
    let started = Instant::now();
    // The page watcher signs in once the daemon has made its accounts tables.
    support::wait_for(Duration::from_secs(60), || {
        support::http_get(web, "/healthz")?;
        (!support::auth_header(web).is_empty()).then_some(())
    })
    .expect("carehub's web answers and a nurse can sign in");
    let probe: Probe = Arc::new(Mutex::new(None));
    let page = Arc::new(Mutex::new(PageFigures::default()));
    let stop_page = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (probe, page, stop) = (probe.clone(), page.clone(), stop_page.clone());
        // The first 30 s fill the page; their values are not delays.
        std::thread::spawn(move || watch_page(web, Duration::from_secs(30), probe, page, stop))
    };
    let commit_delays = Arc::new(Mutex::new(Vec::new()));
    let commits = {
        let (db, delays, stop) = (db.clone(), commit_delays.clone(), stop_page.clone());
        std::thread::spawn(move || {
            watch_commits(
                db,
                Duration::from_millis(20),
                Duration::from_secs(30),
                delays,
                stop,
            )
        })
    };
    let mut probes = 0u64;
    let mut last_probe: Option<i64> = None;
    let mut next_probe = Instant::now() + Duration::from_secs(40);
    let mut samples: Vec<Sample> = Vec::new();
    let mut csv = std::fs::File::create(&csv_path).expect("csv");
    writeln!(
        csv,
        "t_s,rss_kib,open_files,cpu_s,written_bytes,db_bytes,wal_bytes,received_readings,rss_anon_kib,rss_file_kib"
    )
    .expect("csv");
    let mut next_sample = Instant::now() + Duration::from_secs(every);
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
        if alert_every > 0 && Instant::now() >= next_probe {
            next_probe += Duration::from_secs(alert_every);
            probes += 1;
            if let Some(id) = last_probe.take()
                && let Err(e) = discharge_probe(web, id)
            {
                eprintln!("soak: discharging probe resident {id}: {e}");
            }
            match raise_probe_alert(web, probes, &probe) {
                Ok(id) => last_probe = Some(id),
                Err(e) => eprintln!("soak: alert probe {probes}: {e}"),
            }
        }
        if Instant::now() < next_sample {
            continue;
        }
        next_sample += Duration::from_secs(every);
        if let Ok(Some(status)) = child.try_wait() {
            panic!("carehub exited during the soak: {status}");
        }
        let s = Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_kib: status_kib(pid, "VmRSS"),
            fds: open_files(pid),
            cpu_s: cpu_s(pid),
            written: write_bytes(pid),
            db: file_size(&db),
            wal: file_size(&wal),
            received: cloud.count(),
            rss_anon_kib: status_kib(pid, "RssAnon"),
            rss_file_kib: status_kib(pid, "RssFile"),
        };
        writeln!(
            csv,
            "{:.0},{},{},{:.2},{},{},{},{},{},{}",
            s.t_s,
            s.rss_kib,
            s.fds,
            s.cpu_s,
            s.written,
            s.db,
            s.wal,
            s.received,
            s.rss_anon_kib,
            s.rss_file_kib
        )
        .expect("csv");
        samples.push(s);
    }
    let peak_kib = status_kib(pid, "VmHWM");
    stop_page.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    let _ = commits.join();
    let mut commit_ms = std::mem::take(&mut *commit_delays.lock().expect("delays"));
    commit_ms.sort_by(|a, b| a.total_cmp(b));
    let page = std::mem::take(&mut *page.lock().expect("figures"));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let mut delays = cloud.stop();
    drop(broker);
    delays.sort_by(|a, b| a.total_cmp(b));

    let (Some(first), Some(last)) = (samples.first().copied(), samples.last().copied()) else {
        eprintln!("soak: too short to sample");
        return;
    };
    // Steady state: from the second minute (start-up fills caches and the WAL).
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= 60.0).collect();
    let max = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let span = last.t_s - first.t_s;
    let per_day = (last.written - first.written) as f64 / span.max(1.0) * 86_400.0;
    println!("soak: {:.0} s, {} samples", last.t_s, samples.len());
    println!(
        "  RSS: first {} KiB, last {} KiB, max {} KiB (VmHWM {} KiB); steady-state min..max {}..{} KiB",
        first.rss_kib,
        last.rss_kib,
        max(|s| s.rss_kib),
        peak_kib,
        steady.iter().map(|s| s.rss_kib).min().unwrap_or(0),
        steady.iter().map(|s| s.rss_kib).max().unwrap_or(0),
    );
    let steady_max = |f: fn(&Sample) -> u64| steady.iter().map(|s| f(s)).max().unwrap_or(0);
    println!(
        "  of which anonymous (heap, stacks, caches): steady-state max {} KiB; file-backed (code): steady-state max {} KiB",
        steady_max(|s| s.rss_anon_kib),
        steady_max(|s| s.rss_file_kib),
    );
    println!(
        "  open files: first {}, last {}, max {}",
        first.fds,
        last.fds,
        max(|s| s.fds)
    );
    println!(
        "  CPU: {:.1} % of one core on average",
        (last.cpu_s - first.cpu_s) / span.max(1.0) * 100.0
    );
    println!(
        "  database: first {} B, last {} B; WAL: first {} B, last {} B, max {} B",
        first.db,
        last.db,
        first.wal,
        last.wal,
        max(|s| s.wal)
    );
    println!(
        "  written to storage: {:.1} MB a day ({:.0} B/s)",
        per_day / 1e6,
        per_day / 86_400.0
    );
    println!(
        "  readings at the subscriber: {} ({:.0}/s); delay from frame received to subscriber: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        delays.len(),
        delays.len() as f64 / last.t_s.max(1.0),
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  committed (database read every 20 ms): {} readings; delay from frame received to commit (+ up to 20 ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        commit_ms.len(),
        percentile(&commit_ms, 0.50),
        percentile(&commit_ms, 0.99),
        commit_ms.last().copied().unwrap_or(f64::NAN)
    );
    let mut value_ms = page.value_ms;
    value_ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  staff page ({} fetches after events): {} values; delay from frame received to the value on the page: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        page.fetches,
        value_ms.len(),
        percentile(&value_ms, 0.50),
        percentile(&value_ms, 0.99),
        value_ms.last().copied().unwrap_or(f64::NAN)
    );
    let mut alert_ms = page.alert_ms;
    alert_ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  alerts: {} of {} probes seen on the overview; delay from the alerting reading stored to the alert on the page: p50 {:.0} ms, max {:.0} ms",
        alert_ms.len(),
        probes,
        percentile(&alert_ms, 0.50),
        alert_ms.last().copied().unwrap_or(f64::NAN)
    );
}
