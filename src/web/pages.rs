//! Server-rendered HTML. maud escapes every interpolated string, so a resident's
//! name can never become markup.

use axum::extract::State;
use axum::response::Html;
use maud::{Markup, html};

use super::layout::{self, Frame, Section};
use std::sync::Arc;

use super::overview_data::Overview;
use super::tile_cache::Scored;
use super::{AppState, WebError, describe_age};
use crate::clinical::news2::{Band, Parameter, Spo2Scale};
use crate::clinical::{Freshness, SensorScore, VitalSample, freshness, news2_from_readings};
use crate::model::{Quantity, Timestamp, Value};
use crate::store::{LatestValue, ResidentOverview};

/// The gateway's name for pages built without the state (sign-in, users, audit,
/// clinical forms); set once when the router is built.
static GATEWAY_NAME: std::sync::OnceLock<std::sync::Arc<str>> = std::sync::OnceLock::new();

pub(crate) fn remember_gateway_name(name: &std::sync::Arc<str>) {
    let _ = GATEWAY_NAME.set(name.clone());
}

/// A page with a form someone types into, in the shared frame: it never
/// reloads itself.
pub(crate) fn form_page(title: &str, now: Timestamp, body: Markup) -> Markup {
    let gateway = GATEWAY_NAME.get().map_or("carehub", |g| g);
    let frame = Frame {
        gateway,
        section: Section::None,
        now,
        live: None,
    };
    layout::page(frame, title, body)
}

/// A page in the shared frame (used by the pairing page).
pub(crate) fn page(
    state: &AppState,
    section: Section,
    title: &str,
    now: Timestamp,
    body: Markup,
) -> Markup {
    let frame = Frame {
        gateway: &state.gateway_name,
        section,
        now,
        live: None,
    };
    layout::page(frame, title, body)
}

/// How urgently a resident needs looking at, most urgent first: a current NEWS2
/// by band and total, then everyone else (a stale or no score) by room.
fn urgency(score: Option<&SensorScore>) -> (u8, std::cmp::Reverse<Band>, std::cmp::Reverse<u8>) {
    match score {
        Some(s) if !s.stale => (
            0,
            std::cmp::Reverse(s.score.band),
            std::cmp::Reverse(s.score.total),
        ),
        _ => (1, std::cmp::Reverse(Band::Low), std::cmp::Reverse(0)),
    }
}

/// Open alerts shown on the overview, most urgent first; the heading counts all
/// of them and links to the alerts page. Each takes a row with a 44 px
/// Acknowledge button: in Chromium at 1280 × 800 the first tile began at
/// 1,011 px under ten, so five, and the tiles begin on the first screen
/// (`browser::many_open_alerts_leave_the_tiles_on_a_tablets_first_screen`).
/// All of them pushed every resident off the screen, and a page of 200 open
/// alerts was the largest thing the daemon built (about 0.8 MB of heap while
/// rendering, issue 21; docs/reliability.md).
pub(super) const OVERVIEW_ALERTS: usize = 5;

/// `GET /`: a tile per resident, the sickest first.
pub async fn overview(State(state): State<AppState>) -> Result<Html<String>, WebError> {
    // The residents, their SpO₂ scales and the most urgent open alerts: as last read unless
    // the store or the alert book has changed since (`overview_data`).
    let data = state.overview.get(&state).await?;
    let now = Timestamp::now();
    let (rows, scales, alert_rows) = match data {
        Overview::Snapshot(s) => (s.residents, s.scales, Ok(s.alerts)),
        // Scale 1 for everyone if the book cannot be read would be wrong for a
        // scale-2 resident: show the error instead of a score.
        Overview::Partial {
            residents,
            scales,
            alerts,
        } => (Arc::new(residents), Arc::new(scales?), alerts.map(Arc::new)),
    };
    // The vital signs stay on screen even if the alert book cannot be read.
    let alerts = match alert_rows {
        Ok(open) => {
            super::alert_page::open_alerts(&open.first.iter().collect::<Vec<_>>(), open.total, now)
        }
        Err(e) => {
            tracing::error!(error = %e, "alerts not shown");
            html! { p.notice.warn role="alert" { "Alerts cannot be read right now; check the gateway." } }
        }
    };
    let mut scored: Vec<Scored<'_>> = rows
        .iter()
        .map(|r| {
            let scale = scales.get(&r.id.0).copied().unwrap_or_default();
            let s = sensor_news2(r, scale, now, state.stale_after);
            (r, scale, s)
        })
        .collect();
    scored.sort_by(|(a, _, sa), (b, _, sb)| {
        urgency(sa.as_ref())
            .cmp(&urgency(sb.as_ref()))
            .then_with(|| a.room.cmp(&b.room))
            .then_with(|| a.display_name.cmp(&b.display_name))
    });
    let stale_after = state.stale_after;
    let tiles = state
        .overview
        .tiles
        .tiles(&scored, now, stale_after, |(r, scale, s)| {
            tile(r, *scale, s.as_ref(), now, stale_after).into_string()
        });
    let uplink = state.uplink.snapshot();
    let body = html! {
        (alerts)
        @if uplink.state != crate::uplink::ConnectionState::Disabled {
            p.notice {
                "Cloud link: " (uplink.state.as_str())
                ", " (uplink.backlog) " readings waiting"
                @if let Some((at, e)) = &uplink.last_error {
                    " — last problem at " (layout::date_time(*at)) ": " (e)
                }
            }
        }
        @if let Some(w) = &uplink.certificate_warning {
            p.notice.warn role="alert" { "Certificate: " (w) }
        }
        @if scored.is_empty() {
            p.none { "No residents yet." }
        }
        @if scored.iter().any(|(_, _, s)| s.as_ref().is_some_and(|s| s.score.missing.iter().any(|p| STAFF_ENTERED.contains(p)))) {
            p.note {
                "A score marked partial lacks breathing rate, consciousness or air or oxygen, which only staff can enter: "
                "use Enter observations on the resident's tile to complete it."
            }
        }
        div.tiles {
            (maud::PreEscaped(tiles))
        }
    };
    let frame = Frame {
        gateway: &state.gateway_name,
        section: Section::Residents,
        now,
        live: Some("readings devices uplink alerts"),
    };
    Ok(Html(layout::page(frame, "Residents", body).into_string()))
}

/// The quantities on a resident's tile, in the order staff read them.
const TILE: &[Quantity] = &[
    Quantity::Spo2,
    Quantity::PulseRate,
    Quantity::HeartRate,
    Quantity::SystolicPressure,
    Quantity::BodyTemperature,
    Quantity::BodyWeight,
    Quantity::BloodGlucose,
    Quantity::RespirationRate,
    Quantity::Consciousness,
    Quantity::SupplementalOxygen,
];

pub(super) fn tile(
    r: &ResidentOverview,
    scale: Spo2Scale,
    score: Option<&SensorScore>,
    now: Timestamp,
    stale_after: std::time::Duration,
) -> Markup {
    let find = |q: Quantity| r.latest.iter().find(|v| v.quantity == q);
    // Calm when the current score is low, loud from low-medium up: the one tile
    // that matters stands out from the rest.
    let mood = match score {
        Some(s) if !s.stale && !s.score.components.is_empty() => {
            if s.score.band == Band::Low {
                "tile calm"
            } else {
                "tile loud"
            }
        }
        _ => "tile",
    };
    html! {
        article class=(mood) aria-labelledby=(format!("res-{}", r.id.0)) {
            h2 id=(format!("res-{}", r.id.0)) { a href=(format!("/residents/{}", r.id.0)) { (r.display_name) } }
            p.room {
                (r.room)
                @if scale == Spo2Scale::Two {
                    " " span.badge.scale2 { "SpO2 scale 2" }
                }
            }
            (news2_block_with(score, now, Missing::SaidOnce))
            p.actions {
                a href=(format!("/residents/{}/observations", r.id.0)) { "Enter observations" }
                " · "
                a href=(format!("/residents/{}/clinical", r.id.0)) { "SpO2 scale and alert limits" }
            }
            @let shown: Vec<&LatestValue> = TILE.iter().filter_map(|q| find(*q)).collect();
            @if shown.is_empty() {
                p.none { "No readings yet" }
            } @else {
                table.vitals {
                    @for v in shown {
                        (vital_row(v, find(Quantity::DiastolicPressure), now, stale_after))
                    }
                }
            }
        }
    }
}

pub(super) fn vital_row(
    v: &LatestValue,
    diastolic: Option<&LatestValue>,
    now: Timestamp,
    stale_after: std::time::Duration,
) -> Markup {
    let fresh = freshness(v.taken_at, now, stale_after);
    let age = describe_age(v.taken_at.age_at(now));
    let (label, text) = if v.quantity == Quantity::SystolicPressure {
        // Blood pressure reads as one value when both halves come from one measurement.
        match diastolic.filter(|d| d.taken_at == v.taken_at && d.unit == v.unit) {
            Some(d) => (
                "Blood pressure",
                format!(
                    "{}/{} {}",
                    number(v.quantity, v.value),
                    number(d.quantity, d.value),
                    v.unit.symbol()
                ),
            ),
            None => (v.quantity.label(), with_unit(v)),
        }
    } else {
        (v.quantity.label(), with_unit(v))
    };
    // A value no person can have is a sensor fault: named as such, not scored.
    let text = if crate::clinical::implausible(v.quantity, v.unit, v.value) {
        format!("{text} — check the sensor")
    } else {
        text
    };
    // A device clock ahead of the gateway: the value is timed on its receipt.
    let clock_ahead = v
        .device_time
        .is_some_and(|d| d > v.taken_at.saturating_add(crate::clinical::FUTURE_TOLERANCE));
    html! {
        @match fresh {
            Freshness::Current => tr {
                th scope="row" { (label) @if clock_ahead { span.badge.clock { "CHECK CLOCK" } } }
                td {
                    span.v { (text) } time.age datetime=(v.taken_at.to_rfc3339()) { (age) }
                    @if clock_ahead { " " span.clock { "device clock ahead; timed on receipt" } }
                }
            },
            Freshness::Stale => tr.stale {
                th scope="row" { (label) span.badge { "STALE" } @if clock_ahead { span.badge.clock { "CHECK CLOCK" } } }
                td { span.v { (text) } time.age datetime=(v.taken_at.to_rfc3339()) { "last reading " (age) } }
            },
            Freshness::FutureDated => tr.stale {
                th scope="row" { (label) span.badge { "CHECK CLOCK" } }
                td { span.v { (text) } span.age { "device clock ahead; time unknown" } }
            },
        }
    }
}

pub(super) fn with_unit(v: &LatestValue) -> String {
    match v.value {
        Value::Number(n) if v.quantity == Quantity::Consciousness => {
            crate::clinical::news2::acvpu_words(n).to_owned()
        }
        Value::Number(n) if v.quantity == Quantity::SupplementalOxygen => {
            if n == 1.0 { "yes" } else { "no (air)" }.to_owned()
        }
        Value::Number(_) => {
            let sym = v.unit.symbol();
            let n = number(v.quantity, v.value);
            if sym.is_empty() {
                n
            } else if sym.starts_with('%') || sym.starts_with('°') {
                format!("{n}{sym}")
            } else {
                format!("{n} {sym}")
            }
        }
        Value::Special(s) => format!(
            "no value (sensor reported {}) {}",
            s.words(),
            v.unit.symbol()
        ),
    }
}

/// A number to the precision a clinician reads it at.
pub(super) fn number(q: Quantity, v: Value) -> String {
    match v {
        Value::Number(n) => {
            let digits = match q {
                Quantity::BodyTemperature
                | Quantity::BodyWeight
                | Quantity::BodyMassIndex
                | Quantity::BloodGlucose
                | Quantity::Temperature => 1,
                _ => 0,
            };
            format!("{n:.digits$}")
        }
        Value::Special(s) => format!("({})", s.words()),
    }
}

/// The resident's NEWS2 from the newest sensor values and staff entries on the
/// resident's SpO₂ scale, labelled partial unless every parameter is there, and
/// shown as stale when it is.
pub(super) fn sensor_news2(
    r: &ResidentOverview,
    scale: Spo2Scale,
    now: Timestamp,
    window: std::time::Duration,
) -> Option<SensorScore> {
    news2_of(&r.latest, scale, now, window)
}

/// NEWS2 from a resident's newest values (sensors and staff entries).
pub(super) fn news2_of(
    latest: &[LatestValue],
    scale: Spo2Scale,
    now: Timestamp,
    window: std::time::Duration,
) -> Option<SensorScore> {
    let samples: Vec<VitalSample> = latest
        .iter()
        .map(|v| VitalSample {
            quantity: v.quantity,
            value: v.value,
            unit: v.unit,
            taken_at: v.taken_at,
            device_time: v.device_time,
            device: Some(v.device),
            reading_id: v.reading_id,
        })
        .collect();
    news2_from_readings(&samples, scale, now, window)
}

/// How a score block names the parameters it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Missing {
    /// Every one of them, with what to do (a resident's own page).
    Listed,
    /// Only those beyond the ones only staff can enter (breathing rate,
    /// consciousness, air or oxygen), which the overview says once for all.
    SaidOnce,
}

/// The parameters a sensor never gives: a score lacks them until staff enter
/// an observation set.
pub(super) const STAFF_ENTERED: [Parameter; 3] = [
    Parameter::RespRate,
    Parameter::Oxygen,
    Parameter::Consciousness,
];

pub(super) fn news2_block(s: Option<&SensorScore>, now: Timestamp) -> Markup {
    news2_block_with(s, now, Missing::Listed)
}

pub(super) fn news2_block_with(s: Option<&SensorScore>, now: Timestamp, said: Missing) -> Markup {
    let Some(s) = s else {
        return html! {};
    };
    let band = s.score.band;
    let words = match band {
        Band::Low => "LOW",
        Band::LowMedium => "LOW–MEDIUM: urgent ward-based response",
        Band::Medium => "MEDIUM: urgent response",
        Band::High => "HIGH: emergency response",
    };
    let implausible: Vec<&crate::clinical::Implausible> = s.implausible.iter().collect();
    let missing: Vec<&str> = s
        .score
        .missing
        .iter()
        .filter(|p| !implausible.iter().any(|i| i.parameter == **p))
        .filter(|p| said == Missing::Listed || !STAFF_ENTERED.contains(p))
        .map(|p| parameter_label(*p))
        .collect();
    let partial = if s.score.partial() { " (partial)" } else { "" };
    let left_out = |i: &crate::clinical::Implausible| {
        let shown = LatestValue {
            quantity: match i.parameter {
                Parameter::Temperature => Quantity::BodyTemperature,
                Parameter::Spo2 => Quantity::Spo2,
                Parameter::Pulse => Quantity::PulseRate,
                Parameter::Systolic => Quantity::SystolicPressure,
                _ => Quantity::RespirationRate,
            },
            value: Value::Number(i.value),
            unit: i.unit,
            taken_at: i.taken_at,
            device: Default::default(),
            device_time: None,
            reading_id: None,
        };
        format!(
            "{} {} — check the sensor",
            parameter_label(i.parameter),
            with_unit(&shown)
        )
    };
    // Nothing scored (only implausible values): no number to show.
    let scored = !s.score.components.is_empty();
    html! {
        @if !scored {
            div.news.stale role="status" {
                strong { "No NEWS2" }
                @for i in &implausible { small.implausible { "Left out: " (left_out(i)) } }
            }
        } @else if s.stale {
            div.news.stale role="status" {
                strong { "NEWS2 " (s.score.total) (partial) } span.badge { "STALE" }
                small { "from readings " (describe_age(s.oldest.age_at(now))) "; not current" }
            }
        } @else {
            div class=(format!("news band-{}", band.as_str())) role="status" {
                strong { "NEWS2 " (s.score.total) (partial) " — " (words) }
                small.age { "from values up to " (minutes_old(s.oldest.age_at(now))) " old" }
                @for i in &implausible { small.implausible { "Left out: " (left_out(i)) } }
                @if !missing.is_empty() {
                    @if said == Missing::Listed {
                        small { "Missing: " (missing.join(", ")) ". Enter an observation set to complete it." }
                    } @else {
                        small.missing { "No current " (missing.join(", ")) " from the sensors." }
                    }
                }
            }
        }
    }
}

fn parameter_label(p: Parameter) -> &'static str {
    match p {
        Parameter::Systolic => "systolic BP",
        p => p.label(),
    }
}

/// "48 min", "12 s": how old the oldest value of a score is, in the words (and
/// so at the moments of change) of the values' own ages on the same tile.
fn minutes_old(age: std::time::Duration) -> String {
    match describe_age(age).strip_suffix(" ago") {
        Some(words) => words.to_owned(),
        None => "a few seconds".to_owned(),
    }
}
