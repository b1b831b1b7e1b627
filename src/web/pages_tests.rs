//! Router tests of the staff pages, residents management, gateway status,
//! events, metrics and the OpenAPI document, on a real SQLite file.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::test_support::{self, ADMIN, get, ingest_one, reading, send, setup, sign_in, signed_in};
use super::*;
use crate::model::*;
use crate::store::ResidentChange;

/// The session cookie of a signed-in admin (who may do what nurses and carers do).
fn admin_cookie(state: &AppState) -> String {
    sign_in(state, ADMIN).cookie
}

/// A response's status, headers and body text, as a signed-in admin.
async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let res = test_support::call(state, signed_in(state, ADMIN, req).await).await;
    (res.status, res.headers, res.body)
}

/// A form post, signed in by `call`.
fn form(uri: &str, body: &str) -> Request<Body> {
    test_support::form(uri, None, body)
}

#[tokio::test]
async fn every_page_answers_in_the_shared_frame_and_unknown_ones_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    for uri in [
        "/",
        "/gateway",
        "/residents",
        "/residents/new",
        "/residents/1",
        "/residents/1/edit",
        "/residents/1/archive",
        "/pairing",
    ] {
        let (status, html) = get(&state, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {html}");
        assert!(
            html.contains("<p class=\"gw\">test-gw</p>"),
            "{uri}: gateway name"
        );
        assert!(html.contains(&assets::css_url()), "{uri}: stylesheet");
        assert!(
            html.contains("aria-current=\"page\""),
            "{uri}: current section"
        );
        assert!(html.contains("href=\"/gateway\""), "{uri}: navigation");
        // Everything is served by the gateway itself: no CDN, no other host.
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{uri}: an outside URL"
        );
        // Every text input has a label naming it.
        for id in html
            .split("<input type=\"text\" id=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
        {
            assert!(
                html.contains(&format!("<label for=\"{id}\"")),
                "{uri}: input {id} has no label"
            );
        }
    }
    for (uri, words) in [
        ("/nope", "There is no page at this address"),
        ("/residents/999", "There is no resident with this number"),
        ("/residents/abc", "There is no resident with this number"),
        (
            "/residents/999/edit",
            "There is no resident with this number",
        ),
    ] {
        let (status, html) = get(&state, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(
            html.contains(words) && html.contains("<!DOCTYPE html>"),
            "{uri}: {html}"
        );
    }
    let (status, text) = get(&state, "/api/v1/nope").await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::NOT_FOUND, "not found")
    );
}

#[tokio::test]
async fn assets_are_embedded_and_cached_for_a_year_only_under_their_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    for (url, plain, body, ctype) in [
        (
            assets::css_url(),
            "/assets/carehub.css",
            assets::CSS,
            "text/css; charset=utf-8",
        ),
        (
            assets::js_url(),
            "/assets/live.js",
            assets::JS,
            "text/javascript; charset=utf-8",
        ),
    ] {
        let (status, headers, text) =
            call(&state, Request::get(&url).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, body);
        assert_eq!(headers["content-type"], ctype);
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        for stale in [plain.to_owned(), format!("{plain}?v=0000000000000000")] {
            let (status, headers, _) =
                call(&state, Request::get(&stale).body(Body::empty()).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers["cache-control"], "no-cache", "{stale}");
        }
    }
}

#[tokio::test]
async fn resident_detail_draws_gaps_as_gaps_and_specials_as_marks() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let min = |m: u64| Duration::from_secs(m * 60);
    let pulse = |n: f64, age| reading(Quantity::PulseRate, Value::Number(n), Unit::PerMinute, age);
    store
        .handle
        .ingest(vec![
            // Two runs, three hours apart (the window is an hour): two lines, no bridge.
            pulse(70.0, min(180)),
            pulse(72.0, min(170)),
            pulse(75.0, min(160)),
            pulse(80.0, min(10)),
            pulse(82.0, min(5)),
            reading(
                Quantity::PulseRate,
                Value::Special(SpecialValue::NotANumber),
                Unit::PerMinute,
                min(60),
            ),
            // Outside the 24 h: not in the chart (the summary counts 5 readings, highest 82).
            pulse(200.0, min(25 * 60)),
        ])
        .await
        .unwrap();
    let (status, html) = get(&state, "/residents/1").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let chart = html
        .split("<figure class=\"chart\">")
        .find(|c| c.contains("Pulse (/min)"))
        .unwrap_or_else(|| panic!("no pulse chart: {html}"));
    assert_eq!(chart.matches("<polyline").count(), 2, "{chart}");
    assert!(
        chart.contains("sensor reported not a number</title>"),
        "{chart}"
    );
    assert!(chart.contains("▼ no value (1)"), "{chart}");
    assert!(
        chart.contains("5 readings; lowest 70 /min, highest 82 /min; newest 82 /min"),
        "{chart}"
    );
    assert!(
        html.contains("no value (sensor reported not a number) /min"),
        "{html}"
    );
    assert!(html.contains("Newest 100 readings"), "{html}");
    assert!(
        html.contains("C0:00:00:00:00:01"),
        "the resident's device: {html}"
    );
    assert!(
        html.contains("&lt;b&gt;Ada&lt;/b&gt; O'Neil"),
        "the name is escaped"
    );

    let (status, json) = get(&state, "/api/v1/residents/1").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let readings = v["readings"].as_array().unwrap();
    // Six: the reading older than 24 h is not in the table either.
    assert_eq!(readings.len(), 6);
    assert_eq!(readings[0]["value"], 82.0, "newest first");
    let nan = readings.iter().find(|r| r["status"] == "nan").unwrap();
    assert_eq!(nan["value"], serde_json::Value::Null);
    assert_eq!(v["devices"][0]["address"], "C0:00:00:00:00:01");
}

#[tokio::test]
async fn the_sickest_resident_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let zed = store
        .handle
        .change_resident(ResidentChange::Add {
            display_name: "Zed".into(),
            room: "Room 9".into(),
            reference: "R-0009".into(),
        })
        .await
        .unwrap();
    let of = |id: ResidentId, q, n, unit| Reading {
        subject: Subject::Resident(id),
        ..reading(q, Value::Number(n), unit, Duration::from_secs(30))
    };
    store
        .handle
        .ingest(vec![
            of(ResidentId(1), Quantity::Spo2, 97.0, Unit::Percent),
            of(zed, Quantity::Spo2, 85.0, Unit::Percent),
            of(zed, Quantity::PulseRate, 135.0, Unit::PerMinute),
            of(
                zed,
                Quantity::SystolicPressure,
                85.0,
                Unit::MillimetreOfMercury,
            ),
        ])
        .await
        .unwrap();
    let (_, html) = get(&state, "/").await;
    let zed_at = html.find(">Zed<").unwrap();
    let ada_at = html.find("O'Neil<").unwrap();
    assert!(zed_at < ada_at, "the high score must come first");
    assert!(
        html.contains("HIGH: emergency response"),
        "band in words: {html}"
    );
    assert!(
        html.contains("data-live=\"readings devices uplink alerts\""),
        "{html}"
    );
}

#[tokio::test]
async fn residents_are_added_edited_and_archived_by_form() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    // (body, status, words on the page)
    let steps: &[(&str, &str, u16, &str)] = &[
        (
            "/residents",
            "display_name=Bea&room=Room+2&reference=R-0002",
            303,
            "",
        ),
        (
            "/residents",
            "display_name=Bea+Two&room=Room+3&reference=Bea+Smith",
            422,
            "must never contain a name",
        ),
        (
            "/residents",
            "display_name=&room=Room+3&reference=R-0003",
            422,
            "Enter the name.",
        ),
        (
            "/residents",
            "display_name=Cy&room=Room+3&reference=R-0002",
            422,
            "Another resident already has the reference R-0002",
        ),
        (
            "/residents/2/edit",
            "display_name=Bea+B&room=Room+4&reference=R-0002",
            303,
            "",
        ),
        (
            "/residents/1/archive",
            "",
            409,
            "still has 1 device(s) assigned",
        ),
        ("/residents/2/archive", "", 303, ""),
        (
            "/residents/2/edit",
            "display_name=X&room=Y&reference=R-0004",
            404,
            "There is no resident",
        ),
    ];
    for (uri, body, status, words) in steps {
        let (s, headers, html) = call(&state, form(uri, body)).await;
        assert_eq!(s.as_u16(), *status, "{uri} {body}: {html}");
        assert!(html.contains(words), "{uri} {body}: {html}");
        if *status == 422 {
            assert!(html.contains("aria-invalid=\"true\""), "{html}");
            assert!(html.contains("role=\"alert\""), "{html}");
        }
        if *status == 303 {
            assert!(
                headers["location"]
                    .to_str()
                    .unwrap()
                    .starts_with("/residents?"),
                "{headers:?}"
            );
        }
    }
    let (_, list) = get(&state, "/residents").await;
    assert!(
        list.contains("Bea B") && list.contains("archived"),
        "{list}"
    );
    let (_, saved) = get(&state, "/residents?saved=1").await;
    assert!(saved.contains("Saved &lt;b&gt;Ada"), "{saved}");
    assert_eq!(get(&state, "/residents/2").await.0, StatusCode::NOT_FOUND);
    let (_, overview) = get(&state, "/").await;
    assert!(
        !overview.contains("Bea"),
        "an archived resident is not shown"
    );
}

#[tokio::test]
async fn residents_api_checks_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let bea = r#"{"display_name":"Bea","room":"Room 2","reference":"R-0002"}"#;
    // (method, uri, body, status, text in the body)
    let steps: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/api/v1/residents", bea, 201, r#""id":2"#),
        ("POST", "/api/v1/residents", bea, 409, "already used"),
        (
            "POST",
            "/api/v1/residents",
            r#"{"display_name":"","room":"R","reference":"x"}"#,
            422,
            r#""field":"reference""#,
        ),
        (
            "POST",
            "/api/v1/residents",
            r#"{"display_name":"A"}"#,
            422,
            "missing field",
        ),
        (
            "POST",
            "/api/v1/residents",
            "not json",
            400,
            "the body is not a resident",
        ),
        (
            "PUT",
            "/api/v1/residents/2",
            r#"{"display_name":"Bea B","room":"Room 4","reference":"R-0002"}"#,
            200,
            r#""room":"Room 4""#,
        ),
        (
            "PUT",
            "/api/v1/residents/1",
            r#"{"display_name":"Ada","room":"Room 1","reference":"R-0002"}"#,
            409,
            "already used",
        ),
        // Ada's reference from before the rule may be kept.
        (
            "PUT",
            "/api/v1/residents/1",
            r#"{"display_name":"Ada","room":"Room 1","reference":"r1"}"#,
            200,
            r#""reference":"r1""#,
        ),
        (
            "PUT",
            "/api/v1/residents/7",
            r#"{"display_name":"A","room":"B","reference":"R-0007"}"#,
            404,
            "no resident 7",
        ),
        (
            "DELETE",
            "/api/v1/residents/1",
            "",
            409,
            "device(s) assigned",
        ),
        ("DELETE", "/api/v1/residents/2", "", 204, ""),
        ("DELETE", "/api/v1/residents/2", "", 404, "no resident 2"),
        ("GET", "/api/v1/residents/2", "", 404, "no resident 2"),
    ];
    for (method, uri, body, status, text) in steps {
        let (s, b) = send(&state, method, uri, body).await;
        assert_eq!(s.as_u16(), *status, "{method} {uri} {body}: {b}");
        assert!(b.contains(text), "{method} {uri} {body}: {b}");
    }
}

#[tokio::test]
async fn gateway_page_and_api_show_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    ingest_one(
        &store,
        reading(
            Quantity::Spo2,
            Value::Number(95.0),
            Unit::Percent,
            Duration::ZERO,
        ),
    )
    .await;
    state
        .uplink
        .set_state(crate::uplink::ConnectionState::Backoff);
    state.uplink.set_error(
        Timestamp::now(),
        "the broker refused the certificate".into(),
    );
    let expires = Timestamp::now().saturating_add(Duration::from_secs(10 * 86_400 + 3600));
    state.uplink.set_certificate(Some(expires), None);
    let (status, json) = get(&state, "/api/v1/gateway").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["uplink"]["state"], "waiting to reconnect");
    assert_eq!(v["outbox"]["readings"], 1);
    assert!(v["outbox"]["oldest_unsent_age_s"].is_u64(), "{v}");
    assert_eq!(v["evictions"].as_array().unwrap().len(), 8);
    assert_eq!(v["certificate"]["days_left"], 10);
    assert_eq!(v["certificate"]["warning"], true);
    assert_eq!(v["bluetooth"]["source"], "simulator");
    assert!(v["storage"]["database_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["storage"]["last_commit_at"].is_string(), "{v}");
    let (_, html) = get(&state, "/gateway").await;
    for words in [
        "NOT CONNECTED",
        "the broker refused the certificate",
        "10 days left",
        "RENEW SOON",
        "expires in 10 days",
        "simulated sensors",
        "Database size",
    ] {
        assert!(html.contains(words), "{words}: {html}");
    }
}

#[tokio::test]
async fn held_readings_and_refusals_are_shown_counted_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let up = &state.uplink;
    up.set_state(crate::uplink::ConnectionState::Connected);
    up.set_protocol("5");
    up.messages_refused
        .store(7, std::sync::atomic::Ordering::Relaxed);
    up.held_readings
        .store(700, std::sync::atomic::Ordering::Relaxed);
    up.set_refusal(
        Timestamp::now(),
        "carehub/v1/s/g/readings: not authorized (0x87)".into(),
    );
    let (_, json) = get(&state, "/api/v1/gateway").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["uplink"]["protocol"], "5");
    assert_eq!(v["uplink"]["refusals_visible"], true);
    assert_eq!(v["uplink"]["held_readings"], 700);
    assert_eq!(v["uplink"]["messages_refused"], 7);
    let (_, html) = get(&state, "/gateway").await;
    for words in [
        "MQTT 5",
        "7 messages since start",
        "not authorized (0x87)",
        "HELD",
        "700 readings refused again and again",
        "action=\"/gateway/uplink/retry\"",
    ] {
        assert!(html.contains(words), "{words}: {html}");
    }
    let (_, _, metrics) = call(
        &state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(
        metrics.contains("carehub_uplink_messages_refused_total 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("carehub_uplink_held_readings 700"),
        "{metrics}"
    );

    // A nurse asks for a retry: the uplink is told.
    let told = up.retry.notified();
    let (status, _) = send(&state, "POST", "/gateway/uplink/retry", "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    tokio::time::timeout(Duration::from_secs(5), told)
        .await
        .expect("the uplink is asked to retry");

    // Under MQTT 3.1.1 the page says plainly that refusals cannot be seen.
    up.set_protocol("3.1.1");
    let (_, html) = get(&state, "/gateway").await;
    assert!(html.contains("REFUSALS NOT VISIBLE"), "{html}");
    assert!(html.contains("lost without trace"), "{html}");
    assert!(!html.contains("Refused by the broker"), "{html}");
    // Readings held after connections died with them are shown all the same.
    assert!(html.contains("HELD"), "{html}");
}

#[tokio::test]
async fn metrics_follow_the_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    ingest_one(
        &store,
        reading(
            Quantity::Spo2,
            Value::Number(95.0),
            Unit::Percent,
            Duration::ZERO,
        ),
    )
    .await;
    assert_eq!(get(&state, "/").await.0, StatusCode::OK);
    assert_eq!(get(&state, "/nope").await.0, StatusCode::NOT_FOUND);
    let (status, headers, text) = call(
        &state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], metrics::CONTENT_TYPE);
    let samples = metrics::parse::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no {name} {labels:?}\n{text}"))
    };
    assert_eq!(value("carehub_readings_committed_total", &[]), 1.0);
    assert_eq!(value("carehub_outbox_readings", &[]), 1.0);
    assert_eq!(
        value(
            "carehub_evicted_readings_total",
            &[("reason", "disk"), ("class", "vital")]
        ),
        0.0
    );
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.0 == "carehub_evicted_readings_total")
            .count(),
        8
    );
    assert_eq!(value("carehub_uplink_state", &[("state", "disabled")]), 1.0);
    let states: f64 = samples
        .iter()
        .filter(|s| s.0 == "carehub_uplink_state")
        .map(|s| s.2)
        .sum();
    assert_eq!(states, 1.0, "one state at a time");
    assert_eq!(value("carehub_web_requests_total", &[("code", "2xx")]), 1.0);
    assert_eq!(value("carehub_web_requests_total", &[("code", "4xx")]), 1.0);
    assert_eq!(value("carehub_decode_errors_total", &[]), 0.0);
    assert_eq!(value("carehub_frames_refused_total", &[]), 0.0);
    assert_eq!(value("carehub_build_info", &[("gateway", "test-gw")]), 1.0);
    // The memory a field engineer watches: this process's, so only their presence
    // and a plausible size (the test binary holds more than a megabyte).
    assert!(value("process_resident_memory_bytes", &[]) > 1_048_576.0);
    assert!(value("carehub_sqlite_heap_bytes", &[]) > 0.0);
}

/// The next SSE frame's text, or `None` when the stream has ended.
async fn next_event(body: &mut Body) -> Option<String> {
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("an event within 10 s")?;
    let data = frame.unwrap().into_data().unwrap();
    Some(String::from_utf8(data.to_vec()).unwrap())
}

#[tokio::test]
async fn events_tell_pages_what_changed_and_end_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut state) = setup(dir.path()).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    state.events = events::Events::new(cancel.clone());
    let watcher = tokio::spawn(
        state
            .events
            .clone()
            .watch(store.handle.stats().clone(), state.uplink.clone()),
    );
    let res = app(state.clone())
        .oneshot(
            Request::get("/events")
                .header("cookie", admin_cookie(&state))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    ingest_one(
        &store,
        reading(
            Quantity::Spo2,
            Value::Number(95.0),
            Unit::Percent,
            Duration::ZERO,
        ),
    )
    .await;
    assert_eq!(
        next_event(&mut body).await.as_deref(),
        Some("event: readings\ndata: readings\n\n")
    );
    state
        .uplink
        .set_state(crate::uplink::ConnectionState::Connected);
    assert_eq!(
        next_event(&mut body).await.as_deref(),
        Some("event: uplink\ndata: uplink\n\n")
    );
    assert_eq!(state.events.clients(), 1);
    cancel.cancel();
    assert_eq!(
        next_event(&mut body).await,
        None,
        "the stream ends at shutdown"
    );
    watcher.await.unwrap();
    drop(body);
    assert_eq!(state.events.clients(), 0);
}

#[tokio::test]
async fn a_slow_event_client_is_told_to_resync_and_the_count_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let cookie = admin_cookie(&state);
    let open_as = |cookie: String| {
        app(state.clone()).oneshot(
            Request::get("/events")
                .header("cookie", cookie)
                .body(Body::empty())
                .unwrap(),
        )
    };
    let open = || open_as(cookie.clone());
    let mut slow = open().await.unwrap().into_body();
    // More changes than the channel holds, none read: the client has lagged.
    for _ in 0..100 {
        state.events.publish(events::Change::Readings);
    }
    assert_eq!(
        next_event(&mut slow).await.as_deref(),
        Some("event: resync\ndata: resync\n\n")
    );
    // One account holds at most MAX_PER_USER streams (issue 17, finding 11).
    let mut held = Vec::new();
    for _ in 1..events::MAX_PER_USER {
        let res = open().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        held.push(res);
    }
    assert_eq!(
        open().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a ninth stream for one account"
    );
    // Other accounts fill the rest, up to the cap in all.
    let mut user = 0;
    while held.len() + 1 < events::MAX_CLIENTS {
        let login = super::auth::testing::sign_in(
            &state,
            &format!("carer{}", user / events::MAX_PER_USER),
            crate::store::accounts::Role::Carer,
        );
        let res = open_as(login.cookie).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        held.push(res);
        user += 1;
    }
    let other = sign_in(&state, ("late", crate::store::accounts::Role::Carer));
    let refused = open_as(other.cookie.clone()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
    assert_eq!(
        open_as(other.cookie).await.unwrap().status(),
        StatusCode::OK
    );
}

/// Regression (issue 17, finding 11): a stream kept running after sign-out.
#[tokio::test]
async fn signing_out_ends_the_sessions_event_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let login = sign_in(&state, ("kay", crate::store::accounts::Role::Nurse));
    let mut stream = app(state.clone())
        .oneshot(
            Request::get("/events")
                .header("cookie", &login.cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
        .into_body();
    state.events.publish(events::Change::Readings);
    assert!(next_event(&mut stream).await.is_some());
    let out = app(state.clone())
        .oneshot(
            Request::post("/logout")
                .header("cookie", &login.cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={}", login.csrf)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        next_event(&mut stream).await,
        None,
        "the stream outlived its session"
    );
}

/// Every `/api/v1` route and method the router serves, from `auth::policy::POLICY`:
/// the one table of routes, which the router's `authorize` layer consults on every
/// request (a routed path with no line is refused to everyone, and
/// `web::auth::tests::every_routed_path_and_method_has_a_policy_line_and_every_line_is_routed`
/// holds the table and the router equal).
fn routed_api_operations() -> std::collections::BTreeSet<(String, String)> {
    auth::policy::POLICY
        .iter()
        .filter(|r| r.route.starts_with("/api/v1"))
        .map(|r| (r.route.to_owned(), r.method.to_lowercase()))
        .collect()
}

fn document() -> serde_json::Value {
    serde_json::from_str(openapi::DOCUMENT).expect("openapi.json is JSON")
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[tokio::test]
async fn every_api_route_is_documented_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // The document's operations and the routes the router serves are the same set.
    let documented: std::collections::BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (path.clone(), (*m).to_owned()))
        })
        .collect();
    let routed = routed_api_operations();
    assert!(routed.len() >= 20, "too few routes found: {routed:?}");
    assert_eq!(
        routed, documented,
        "routes (left) and the document (right) differ"
    );
    // And through the real Router: a documented operation reaches its route (not
    // the fallback's "not found", not 405); an undocumented method on a documented
    // path is 405.
    for (path, item) in paths {
        let uri = path
            .replace("{id}", "1")
            .replace("{address}", "C0:00:00:00:00:01");
        for method in METHODS {
            let (status, body) = send(&state, &method.to_uppercase(), &uri, "").await;
            let is_documented = item.get(method).is_some();
            assert_eq!(
                status == StatusCode::METHOD_NOT_ALLOWED,
                !is_documented,
                "{method} {path}: {status}, documented: {is_documented}"
            );
            if is_documented {
                assert!(
                    !(status == StatusCode::NOT_FOUND && body == "not found"),
                    "{method} {path}: the router has no such route"
                );
            }
        }
    }
    let (status, served) = get(&state, "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, openapi::DOCUMENT);
}

/// Validates `body` against the schema the document gives for this response.
fn check_response(
    doc: &serde_json::Value,
    path: &str,
    method: &str,
    status: StatusCode,
    body: &str,
) {
    let response = &doc["paths"][path][method]["responses"][status.as_str()];
    assert!(
        response.is_object(),
        "{method} {path} {status} is not documented"
    );
    let Some(content) = response.get("content").and_then(|c| c.as_object()) else {
        assert!(
            body.is_empty(),
            "{method} {path} {status}: a body where none is documented: {body}"
        );
        return;
    };
    let Some(json) = content.get("application/json") else {
        assert!(
            content.keys().any(|k| k.starts_with("text/plain")),
            "{method} {path} {status}"
        );
        return;
    };
    let mut schema = json["schema"].clone();
    let obj = schema.as_object_mut().unwrap();
    obj.insert("components".into(), doc["components"].clone());
    obj.insert(
        "$schema".into(),
        "https://json-schema.org/draft/2020-12/schema".into(),
    );
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{method} {path}: bad schema: {e}"));
    let instance: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {body}"));
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:#?}\n{body}"
    );
}

#[tokio::test]
async fn real_api_responses_validate_against_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    store
        .handle
        .ingest(vec![
            reading(
                Quantity::Spo2,
                Value::Number(95.0),
                Unit::Percent,
                Duration::from_secs(10),
            ),
            reading(
                Quantity::PulseRate,
                Value::Special(SpecialValue::NotANumber),
                Unit::PerMinute,
                Duration::ZERO,
            ),
            reading(
                Quantity::BodyTemperature,
                Value::Number(37.2),
                Unit::Celsius,
                Duration::from_secs(7200),
            ),
        ])
        .await
        .unwrap();
    state
        .uplink
        .set_state(crate::uplink::ConnectionState::Backoff);
    state.uplink.set_error(Timestamp::now(), "refused".into());
    state.uplink.set_certificate(
        Some(Timestamp::now().saturating_add(Duration::from_secs(86_400))),
        Some("soon".into()),
    );
    let doc = document();
    let bea = r#"{"display_name":"Bea","room":"Room 2","reference":"R-0002"}"#;
    // (method, documented path, uri, body)
    let calls: &[(&str, &str, &str, &str)] = &[
        ("get", "/api/v1/residents", "/api/v1/residents", ""),
        ("post", "/api/v1/residents", "/api/v1/residents", bea),
        ("post", "/api/v1/residents", "/api/v1/residents", bea),
        (
            "post",
            "/api/v1/residents",
            "/api/v1/residents",
            r#"{"display_name":"","room":"","reference":""}"#,
        ),
        ("post", "/api/v1/residents", "/api/v1/residents", "{"),
        ("get", "/api/v1/residents/{id}", "/api/v1/residents/1", ""),
        ("get", "/api/v1/residents/{id}", "/api/v1/residents/9", ""),
        (
            "put",
            "/api/v1/residents/{id}",
            "/api/v1/residents/2",
            r#"{"display_name":"B","room":"R","reference":"R-0003"}"#,
        ),
        ("put", "/api/v1/residents/{id}", "/api/v1/residents/9", bea),
        (
            "delete",
            "/api/v1/residents/{id}",
            "/api/v1/residents/1",
            "",
        ),
        (
            "delete",
            "/api/v1/residents/{id}",
            "/api/v1/residents/2",
            "",
        ),
        ("get", "/api/v1/gateway", "/api/v1/gateway", ""),
        ("get", "/api/v1/uplink", "/api/v1/uplink", ""),
        ("get", "/api/v1/devices", "/api/v1/devices", ""),
        (
            "put",
            "/api/v1/devices/{address}/assignment",
            "/api/v1/devices/C0:00:00:00:00:01/assignment",
            r#"{"resident_id":1}"#,
        ),
        (
            "put",
            "/api/v1/devices/{address}/assignment",
            "/api/v1/devices/C0:00:00:00:00:01/assignment",
            r#"{"room":"Lounge"}"#,
        ),
        (
            "delete",
            "/api/v1/devices/{address}/assignment",
            "/api/v1/devices/C0:00:00:00:00:01/assignment",
            "",
        ),
        ("get", "/api/v1/pairing", "/api/v1/pairing", ""),
        (
            "post",
            "/api/v1/pairing/window",
            "/api/v1/pairing/window",
            r#"{"seconds":60}"#,
        ),
        (
            "delete",
            "/api/v1/pairing/window",
            "/api/v1/pairing/window",
            "",
        ),
        ("get", "/api/v1/bluetooth", "/api/v1/bluetooth", ""),
        (
            "delete",
            "/api/v1/pairing/devices/{address}",
            "/api/v1/pairing/devices/C0:00:00:00:00:01",
            "",
        ),
        ("get", "/api/v1/openapi.json", "/api/v1/openapi.json", ""),
    ];
    for (method, path, uri, body) in calls {
        let (status, text) = send(&state, &method.to_uppercase(), uri, body).await;
        check_response(&doc, path, method, status, &text);
    }
}

/// The overview's rows are kept between changes (`overview_data`): every kind of
/// change the page shows — a reading, a resident's details, an SpO₂ scale, an
/// alert raised and acknowledged — must show on the next request.
#[tokio::test]
async fn the_overview_cache_never_outlives_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let spo2 = |v: f64, age_s: u64| {
        reading(
            Quantity::Spo2,
            Value::Number(v),
            Unit::Percent,
            Duration::from_secs(age_s),
        )
    };
    store.handle.ingest(vec![spo2(96.0, 30)]).await.unwrap();
    let (_, page) = get(&state, "/").await;
    assert!(page.contains("96%"), "{page}");
    let reads = state.overview.reads();
    // Nothing changed: no read.
    let (_, again) = get(&state, "/").await;
    assert!(again.contains("96%"));
    assert_eq!(
        state.overview.reads(),
        reads,
        "read again with nothing changed"
    );

    // A new reading.
    store.handle.ingest(vec![spo2(89.0, 5)]).await.unwrap();
    let (_, page) = get(&state, "/").await;
    assert!(page.contains("89%") && !page.contains("96%"), "{page}");

    // The resident's details.
    store
        .handle
        .change_resident(ResidentChange::Edit(Resident {
            id: ResidentId(1),
            display_name: "Ada Byron".into(),
            room: "Room 9".into(),
            reference: "r1".into(),
        }))
        .await
        .unwrap();
    let (_, page) = get(&state, "/").await;
    assert!(
        page.contains("Ada Byron") && page.contains("Room 9"),
        "{page}"
    );

    // The SpO₂ scale (the alert book).
    state
        .alerts
        .lock()
        .unwrap()
        .set_spo2_scale(
            1,
            crate::clinical::news2::Spo2Scale::Two,
            "nurse",
            Timestamp::now(),
        )
        .unwrap();
    let (_, page) = get(&state, "/").await;
    assert!(page.contains("SpO2 scale 2"), "{page}");

    // An alert raised, then acknowledged.
    let cause = gateway_cause(
        "gateway/disk",
        "only 10 MB of disk free",
        crate::clinical::alert_rules::Severity::Warning,
    );
    let id = {
        let mut book = state.alerts.lock().unwrap();
        let eval = crate::clinical::alert_rules::Evaluation {
            causes: vec![cause],
            undetermined: Vec::new(),
        };
        book.sync(&eval, &Default::default(), Timestamp::now())
            .unwrap();
        book.list(0).unwrap()[0].id
    };
    let (_, page) = get(&state, "/").await;
    assert!(
        page.contains("only 10 MB of disk free") && page.contains("Acknowledge"),
        "{page}"
    );
    state
        .alerts
        .lock()
        .unwrap()
        .acknowledge(id, "test-nurse", Timestamp::now())
        .unwrap();
    let (_, page) = get(&state, "/").await;
    assert!(page.contains("acknowledged by test-nurse"), "{page}");
    assert!(state.overview.reads() > reads);
}

/// The words a person reads on a page: the text outside tags, scripts and styles.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        text.push(' ');
        let tag = &rest[open..];
        let skip_to = if tag.starts_with("<script") {
            tag.find("</script>").map(|i| i + "</script>".len())
        } else if tag.starts_with("<style") {
            tag.find("</style>").map(|i| i + "</style>".len())
        } else {
            tag.find('>').map(|i| i + 1)
        };
        match skip_to {
            Some(n) => rest = &tag[n..],
            None => {
                rest = "";
                break;
            }
        }
    }
    text.push_str(rest);
    text
}

/// `2026-12-01T20:17` anywhere in `text` (the shape of RFC 3339 / ISO 8601).
fn iso_timestamp(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd";
    (0..b.len().saturating_sub(shape.len() - 1)).find_map(|i| {
        let fits = shape.iter().zip(&b[i..]).all(|(s, c)| match s {
            b'd' => c.is_ascii_digit(),
            s => s == c,
        });
        fits.then(|| &text[i..i + shape.len()])
    })
}

/// A word like `heart_rate_monitor` or `spo2_scale`: a wire name, not staff's words.
fn snake_case_word(text: &str) -> Option<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| {
            let parts: Vec<&str> = w.split('_').collect();
            parts.len() > 1 && parts.iter().all(|p| !p.is_empty())
        })
}

/// Issue 15: the pairing and devices page, the gateway page, the audit log, the
/// resident's page (its chart), the overview, the alerts and the clinical page
/// read in the site's local time ("N min ago", "2026-12-01 20:17"), never an
/// ISO timestamp, never "UTC", never a machine word.
#[tokio::test]
async fn staff_pages_read_in_local_time_and_words() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let now = Timestamp::now();
    // The device was heard 90 s ago, and something was stored (last commit).
    store
        .handle
        .event_sink()
        .seen(vec![crate::store::Seen {
            device: "C0:00:00:00:00:01".parse().unwrap(),
            rssi: Some(-60),
            at: now.saturating_sub(Duration::from_secs(90)),
            replay: None,
        }])
        .unwrap();
    ingest_one(
        &store,
        reading(
            Quantity::PulseRate,
            Value::Number(72.0),
            Unit::PerMinute,
            Duration::from_secs(60),
        ),
    )
    .await;
    // A recorded event stored under a machine name, a problem and a certificate.
    state
        .alerts
        .lock()
        .unwrap()
        .set_spo2_scale(1, crate::clinical::news2::Spo2Scale::Two, "nurse", now)
        .unwrap();
    state
        .uplink
        .set_error(now, "the broker refused the certificate".into());
    state.uplink.set_certificate(
        Some(now.saturating_add(Duration::from_secs(40 * 86_400))),
        None,
    );
    // Pairing open (its closing time is shown), recorded in the pairing record.
    let (status, _, body) = call(&state, form("/pairing/window", "seconds=120")).await;
    assert!(status.is_redirection(), "{status}: {body}");

    for (uri, expected) in [
        (
            "/pairing",
            &[
                "Pairing is ON",
                "pulse oximeter",
                "1 min ago",
                "SpO₂ scale changed",
            ][..],
        ),
        (
            "/gateway",
            &[
                "the broker refused the certificate",
                "days left",
                "Last stored",
                " min ago",
            ][..],
        ),
        ("/audit", &["entries, newest first", "When"][..]),
        // The resident's page with a chart: its time axis is labelled in the
        // site's zone.
        ("/residents/1", &["Ada", "GMT"][..]),
        ("/", &["Ada"][..]),
        ("/alerts", &["Alerts"][..]),
        ("/residents/1/clinical", &["Ada"][..]),
    ] {
        let (status, _, html) = call(&state, Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {html}");
        let text = visible_text(&html);
        for words in expected {
            assert!(text.contains(words), "{uri}: no {words:?} in {text}");
        }
        assert_eq!(iso_timestamp(&text), None, "{uri}: {text}");
        assert!(!text.contains("UTC"), "{uri}: says UTC: {text}");
        assert_eq!(snake_case_word(&text), None, "{uri}: {text}");
        // The machine-readable time stays in the markup, for scripts.
        assert!(html.contains("datetime=\""), "{uri}: no datetime attribute");
    }
    // The audit log has rows to show (the requests above).
    let (_, _, audit) = call(&state, Request::get("/audit").body(Body::empty()).unwrap()).await;
    assert!(audit.contains("<td><time datetime="), "{audit}");
}

/// A bad night's open alerts do not push every resident off the overview: the
/// most urgent five are listed (emergencies first), the heading counts all of
/// them, and a link leads to the alerts page, which lists every one.
#[tokio::test]
async fn the_overview_lists_the_most_urgent_open_alerts_and_links_to_all() {
    use crate::clinical::alert_rules::{Cause, Evaluation, Severity};
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let cause = |i: usize, severity: Severity| {
        gateway_cause(
            &format!("gateway/test-{i}"),
            &format!("test cause number {i}."),
            severity,
        )
    };
    // Ten warnings, then two emergencies raised after them, then three more
    // warnings: fifteen open.
    let causes: Vec<Cause> = (0..10)
        .map(|i| cause(i, Severity::Warning))
        .chain((10..12).map(|i| cause(i, Severity::Emergency)))
        .chain((12..15).map(|i| cause(i, Severity::Warning)))
        .collect();
    {
        let mut book = state.alerts.lock().unwrap();
        for n in 1..=causes.len() {
            let eval = Evaluation {
                causes: causes[..n].to_vec(),
                undetermined: Vec::new(),
            };
            book.sync(&eval, &Default::default(), Timestamp::now())
                .unwrap();
        }
    }

    let (status, page) = get(&state, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Alerts (15)"), "{page}");
    assert_eq!(page.matches("data-alert=").count(), 5, "{page}");
    assert!(
        page.contains("See all 15 open alerts") && page.contains("href=\"/alerts\""),
        "{page}"
    );
    // The emergencies first, though raised later than most, then the newest
    // warnings; the oldest warnings are left to the alerts page.
    let at = |i: usize| page.find(&format!("test cause number {i}.")).map(|_| ());
    assert!(at(10).is_some() && at(11).is_some(), "{page}");
    assert!(
        page.find("test cause number 11.") < page.find("test cause number 14."),
        "{page}"
    );
    assert!(
        at(14).is_some() && at(13).is_some() && at(12).is_some(),
        "{page}"
    );
    assert!(at(9).is_none() && at(0).is_none(), "{page}");

    // An acknowledged emergency goes below the one nobody has seen yet.
    let newest = state.alerts.lock().unwrap().list(0).unwrap()[0].clone();
    assert!(newest.message.contains("number 11."), "{newest:?}");
    state
        .alerts
        .lock()
        .unwrap()
        .acknowledge(newest.id, "test-nurse", Timestamp::now())
        .unwrap();
    let (_, page) = get(&state, "/").await;
    assert!(
        page.find("test cause number 10.") < page.find("test cause number 11."),
        "{page}"
    );
    assert!(
        page.find("test cause number 11.") < page.find("test cause number 14."),
        "{page}"
    );

    let (status, all) = get(&state, "/alerts").await;
    assert_eq!(status, StatusCode::OK);
    assert!(all.contains("Alerts (15)"), "{all}");
    assert_eq!(all.matches("data-alert=").count(), 15, "{all}");
    assert!(!all.contains("See all"), "{all}");
    for i in 0..15 {
        assert!(
            all.contains(&format!("test cause number {i}.")),
            "{i}: {all}"
        );
    }
}

/// With no more open alerts than the overview lists, there is no link.
#[tokio::test]
async fn the_overview_lists_every_open_alert_when_there_are_few() {
    use crate::clinical::alert_rules::{Cause, Evaluation, Severity};
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let causes: Vec<Cause> = (0..super::pages::OVERVIEW_ALERTS)
        .map(|i| {
            gateway_cause(
                &format!("gateway/test-{i}"),
                &format!("test cause number {i}."),
                Severity::Warning,
            )
        })
        .collect();
    state
        .alerts
        .lock()
        .unwrap()
        .sync(
            &Evaluation {
                causes,
                undetermined: Vec::new(),
            },
            &Default::default(),
            Timestamp::now(),
        )
        .unwrap();
    let (_, page) = get(&state, "/").await;
    assert!(page.contains("Alerts (5)"), "{page}");
    assert_eq!(page.matches("data-alert=").count(), 5, "{page}");
    assert!(!page.contains("See all"), "{page}");
}

/// A gateway alert's cause (no resident), as the alert rules give one.
fn gateway_cause(
    key: &str,
    message: &str,
    severity: crate::clinical::alert_rules::Severity,
) -> crate::clinical::alert_rules::Cause {
    crate::clinical::alert_rules::Cause {
        key: key.into(),
        resident_id: None,
        rule: "disk-low",
        severity,
        message: message.into(),
        score: None,
        level: severity.as_str(),
        partial: false,
        missing: Vec::new(),
        parameter: None,
        reading_ids: Vec::new(),
    }
}
