//! `/api/v1/devices`: the device registry with its pairing state, and
//! `/api/v1/devices/{address}/assignment`: assigns a device to a resident or a
//! room, or un-assigns it, while the gateway runs. The forms on the /pairing page
//! do the same.
//!
//! `/api/v1/devices/{address}/key` sets or removes the encryption (bind) key of
//! a sensor that encrypts its advertisements (BTHome, pvvx, MiBeacon); the key
//! is written, never read back out.
//!
//! An assignment or un-assignment is committed to the `devices` table, with its
//! line in the pairing record, before it takes effect: only then does ingest
//! attribute (or stop attributing) the device's readings and the BLE source start
//! (or stop starting) GATT sessions with it, so a restart never undoes it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::{Deserialize, Serialize};

use super::{AppState, Caller, WebError, read};
use crate::ble::session::kind_from_services;
use crate::decode::{BindKey, parse_bind_key};
use crate::model::{Device, DeviceAddress, DeviceKind, ResidentId, Subject, Timestamp};
use crate::store::{DeviceState, PairingRecord, RegistryChange};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    pub resident_id: Option<i64>,
    pub room: Option<String>,
}

#[derive(Serialize)]
pub struct AssignmentJson {
    pub address: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

#[derive(Serialize)]
pub struct DeviceJson {
    pub address: String,
    pub kind: &'static str,
    pub model: Option<String>,
    pub name: Option<String>,
    pub resident_id: Option<i64>,
    pub room: Option<String>,
    pub paired: bool,
    pub bonded_at: Option<String>,
    pub assigned_at: Option<String>,
    /// dBm, as last heard.
    pub rssi_dbm: Option<i16>,
    pub battery_percent: Option<u8>,
    pub last_seen: Option<String>,
    /// Whether staff gave it an encryption key (the key is never shown).
    pub encrypted: bool,
}

impl From<DeviceState> for DeviceJson {
    fn from(d: DeviceState) -> Self {
        let (resident_id, room) = subject_parts(&d.device.subject);
        DeviceJson {
            address: d.device.address.to_string(),
            kind: d.device.kind.as_str(),
            model: d.device.model,
            name: d.device.name,
            resident_id,
            room,
            paired: d.paired,
            bonded_at: d.bonded_at.map(Timestamp::to_rfc3339),
            assigned_at: d.assigned_at.map(Timestamp::to_rfc3339),
            rssi_dbm: d.rssi,
            battery_percent: d.battery_percent,
            last_seen: d.last_seen.map(Timestamp::to_rfc3339),
            encrypted: d.has_key,
        }
    }
}

fn subject_parts(subject: &Subject) -> (Option<i64>, Option<String>) {
    match subject {
        Subject::Resident(id) => (Some(id.0), None),
        Subject::Room(room) => (None, Some(room.clone())),
        Subject::Unassigned => (None, None),
    }
}

/// A request the user got wrong, or a store that cannot write: the status and
/// the words to show.
type Refusal = (StatusCode, String);

fn parse_address(address: &str) -> Result<DeviceAddress, Refusal> {
    address
        .trim()
        .parse()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}")))
}

/// The response to a request: made from its result by `ok`, or the refusal's
/// status and words.
fn answer<T>(result: Result<T, Refusal>, ok: impl FnOnce(T) -> Response) -> Response {
    result.map_or_else(IntoResponse::into_response, ok)
}

fn not_stored(address: DeviceAddress, e: &impl std::fmt::Display) -> Refusal {
    tracing::error!(device = %address, error = %e, "registry change not stored");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "The gateway cannot store the change right now. Try again in a minute.".to_owned(),
    )
}

/// Validates, commits and applies one assignment.
pub(super) async fn apply_assign(
    state: &AppState,
    address: DeviceAddress,
    resident_id: Option<i64>,
    room: Option<String>,
    who: String,
) -> Result<AssignmentJson, Refusal> {
    let room = room.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    let subject = match (resident_id, room) {
        (Some(id), None) => Subject::Resident(ResidentId(id)),
        (None, Some(room)) => Subject::Room(room),
        _ => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "give exactly one of resident_id or a non-empty room".to_owned(),
            ));
        }
    };
    let (residents, devices) = read(&state.reader, |r| {
        Ok((r.residents_overview()?, r.devices()?))
    })
    .await
    .map_err(|e| not_stored(address, &e))?;
    if let Subject::Resident(id) = subject
        && !residents.iter().any(|r| r.id == id)
    {
        return Err((StatusCode::NOT_FOUND, format!("no resident {}", id.0)));
    }
    // Keep what the registry already knows; else take what the radio heard.
    let heard = state.ble.as_ref().and_then(|b| b.status.sighting(address));
    let device = match devices.into_iter().find(|d| d.address == address) {
        Some(d) => Device {
            subject: subject.clone(),
            ..d
        },
        None => Device {
            address,
            kind: heard
                .as_ref()
                .map_or(DeviceKind::Unknown, |s| kind_from_services(&s.services)),
            model: None,
            name: heard.and_then(|s| s.name),
            subject: subject.clone(),
        },
    };
    let kind = device.kind.as_str();
    let (resident_id, room) = subject_parts(&subject);
    let what = match (&resident_id, &room) {
        (Some(id), _) => format!("assigned to resident {id}"),
        (_, Some(room)) => format!("assigned to room {room}"),
        _ => "unassigned".to_owned(),
    };
    let at = Timestamp::now();
    let record = PairingRecord {
        at,
        device: Some(address),
        what: what.clone(),
        who: who.clone(),
        change: RegistryChange::Assigned(device),
    };
    if let Err(e) = state.store.record(record).await {
        return Err(not_stored(address, &e));
    }
    // From the committed time on: what the device measured before belongs to
    // whom it belonged to then (issue 15).
    state.registry.assign_since(address, subject, at);
    state.pairing.log.remember(Some(address), what, &who);
    Ok(AssignmentJson {
        address: address.to_string(),
        kind,
        resident_id,
        room,
    })
}

/// Validates, commits and applies one un-assignment.
async fn apply_unassign(
    state: &AppState,
    address: DeviceAddress,
    who: String,
) -> Result<(), Refusal> {
    let devices = read(&state.reader, |r| r.devices())
        .await
        .map_err(|e| not_stored(address, &e))?;
    match devices.iter().find(|d| d.address == address) {
        None => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("{address} is not a registered device"),
            ));
        }
        Some(d) if d.subject == Subject::Unassigned => {
            return Err((
                StatusCode::CONFLICT,
                format!("{address} is not assigned to anyone"),
            ));
        }
        Some(_) => {}
    }
    let what = "unassigned: readings no longer attributed";
    let record = PairingRecord {
        at: Timestamp::now(),
        device: Some(address),
        what: what.to_owned(),
        who: who.clone(),
        change: RegistryChange::Unassigned,
    };
    if let Err(e) = state.store.record(record).await {
        return Err(not_stored(address, &e));
    }
    state.registry.unassign(address);
    state.pairing.log.remember(Some(address), what, &who);
    Ok(())
}

/// `GET /api/v1/devices`: every registered device with its pairing state.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<DeviceJson>>, WebError> {
    let devices = read(&state.reader, |r| r.device_states()).await?;
    Ok(Json(devices.into_iter().map(DeviceJson::from).collect()))
}

/// `PUT /api/v1/devices/{address}/assignment` with `{"resident_id": 1}` or
/// `{"room": "Lounge"}`.
pub async fn assign(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(address): Path<String>,
    Json(req): Json<AssignRequest>,
) -> Response {
    let result = async {
        let address = parse_address(&address)?;
        apply_assign(&state, address, req.resident_id, req.room, who).await
    }
    .await;
    answer(result, |body| (StatusCode::OK, Json(body)).into_response())
}

/// `DELETE /api/v1/devices/{address}/assignment`: the device belongs to nobody
/// from now on; its readings are no longer attributed (or stored).
pub async fn unassign(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(address): Path<String>,
) -> Response {
    let result = async {
        let address = parse_address(&address)?;
        apply_unassign(&state, address, who).await
    }
    .await;
    answer(result, |()| StatusCode::NO_CONTENT.into_response())
}

/// What a staff form asks for (the Devices page and the pairing guide): the
/// sensor, and a resident chosen from the list or a room typed, in plain words
/// when it is neither or both.
pub(super) fn staff_assignment(
    address: &str,
    resident_id: &str,
    room: String,
) -> Result<(DeviceAddress, Option<i64>, Option<String>), Refusal> {
    let address = parse_address(address)?;
    let resident_id = match resident_id.trim() {
        "" => None,
        id => Some(id.parse::<i64>().map_err(|_| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "choose a resident from the list".to_owned(),
            )
        })?),
    };
    let room = Some(room).filter(|r| !r.trim().is_empty());
    if resident_id.is_some() && room.is_some() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "choose a resident or type a room, not both".to_owned(),
        ));
    }
    Ok((address, resident_id, room))
}

/// The staff form: assign to a resident (chosen from a list) or type a room.
#[derive(Deserialize)]
pub struct AssignForm {
    pub address: String,
    /// Empty when a room is given.
    #[serde(default)]
    pub resident_id: String,
    #[serde(default)]
    pub room: String,
    /// "device": back to the device's own page.
    #[serde(default)]
    pub back: String,
}

/// `POST /pairing/assign` (form): back to the page, or the reason in plain words.
pub async fn page_assign(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<AssignForm>,
) -> Response {
    let result = async {
        let (address, resident_id, room) =
            staff_assignment(&form.address, &form.resident_id, form.room.clone())?;
        apply_assign(&state, address, resident_id, room, who).await
    }
    .await;
    answer(result, |_| {
        super::device_page::back(&form.back, &form.address).into_response()
    })
}

/// The staff form: un-assign one device.
#[derive(Deserialize)]
pub struct UnassignForm {
    pub address: String,
    /// "device": back to the device's own page.
    #[serde(default)]
    pub back: String,
}

/// `POST /pairing/unassign` (form): back to the page, or the reason.
pub async fn page_unassign(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<UnassignForm>,
) -> Response {
    let result = async {
        let address = parse_address(&form.address)?;
        apply_unassign(&state, address, who).await
    }
    .await;
    answer(result, |()| {
        super::device_page::back(&form.back, &form.address).into_response()
    })
}

/// Validates, commits and applies a new key (`Some`) or the removal of the key
/// (`None`). The change is committed, with its line in the pairing record (which
/// never holds the key), before the decoder uses it.
async fn apply_key(
    state: &AppState,
    address: DeviceAddress,
    key: Option<BindKey>,
    who: String,
) -> Result<(), Refusal> {
    let devices = read(&state.reader, |r| r.devices())
        .await
        .map_err(|e| not_stored(address, &e))?;
    if !devices.iter().any(|d| d.address == address) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("{address} is not a registered device: assign it first"),
        ));
    }
    if key.is_none() && !state.registry.has_key(address) {
        return Err((
            StatusCode::CONFLICT,
            format!("{address} has no encryption key"),
        ));
    }
    let (what, change) = match key {
        Some(key) => ("encryption key set", RegistryChange::KeySet(key)),
        None => ("encryption key removed", RegistryChange::KeyCleared),
    };
    let record = PairingRecord {
        at: Timestamp::now(),
        device: Some(address),
        what: what.to_owned(),
        who: who.clone(),
        change,
    };
    if let Err(e) = state.store.record(record).await {
        return Err(not_stored(address, &e));
    }
    match key {
        Some(key) => state.registry.set_key(address, key),
        None => {
            state.registry.clear_key(address);
        }
    }
    state.pairing.log.remember(Some(address), what, &who);
    Ok(())
}

fn parse_key(text: &str) -> Result<BindKey, Refusal> {
    parse_bind_key(text).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_owned()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// 32 hex digits.
    pub key: String,
}

/// `PUT /api/v1/devices/{address}/key` with `{"key": "<32 hex digits>"}`.
pub async fn set_key(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(address): Path<String>,
    Json(req): Json<KeyRequest>,
) -> Response {
    let result = async {
        let address = parse_address(&address)?;
        let key = parse_key(&req.key)?;
        apply_key(&state, address, Some(key), who).await
    }
    .await;
    answer(result, |()| StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/v1/devices/{address}/key`: its encrypted data can no longer be read.
pub async fn clear_key(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(address): Path<String>,
) -> Response {
    let result = async {
        let address = parse_address(&address)?;
        apply_key(&state, address, None, who).await
    }
    .await;
    answer(result, |()| StatusCode::NO_CONTENT.into_response())
}

/// The staff form: a device's encryption key.
#[derive(Deserialize)]
pub struct KeyForm {
    pub address: String,
    #[serde(default)]
    pub key: String,
    /// "device": back to the device's own page.
    #[serde(default)]
    pub back: String,
}

/// `POST /pairing/key` (form): back to the page, or the reason.
pub async fn page_set_key(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<KeyForm>,
) -> Response {
    let result = async {
        let address = parse_address(&form.address)?;
        let key = parse_key(&form.key)?;
        apply_key(&state, address, Some(key), who).await
    }
    .await;
    answer(result, |()| {
        super::device_page::back(&form.back, &form.address).into_response()
    })
}

/// `POST /pairing/key/remove` (form): back to the page, or the reason.
pub async fn page_clear_key(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<UnassignForm>,
) -> Response {
    let result = async {
        let address = parse_address(&form.address)?;
        apply_key(&state, address, None, who).await
    }
    .await;
    answer(result, |()| {
        super::device_page::back(&form.back, &form.address).into_response()
    })
}
