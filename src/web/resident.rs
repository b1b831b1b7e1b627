//! `/residents/{id}`: one resident's last 24 hours. A chart per quantity drawn on
//! the server as inline SVG (no script, no chart library), the newest 100
//! readings as a table, and the resident's devices with battery, signal and when
//! each was last heard. `GET /api/v1/residents/{id}` is the same data as JSON.
//!
//! Charts obey the same rules as the tiles: a gap longer than the clinical window
//! is drawn as a gap, never bridged by a line; a special value (NaN, "no
//! result", ...) is a labelled mark above the plot, never a point at some number.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, PreEscaped, html};
use serde::Serialize;

use super::layout::{self, Frame, Section, date_time};
use super::pages::{news2_block, news2_of, number, vital_row};
use super::{AppState, WebError, describe_age, read};
use crate::clinical::{Freshness, freshness};
use crate::model::{Quantity, ResidentId, Subject, Timestamp, Value};
use crate::store::{DeviceState, HistoryValue, LatestValue, ResidentRecord};

/// How far back the charts go.
pub const CHART_SPAN: Duration = Duration::from_secs(24 * 3600);
/// Rows in the readings table.
pub const TABLE_ROWS: usize = 100;

/// The quantities drawn as charts, in the order staff read them. Others (RR
/// intervals, cuff pressure) are in the table only.
const CHARTED: &[Quantity] = &[
    Quantity::Spo2,
    Quantity::PulseRate,
    Quantity::HeartRate,
    Quantity::SystolicPressure,
    Quantity::DiastolicPressure,
    Quantity::BodyTemperature,
    Quantity::BloodGlucose,
    Quantity::BodyWeight,
    Quantity::PulseAmplitudeIndex,
];

/// Everything the page and the JSON show, read in one blocking call.
struct Detail {
    resident: ResidentRecord,
    latest: Vec<LatestValue>,
    history: Vec<HistoryValue>,
    recent: Vec<HistoryValue>,
    devices: Vec<DeviceState>,
}

/// Reads one resident's data; `None` for an unknown or archived id. The last
/// 24 h come from one scan: the charts use all of it, the table its newest
/// [`TABLE_ROWS`].
async fn load(state: &AppState, id: i64, now: Timestamp) -> Result<Option<Detail>, WebError> {
    let id = ResidentId(id);
    let since = now.saturating_sub(CHART_SPAN);
    read(&state.reader, move |r| {
        let Some(resident) = r.resident(id)?.filter(|r| !r.archived) else {
            return Ok(None);
        };
        let history = r.resident_history(id, since)?;
        let recent = history.iter().rev().take(TABLE_ROWS).cloned().collect();
        Ok(Some(Detail {
            resident,
            latest: r.resident_latest(id)?,
            history,
            recent,
            devices: r
                .device_states()?
                .into_iter()
                .filter(|d| d.device.subject == Subject::Resident(id))
                .collect(),
        }))
    })
    .await
}

fn no_such_resident(state: &AppState) -> Response {
    layout::error_page(
        &state.gateway_name,
        StatusCode::NOT_FOUND,
        "Resident not found",
        "There is no resident with this number, or they no longer live here (their record is archived).",
    )
}

/// `GET /residents/{id}`
pub async fn page(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let Ok(id) = id.parse::<i64>() else {
        return Ok(no_such_resident(&state));
    };
    let now = Timestamp::now();
    let Some(d) = load(&state, id, now).await? else {
        return Ok(no_such_resident(&state));
    };
    let window = state.stale_after;
    let scale = super::clinical::Scales::load(&state).await?.of(id);
    let s = news2_of(&d.latest, scale, now, window);
    let find = |q: Quantity| d.latest.iter().find(|v| v.quantity == q);
    let body = html! {
        p.room { (d.resident.resident.room) }
        (news2_block(s.as_ref(), now))
        section aria-labelledby="now-h" {
            h2 id="now-h" { "Latest readings" }
            @if d.latest.is_empty() {
                p.none { "No readings yet." }
            } @else {
                table.vitals.list {
                    @for v in d.latest.iter().filter(|v| v.quantity != Quantity::DiastolicPressure) {
                        (vital_row(v, find(Quantity::DiastolicPressure), now, window))
                    }
                }
            }
        }
        section aria-labelledby="charts-h" {
            h2 id="charts-h" { "Last 24 hours" }
            @let charts: Vec<Markup> = CHARTED
                .iter()
                .filter_map(|q| {
                    let points: Vec<&HistoryValue> = d.history.iter().filter(|h| h.quantity == *q).collect();
                    (!points.is_empty()).then(|| chart(*q, &points, now, window))
                })
                .collect();
            @if charts.is_empty() {
                p.none { "No readings in the last 24 hours." }
            }
            div.charts { @for c in charts { (c) } }
        }
        section aria-labelledby="table-h" {
            h2 id="table-h" { "Newest " (TABLE_ROWS) " readings of the last 24 hours" }
            @if d.recent.is_empty() {
                p.none { "No readings yet." }
            } @else {
                table.list {
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Reading" } th scope="col" { "Value" } th scope="col" { "Device" } } }
                    tbody {
                        @for h in &d.recent {
                            tr {
                                td { (date_time(h.taken_at)) span.age { (age_words(h.taken_at, now)) } }
                                td { (h.quantity.label()) }
                                td { (value_words(h)) }
                                td { (h.device.to_string()) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="dev-h" {
            h2 id="dev-h" { "Devices" }
            @if d.devices.is_empty() {
                p.none { "No devices assigned. Assign one on the " a href="/pairing" { "Devices" } " page." }
            } @else {
                table.list {
                    thead { tr { th scope="col" { "Device" } th scope="col" { "Battery" } th scope="col" { "Signal" } th scope="col" { "Last heard" } } }
                    tbody {
                        @for dev in &d.devices {
                            tr {
                                td { (dev.device.name.as_deref().unwrap_or("(no name)")) span.age { (dev.device.address.to_string()) " · " (dev.device.kind.label()) } }
                                td {
                                    @match dev.battery_percent {
                                        Some(b) if b <= 15 => { (b) " %" span.badge.bad { "LOW" } }
                                        Some(b) => { (b) " %" }
                                        None => { "unknown" }
                                    }
                                }
                                td { @match dev.rssi { Some(r) => { (r) " dBm" }, None => { "unknown" } } }
                                td {
                                    @match dev.last_seen {
                                        Some(t) if freshness(t, now, window) == Freshness::Stale => {
                                            "not heard for " (describe_age(t.age_at(now)).trim_end_matches(" ago")) span.badge { "SILENT" }
                                        }
                                        Some(t) => { (age_words(t, now)) }
                                        None => { "never" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let frame = Frame {
        gateway: &state.gateway_name,
        section: Section::Residents,
        now,
        live: Some("readings devices alerts"),
    };
    Ok(
        Html(layout::page(frame, &d.resident.resident.display_name, body).into_string())
            .into_response(),
    )
}

fn age_words(t: Timestamp, now: Timestamp) -> String {
    if freshness(t, now, Duration::MAX) == Freshness::FutureDated {
        "device clock ahead; time unknown".to_owned()
    } else {
        describe_age(t.age_at(now))
    }
}

/// "96 %"-style words for one stored reading, or what the sensor said instead.
fn value_words(h: &HistoryValue) -> String {
    match h.value {
        Value::Number(_) => {
            let sym = h.unit.symbol();
            let n = number(h.quantity, h.value);
            if sym.is_empty() {
                n
            } else {
                format!("{n} {sym}")
            }
        }
        Value::Special(s) => format!(
            "no value (sensor reported {}) {}",
            s.words(),
            h.unit.symbol()
        ),
    }
}

// The chart's drawing box, in SVG user units.
const W: f64 = 600.0;
const H: f64 = 230.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 12.0;
/// Room above the plot for the marks of special values.
const TOP: f64 = 30.0;
const BOTTOM: f64 = 34.0;

/// A "nice" step (1, 2 or 5 × 10^n) giving about `n` intervals over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The y range and its ticks for the values drawn.
fn y_axis(values: &[f64]) -> (f64, f64, Vec<f64>) {
    let (mut lo, mut hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0, vec![0.0, 1.0]);
    }
    if hi - lo < 1e-9 {
        lo -= 1.0;
        hi += 1.0;
    }
    let step = nice_step(hi - lo, 4.0);
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut t = lo;
    while t <= hi + step / 2.0 && ticks.len() < 12 {
        ticks.push(t);
        t += step;
    }
    (lo, hi, ticks)
}

/// Splits points into runs with no gap longer than `gap` between neighbours.
pub(super) fn runs(points: &[(i64, f64)], gap: Duration) -> Vec<Vec<(i64, f64)>> {
    let gap_ms = i64::try_from(gap.as_millis()).unwrap_or(i64::MAX);
    let mut out: Vec<Vec<(i64, f64)>> = Vec::new();
    for p in points {
        match out.last_mut() {
            Some(run) if run.last().is_some_and(|last| p.0 - last.0 <= gap_ms) => run.push(*p),
            _ => out.push(vec![*p]),
        }
    }
    out
}

/// One quantity's last 24 h as an inline SVG figure with a text summary.
fn chart(q: Quantity, points: &[&HistoryValue], now: Timestamp, gap: Duration) -> Markup {
    let end = now.unix_ms();
    let start = now.saturating_sub(CHART_SPAN).unix_ms();
    let unit = points.first().map(|p| p.unit.symbol()).unwrap_or("");
    // A chart draws one unit only; a value in another unit is left to the table.
    let same_unit: Vec<&&HistoryValue> = points
        .iter()
        .filter(|p| p.unit.symbol() == unit && p.taken_at.unix_ms() <= end)
        .collect();
    let numbers: Vec<(i64, f64)> = same_unit
        .iter()
        .filter_map(|p| p.value.number().map(|n| (p.taken_at.unix_ms(), n)))
        .collect();
    let specials: Vec<&&&HistoryValue> = same_unit
        .iter()
        .filter(|p| p.value.number().is_none())
        .collect();
    let future = points.iter().filter(|p| p.taken_at.unix_ms() > end).count();
    let values: Vec<f64> = numbers.iter().map(|p| p.1).collect();
    let (lo, hi, ticks) = y_axis(&values);
    let span_ms = (end - start).max(1) as f64;
    let x = |t: i64| LEFT + (t - start) as f64 / span_ms * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    let id = format!("chart-{}", q.as_str());
    let caption = if unit.is_empty() {
        q.label().to_owned()
    } else {
        format!("{} ({unit})", q.label())
    };
    let mut svg = String::with_capacity(4096 + numbers.len() * 16);
    use std::fmt::Write as _;
    // Grid and y labels.
    for t in &ticks {
        let yy = y(*t);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            tick_label(*t)
        );
    }
    // x ticks every 3 hours on the hour (of UTC), labelled in the site's time.
    let hour = 3_600_000i64;
    let mut t = (start / hour + 1) * hour;
    while t <= end {
        if (t / hour) % 3 == 0 {
            let xx = x(t);
            let label = layout::clock(Timestamp::from_unix_ms(t));
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                H - BOTTOM,
                H - BOTTOM + 18.0,
                label.get(0..5).unwrap_or(&label)
            );
        }
        t += hour;
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}"/><line class="axis" x1="{LEFT}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}"/>"#,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    let _ = write!(
        svg,
        r#"<text x="4" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        TOP - 16.0,
        escape(unit),
        W - RIGHT,
        H - 2.0,
        escape(&layout::zone_abbreviation(Timestamp::from_unix_ms(end)))
    );
    // The values: a line per run without a gap longer than the window; a lone
    // value is a dot.
    for run in runs(&numbers, gap) {
        // A short run is drawn as dots as well, so that it does not vanish.
        if run.len() <= 3 {
            for (t, v) in &run {
                let _ = write!(
                    svg,
                    r#"<circle class="dot" cx="{:.1}" cy="{:.1}" r="4"/>"#,
                    x(*t),
                    y(*v)
                );
            }
        }
        if run.len() > 1 {
            svg.push_str(r#"<polyline class="line" points=""#);
            for (t, v) in &run {
                let _ = write!(svg, "{:.1},{:.1} ", x(*t), y(*v));
            }
            svg.push_str(r#""/>"#);
        }
    }
    // Special values: a triangle above the plot with its words in a tooltip.
    for s in &specials {
        let xx = x(s.taken_at.unix_ms());
        let words = match s.value {
            Value::Special(sv) => sv.words(),
            Value::Number(_) => "",
        };
        let _ = write!(
            svg,
            r#"<path class="special" d="M{:.1},{:.1} l-5,-9 h10 z"><title>no value at {}: sensor reported {}</title></path>"#,
            xx,
            TOP - 4.0,
            layout::clock(s.taken_at),
            escape(words)
        );
    }
    if !specials.is_empty() {
        let _ = write!(
            svg,
            r#"<text class="special-label" x="{:.1}" y="{:.1}" text-anchor="end">▼ no value ({})</text>"#,
            W - RIGHT,
            TOP - 16.0,
            specials.len()
        );
    }
    let summary = summary(q, unit, &numbers, specials.len(), future);
    html! {
        figure.chart {
            figcaption id=(format!("{id}-cap")) { (caption) }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby=(format!("{id}-cap {id}-desc")) {
                desc id=(format!("{id}-desc")) { (summary) }
                (PreEscaped(svg))
            }
            p.age { (summary) }
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn tick_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The chart in words, for screen readers and for anyone who cannot read a chart.
fn summary(
    q: Quantity,
    unit: &str,
    numbers: &[(i64, f64)],
    specials: usize,
    future: usize,
) -> String {
    let with = |v: f64| {
        let n = number(q, Value::Number(v));
        if unit.is_empty() {
            n
        } else {
            format!("{n} {unit}")
        }
    };
    let mut parts = Vec::new();
    match (
        numbers.iter().map(|p| p.1).reduce(f64::min),
        numbers.iter().map(|p| p.1).reduce(f64::max),
        numbers.last(),
    ) {
        (Some(lo), Some(hi), Some(last)) => parts.push(format!(
            "{} reading{}; lowest {}, highest {}; newest {} at {}",
            numbers.len(),
            if numbers.len() == 1 { "" } else { "s" },
            with(lo),
            with(hi),
            with(last.1),
            layout::clock(Timestamp::from_unix_ms(last.0))
                .get(0..5)
                .unwrap_or("")
        )),
        _ => parts.push("no numeric readings".to_owned()),
    }
    if specials > 0 {
        parts.push(format!(
            "{specials} with no value (marked ▼ above the chart)"
        ));
    }
    if future > 0 {
        parts.push(format!(
            "{future} dated in the future, not drawn (check the device clock)"
        ));
    }
    parts.join("; ") + "."
}

/// `GET /api/v1/residents/{id}`: one resident with their devices and newest
/// readings of the last 24 h.
#[derive(Serialize)]
pub struct ResidentDetailJson {
    pub id: i64,
    pub name: String,
    pub room: String,
    pub reference: String,
    pub generated_at: String,
    pub readings: Vec<ReadingJson>,
    pub devices: Vec<super::devices::DeviceJson>,
}

#[derive(Serialize)]
pub struct ReadingJson {
    pub quantity: &'static str,
    /// `null` whenever `status` is not `"ok"`.
    pub value: Option<f64>,
    pub status: &'static str,
    pub unit: &'static str,
    pub taken_at: String,
    pub device: String,
}

pub async fn json(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let not_found = || (StatusCode::NOT_FOUND, format!("no resident {id}")).into_response();
    let Ok(n) = id.parse::<i64>() else {
        return Ok(not_found());
    };
    let now = Timestamp::now();
    let Some(d) = load(&state, n, now).await? else {
        return Ok(not_found());
    };
    let r = d.resident.resident;
    Ok(Json(ResidentDetailJson {
        id: r.id.0,
        name: r.display_name,
        room: r.room,
        reference: r.reference,
        generated_at: now.to_rfc3339(),
        readings: d
            .recent
            .into_iter()
            .map(|h| ReadingJson {
                quantity: h.quantity.as_str(),
                value: h.value.number(),
                status: h.value.status(),
                unit: h.unit.ucum(),
                taken_at: h.taken_at.to_rfc3339(),
                device: h.device.to_string(),
            })
            .collect(),
        devices: d.devices.into_iter().map(Into::into).collect(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_longer_than_the_window_splits_the_line() {
        let min = 60_000;
        let check = |points: &[(i64, f64)], expected: &[usize]| {
            let lens: Vec<usize> = runs(points, Duration::from_secs(600))
                .iter()
                .map(Vec::len)
                .collect();
            assert_eq!(lens, expected, "{points:?}");
        };
        check(&[], &[]);
        check(&[(0, 1.0)], &[1]);
        check(&[(0, 1.0), (10 * min, 2.0)], &[2]);
        check(&[(0, 1.0), (10 * min + 1, 2.0)], &[1, 1]);
        check(
            &[(0, 1.0), (min, 2.0), (30 * min, 3.0), (31 * min, 3.0)],
            &[2, 2],
        );
    }

    #[test]
    fn y_axis_covers_the_values_with_round_ticks() {
        for (values, lo, hi) in [
            (vec![93.0, 97.0], 93.0, 97.0),
            (vec![36.4, 38.1], 36.0, 38.5),
            (vec![72.0], 71.0, 73.0),
        ] {
            let (l, h, ticks) = y_axis(&values);
            assert_eq!((l, h), (lo, hi), "{values:?}");
            assert_eq!(ticks.first(), Some(&lo));
            assert!(
                (ticks.last().copied().unwrap_or(0.0) - hi).abs() < 1e-9,
                "{ticks:?}"
            );
        }
    }
}
