use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::test_support::{
    CARER, NURSE, alert_stage, call, form, get, ingest_one, post_form, post_form_as, reading, send,
    send_as, setup, sign_in,
};
use super::*;
use crate::model::*;

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
    assert!(
        html.contains("no value (sensor reported not a number)"),
        "{html}"
    );
    // SpO2 96 scores 0; the temperature is stale relative to it and the pulse is NaN:
    // both count as missing, never as zero.
    assert!(html.contains("NEWS2 0 (partial)"), "{html}");
    // What only staff enter is said once for the page; the tile names the rest.
    assert!(
        html.contains("No current systolic BP, pulse, temperature from the sensors."),
        "{html}"
    );
    assert_eq!(html.matches("only staff can enter").count(), 1, "{html}");

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

#[test]
fn pairing_countdown_reads_in_minutes_and_seconds() {
    for (s, text) in [
        (0, "0 s"),
        (45, "45 s"),
        (59, "59 s"),
        (60, "1 min 0 s"),
        (119, "1 min 59 s"),
        (600, "10 min 0 s"),
    ] {
        assert_eq!(super::pairing::countdown(s), text);
    }
}

#[tokio::test]
async fn pairing_page_opens_and_closes_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let (status, page) = get(&state, "/pairing").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Pairing is off"), "{page}");

    let login = sign_in(&state, NURSE);
    let post = |uri: &str, body: &str| {
        form(
            uri,
            Some(&login.cookie),
            &format!("csrf={}&{body}", login.csrf),
        )
    };
    let res = call(&state, post("/pairing/window", "seconds=120")).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let (_, page) = get(&state, "/pairing").await;
    assert!(page.contains("Pairing is ON"), "{page}");
    assert!(
        page.contains("data-seconds-left=\"120\"") || page.contains("data-seconds-left=\"119\""),
        "{page}"
    );
    // A page with forms never reloads itself: it would wipe a half-typed passkey.
    assert!(!page.contains("http-equiv=\"refresh\""), "{page}");
    let (_, api) = get(&state, "/api/v1/pairing").await;
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(v["window"]["open"], true);

    let res = call(&state, post("/pairing/window", "seconds=9999")).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);

    let res = call(&state, post("/pairing/close", "")).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
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
        page.contains("&lt;b&gt;Ada&lt;/b&gt; O'Neil, Room 1"),
        "{page}"
    );
    let (_, own) = get(&state, &format!("/devices/{ox}")).await;
    assert!(own.contains("action=\"/pairing/unassign\""), "{own}");
    assert!(
        page.contains("unassigned: readings no longer attributed (by test-nurse)"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_is_raised_once_shown_acknowledged_and_resolved_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let stage = alert_stage(&state, &store, dir.path());
    let spo2 = |v: f64| {
        reading(
            Quantity::Spo2,
            Value::Number(v),
            Unit::Percent,
            Duration::ZERO,
        )
    };
    store.handle.ingest(vec![spo2(88.0)]).await.unwrap();
    let now = Timestamp::now();
    let r = stage.evaluate_once(now).await.unwrap();
    assert_eq!(r.raised.len(), 1, "{r:?}");
    // Evaluating again while the cause holds raises nothing more.
    let again = stage.evaluate_once(Timestamp::now()).await.unwrap();
    assert!(
        again.raised.is_empty() && again.resolved.is_empty(),
        "{again:?}"
    );

    let (status, json) = get(&state, "/api/v1/alerts").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{json}");
    assert_eq!(v[0]["cause"], "resident:1/news2-single-3:spo2");
    assert_eq!(v[0]["severity"], "urgent");
    assert_eq!(v[0]["published"], false);
    let id = v[0]["id"].as_i64().unwrap();

    let (_, html) = get(&state, "/").await;
    assert!(html.contains("Alerts (1)"), "{html}");
    assert!(
        html.contains("oxygen saturation 88 % (scores 3) at "),
        "{html}"
    );
    assert!(html.contains(&format!("/alerts/{id}/ack")), "{html}");

    assert!(!html.contains("name=\"by\""), "no name to type: {html}");

    // A typed name is refused, saying why, and acknowledges nothing.
    let (status, why) = send(
        &state,
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        r#"{"by": "Nurse Kay"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(why.contains("\"by\" is no longer accepted"), "{why}");
    let (status, why) = send(
        &state,
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        r#"{"note": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    let (status, _) = send(&state, "POST", "/api/v1/alerts/999/ack", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, json) = get(&state, "/api/v1/alerts").await;
    assert!(!json.contains("acknowledged_by"), "{json}");
    // A carer acknowledges from the page; the signed-in username is recorded.
    let (status, body) = post_form_as(&state, CARER, &format!("/alerts/{id}/ack"), "").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    // A second acknowledgement (by API, body `{}`) keeps the first.
    let (status, json) = send(&state, "POST", &format!("/api/v1/alerts/{id}/ack"), "{}").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["acknowledged_by"], "test-carer");
    let (_, html) = get(&state, "/").await;
    assert!(html.contains("acknowledged by test-carer"), "{html}");
    // The example in docs/api.md has exactly the keys of an acknowledged,
    // unresolved alert.
    let doc = include_str!("../../docs/api.md");
    let example = doc
        .split("### `GET /api/v1/alerts`")
        .nth(1)
        .and_then(|s| s.split("```json").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("an example in docs/api.md");
    let example: serde_json::Value = serde_json::from_str(example).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&example[0]), keys(&v));

    store.handle.ingest(vec![spo2(97.0)]).await.unwrap();
    let r = stage.evaluate_once(Timestamp::now()).await.unwrap();
    assert_eq!(r.resolved, vec![id]);
    assert!(r.raised.is_empty());
    let r = stage.evaluate_once(Timestamp::now()).await.unwrap();
    assert!(r.resolved.is_empty(), "resolved twice: {r:?}");
    let (_, html) = get(&state, "/").await;
    assert!(
        !html.contains("Alerts ("),
        "a resolved alert is not open: {html}"
    );
    let (_, json) = get(&state, "/api/v1/alerts").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v[0]["resolved_at"].is_string(), "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nurse_threshold_raises_where_the_chart_would_not() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let stage = alert_stage(&state, &store, dir.path());
    ingest_one(
        &store,
        reading(
            Quantity::Spo2,
            Value::Number(93.0),
            Unit::Percent,
            Duration::ZERO,
        ),
    )
    .await;
    assert!(
        stage
            .evaluate_once(Timestamp::now())
            .await
            .unwrap()
            .raised
            .is_empty()
    );
    let body = |spo2: &str| {
        format!(
            r#"{{"spo2_low": {spo2}, "pulse_low": 40, "pulse_high": 131,
                "systolic_low": 90, "systolic_high": 220, "temperature_low": 35, "temperature_high": 39.1}}"#
        )
    };
    let (status, why) = send(
        &state,
        "PUT",
        "/api/v1/residents/1/thresholds",
        &body("9.4"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    let (status, _) = send(&state, "PUT", "/api/v1/residents/9/thresholds", &body("94")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, why) = send(
        &state,
        "PUT",
        "/api/v1/residents/1/thresholds",
        &body(r#"94, "set_by": "Nurse Kay""#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(why.contains("\"set_by\" is no longer accepted"), "{why}");
    // Carers acknowledge alerts but do not set limits.
    let (status, _) = send_as(
        &state,
        CARER,
        "PUT",
        "/api/v1/residents/1/thresholds",
        &body("94"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(threshold_set_by(dir.path()), None);
    let (status, _) = send(&state, "PUT", "/api/v1/residents/1/thresholds", &body("94")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(threshold_set_by(dir.path()).as_deref(), Some("test-nurse"));
    let r = stage.evaluate_once(Timestamp::now()).await.unwrap();
    assert_eq!(r.raised.len(), 1);
    let (_, json) = get(&state, "/api/v1/alerts").await;
    assert!(json.contains("resident:1/threshold:spo2"), "{json}");
    assert!(
        json.contains("oxygen saturation 93 % at "),
        "value with its unit: {json}"
    );
}

/// Who set resident 1's limits, read from the database itself.
fn threshold_set_by(dir: &std::path::Path) -> Option<String> {
    let db = rusqlite::Connection::open(dir.join("t.db")).unwrap();
    rusqlite::OptionalExtension::optional(db.query_row(
        "SELECT set_by FROM resident_thresholds WHERE resident_id = 1",
        [],
        |r| r.get(0),
    ))
    .unwrap()
}

#[test]
fn observation_sets_are_validated_with_plain_words() {
    use super::clinical::{ObservationInput, validate};
    let input = |f: &dyn Fn(&mut ObservationInput)| {
        let mut i = ObservationInput::default();
        f(&mut i);
        i
    };
    let s = |v: &str| Some(v.to_owned());
    // (input, the error it must give, or None when it is accepted)
    let cases: Vec<(ObservationInput, Option<&str>)> = vec![
        (input(&|i| i.resp_rate = s("18")), None),
        (input(&|i| i.temperature = s("37,2")), None),
        (input(&|i| i.consciousness = s("v")), None),
        (input(&|i| i.on_oxygen = s("no")), None),
        (input(&|_| {}), Some("Enter at least one observation.")),
        (
            input(&|i| {
                i.entered_by = super::alert_page::Retired(true);
                i.resp_rate = s("18");
            }),
            Some("\"entered_by\" is no longer accepted"),
        ),
        (
            input(&|i| i.resp_rate = s("-3")),
            Some("Respiration rate must be a number from 0 to 80 /min"),
        ),
        (
            input(&|i| i.resp_rate = s("18.5")),
            Some("Respiration rate must be a whole number"),
        ),
        (
            input(&|i| i.spo2 = s("140")),
            Some("SpO2 must be a number from 50 to 100 %"),
        ),
        (
            input(&|i| i.temperature = s("NaN")),
            Some("Temperature must be a number from 25 to 45 °C"),
        ),
        (
            input(&|i| i.consciousness = s("X")),
            Some("Consciousness must be one of A (alert)"),
        ),
        (
            input(&|i| i.on_oxygen = s("maybe")),
            Some("Oxygen must be \"yes\" or \"no\""),
        ),
        (
            input(&|i| {
                i.resp_rate = s("18");
                i.minutes_ago = s("90");
            }),
            Some("\"Taken\" must be a whole number of minutes ago, 0 to 60"),
        ),
    ];
    for (i, expected) in cases {
        match (validate(&i), expected) {
            (Ok(_), None) => {}
            (Err(errors), Some(e)) => assert!(
                errors.iter().any(|x| x.starts_with(e)),
                "{i:?}: {errors:?} lacks {e:?}"
            ),
            (got, want) => panic!("{i:?}: got {got:?}, wanted {want:?}"),
        }
    }
    // Several problems are reported together.
    let both = validate(&input(&|i| {
        i.spo2 = s("9.6");
        i.pulse = s("x");
    }))
    .unwrap_err();
    assert_eq!(both.len(), 2, "{both:?}");
}

#[test]
fn staff_form_and_scorer_refuse_exactly_the_same_values() {
    // Issue 22: the form took SpO2 50-100, temperature 30-45 and pulse 20-250 while
    // the scorer took 0-100, 25-45 and 0-300. Both read Parameter::plausible_range.
    use super::clinical::{ObservationInput, validate};
    use crate::clinical::news2::{Observations, Parameter as P};
    let set = |p: P, v: &str| {
        let mut i = ObservationInput::default();
        let s = Some(v.to_owned());
        match p {
            P::RespRate => i.resp_rate = s,
            P::Spo2 => i.spo2 = s,
            P::Systolic => i.systolic = s,
            P::Pulse => i.pulse = s,
            _ => i.temperature = s,
        }
        i
    };
    let obs = |p: P, v: f64| {
        let mut o = Observations::default();
        match p {
            P::RespRate => o.resp_rate = Some(v),
            P::Spo2 => o.spo2 = Some(v),
            P::Systolic => o.systolic = Some(v),
            P::Pulse => o.pulse = Some(v),
            _ => o.temperature = Some(v),
        }
        o
    };
    for p in [P::RespRate, P::Spo2, P::Systolic, P::Pulse, P::Temperature] {
        let (lo, hi, _) = p.plausible_range().unwrap();
        for (v, inside) in [(lo, true), (hi, true), (lo - 1.0, false), (hi + 1.0, false)] {
            let form = validate(&set(p, &format!("{v}"))).is_ok();
            assert_eq!(form, inside, "{p:?} {v}: form");
            assert_eq!(p.plausible(v), inside, "{p:?} {v}: alert rules");
            assert_eq!(obs(p, v).validate().is_ok(), inside, "{p:?} {v}: scorer");
        }
    }
    // The values that disagreed before.
    assert!(validate(&set(P::Spo2, "40")).is_err() && !P::Spo2.plausible(40.0));
    assert!(validate(&set(P::Pulse, "270")).is_err() && !P::Pulse.plausible(270.0));
    assert!(validate(&set(P::Temperature, "28.5")).is_ok() && P::Temperature.plausible(28.5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staff_observation_set_is_stored_as_readings_and_completes_news2() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let now = Duration::ZERO;
    store
        .handle
        .ingest(vec![
            reading(Quantity::Spo2, Value::Number(96.0), Unit::Percent, now),
            reading(
                Quantity::PulseRate,
                Value::Number(72.0),
                Unit::PerMinute,
                now,
            ),
            reading(
                Quantity::SystolicPressure,
                Value::Number(125.0),
                Unit::MillimetreOfMercury,
                now,
            ),
            reading(
                Quantity::BodyTemperature,
                Value::Number(37.0),
                Unit::Celsius,
                now,
            ),
        ])
        .await
        .unwrap();
    let queued = store
        .handle
        .stats()
        .outbox_readings
        .load(std::sync::atomic::Ordering::Relaxed);
    // Refused in words; nothing stored.
    let (status, body) = send(
        &state,
        "POST",
        "/api/v1/residents/1/observations",
        r#"{"resp_rate": 140}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("Respiration rate must be a number from 0 to 80"),
        "{body}"
    );
    let (status, _) = send(
        &state,
        "POST",
        "/api/v1/residents/9/observations",
        r#"{"resp_rate": 18}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A typed name is refused, saying why.
    let (status, body) = send(
        &state,
        "POST",
        "/api/v1/residents/1/observations",
        r#"{"entered_by": "Kay", "resp_rate": 18}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains(r#"\"entered_by\" is no longer accepted"#),
        "{body}"
    );
    // Consciousness "V" scores 3 on its own.
    let (status, body) = send(
        &state,
        "POST",
        "/api/v1/residents/1/observations",
        r#"{"resp_rate": 18, "consciousness": "V", "on_oxygen": false}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["entered_by"], "staff:test-nurse");
    assert_eq!(v["reading_ids"].as_array().unwrap().len(), 3);
    // Readings in the outbox, to be forwarded like sensor readings.
    assert_eq!(
        store
            .handle
            .stats()
            .outbox_readings
            .load(std::sync::atomic::Ordering::Relaxed),
        queued + 3
    );
    let (_, json) = get(&state, "/api/v1/residents").await;
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let news2 = &r["residents"][0]["news2"];
    assert_eq!(news2["partial"], false, "{json}");
    assert_eq!(news2["total"], 3, "{json}");
    assert_eq!(news2["band"], "low-medium", "{json}");
    let vitals = r["residents"][0]["vitals"].as_array().unwrap();
    let rr = vitals
        .iter()
        .find(|x| x["quantity"] == "respiration_rate")
        .unwrap();
    assert_eq!(rr["unit"], "/min");
    assert_eq!(rr["device"], "00:00:00:00:00:00");
    let (_, html) = get(&state, "/").await;
    assert!(html.contains("NEWS2 3 — LOW–MEDIUM"), "{html}");
    assert!(html.contains("V (responds to voice)"), "{html}");
    assert!(html.contains("no (air)"), "{html}");
    // Who entered it is on the resident's clinical page.
    let (_, page) = get(&state, "/residents/1/clinical").await;
    assert!(page.contains("staff:test-nurse"), "{page}");

    // The form: a bad value comes back with the typed values and the reason.
    let (status, page) = post_form(
        &state,
        "/residents/1/observations",
        "resp_rate=abc&pulse=80",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("were not saved"), "{page}");
    assert!(page.contains("value=\"80\""), "typed values kept: {page}");
    assert!(!page.contains("entered_by"), "no name to type: {page}");
    let (status, _) = post_form(
        &state,
        "/residents/1/observations",
        "resp_rate=22&consciousness=A&on_oxygen=no",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page) = get(&state, "/residents/1/clinical").await;
    assert_eq!(page.matches("staff:test-nurse").count(), 2, "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn spo2_scale_two_is_set_by_a_nurse_audited_shown_and_scored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = setup(dir.path()).await;
    let mut changes = state.alerts.lock().unwrap().subscribe();
    let stage = alert_stage(&state, &store, dir.path());
    // 89 % on air: scale 1 scores 3 (a single-3 alert); scale 2 scores 0.
    ingest_one(
        &store,
        reading(
            Quantity::Spo2,
            Value::Number(89.0),
            Unit::Percent,
            Duration::ZERO,
        ),
    )
    .await;
    let raised = stage.evaluate_once(Timestamp::now()).await.unwrap().raised;
    assert_eq!(raised.len(), 1);
    let c = changes.try_recv().unwrap();
    assert_eq!(
        c,
        crate::store::AlertChange {
            id: raised[0],
            kind: crate::store::AlertChangeKind::Raised
        }
    );
    let (_, html) = get(&state, "/").await;
    assert!(!html.contains("SpO2 scale 2"));

    let (status, why) = send(
        &state,
        "PUT",
        "/api/v1/residents/1/spo2-scale",
        r#"{"scale": 3}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(why.contains("1 or 2"), "{why}");
    let (status, _) = send(
        &state,
        "PUT",
        "/api/v1/residents/9/spo2-scale",
        r#"{"scale": 2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, why) = send(
        &state,
        "PUT",
        "/api/v1/residents/1/spo2-scale",
        r#"{"scale": 2, "set_by": "Nurse Kay"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(why.contains("\"set_by\" is no longer accepted"), "{why}");
    let (status, _) = send_as(
        &state,
        CARER,
        "PUT",
        "/api/v1/residents/1/spo2-scale",
        r#"{"scale": 2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(
        &state,
        "PUT",
        "/api/v1/residents/1/spo2-scale",
        r#"{"scale": 2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (_, html) = get(&state, "/").await;
    assert!(html.contains("SpO2 scale 2"), "{html}");
    let (_, json) = get(&state, "/api/v1/residents").await;
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["residents"][0]["spo2_scale"], 2);
    assert_eq!(r["residents"][0]["news2"]["total"], 0, "{json}");
    // The single-3 alert clears once, and says so live; nobody has seen it,
    // so it stays open (a clinical alert latches) until acknowledged.
    let r = stage.evaluate_once(Timestamp::now()).await.unwrap();
    assert_eq!(r.cleared, raised);
    assert!(r.resolved.is_empty(), "{r:?}");
    assert_eq!(
        changes.try_recv().unwrap().kind,
        crate::store::AlertChangeKind::Cleared
    );
    let r = stage.evaluate_once(Timestamp::now()).await.unwrap();
    assert!(r.resolved.is_empty() && r.cleared.is_empty(), "{r:?}");
    state
        .alerts
        .lock()
        .unwrap()
        .acknowledge(raised[0], "test-nurse", Timestamp::now())
        .unwrap();
    let a = state
        .alerts
        .lock()
        .unwrap()
        .get(raised[0])
        .unwrap()
        .unwrap();
    assert!(a.resolved_at.is_some(), "{a:?}");
    // In the audit record, with who set it.
    let reader = state.reader.clone();
    let events = tokio::task::spawn_blocking(move || reader.pairing_events(10))
        .await
        .unwrap()
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.what == "spo2_scale" && e.who.as_deref() == Some("test-nurse")),
        "{events:?}"
    );
    // The settings page and its forms.
    let (_, page) = get(&state, "/residents/1/clinical").await;
    assert!(page.contains("Now: scale 2"), "{page}");
    assert!(page.contains("value=\"91\""), "chart default shown: {page}");
    assert!(!page.contains("set_by"), "no name to type: {page}");
    let (status, _) = post_form(&state, "/residents/1/clinical/scale", "scale=1").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, why) = post_form(
        &state,
        "/residents/1/clinical/thresholds",
        "spo2_low=9.4&pulse_low=40&pulse_high=131&systolic_low=90&systolic_high=220&temperature_low=35&temperature_high=39.1",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(why.contains("spo2_low must be 70 to 100"), "{why}");
    let (status, _) = post_form(
        &state,
        "/residents/1/clinical/thresholds",
        "spo2_low=94&pulse_low=40&pulse_high=131&systolic_low=90&systolic_high=220&temperature_low=35&temperature_high=39.1",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page) = get(&state, "/residents/1/clinical").await;
    assert!(
        page.contains("Now: scale 1") && page.contains("Set by a nurse"),
        "{page}"
    );
}

#[tokio::test]
async fn an_encryption_key_is_set_by_a_nurse_never_shown_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let ox: DeviceAddress = "C0:00:00:00:00:01".parse().unwrap();
    let path = "/api/v1/devices/C0:00:00:00:00:01/key";
    let hex = "00112233445566778899aabbccddeeff";
    let body = format!(r#"{{"key": "{hex}"}}"#);

    // Refusals say why, and change nothing.
    let (s, b) = send(&state, "PUT", path, r#"{"key": "0011"}"#).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b, "an encryption key is 32 hexadecimal digits (0-9, a-f)");
    let (s, b) = send(
        &state,
        "PUT",
        "/api/v1/devices/C0:00:00:00:00:09/key",
        &body,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(
        b,
        "C0:00:00:00:00:09 is not a registered device: assign it first"
    );
    let (s, _) = send(&state, "DELETE", path, "").await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = send_as(&state, CARER, "PUT", path, &body).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "carers do not set keys");
    assert!(!state.registry.has_key(ox));
    assert!(state.reader.keys().unwrap().is_empty());

    // A nurse sets it: stored, given to ingest, and never shown back.
    let (s, b) = send(&state, "PUT", path, &body).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert!(state.registry.has_key(ox));
    let stored = state.reader.keys().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key, crate::decode::parse_bind_key(hex).unwrap());
    let (_, devices) = get(&state, "/api/v1/devices").await;
    let v: serde_json::Value = serde_json::from_str(&devices).unwrap();
    assert_eq!(v[0]["encrypted"], true, "{v}");
    let (_, own) = get(&state, &format!("/devices/{ox}")).await;
    assert!(own.contains("A key is set."), "{own}");
    let (_, page) = get(&state, "/pairing").await;
    assert!(
        page.contains("encryption key set (by test-nurse)"),
        "{page}"
    );
    for shown in [&devices, &page, &own] {
        assert!(
            !shown.to_lowercase().contains(hex),
            "the key is never shown"
        );
    }

    // Removed through the form: forgotten by the store and by ingest.
    let (s, _) = post_form(
        &state,
        "/pairing/key/remove",
        "address=C0%3A00%3A00%3A00%3A00%3A01",
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(!state.registry.has_key(ox));
    assert!(state.reader.keys().unwrap().is_empty());
    // An oximeter does not encrypt: with its key gone, its page offers none.
    let (_, own) = get(&state, &format!("/devices/{ox}")).await;
    assert!(!own.contains("action=\"/pairing/key\""), "{own}");
    let (_, page) = get(&state, "/pairing").await;
    assert!(
        page.contains("encryption key removed (by test-nurse)"),
        "{page}"
    );

    // Typed on the page the way it is printed on a sensor's box.
    let (s, b) = post_form(
        &state,
        "/pairing/key",
        "address=C0%3A00%3A00%3A00%3A00%3A01&key=00%3A11%3A22%3A33%3A44%3A55%3A66%3A77%3A88%3A99%3AAA%3ABB%3ACC%3ADD%3AEE%3AFF",
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{b}");
    assert_eq!(
        state.reader.keys().unwrap()[0].key,
        crate::decode::parse_bind_key(hex).unwrap()
    );
}

#[tokio::test]
async fn the_pages_own_refreshes_do_not_keep_a_session_alive_but_staff_do() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let login = sign_in(&state, CARER);
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    // The session was last marked used two minutes ago.
    let two_minutes_ago = Timestamp::now().unix_ms() - 120_000;
    let set_mark = || {
        db.execute("UPDATE sessions SET last_seen_ms = ?1", [two_minutes_ago])
            .unwrap()
    };
    let mark = || -> i64 {
        db.query_row("SELECT last_seen_ms FROM sessions", [], |r| r.get(0))
            .unwrap()
    };
    let get_with = |uri: &'static str, live: bool| {
        let mut req = Request::builder().uri(uri).header("cookie", &login.cookie);
        if live {
            req = req.header(auth::LIVE_HEADER, "1");
        }
        app(state.clone()).oneshot(req.body(Body::empty()).unwrap())
    };
    set_mark();
    // live.js refreshing the overview: answered, not counted as use.
    let res = get_with("/", true).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        mark(),
        two_minutes_ago,
        "a live refresh marked the session used"
    );
    // A member of staff opening the page: counted.
    let res = get_with("/alerts", false).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        mark() > two_minutes_ago,
        "a page opened by staff was not counted"
    );
}
