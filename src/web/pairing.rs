//! `/api/v1/pairing`: open and close the pairing window, and see what is nearby,
//! what was paired and why. The staff page and `carehub pair` use it. Also
//! `/api/v1/bluetooth`: whether the BLE source is scanning and how often it had
//! to recover.
//!
//! The wire types here are this boundary's own; the domain types in
//! `crate::ble::pairing` carry no serde.

use std::time::Duration;

use axum::Form;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, Redirect};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::{Deserialize, Serialize};

use super::{AppState, Caller, WebError, read};
use crate::ble::agent::{self, ConfirmError, PasskeyError};
use crate::model::{DeviceAddress, Timestamp};
use crate::store::{PairingRecord, RegistryChange};

/// Most events of the record shown on the page and in the API.
const EVENTS_SHOWN: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenWindowRequest {
    pub seconds: u64,
}

#[derive(Serialize)]
pub struct WindowJson {
    pub open: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<String>,
}

#[derive(Serialize)]
pub struct NearbyJson {
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub registered: bool,
    pub paired: bool,
    /// Service UUIDs it advertises.
    pub services: Vec<String>,
    pub last_seen: String,
}

#[derive(Serialize)]
pub struct EventJson {
    pub at: String,
    pub device: Option<String>,
    pub what: String,
    /// Who asked: the caller's address, "cli (carehub pair)", or "gateway".
    pub who: Option<String>,
}

#[derive(Serialize)]
pub struct PasskeyRequestJson {
    pub address: String,
    pub asked_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyRequest {
    pub address: String,
    pub passkey: u32,
}

/// A numeric comparison waiting for staff (issue 18).
#[derive(Serialize)]
pub struct ConfirmRequestJson {
    pub address: String,
    /// The six-digit number BlueZ computed; the device should show the same.
    pub number: u32,
    pub since: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    pub address: String,
    pub accept: bool,
}

#[derive(Serialize)]
pub struct PairingResponse {
    pub window: WindowJson,
    /// Devices waiting for staff to type the passkey they display.
    pub passkey_requests: Vec<PasskeyRequestJson>,
    /// Devices waiting for staff to confirm the number they display (numeric
    /// comparison); never accepted without them.
    pub confirm_requests: Vec<ConfirmRequestJson>,
    pub allow_list: Vec<String>,
    /// Devices heard since start-up, newest first; empty when the source is not BLE.
    pub nearby: Vec<NearbyJson>,
    /// The newest 200 events of the pairing record from the database, oldest first.
    pub events: Vec<EventJson>,
}

fn window(state: &AppState) -> WindowJson {
    let closes = state.pairing.window_closes_at(Timestamp::now());
    WindowJson {
        open: closes.is_some(),
        closes_at: closes.map(Timestamp::to_rfc3339),
    }
}

/// `GET /api/v1/pairing`.
pub async fn status(State(state): State<AppState>) -> Result<Json<PairingResponse>, WebError> {
    let events = read(&state.reader, |r| r.pairing_events(EVENTS_SHOWN)).await?;
    let nearby = state
        .ble
        .as_ref()
        .map(|b| b.status.sightings())
        .unwrap_or_default()
        .into_iter()
        .map(|s| NearbyJson {
            address: s.address.to_string(),
            name: s.name,
            rssi: s.rssi,
            registered: s.registered,
            paired: s.paired,
            services: s.services.iter().map(ToString::to_string).collect(),
            last_seen: s.last_seen.to_rfc3339(),
        })
        .collect();
    // Oldest first, as version 1 of this API has always listed them.
    let events = events
        .into_iter()
        .rev()
        .map(|e| EventJson {
            at: e.at.to_rfc3339(),
            device: e.device,
            what: e.what,
            who: e.who,
        })
        .collect();
    let passkey_requests = pending_passkeys(&state)
        .into_iter()
        .map(|(a, t)| PasskeyRequestJson {
            address: a.to_string(),
            asked_at: t.to_rfc3339(),
        })
        .collect();
    let confirm_requests = state
        .ble
        .as_ref()
        .map(|b| b.passkeys.pending_confirms())
        .unwrap_or_default()
        .into_iter()
        .map(|c| ConfirmRequestJson {
            address: c.address.to_string(),
            number: c.number,
            since: c.since.to_rfc3339(),
        })
        .collect();
    Ok(Json(PairingResponse {
        window: window(&state),
        passkey_requests,
        confirm_requests,
        allow_list: state
            .pairing
            .allow_list()
            .iter()
            .map(ToString::to_string)
            .collect(),
        nearby,
        events,
    }))
}

/// `POST /api/v1/pairing/window` with `{"seconds": 120}`: opens the window.
pub async fn open_window(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<OpenWindowRequest>,
) -> Response {
    match state
        .pairing
        .open_window(Timestamp::now(), Duration::from_secs(req.seconds), &who)
    {
        Ok(_) => (StatusCode::OK, Json(window(&state))).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

/// `DELETE /api/v1/pairing/window`: closes it now.
pub async fn close_window(State(state): State<AppState>, Caller(who): Caller) -> Json<WindowJson> {
    state.pairing.close_window(&who);
    Json(window(&state))
}

#[derive(Serialize)]
pub struct UnpairJson {
    pub address: String,
    /// False when BlueZ held no such device (nothing to remove).
    pub removed: bool,
}

/// `DELETE /api/v1/pairing/devices/{address}`: removes the bond from BlueZ.
pub async fn unpair(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(address): Path<String>,
) -> Response {
    let address: DeviceAddress = match address.parse() {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}")).into_response(),
    };
    let Some(ble) = &state.ble else {
        return (
            StatusCode::CONFLICT,
            "the sensor source is not Bluetooth: there is nothing to un-pair",
        )
            .into_response();
    };
    match agent::unpair(&ble.adapter, address).await {
        Ok(removed) => {
            if removed {
                // BlueZ has dropped the bond already; record it before saying so.
                let record = PairingRecord {
                    at: Timestamp::now(),
                    device: Some(address),
                    what: "bond removed".to_owned(),
                    who: who.clone(),
                    change: RegistryChange::BondRemoved,
                };
                if let Err(e) = state.store.record(record).await {
                    tracing::error!(device = %address, error = %e, "bond removal not recorded");
                }
                ble.status.unpaired(address);
                state
                    .pairing
                    .log
                    .remember(Some(address), "bond removed", &who);
            }
            let body = UnpairJson {
                address: address.to_string(),
                removed,
            };
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            tracing::error!(device = %address, error = %e, "un-pairing failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Bluetooth did not answer; try again in a minute.",
            )
                .into_response()
        }
    }
}

#[derive(Serialize)]
pub struct BluetoothJson {
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    pub scanning: bool,
    pub rounds_started: u64,
    pub discovery_restarts: u64,
    pub adapter_losses: u64,
    pub bluez_restarts: u64,
    pub advertisements: u64,
    pub sessions_started: u64,
    pub sessions_failed: u64,
}

/// `GET /api/v1/bluetooth`: the BLE source's state and recovery counters.
pub async fn bluetooth(State(state): State<AppState>) -> Json<BluetoothJson> {
    use std::sync::atomic::Ordering::Relaxed;
    Json(match &state.ble {
        Some(b) => {
            let s = &b.status;
            BluetoothJson {
                source: "ble",
                adapter: Some(b.adapter.clone()),
                scanning: s.scanning.load(Relaxed),
                rounds_started: s.rounds_started.load(Relaxed),
                discovery_restarts: s.discovery_restarts.load(Relaxed),
                adapter_losses: s.adapter_losses.load(Relaxed),
                bluez_restarts: s.bluez_restarts.load(Relaxed),
                advertisements: s.advertisements.load(Relaxed),
                sessions_started: s.sessions_started.load(Relaxed),
                sessions_failed: s.sessions_failed.load(Relaxed),
            }
        }
        None => BluetoothJson {
            source: "simulator",
            adapter: None,
            scanning: false,
            rounds_started: 0,
            discovery_restarts: 0,
            adapter_losses: 0,
            bluez_restarts: 0,
            advertisements: 0,
            sessions_started: 0,
            sessions_failed: 0,
        },
    })
}

/// The staff form: open the window for `seconds`.
#[derive(Deserialize)]
pub struct WindowForm {
    pub seconds: u64,
}

/// `GET /pairing`: the staff page for pairing new sensors.
pub async fn page(State(state): State<AppState>) -> Result<Html<String>, WebError> {
    let (events, devices, residents) = read(&state.reader, |r| {
        Ok((
            r.pairing_events(EVENTS_SHOWN)?,
            r.device_states()?,
            r.residents_overview()?,
        ))
    })
    .await?;
    let now = Timestamp::now();
    let closes = state.pairing.window_closes_at(now);
    let nearby = state
        .ble
        .as_ref()
        .map(|b| b.status.sightings())
        .unwrap_or_default();
    let passkeys = pending_passkeys(&state);
    let confirms = state
        .ble
        .as_ref()
        .map(|b| b.passkeys.pending_confirms())
        .unwrap_or_default();
    let body = html! {
        section.pairing {
            @match closes {
                Some(c) => {
                    @let left_s = u64::try_from(c.unix_ms().saturating_sub(now.unix_ms())).unwrap_or(0).div_ceil(1000);
                    p {
                        strong { "Pairing is ON" } " for "
                        span #pairing-countdown role="timer" data-seconds-left=(left_s) { (countdown(left_s)) }
                        " more (until " time datetime=(c.to_rfc3339()) { (super::layout::clock(c)) } "). New sensors nearby will be paired; switch them on now."
                    }
                    form method="post" action="/pairing/close" { (super::csrf_field()) button type="submit" { "Stop pairing now" } }
                    // The countdown is in live.js: the CSP allows no inline script.
                    script src=(crate::web::assets::js_url()) defer {}
                }
                None => {
                    p { "Pairing is off: sensors nobody chose are listed below but never paired." }
                    form.guide method="post" action="/pairing/guide" { (super::csrf_field())
                        button type="submit" { "Pair a new sensor" }
                    }
                    form method="post" action="/pairing/window" { (super::csrf_field())
                        input type="hidden" name="seconds" value="120";
                        button type="submit" { "Pair new sensors (2 minutes)" }
                    }
                }
            }
            @for (address, _) in &passkeys {
                form.passkey method="post" action="/pairing/passkey" { (super::csrf_field())
                    label {
                        "Sensor " (address.to_string()) " shows a 6-digit number. Type it here: "
                        input type="text" name="passkey" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" required;
                    }
                    input type="hidden" name="address" value=(address.to_string());
                    button type="submit" { "Pair" }
                }
            }
            @for c in &confirms {
                p.confirm role="alert" {
                    "Sensor " (c.address.to_string()) " asks staff to check a number. "
                    a href=(format!("/pairing/guide?address={}", c.address)) { "Check the number" }
                }
            }
            h2 { "Nearby" }
            @if nearby.is_empty() {
                p.none { "Nothing heard yet." }
            } @else {
                // On a phone the table scrolls inside its box, not the whole page;
                // the box takes focus so a keyboard can scroll it too.
                div.scroll role="region" aria-label="Nearby devices" tabindex="0" {
                    table {
                        tr { th { "Device" } th { "Signal" } th { "State" } }
                        @for d in &nearby {
                            tr {
                                td { (d.name.as_deref().unwrap_or("(no name)")) br; small { (d.address.to_string()) } }
                                td { @if let Some(r) = d.rssi { (r) " dBm" } }
                                td {
                                    @if d.registered { "registered" } @else if d.paired { "paired, not assigned" } @else { "nearby, not paired" }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Devices" }
            (super::device_page::grouped(&devices, &residents, now))
            h2 { "Record" }
            @if events.is_empty() {
                p.none { "Nothing recorded yet." }
            } @else {
                ul {
                    @for e in &events {
                        li {
                            time datetime=(e.at.to_rfc3339()) { (super::layout::date_time(e.at)) } " "
                            @if let Some(a) = &e.device { (a) " " }
                            (event_words(&e.what))
                            @if let Some(who) = &e.who { " (by " (who) ")" }
                        }
                    }
                }
            }
        }
    };
    Ok(Html(
        super::pages::page(
            &state,
            super::layout::Section::Devices,
            "Devices and pairing",
            now,
            body,
        )
        .into_string(),
    ))
}

/// A recorded event's words for staff: the few events stored under a machine
/// name are said in words (issue 15: no wire names on a page).
fn event_words(what: &str) -> &str {
    match what {
        "spo2_scale" => "SpO₂ scale changed",
        other => other,
    }
}

/// "1 min 59 s", "45 s": the time left in the pairing window.
pub(super) fn countdown(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds} s"),
        _ => format!("{} min {} s", seconds / 60, seconds % 60),
    }
}

/// `POST /pairing/window` (form): opens the window, back to the page.
pub async fn page_open(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<WindowForm>,
) -> Response {
    match state
        .pairing
        .open_window(Timestamp::now(), Duration::from_secs(form.seconds), &who)
    {
        Ok(_) => Redirect::to("/pairing").into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

/// `POST /pairing/close` (form): closes the window, back to the page.
pub async fn page_close(State(state): State<AppState>, Caller(who): Caller) -> Redirect {
    state.pairing.close_window(&who);
    Redirect::to("/pairing")
}

fn pending_passkeys(state: &AppState) -> Vec<(DeviceAddress, Timestamp)> {
    state
        .ble
        .as_ref()
        .map(|b| b.passkeys.pending())
        .unwrap_or_default()
}

/// Hands a passkey to the waiting BlueZ request.
pub(super) fn give_passkey(state: &AppState, address: &str, passkey: u32, who: &str) -> Response {
    let address: DeviceAddress = match address.parse() {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}")).into_response(),
    };
    let Some(ble) = &state.ble else {
        return (StatusCode::NOT_FOUND, "the sensor source is not Bluetooth").into_response();
    };
    match ble.passkeys.answer(address, passkey) {
        Ok(()) => {
            state.pairing.log.record_change(
                Some(address),
                "passkey entered by staff",
                who,
                RegistryChange::Note,
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e @ PasskeyError::NoRequest(_)) => {
            (StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Err(e @ PasskeyError::OutOfRange) => {
            (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response()
        }
        Err(e @ PasskeyError::Gone) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

/// `POST /api/v1/pairing/passkey` with `{"address": "...", "passkey": 123456}`.
pub async fn passkey(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<PasskeyRequest>,
) -> Response {
    give_passkey(&state, &req.address, req.passkey, &who)
}

/// `POST /api/v1/pairing/confirm` with `{"address": "...", "accept": true}`:
/// staff say whether the device shows the number listed in
/// `confirm_requests`. Accepted, the pairing goes on; rejected, it ends with
/// no bond. Recorded either way, with who answered.
pub async fn confirm(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<ConfirmRequest>,
) -> Response {
    give_confirmation(&state, &req.address, req.accept, &who)
}

/// Gives BlueZ staff's answer to a number shown for confirmation, and records it.
pub(super) fn give_confirmation(
    state: &AppState,
    address: &str,
    accept: bool,
    who: &str,
) -> Response {
    let address: DeviceAddress = match address.trim().parse() {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}")).into_response(),
    };
    let Some(ble) = &state.ble else {
        return (StatusCode::NOT_FOUND, "the sensor source is not Bluetooth").into_response();
    };
    match ble.passkeys.confirm(address, accept) {
        Ok(number) => {
            let what = if accept {
                format!("number {number:06} confirmed by staff")
            } else {
                format!("number {number:06} rejected by staff: no bond")
            };
            state
                .pairing
                .log
                .record_change(Some(address), what, who, RegistryChange::Note);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e @ ConfirmError::NoRequest(_)) => {
            (StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Err(e @ ConfirmError::Gone) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

/// The staff form for a passkey.
#[derive(Deserialize)]
pub struct PasskeyForm {
    pub address: String,
    pub passkey: String,
}

/// Hands the passkey a nurse typed into a form (the Devices page's or the
/// guide's) to the waiting BlueZ request.
pub(super) fn give_typed_passkey(state: &AppState, form: &PasskeyForm, who: &str) -> Response {
    let Ok(passkey) = form.passkey.trim().parse::<u32>() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "a passkey is 6 digits, 000000 to 999999",
        )
            .into_response();
    };
    give_passkey(state, &form.address, passkey, who)
}

/// `POST /pairing/passkey` (form): back to the page, or the reason it failed.
pub async fn page_passkey(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<PasskeyForm>,
) -> Response {
    let res = give_typed_passkey(&state, &form, &who);
    if res.status().is_success() {
        Redirect::to("/pairing").into_response()
    } else {
        res
    }
}

/// `POST /devices/{address}/remove`: forgets the Bluetooth bond, back here.
pub async fn remove_from_device_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(address): Path<String>,
) -> Response {
    let back = format!("/devices/{}", address.trim());
    let res = unpair(State(state), caller, Path(address)).await;
    if res.status() == StatusCode::OK {
        Redirect::to(&back).into_response()
    } else {
        res
    }
}
