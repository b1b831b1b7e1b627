//! End-to-end receipts (`uplink.receipts`) against a real mosquitto with mutual
//! TLS and the reference consumer `tools/receipt_consumer.py` (paho-mqtt, its
//! own SQLite database): readings leave the gateway's outbox only once the
//! consumer's receipt names them, not at the broker's PUBACK; a consumer killed
//! with SIGKILL between its commit and its receipt loses nothing, and after its
//! restart every reading is in its database exactly once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use carehub::config::{PayloadFormat, Protocol};
use carehub::model::{Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value};
use carehub::store::StoreHandle;
use carehub::system::health::Health;
use carehub::uplink::{ConnectionState, Uplink, UplinkSettings, UplinkStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mqtt::{DEVICE, open_store, provision, settings};
use super::mqtt_support::{Broker, Pki};

/// A venv's python with paho-mqtt 2 (made on first use, under the target dir).
pub fn consumer_python() -> PathBuf {
    crate::support::python_venv("consumer-venv", "paho.mqtt.client", "paho-mqtt>=2,<3")
}

/// The reference consumer as a child process (killed on drop).
pub struct Consumer {
    child: Child,
}

impl Consumer {
    /// Starts it and waits for its "ready" (subscription granted).
    pub fn start(pki: &Pki, port: u16, db: &Path, extra: &[&str]) -> Consumer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/receipt_consumer.py");
        let p = pki.pair("subscriber");
        let mut child = Command::new(consumer_python())
            .arg(script)
            .args(["--host", "localhost", "--port", &port.to_string()])
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .arg("--cert")
            .arg(&p.cert)
            .arg("--key")
            .arg(&p.key)
            .arg("--db")
            .arg(db)
            .args(["--client-id", "cloud-subscriber"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the reference consumer");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the consumer did not subscribe");
        Consumer { child }
    }

    /// Waits for the process to end; returns the signal that ended it, if any.
    pub fn wait_end(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.child.wait().unwrap().signal()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the consumer's database holds: (rows, distinct ids, ids, most
/// deliveries of one id).
pub fn consumer_db(db: &Path) -> (u64, u64, HashSet<String>, u64) {
    if !db.exists() {
        return (0, 0, HashSet::new(), 0);
    }
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let Ok(mut q) = c.prepare("SELECT id, deliveries FROM readings") else {
        return (0, 0, HashSet::new(), 0);
    };
    let rows: Vec<(String, u64)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let ids: HashSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    let most = rows.iter().map(|(_, d)| *d).max().unwrap_or(0);
    (rows.len() as u64, ids.len() as u64, ids, most)
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

/// Waits up to 60 s for `what` to hold, then fails with `describe()`.
async fn until(what: &str, mut done: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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
async fn readings_leave_only_after_the_consumers_receipt_and_a_consumer_killed_before_it_loses_none()
 {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let cloud = tempfile::tempdir().unwrap();
    let db = cloud.path().join("consumer.db");

    // The consumer stores the first message it gets, commits, and is killed
    // (SIGKILL, by itself) before it sends that message's receipt.
    let mut dying = Consumer::start(&pki, broker.port, &db, &["--die-before-receipt"]);

    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let mut ids = ingest(&store.handle, 400).await;
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Json,
    );
    s.receipts = Some(Duration::from_secs(2));
    let up = start(&store.handle, s);
    let outbox = || store.handle.stats().outbox_readings.load(Ordering::Relaxed);

    assert_eq!(
        dying.wait_end(),
        Some(libc::SIGKILL),
        "the consumer dies by SIGKILL"
    );
    let (stored_before, ..) = consumer_db(&db);
    assert!(stored_before > 0, "the consumer committed before dying");
    // The broker acknowledged messages, but no receipt came: nothing left the
    // outbox (without receipts the PUBACKs would have deleted them).
    until(
        "the broker acknowledged messages",
        || up.status.snapshot().messages_delivered > 0,
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    assert_eq!(outbox(), 400, "nothing deleted without a receipt");
    // No receipt within the time-out: the batches are sent again (to nobody:
    // the consumer is down, the broker drops them).
    until(
        "batches sent again after the receipt time-out",
        || up.status.snapshot().receipt_timeouts > 0,
        || format!("{:?}", up.status.snapshot()),
    )
    .await;
    assert_eq!(outbox(), 400, "still nothing deleted");
    assert_eq!(up.status.snapshot().readings_delivered, 0);
    // More readings come in while the consumer is down.
    ids.extend(ingest(&store.handle, 100).await);

    // The consumer is back (same database): everything arrives, is stored
    // once, receipted, and only then leaves the gateway's outbox.
    let _consumer = Consumer::start(&pki, broker.port, &db, &[]);
    until(
        "outbox empty after the receipts",
        || outbox() == 0,
        || format!("outbox {}; {:?}", outbox(), up.status.snapshot()),
    )
    .await;
    let (rows, distinct, stored, most) = consumer_db(&db);
    assert_eq!(rows, 500, "every reading once in the consumer's database");
    assert_eq!(distinct, 500);
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(stored, want, "exactly the gateway's readings, none lost");
    assert!(
        most >= 2,
        "the readings the dead consumer stored came again and counted a second delivery"
    );
    let snap = up.status.snapshot();
    assert_eq!(snap.readings_delivered, 500);
    assert_eq!(snap.awaiting_receipt, 0);
    up.stop().await;
}

/// FHIR bundles, DEFLATE-compressed: the consumer reads the Observation
/// identifiers and its receipts name them; everything leaves the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_for_compressed_fhir_bundles_empty_the_outbox() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let cloud = tempfile::tempdir().unwrap();
    let db = cloud.path().join("consumer.db");
    let _consumer = Consumer::start(&pki, broker.port, &db, &[]);

    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let ids = ingest(&store.handle, 300).await;
    let mut s = settings(
        &pki,
        broker.port,
        "localhost",
        "gateway",
        PayloadFormat::Fhir,
    );
    s.protocol = Protocol::V5;
    s.compact = true;
    s.receipts = Some(Duration::from_secs(30));
    let up = start(&store.handle, s);
    let outbox = || store.handle.stats().outbox_readings.load(Ordering::Relaxed);
    until(
        "outbox empty after the receipts",
        || outbox() == 0,
        || format!("outbox {}; {:?}", outbox(), up.status.snapshot()),
    )
    .await;
    let (rows, _, stored, most) = consumer_db(&db);
    assert_eq!(rows, 300);
    assert_eq!(stored, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(most, 1, "nothing sent twice with a consumer that answers");
    assert_eq!(up.status.snapshot().receipt_timeouts, 0);
    up.stop().await;
}
