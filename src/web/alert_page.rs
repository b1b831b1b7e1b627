//! Alerts on the web: `GET /api/v1/alerts`, `POST /api/v1/alerts/{id}/ack`,
//! `PUT /api/v1/residents/{id}/thresholds`, and the alerts section at the top of
//! the overview page (which refreshes itself every 10 s).
//!
//! Who acknowledged an alert or set a resident's limits is the signed-in caller
//! ([`Caller`]: the account's username), never a
//! name typed into the request. The JSON API refuses the fields that once
//! carried such a name (`by`, `set_by`) with a 422 that says why, so that an old
//! client learns instead of having its name silently replaced.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use std::sync::PoisonError;

use super::{AppState, Caller, WebError};
use crate::clinical::alert_rules::Thresholds;
use crate::model::Timestamp;
use crate::store::{AlertRecord, StoreError};

/// Resolved alerts listed after the open ones.
const RECENT_RESOLVED: usize = 20;

/// Runs a blocking call on the alert book off the executor.
pub(super) async fn with_book<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut crate::store::AlertBook) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WebError> {
    let book = state.alerts.clone();
    Ok(tokio::task::spawn_blocking(move || {
        f(&mut book.lock().unwrap_or_else(PoisonError::into_inner))
    })
    .await??)
}

/// One alert in `/api/v1/alerts`.
#[derive(Serialize)]
pub struct AlertJson {
    pub id: i64,
    pub uuid: String,
    pub cause: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_id: Option<i64>,
    pub rule: String,
    pub severity: String,
    pub level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    pub message: String,
    pub raised_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// Its cause stopped holding (after the minimum hold); a clinical alert
    /// stays open until acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<String>,
    /// "clinical" (latches until acknowledged) or "technical" (clears itself).
    pub class: &'static str,
    /// 1, plus one for each time it was announced again unacknowledged.
    pub announcements: u32,
    /// The score behind it was partial; `missing` names what it lacked.
    pub partial: bool,
    pub missing: Vec<String>,
    /// The parameter that scored 3 or crossed a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    pub reading_ids: Vec<String>,
    /// The broker has acknowledged the alert message.
    pub published: bool,
}

impl From<AlertRecord> for AlertJson {
    fn from(a: AlertRecord) -> Self {
        let class = match a.class() {
            crate::clinical::alert_rules::AlertClass::Clinical => "clinical",
            crate::clinical::alert_rules::AlertClass::Technical => "technical",
        };
        AlertJson {
            id: a.id,
            uuid: a.uuid,
            cause: a.cause_key,
            resident_id: a.resident_id,
            rule: a.rule,
            severity: a.severity,
            level: a.level,
            score: a.score,
            message: a.message,
            raised_at: a.raised_at.to_rfc3339(),
            acknowledged_by: a.acknowledged_by,
            acknowledged_at: a.acknowledged_at.map(Timestamp::to_rfc3339),
            resolved_at: a.resolved_at.map(Timestamp::to_rfc3339),
            cleared_at: a.cleared_at.map(Timestamp::to_rfc3339),
            class,
            announcements: a.announcements,
            partial: a.partial,
            missing: a.missing,
            parameter: a.parameter,
            reading_ids: a.reading_ids,
            published: a.published,
        }
    }
}

/// `GET /api/v1/alerts`: open alerts (most severe first), then recent resolved.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<AlertJson>>, WebError> {
    let rows = with_book(&state, |b| b.list(RECENT_RESOLVED)).await?;
    Ok(Json(rows.into_iter().map(AlertJson::from).collect()))
}

/// A field the JSON API once took to say who did something and now refuses:
/// present (with any value, `null` included) or not.
#[derive(Debug, Default)]
pub struct Retired(pub bool);

impl<'de> Deserialize<'de> for Retired {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Retired(true))
    }
}

/// The 422 for a retired field: what to do instead.
pub(super) fn retired(field: &str) -> String {
    format!(
        "\"{field}\" is no longer accepted: the signed-in user is recorded as who did this; leave the field out"
    )
}

/// The optional body of `POST /api/v1/alerts/{id}/ack`: nothing, or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    #[serde(default)]
    by: Retired,
}

/// `POST /api/v1/alerts/{id}/ack`, with no body (or `{}`): acknowledged by the
/// caller.
pub async fn ack(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Caller(who): Caller,
    body: axum::body::Bytes,
) -> Result<Response, WebError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let refused = |why: String| Ok((StatusCode::UNPROCESSABLE_ENTITY, why).into_response());
        match serde_json::from_slice::<AckRequest>(&body) {
            Ok(AckRequest { by: Retired(true) }) => return refused(retired("by")),
            Ok(_) => {}
            Err(e) => return refused(format!("the body must be empty or {{}}: {e}")),
        }
    }
    acknowledge(&state, id, who).await
}

/// `POST /alerts/{id}/ack` from the page's form: acknowledged by the signed-in
/// user, then back to `/`.
pub async fn page_ack(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Caller(who): Caller,
) -> Result<Response, WebError> {
    let r = acknowledge(&state, id, who).await?;
    if r.status().is_success() {
        Ok(Redirect::to("/").into_response())
    } else {
        Ok(r)
    }
}

async fn acknowledge(state: &AppState, id: i64, by: String) -> Result<Response, WebError> {
    let done = with_book(state, move |b| {
        match b.acknowledge(id, &by, Timestamp::now()) {
            Ok(()) => b.get(id),
            Err(StoreError::UnknownAlert(_)) => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await?;
    if done.is_some() {
        state.store.stats().note_alerts_changed();
    }
    Ok(match done {
        Some(a) => Json(AlertJson::from(a)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no such alert {id}")).into_response(),
    })
}

/// `PUT /api/v1/residents/{id}/thresholds`: a nurse's limits for one resident.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsRequest {
    #[serde(default)]
    set_by: Retired,
    pub spo2_low: f64,
    pub pulse_low: f64,
    pub pulse_high: f64,
    pub systolic_low: f64,
    pub systolic_high: f64,
    pub temperature_low: f64,
    pub temperature_high: f64,
}

pub async fn set_thresholds(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
    Caller(who): Caller,
    Json(req): Json<ThresholdsRequest>,
) -> Result<Response, WebError> {
    if req.set_by.0 {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, retired("set_by")).into_response());
    }
    let t = Thresholds {
        spo2_low: req.spo2_low,
        pulse_low: req.pulse_low,
        pulse_high: req.pulse_high,
        systolic_low: req.systolic_low,
        systolic_high: req.systolic_high,
        temperature_low: req.temperature_low,
        temperature_high: req.temperature_high,
    };
    apply_thresholds(&state, resident, t, who).await
}

/// Checks and stores a nurse's limits as set by `by`: 204, 422 saying what is
/// wrong, or 404.
pub(super) async fn apply_thresholds(
    state: &AppState,
    resident: i64,
    t: Thresholds,
    by: String,
) -> Result<Response, WebError> {
    if let Err(why) = plausible(&t) {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, why).into_response());
    }
    let r = with_book(state, move |b| {
        match b.set_thresholds(resident, &t, &by, Timestamp::now()) {
            Ok(()) => Ok(true),
            Err(StoreError::UnknownResident(_)) => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await?;
    Ok(if r {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            format!("no such resident {resident}"),
        )
            .into_response()
    })
}

/// Rejects limits that no nurse means (a typo such as 9.1 for 91).
fn plausible(t: &Thresholds) -> Result<(), &'static str> {
    let within = |v: f64, lo: f64, hi: f64| v.is_finite() && (lo..=hi).contains(&v);
    if !within(t.spo2_low, 70.0, 100.0) {
        return Err("spo2_low must be 70 to 100 %");
    }
    if !within(t.pulse_low, 20.0, 100.0)
        || !within(t.pulse_high, 60.0, 250.0)
        || t.pulse_low >= t.pulse_high
    {
        return Err("pulse limits must be 20 to 100 and 60 to 250 per minute, low below high");
    }
    if !within(t.systolic_low, 50.0, 150.0)
        || !within(t.systolic_high, 100.0, 300.0)
        || t.systolic_low >= t.systolic_high
    {
        return Err("systolic limits must be 50 to 150 and 100 to 300 mmHg, low below high");
    }
    if !within(t.temperature_low, 30.0, 37.0)
        || !within(t.temperature_high, 37.0, 43.0)
        || t.temperature_low >= t.temperature_high
    {
        return Err("temperature limits must be 30 to 37 and 37 to 43 °C, low below high");
    }
    Ok(())
}

/// The open alerts, each with its acknowledgement or an Acknowledge button. A
/// clinical alert whose cause has cleared stays here, marked "cleared at 14:32,
/// not yet seen", until someone acknowledges it; an emergency nobody has
/// acknowledged says when it was announced again. `total` is how many are open:
/// when `rows` are only the first of them (the overview), the heading counts
/// them all and a link leads to the alerts page, which shows every one.
pub(super) fn open_alerts(
    rows: &[&crate::store::AlertRecord],
    total: usize,
    now: Timestamp,
) -> Markup {
    use super::layout::short_clock as clock;
    let ago = |t: Timestamp| super::describe_age(t.age_at(now));
    let total = total.max(rows.len());
    html! {
        @if total > 0 {
            section.alerts role="alert" {
                h2 { "Alerts (" (total) ")" }
                @if total > rows.len() {
                    p.more {
                        "The " (rows.len()) " most urgent are shown here. "
                        a href="/alerts" { "See all " (total) " open alerts" }
                    }
                }
                ul {
                    @for a in rows {
                        li class=(format!("alert {}{}{}", a.severity, if a.cleared_at.is_some() { " cleared" } else { "" }, if a.acknowledged_at.is_some() { " acknowledged" } else { "" })) data-alert=(a.id) {
                            strong { (a.severity) } ": " (a.message)
                            " — raised " time datetime=(a.raised_at.to_rfc3339()) { (clock(a.raised_at)) } " (" (ago(a.raised_at)) ")"
                            @if let Some(c) = a.cleared_at {
                                @if a.acknowledged_at.is_none() {
                                    " — " span.cleared { "cleared at " (clock(c)) ", not yet seen" }
                                    // Latched: open until someone acknowledges it.
                                    span.latched { "STILL OPEN" }
                                } @else {
                                    " — cleared at " (clock(c))
                                }
                            }
                            @if a.announcements > 1 && a.acknowledged_at.is_none() {
                                " — " span.again { "announced again at " (clock(a.announced_at)) " (" (a.announcements) " times)" }
                            }
                            @if let (Some(by), Some(at)) = (&a.acknowledged_by, a.acknowledged_at) {
                                " — acknowledged by " (by) " at " (clock(at))
                            } @else {
                                form method="post" action=(format!("/alerts/{}/ack", a.id)) {
                                    (super::csrf_field())
                                    button { "Acknowledge" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /alerts`: the open alerts (acknowledge buttons), then the most recently
/// resolved, each with who acknowledged it and when.
pub async fn page(State(state): State<AppState>) -> Result<axum::response::Html<String>, WebError> {
    let rows = with_book(&state, |b| b.list(RECENT_RESOLVED)).await?;
    let now = Timestamp::now();
    let (open, resolved): (Vec<_>, Vec<_>) = rows.iter().partition(|a| a.resolved_at.is_none());
    let body = html! {
        @if open.is_empty() {
            p.none { "No open alerts." }
        } @else {
            (open_alerts(&open, open.len(), now))
        }
        section aria-labelledby="resolved-h" {
            h2 id="resolved-h" { "Recently resolved" }
            @if resolved.is_empty() {
                p.none { "None yet." }
            } @else {
                div.scroll {
                    table.alerts {
                        tr { th scope="col" { "Alert" } th scope="col" { "Raised" } th scope="col" { "Acknowledged" } th scope="col" { "Resolved" } }
                        @for a in &resolved {
                            tr {
                                td { strong { (a.severity) } ": " (a.message) }
                                td { (super::layout::date_time(a.raised_at)) }
                                td {
                                    @match (&a.acknowledged_by, a.acknowledged_at) {
                                        (Some(by), Some(at)) => { (by) ", " (super::layout::date_time(at)) }
                                        _ => { "not acknowledged" }
                                    }
                                }
                                td { @if let Some(t) = a.resolved_at { (super::layout::date_time(t)) } }
                            }
                        }
                    }
                }
            }
        }
    };
    let frame = super::layout::Frame {
        gateway: &state.gateway_name,
        section: super::layout::Section::Alerts,
        now,
        live: Some("readings alerts"),
    };
    Ok(axum::response::Html(
        super::layout::page(frame, "Alerts", body).into_string(),
    ))
}
