//! Residents management (nurses and admins): add, edit and archive residents,
//! by form (`/residents`, `/residents/new`, `/residents/{id}/edit`,
//! `/residents/{id}/archive`) and by JSON (`POST /api/v1/residents`,
//! `PUT`/`DELETE /api/v1/residents/{id}`).
//!
//! Every input is checked on the server and refused in plain words. The
//! reference is what stands for the resident on the uplink, so it must be
//! pseudonymous: letters, a dash and 4–16 digits or hex (`R-0001`), which leaves
//! no room for a name. Writes go through the store's writer thread; archiving
//! keeps the readings as history and is refused while devices are assigned.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::layout::{self, Frame, Section};
use super::{AppState, WebError, read};
use crate::model::{Resident, ResidentId, Timestamp};
use crate::store::{ResidentChange, ResidentRecord, StoreError};

pub const NAME_MAX: usize = 80;
pub const ROOM_MAX: usize = 40;

/// What a form or a JSON body gives for one resident.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResidentForm {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub room: String,
    #[serde(default)]
    pub reference: String,
}

/// One field's problem, in words for the person filling the form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// A checked resident: trimmed, within limits, with a pseudonymous reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub display_name: String,
    pub room: String,
    pub reference: String,
}

/// Whether `r` looks like `R-0001`: 1–4 letters, a dash, 4–16 digits or hex.
pub fn is_pseudonymous(r: &str) -> bool {
    let Some((prefix, number)) = r.split_once('-') else {
        return false;
    };
    (1..=4).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_alphabetic())
        && (4..=16).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_hexdigit())
}

fn text_field(
    field: &'static str,
    what: &str,
    value: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> String {
    let v = value.trim();
    if v.is_empty() {
        errors.push(FieldError {
            field,
            message: format!("Enter the {what}."),
        });
    } else if v.chars().count() > max {
        errors.push(FieldError {
            field,
            message: format!("The {what} is too long: at most {max} characters."),
        });
    } else if v.chars().any(char::is_control) {
        errors.push(FieldError {
            field,
            message: format!(
                "The {what} contains a character that cannot be shown (a tab or line break)."
            ),
        });
    } else if v.chars().any(is_format_char) {
        // Bidirectional controls (U+202E), zero-width and invisible characters
        // make two residents' names look alike, or one look like another: a
        // wrong-patient risk (issue 17, finding 12).
        errors.push(FieldError {
            field,
            message: format!(
                "The {what} contains an invisible or text-direction character. Type it again without copying and pasting."
            ),
        });
    }
    v.to_owned()
}

/// Whether `c` is in Unicode's general category Cf (format: invisible, or
/// changes how the text around it is shown), Unicode 15.1.
pub fn is_format_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// Checks a form. `current_reference` is the resident's reference before an
/// edit: a reference made before this rule existed may be kept as it is.
pub fn check(
    form: &ResidentForm,
    current_reference: Option<&str>,
) -> Result<Checked, Vec<FieldError>> {
    let mut errors = Vec::new();
    let display_name = text_field(
        "display_name",
        "name",
        &form.display_name,
        NAME_MAX,
        &mut errors,
    );
    let room = text_field("room", "room", &form.room, ROOM_MAX, &mut errors);
    let reference = form.reference.trim().to_owned();
    if reference.is_empty() {
        errors.push(FieldError {
            field: "reference",
            message: "Enter a reference like R-0001.".to_owned(),
        });
    } else if Some(reference.as_str()) != current_reference && !is_pseudonymous(&reference) {
        errors.push(FieldError {
            field: "reference",
            message: "The reference must look like R-0001: 1 to 4 letters, a dash and 4 to 16 digits. It leaves the home, so it must never contain a name.".to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(Checked {
            display_name,
            room,
            reference,
        })
    } else {
        Err(errors)
    }
}

/// What the store said, as a field error, a status and words; internals are
/// logged and never shown.
fn refusal(e: &StoreError) -> (StatusCode, Option<FieldError>, String) {
    match e {
        StoreError::ReferenceTaken(r) => (
            StatusCode::CONFLICT,
            Some(FieldError {
                field: "reference",
                message: format!("Another resident already has the reference {r}. Choose another."),
            }),
            format!("the reference {r} is already used by another resident"),
        ),
        StoreError::NoSuchResident(id) => (
            StatusCode::NOT_FOUND,
            None,
            format!("no resident {id} (or the resident is archived)"),
        ),
        StoreError::DevicesAssigned { devices, .. } => (
            StatusCode::CONFLICT,
            None,
            format!(
                "This resident still has {devices} device(s) assigned. Un-assign them on the Devices page first, so that no reading is filed under someone who has left."
            ),
        ),
        other => {
            tracing::error!(error = %other, "resident change not stored");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "The gateway cannot store the change right now. Try again in a minute.".to_owned(),
            )
        }
    }
}

fn frame(state: &AppState) -> Frame<'_> {
    Frame {
        gateway: &state.gateway_name,
        section: Section::ManageResidents,
        now: Timestamp::now(),
        live: None,
    }
}

#[derive(Deserialize)]
pub struct Done {
    saved: Option<i64>,
    archived: Option<i64>,
}

/// `GET /residents`: everyone, archived last.
pub async fn list(
    State(state): State<AppState>,
    Query(done): Query<Done>,
) -> Result<Html<String>, WebError> {
    let all = read(&state.reader, |r| r.residents_all()).await?;
    let name_of = |id: i64| {
        all.iter()
            .find(|r| r.resident.id.0 == id)
            .map(|r| r.resident.display_name.clone())
    };
    let body = html! {
        @if let Some(name) = done.saved.and_then(name_of) {
            p.notice role="status" { "Saved " (name) "." }
        }
        @if let Some(name) = done.archived.and_then(name_of) {
            p.notice role="status" { (name) " is archived. Their readings are kept as history." }
        }
        p.actions { a.button href="/residents/new" { "Add a resident" } }
        @if all.is_empty() {
            p.none { "No residents yet." }
        } @else {
            table.list {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Room" } th scope="col" { "Reference" } th scope="col" { "Status" } th scope="col" { "Change" } } }
                tbody {
                    @for r in &all {
                        @let id = r.resident.id.0;
                        tr {
                            td {
                                @if r.archived { (r.resident.display_name) }
                                @else { a href=(format!("/residents/{id}")) { (r.resident.display_name) } }
                            }
                            td { (r.resident.room) }
                            td { code { (r.resident.reference) } }
                            td { @if r.archived { "archived" } @else { "living here" } }
                            td.actions {
                                @if !r.archived {
                                    a.button.secondary href=(format!("/residents/{id}/edit")) aria-label=(format!("Edit {}", r.resident.display_name)) { "Edit" }
                                    a.button.secondary href=(format!("/residents/{id}/archive")) aria-label=(format!("Archive {}", r.resident.display_name)) { "Archive" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Html(
        layout::page(frame(&state), "Manage residents", body).into_string(),
    ))
}

/// The add/edit form, with the errors of the last attempt beside their fields.
fn form_markup(action: &str, form: &ResidentForm, errors: &[FieldError], submit: &str) -> Markup {
    let error_of = |f: &str| {
        errors
            .iter()
            .find(|e| e.field == f)
            .map(|e| e.message.clone())
    };
    let field = |name: &'static str, label: &str, hint: &str, value: &str, max: usize| {
        let err = error_of(name);
        let hint_id = format!("{name}-hint");
        let err_id = format!("{name}-error");
        let described = if err.is_some() {
            format!("{hint_id} {err_id}")
        } else {
            hint_id.clone()
        };
        html! {
            div.field {
                label for=(name) { (label) }
                span.hint id=(hint_id) { (hint) }
                @if let Some(e) = &err { p.error id=(err_id) { (e) } }
                input type="text" id=(name) name=(name) value=(value) maxlength=(max) required
                    aria-describedby=(described) aria-invalid=(if err.is_some() { "true" } else { "false" });
            }
        }
    };
    html! {
        @if !errors.is_empty() {
            div.notice.bad role="alert" {
                p { strong { "The resident was not saved:" } }
                ul { @for e in errors { li { a href=(format!("#{}", e.field)) { (e.message) } } } }
            }
        }
        form.stacked method="post" action=(action) {
            (super::csrf_field())
            (field("display_name", "Name", "The name staff know the resident by. It never leaves the gateway.", &form.display_name, NAME_MAX))
            (field("room", "Room", "For example: Room 12.", &form.room, ROOM_MAX))
            (field("reference", "Reference for the cloud", "Like R-0001. It stands for the resident outside the home, so it must never contain a name. Changing it starts a new record in the cloud.", &form.reference, 21))
            p.actions {
                button type="submit" { (submit) }
                a.button.secondary href="/residents" { "Cancel" }
            }
        }
    }
}

fn form_page(state: &AppState, status: StatusCode, title: &str, body: Markup) -> Response {
    (
        status,
        Html(layout::page(frame(state), title, body).into_string()),
    )
        .into_response()
}

/// `GET /residents/new`
pub async fn new_form(State(state): State<AppState>) -> Response {
    let body = form_markup("/residents", &ResidentForm::default(), &[], "Add resident");
    form_page(&state, StatusCode::OK, "Add a resident", body)
}

/// `POST /residents`
pub async fn create(State(state): State<AppState>, Form(form): Form<ResidentForm>) -> Response {
    let errors = match check(&form, None) {
        Ok(c) => {
            let change = ResidentChange::Add {
                display_name: c.display_name,
                room: c.room,
                reference: c.reference,
            };
            match state.store.change_resident(change).await {
                Ok(id) => {
                    return Redirect::to(&format!("/residents?saved={}", id.0)).into_response();
                }
                Err(e) => match refusal(&e) {
                    (_, Some(fe), _) => vec![fe],
                    (status, None, words) => {
                        return layout::error_page(
                            &state.gateway_name,
                            status,
                            "Not saved",
                            &words,
                        );
                    }
                },
            }
        }
        Err(errors) => errors,
    };
    let body = form_markup("/residents", &form, &errors, "Add resident");
    form_page(
        &state,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Add a resident",
        body,
    )
}

async fn living(state: &AppState, id: &str) -> Result<Option<ResidentRecord>, WebError> {
    let Ok(id) = id.parse::<i64>() else {
        return Ok(None);
    };
    Ok(read(&state.reader, move |r| r.resident(ResidentId(id)))
        .await?
        .filter(|r| !r.archived))
}

fn gone(state: &AppState) -> Response {
    layout::error_page(
        &state.gateway_name,
        StatusCode::NOT_FOUND,
        "Resident not found",
        "There is no resident with this number, or their record is archived and can no longer be changed.",
    )
}

/// `GET /residents/{id}/edit`
pub async fn edit_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let Some(r) = living(&state, &id).await? else {
        return Ok(gone(&state));
    };
    let form = ResidentForm {
        display_name: r.resident.display_name.clone(),
        room: r.resident.room.clone(),
        reference: r.resident.reference.clone(),
    };
    let body = form_markup(
        &format!("/residents/{}/edit", r.resident.id.0),
        &form,
        &[],
        "Save changes",
    );
    Ok(form_page(
        &state,
        StatusCode::OK,
        &format!("Edit {}", r.resident.display_name),
        body,
    ))
}

/// `POST /residents/{id}/edit`
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<ResidentForm>,
) -> Result<Response, WebError> {
    let Some(r) = living(&state, &id).await? else {
        return Ok(gone(&state));
    };
    let id = r.resident.id;
    let errors = match check(&form, Some(&r.resident.reference)) {
        Ok(c) => {
            let change = ResidentChange::Edit(Resident {
                id,
                display_name: c.display_name,
                room: c.room,
                reference: c.reference,
            });
            match state.store.change_resident(change).await {
                Ok(_) => {
                    return Ok(Redirect::to(&format!("/residents?saved={}", id.0)).into_response());
                }
                Err(e) => match refusal(&e) {
                    (_, Some(fe), _) => vec![fe],
                    (status, None, words) => {
                        return Ok(layout::error_page(
                            &state.gateway_name,
                            status,
                            "Not saved",
                            &words,
                        ));
                    }
                },
            }
        }
        Err(errors) => errors,
    };
    let body = form_markup(
        &format!("/residents/{}/edit", id.0),
        &form,
        &errors,
        "Save changes",
    );
    Ok(form_page(
        &state,
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Edit {}", r.resident.display_name),
        body,
    ))
}

/// `GET /residents/{id}/archive`: asks before archiving.
pub async fn archive_form(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let Some(r) = living(&state, &id).await? else {
        return Ok(gone(&state));
    };
    let name = &r.resident.display_name;
    let body = html! {
        p { "Archive " strong { (name) } " (" (r.resident.room) ")? They will no longer appear on any page. Their readings are kept as history." }
        form.stacked method="post" action=(format!("/residents/{}/archive", r.resident.id.0)) {
            (super::csrf_field())
            p.actions {
                button.danger type="submit" { "Archive " (name) }
                a.button.secondary href="/residents" { "Cancel" }
            }
        }
    };
    Ok(form_page(
        &state,
        StatusCode::OK,
        &format!("Archive {name}"),
        body,
    ))
}

/// `POST /residents/{id}/archive`
pub async fn archive(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let Some(r) = living(&state, &id).await? else {
        return Ok(gone(&state));
    };
    let id = r.resident.id;
    Ok(
        match state
            .store
            .change_resident(ResidentChange::Archive(id))
            .await
        {
            Ok(_) => Redirect::to(&format!("/residents?archived={}", id.0)).into_response(),
            Err(e) => {
                let (status, _, words) = refusal(&e);
                layout::error_page(&state.gateway_name, status, "Not archived", &words)
            }
        },
    )
}

/// A resident as the JSON API returns it after a change.
#[derive(Debug, Serialize)]
pub struct ResidentRecordJson {
    pub id: i64,
    pub display_name: String,
    pub room: String,
    pub reference: String,
    pub archived: bool,
}

/// The JSON API's refusal: what is wrong, and per field when a field is.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    pub message: String,
    pub fields: Vec<FieldError>,
}

fn json_refusal(status: StatusCode, message: String, fields: Vec<FieldError>) -> Response {
    (status, Json(ErrorJson { message, fields })).into_response()
}

/// The JSON body of POST and PUT: the same fields as the form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidentBody {
    pub display_name: String,
    pub room: String,
    pub reference: String,
}

fn body_form(b: ResidentBody) -> ResidentForm {
    ResidentForm {
        display_name: b.display_name,
        room: b.room,
        reference: b.reference,
    }
}

async fn apply(state: &AppState, change: ResidentChange, created: bool) -> Response {
    let echo = match &change {
        ResidentChange::Add {
            display_name,
            room,
            reference,
        } => (display_name.clone(), room.clone(), reference.clone()),
        ResidentChange::Edit(r) => (r.display_name.clone(), r.room.clone(), r.reference.clone()),
        ResidentChange::Archive(_) => Default::default(),
    };
    match state.store.change_resident(change).await {
        Ok(id) => {
            let body = Json(ResidentRecordJson {
                id: id.0,
                display_name: echo.0,
                room: echo.1,
                reference: echo.2,
                archived: false,
            });
            if created {
                (
                    StatusCode::CREATED,
                    [("location", format!("/api/v1/residents/{}", id.0))],
                    body,
                )
                    .into_response()
            } else {
                body.into_response()
            }
        }
        Err(e) => {
            let (status, field, words) = refusal(&e);
            json_refusal(status, words, field.into_iter().collect())
        }
    }
}

fn bad_json(e: axum::extract::rejection::JsonRejection) -> Response {
    json_refusal(
        e.status(),
        format!("the body is not a resident: {}", e.body_text()),
        Vec::new(),
    )
}

/// `POST /api/v1/residents`
pub async fn api_create(
    State(state): State<AppState>,
    body: Result<Json<ResidentBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    match check(&body_form(body), None) {
        Ok(c) => {
            let change = ResidentChange::Add {
                display_name: c.display_name,
                room: c.room,
                reference: c.reference,
            };
            apply(&state, change, true).await
        }
        Err(fields) => json_refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the resident was not saved".to_owned(),
            fields,
        ),
    }
}

fn api_gone(id: &str) -> Response {
    json_refusal(
        StatusCode::NOT_FOUND,
        format!("no resident {id} (or the resident is archived)"),
        Vec::new(),
    )
}

/// `PUT /api/v1/residents/{id}`
pub async fn api_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ResidentBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, WebError> {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return Ok(bad_json(e)),
    };
    let Some(r) = living(&state, &id).await? else {
        return Ok(api_gone(&id));
    };
    Ok(match check(&body_form(body), Some(&r.resident.reference)) {
        Ok(c) => {
            let change = ResidentChange::Edit(Resident {
                id: r.resident.id,
                display_name: c.display_name,
                room: c.room,
                reference: c.reference,
            });
            apply(&state, change, false).await
        }
        Err(fields) => json_refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the resident was not saved".to_owned(),
            fields,
        ),
    })
}

/// `DELETE /api/v1/residents/{id}`: archives (the readings stay as history).
pub async fn api_archive(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let Some(r) = living(&state, &id).await? else {
        return Ok(api_gone(&id));
    };
    Ok(
        match state
            .store
            .change_resident(ResidentChange::Archive(r.resident.id))
            .await
        {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => {
                let (status, _, words) = refusal(&e);
                json_refusal(status, words, Vec::new())
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(name: &str, room: &str, reference: &str) -> ResidentForm {
        ResidentForm {
            display_name: name.into(),
            room: room.into(),
            reference: reference.into(),
        }
    }

    /// `(form, current reference, fields refused)`
    #[test]
    fn forms_are_checked_in_plain_words() {
        let long = "x".repeat(NAME_MAX + 1);
        let cases: &[(ResidentForm, Option<&str>, &[&str])] = &[
            (form("Ada", "Room 1", "R-0001"), None, &[]),
            (form("  Ada  ", " Room 1 ", " r-00ab12 "), None, &[]),
            (form("", "Room 1", "R-0001"), None, &["display_name"]),
            (form("Ada", "   ", "R-0001"), None, &["room"]),
            (form(&long, "Room 1", "R-0001"), None, &["display_name"]),
            (form("Ada\tX", "Room 1", "R-0001"), None, &["display_name"]),
            // Regression (issue 17, finding 12): bidirectional and invisible
            // characters made two residents' names look alike.
            (
                form("Ada\u{202E}ecalevoL", "Room 1", "R-0001"),
                None,
                &["display_name"],
            ),
            (
                form("Ad\u{200B}a", "Room 1", "R-0001"),
                None,
                &["display_name"],
            ),
            (
                form("\u{2066}Ada\u{2069}", "Room 1", "R-0001"),
                None,
                &["display_name"],
            ),
            (form("Ada", "Room\u{FEFF} 1", "R-0001"), None, &["room"]),
            (form("Zoë Ó Dálaigh-Nguyễn", "Room 1", "R-0001"), None, &[]),
            (form("Ada", "Room 1", ""), None, &["reference"]),
            (form("Ada", "Room 1", "Ada Lovelace"), None, &["reference"]),
            (form("Ada", "Room 1", "R-Ada"), None, &["reference"]),
            (form("Ada", "Room 1", "R-12"), None, &["reference"]),
            (form("Ada", "Room 1", "ROOMS-0001"), None, &["reference"]),
            // A reference made before the rule may stay as it is, not be changed to another bad one.
            (form("Ada", "Room 1", "res-1"), Some("res-1"), &[]),
            (
                form("Ada", "Room 1", "res-2"),
                Some("res-1"),
                &["reference"],
            ),
            (
                form("", "", ""),
                None,
                &["display_name", "room", "reference"],
            ),
        ];
        for (f, current, refused) in cases {
            let got: Vec<&str> = match check(f, *current) {
                Ok(c) => {
                    assert_eq!(c.display_name, f.display_name.trim());
                    assert_eq!(c.reference, f.reference.trim());
                    Vec::new()
                }
                Err(errors) => {
                    assert!(
                        errors.iter().all(|e| e.message.ends_with('.')),
                        "{errors:?}"
                    );
                    errors.iter().map(|e| e.field).collect()
                }
            };
            assert_eq!(&got, refused, "{f:?}");
        }
    }
}
