//! Server-rendered HTML. maud escapes every interpolated string, so a resident's
//! name can never become markup.

use axum::extract::State;
use axum::response::Html;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{AppState, WebError, describe_age, read};
use crate::clinical::news2::Spo2Scale;
use crate::clinical::news2::{Band, Parameter};
use crate::clinical::{Freshness, SensorScore, VitalSample, freshness, news2_from_readings};
use crate::model::{Quantity, Timestamp, Value};
use crate::store::{LatestValue, ResidentOverview};

const STYLE: &str = r#"
:root { --ink:#111; --muted:#4a4a4a; --card:#fff; --bg:#eef1f4; --stale:#8a4b00; --stale-bg:#fff4e0; --line:#c9cfd6; }
* { box-sizing: border-box; }
body { margin:0; font: 18px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink); background:var(--bg); }
header { background:#0b3d5c; color:#fff; padding:12px 20px; display:flex; justify-content:space-between; align-items:baseline; flex-wrap:wrap; gap:8px; }
header h1 { margin:0; font-size:1.4rem; }
header p { margin:0; }
main { padding:16px; display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:16px; }
article { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; }
article h2 { margin:0; font-size:1.25rem; }
.room { margin:0 0 8px; color:var(--muted); }
table { width:100%; border-collapse:collapse; }
.scroll { overflow-x:auto; }
section { padding:8px 20px 16px; }
button, select, input { font:inherit; min-height:44px; padding:4px 10px; margin:2px 0; }
button { cursor:pointer; border:1px solid #0b3d5c; border-radius:6px; background:#fff; color:#0b3d5c; font-weight:600; }
th { text-align:left; font-weight:600; padding:6px 4px; width:40%; }
td { padding:6px 4px; }
tr + tr { border-top:1px solid #e3e6ea; }
.v { font-size:1.3rem; font-weight:700; }
.age { display:block; font-size:.9rem; color:var(--muted); }
tr.stale td, tr.stale th { background:var(--stale-bg); }
tr.stale .v { color:var(--stale); font-weight:600; }
.badge { display:inline-block; font-size:.8rem; font-weight:700; padding:1px 6px; border-radius:4px; background:var(--stale); color:#fff; margin-left:6px; }
.none { color:var(--muted); font-style:italic; }
section.alerts { margin:16px 16px 0; padding:10px 14px; border:2px solid #b42318; border-radius:10px; background:#fef3f2; }
section.alerts h2 { margin:0 0 6px; font-size:1.2rem; }
section.alerts ul { margin:0; padding-left:18px; }
li.alert { margin:6px 0; }
li.alert form { display:inline; margin-left:8px; }
li.emergency strong { color:#b42318; }
.news { margin:0 0 10px; padding:8px 10px; border-radius:8px; border:2px solid; }
.news strong { font-size:1.15rem; }
.news small { display:block; color:var(--ink); }
.band-low { border-color:#2e7d32; background:#e8f5e9; }
.band-low-medium { border-color:#9a6700; background:#fff8c5; }
.band-medium { border-color:#c2410c; background:#ffedd5; }
.band-high { border-color:#b91c1c; background:#fee2e2; }
.news.stale { border-color:var(--stale); background:var(--stale-bg); }
footer { padding:8px 20px 24px; color:var(--muted); font-size:.9rem; }
.error { color:#8b0000; background:#fde8e8; border:1px solid #b91c1c; border-radius:6px; padding:8px 10px; }
section.form, section.users, section.audit { padding:16px; max-width:60rem; }
input, select, button { font-size:1rem; min-height:44px; }
"#;

/// A page that refreshes itself every 10 s (live updates come with the full staff UI).
pub(crate) fn page(title: &str, now: Timestamp, body: Markup) -> Markup {
    layout(title, now, body, true)
}

/// A page with a form someone types into: it never reloads itself.
pub(crate) fn form_page(title: &str, now: Timestamp, body: Markup) -> Markup {
    layout(title, now, body, false)
}

fn layout(title: &str, now: Timestamp, body: Markup, refresh: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // The overview refreshes itself; live updates come with the full staff UI.
                @if refresh {
                    meta http-equiv="refresh" content="10";
                }
                title { (title) " — carehub" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (title) }
                    nav { a href="/" style="color:#fff" { "Residents" } " · " a href="/pairing" style="color:#fff" { "Pair sensors" } }
                    @if let Some(who) = super::auth::current() {
                        form.signout method="post" action="/logout" {
                            (super::auth::csrf_field())
                            (who.username) " (" (who.role.as_str()) ") "
                            @if who.role == crate::store::accounts::Role::Admin {
                                a href="/users" style="color:#fff" { "Users" } " · " a href="/audit" style="color:#fff" { "Audit log" } " "
                            }
                            button type="submit" { "Sign out" }
                        }
                    }
                    p { "Updated " time datetime=(now.to_rfc3339()) { (clock(now)) " UTC" } }
                }
                (body)
                footer { "carehub " (env!("CARGO_PKG_VERSION")) " · values older than the clinical window are marked STALE" }
            }
        }
    }
}

fn clock(t: Timestamp) -> String {
    let iso = t.to_rfc3339();
    iso.get(11..19).unwrap_or(&iso).to_owned()
}

pub async fn overview(State(state): State<AppState>) -> Result<Html<String>, WebError> {
    let rows = read(&state.reader, |r| r.residents_overview()).await?;
    let now = Timestamp::now();
    let uplink = state.uplink.snapshot();
    // Scale 1 for everyone if the book cannot be read would be wrong for a
    // scale-2 resident: show the error instead of a score.
    let scales = super::clinical::Scales::load(&state).await?;
    // The vital signs stay on screen even if the alert book cannot be read.
    let alerts = match super::alerts::section(&state).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "alerts not shown");
            html! { p.warning role="alert" { "Alerts cannot be read right now; check the gateway." } }
        }
    };
    let body = html! {
        (alerts)
        @if uplink.state != crate::uplink::ConnectionState::Disabled {
            p.uplink {
                "Cloud link: " (uplink.state.as_str())
                ", " (uplink.backlog) " readings waiting"
                @if let Some((at, e)) = &uplink.last_error {
                    " — last problem at " (at.to_rfc3339()) ": " (e)
                }
            }
        }
        @if let Some(w) = &uplink.certificate_warning {
            p.warning role="alert" { "Certificate: " (w) }
        }
        main {
            @if rows.is_empty() {
                p.none { "No residents yet." }
            }
            @for r in &rows {
                (tile(r, scales.of(r.id.0), now, state.stale_after))
            }
        }
    };
    Ok(Html(page("Residents", now, body).into_string()))
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

fn tile(
    r: &ResidentOverview,
    scale: Spo2Scale,
    now: Timestamp,
    stale_after: std::time::Duration,
) -> Markup {
    let find = |q: Quantity| r.latest.iter().find(|v| v.quantity == q);
    html! {
        article aria-labelledby=(format!("res-{}", r.id.0)) {
            h2 id=(format!("res-{}", r.id.0)) { (r.display_name) }
            p.room {
                (r.room)
                @if scale == Spo2Scale::Two {
                    " " span.badge.scale2 { "SpO2 scale 2" }
                }
            }
            (news2_block(r, scale, now, stale_after))
            p.actions {
                a href=(format!("/residents/{}/observations", r.id.0)) { "Enter observations" }
                " · "
                a href=(format!("/residents/{}/clinical", r.id.0)) { "SpO2 scale and alert limits" }
            }
            @let shown: Vec<&LatestValue> = TILE.iter().filter_map(|q| find(*q)).collect();
            @if shown.is_empty() {
                p.none { "No readings yet" }
            } @else {
                table {
                    @for v in shown {
                        (vital_row(v, find(Quantity::DiastolicPressure), now, stale_after))
                    }
                }
            }
        }
    }
}

fn vital_row(
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

fn with_unit(v: &LatestValue) -> String {
    match v.value {
        Value::Number(n) if v.quantity == Quantity::Consciousness => {
            super::clinical::acvpu_words(n).to_owned()
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
            s.as_str(),
            v.unit.symbol()
        ),
    }
}

/// A number to the precision a clinician reads it at.
fn number(q: Quantity, v: Value) -> String {
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

/// The resident's NEWS2 from the newest sensor values and staff entries on the
/// resident's SpO₂ scale, labelled partial unless every parameter is there, and
/// shown as stale when it is.
pub(super) fn sensor_news2(
    r: &ResidentOverview,
    scale: Spo2Scale,
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
    news2_from_readings(&samples, scale, now, window)
}

fn news2_block(
    r: &ResidentOverview,
    scale: Spo2Scale,
    now: Timestamp,
    window: std::time::Duration,
) -> Markup {
    let Some(s) = sensor_news2(r, scale, now, window) else {
        return html! {};
    };
    let band = s.score.band;
    let words = match band {
        Band::Low => "Low",
        Band::LowMedium => "Low–medium: urgent ward-based response",
        Band::Medium => "Medium: urgent response",
        Band::High => "High: emergency response",
    };
    let missing: Vec<&str> = s
        .score
        .missing
        .iter()
        .map(|p| parameter_label(*p))
        .collect();
    let partial = if s.score.partial() { " (partial)" } else { "" };
    html! {
        @if s.stale {
            div.news.stale role="status" {
                strong { "NEWS2 " (s.score.total) (partial) } span.badge { "STALE" }
                small { "from readings " (describe_age(s.oldest.age_at(now))) "; not current" }
            }
        } @else {
            div class=(format!("news band-{}", band.as_str())) role="status" {
                strong { "NEWS2 " (s.score.total) (partial) " — " (words) }
                @if !missing.is_empty() {
                    small { "Missing: " (missing.join(", ")) ". Enter an observation set to complete it." }
                }
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
