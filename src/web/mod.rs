//! The staff web page and its JSON API, served by axum.
//!
//! Handlers read through the store's [`Reader`] on blocking threads, never on the
//! async executor. Every value is shown with its unit and its age; a value older
//! than the clinical window is shown as "last reading N min ago", never as current.

mod alert_page;
mod api;
pub mod assets;
pub mod auth;
mod clinical;
pub mod conn;
mod device_page;
mod devices;
pub mod events;
mod gateway;
mod handover;
pub mod headers;
pub mod layout;
pub mod metrics;
mod openapi;
mod overview_data;
pub(crate) mod pages;
mod pairing;
mod pairing_guide;
mod resident;
mod residents_admin;
pub mod serve;
mod tile_cache;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::ble::BleHandle;
use crate::ble::pairing::PairingPolicy;
use crate::ingest::Registry;
use crate::model::Timestamp;
use crate::store::{Reader, StoreError, StoreHandle};
use crate::system::health::Health;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub reader: Reader,
    pub stale_after: Duration,
    pub health: Arc<Health>,
    pub started_at: Timestamp,
    pub version: &'static str,
    /// The pairing window and allow-list, shared with the BLE source.
    pub pairing: PairingPolicy,
    /// What the BLE source hears; `None` when the source is not BLE.
    pub ble: Option<BleHandle>,
    /// Who each device belongs to, live; assignments change it.
    pub registry: Registry,
    /// For the writes the API makes (assignments).
    pub store: StoreHandle,
    /// The MQTT uplink's connection state, last error and counts.
    pub uplink: Arc<crate::uplink::UplinkStatus>,
    /// Staff accounts, sessions and the audit log.
    pub accounts: crate::store::accounts::Accounts,
    /// Cookie flags, session limits, the CLI token.
    pub auth: Arc<auth::AuthSettings>,
    /// The alert lifecycle and the nurses' thresholds.
    pub alerts: crate::alert_stage::SharedBook,
    /// `site.gateway_id`, shown in every page's header.
    pub gateway_name: Arc<str>,
    /// `site.timezone`: the times on the pages are its local time.
    pub zone: crate::model::SiteZone,
    /// The decode stage's counters, for `/metrics`.
    pub ingest: Arc<crate::ingest::IngestStats>,
    /// Live-update notifications for `/events`.
    pub events: events::Events,
    /// Requests answered, for `/metrics`.
    pub web_metrics: Arc<metrics::WebMetrics>,
    /// The residents overview's rows between two changes (`overview_data`).
    pub overview: Arc<overview_data::OverviewData>,
}

/// The whole application, for `serve` and for tests (`tower::ServiceExt::oneshot`).
pub fn app(state: AppState) -> Router {
    let web_metrics = state.web_metrics.clone();
    let headers = Arc::new(headers::Settings {
        hosts: state.auth.hosts.clone(),
        https: state.auth.https,
    });
    pages::remember_gateway_name(&state.gateway_name);
    layout::remember_zone(&state.zone);
    Router::new()
        .route("/", get(pages::overview))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/events", get(events::stream))
        .route("/assets/carehub.css", get(assets::css))
        .route("/assets/live.js", get(assets::js))
        .route("/gateway", get(gateway::page))
        .route("/gateway/uplink/retry", post(gateway::retry_held))
        .route(
            "/residents",
            get(residents_admin::list).post(residents_admin::create),
        )
        .route("/residents/new", get(residents_admin::new_form))
        .route("/residents/{id}", get(resident::page))
        .route(
            "/residents/{id}/edit",
            get(residents_admin::edit_form).post(residents_admin::update),
        )
        .route(
            "/residents/{id}/archive",
            get(residents_admin::archive_form).post(residents_admin::archive),
        )
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/gateway", get(gateway::json))
        .route(
            "/api/v1/residents",
            get(api::residents).post(residents_admin::api_create),
        )
        .route(
            "/api/v1/residents/{id}",
            get(resident::json)
                .put(residents_admin::api_update)
                .delete(residents_admin::api_archive),
        )
        .route("/api/v1/pairing", get(pairing::status))
        .route("/api/v1/bluetooth", get(pairing::bluetooth))
        .route(
            "/api/v1/devices/{address}/assignment",
            axum::routing::put(devices::assign).delete(devices::unassign),
        )
        .route(
            "/api/v1/devices/{address}/key",
            axum::routing::put(devices::set_key).delete(devices::clear_key),
        )
        .route("/api/v1/devices", get(devices::list))
        .route("/devices/{address}", get(device_page::page))
        .route(
            "/devices/{address}/remove",
            post(pairing::remove_from_device_page),
        )
        .route("/pairing/assign", post(devices::page_assign))
        .route("/pairing/unassign", post(devices::page_unassign))
        .route("/pairing/key", post(devices::page_set_key))
        .route("/pairing/key/remove", post(devices::page_clear_key))
        .route("/pairing", get(pairing::page))
        .route("/pairing/window", post(pairing::page_open))
        .route("/pairing/close", post(pairing::page_close))
        .route("/pairing/passkey", post(pairing::page_passkey))
        .route(
            "/pairing/guide",
            get(pairing_guide::page).post(pairing_guide::start),
        )
        .route("/pairing/guide/assign", post(pairing_guide::assign))
        .route("/pairing/guide/passkey", post(pairing_guide::passkey))
        .route("/pairing/guide/confirm", post(pairing_guide::confirm))
        .route("/api/v1/pairing/passkey", post(pairing::passkey))
        .route("/api/v1/pairing/confirm", post(pairing::confirm))
        .route(
            "/api/v1/pairing/window",
            post(pairing::open_window).delete(pairing::close_window),
        )
        .route(
            "/api/v1/pairing/devices/{address}",
            axum::routing::delete(pairing::unpair),
        )
        .route("/api/v1/uplink", get(api::uplink))
        .route("/alerts", get(alert_page::page))
        .route("/handover", get(handover::page))
        .route("/handover.csv", get(handover::csv))
        .route("/api/v1/alerts", get(alert_page::list))
        .route("/api/v1/alerts/{id}/ack", post(alert_page::ack))
        .route("/alerts/{id}/ack", post(alert_page::page_ack))
        .route(
            "/api/v1/residents/{id}/thresholds",
            axum::routing::put(alert_page::set_thresholds),
        )
        // Staff observation sets, SpO2 scale and limits (web::clinical).
        .route(
            "/residents/{id}/observations",
            get(clinical::observations_page).post(clinical::observations_submit),
        )
        .route(
            "/api/v1/residents/{id}/observations",
            post(clinical::api_observations),
        )
        .route("/residents/{id}/clinical", get(clinical::clinical_page))
        .route(
            "/residents/{id}/clinical/scale",
            post(clinical::scale_submit),
        )
        .route(
            "/residents/{id}/clinical/thresholds",
            post(clinical::thresholds_submit),
        )
        .route(
            "/api/v1/residents/{id}/spo2-scale",
            axum::routing::put(clinical::api_scale),
        )
        .route(
            "/login",
            get(auth::signin::login_page).post(auth::signin::login),
        )
        .route("/logout", post(auth::signin::logout))
        .route(
            "/setup",
            get(auth::signin::setup_page).post(auth::signin::setup),
        )
        .route("/signin/{token}", get(auth::signin::signin_link))
        .route(
            "/users",
            get(auth::users::users_page).post(auth::users::add),
        )
        .route("/users/{id}/disable", post(auth::users::disable))
        .route("/users/{id}/enable", post(auth::users::enable))
        .route("/users/{id}/password", post(auth::users::reset_password))
        .route("/users/{id}/unlock", post(auth::users::unlock))
        .route("/audit", get(auth::audit::page))
        .route("/audit.csv", get(auth::audit::export))
        .route("/api/v1/audit", get(auth::audit::api))
        // Last, so that it wraps every route above (and only routed requests: an
        // unknown path is a plain 404). See `auth::policy`.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            web_metrics,
            metrics::count,
        ))
        // Outermost: unknown hosts are refused before anything else, and every
        // answer (404s and refusals included) gets the security headers.
        .layer(axum::middleware::from_fn_with_state(
            headers,
            headers::layer,
        ))
}

/// Who made a request, for the pairing record and the audit log: the signed-in
/// user's name, or "cli (carehub pair)" for its bearer token. The policy middleware has checked
/// who it is before any handler that asks runs.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<auth::Principal>()
                .map_or_else(|| "anonymous".to_owned(), |p| p.username.clone()),
        ))
    }
}

/// The hidden anti-forgery field of every state-changing form: the signed-in
/// session's token (see `auth`). The one helper; every form calls it.
pub use auth::csrf_field;

/// Unknown addresses: a page in plain words for people, plain text for the API.
async fn not_found(
    axum::extract::State(state): axum::extract::State<AppState>,
    uri: axum::http::Uri,
) -> Response {
    if uri.path().starts_with("/api/") {
        (StatusCode::NOT_FOUND, "not found").into_response()
    } else {
        layout::not_found(&state.gateway_name)
    }
}

/// The one error type of the web layer: a 5xx is logged in full and shown to the
/// user without internals.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("accounts: {0}")]
    Accounts(#[from] crate::store::accounts::AccountError),
    #[error(transparent)]
    NoRandom(#[from] auth::password::NoRandom),
    #[error("password hash: {0}")]
    Hash(#[from] auth::password::HashError),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self, "request failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway cannot read its data right now. Try again in a minute.",
        )
            .into_response()
    }
}

/// Store reads running at once, at most: the reader keeps 4 connections open
/// (`store::reader`), and one more read beyond them opens a connection of its own
/// (file, schema, statements) and closes it again, which under 50 clients cost
/// more than the read itself (`benches/web_load.rs`). On 2 cores more reads in
/// parallel would not finish sooner anyway; the others wait their turn here.
const READS_AT_ONCE: usize = 4;
static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(READS_AT_ONCE);

/// Runs a blocking store read off the executor.
async fn read<T: Send + 'static>(
    reader: &Reader,
    f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WebError> {
    let reader = reader.clone();
    // The semaphore is never closed, so acquiring cannot fail.
    let _permit = READS.acquire().await;
    Ok(tokio::task::spawn_blocking(move || f(&reader)).await??)
}

/// "just now", "45 s ago", "12 min ago", "3 h ago", "2 days ago".
pub fn describe_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..=4 => "just now".to_owned(),
        5..=59 => format!("{s} s ago"),
        60..=5399 => format!("{} min ago", s / 60),
        5400..=172_799 => format!("{} h ago", (s + 1800) / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pages_tests;

#[cfg(test)]
mod pipeline_tests;
