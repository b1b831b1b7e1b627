//! What the web router tests share (`tests.rs`, `pages_tests.rs`,
//! `pipeline_tests.rs`, `auth/tests.rs`): an app state on a real SQLite file, a
//! reading, the alert stage over that state, signed-in staff, request builders and
//! the router's answer read whole. Signing in itself is `auth::testing`, which the
//! benches and the integration tests use too.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::auth::testing::Login;
use super::{AppState, app, auth, events};
use crate::config::Synchronous;
use crate::model::*;
use crate::store::accounts::Role;
use crate::store::{Store, StoreSettings};
use crate::system::health::Health;

/// A store on `dir/t.db` with one resident (a name with markup to escape) and her
/// pulse oximeter `C0:00:00:00:00:01`, and the app state over it: HTTPS, the
/// default limits, Europe/London.
pub(crate) async fn setup(dir: &std::path::Path) -> (Store, AppState) {
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
        health: std::sync::Arc::new(health),
        started_at: Timestamp::now(),
        version: "test",
        pairing: Default::default(),
        ble: None,
        registry: Default::default(),
        store: store.handle.clone(),
        uplink: std::sync::Arc::new(crate::uplink::UplinkStatus::new(
            crate::uplink::ConnectionState::Disabled,
        )),
        accounts: auth::testing::accounts(&dir.join("t.db")),
        auth: auth::testing::settings(),
        alerts: crate::alert_stage::open_book(&dir.join("t.db")).unwrap(),
        gateway_name: "test-gw".into(),
        // The project's default zone: pages must never say "UTC" (issue 15).
        zone: SiteZone::named("Europe/London").unwrap(),
        ingest: Default::default(),
        events: events::Events::new(tokio_util::sync::CancellationToken::new()),
        web_metrics: Default::default(),
        overview: Default::default(),
    };
    (store, state)
}

/// A reading of the resident's oximeter, received `age` ago.
pub(crate) fn reading(q: Quantity, value: Value, unit: Unit, age: Duration) -> Reading {
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

/// Stores one reading and waits for its commit.
pub(crate) async fn ingest_one(store: &Store, r: Reading) {
    store.handle.ingest(vec![r]).await.unwrap();
}

/// The alert stage over the test state: no disk-space alert (the test's temporary
/// filesystem may be nearly full), no minimum hold (a cause that stops holding
/// clears at the next look), started at the epoch.
pub(crate) fn alert_stage(
    state: &AppState,
    store: &Store,
    dir: &std::path::Path,
) -> crate::alert_stage::AlertStage {
    let mut health = Health::default();
    crate::alert_stage::AlertStage {
        book: state.alerts.clone(),
        reader: state.reader.clone(),
        db_path: dir.join("t.db"),
        limits: crate::clinical::alert_rules::Limits {
            disk_low_bytes: 0,
            ..Default::default()
        },
        lifecycle: crate::clinical::alert_rules::Lifecycle {
            clear_hold: Duration::ZERO,
            ..Default::default()
        },
        started_at: Timestamp::from_unix_ms(0),
        every: Duration::from_secs(30),
        store_stats: store.handle.stats().clone(),
        uplink: None,
        changed: Default::default(),
        heartbeat: health.register("alerts"),
        web: None,
        cancel: Default::default(),
    }
}

/// A member of staff a test acts as: username and role.
pub(crate) type Who = (&'static str, Role);

/// Whom `get`, `send` and `post_form` sign in as.
pub(crate) const NURSE: Who = ("test-nurse", Role::Nurse);
/// For what only nurses may do.
pub(crate) const CARER: Who = ("test-carer", Role::Carer);
/// For pages only admins see (an admin may also do what nurses and carers do).
pub(crate) const ADMIN: Who = ("pages-admin", Role::Admin);

/// Signs `who` in (creating the account the first time).
pub(crate) fn sign_in(state: &AppState, who: Who) -> Login {
    auth::testing::sign_in(state, who.0, who.1)
}

/// The router's answer, read whole.
pub(crate) struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends `req` through the whole router. A live stream (`/events`) never ends: its
/// status and headers are the answer, with an empty body.
pub(crate) async fn call(state: &AppState, req: Request<Body>) -> Res {
    let res = app(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let streaming = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    let body = if streaming {
        Default::default()
    } else {
        res.into_body().collect().await.unwrap().to_bytes()
    };
    Res {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `req` as `who`, signed in: the session cookie, and the session's CSRF token
/// where a change needs it (a form's field, another method's header).
pub(crate) async fn signed_in(state: &AppState, who: Who, req: Request<Body>) -> Request<Body> {
    let login = sign_in(state, who);
    let (mut parts, body) = req.into_parts();
    parts
        .headers
        .insert(header::COOKIE, login.cookie.parse().unwrap());
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t == "application/x-www-form-urlencoded");
    let body = if is_form {
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        Body::from(format!("{text}&csrf={}", login.csrf))
    } else {
        if parts.method != axum::http::Method::GET {
            parts
                .headers
                .insert(auth::CSRF_HEADER, login.csrf.parse().unwrap());
        }
        body
    };
    Request::from_parts(parts, body)
}

/// A request with no body, with `login`'s cookie and CSRF header if given.
pub(crate) fn request(method: &str, uri: &str, login: Option<&Login>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(l) = login {
        b = b
            .header(header::COOKIE, &l.cookie)
            .header(auth::CSRF_HEADER, &l.csrf);
    }
    b.body(Body::empty()).unwrap()
}

/// A form post, with `cookie` if given (and no CSRF field: add it to `body`).
pub(crate) fn form(uri: &str, cookie: Option<&str>, body: &str) -> Request<Body> {
    let mut b =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

/// A JSON request.
pub(crate) fn json(method: &str, uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// GET as a signed-in nurse: status and body.
pub(crate) async fn get(state: &AppState, uri: &str) -> (StatusCode, String) {
    let req = signed_in(state, NURSE, request("GET", uri, None)).await;
    let res = call(state, req).await;
    (res.status, res.body)
}

/// A JSON request as a signed-in nurse, with the session's CSRF header.
pub(crate) async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, String) {
    send_as(state, NURSE, method, uri, body).await
}

/// A JSON request as `who`, with the session's CSRF header.
pub(crate) async fn send_as(
    state: &AppState,
    who: Who,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, String) {
    let login = sign_in(state, who);
    let mut req = json(method, uri, body);
    let headers = req.headers_mut();
    headers.insert(header::COOKIE, login.cookie.parse().unwrap());
    headers.insert(auth::CSRF_HEADER, login.csrf.parse().unwrap());
    let res = call(state, req).await;
    (res.status, res.body)
}

/// A form post as a signed-in nurse, with the session's CSRF field.
pub(crate) async fn post_form(state: &AppState, uri: &str, body: &str) -> (StatusCode, String) {
    post_form_as(state, NURSE, uri, body).await
}

/// A form post as `who`, with the session's CSRF field.
pub(crate) async fn post_form_as(
    state: &AppState,
    who: Who,
    uri: &str,
    body: &str,
) -> (StatusCode, String) {
    let req = signed_in(state, who, form(uri, None, body)).await;
    let res = call(state, req).await;
    (res.status, res.body)
}
