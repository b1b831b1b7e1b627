//! Reading the audit log (admins): `/audit` (paged, newest first), `/audit.csv`
//! (everything, for export) and `/api/v1/audit` (JSON, paged). Writing happens
//! in the middleware ([`super::authorize`]) and the sign-in handlers.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use maud::html;
use serde::{Deserialize, Serialize};

use crate::model::Timestamp;
use crate::store::accounts::AuditEntry;
use crate::web::{AppState, WebError};

/// Entries per page.
pub const PAGE: u64 = 100;
/// The API's largest page.
pub const MAX_LIMIT: u64 = 1000;

#[derive(Deserialize)]
pub struct PageQuery {
    /// 1-based page number of the HTML view.
    pub page: Option<u64>,
}

#[derive(Deserialize)]
pub struct ApiQuery {
    pub offset: Option<u64>,
    pub limit: Option<u64>,
}

async fn fetch(
    state: &AppState,
    offset: u64,
    limit: u64,
) -> Result<(Vec<AuditEntry>, u64), WebError> {
    let accounts = state.accounts.clone();
    Ok(tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            accounts.audit_page(offset, limit)?,
            accounts.audit_count()?,
        ))
    })
    .await??)
}

/// `GET /audit?page=N`.
pub async fn page(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, WebError> {
    let n = q.page.unwrap_or(1).max(1);
    let (entries, total) = fetch(&state, (n - 1).saturating_mul(PAGE), PAGE).await?;
    let pages = total.div_ceil(PAGE).max(1);
    let body = html! {
        section.audit {
            p { (total) " entries, newest first. Page " (n) " of " (pages) ". " a href="/audit.csv" download { "Export all as CSV" } }
            table {
                tr { th { "When" } th { "Who" } th { "What" } th { "About" } th { "From" } th { "Result" } }
                @for e in &entries {
                    tr { td { time datetime=(e.at.to_rfc3339()) { (crate::web::layout::date_time(e.at)) } } td { (e.who) } td { (e.action) } td { (e.target) } td { (e.client) } td { (e.status) } }
                }
            }
            nav {
                @if n > 1 { a href=(format!("/audit?page={}", n - 1)) { "Newer" } " " }
                @if n < pages { a href=(format!("/audit?page={}", n + 1)) { "Older" } }
            }
        }
    };
    Ok(Html(
        crate::web::pages::form_page("Audit log", Timestamp::now(), body).into_string(),
    ))
}

/// One CSV field: quoted, quotes doubled, and defused after any separator so
/// that a spreadsheet does not run it as a formula (`store::accounts::csv_cell`).
fn csv_field(s: &str) -> String {
    crate::store::accounts::csv_cell(s)
}

/// The CSV export of the given entries. The first column is the time as the
/// care home's clocks showed it, with the zone's abbreviation, for the person
/// who opens the file; the second the same instant in UTC, for a machine.
pub fn csv(entries: &[AuditEntry]) -> String {
    let mut out = String::from("local time,at_utc,who,action,target,client,status\r\n");
    for e in entries {
        out.push_str(&format!(
            "{}:{} {},{},{},{},{},{},{}\r\n",
            crate::web::layout::date_time(e.at),
            // Seconds: entries within a minute stay apart.
            crate::web::layout::clock(e.at).get(6..8).unwrap_or("00"),
            crate::web::layout::zone_abbreviation(e.at),
            e.at.to_rfc3339(),
            csv_field(&e.who),
            csv_field(&e.action),
            csv_field(&e.target),
            csv_field(&e.client),
            e.status
        ));
    }
    out
}

/// `GET /audit.csv`: every entry, newest first.
pub async fn export(State(state): State<AppState>) -> Result<Response, WebError> {
    let (entries, _) = fetch(&state, 0, u64::MAX / 2).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"carehub-audit.csv\"",
            ),
        ],
        csv(&entries),
    )
        .into_response())
}

#[derive(Serialize)]
pub struct AuditJson {
    pub total: u64,
    pub offset: u64,
    pub entries: Vec<AuditEntryJson>,
}

#[derive(Serialize)]
pub struct AuditEntryJson {
    pub at: String,
    pub who: String,
    pub action: String,
    pub target: String,
    pub client: String,
    pub status: u16,
}

/// `GET /api/v1/audit?offset=0&limit=100`: newest first.
pub async fn api(
    State(state): State<AppState>,
    Query(q): Query<ApiQuery>,
) -> Result<Json<AuditJson>, WebError> {
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_LIMIT);
    let (entries, total) = fetch(&state, offset, limit).await?;
    Ok(Json(AuditJson {
        total,
        offset,
        entries: entries
            .into_iter()
            .map(|e| AuditEntryJson {
                at: e.at.to_rfc3339(),
                who: e.who,
                action: e.action,
                target: e.target,
                client: e.client,
                status: e.status,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_defuses_formulas_after_any_separator() {
        // Regression (issue 17, finding 8): a cell after `;` was not defused.
        for (given, want) in [
            ("a;=HYPERLINK(\"x\")", "\"a;'=HYPERLINK(\"\"x\"\")\""),
            ("a,+1", "\"a,'+1\""),
            ("a\t@SUM(A1)", "\"a\t'@SUM(A1)\""),
            ("a| -2", "\"a| '-2\""),
            ("x\n=1", "\"x\n'=1\""),
            ("=1", "\"'=1\""),
            ("10.0.0.2", "\"10.0.0.2\""),
            ("a-b;c", "\"a-b;c\""),
        ] {
            assert_eq!(csv_field(given), want, "{given:?}");
        }
    }

    #[test]
    fn csv_quotes_fields_and_defuses_formulas() {
        let e = AuditEntry {
            at: Timestamp::from_unix_ms(0),
            who: "ann".into(),
            action: "POST /users".into(),
            target: "=HYPERLINK(\"x\")".into(),
            client: "10.0.0.2".into(),
            status: 303,
        };
        // The local column is in whatever zone this test process's pages use
        // (UTC, or Europe/London once a page test has set it).
        let local = format!(
            "{}:00 {}",
            crate::web::layout::date_time(e.at),
            crate::web::layout::zone_abbreviation(e.at)
        );
        assert!(local.starts_with("1970-01-01 0"), "{local}");
        assert_eq!(
            csv(&[e]),
            format!(
                "local time,at_utc,who,action,target,client,status\r\n{local},1970-01-01T00:00:00.000Z,\"ann\",\"POST /users\",\"'=HYPERLINK(\"\"x\"\")\",\"10.0.0.2\",303\r\n"
            )
        );
    }
}
