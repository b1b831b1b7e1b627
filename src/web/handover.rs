//! `/handover`: the shift handover on one printable page. Every resident with
//! their last observations (each value with its unit, time and age; a stale one
//! marked STALE, never shown as current), their NEWS2 with its age, and their
//! open alerts and those resolved in the last 12 hours. `/handover.csv` is the
//! same values for a spreadsheet, in the care home's local time.
//!
//! The page never refreshes itself (it is read and printed); its "as at" time
//! says when it was made.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use maud::html;

use super::layout::{Frame, Section};
use super::overview_data::Overview;
use super::pages::{news2_block, sensor_news2, with_unit};
use super::{AppState, WebError, describe_age};
use crate::clinical::{Freshness, freshness};
use crate::model::Timestamp;
use crate::store::{AlertRecord, ResidentOverview};

/// Resolved alerts shown at handover: those of the shift just ending.
const RECENT: Duration = Duration::from_secs(12 * 3600);

/// The residents, their SpO₂ scales and the alerts (open and recent).
async fn gather(
    state: &AppState,
) -> Result<
    (
        Vec<ResidentOverview>,
        std::collections::HashMap<i64, crate::clinical::news2::Spo2Scale>,
        Vec<AlertRecord>,
    ),
    WebError,
> {
    let (residents, scales) = match state.overview.get(state).await? {
        Overview::Snapshot(s) => ((*s.residents).clone(), (*s.scales).clone()),
        Overview::Partial {
            residents, scales, ..
        } => (residents, scales?),
    };
    let alerts = super::alert_page::with_book(state, |b| b.list(100)).await?;
    Ok((residents, scales, alerts))
}

fn recent(a: &AlertRecord, now: Timestamp) -> bool {
    a.resolved_at.is_none_or(|t| t.age_at(now) <= RECENT)
}

/// `GET /handover`.
pub async fn page(State(state): State<AppState>) -> Result<Html<String>, WebError> {
    let (residents, scales, alerts) = gather(&state).await?;
    let now = Timestamp::now();
    let body = html! {
        p.handover-meta {
            "As at " strong { (super::layout::short_clock(now)) } " on " (super::layout::date_time(now))
            ". Values older than the clinical window are marked STALE. "
            a.noprint href="/handover.csv" download { "Download as CSV" }
        }
        @if residents.is_empty() { p.none { "No residents yet." } }
        @for r in &residents {
            @let scale = scales.get(&r.id.0).copied().unwrap_or_default();
            @let score = sensor_news2(r, scale, now, state.stale_after);
            section.handover aria-labelledby=(format!("h-{}", r.id.0)) {
                h2 id=(format!("h-{}", r.id.0)) { (r.display_name) ", " (r.room) }
                (news2_block(score.as_ref(), now))
                @if r.latest.is_empty() {
                    p.none { "No observations yet." }
                } @else {
                    table.handover {
                        tr { th scope="col" { "Observation" } th scope="col" { "Value" } th scope="col" { "Taken" } }
                        @for v in &r.latest {
                            @let stale = freshness(v.taken_at, now, state.stale_after) != Freshness::Current;
                            tr class=[stale.then_some("stale")] {
                                th scope="row" { (v.quantity.label()) @if stale { " " span.badge { "STALE" } } }
                                td { (with_unit(v)) }
                                td { "at " (super::layout::short_clock(v.taken_at)) " (" @if stale { "last reading " } (describe_age(v.taken_at.age_at(now))) ")" }
                            }
                        }
                    }
                }
                @let mine: Vec<&AlertRecord> = alerts.iter().filter(|a| a.resident_id == Some(r.id.0) && recent(a, now)).collect();
                @if mine.is_empty() {
                    p.quiet { "No alerts open or in the last 12 hours." }
                } @else {
                    ul.handover-alerts {
                        @for a in mine {
                            li {
                                strong { (a.severity) } ": " (a.message)
                                @match (a.resolved_at, &a.acknowledged_by) {
                                    (None, _) if a.cleared_unseen() => { " — " strong { "STILL OPEN" } ", cause cleared, not yet seen" }
                                    (None, Some(by)) => { " — open, acknowledged by " (by) }
                                    (None, None) => { " — " strong { "OPEN" } ", not yet acknowledged" }
                                    (Some(t), _) => { " — resolved at " (super::layout::short_clock(t)) }
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
        section: Section::Handover,
        now,
        live: None,
    };
    Ok(Html(
        super::layout::page(frame, "Shift handover", body).into_string(),
    ))
}

/// A CSV field: quoted, with quotes doubled, and a leading formula sign
/// neutralised so that a spreadsheet shows a name, never runs it.
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `GET /handover.csv`: one line per resident and observation.
pub async fn csv(State(state): State<AppState>) -> Result<Response, WebError> {
    let (residents, _, _) = gather(&state).await?;
    let now = Timestamp::now();
    let mut out = String::from("resident,room,observation,value,taken (local time),age,stale\r\n");
    for r in &residents {
        for v in &r.latest {
            let stale = freshness(v.taken_at, now, state.stale_after) != Freshness::Current;
            let line = [
                field(&r.display_name),
                field(&r.room),
                field(v.quantity.label()),
                field(&with_unit(v)),
                field(&super::layout::date_time(v.taken_at)),
                field(&describe_age(v.taken_at.age_at(now))),
                field(if stale { "STALE" } else { "" }),
            ]
            .join(",");
            out.push_str(&line);
            out.push_str("\r\n");
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"handover.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}
