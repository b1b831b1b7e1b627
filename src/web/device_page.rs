//! The Devices list grouped by whom each sensor serves, and `/devices/{address}`:
//! one sensor's own page with its actions (assign elsewhere, un-assign, forget
//! the pairing, the encryption key for sensors that encrypt).
//!
//! The list carries no forms: a row is a link with the sensor's name, kind,
//! battery and when it was last heard, so that the page for a home's few dozen
//! sensors stays short on a tablet. The forms post to the same handlers as the
//! API (`devices`), with `back=device` to come back here.

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{Frame, Section};
use super::{AppState, WebError, describe_age, read};
use crate::model::{DeviceAddress, DeviceKind, Subject, Timestamp};
use crate::store::{DeviceState, ResidentOverview};

/// The sensor's own name, if it has one.
fn own_name(d: &DeviceState) -> Option<&str> {
    d.device.name.as_deref().filter(|n| !n.trim().is_empty())
}

/// The sensor's name, or its kind when it has none.
fn name(d: &DeviceState) -> &str {
    own_name(d).unwrap_or_else(|| d.device.kind.label())
}

/// Battery and last heard, in words.
fn state_words(d: &DeviceState, now: Timestamp) -> String {
    let heard = match d.last_seen {
        Some(t) => format!("heard {}", describe_age(t.age_at(now))),
        None => "never heard".to_owned(),
    };
    match d.battery_percent {
        Some(b) => format!("battery {b} % · {heard}"),
        None => heard,
    }
}

fn row(d: &DeviceState, now: Timestamp) -> Markup {
    let address = d.device.address.to_string();
    html! {
        li {
            a href=(format!("/devices/{address}")) { (name(d)) }
            @if own_name(d).is_some() { " " span.kind { (d.device.kind.label()) } }
            " " small { (state_words(d, now)) }
        }
    }
}

/// Every registered sensor, under its resident, its room, or "not assigned".
pub(super) fn grouped(
    devices: &[DeviceState],
    residents: &[ResidentOverview],
    now: Timestamp,
) -> Markup {
    let mut rooms: Vec<&str> = devices
        .iter()
        .filter_map(|d| match &d.device.subject {
            Subject::Room(r) => Some(r.as_str()),
            _ => None,
        })
        .collect();
    rooms.sort_unstable();
    rooms.dedup();
    let of_resident = |id| {
        devices
            .iter()
            .filter(move |d| d.device.subject == Subject::Resident(id))
    };
    // A device of a resident no longer listed (archived) still shows, apart.
    let orphaned: Vec<&DeviceState> = devices
        .iter()
        .filter(|d| match &d.device.subject {
            Subject::Resident(id) => !residents.iter().any(|r| r.id == *id),
            Subject::Unassigned => true,
            Subject::Room(_) => false,
        })
        .collect();
    html! {
        @if devices.is_empty() {
            p.none { "No devices registered yet." }
        }
        div.groups {
            @for r in residents {
                @if of_resident(r.id).next().is_some() {
                    section.group {
                        h3 { (r.display_name) ", " (r.room) }
                        ul.devices { @for d in of_resident(r.id) { (row(d, now)) } }
                    }
                }
            }
            @for room in &rooms {
                section.group {
                    h3 { "Room sensors: " (room) }
                    ul.devices {
                        @for d in devices.iter().filter(|d| matches!(&d.device.subject, Subject::Room(x) if x == room)) {
                            (row(d, now))
                        }
                    }
                }
            }
            @if !orphaned.is_empty() {
                section.group.unassigned {
                    h3 { "Not assigned to anyone" }
                    p { small { "Their readings are not attributed to anyone." } }
                    ul.devices { @for d in &orphaned { (row(d, now)) } }
                }
            }
        }
    }
}

/// Sensors that encrypt their broadcasts (BTHome, pvvx, MiBeacon room and
/// climate sensors) and so need the key printed with them; or one given a key.
fn may_encrypt(d: &DeviceState) -> bool {
    d.has_key || matches!(d.device.kind, DeviceKind::RoomSensor | DeviceKind::Unknown)
}

/// `GET /devices/{address}`: one sensor and what can be done with it.
pub async fn page(
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> Result<Response, WebError> {
    let Ok(address) = address.parse::<DeviceAddress>() else {
        return Ok(super::layout::not_found(&state.gateway_name));
    };
    let (devices, residents) = read(&state.reader, |r| {
        Ok((r.device_states()?, r.residents_overview()?))
    })
    .await?;
    let Some(d) = devices.into_iter().find(|d| d.device.address == address) else {
        return Ok(super::layout::not_found(&state.gateway_name));
    };
    let now = Timestamp::now();
    let addr = address.to_string();
    let what = name(&d).to_owned();
    let body = html! {
        p { (d.device.kind.label()) " · address " (addr) }
        p.belongs {
            "For: "
            @match &d.device.subject {
                Subject::Resident(id) => {
                    @match residents.iter().find(|r| r.id == *id) {
                        Some(r) => strong { (r.display_name) ", " (r.room) },
                        None => strong { "a resident no longer listed" },
                    }
                }
                Subject::Room(room) => strong { "room " (room) },
                Subject::Unassigned => strong { "nobody (its readings are not attributed)" },
            }
        }
        p {
            (state_words(&d, now))
            @if let Some(r) = d.rssi { " · signal " (r) " dBm" }
            @if d.paired { " · paired" }
        }
        h2 { "Give it to someone else" }
        form.assign method="post" action="/pairing/assign" {
            (super::csrf_field())
            input type="hidden" name="address" value=(addr);
            input type="hidden" name="back" value="device";
            label {
                "Resident "
                select name="resident_id" {
                    option value="" { "(a room instead)" }
                    @for r in &residents {
                        option value=(r.id.0) selected[d.device.subject == Subject::Resident(r.id)] { (r.display_name) " (" (r.room) ")" }
                    }
                }
            }
            " "
            label { "or room " input type="text" name="room" size="8"; }
            " " button type="submit" { "Assign" }
        }
        @if d.device.subject != Subject::Unassigned {
            h2 { "Stop using it for this person" }
            form.unassign method="post" action="/pairing/unassign" {
                (super::csrf_field())
                input type="hidden" name="address" value=(addr);
                input type="hidden" name="back" value="device";
                button type="submit" { "Un-assign" }
            }
        }
        @if may_encrypt(&d) {
            h2 { "Encryption key" }
            @if d.has_key {
                form.key method="post" action="/pairing/key/remove" {
                    (super::csrf_field())
                    input type="hidden" name="address" value=(addr);
                    input type="hidden" name="back" value="device";
                    "A key is set. "
                    button type="submit" { "Remove key" }
                }
            } @else {
                form.key method="post" action="/pairing/key" {
                    (super::csrf_field())
                    input type="hidden" name="address" value=(addr);
                    input type="hidden" name="back" value="device";
                    label {
                        "Key printed with the sensor or shown by its app (32 hex digits) "
                        input type="text" name="key" size="32" autocomplete="off" spellcheck="false";
                    }
                    " " button type="submit" { "Set key" }
                }
            }
        }
        @if state.ble.is_some() && d.paired {
            h2 { "Remove" }
            form.remove method="post" action=(format!("/devices/{addr}/remove")) {
                (super::csrf_field())
                "Forget the pairing with this sensor (it can be paired again later). "
                button type="submit" { "Forget pairing" }
            }
        }
        p { a href="/pairing" { "Back to Devices" } }
    };
    let frame = Frame {
        gateway: &state.gateway_name,
        section: Section::Devices,
        now,
        live: None,
    };
    Ok(Html(super::layout::page(frame, &what, body).into_string()).into_response())
}

/// Where a device form goes afterwards: the device's page when it came from
/// there (`back=device`), else the Devices page.
pub(super) fn back(back: &str, address: &str) -> Redirect {
    match (back, address.trim().parse::<DeviceAddress>()) {
        ("device", Ok(a)) => Redirect::to(&format!("/devices/{a}")),
        _ => Redirect::to("/pairing"),
    }
}
