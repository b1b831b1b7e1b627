//! `/pairing/guide`: a new sensor paired and given to a resident in a few taps.
//!
//! One button on the Devices page opens the pairing window and this page. It
//! says what to do, lists the sensors it hears (live, by their advertised name
//! and their kind in words), and walks one chosen sensor through the rest on the
//! same address (`?address=`): the 6-digit number when the sensor asks for one,
//! then whom it is for (a button per resident, or a room), then its first
//! reading as it arrives (with unit and time, as everywhere). Taps after opening
//! the flow: the sensor, the resident; the passkey adds one.
//!
//! The page is a live region (`devices readings`): the list and the reading come
//! without a reload. The writes go through the same code as the Devices page
//! (`devices::apply_assign`, `pairing::give_passkey`), so the record and the
//! registry see no difference.

use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Frame, Section};
use super::{AppState, Caller, WebError, describe_age, read};
use crate::ble::Sighting;
use crate::ble::session::kind_from_services;
use crate::model::{Device, DeviceAddress, Subject, Timestamp};
use crate::store::{LatestValue, ResidentOverview};

/// How long the flow's button keeps the pairing window open.
pub const WINDOW: Duration = Duration::from_secs(120);

/// `?address=`: the sensor chosen, if any.
#[derive(Deserialize, Default)]
pub struct Chosen {
    #[serde(default)]
    pub address: Option<String>,
}

/// `POST /pairing/guide`: opens the pairing window and the flow.
pub async fn start(State(state): State<AppState>, Caller(who): Caller) -> Response {
    match state.pairing.open_window(Timestamp::now(), WINDOW, &who) {
        Ok(_) => Redirect::to("/pairing/guide").into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

/// The sensor's name as it advertises itself, or what it is.
fn model_name(name: Option<&str>) -> &str {
    name.filter(|n| !n.trim().is_empty())
        .unwrap_or("Unnamed sensor")
}

/// `GET /pairing/guide[?address=AA:BB:..]`.
pub async fn page(
    State(state): State<AppState>,
    Query(chosen): Query<Chosen>,
) -> Result<Response, WebError> {
    let chosen: Option<DeviceAddress> = match chosen.address.as_deref().map(str::parse) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            return Ok((StatusCode::BAD_REQUEST, format!("{e}")).into_response());
        }
    };
    let (devices, residents) = read(&state.reader, |r| {
        Ok((r.devices()?, r.residents_overview()?))
    })
    .await?;
    let now = Timestamp::now();
    let sightings = state
        .ble
        .as_ref()
        .map(|b| b.status.sightings())
        .unwrap_or_default();
    let closes = state.pairing.window_closes_at(now);
    let body = match chosen {
        None => choose_step(&state, &sightings, &devices, closes),
        Some(address) => {
            let device = devices.iter().find(|d| d.address == address);
            let seen = sightings.iter().find(|s| s.address == address);
            match device.map(|d| &d.subject) {
                Some(Subject::Resident(id)) => {
                    let id = *id;
                    let latest = read(&state.reader, move |r| r.resident_latest(id)).await?;
                    let newest = latest
                        .into_iter()
                        .filter(|v| v.device == address)
                        .max_by_key(|v| v.taken_at);
                    let resident = residents.iter().find(|r| r.id == id);
                    done_step(device, seen, address, resident, newest.as_ref(), now)
                }
                Some(Subject::Room(room)) => html! {
                    (sensor_heading(device, seen, address))
                    p.done { "Done: it measures " strong { (room) } "." }
                    (next_links())
                },
                Some(Subject::Unassigned) | None => {
                    assign_step(&state, device, seen, address, &residents, closes)
                }
            }
        }
    };
    let frame = Frame {
        gateway: &state.gateway_name,
        section: Section::Devices,
        now,
        live: Some("devices readings"),
    };
    Ok(Html(super::layout::page(frame, "Pair a new sensor", body).into_string()).into_response())
}

/// Whether pairing is on, in words, with a way to turn it on again.
fn window_line(closes: Option<Timestamp>) -> Markup {
    html! {
        @match closes {
            Some(c) => p.window { "Pairing is on until " strong { (super::layout::short_clock(c)) } "." },
            None => form.window method="post" action="/pairing/guide" {
                (super::csrf_field())
                "Pairing is off. "
                button type="submit" { "Turn pairing on (2 minutes)" }
            },
        }
    }
}

/// Step 1: what to do, and the sensors heard that belong to nobody yet.
fn choose_step(
    state: &AppState,
    sightings: &[Sighting],
    devices: &[Device],
    closes: Option<Timestamp>,
) -> Markup {
    let free: Vec<&Sighting> = sightings
        .iter()
        .filter(|s| {
            devices
                .iter()
                .find(|d| d.address == s.address)
                .is_none_or(|d| d.subject == Subject::Unassigned)
        })
        .collect();
    html! {
        (window_line(closes))
        ol.steps {
            li { strong { "Switch the sensor on, or press its button." } " Keep it within a few metres of the gateway." }
            li { "Tap it in the list below when it appears." }
            li { "Choose whom it is for." }
        }
        h2 { "Sensors found" }
        @if state.ble.is_none() {
            p.notice { "This gateway runs simulated sensors, not Bluetooth: there is nothing to pair." }
        } @else if free.is_empty() {
            p.none role="status" data-poll { "Looking for sensors… none found yet." }
        } @else {
            ul.found {
                @for s in &free {
                    @let kind = kind_from_services(&s.services);
                    li {
                        a.found href=(format!("/pairing/guide?address={}", s.address)) {
                            strong { (model_name(s.name.as_deref())) }
                            " " span.kind { (kind.label()) }
                            @if let Some(r) = s.rssi { " " small { "signal " (signal_words(r)) } }
                        }
                    }
                }
            }
        }
        p { a href="/pairing" { "Back to Devices" } }
    }
}

/// "strong", "fair", "weak": the received signal in words.
fn signal_words(rssi: i16) -> &'static str {
    match rssi {
        -65.. => "strong",
        -80..=-66 => "fair",
        _ => "weak",
    }
}

fn sensor_heading(
    device: Option<&Device>,
    seen: Option<&Sighting>,
    address: DeviceAddress,
) -> Markup {
    let name = device
        .and_then(|d| d.name.as_deref())
        .or_else(|| seen.and_then(|s| s.name.as_deref()));
    let kind = match (device, seen) {
        (Some(d), _) if d.kind != crate::model::DeviceKind::Unknown => d.kind,
        (_, Some(s)) => kind_from_services(&s.services),
        (Some(d), None) => d.kind,
        (None, None) => crate::model::DeviceKind::Unknown,
    };
    html! {
        h2.sensor { (model_name(name)) " " span.kind { (kind.label()) } }
        p { small { "Address " (address.to_string()) } }
    }
}

/// Step 2: the passkey if the sensor asks, then whom it is for.
fn assign_step(
    state: &AppState,
    device: Option<&Device>,
    seen: Option<&Sighting>,
    address: DeviceAddress,
    residents: &[ResidentOverview],
    closes: Option<Timestamp>,
) -> Markup {
    let paired = seen.is_some_and(|s| s.paired);
    let asks_passkey = state
        .ble
        .as_ref()
        .is_some_and(|b| b.passkeys.pending().iter().any(|(a, _)| *a == address));
    // Numeric comparison: never answered by the gateway, only by a nurse who
    // has looked at the sensor (hazard H31).
    let confirm_number = state.ble.as_ref().and_then(|b| {
        b.passkeys
            .pending_confirms()
            .into_iter()
            .find(|c| c.address == address)
            .map(|c| c.number)
    });
    let here = format!("/pairing/guide?address={address}");
    html! {
        // A passkey question comes with no event: the page looks again while
        // the sensor is being paired and assigned.
        div data-poll { (sensor_heading(device, seen, address)) }
        @if let Some(number) = confirm_number {
            div.confirm {
                p { strong { "Does the sensor show " span.number { (format!("{:03} {:03}", number / 1000, number % 1000)) } "?" } }
                p { "Look at the sensor's screen. Only say yes if it shows exactly this number." }
                form.confirm-yes method="post" action="/pairing/guide/confirm" {
                    (super::csrf_field())
                    input type="hidden" name="address" value=(address.to_string());
                    input type="hidden" name="accept" value="yes";
                    button type="submit" { "Yes, it shows this number" }
                }
                form.confirm-no method="post" action="/pairing/guide/confirm" {
                    (super::csrf_field())
                    input type="hidden" name="address" value=(address.to_string());
                    input type="hidden" name="accept" value="no";
                    button type="submit" { "No, the number is different" }
                }
            }
        } @else if asks_passkey {
            form.passkey method="post" action="/pairing/guide/passkey" {
                (super::csrf_field())
                input type="hidden" name="address" value=(address.to_string());
                label {
                    strong { "The sensor shows a 6-digit number." } " Type it here: "
                    input type="text" name="passkey" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="off" required;
                }
                " " button type="submit" { "Send number" }
            }
        } @else if paired {
            p.paired role="status" { "Paired." }
        } @else {
            (window_line(closes))
            // A passkey question comes with no event: the page looks again.
            p.pairing role="status" { "Pairing… keep the sensor switched on and close by." }
        }
        h2 { "Who is it for?" }
        @if residents.is_empty() {
            p.none { "No residents yet: add them under Manage residents, or give a room below." }
        } @else {
            ul.who {
                @for r in residents {
                    li {
                        form.for-resident method="post" action="/pairing/guide/assign" {
                            (super::csrf_field())
                            input type="hidden" name="address" value=(address.to_string());
                            input type="hidden" name="resident_id" value=(r.id.0);
                            button type="submit" { (r.display_name) ", " (r.room) }
                        }
                    }
                }
            }
        }
        form.for-room method="post" action="/pairing/guide/assign" {
            (super::csrf_field())
            input type="hidden" name="address" value=(address.to_string());
            label { "Or a room (for a room sensor): " input type="text" name="room" size="10"; }
            " " button type="submit" { "Use this room" }
        }
        p { a href="/pairing/guide" { "Choose another sensor" } " · " a href=(here) { "Check again" } }
    }
}

/// Step 3: assigned; its first reading when it comes, with unit and time.
fn done_step(
    device: Option<&Device>,
    seen: Option<&Sighting>,
    address: DeviceAddress,
    resident: Option<&ResidentOverview>,
    newest: Option<&LatestValue>,
    now: Timestamp,
) -> Markup {
    html! {
        (sensor_heading(device, seen, address))
        p.done {
            "Done: it is "
            @match resident {
                Some(r) => { strong { (r.display_name) } "'s, " (r.room) "." }
                None => { "assigned to a resident." }
            }
        }
        @match newest {
            Some(v) => p.first-reading role="status" {
                "Reading received: " strong { (v.quantity.label()) " " (super::pages::with_unit(v)) }
                " at " time datetime=(v.taken_at.to_rfc3339()) { (super::layout::short_clock(v.taken_at)) }
                " (" (describe_age(v.taken_at.age_at(now))) ")."
            },
            None => p.waiting role="status" { "Waiting for its first reading… switch it on or take a measurement with it." },
        }
        (next_links())
    }
}

fn next_links() -> Markup {
    html! {
        p.next {
            a href="/pairing/guide" { "Pair another sensor" } " · " a href="/pairing" { "Back to Devices" }
        }
    }
}

/// The flow's form: whom the sensor is for.
#[derive(Deserialize)]
pub struct AssignForm {
    pub address: String,
    #[serde(default)]
    pub resident_id: String,
    #[serde(default)]
    pub room: String,
}

/// `POST /pairing/guide/assign`: assigns, then back to the sensor's step.
pub async fn assign(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<AssignForm>,
) -> Response {
    let (address, resident_id, room) =
        match super::devices::staff_assignment(&form.address, &form.resident_id, form.room) {
            Ok(a) => a,
            Err(refusal) => return refusal.into_response(),
        };
    match super::devices::apply_assign(&state, address, resident_id, room, who).await {
        Ok(_) => Redirect::to(&format!("/pairing/guide?address={address}")).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /pairing/guide/passkey`: hands the number to BlueZ, back to the sensor.
pub async fn passkey(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<super::pairing::PasskeyForm>,
) -> Response {
    let res = super::pairing::give_typed_passkey(&state, &form, &who);
    if res.status().is_success() {
        Redirect::to(&format!("/pairing/guide?address={}", form.address.trim())).into_response()
    } else {
        res
    }
}

/// The flow's answer to "does the sensor show this number?".
#[derive(Deserialize)]
pub struct ConfirmForm {
    pub address: String,
    /// `yes` or `no`.
    pub accept: String,
}

/// `POST /pairing/guide/confirm`: staff's answer to a numeric comparison, back
/// to the sensor.
pub async fn confirm(
    State(state): State<AppState>,
    Caller(who): Caller,
    Form(form): Form<ConfirmForm>,
) -> Response {
    let accept = match form.accept.as_str() {
        "yes" => true,
        "no" => false,
        _ => {
            return (StatusCode::UNPROCESSABLE_ENTITY, "the answer is yes or no").into_response();
        }
    };
    let res = super::pairing::give_confirmation(&state, &form.address, accept, &who);
    if res.status().is_success() {
        Redirect::to(&format!("/pairing/guide?address={}", form.address.trim())).into_response()
    } else {
        res
    }
}
