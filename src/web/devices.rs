//! `/api/v1/devices/{address}/assignment`: assigns a device to a resident or a
//! room while the gateway runs. The assignment is committed to the `devices`
//! table first, then takes effect at once: ingest attributes the device's
//! readings to the subject, and the BLE source starts a GATT session with it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{AppState, WebError, read};
use crate::ble::session::kind_from_services;
use crate::model::{Device, DeviceAddress, DeviceKind, ResidentId, Subject};

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

/// `PUT /api/v1/devices/{address}/assignment` with `{"resident_id": 1}` or
/// `{"room": "Lounge"}`.
pub async fn assign(
    State(state): State<AppState>,
    Path(address): Path<String>,
    Json(req): Json<AssignRequest>,
) -> Result<Response, WebError> {
    let address: DeviceAddress = match address.parse() {
        Ok(a) => a,
        Err(e) => return Ok((StatusCode::BAD_REQUEST, format!("{e}")).into_response()),
    };
    let subject = match (req.resident_id, req.room) {
        (Some(id), None) => Subject::Resident(ResidentId(id)),
        (None, Some(room)) if !room.trim().is_empty() => Subject::Room(room.trim().to_owned()),
        _ => {
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                "give exactly one of resident_id or a non-empty room",
            )
                .into_response());
        }
    };
    let (residents, devices) = read(&state.reader, |r| {
        Ok((r.residents_overview()?, r.devices()?))
    })
    .await?;
    if let Subject::Resident(id) = subject
        && !residents.iter().any(|r| r.id == id)
    {
        return Ok((StatusCode::NOT_FOUND, format!("no resident {}", id.0)).into_response());
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
    if let Err(e) = state.store.provision(Vec::new(), vec![device]).await {
        tracing::error!(device = %address, error = %e, "assignment not stored");
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway cannot store the assignment right now. Try again in a minute.",
        )
            .into_response());
    }
    state.registry.assign(address, subject.clone());
    let (resident_id, room) = match subject {
        Subject::Resident(id) => (Some(id.0), None),
        Subject::Room(room) => (None, Some(room)),
        Subject::Unassigned => (None, None),
    };
    let what = match (&resident_id, &room) {
        (Some(id), _) => format!("assigned to resident {id}"),
        (_, Some(room)) => format!("assigned to room {room}"),
        _ => "unassigned".to_owned(),
    };
    state.pairing.log.record(Some(address), what);
    Ok((
        StatusCode::OK,
        Json(AssignmentJson {
            address: address.to_string(),
            kind,
            resident_id,
            room,
        }),
    )
        .into_response())
}
