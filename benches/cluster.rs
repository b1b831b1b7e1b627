//! A fleet of gateways against a clustered broker: a 3-node RabbitMQ 3.10
//! cluster (Debian's rabbitmq-server, its MQTT plugin on mutual TLS with
//! client-certificate login; `benches/peers/rabbit_cluster.sh`), N carehub
//! uplinks in this process (MQTT 3.1.1, the only version RabbitMQ 3.x speaks),
//! each with its own SQLite store, certificate (CN = client id = gateway id)
//! and backlog, all connected to node 1, and a cloud subscriber on node 2
//! (persistent session, QoS 1). Mid-stream node 1 is killed (SIGKILL), readings
//! keep coming in while it is down, then it is started again: every gateway
//! reconnects (the reconnect storm; the jittered back-off spreads it) and the
//! subscriber must hold every reading after de-duplication by id.
//!
//! Run as root (the nodes drop to the rabbitmq user): `nice cargo bench --bench
//! cluster` (env `CAREHUB_FLEET`, gateways, default 50; `CAREHUB_FLEET_READINGS`,
//! the backlog of each, default 1000; `CAREHUB_FLEET_OUTAGE_S`, default 10).
//! Prints per-gateway delivery and the reconnect-time histogram; figures in
//! docs/fleet.md. Not run by `cargo test` (it needs the RabbitMQ package and
//! about two minutes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carehub::config::{PayloadFormat, Protocol};
use carehub::model::{
    Device, DeviceAddress, DeviceKind, Quantity, Reading, ReadingId, Resident, ResidentId, Subject,
    Timestamp, Unit, Value,
};
use carehub::store::{Store, StoreHandle, StoreSettings};
use carehub::system::health::Health;
use carehub::uplink::payload::ReadingsMessage;
use carehub::uplink::tls::TlsFiles;
use carehub::uplink::{ConnectionState, Uplink, UplinkSettings, UplinkStatus};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const DEVICE: DeviceAddress = DeviceAddress([0xA4, 0xC1, 0x38, 0, 0, 1]);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/rabbit_cluster.sh")
}

fn cluster(dir: &Path, args: &[&str]) {
    let ok = Command::new(script())
        .arg(dir)
        .args(args)
        .status()
        .expect("run rabbit_cluster.sh")
        .success();
    assert!(ok, "rabbit_cluster.sh {args:?} failed");
}

/// The fleet PKI: a CA, the broker's certificate for localhost, the
/// subscriber's and one per gateway (CN = its id), as PEM files in `tls`.
fn pki(tls: &Path, gateways: &[String]) {
    std::fs::create_dir_all(tls).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "carehub fleet bench CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(tls.join("ca.pem"), ca.pem()).unwrap();
    let leaf = |name: &str, cn: &str, server: bool| {
        let dns = if server {
            vec!["localhost".to_owned()]
        } else {
            vec![]
        };
        let mut p = CertificateParams::new(dns).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        std::fs::write(tls.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(tls.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    };
    leaf("server", "localhost", true);
    leaf("cloud-subscriber", "cloud-subscriber", false);
    for g in gateways {
        leaf(g, g, false);
    }
}

/// Reading ids the subscriber saw, per gateway, and messages in all.
#[derive(Default)]
struct Seen {
    ids: HashMap<String, HashSet<String>>,
    messages: u64,
    readings: u64,
}

/// The cloud side on node 2: persistent session, QoS 1, its own thread.
fn subscriber(tls: &Path, port: u16, seen: Arc<Mutex<Seen>>, ready: Arc<Mutex<bool>>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    let config = carehub::uplink::tls::client_config(&TlsFiles {
        ca: tls.join("ca.pem"),
        cert: tls.join("cloud-subscriber.pem"),
        key: tls.join("cloud-subscriber.key"),
    })
    .unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut o = MqttOptions::new("cloud-subscriber", "localhost", port);
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
            o.set_clean_session(false);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_max_packet_size(16 << 20, 16 << 20);
            let (client, mut events) = AsyncClient::new(o, 100);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .subscribe("carehub/v1/+/+/readings", QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *ready.lock().unwrap() = true,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(msg) = serde_json::from_slice::<ReadingsMessage>(&p.payload) else {
                            continue;
                        };
                        let mut s = seen.lock().unwrap();
                        s.messages += 1;
                        s.readings += msg.readings.len() as u64;
                        let set = s.ids.entry(msg.gateway.clone()).or_default();
                        for r in msg.readings {
                            set.insert(r.id);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    });
}

async fn ingest(store: &StoreHandle, n: usize) -> Vec<String> {
    let now = Timestamp::now();
    let readings: Vec<Reading> = (0..n)
        .map(|i| Reading {
            id: ReadingId::new(now),
            device: DEVICE,
            subject: Subject::Resident(ResidentId(1)),
            quantity: Quantity::Spo2,
            value: Value::Number(90.0 + (i % 10) as f64),
            unit: Unit::Percent,
            measured_at: None,
            received_at: now,
            clock_synced: true,
        })
        .collect();
    let ids = readings.iter().map(|r| r.id.to_string()).collect();
    store.ingest(readings).await.unwrap();
    ids
}

struct Gateway {
    id: String,
    store: Store,
    status: Arc<UplinkStatus>,
    sent: Vec<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("cluster: run with `cargo bench --bench cluster` (needs rabbitmq-server, root)");
        return;
    }
    let fleet = env_or("CAREHUB_FLEET", 50) as usize;
    let backlog = env_or("CAREHUB_FLEET_READINGS", 1000) as usize;
    let outage = Duration::from_secs(env_or("CAREHUB_FLEET_OUTAGE_S", 10));
    let dir = PathBuf::from(format!("/tmp/carehub-cluster-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tls = dir.join("tls");
    let ids: Vec<String> = (1..=fleet).map(|i| format!("gw-{i:04}")).collect();
    pki(&tls, &ids);
    let mut users: Vec<&str> = ids.iter().map(String::as_str).collect();
    users.push("cloud-subscriber");
    let mut setup = vec!["setup"];
    setup.extend(users);
    cluster(&dir, &setup);
    let t0 = Instant::now();
    for n in ["1", "2", "3"] {
        cluster(&dir, &["start", n]);
    }
    for n in ["1", "2", "3"] {
        cluster(&dir, &["wait", n]);
    }
    eprintln!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let ready = Arc::new(Mutex::new(false));
        subscriber(&tls, 28802, seen.clone(), ready.clone());
        while !*ready.lock().unwrap() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let work = tempfile::tempdir().unwrap();
        let mut health = Health::default();
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut gateways = Vec::new();
        let mut tasks = Vec::new();
        for id in &ids {
            let store = Store::open(
                StoreSettings::at(work.path().join(format!("{id}.db"))),
                tokio::runtime::Handle::current(),
                health.register("store"),
            )
            .unwrap();
            store
                .handle
                .provision(
                    vec![Resident {
                        id: ResidentId(1),
                        display_name: "Bench Resident".into(),
                        room: "1".into(),
                        reference: format!("{id}-res-1"),
                    }],
                    vec![Device {
                        address: DEVICE,
                        kind: DeviceKind::PulseOximeter,
                        model: None,
                        name: None,
                        subject: Subject::Resident(ResidentId(1)),
                    }],
                )
                .await
                .unwrap();
            let sent = ingest(&store.handle, backlog).await;
            let status = Arc::new(UplinkStatus::new(ConnectionState::Connecting));
            gateways.push(Gateway {
                id: id.clone(),
                store,
                status,
                sent,
            });
        }
        // Every backlog is stored before any uplink starts, so that the kill
        // comes mid-stream for all of them.
        for g in &gateways {
            let (id, store, status) = (&g.id, &g.store, g.status.clone());
            let defaults = carehub::config::UplinkConfig::default();
            tasks.push(tokio::spawn(
                Uplink {
                    settings: UplinkSettings {
                        host: "localhost".into(),
                        port: 28801,
                        tls: TlsFiles {
                            ca: tls.join("ca.pem"),
                            cert: tls.join(format!("{id}.pem")),
                            key: tls.join(format!("{id}.key")),
                        },
                        site: "fleet".into(),
                        gateway: id.clone(),
                        protocol: Protocol::V311,
                        payload: PayloadFormat::Json,
                        compact: false,
                        batch_max_readings: defaults.batch_max_readings,
                        max_inflight: defaults.max_inflight,
                        keep_alive: Duration::from_secs(defaults.keep_alive_s),
                        backoff_min: Duration::from_millis(defaults.backoff_min_ms),
                        backoff_max: Duration::from_millis(defaults.backoff_max_ms),
                        cert_warn_days: 30,
                        hold_after_refusals: 3,
                        stable_after: carehub::uplink::actor::STABLE_CONNECTION,
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
            ));
        }
        let start = Instant::now();
        let total = |g: &[Gateway]| g.iter().map(|g| g.sent.len()).sum::<usize>();
        // Mid-stream: a third of the backlog has arrived.
        let third = (fleet * backlog / 3) as u64;
        loop {
            let got: u64 = seen.lock().unwrap().ids.values().map(|s| s.len() as u64).sum();
            if got >= third || start.elapsed() > Duration::from_secs(300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before: Vec<u64> = gateways
            .iter()
            .map(|g| g.status.connections.load(Ordering::Relaxed))
            .collect();
        let connected_before = gateways
            .iter()
            .filter(|g| g.status.snapshot().state == ConnectionState::Connected)
            .count();
        let got_at_kill: u64 = seen.lock().unwrap().ids.values().map(|s| s.len() as u64).sum();
        cluster(&dir, &["kill", "1"]);
        let killed = Instant::now();
        eprintln!(
            "node 1 killed at {:.1} s with {got_at_kill} readings received, {connected_before}/{fleet} gateways connected",
            start.elapsed().as_secs_f64()
        );
        // Readings keep coming while node 1 is down.
        for g in &mut gateways {
            let more = ingest(&g.store.handle, 20).await;
            g.sent.extend(more);
        }
        tokio::time::sleep(outage).await;
        cluster(&dir, &["start", "1"]);
        cluster(&dir, &["wait", "1"]);
        let up = Instant::now();
        eprintln!(
            "node 1 listening again {:.1} s after the kill",
            (up - killed).as_secs_f64()
        );
        // Each gateway's first connection after the node came back.
        let mut reconnect: Vec<Option<f64>> = vec![None; fleet];
        let want = total(&gateways);
        let drained;
        loop {
            for (i, g) in gateways.iter().enumerate() {
                if reconnect[i].is_none() && g.status.connections.load(Ordering::Relaxed) > before[i]
                {
                    reconnect[i] = Some(up.elapsed().as_secs_f64());
                }
            }
            let got: usize = seen.lock().unwrap().ids.values().map(HashSet::len).sum();
            let outboxes: u64 = gateways
                .iter()
                .map(|g| g.store.handle.stats().outbox_readings.load(Ordering::Relaxed))
                .sum();
            if (got >= want && outboxes == 0) || up.elapsed() > Duration::from_secs(300) {
                drained = up.elapsed().as_secs_f64();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let s = seen.lock().unwrap();
        let mut missing_total = 0usize;
        let mut per_gateway = Vec::new();
        for g in &gateways {
            let got = s.ids.get(&g.id);
            let missing = g
                .sent
                .iter()
                .filter(|id| got.is_none_or(|set| !set.contains(*id)))
                .count();
            missing_total += missing;
            per_gateway.push((g.id.clone(), g.sent.len(), missing));
        }
        let mut times: Vec<f64> = reconnect.iter().flatten().copied().collect();
        times.sort_by(|a, b| a.total_cmp(b));
        (
            want,
            s.readings,
            s.messages,
            missing_total,
            per_gateway,
            times,
            drained,
            start.elapsed().as_secs_f64(),
        )
    });
    cluster(&dir, &["stop"]);
    let (want, received, messages, missing, per_gateway, times, drained, elapsed) = result;
    println!(
        "fleet: {fleet} gateways x {backlog} readings + 20 during the outage, MQTT 3.1.1, JSON, batch 100, 64 in flight"
    );
    println!(
        "readings stored {want}; received {received} in {messages} messages ({} repeats); missing after de-dup by id: {missing}",
        received.saturating_sub(want as u64)
    );
    let worst = per_gateway.iter().max_by_key(|(_, _, m)| *m);
    println!(
        "per gateway: every one {} readings; most missing at one gateway: {worst:?}",
        per_gateway.first().map_or(0, |g| g.1)
    );
    println!(
        "reconnects after node 1 was back: {}/{fleet}; p50 {:.2} s, p90 {:.2} s, max {:.2} s",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        times.last().copied().unwrap_or(f64::NAN)
    );
    let mut buckets = [0usize; 31];
    for t in &times {
        let b = (*t as usize).min(30);
        buckets[b] += 1;
    }
    println!("reconnect histogram (seconds after node 1 listened again):");
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 {
            let label = if i == 30 {
                "30+".to_owned()
            } else {
                format!("{i}-{}", i + 1)
            };
            println!("  {label:>5} s {n:>4} {}", "#".repeat(*n));
        }
    }
    println!("all delivered {drained:.1} s after node 1 was back; run {elapsed:.1} s");
    let _ = std::fs::remove_dir_all(&dir);
}
