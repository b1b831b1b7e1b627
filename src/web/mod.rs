//! The staff web page and its JSON API, served by axum.
//!
//! Handlers read through the store's [`Reader`] on blocking threads, never on the
//! async executor. Every value is shown with its unit and its age; a value older
//! than the clinical window is shown as "last reading N min ago", never as current.

mod api;
pub mod assets;
mod devices;
pub mod events;
mod gateway;
pub mod layout;
pub mod metrics;
mod openapi;
pub(crate) mod pages;
mod pairing;
mod resident;
mod residents_admin;

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
    /// `site.gateway_id`, shown in every page's header.
    pub gateway_name: Arc<str>,
    /// The decode stage's counters, for `/metrics`.
    pub ingest: Arc<crate::ingest::IngestStats>,
    /// Live-update notifications for `/events`.
    pub events: events::Events,
    /// Requests answered, for `/metrics`.
    pub web_metrics: Arc<metrics::WebMetrics>,
}

/// The whole application, for `serve` and for tests (`tower::ServiceExt::oneshot`).
pub fn app(state: AppState) -> Router {
    let web_metrics = state.web_metrics.clone();
    Router::new()
        .route("/", get(pages::overview))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/events", get(events::stream))
        .route("/assets/carehub.css", get(assets::css))
        .route("/assets/live.js", get(assets::js))
        .route("/gateway", get(gateway::page))
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
        .route("/api/v1/devices", get(devices::list))
        .route("/pairing/assign", post(devices::page_assign))
        .route("/pairing/unassign", post(devices::page_unassign))
        .route("/pairing", get(pairing::page))
        .route("/pairing/window", post(pairing::page_open))
        .route("/pairing/close", post(pairing::page_close))
        .route("/pairing/passkey", post(pairing::page_passkey))
        .route("/api/v1/pairing/passkey", post(pairing::passkey))
        .route(
            "/api/v1/pairing/window",
            post(pairing::open_window).delete(pairing::close_window),
        )
        .route(
            "/api/v1/pairing/devices/{address}",
            axum::routing::delete(pairing::unpair),
        )
        .route("/api/v1/uplink", get(api::uplink))
        .fallback(not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            web_metrics,
            metrics::count,
        ))
}

/// Who made a request, for the pairing record until staff accounts exist: "cli"
/// for `carehub pair` (which says so in a header), else the caller's address.
/// A label, not an authentication.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// The header `carehub pair` sends so the record says "cli".
pub const CLIENT_HEADER: &str = "x-carehub-client";

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        if parts
            .headers
            .get(CLIENT_HEADER)
            .is_some_and(|v| v.as_bytes() == b"cli")
        {
            return Ok(Caller("cli".to_owned()));
        }
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(Caller(peer.unwrap_or_else(|| "web".to_owned())))
    }
}

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

/// Runs a blocking store read off the executor.
async fn read<T: Send + 'static>(
    reader: &Reader,
    f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WebError> {
    let reader = reader.clone();
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
mod tests;

#[cfg(test)]
mod pages_tests;
