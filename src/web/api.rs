//! `/api/v1`: the JSON shape of what the page shows. Version 1; see `docs/api.md`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;

use super::{AppState, WebError, read};
use crate::clinical::{Freshness, freshness};
use crate::model::Timestamp;
use crate::store::ResidentOverview;

#[derive(Serialize)]
pub struct ResidentsResponse {
    pub generated_at: String,
    pub residents: Vec<ResidentJson>,
}

#[derive(Serialize)]
pub struct ResidentJson {
    pub id: i64,
    pub name: String,
    pub room: String,
    pub vitals: Vec<VitalJson>,
    /// 1, or 2 where a nurse has set SpO₂ scale 2 for this resident.
    pub spo2_scale: u8,
    /// NEWS2 from the newest sensor values and staff entries; absent when no
    /// value is usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub news2: Option<News2Json>,
}

#[derive(Serialize)]
pub struct News2Json {
    pub total: u8,
    pub band: &'static str,
    /// True unless every parameter is present: sensors do not measure respiration,
    /// consciousness or oxygen, so without a staff observation set it is partial.
    pub partial: bool,
    pub missing: Vec<&'static str>,
    /// The newest value used is older than the clinical window.
    pub stale: bool,
    pub oldest_taken_at: String,
}

#[derive(Serialize)]
pub struct VitalJson {
    pub quantity: &'static str,
    /// `null` whenever `status` is not `"ok"`: a special value is never a number.
    pub value: Option<f64>,
    pub status: &'static str,
    pub unit: &'static str,
    pub taken_at: String,
    pub age_s: u64,
    /// `"current"`, `"stale"` or `"future_dated"`.
    pub freshness: &'static str,
    pub device: String,
}

pub fn residents_json(
    rows: Vec<ResidentOverview>,
    scales: &super::clinical::Scales,
    now: Timestamp,
    stale_after: std::time::Duration,
) -> ResidentsResponse {
    ResidentsResponse {
        generated_at: now.to_rfc3339(),
        residents: rows
            .into_iter()
            .map(|r| ResidentJson {
                spo2_scale: super::clinical::scale_number(scales.of(r.id.0)),
                news2: super::pages::sensor_news2(&r, scales.of(r.id.0), now, stale_after).map(
                    |s| News2Json {
                        total: s.score.total,
                        band: s.score.band.as_str(),
                        partial: s.score.partial(),
                        missing: s.score.missing.iter().map(|p| p.as_str()).collect(),
                        stale: s.stale,
                        oldest_taken_at: s.oldest.to_rfc3339(),
                    },
                ),
                id: r.id.0,
                name: r.display_name,
                room: r.room,
                vitals: r
                    .latest
                    .into_iter()
                    .map(|v| VitalJson {
                        quantity: v.quantity.as_str(),
                        value: v.value.number(),
                        status: v.value.status(),
                        unit: v.unit.ucum(),
                        taken_at: v.taken_at.to_rfc3339(),
                        age_s: v.taken_at.age_at(now).as_secs(),
                        freshness: match freshness(v.taken_at, now, stale_after) {
                            Freshness::Current => "current",
                            Freshness::Stale => "stale",
                            Freshness::FutureDated => "future_dated",
                        },
                        device: v.device.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub async fn residents(State(state): State<AppState>) -> Result<Json<ResidentsResponse>, WebError> {
    let rows = read(&state.reader, |r| r.residents_overview()).await?;
    let scales = super::clinical::Scales::load(&state).await?;
    Ok(Json(residents_json(
        rows,
        &scales,
        Timestamp::now(),
        state.stale_after,
    )))
}

#[derive(Serialize)]
struct HealthJson {
    status: &'static str,
    version: &'static str,
    uptime_s: u64,
    stalled_stages: Vec<&'static str>,
}

/// 200 when every stage has beaten within 30 s, else 503 naming the stalled ones.
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let now = Timestamp::now();
    let stalled = state
        .health
        .stalled(now, std::time::Duration::from_secs(30));
    let code = if stalled.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthJson {
        status: if stalled.is_empty() { "ok" } else { "degraded" },
        version: state.version,
        uptime_s: state.started_at.age_at(now).as_secs(),
        stalled_stages: stalled,
    };
    (code, Json(body))
}

/// `GET /api/v1/uplink`: the MQTT uplink as the web page shows it.
#[derive(Serialize)]
pub struct UplinkJson {
    /// `"disabled"`, `"connecting"`, `"connected"`, `"waiting to reconnect"`, `"stopped"`.
    pub state: &'static str,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub readings_delivered: u64,
    pub messages_delivered: u64,
    pub connections: u64,
    pub backlog: u64,
    pub certificate_expires_at: Option<String>,
    pub certificate_warning: Option<String>,
}

pub fn uplink_json(s: &crate::uplink::status::StatusSnapshot) -> UplinkJson {
    UplinkJson {
        state: s.state.as_str(),
        last_error: s.last_error.as_ref().map(|(_, e)| e.clone()),
        last_error_at: s.last_error.as_ref().map(|(t, _)| t.to_rfc3339()),
        readings_delivered: s.readings_delivered,
        messages_delivered: s.messages_delivered,
        connections: s.connections,
        backlog: s.backlog,
        certificate_expires_at: s.certificate_expires_at.map(Timestamp::to_rfc3339),
        certificate_warning: s.certificate_warning.clone(),
    }
}

pub async fn uplink(State(state): State<AppState>) -> Json<UplinkJson> {
    Json(uplink_json(&state.uplink.snapshot()))
}
