//! Backlog drain rate of the uplink (SQLite outbox → lease → publish QoS 1 over
//! mutual TLS → PUBACK → ack) against a local mosquitto, and the peer in the same
//! run: mosquitto's own bridge forwarding the same messages from a local broker to
//! the "cloud" broker over mutual TLS at QoS 1 (how thin-edge.io forwards).
//!
//! Both drain a backlog that was queued while the cloud broker was down; a
//! subscriber on the cloud broker counts what arrives. Run:
//! `cargo bench --bench uplink_drain` (env `CAREHUB_BENCH_READINGS`, default
//! 1000000; `CAREHUB_BENCH_BATCHES`, default "1,100,1000"; `CAREHUB_BENCH_INFLIGHT`,
//! default 64, as the bridge's `max_inflight_messages`; `CAREHUB_BENCH_SYNC=normal`
//! for `store.synchronous = "normal"`; `CAREHUB_BENCH_ENCODE_ONLY=1` for the
//! uplink's own ceiling without the network: lease, read, encode, ack).

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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carehub::config::PayloadFormat;
use carehub::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value,
};
use carehub::store::{Store, StoreSettings};
use carehub::system::health::Health;
use carehub::uplink::actor::messages_per_lease;
use carehub::uplink::batch::Encoder;
use carehub::uplink::payload::{OutgoingReading, ReadingsMessage};
use carehub::uplink::tls::TlsFiles;
use carehub::uplink::{ConnectionState, Uplink, UplinkSettings, UplinkStatus};
use mqtt_support::{Broker, Pki, client_tls};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};

fn readings(n: usize) -> Vec<Reading> {
    let now = Timestamp::now();
    (0..n)
        .map(|i| Reading {
            id: ReadingId::new(now),
            device: DeviceAddress([0xA4, 0xC1, 0x38, 0, (i >> 8) as u8, i as u8]),
            subject: Subject::Resident(ResidentId(1 + (i % 50) as i64)),
            quantity: Quantity::Spo2,
            value: Value::Number(90.0 + (i % 10) as f64),
            unit: Unit::Percent,
            measured_at: None,
            received_at: now,
            clock_synced: true,
        })
        .collect()
}

/// Counts messages arriving at the cloud broker; records first and last arrival.
struct Counter {
    messages: Arc<AtomicU64>,
    first: Arc<std::sync::Mutex<Option<Instant>>>,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
}

async fn counter(pki: &Pki, port: u16, id: &str) -> Counter {
    let mut o = MqttOptions::new(id, "localhost", port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        client_tls(pki, "subscriber"),
    )));
    o.set_max_packet_size(64 << 20, 64 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 100);
    // Without it the subscriber's PUBACKs can wait for the broker's delayed ACK
    // (Nagle), about 40 ms each once the broker's in-flight window to it is full:
    // the count would measure the subscriber, not the contender.
    events.network_options.set_tcp_nodelay(true);
    client
        .subscribe("carehub/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let c = Counter {
        messages: Arc::new(AtomicU64::new(0)),
        first: Arc::default(),
        last: Arc::default(),
    };
    let (m, f, l) = (c.messages.clone(), c.first.clone(), c.last.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/readings") => {
                    let now = Instant::now();
                    if m.load(Ordering::Relaxed) == 0 {
                        eprintln!("MARK first {}", mono());
                    }
                    f.lock().unwrap().get_or_insert(now);
                    *l.lock().unwrap() = Some(now);
                    m.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    ready_rx.await.unwrap();
    c
}

impl Counter {
    async fn wait(&self, messages: u64, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while self.messages.load(Ordering::Relaxed) < messages {
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let f = self.first.lock().unwrap().unwrap();
        let l = self.last.lock().unwrap().unwrap();
        Some(l - f)
    }
}

/// CPU time (user + system) a process has used: `/proc/{pid}/stat` fields 14
/// and 15, in clock ticks of 10 ms.
fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
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

/// Messages in flight: `CAREHUB_BENCH_INFLIGHT`, else 64, the daemon's default
/// and the bridge's window (`max_inflight_messages`).
fn inflight() -> u16 {
    std::env::var("CAREHUB_BENCH_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// A `/proc/{pid}/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples this process's resident memory every 10 ms on a thread of its own
/// (the reads of /proc block; the runtime's workers carry the contenders) until
/// stopped; returns the most seen.
struct RssPeak {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(status_kib("self", "VmRSS"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.max(status_kib("self", "VmRSS"))
        });
        RssPeak { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// CPU seconds each process spent while one contender drained.
#[derive(Default)]
struct Cpu {
    /// This process: the contender's uplink (carehub) and the counting subscriber.
    bench: f64,
    cloud: f64,
    /// The bridge's edge broker (zero for carehub).
    edge: f64,
}

struct Result {
    readings: u64,
    messages: u64,
    cpu: Cpu,
    /// How much this process's resident memory grew during the drain, KiB: the
    /// uplink's buffers and the subscriber's (the bridge run has only the
    /// latter).
    rss_growth_kib: u64,
    /// The bridge's edge broker at its peak (it holds the backlog), KiB.
    edge_peak_kib: u64,
    /// From the first to the last message arriving at the cloud subscriber.
    span: Duration,
    /// From start (uplink started / cloud broker up) to all delivered (and, for
    /// carehub, acked in the outbox).
    total: Duration,
}

async fn carehub_run(pki: &Pki, n: usize, batch: usize) -> Result {
    let dir = tempfile::tempdir().unwrap();
    let mut health = Health::default();
    let mut settings = StoreSettings::at(dir.path().join("bench.db"));
    if std::env::var("CAREHUB_BENCH_SYNC").as_deref() == Ok("normal") {
        settings.synchronous = carehub::config::Synchronous::Normal;
    }
    let store = Store::open(
        settings,
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .unwrap();
    for chunk in readings(n).chunks(10_000) {
        store.handle.ingest(chunk.to_vec()).await.unwrap();
    }
    let mut cloud = Broker::new(pki, "server");
    cloud.start();
    let messages = n.div_ceil(batch) as u64;
    let count = counter(pki, cloud.port, "bench-sub-carehub").await;
    let p = pki.pair("gateway");
    let status = Arc::new(UplinkStatus::new(ConnectionState::Connecting));
    let cancel = tokio_util::sync::CancellationToken::new();
    let cloud_pid = cloud.pid().unwrap().to_string();
    let (bench0, cloud0) = (cpu_s("self"), cpu_s(&cloud_pid));
    let rss0 = status_kib("self", "VmRSS");
    let rss = RssPeak::start();
    let start = Instant::now();
    eprintln!("MARK start {}", mono());
    let task = tokio::spawn(
        Uplink {
            settings: UplinkSettings {
                host: "localhost".into(),
                port: cloud.port,
                tls: TlsFiles {
                    ca: pki.path("ca.pem"),
                    cert: p.cert,
                    key: p.key,
                },
                site: "bench".into(),
                protocol: carehub::config::Protocol::V5,
                compact: false,
                gateway: "gw-test".into(),
                payload: PayloadFormat::Json,
                batch_max_readings: batch,
                max_inflight: inflight(),
                keep_alive: Duration::from_secs(30),
                backoff_min: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
                cert_warn_days: 30,
                hold_after_refusals: 3,
                stable_after: std::time::Duration::from_secs(30),
                watch_every: Duration::from_secs(60),
                status_every: Duration::from_secs(60),
                receipts: None,
            },
            store: store.handle.clone(),
            status: status.clone(),
            heartbeat: health.register("uplink"),
            cancel: cancel.clone(),
            reload: Arc::new(tokio::sync::Notify::new()),
            version: "bench",
            alerts: None,
        }
        .run(),
    );
    let span = count
        .wait(messages, Duration::from_secs(600))
        .await
        .expect("carehub drained within 600 s");
    while store.handle.stats().outbox_readings.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total = start.elapsed();
    eprintln!("MARK end {}", mono());
    let cpu = Cpu {
        bench: cpu_s("self") - bench0,
        cloud: cpu_s(&cloud_pid) - cloud0,
        edge: 0.0,
    };
    let rss_growth_kib = rss.stop().saturating_sub(rss0);
    cancel.cancel();
    let _ = task.await;
    assert_eq!(status.snapshot().readings_delivered, n as u64);
    Result {
        readings: n as u64,
        messages,
        cpu,
        rss_growth_kib,
        edge_peak_kib: 0,
        span,
        total,
    }
}

async fn bridge_run(pki: &Pki, n: usize, batch: usize) -> Result {
    let mut cloud = Broker::new(pki, "server");
    // The edge broker: plain TCP for the local publisher, a mutual-TLS bridge out.
    let edge_port = support::free_port();
    let edge_dir = pki.dir.path().join(format!("edge-{edge_port}"));
    std::fs::create_dir_all(&edge_dir).unwrap();
    let g = pki.pair("gateway");
    let conf = edge_dir.join("edge.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {edge_port} 127.0.0.1\nallow_anonymous true\nuser root\n\
             max_queued_messages 0\nmax_inflight_messages 64\n\
             connection cloud\naddress localhost:{cloud}\ntopic carehub/# out 1\n\
             remote_clientid gw-test\ncleansession false\nrestart_timeout 1\n\
             bridge_protocol_version mqttv311\n\
             bridge_cafile {ca}\nbridge_certfile {cert}\nbridge_keyfile {key}\n",
            cloud = cloud.port,
            ca = pki.path("ca.pem").display(),
            cert = g.cert.display(),
            key = g.key.display(),
        ),
    )
    .unwrap();
    let mut edge = std::process::Command::new(mqtt_support::mosquitto_bin())
        .arg("-c")
        .arg(&conf)
        .stderr(std::fs::File::create(edge_dir.join("edge.log")).unwrap())
        .spawn()
        .unwrap();
    support::wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", edge_port)).ok()
    })
    .unwrap();
    // Queue the same messages carehub sends, while the cloud broker is down.
    let rs = readings(n);
    let payloads: Vec<Vec<u8>> = rs
        .chunks(batch)
        .map(|c| {
            let out: Vec<_> = c
                .iter()
                .map(|r| OutgoingReading {
                    reading: r,
                    resident_reference: Some("res-0001"),
                })
                .collect();
            serde_json::to_vec(&ReadingsMessage::new("bench", "gw-test", &out)).unwrap()
        })
        .collect();
    let messages = payloads.len() as u64;
    let mut o = MqttOptions::new("local-publisher", "127.0.0.1", edge_port);
    o.set_max_packet_size(64 << 20, 64 << 20);
    o.set_inflight(64);
    let (client, mut events) = AsyncClient::new(o, 128);
    let publisher = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < messages {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(Outgoing::Publish(_))) | Ok(_) => {}
                Err(e) => panic!("local publisher: {e}"),
            }
        }
    });
    for p in payloads {
        client
            .publish(
                "carehub/v1/bench/gw-test/readings",
                QoS::AtLeastOnce,
                false,
                p,
            )
            .await
            .unwrap();
    }
    publisher.await.unwrap();
    cloud.start();
    let count = counter(pki, cloud.port, "bench-sub-bridge").await;
    let (cloud_pid, edge_pid) = (cloud.pid().unwrap().to_string(), edge.id().to_string());
    let (bench0, cloud0, edge0) = (cpu_s("self"), cpu_s(&cloud_pid), cpu_s(&edge_pid));
    let rss0 = status_kib("self", "VmRSS");
    let rss = RssPeak::start();
    let start = Instant::now();
    let drained = count.wait(messages, Duration::from_secs(600)).await;
    let total = start.elapsed();
    eprintln!("MARK bridge-end {}", mono());
    // From the cloud broker's start: the bridge's reconnect wait costs little CPU.
    let cpu = Cpu {
        bench: cpu_s("self") - bench0,
        cloud: cpu_s(&cloud_pid) - cloud0,
        edge: cpu_s(&edge_pid) - edge0,
    };
    let rss_growth_kib = rss.stop().saturating_sub(rss0);
    let edge_peak_kib = status_kib(&edge_pid, "VmHWM");
    let _ = edge.kill();
    let _ = edge.wait();
    let span = drained.expect("bridge drained within 600 s");
    Result {
        readings: n as u64,
        messages,
        cpu,
        rss_growth_kib,
        edge_peak_kib,
        span,
        total,
    }
}

/// The uplink's own ceiling, without the network: lease → read → encode the
/// messages → ack, one lease at a time as the uplink does, from the same outbox.
async fn encode_only_run(n: usize, batch: usize) -> Result {
    let dir = tempfile::tempdir().unwrap();
    let mut health = Health::default();
    let store = Store::open(
        StoreSettings::at(dir.path().join("bench.db")),
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .unwrap();
    for chunk in readings(n).chunks(10_000) {
        store.handle.ingest(chunk.to_vec()).await.unwrap();
    }
    let per_lease = batch * messages_per_lease(batch, inflight());
    eprintln!("MARK enc-start {}", mono());
    let start = Instant::now();
    let (mut readings, mut messages, mut bytes) = (0u64, 0u64, 0usize);
    while let Some((id, encoder, got)) = store
        .handle
        .lease_into(
            per_lease,
            Encoder::new(PayloadFormat::Json, "bench", "gw-test", batch),
        )
        .await
        .unwrap()
    {
        let m = encoder.finish().unwrap();
        messages += m.len() as u64;
        bytes += m.iter().map(Vec::len).sum::<usize>();
        readings += got;
        store.handle.ack(id).await.unwrap();
    }
    let span = start.elapsed();
    eprintln!("MARK enc-end {}", mono());
    assert_eq!(readings, n as u64);
    eprintln!("encode only: {} bytes a reading", bytes / n.max(1));
    Result {
        readings,
        messages,
        cpu: Cpu::default(),
        rss_growth_kib: 0,
        edge_peak_kib: 0,
        span,
        total: span,
    }
}

fn report(name: &str, batch: usize, r: &Result) {
    let s = r.span.as_secs_f64().max(1e-6);
    println!(
        "{name:<24} batch {batch:>5}: {:>8} readings, first→last {s:>7.2} s = {:>8.0} readings/s {:>6.0} messages/s; start→done {:>7.2} s; CPU s: bench process {:.2}, cloud broker {:.2} ({:.0} % of first→last), edge broker {:.2}; memory: bench process grew {} KiB, edge broker peak {} KiB",
        r.readings,
        r.readings as f64 / s,
        r.messages as f64 / s,
        r.total.as_secs_f64(),
        r.cpu.bench,
        r.cpu.cloud,
        100.0 * r.cpu.cloud / s,
        r.cpu.edge,
        r.rss_growth_kib,
        r.edge_peak_kib,
    );
}

fn main() {
    let n: usize = std::env::var("CAREHUB_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let batches: Vec<usize> = std::env::var("CAREHUB_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    // `cargo bench` passes --bench; any other argument (e.g. from `cargo test`)
    // runs a tiny smoke version.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pki = Pki::new();
        for batch in batches {
            // One reading per message would take minutes at 1,000,000: cap it.
            let count = if smoke {
                200
            } else if batch == 1 {
                n.min(20_000)
            } else {
                n
            };
            if std::env::var_os("CAREHUB_BENCH_ENCODE_ONLY").is_some() {
                let e = encode_only_run(count, batch).await;
                report("carehub lease+encode only", batch, &e);
                continue;
            }
            let c = carehub_run(&pki, count, batch).await;
            report("carehub uplink", batch, &c);
            let b = bridge_run(&pki, count, batch).await;
            report("mosquitto bridge (peer)", batch, &b);
        }
    });
}

/// CLOCK_MONOTONIC in seconds, as `perf record -k CLOCK_MONOTONIC` stamps its
/// samples: the `MARK` lines on stderr bound each drain for `perf report --time`.
fn mono() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
