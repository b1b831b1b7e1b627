//! What nurses and carers enter about a resident: observation sets (respiration
//! rate, consciousness, air or oxygen, and any vital sign measured by hand), the
//! SpO₂ scale, and the alert limits.
//!
//! - `GET`/`POST /residents/{id}/observations`, `POST /api/v1/residents/{id}/observations`
//! - `GET /residents/{id}/clinical`, `POST /residents/{id}/clinical/scale`,
//!   `POST /residents/{id}/clinical/thresholds`, `PUT /api/v1/residents/{id}/spo2-scale`
//!
//! An observation set becomes ordinary readings (device `00:00:00:00:00:00`,
//! with units and the time it was taken), committed by the store writer, shown
//! on the tile, scored by NEWS2 with the sensor values and forwarded by the
//! uplink like every reading; `observation_sets` records who entered it
//! (`staff:<username>`).
//!
//! Who entered a set or changed a setting is always the signed-in caller
//! ([`Caller`]), never a typed name; the JSON API refuses the fields that once
//! carried one (`entered_by`, `set_by`) and says why.

use std::collections::HashMap;
use std::sync::PoisonError;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::alert_page::{Retired, retired};
use super::{AppState, Caller, WebError, csrf_field};
use crate::clinical::news2::{Consciousness, Parameter, Spo2Scale};
use crate::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value,
};
use crate::store::StoreError;

/// The SpO₂ scale of every resident (scale 1 unless a nurse chose 2).
pub struct Scales(HashMap<i64, Spo2Scale>);

impl Scales {
    pub async fn load(state: &AppState) -> Result<Scales, WebError> {
        let book = state.alerts.clone();
        let map = tokio::task::spawn_blocking(move || {
            book.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .spo2_scales()
        })
        .await??;
        Ok(Scales(map))
    }

    pub fn of(&self, resident: i64) -> Spo2Scale {
        self.0.get(&resident).copied().unwrap_or_default()
    }
}

pub fn scale_number(s: Spo2Scale) -> u8 {
    match s {
        Spo2Scale::One => 1,
        Spo2Scale::Two => 2,
    }
}

fn acvpu_code(c: Consciousness) -> f64 {
    match c {
        Consciousness::Alert => 0.0,
        Consciousness::Confusion => 1.0,
        Consciousness::Voice => 2.0,
        Consciousness::Pain => 3.0,
        Consciousness::Unresponsive => 4.0,
    }
}

/// Runs a blocking call on the alert book off the executor.
async fn with_book<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut crate::store::AlertBook) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WebError> {
    let book = state.alerts.clone();
    Ok(tokio::task::spawn_blocking(move || {
        f(&mut book.lock().unwrap_or_else(PoisonError::into_inner))
    })
    .await??)
}

/// The resident's name, or `None` when there is no such (current) resident.
async fn resident_name(state: &AppState, id: i64) -> Result<Option<String>, WebError> {
    let rows = super::read(&state.reader, |r| r.residents_overview()).await?;
    Ok(rows
        .into_iter()
        .find(|r| r.id.0 == id)
        .map(|r| r.display_name))
}

fn no_resident(id: i64) -> Response {
    (StatusCode::NOT_FOUND, format!("no such resident {id}")).into_response()
}

// ---------------------------------------------------------------------------
// Observation sets

/// An observation set as typed: every field optional text, as a form sends it.
/// The API takes the same names in JSON. (The form's `csrf` field never reaches
/// here: the auth middleware takes it out once checked.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationInput {
    /// Refused: the set is recorded as entered by the signed-in user.
    #[serde(default)]
    pub entered_by: Retired,
    /// How long ago they were taken, in whole minutes; empty or absent: now.
    #[serde(default, deserialize_with = "text_or_number")]
    pub minutes_ago: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub resp_rate: Option<String>,
    /// A, C, V, P or U.
    #[serde(default)]
    pub consciousness: Option<String>,
    /// "yes" (on supplemental oxygen) or "no" (air); JSON may use true/false.
    #[serde(default, deserialize_with = "text_or_bool")]
    pub on_oxygen: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub spo2: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub systolic: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub pulse: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub temperature: Option<String>,
}

fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        S(String),
        N(serde_json::Number),
    }
    Ok(Option::<T>::deserialize(d)?.map(|t| match t {
        T::S(s) => s,
        T::N(n) => n.to_string(),
    }))
}

fn text_or_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        S(String),
        B(bool),
    }
    Ok(Option::<T>::deserialize(d)?.map(|t| match t {
        T::S(s) => s,
        T::B(true) => "yes".to_owned(),
        T::B(false) => "no".to_owned(),
    }))
}

/// A validated observation set.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationSet {
    pub minutes_ago: u32,
    pub values: Vec<(Quantity, f64, Unit)>,
}

/// A numeric field of the form: (text, label, quantity, unit, lowest, highest,
/// whole numbers only).
type NumberField<'a> = (&'a Option<String>, &'a str, Quantity, Unit, Parameter, bool);

/// The longest ago a set may be entered for: older ones are stale on arrival.
const MAX_MINUTES_AGO: u32 = 60;

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Checks a typed set; every problem is reported in plain words, all at once.
pub fn validate(input: &ObservationInput) -> Result<ObservationSet, Vec<String>> {
    let mut errors = Vec::new();
    let mut values = Vec::new();
    if input.entered_by.0 {
        errors.push(format!("{}.", retired("entered_by")));
    }
    let mut minutes_ago = 0;
    if let Some(m) = given(&input.minutes_ago) {
        match m.parse::<u32>() {
            Ok(n) if n <= MAX_MINUTES_AGO => minutes_ago = n,
            _ => errors.push(format!(
                "\"Taken\" must be a whole number of minutes ago, 0 to {MAX_MINUTES_AGO} (you entered {m:?})."
            )),
        }
    }
    // (field, label, quantity, unit, parameter, whole numbers only); the ranges are
    // the scorer's own (`Parameter::plausible_range`), so the form refuses exactly
    // what the score would leave out as implausible.
    let numbers: [NumberField<'_>; 5] = [
        (
            &input.resp_rate,
            "Respiration rate",
            Quantity::RespirationRate,
            Unit::PerMinute,
            Parameter::RespRate,
            true,
        ),
        (
            &input.spo2,
            "SpO2",
            Quantity::Spo2,
            Unit::Percent,
            Parameter::Spo2,
            true,
        ),
        (
            &input.systolic,
            "Systolic blood pressure",
            Quantity::SystolicPressure,
            Unit::MillimetreOfMercury,
            Parameter::Systolic,
            true,
        ),
        (
            &input.pulse,
            "Pulse",
            Quantity::PulseRate,
            Unit::PerMinute,
            Parameter::Pulse,
            true,
        ),
        (
            &input.temperature,
            "Temperature",
            Quantity::BodyTemperature,
            Unit::Celsius,
            Parameter::Temperature,
            false,
        ),
    ];
    for (field, label, q, unit, param, whole) in numbers {
        let Some((lo, hi, _)) = param.plausible_range() else {
            // Every parameter above has a range; never drop a value silently.
            errors.push(format!("{label} cannot be entered as a number."));
            continue;
        };
        let Some(text) = given(field) else { continue };
        let n = text
            .replace(',', ".")
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite());
        match n {
            Some(n) if (lo..=hi).contains(&n) && (!whole || n.fract() == 0.0) => {
                values.push((q, n, unit));
            }
            Some(n) if whole && n.fract() != 0.0 && (lo..=hi).contains(&n) => errors.push(format!(
                "{label} must be a whole number ({} {}).",
                text,
                unit.symbol()
            )),
            _ => errors.push(format!(
                "{label} must be a number from {lo} to {hi} {} (you entered {text:?}).",
                unit.symbol()
            )),
        }
    }
    if let Some(c) = given(&input.consciousness) {
        match Consciousness::parse(c) {
            Some(c) => values.push((Quantity::Consciousness, acvpu_code(c), Unit::One)),
            None => errors.push(format!(
                "Consciousness must be one of A (alert), C (new confusion), V (voice), P (pain), U (unresponsive); you entered {c:?}."
            )),
        }
    }
    if let Some(o) = given(&input.on_oxygen) {
        match o.to_ascii_lowercase().as_str() {
            "yes" | "y" | "oxygen" => values.push((Quantity::SupplementalOxygen, 1.0, Unit::One)),
            "no" | "n" | "air" => values.push((Quantity::SupplementalOxygen, 0.0, Unit::One)),
            _ => errors.push(format!(
                "Oxygen must be \"yes\" or \"no\" (air); you entered {o:?}."
            )),
        }
    }
    if values.is_empty() && errors.is_empty() {
        errors.push("Enter at least one observation.".to_owned());
    }
    if errors.is_empty() {
        Ok(ObservationSet {
            minutes_ago,
            values,
        })
    } else {
        Err(errors)
    }
}

/// What the API answers for a stored set.
#[derive(Serialize)]
pub struct StoredSetJson {
    pub resident_id: i64,
    pub taken_at: String,
    pub entered_by: String,
    pub reading_ids: Vec<String>,
}

#[derive(Serialize)]
struct ErrorsJson {
    errors: Vec<String>,
}

/// Commits the set's readings through the store writer together with the
/// record that `username` entered them. `Err` is the response to give instead (no such
/// resident, or the set could not be stored, said so that nobody believes it was).
async fn store_set(
    state: &AppState,
    resident: i64,
    set: ObservationSet,
    username: &str,
) -> Result<Result<StoredSetJson, Response>, WebError> {
    if resident_name(state, resident).await?.is_none() {
        return Ok(Err(no_resident(resident)));
    }
    let now = Timestamp::now();
    let taken_at = now.saturating_sub(std::time::Duration::from_secs(
        u64::from(set.minutes_ago) * 60,
    ));
    let synced = crate::system::clock_synchronised();
    let readings: Vec<Reading> = set
        .values
        .iter()
        .map(|(q, v, unit)| Reading {
            id: ReadingId::new(now),
            device: DeviceAddress::STAFF,
            subject: Subject::Resident(ResidentId(resident)),
            quantity: *q,
            value: Value::Number(*v),
            unit: *unit,
            measured_at: Some(taken_at),
            received_at: now,
            clock_synced: synced,
        })
        .collect();
    let ids: Vec<ReadingId> = readings.iter().map(|r| r.id).collect();
    let by = format!("staff:{username}");
    let entered = crate::store::EnteredBy {
        resident_id: resident,
        taken_at,
        entered_by: by.clone(),
        entered_at: now,
    };
    // The readings and who entered them commit together, or not at all.
    if let Err(e) = state.store.ingest_entered(readings, entered).await {
        tracing::error!(resident, error = %e, "observation set not stored");
        return Ok(Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "The observations were NOT saved: the gateway cannot store them right now. Write them down and tell the nurse in charge.",
        )
            .into_response()));
    }
    Ok(Ok(StoredSetJson {
        resident_id: resident,
        taken_at: taken_at.to_rfc3339(),
        entered_by: by,
        reading_ids: ids.iter().map(|i| i.to_string()).collect(),
    }))
}

/// `POST /api/v1/residents/{id}/observations`: 201 with the reading ids, 422
/// with `{"errors": [...]}` in plain words, 404 for no such resident.
pub async fn api_observations(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
    Caller(who): Caller,
    Json(input): Json<ObservationInput>,
) -> Result<Response, WebError> {
    let set = match validate(&input) {
        Ok(s) => s,
        Err(errors) => {
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(ErrorsJson { errors }),
            )
                .into_response());
        }
    };
    Ok(match store_set(&state, resident, set, &who).await? {
        Ok(stored) => (StatusCode::CREATED, Json(stored)).into_response(),
        Err(r) => r,
    })
}

/// `GET /residents/{id}/observations`: the form.
pub async fn observations_page(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
) -> Result<Response, WebError> {
    let Some(name) = resident_name(&state, resident).await? else {
        return Ok(no_resident(resident));
    };
    Ok(
        Html(observation_form(resident, &name, &ObservationInput::default(), &[]).into_string())
            .into_response(),
    )
}

/// `POST /residents/{id}/observations` from the form: stored and back to the
/// overview, or the form again with what was typed and what is wrong.
pub async fn observations_submit(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
    Caller(who): Caller,
    axum::Form(input): axum::Form<ObservationInput>,
) -> Result<Response, WebError> {
    let Some(name) = resident_name(&state, resident).await? else {
        return Ok(no_resident(resident));
    };
    match validate(&input) {
        Ok(set) => Ok(match store_set(&state, resident, set, &who).await? {
            Ok(_) => Redirect::to("/").into_response(),
            Err(r) => r,
        }),
        Err(errors) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(observation_form(resident, &name, &input, &errors).into_string()),
        )
            .into_response()),
    }
}

fn observation_form(
    resident: i64,
    name: &str,
    input: &ObservationInput,
    errors: &[String],
) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let body = html! {
        main {
            @if !errors.is_empty() {
                div.warning role="alert" {
                    p { "The observations were not saved:" }
                    ul { @for e in errors { li { (e) } } }
                }
            }
            form.obs method="post" action=(format!("/residents/{resident}/observations")) {
                (csrf_field())
                p { "Leave a box empty if you did not measure it. Values from sensors in the last hour are scored with these." }
                label { "Taken (minutes ago, 0 = now) " input name="minutes_ago" inputmode="numeric" value=(v(&input.minutes_ago)); }
                label { "Respiration rate (breaths/min) " input name="resp_rate" inputmode="numeric" value=(v(&input.resp_rate)); }
                fieldset {
                    legend { "Consciousness (ACVPU)" }
                    @for (code, words) in [("A", "Alert"), ("C", "New confusion"), ("V", "Voice"), ("P", "Pain"), ("U", "Unresponsive")] {
                        label {
                            input type="radio" name="consciousness" value=(code)
                                checked[input.consciousness.as_deref() == Some(code)];
                            " " (code) " — " (words)
                        }
                    }
                }
                fieldset {
                    legend { "Air or oxygen" }
                    label { input type="radio" name="on_oxygen" value="no" checked[input.on_oxygen.as_deref() == Some("no")]; " Air" }
                    label { input type="radio" name="on_oxygen" value="yes" checked[input.on_oxygen.as_deref() == Some("yes")]; " On oxygen" }
                }
                label { "SpO2 (%) " input name="spo2" inputmode="numeric" value=(v(&input.spo2)); }
                label { "Systolic BP (mmHg) " input name="systolic" inputmode="numeric" value=(v(&input.systolic)); }
                label { "Pulse (/min) " input name="pulse" inputmode="numeric" value=(v(&input.pulse)); }
                label { "Temperature (°C) " input name="temperature" inputmode="decimal" value=(v(&input.temperature)); }
                button { "Save observations" }
            }
        }
    };
    super::pages::form_page(&format!("Observations for {name}"), Timestamp::now(), body)
}

// ---------------------------------------------------------------------------
// SpO2 scale and alert limits

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// 1 or 2.
    pub scale: u8,
    /// Refused: the scale is recorded as set by the signed-in user.
    #[serde(default)]
    set_by: Retired,
}

fn parse_scale(n: u8) -> Option<Spo2Scale> {
    match n {
        1 => Some(Spo2Scale::One),
        2 => Some(Spo2Scale::Two),
        _ => None,
    }
}

/// Sets the scale as set by `by`; the response for API and form alike, `None`
/// when it worked.
async fn set_scale(
    state: &AppState,
    resident: i64,
    scale: u8,
    by: String,
) -> Result<Option<Response>, WebError> {
    let Some(scale) = parse_scale(scale) else {
        return Ok(Some(
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "the SpO2 scale is 1 or 2 (2 only for confirmed hypercapnic respiratory failure)",
            )
                .into_response(),
        ));
    };
    let done = with_book(state, move |b| {
        match b.set_spo2_scale(resident, scale, &by, Timestamp::now()) {
            Ok(()) => Ok(true),
            Err(StoreError::UnknownResident(_)) => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await?;
    Ok((!done).then(|| no_resident(resident)))
}

/// `PUT /api/v1/residents/{id}/spo2-scale` with `{"scale": 2}`.
pub async fn api_scale(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
    Caller(who): Caller,
    Json(req): Json<ScaleRequest>,
) -> Result<Response, WebError> {
    if req.set_by.0 {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, retired("set_by")).into_response());
    }
    Ok(set_scale(&state, resident, req.scale, who)
        .await?
        .unwrap_or_else(|| StatusCode::NO_CONTENT.into_response()))
}

#[derive(Deserialize)]
pub struct ScaleForm {
    pub scale: u8,
}

/// `POST /residents/{id}/clinical/scale` from the settings page.
pub async fn scale_submit(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
    Caller(who): Caller,
    axum::Form(f): axum::Form<ScaleForm>,
) -> Result<Response, WebError> {
    Ok(set_scale(&state, resident, f.scale, who)
        .await?
        .unwrap_or_else(|| {
            Redirect::to(&format!("/residents/{resident}/clinical")).into_response()
        }))
}

/// The thresholds form: every limit as text, as the form sends it.
#[derive(Deserialize)]
pub struct ThresholdsForm {
    pub spo2_low: String,
    pub pulse_low: String,
    pub pulse_high: String,
    pub systolic_low: String,
    pub systolic_high: String,
    pub temperature_low: String,
    pub temperature_high: String,
}

/// `POST /residents/{id}/clinical/thresholds` from the settings page; the same
/// checks as `PUT /api/v1/residents/{id}/thresholds`.
pub async fn thresholds_submit(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
    Caller(who): Caller,
    axum::Form(f): axum::Form<ThresholdsForm>,
) -> Result<Response, WebError> {
    let num = |s: &str| {
        s.trim()
            .replace(',', ".")
            .parse::<f64>()
            .unwrap_or(f64::NAN)
    };
    let t = crate::clinical::alert_rules::Thresholds {
        spo2_low: num(&f.spo2_low),
        pulse_low: num(&f.pulse_low),
        pulse_high: num(&f.pulse_high),
        systolic_low: num(&f.systolic_low),
        systolic_high: num(&f.systolic_high),
        temperature_low: num(&f.temperature_low),
        temperature_high: num(&f.temperature_high),
    };
    let r = super::alert_page::apply_thresholds(&state, resident, t, who).await?;
    Ok(if r.status() == StatusCode::NO_CONTENT {
        Redirect::to(&format!("/residents/{resident}/clinical")).into_response()
    } else {
        r
    })
}

/// `GET /residents/{id}/clinical`: the SpO₂ scale and the alert limits, with
/// the chart's defaults until a nurse sets them.
pub async fn clinical_page(
    State(state): State<AppState>,
    Path(resident): Path<i64>,
) -> Result<Response, WebError> {
    let Some(name) = resident_name(&state, resident).await? else {
        return Ok(no_resident(resident));
    };
    let (scales, thresholds, sets) = with_book(&state, move |b| {
        Ok((
            b.spo2_scales()?,
            b.thresholds()?,
            b.observation_sets(resident, 5)?,
        ))
    })
    .await?;
    let scale = scales.get(&resident).copied().unwrap_or_default();
    let custom = thresholds.get(&resident).copied();
    let t = custom.unwrap_or_default();
    let field = |name: &str, label: &str, v: f64| {
        html! { label { (label) " " input name=(name) inputmode="decimal" required value=(v); } }
    };
    let body = html! {
        main {
            section {
                h2 { "SpO2 scale" }
                p { "Now: scale " (scale_number(scale)) ". Use scale 2 only for a resident with confirmed hypercapnic respiratory failure, on a clinician's decision." }
                form method="post" action=(format!("/residents/{resident}/clinical/scale")) {
                    (csrf_field())
                    label { input type="radio" name="scale" value="1" checked[scale == Spo2Scale::One]; " Scale 1" }
                    label { input type="radio" name="scale" value="2" checked[scale == Spo2Scale::Two]; " Scale 2" }
                    button { "Set scale" }
                }
            }
            section {
                h2 { "Alert limits" }
                p {
                    @if custom.is_some() { "Set by a nurse." } @else { "The NEWS2 chart's defaults; no limits set for this resident yet." }
                    " A value at or beyond a limit raises an alert."
                }
                form method="post" action=(format!("/residents/{resident}/clinical/thresholds")) {
                    (csrf_field())
                    (field("spo2_low", "SpO2 at or below (%)", t.spo2_low))
                    (field("pulse_low", "Pulse at or below (/min)", t.pulse_low))
                    (field("pulse_high", "Pulse at or above (/min)", t.pulse_high))
                    (field("systolic_low", "Systolic BP at or below (mmHg)", t.systolic_low))
                    (field("systolic_high", "Systolic BP at or above (mmHg)", t.systolic_high))
                    (field("temperature_low", "Temperature at or below (°C)", t.temperature_low))
                    (field("temperature_high", "Temperature at or above (°C)", t.temperature_high))
                    button { "Save limits" }
                }
            }
            section {
                h2 { "Recent observation sets" }
                @if sets.is_empty() {
                    p.none { "None entered yet." }
                }
                ul {
                    @for (at, by, ids) in &sets {
                        li { (super::layout::date_time(*at)) " — " (by) " — " (ids.len()) " values" }
                    }
                }
            }
        }
    };
    Ok(Html(
        super::pages::form_page(
            &format!("Clinical settings for {name}"),
            Timestamp::now(),
            body,
        )
        .into_string(),
    )
    .into_response())
}
