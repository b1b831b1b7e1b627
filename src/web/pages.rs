//! Server-rendered HTML. maud escapes every interpolated string, so a resident's
//! name can never become markup.

use axum::extract::State;
use axum::response::Html;
use maud::{Markup, html};

use super::layout::{self, Frame, Section};
use super::{AppState, WebError, describe_age, read};
use crate::clinical::news2::{Band, Parameter};
use crate::clinical::{Freshness, SensorScore, VitalSample, freshness, news2_from_sensors};
use crate::model::{Quantity, Timestamp, Value};
use crate::store::{LatestValue, ResidentOverview};

/// The CSRF token a form must carry. Empty until staff accounts exist: the
/// accounts work fills it from the session, and every form already includes it
/// through [`csrf_field`].
#[derive(Debug, Clone, Default)]
pub struct CsrfToken(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CsrfToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(CsrfToken::default())
    }
}

/// The hidden `csrf` field every state-changing form carries; nothing while the
/// token is empty.
pub fn csrf_field(token: &CsrfToken) -> Markup {
    html! {
        @if !token.0.is_empty() {
            input type="hidden" name="csrf" value=(token.0);
        }
    }
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

/// `GET /`: a tile per resident, the sickest first.
pub async fn overview(State(state): State<AppState>) -> Result<Html<String>, WebError> {
    let rows = read(&state.reader, |r| r.residents_overview()).await?;
    let now = Timestamp::now();
    let mut scored: Vec<(ResidentOverview, Option<SensorScore>)> = rows
        .into_iter()
        .map(|r| {
            let s = sensor_news2(&r, now, state.stale_after);
            (r, s)
        })
        .collect();
    scored.sort_by(|(a, sa), (b, sb)| {
        urgency(sa.as_ref())
            .cmp(&urgency(sb.as_ref()))
            .then_with(|| a.room.cmp(&b.room))
            .then_with(|| a.display_name.cmp(&b.display_name))
    });
    let uplink = state.uplink.snapshot();
    let body = html! {
        @if uplink.state != crate::uplink::ConnectionState::Disabled {
            p.notice {
                "Cloud link: " (uplink.state.as_str())
                ", " (uplink.backlog) " readings waiting"
                @if let Some((at, e)) = &uplink.last_error {
                    " — last problem at " (at.to_rfc3339()) ": " (e)
                }
            }
        }
        @if let Some(w) = &uplink.certificate_warning {
            p.notice.warn role="alert" { "Certificate: " (w) }
        }
        @if scored.is_empty() {
            p.none { "No residents yet." }
        }
        div.tiles {
            @for (r, s) in &scored {
                (tile(r, s.as_ref(), now, state.stale_after))
            }
        }
    };
    let frame = Frame {
        gateway: &state.gateway_name,
        section: Section::Residents,
        now,
        live: Some("readings devices uplink"),
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
];

fn tile(
    r: &ResidentOverview,
    score: Option<&SensorScore>,
    now: Timestamp,
    stale_after: std::time::Duration,
) -> Markup {
    let find = |q: Quantity| r.latest.iter().find(|v| v.quantity == q);
    html! {
        article.tile aria-labelledby=(format!("res-{}", r.id.0)) {
            h2 id=(format!("res-{}", r.id.0)) { a href=(format!("/residents/{}", r.id.0)) { (r.display_name) } }
            p.room { (r.room) }
            (news2_block(score, now))
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
    html! {
        @match fresh {
            Freshness::Current => tr {
                th scope="row" { (label) }
                td { span.v { (text) } span.age { (age) } }
            },
            Freshness::Stale => tr.stale {
                th scope="row" { (label) span.badge { "STALE" } }
                td { span.v { (text) } span.age { "last reading " (age) } }
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
            s.as_str(),
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
        Value::Special(s) => format!("({})", s.as_str()),
    }
}

/// The resident's NEWS2 from sensor values, always labelled partial (sensors do not
/// measure respiration, consciousness or oxygen) and shown as stale when it is.
pub(super) fn sensor_news2(
    r: &ResidentOverview,
    now: Timestamp,
    window: std::time::Duration,
) -> Option<SensorScore> {
    let samples: Vec<VitalSample> = r
        .latest
        .iter()
        .map(|v| VitalSample {
            quantity: v.quantity,
            value: v.value,
            unit: v.unit,
            taken_at: v.taken_at,
        })
        .collect();
    news2_from_sensors(&samples, now, window)
}

pub(super) fn news2_block(s: Option<&SensorScore>, now: Timestamp) -> Markup {
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
    let missing: Vec<&str> = s
        .score
        .missing
        .iter()
        .map(|p| parameter_label(*p))
        .collect();
    html! {
        @if s.stale {
            div.news.stale role="status" {
                strong { "NEWS2 " (s.score.total) " (partial)" } span.badge { "STALE" }
                small { "from readings " (describe_age(s.oldest.age_at(now))) "; not current" }
            }
        } @else {
            div class=(format!("news band-{}", band.as_str())) role="status" {
                strong { "NEWS2 " (s.score.total) " (partial) — " (words) }
                small { "From sensors only. Not measured: " (missing.join(", ")) "." }
            }
        }
    }
}

fn parameter_label(p: Parameter) -> &'static str {
    match p {
        Parameter::RespRate => "respiration rate",
        Parameter::Spo2 => "SpO₂",
        Parameter::Oxygen => "air or oxygen",
        Parameter::Systolic => "systolic BP",
        Parameter::Pulse => "pulse",
        Parameter::Consciousness => "consciousness",
        Parameter::Temperature => "temperature",
    }
}
