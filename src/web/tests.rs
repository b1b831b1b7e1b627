use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::config::Synchronous;
use crate::model::*;
use crate::store::{Store, StoreSettings};
use crate::system::health::Health;

pub(super) async fn setup(dir: &std::path::Path) -> (Store, AppState) {
    let mut health = Health::default();
    let hb = health.register("store");
    let settings = StoreSettings {
        path: dir.join("t.db"),
        commit_max_readings: 100,
        commit_max_delay: Duration::from_millis(1),
        synchronous: Synchronous::Normal,
        ..StoreSettings::at(dir.join("t.db"))
    };
    let store = Store::open(settings, tokio::runtime::Handle::current(), hb).unwrap();
    let resident = Resident {
        id: ResidentId(1),
        display_name: "<b>Ada</b> O'Neil".into(),
        room: "Room 1".into(),
        reference: "r1".into(),
    };
    let dev = Device {
        address: "C0:00:00:00:00:01".parse().unwrap(),
        kind: DeviceKind::PulseOximeter,
        model: None,
        name: None,
        subject: Subject::Resident(ResidentId(1)),
    };
    store
        .handle
        .provision(vec![resident], vec![dev])
        .await
        .unwrap();
    let state = AppState {
        reader: store.reader.clone(),
        stale_after: Duration::from_secs(3600),
        health: Arc::new(health),
        started_at: Timestamp::now(),
        version: "test",
        pairing: Default::default(),
        ble: None,
        registry: Default::default(),
        store: store.handle.clone(),
        uplink: Arc::new(crate::uplink::UplinkStatus::new(
            crate::uplink::ConnectionState::Disabled,
        )),
        gateway_name: "test-gw".into(),
        ingest: Default::default(),
        events: events::Events::new(tokio_util::sync::CancellationToken::new()),
        web_metrics: Default::default(),
    };
    (store, state)
}

pub(super) fn reading(q: Quantity, value: Value, unit: Unit, age: Duration) -> Reading {
    let t = Timestamp::now().saturating_sub(age);
    Reading {
        id: ReadingId::new(t),
        device: "C0:00:00:00:00:01".parse().unwrap(),
        subject: Subject::Resident(ResidentId(1)),
        quantity: q,
        value,
        unit,
        measured_at: None,
        received_at: t,
        clock_synced: true,
    }
}

pub(super) async fn get(state: &AppState, uri: &str) -> (StatusCode, String) {
    let res = app(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn overview_shows_value_unit_age_and_marks_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    store
        .handle
        .ingest(vec![
            reading(
                Quantity::Spo2,
                Value::Number(96.0),
                Unit::Percent,
                Duration::from_secs(20),
            ),
            reading(
                Quantity::BodyTemperature,
                Value::Number(37.84),
                Unit::Celsius,
                Duration::from_secs(75 * 60),
            ),
            reading(
                Quantity::PulseRate,
                Value::Special(SpecialValue::NotANumber),
                Unit::PerMinute,
                Duration::ZERO,
            ),
        ])
        .await
        .unwrap();
    let (status, html) = get(&state, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("&lt;b&gt;Ada&lt;/b&gt; O'Neil"),
        "name must be escaped"
    );
    assert!(html.contains("96%"), "{html}");
    assert!(html.contains("20 s ago"), "{html}");
    assert!(html.contains("37.8°C"), "{html}");
    assert!(
        html.contains("STALE") && html.contains("last reading 75 min ago"),
        "{html}"
    );
    assert!(html.contains("no value (sensor reported nan)"), "{html}");
    // SpO2 96 scores 0; the temperature is stale relative to it and the pulse is NaN:
    // both count as missing, never as zero.
    assert!(html.contains("NEWS2 0 (partial)"), "{html}");
    assert!(html.contains("Not measured: respiration rate, air or oxygen, systolic BP, pulse, consciousness, temperature."), "{html}");

    let (status, json) = get(&state, "/api/v1/residents").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let vitals = v["residents"][0]["vitals"].as_array().unwrap();
    let by = |q: &str| vitals.iter().find(|x| x["quantity"] == q).unwrap().clone();
    assert_eq!(by("spo2")["unit"], "%");
    assert_eq!(by("spo2")["freshness"], "current");
    assert_eq!(by("body_temperature")["freshness"], "stale");
    assert_eq!(by("pulse_rate")["value"], serde_json::Value::Null);
    assert_eq!(by("pulse_rate")["status"], "nan");
    let news2 = &v["residents"][0]["news2"];
    assert_eq!(news2["partial"], true);
    assert_eq!(news2["stale"], false);
    assert_eq!(
        news2["missing"],
        serde_json::json!([
            "resp_rate",
            "oxygen",
            "systolic",
            "pulse",
            "consciousness",
            "temperature"
        ])
    );
}

#[tokio::test]
async fn unknown_route_is_404_and_health_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    assert_eq!(get(&state, "/nope").await.0, StatusCode::NOT_FOUND);
    let (status, body) = get(&state, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[test]
fn ages_read_naturally() {
    for (s, text) in [
        (0, "just now"),
        (30, "30 s ago"),
        (60, "1 min ago"),
        (75 * 60, "75 min ago"),
        (3 * 3600, "3 h ago"),
        (3 * 86400, "3 days ago"),
    ] {
        assert_eq!(describe_age(Duration::from_secs(s)), text);
    }
}

#[tokio::test]
async fn pairing_page_opens_and_closes_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let (status, page) = get(&state, "/pairing").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Pairing is off"), "{page}");

    let post = |uri: &str, body: &str| {
        Request::post(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let res = app(state.clone())
        .oneshot(post("/pairing/window", "seconds=120"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, page) = get(&state, "/pairing").await;
    assert!(page.contains("Pairing is ON"), "{page}");
    let (_, api) = get(&state, "/api/v1/pairing").await;
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(v["window"]["open"], true);

    let res = app(state.clone())
        .oneshot(post("/pairing/window", "seconds=9999"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let res = app(state.clone())
        .oneshot(post("/pairing/close", ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, page) = get(&state, "/pairing").await;
    assert!(page.contains("Pairing is off"), "{page}");
    let (_, api) = get(&state, "/api/v1/bluetooth").await;
    assert!(api.contains("\"source\":\"simulator\""), "{api}");
}

#[tokio::test]
async fn uplink_state_error_and_certificate_warning_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let (_, html) = get(&state, "/").await;
    assert!(
        !html.contains("Cloud link"),
        "a disabled uplink is not shown"
    );
    state
        .uplink
        .set_state(crate::uplink::ConnectionState::Backoff);
    state.uplink.set_error(
        Timestamp::from_unix_ms(1_795_467_667_123),
        "the broker refused this gateway's certificate: it has expired".into(),
    );
    state.uplink.set_certificate(
        Some(Timestamp::from_unix_ms(1_795_467_667_123)),
        Some("the gateway certificate expires in 9 days".into()),
    );
    let (_, html) = get(&state, "/").await;
    assert!(html.contains("Cloud link: waiting to reconnect"), "{html}");
    assert!(html.contains("it has expired"), "{html}");
    assert!(html.contains("expires in 9 days"), "{html}");
    let (status, json) = get(&state, "/api/v1/uplink").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["state"], "waiting to reconnect");
    assert_eq!(v["last_error_at"], "2026-11-23T21:01:07.123Z");
    assert_eq!(
        v["certificate_warning"],
        "the gateway certificate expires in 9 days"
    );
}

pub(super) async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    json: &str,
) -> (StatusCode, String) {
    let res = app(state.clone())
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(json.to_owned()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn unassign_is_committed_then_applied_and_refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let ox: DeviceAddress = "C0:00:00:00:00:01".parse().unwrap();
    state.registry.assign(ox, Subject::Resident(ResidentId(1)));
    let path = "/api/v1/devices/C0:00:00:00:00:01/assignment";
    // Each step: (method, uri, body) -> (status, body).
    let steps: &[(&str, &str, &str, u16, &str)] = &[
        ("DELETE", "/api/v1/devices/nope/assignment", "", 400, ""),
        (
            "DELETE",
            "/api/v1/devices/C0:00:00:00:00:09/assignment",
            "",
            404,
            "C0:00:00:00:00:09 is not a registered device",
        ),
        ("DELETE", path, "", 204, ""),
        (
            "DELETE",
            path,
            "",
            409,
            "C0:00:00:00:00:01 is not assigned to anyone",
        ),
        (
            "PUT",
            path,
            r#"{"room": "  "}"#,
            422,
            "give exactly one of resident_id or a non-empty room",
        ),
        ("PUT", path, r#"{"resident_id": 7}"#, 404, "no resident 7"),
    ];
    for (method, uri, body, status, text) in steps {
        let (s, b) = send(&state, method, uri, body).await;
        assert_eq!(s.as_u16(), *status, "{method} {uri} {body}: {b}");
        if !text.is_empty() {
            assert_eq!(b, *text, "{method} {uri} {body}");
        }
        if *uri == path && *method == "DELETE" && *status == 204 {
            assert!(
                !state.registry.contains(ox),
                "still attributed after un-assign"
            );
        }
    }
    let (_, devices) = get(&state, "/api/v1/devices").await;
    let v: serde_json::Value = serde_json::from_str(&devices).unwrap();
    assert_eq!(v[0]["resident_id"], serde_json::Value::Null, "{v}");
    assert_eq!(v[0]["assigned_at"], serde_json::Value::Null, "{v}");

    let (s, _) = send(&state, "PUT", path, r#"{"resident_id": 1}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        state.registry.subject(ox),
        Some(Subject::Resident(ResidentId(1)))
    );
    let (_, devices) = get(&state, "/api/v1/devices").await;
    let v: serde_json::Value = serde_json::from_str(&devices).unwrap();
    assert_eq!(v[0]["resident_id"], 1, "{v}");
    assert!(v[0]["assigned_at"].is_string(), "{v}");
    let (_, page) = get(&state, "/pairing").await;
    assert!(
        page.contains("&lt;b&gt;Ada&lt;/b&gt; O'Neil (Room 1)"),
        "{page}"
    );
    assert!(page.contains("action=\"/pairing/unassign\""), "{page}");
    assert!(
        page.contains("unassigned: readings no longer attributed (by web)"),
        "{page}"
    );
}
