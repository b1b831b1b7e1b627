//! Alerts end to end, with a real SQLite file and a real mosquitto: an alert
//! raised while the broker is down survives a restart of the gateway without a
//! duplicate, and reaches the broker once it starts (hazard H9, "alert lost
//! while offline").

use std::sync::Arc;
use std::time::Duration;

use carehub::alert_stage::{AlertStage, SharedBook, open_book};
use carehub::clinical::alert_rules::Limits;
use carehub::config::PayloadFormat;
use carehub::model::{Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value};
use carehub::store::{Store, StoreHandle};
use carehub::system::health::Health;
use carehub::uplink::payload::AlertMessage;
use carehub::uplink::{AlertFeed, ConnectionState, Uplink, UplinkStatus};
use tokio_util::sync::CancellationToken;

use super::mqtt::{DEVICE, open_store, provision, settings};
use super::mqtt_support::{Broker, Pki, Subscriber};

async fn spo2(store: &StoreHandle, value: f64) {
    let now = Timestamp::now();
    store
        .ingest(vec![Reading {
            id: ReadingId::new(now),
            device: DEVICE,
            subject: Subject::Resident(ResidentId(1)),
            quantity: Quantity::Spo2,
            value: Value::Number(value),
            unit: Unit::Percent,
            measured_at: None,
            received_at: now,
            clock_synced: true,
        }])
        .await
        .unwrap();
}

fn stage(store: &Store, book: &SharedBook, dir: &std::path::Path) -> AlertStage {
    let mut health = Health::default();
    AlertStage {
        book: book.clone(),
        reader: store.reader.clone(),
        db_path: dir.join("carehub.db"),
        limits: Limits {
            // Free disk on the test machine is not under test here.
            disk_low_bytes: 0,
            ..Limits::default()
        },
        lifecycle: Default::default(),
        started_at: carehub::model::Timestamp::from_unix_ms(0),
        every: Duration::from_secs(30),
        store_stats: store.handle.stats().clone(),
        uplink: None,
        changed: Default::default(),
        heartbeat: health.register("alerts"),
        web: None,
        cancel: CancellationToken::new(),
    }
}

async fn close(store: Store) {
    let Store {
        handle,
        reader,
        writer,
    } = store;
    drop((handle, reader));
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_offline_survives_a_restart_and_reaches_the_broker_once_it_starts() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();
    broker.stop(libc::SIGTERM);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("carehub.db");
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let book = open_book(&db).unwrap();
    spo2(&store.handle, 88.0).await;
    let raised = stage(&store, &book, dir.path())
        .evaluate_once(Timestamp::now())
        .await
        .unwrap()
        .raised;
    assert_eq!(raised.len(), 1);
    let id = raised[0];
    let uuid = book.lock().unwrap().get(id).unwrap().unwrap().uuid;

    // The gateway restarts while the cause still holds: the open alert is
    // reloaded from SQLite and not raised again.
    drop(book);
    close(store).await;
    let store = open_store(dir.path());
    let book = open_book(&db).unwrap();
    let again = stage(&store, &book, dir.path())
        .evaluate_once(Timestamp::now())
        .await
        .unwrap();
    assert!(
        again.raised.is_empty() && again.resolved.is_empty(),
        "{again:?}"
    );
    let open = book.lock().unwrap().list(0).unwrap();
    assert_eq!(open.len(), 1);
    assert!(!open[0].published);

    // The uplink starts with the broker still down, then the broker comes back.
    let mut health = Health::default();
    let status = Arc::new(UplinkStatus::new(ConnectionState::Connecting));
    let cancel = CancellationToken::new();
    let uplink = tokio::spawn(
        Uplink {
            settings: settings(
                &pki,
                broker.port,
                "localhost",
                "gateway",
                PayloadFormat::Json,
            ),
            store: store.handle.clone(),
            status: status.clone(),
            heartbeat: health.register("uplink"),
            cancel: cancel.clone(),
            reload: Arc::new(tokio::sync::Notify::new()),
            version: "test",
            alerts: Some(AlertFeed {
                book: book.clone(),
                changed: Arc::new(tokio::sync::Notify::new()),
            }),
        }
        .run(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while status.snapshot().last_error.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the uplink never tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!book.lock().unwrap().get(id).unwrap().unwrap().published);
    broker.start();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let alerts: Vec<AlertMessage> = loop {
        let got: Vec<AlertMessage> = sub
            .messages()
            .iter()
            .filter(|m| m.topic == "carehub/v1/oak-house/gw-test/alerts")
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
        let marked = book.lock().unwrap().get(id).unwrap().unwrap().published;
        if !got.is_empty() && marked {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alert never reached the broker; status {:?}; log {}",
            status.snapshot(),
            broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(alerts.iter().all(|a| a.id == uuid), "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.schema, "carehub.alert/2");
    assert_eq!(a.resident, "res-0001");
    assert_eq!(a.kind, "news2-single-3");
    assert_eq!(a.level, "low-medium");
    assert_eq!(a.score, Some(3));
    assert_eq!(a.announcement, 1);
    // What staff see travels with it (issue 15): partial, what is missing, the
    // parameter that scored 3 and the reading it came from.
    assert!(a.partial);
    assert!(a.missing.iter().any(|m| m == "resp_rate"), "{a:?}");
    assert_eq!(a.parameter.as_deref(), Some("spo2"));
    assert_eq!(a.reading_ids.len(), 1, "{a:?}");
    let stored: Vec<String> = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let mut st = c
            .prepare("SELECT lower(hex(id)) FROM readings_text WHERE quantity = 'spo2'")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        stored.contains(&a.reading_ids[0].replace('-', "")),
        "{stored:?} {a:?}"
    );
    assert!(book.lock().unwrap().unpublished(10).unwrap().is_empty());

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), uplink)
        .await
        .expect("uplink stops within 5 s")
        .unwrap();
}

/// Issue 15: with `uplink.payload = "fhir"`, the NEWS2 alert reaching a real
/// broker carries the score as a FHIR Observation (SNOMED CT NEWS2 total) that
/// the crate's validator accepts, about the resident by reference only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fhir_payload_a_news2_alert_reaches_the_broker_with_its_score_observation() {
    let pki = Pki::new();
    let mut broker = Broker::new(&pki, "server");
    broker.start();
    let sub = Subscriber::start(&pki, broker.port);
    sub.wait_subscribed();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("carehub.db");
    let store = open_store(dir.path());
    provision(&store.handle).await;
    let book = open_book(&db).unwrap();
    spo2(&store.handle, 88.0).await;
    let raised = stage(&store, &book, dir.path())
        .evaluate_once(Timestamp::now())
        .await
        .unwrap()
        .raised;
    assert_eq!(raised.len(), 1);

    let mut health = Health::default();
    let status = Arc::new(UplinkStatus::new(ConnectionState::Connecting));
    let cancel = CancellationToken::new();
    let uplink = tokio::spawn(
        Uplink {
            settings: settings(
                &pki,
                broker.port,
                "localhost",
                "gateway",
                PayloadFormat::Fhir,
            ),
            store: store.handle.clone(),
            status: status.clone(),
            heartbeat: health.register("uplink"),
            cancel: cancel.clone(),
            reload: Arc::new(tokio::sync::Notify::new()),
            version: "test",
            alerts: Some(AlertFeed {
                book: book.clone(),
                changed: Arc::new(tokio::sync::Notify::new()),
            }),
        }
        .run(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let a: AlertMessage = loop {
        let got = sub
            .messages()
            .iter()
            .find(|m| m.topic == "carehub/v1/oak-house/gw-test/alerts")
            .map(|m| serde_json::from_slice(&m.payload).unwrap());
        if let Some(a) = got {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alert never reached the broker; status {:?}; log {}",
            status.snapshot(),
            broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a.kind, "news2-single-3");
    let bundle = a
        .fhir
        .as_ref()
        .expect("a NEWS2 alert with FHIR carries the score");
    assert_eq!(carehub::uplink::fhir::validate(bundle), Ok(1));
    let obs = &bundle["entry"][1]["resource"];
    assert_eq!(obs["code"]["coding"][0]["code"], "1104051000000101");
    assert_eq!(obs["code"]["coding"][0]["system"], "http://snomed.info/sct");
    assert_eq!(obs["valueInteger"], 3);
    assert_eq!(obs["subject"]["identifier"]["value"], "res-0001");
    assert!(
        obs["note"][0]["text"]
            .as_str()
            .unwrap()
            .contains("resp_rate")
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), uplink)
        .await
        .expect("uplink stops within 5 s")
        .unwrap();
}

/// POST a JSON body; `None` while nothing listens.
fn http_post(addr: std::net::SocketAddr, path: &str, json: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        super::support::auth_header(addr),
        json.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// The open clinical alerts the daemon reports, by cause.
fn open_clinical(addr: std::net::SocketAddr) -> Option<Vec<serde_json::Value>> {
    let (status, body) = super::support::http_get(addr, "/api/v1/alerts")?;
    if status != 200 {
        return None;
    }
    let v: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(
        v.into_iter()
            .filter(|a| {
                a["resolved_at"].is_null()
                    && a["cause"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("resident:"))
            })
            .collect(),
    )
}

#[test]
fn the_daemon_raises_an_alert_from_live_readings_and_keeps_it_across_a_restart() {
    use super::support::{Daemon, free_port, http_get, wait_for};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The simulator's third resident starts part-way into a deterioration.
    let daemon = Daemon::demo(port, dir.path(), &["--residents", "3"]);
    let first = wait_for(Duration::from_secs(20), || {
        open_clinical(addr).filter(|a| !a.is_empty())
    })
    .expect("a clinical alert within 20 s of start");
    let id = first[0]["id"].as_i64().unwrap();
    let cause = first[0]["cause"].as_str().unwrap().to_owned();
    let (status, page) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("Alerts ("), "{page}");
    // A typed name is refused; the acknowledgement is the signed-in caller's
    // (the helpers act as the nurse `support::TEST_NURSE`).
    let (status, body) = http_post(
        addr,
        &format!("/api/v1/alerts/{id}/ack"),
        r#"{"by":"Nurse Kay"}"#,
    )
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no longer accepted"), "{body}");
    let (status, body) = http_post(addr, &format!("/api/v1/alerts/{id}/ack"), "").unwrap();
    assert_eq!(status, 200, "{body}");
    let out = daemon.stop(libc::SIGTERM);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // After a restart the same alert is open (if its cause still holds) and no
    // second open alert exists for any cause.
    let daemon = Daemon::demo(port, dir.path(), &["--residents", "3"]);
    let all: Vec<serde_json::Value> = wait_for(Duration::from_secs(10), || {
        let (status, body) = http_get(addr, "/api/v1/alerts")?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    })
    .expect("the alerts API after restart");
    let acked = all
        .iter()
        .find(|a| a["id"] == id)
        .expect("the alert survived");
    assert_eq!(acked["acknowledged_by"], super::support::TEST_NURSE);
    assert_eq!(acked["cause"], cause.as_str());
    let mut open: Vec<&str> = all
        .iter()
        .filter(|a| a["resolved_at"].is_null())
        .map(|a| a["cause"].as_str().unwrap())
        .collect();
    let n = open.len();
    open.sort();
    open.dedup();
    assert_eq!(open.len(), n, "one open alert per cause: {all:?}");
    drop(daemon);
}
