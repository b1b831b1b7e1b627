//! The uplink against a real mosquitto speaking MQTT 5: a publish the broker's
//! ACL refuses is not delivered and nothing leaves the outbox for it; readings
//! refused again and again are held (the readings behind them still go),
//! raised as an alert and delivered once the ACL is fixed and staff retry, or
//! after a reconnect.
//!
//! mosquitto 2.0.11 answers a denied QoS 1 publish with PUBACK reason code
//! 0x87 and then drops the connection; the PUBACK is often lost in the reset.
//! So the uplink sees either the refusal or a connection that died young with
//! the batch in flight; it counts both against the batch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carehub::alert_stage::{AlertStage, open_book};
use carehub::clinical::alert_rules::Limits;
use carehub::config::{PayloadFormat, Protocol};
use carehub::model::{Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value};
use carehub::store::StoreHandle;
use carehub::system::health::Health;
use carehub::uplink::{ConnectionState, Uplink, UplinkSettings, UplinkStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mqtt::{DEVICE, open_store, provision, settings};
use super::mqtt_support::{Broker, Pki, Subscriber};

/// The ACL: the subscriber reads everything; the gateway may publish its status
/// and alerts, and its readings only when `readings_allowed`.
fn acl(readings_allowed: bool) -> String {
    let mut text = String::from(
        "user cloud-subscriber\ntopic read carehub/v1/#\n\n\
         user gw-test\n\
         topic write carehub/v1/oak-house/gw-test/status\n\
         topic write carehub/v1/oak-house/gw-test/alerts\n",
    );
    if readings_allowed {
        text.push_str("topic write carehub/v1/oak-house/gw-test/readings\n");
    }
    text
}

fn broker_with_acl(pki: &Pki, acl_file: &std::path::Path) -> Broker {
    std::fs::write(acl_file, acl(false)).unwrap();
    Broker::with_config(pki, "server", &format!("acl_file {}\n", acl_file.display()))
}

async fn ingest(store: &StoreHandle, n: usize) -> Vec<String> {
    let now = Timestamp::now();
    let readings: Vec<Reading> = (0..n)
        .map(|i| Reading {
            id: ReadingId::new(now),
            device: DEVICE,
            subject: Subject::Resident(ResidentId(1)),
            quantity: carehub::model::Quantity::Spo2,
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

struct Running {
    status: Arc<UplinkStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn start(store: &StoreHandle, settings: UplinkSettings) -> Running {
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
            alerts: None,
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
}

/// Waits up to 30 s for `what` to hold, then fails with `describe()`.
async fn until(what: &str, mut done: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {}",
            describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_deletes_nothing_is_held_and_raised_and_goes_once_the_acl_is_fixed() {
    let pki = Pki::new();
    let acl_file = pki.path("acl");
    let mut broker = broker_with_acl(&pki, &acl_file);
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();

    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let mut ids = ingest(&store.handle, 700).await;
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    s.protocol = Protocol::V5;
    s.hold_after_refusals = 3;
    let up = start(&store.handle, s);
    let outbox = || store.handle.stats().outbox_readings.load(Ordering::Relaxed);

    // Every batch is refused (0x87) three times in a row, then held: the
    // second lease is tried although the first is held, and nothing is deleted.
    until(
        "all readings held",
        || up.status.snapshot().held_readings == 700,
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    let snap = up.status.snapshot();
    assert_eq!(outbox(), 700, "nothing refused leaves the outbox");
    assert_eq!(snap.readings_delivered, 0);
    if let Some((_, refusal)) = &snap.last_refusal {
        assert!(
            refusal.contains("/readings") && refusal.contains("not authorized (0x87)"),
            "{refusal}"
        );
    }
    assert!(sub.reading_ids().is_empty(), "the broker delivered nothing");
    // With everything held, the connection stays up (status and alerts go).
    until(
        "connected with everything held",
        || up.status.snapshot().state == ConnectionState::Connected,
        || format!("{:?}", up.status.snapshot()),
    )
    .await;

    // A technical alert is raised for staff.
    let book = open_book(&dir.path().join("carehub.db")).unwrap();
    let mut health = Health::default();
    let stage = AlertStage {
        book: book.clone(),
        reader: store.reader.clone(),
        db_path: dir.path().join("carehub.db"),
        limits: Limits {
            disk_low_bytes: 0,
            ..Limits::default()
        },
        lifecycle: Default::default(),
        started_at: Timestamp::from_unix_ms(0),
        every: Duration::from_secs(30),
        store_stats: store.handle.stats().clone(),
        uplink: Some(up.status.clone()),
        changed: Default::default(),
        heartbeat: health.register("alerts"),
        web: None,
        cancel: CancellationToken::new(),
    };
    stage.evaluate_once(Timestamp::now()).await.unwrap();
    let alerts = book.lock().unwrap().list(0).unwrap();
    let held = alerts
        .iter()
        .find(|a| a.rule == "uplink-refused")
        .unwrap_or_else(|| panic!("no uplink-refused alert in {alerts:?}"));
    assert!(held.message.contains("700 readings"), "{}", held.message);

    // The ACL is fixed; staff ask for a retry on the gateway page: everything
    // held arrives, and so do readings stored since.
    std::fs::write(&acl_file, acl(true)).unwrap();
    broker.reload();
    ids.extend(ingest(&store.handle, 50).await);
    up.status.request_retry();
    until(
        "everything delivered after the ACL fix",
        || {
            let seen = sub.reading_ids();
            ids.iter().all(|id| seen.contains_key(id))
        },
        || format!("{:?}; outbox {}", up.status.snapshot(), outbox()),
    )
    .await;
    until(
        "outbox empty",
        || outbox() == 0,
        || format!("outbox {}", outbox()),
    )
    .await;
    assert_eq!(up.status.snapshot().held_readings, 0);
    assert_eq!(up.status.snapshot().readings_delivered, 750);

    // The alert clears with its cause, once the cause has stayed away for the
    // minimum hold (a technical alert clears itself; issue 15's lifecycle).
    let now = Timestamp::now();
    let report = stage.evaluate_once(now).await.unwrap();
    assert!(
        report.resolved.is_empty(),
        "not before the hold: {report:?}"
    );
    let later = now.saturating_add(stage.lifecycle.clear_hold + Duration::from_secs(1));
    let report = stage.evaluate_once(later).await.unwrap();
    assert_eq!(report.resolved.len(), 1, "{report:?}");
    up.stop().await;
}

/// Held readings are tried again after a reconnect, without staff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_readings_are_tried_again_after_a_reconnect() {
    let pki = Pki::new();
    let acl_file = pki.path("acl");
    let mut broker = broker_with_acl(&pki, &acl_file);
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let ids = ingest(&store.handle, 120).await;
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    s.hold_after_refusals = 2;
    // The connection left once everything is held counts as lasting.
    s.stable_after = Duration::from_secs(1);
    let up = start(&store.handle, s);
    until(
        "held and connected",
        || {
            let s = up.status.snapshot();
            s.held_readings == 120 && s.state == ConnectionState::Connected
        },
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    // Not an assertion: the connection must outlive stable_after, so that its
    // end counts as a link cut and not as one the held readings caused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&acl_file, acl(true)).unwrap();
    // A broker restart (with the fixed ACL): the uplink reconnects and retries.
    broker.stop(libc::SIGTERM);
    broker.start();
    until(
        "delivered after the reconnect",
        || {
            let seen = sub.reading_ids();
            ids.iter().all(|id| seen.contains_key(id))
        },
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    until(
        "outbox empty",
        || store.handle.stats().outbox_readings.load(Ordering::Relaxed) == 0,
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    up.stop().await;
}

/// A broker with a packet-size limit smaller than a batch of 50 readings.
fn broker_with_packet_limit(pki: &Pki, bytes: usize) -> Broker {
    Broker::with_config(pki, "server", &format!("max_packet_size {bytes}\n"))
}

/// MQTT 5: mosquitto states its Maximum Packet Size in the CONNACK; the uplink
/// splits its batches to fit, and everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_to_the_brokers_maximum_packet_size() {
    let pki = Pki::new();
    let mut broker = broker_with_packet_limit(&pki, 4096);
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let ids = ingest(&store.handle, 400).await;
    let s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    assert_eq!(s.batch_max_readings, 50, "a batch is about 12 kB");
    let up = start(&store.handle, s);
    until(
        "everything delivered in small messages",
        || {
            let seen = sub.reading_ids();
            ids.iter().all(|id| seen.contains_key(id))
        },
        || format!("{:?} {}", up.status.snapshot(), broker.log_text()),
    )
    .await;
    until(
        "outbox empty",
        || store.handle.stats().outbox_readings.load(Ordering::Relaxed) == 0,
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    let snap = up.status.snapshot();
    assert_eq!(snap.max_packet_size, Some(4096));
    assert_eq!(snap.connections, 1, "no connection was lost to the limit");
    let readings_messages: Vec<_> = sub
        .messages()
        .into_iter()
        .filter(|m| m.topic.ends_with("/readings"))
        .collect();
    assert!(
        readings_messages.len() >= 400 / 15,
        "{}",
        readings_messages.len()
    );
    assert!(readings_messages.iter().all(|m| m.payload.len() < 4096));
    up.stop().await;
}

/// MQTT 3.1.1 has no way to learn the limit: mosquitto drops the connection
/// after the CONNACK at the first large publish. The back-off keeps growing
/// (a CONNACK does not reset it), and the batch that keeps killing the
/// connection is held after `hold_after_refusals` deaths, so the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_drops_after_connack_gets_a_growing_back_off() {
    let pki = Pki::new();
    let mut broker = broker_with_packet_limit(&pki, 4096);
    broker.start();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    ingest(&store.handle, 200).await;
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    s.protocol = Protocol::V311;
    s.backoff_min = Duration::from_millis(50);
    s.backoff_max = Duration::from_secs(5);
    s.hold_after_refusals = 5;
    let up = start(&store.handle, s);
    until(
        "the killing batch held",
        || {
            let s = up.status.snapshot();
            s.held_readings == 200 && s.state == ConnectionState::Connected
        },
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    let snap = up.status.snapshot();
    // Five deaths: delays drawn under ceilings of 50, 100, 200, 400 and 800 ms,
    // the last at least half its ceiling. A back-off reset by each CONNACK
    // would stay at or under 50 ms.
    assert!(snap.connections >= 6, "{snap:?}");
    let last = up.status.retry_delay_ms.load(Ordering::Relaxed);
    assert!(
        last >= 400,
        "the back-off did not grow: last delay {last} ms"
    );
    assert_eq!(
        store.handle.stats().outbox_readings.load(Ordering::Relaxed),
        200,
        "nothing deleted"
    );
    up.stop().await;
}

/// `uplink.compression = "deflate"`: each readings message is the raw DEFLATE
/// of the JSON batch; inflated, it is the schema-1 message, every reading there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflated_batches_arrive_and_inflate_to_the_json_batches() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let ids = ingest(&store.handle, 300).await;
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    s.compact = true;
    let up = start(&store.handle, s);
    let inflated = || -> Vec<carehub::uplink::payload::ReadingsMessage> {
        sub.messages()
            .into_iter()
            .filter(|m| m.topic.ends_with("/readings"))
            .map(|m| {
                assert_ne!(m.payload.first(), Some(&b'{'), "sent uncompressed");
                let text =
                    miniz_oxide::inflate::decompress_to_vec(&m.payload).expect("raw DEFLATE");
                serde_json::from_slice(&text).expect("schema 1 once inflated")
            })
            .collect()
    };
    until(
        "every reading arrives compressed",
        || {
            let seen: std::collections::HashSet<String> = inflated()
                .into_iter()
                .flat_map(|m| m.readings.into_iter().map(|r| r.id))
                .collect();
            ids.iter().all(|id| seen.contains(id))
        },
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    up.stop().await;
}
