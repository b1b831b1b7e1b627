//! The uplink against a real mosquitto with mutual TLS: delivery of a backlog
//! stored before the broker existed, broker restarts mid-stream, refusals that a
//! field engineer can read with the backlog untouched, the last will, and FHIR.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carehub::config::PayloadFormat;
use carehub::model::{
    Device, DeviceAddress, DeviceKind, Quantity, Reading, ReadingId, Resident, ResidentId, Subject,
    Timestamp, Unit, Value,
};
use carehub::store::{Store, StoreHandle, StoreSettings};
use carehub::system::health::Health;
use carehub::uplink::tls::TlsFiles;
use carehub::uplink::{AlertFeed, ConnectionState, Uplink, UplinkSettings, UplinkStatus};
use rustls::pki_types::pem::PemObject;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mqtt_support::{Broker, Pki, Subscriber};
use super::support::{Daemon, free_port, wait_for};

pub(super) const DEVICE: DeviceAddress = DeviceAddress([0xA4, 0xC1, 0x38, 0, 0, 1]);

pub(super) fn open_store(dir: &std::path::Path) -> Store {
    let mut health = Health::default();
    Store::open(
        StoreSettings::at(dir.join("carehub.db")),
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .unwrap()
}

pub(super) async fn provision(store: &StoreHandle) {
    store
        .provision(
            vec![Resident {
                id: ResidentId(1),
                display_name: "Edith Example".into(),
                room: "12".into(),
                reference: "res-0001".into(),
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
}

/// `n` SpO2 readings of resident 1; returns their ids.
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

pub(super) fn settings(
    pki: &Pki,
    port: u16,
    host: &str,
    pair: &str,
    payload: PayloadFormat,
) -> UplinkSettings {
    let p = pki.pair(pair);
    UplinkSettings {
        host: host.into(),
        port,
        tls: TlsFiles {
            ca: pki.path("ca.pem"),
            cert: p.cert,
            key: p.key,
        },
        site: "oak-house".into(),
        gateway: "gw-test".into(),
        protocol: carehub::config::Protocol::V5,
        compact: false,
        payload,
        batch_max_readings: 50,
        max_inflight: 8,
        keep_alive: Duration::from_secs(5),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        cert_warn_days: 30,
        hold_after_refusals: 3,
        stable_after: std::time::Duration::from_secs(30),
        watch_every: Duration::from_millis(300),
        status_every: Duration::from_secs(60),
        receipts: None,
    }
}

struct Running {
    status: Arc<UplinkStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn start_uplink(store: &StoreHandle, settings: UplinkSettings) -> Running {
    start_uplink_with(store, settings, None)
}

fn start_uplink_with(
    store: &StoreHandle,
    settings: UplinkSettings,
    alerts: Option<AlertFeed>,
) -> Running {
    let mut health = Health::default();
    let status = Arc::new(UplinkStatus::new(ConnectionState::Connecting));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        Uplink {
            settings,
            store: store.clone(),
            status: status.clone(),
            heartbeat: health.register("uplink"),
            cancel: cancel.clone(),
            reload: Arc::new(tokio::sync::Notify::new()),
            version: "test",
            alerts,
        }
        .run(),
    );
    Running {
        status,
        cancel,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("uplink stops within 5 s")
            .unwrap();
    }

    async fn wait_error(&self, part: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some((_, e)) = self.status.snapshot().last_error
                && e.contains(part)
            {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no error containing {part:?}; status: {:?}",
                self.status.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn wait_all_seen(sub: &Subscriber, ids: &[String], what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = sub.reading_ids();
        let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {missing} of {} readings never reached the subscriber",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The subscriber's persistent session exists before the gateway ever connects,
/// so it receives everything the broker accepts, whoever connects first.
fn broker_with_subscriber(pki: &Pki) -> (Broker, Subscriber) {
    let mut broker = Broker::new(pki, "server");
    broker.start();
    let sub = Subscriber::start(pki, broker.port);
    sub.wait_subscribed();
    (broker, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_from_before_the_broker_is_delivered_and_survives_broker_restarts() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let (mut broker, sub) = broker_with_subscriber(&pki);
    broker.stop(libc::SIGTERM);

    // Stored while no broker exists.
    let mut ids = ingest(&store.handle, 400).await;
    let up = start_uplink(
        &store.handle,
        settings(
            &pki,
            broker.port,
            "localhost",
            "gateway",
            PayloadFormat::Json,
        ),
    );
    up.wait_error("cannot reach the broker").await;
    assert_eq!(
        store.handle.stats().outbox_readings.load(Ordering::Relaxed),
        400
    );

    broker.start();
    wait_all_seen(&sub, &ids, "backlog").await;

    // Mid-stream restarts: readings keep arriving while the broker goes away.
    // SIGTERM lets mosquitto save its state; SIGKILL does not (what the gateway
    // sees is the same: the connection drops mid-stream).
    for (round, signal) in [libc::SIGTERM, libc::SIGKILL, libc::SIGTERM, libc::SIGKILL]
        .into_iter()
        .enumerate()
    {
        let before = up.status.snapshot().connections;
        for _ in 0..5 {
            ids.extend(ingest(&store.handle, 40).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker.stop(signal);
        ids.extend(ingest(&store.handle, 100).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker.start();
        ids.extend(ingest(&store.handle, 100).await);
        wait_all_seen(&sub, &ids, &format!("restart round {round}")).await;
        assert!(
            up.status.snapshot().connections > before,
            "reconnected in round {round}"
        );
    }

    // Nothing missing; a repeat is the same reading, never a different one.
    let seen = sub.reading_ids();
    for id in &ids {
        let copies = &seen[id];
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "repeats of {id} differ"
        );
    }
    let expected: HashSet<&String> = ids.iter().collect();
    assert!(
        seen.keys().all(|k| expected.contains(k)),
        "an id nobody stored"
    );
    let wait_empty = wait_for(Duration::from_secs(10), || {
        (store.handle.stats().outbox_readings.load(Ordering::Relaxed) == 0).then_some(())
    });
    assert!(
        wait_empty.is_some(),
        "outbox empties once everything is acknowledged"
    );
    assert_eq!(up.status.snapshot().readings_delivered as usize, ids.len());
    // The resident appears by reference only, never by name.
    let any = sub
        .messages()
        .into_iter()
        .find(|m| m.topic.ends_with("/readings"))
        .unwrap();
    let text = String::from_utf8(any.payload).unwrap();
    assert!(
        text.contains("res-0001") && !text.contains("Edith"),
        "{text}"
    );
    assert_eq!(any.topic, "carehub/v1/oak-house/gw-test/readings");
    up.stop().await;
}

/// Each refusal is reported in words a field engineer can act on, nothing is
/// delivered and the backlog stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_explained_and_leave_the_backlog_untouched() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let mut wrong_host = Broker::new(&pki, "wrong-host");
    wrong_host.start();
    let cases = [
        ("foreign", broker.port, "refused this gateway's certificate"),
        ("expired", broker.port, "expired"),
        (
            "gateway",
            wrong_host.port,
            "not valid for the configured host name",
        ),
    ];
    for (pair, port, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        provision(&store.handle).await;
        let ids = ingest(&store.handle, 120).await;
        let up = start_uplink(
            &store.handle,
            settings(&pki, port, "localhost", pair, PayloadFormat::Json),
        );
        let e = up.wait_error(expected).await;
        eprintln!("{pair}: {e}");
        // Let it retry a few times: still nothing goes anywhere.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = up.status.snapshot();
        assert_eq!(
            (s.readings_delivered, s.state == ConnectionState::Connected),
            (0, false),
            "{pair}: {e}"
        );
        up.stop().await;
        let lease = store
            .handle
            .lease(1000)
            .await
            .unwrap()
            .expect("backlog still there");
        assert_eq!(lease.readings.len(), ids.len(), "{pair}: backlog untouched");
    }

    // No certificate at all: the uplink refuses to start one connection with it...
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    ingest(&store.handle, 10).await;
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    s.tls.cert = pki.path("empty.pem");
    let up = start_uplink(&store.handle, s);
    up.wait_error("no gateway certificate").await;
    up.stop().await;
    assert_eq!(
        store
            .handle
            .lease(100)
            .await
            .unwrap()
            .unwrap()
            .readings
            .len(),
        10
    );

    // ...and a client that offers none is refused by the broker, in words.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut o = rumqttc::MqttOptions::new("gw-test", "localhost", broker.port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(no_cert)),
    ));
    let (_client, mut events) = rumqttc::AsyncClient::new(o, 10);
    let err = loop {
        match events.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                panic!("connected without a client certificate")
            }
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    let err = carehub::uplink::link::LinkError::V311(err);
    let text = carehub::uplink::actor::classify(&err, "localhost").to_string();
    assert!(
        text.contains("requires a client certificate"),
        "{text} ({err:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_close_to_expiry_is_warned_and_published() {
    let pki = Pki::new();
    let (broker, sub) = broker_with_subscriber(&pki);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let up = start_uplink(
        &store.handle,
        settings(
            &pki,
            broker.port,
            "localhost",
            "gateway-soon",
            PayloadFormat::Json,
        ),
    );
    let status = wait_for(Duration::from_secs(10), || {
        sub.messages()
            .into_iter()
            .rev()
            .find(|m| m.topic.ends_with("/status"))
    })
    .expect("status published");
    let msg: carehub::uplink::payload::StatusMessage =
        serde_json::from_slice(&status.payload).unwrap();
    assert!(msg.certificate_expiring, "{msg:?}");
    let w = up.status.snapshot().certificate_warning.unwrap();
    assert!(
        w.contains("expires in 9 days") || w.contains("expires in 10 days"),
        "{w}"
    );
    assert!(!w.contains("CN"), "{w}");
    up.stop().await;

    // A fleet certificate for another name: accepted by the broker, but the
    // gateway says its CN is not its client id.
    let up = start_uplink(
        &store.handle,
        settings(
            &pki,
            broker.port,
            "localhost",
            "subscriber",
            PayloadFormat::Json,
        ),
    );
    let w = wait_for(Duration::from_secs(10), || {
        up.status.snapshot().certificate_warning
    })
    .expect("warning");
    assert!(
        w.contains("\"cloud-subscriber\" is not site.gateway_id \"gw-test\""),
        "{w}"
    );
    up.stop().await;
}

fn write_config(dir: &std::path::Path, pki: &Pki, port: u16, payload: &str) -> std::path::PathBuf {
    let p = pki.pair("gateway");
    let text = format!(
        "[site]\nid = \"oak-house\"\ngateway_id = \"gw-test\"\n\
         [store]\npath = \"{db}\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\nhttps = false\n\
         [uplink]\nenabled = true\nhost = \"localhost\"\nport = {port}\n\
         ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         payload = \"{payload}\"\nkeep_alive_s = 5\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\n",
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

fn status_states(sub: &Subscriber) -> Vec<String> {
    sub.messages()
        .into_iter()
        .filter(|m| m.topic == "carehub/v1/oak-house/gw-test/status")
        .map(|m| {
            let s: carehub::uplink::payload::StatusMessage =
                serde_json::from_slice(&m.payload).unwrap();
            format!("{:?}", s.state).to_lowercase()
        })
        .collect()
}

/// The real daemon, FHIR payloads: every Bundle validates against the PHD IG
/// structure; killing the daemon makes the broker publish "offline" (last will).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sends_valid_fhir_and_its_last_will_says_offline() {
    let pki = Pki::new();
    let (broker, sub) = broker_with_subscriber(&pki);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pki, broker.port, "fhir");
    let child = crate::support::carehub_as_service()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info,carehub::uplink=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let daemon = Daemon { child: Some(child) };
    let bundles = wait_for(Duration::from_secs(20), || {
        let b: Vec<_> = sub
            .messages()
            .into_iter()
            .filter(|m| m.topic.ends_with("/readings"))
            .collect();
        (b.len() >= 2).then_some(b)
    })
    .expect("the daemon forwards readings");
    for b in bundles {
        let json: serde_json::Value = serde_json::from_slice(&b.payload).unwrap();
        let n = carehub::uplink::fhir::validate(&json).unwrap_or_else(|e| panic!("{e}: {json:#}"));
        assert!(n > 0);
    }
    assert!(status_states(&sub).contains(&"online".to_string()));
    // SIGHUP: the uplink reloads its certificates and reconnects, saying
    // "online" again; the daemon keeps running.
    let onlines = |sub: &Subscriber| status_states(sub).iter().filter(|s| *s == "online").count();
    let before = onlines(&sub);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    let again = wait_for(Duration::from_secs(10), || {
        (onlines(&sub) > before).then_some(())
    });
    assert!(
        again.is_some(),
        "no reconnect after SIGHUP: {:?}",
        status_states(&sub)
    );
    // A clean DISCONNECT before reconnecting: the broker drops the last will.
    // On failure the daemon's uplink log and the broker's log say which
    // connection ended uncleanly.
    if status_states(&sub).contains(&"offline".to_string()) {
        let out = daemon.stop(libc::SIGKILL);
        panic!(
            "{:?}\n--- daemon ---\n{}\n--- broker ---\n{}",
            status_states(&sub),
            String::from_utf8_lossy(&out.stderr),
            broker.log_text()
        );
    }
    let out = daemon.stop(libc::SIGKILL);
    let _ = out;
    let last = wait_for(Duration::from_secs(10), || {
        status_states(&sub)
            .last()
            .filter(|s| *s == "offline")
            .cloned()
    });
    assert!(
        last.is_some(),
        "last will 'offline' published; saw {:?}",
        status_states(&sub)
    );
    // Retained: whoever subscribes later learns the gateway is offline.
    let late = Subscriber::start_as(&pki, broker.port, "late-subscriber");
    let retained = wait_for(Duration::from_secs(10), || {
        late.messages()
            .into_iter()
            .find(|m| m.topic.ends_with("/status"))
    })
    .expect("retained status");
    assert!(retained.retain);
    let s: carehub::uplink::payload::StatusMessage =
        serde_json::from_slice(&retained.payload).unwrap();
    assert_eq!(s.state, carehub::uplink::payload::Presence::Offline);
}

/// Renewing the certificate files while connected makes the uplink reconnect with
/// them (no restart), the expiry warning clears, and the backlog keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_picked_up_without_losing_the_backlog() {
    let pki = Pki::new();
    let (broker, sub) = broker_with_subscriber(&pki);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    // The uplink's own copies of the files, as an engineer would replace them.
    let live = dir.path().join("tls");
    std::fs::create_dir_all(&live).unwrap();
    let soon = pki.pair("gateway-soon");
    std::fs::copy(&soon.cert, live.join("gw.pem")).unwrap();
    std::fs::copy(&soon.key, live.join("gw.key")).unwrap();
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    s.tls.cert = live.join("gw.pem");
    s.tls.key = live.join("gw.key");
    let up = start_uplink(&store.handle, s);
    let mut ids = ingest(&store.handle, 100).await;
    wait_all_seen(&sub, &ids, "before renewal").await;
    assert!(up.status.snapshot().certificate_warning.is_some());
    let before = up.status.snapshot().connections;

    let renewed = pki.pair("gateway");
    std::fs::copy(&renewed.key, live.join("gw.key")).unwrap();
    std::fs::copy(&renewed.cert, live.join("gw.pem")).unwrap();
    ids.extend(ingest(&store.handle, 100).await);
    let reconnected = wait_for(Duration::from_secs(10), || {
        let s = up.status.snapshot();
        (s.connections > before && s.certificate_warning.is_none()).then_some(())
    });
    assert!(reconnected.is_some(), "{:?}", up.status.snapshot());
    ids.extend(ingest(&store.handle, 100).await);
    wait_all_seen(&sub, &ids, "after renewal").await;
    up.stop().await;
}

/// Regression: rumqttc's `EventLoop::poll` is not cancel-safe while it connects.
/// The session loop used to wait on it in a `select!` beside the alert nudge,
/// so an alert raised during the TLS/CONNECT handshake dropped a connection the
/// broker had accepted; the broker published the last will and the cloud saw a
/// false "offline" before the first "online". Here alerts are "raised" every
/// millisecond while the uplink connects: the cloud must see only "online".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_while_the_uplink_connects_does_not_fire_its_last_will() {
    let pki = Pki::new();
    let (broker, sub) = broker_with_subscriber(&pki);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let db = dir.path().join("carehub.db");
    let book = tokio::task::spawn_blocking(move || carehub::alert_stage::open_book(&db))
        .await
        .unwrap()
        .unwrap();
    let changed = Arc::new(tokio::sync::Notify::new());
    let nudging = CancellationToken::new();
    let nudger = tokio::spawn({
        let (changed, nudging) = (changed.clone(), nudging.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !nudging.is_cancelled() {
                tick.tick().await;
                changed.notify_one();
            }
        }
    });
    let up = start_uplink_with(
        &store.handle,
        settings(
            &pki,
            broker.port,
            "localhost",
            "gateway",
            PayloadFormat::Json,
        ),
        Some(AlertFeed { book, changed }),
    );
    let online = wait_for(Duration::from_secs(10), || {
        status_states(&sub)
            .contains(&"online".to_string())
            .then_some(())
    });
    nudging.cancel();
    nudger.await.unwrap();
    // The will of a dropped first connection would arrive before the "online"
    // of the next one, so by now it would be here.
    assert!(
        online.is_some() && status_states(&sub) == ["online"],
        "{:?}\n--- broker ---\n{}",
        status_states(&sub),
        broker.log_text()
    );
    assert_eq!(up.status.snapshot().connections, 1);
    up.stop().await;
}
