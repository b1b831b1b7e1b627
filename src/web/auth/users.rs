//! The users page (admins): list, add with a role, disable or enable, reset a
//! password, clear an account's failed sign-ins (so a member of staff made to
//! wait by someone guessing her password from her own desk can sign in now). The last enabled admin cannot be disabled. A disabled account or a
//! reset password ends that account's sessions at once.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::password;
use super::{Principal, csrf_field};
use crate::model::Timestamp;
use crate::store::accounts::{AccountError, Role, User};
use crate::web::{AppState, WebError};

fn page(users: &[User], error: Option<&str>) -> Html<String> {
    let body: Markup = html! {
        section.users {
            @if let Some(e) = error {
                p.error role="alert" { strong { "Not done: " } (e) }
            }
            table {
                tr { th { "Username" } th { "Role" } th { "State" } th { "Added" } th { "Change" } }
                @for u in users {
                    tr {
                        td { (u.username) }
                        td { (u.role.as_str()) }
                        td { @if u.disabled { "disabled" } @else { "active" } }
                        td { (crate::web::layout::date_time(u.created_at)) @if let Some(by) = &u.created_by { " by " (by) } }
                        td {
                            @if u.disabled {
                                form method="post" action=(format!("/users/{}/enable", u.id)) { (csrf_field()) button type="submit" { "Enable" } }
                            } @else {
                                form method="post" action=(format!("/users/{}/disable", u.id)) { (csrf_field()) button type="submit" { "Disable" } }
                            }
                            form method="post" action=(format!("/users/{}/unlock", u.id)) { (csrf_field()) button type="submit" { "Clear failed sign-ins" } }
                            form method="post" action=(format!("/users/{}/password", u.id)) {
                                (csrf_field())
                                label { "New password " input type="password" name="password" autocomplete="new-password" minlength="12" required; }
                                button type="submit" { "Reset password" }
                            }
                        }
                    }
                }
            }
            h2 { "Add a user" }
            form method="post" action="/users" {
                (csrf_field())
                p { label { "Username" br; input type="text" name="username" required; } }
                p { label { "Role" br;
                    select name="role" {
                        option value="carer" { "carer: sees residents, acknowledges alerts" }
                        option value="nurse" { "nurse: also residents, thresholds, pairing, alerts" }
                        option value="admin" { "admin: also users, settings, devices, audit log" }
                    }
                } }
                p { label { "Password (at least 12 characters, not the username)" br; input type="password" name="password" autocomplete="new-password" minlength="12" required; } }
                p { button type="submit" { "Add" } }
            }
        }
    };
    Html(crate::web::pages::form_page("Users", Timestamp::now(), body).into_string())
}

async fn list(state: &AppState) -> Result<Vec<User>, WebError> {
    let accounts = state.accounts.clone();
    Ok(tokio::task::spawn_blocking(move || accounts.users()).await??)
}

async fn refused(state: &AppState, why: &str) -> Result<Response, WebError> {
    let users = list(state).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, page(&users, Some(why))).into_response())
}

/// `GET /users`.
pub async fn users_page(State(state): State<AppState>) -> Result<Html<String>, WebError> {
    Ok(page(&list(&state).await?, None))
}

#[derive(Deserialize)]
pub struct AddForm {
    pub username: String,
    pub role: String,
    pub password: String,
}

/// `POST /users`.
pub async fn add(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<Principal>,
    Form(form): Form<AddForm>,
) -> Result<Response, WebError> {
    let username = form.username.trim().to_owned();
    let Some(role) = Role::parse(&form.role) else {
        return refused(&state, "choose carer, nurse or admin").await;
    };
    if let Err(why) = password::check_username(&username) {
        return refused(&state, why).await;
    }
    if let Err(why) = password::check_policy(&username, &form.password) {
        return refused(&state, why).await;
    }
    let Ok(permit) = password::gate().await else {
        return Ok(password::busy_response());
    };
    let accounts = state.accounts.clone();
    let result =
        tokio::task::spawn_blocking(move || -> Result<Result<User, AccountError>, WebError> {
            let hash = {
                let _permit = permit;
                password::hash(&form.password)?
            };
            Ok(accounts.create_user(&username, &hash, role, &by.username, Timestamp::now()))
        })
        .await??;
    match result {
        Ok(_) => Ok(Redirect::to("/users").into_response()),
        Err(e @ AccountError::Taken(_)) => refused(&state, &e.to_string()).await,
        Err(e) => Err(e.into()),
    }
}

async fn set_disabled(state: AppState, id: i64, disabled: bool) -> Result<Response, WebError> {
    let accounts = state.accounts.clone();
    let result = tokio::task::spawn_blocking(move || accounts.set_disabled(id, disabled)).await?;
    match result {
        Ok(_) => Ok(Redirect::to("/users").into_response()),
        Err(e @ (AccountError::LastAdmin | AccountError::NoSuchUser)) => {
            refused(&state, &e.to_string()).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /users/{id}/disable`.
pub async fn disable(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    set_disabled(state, id, true).await
}

/// `POST /users/{id}/enable`.
pub async fn enable(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    set_disabled(state, id, false).await
}

#[derive(Deserialize)]
pub struct PasswordForm {
    pub password: String,
}

/// `POST /users/{id}/password`: a new password; the account's sessions end.
pub async fn reset_password(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Form(form): Form<PasswordForm>,
) -> Result<Response, WebError> {
    let accounts = state.accounts.clone();
    let Some(user) = tokio::task::spawn_blocking(move || accounts.user(id)).await?? else {
        return refused(&state, "no such account").await;
    };
    if let Err(why) = password::check_policy(&user.username, &form.password) {
        return refused(&state, why).await;
    }
    let Ok(permit) = password::gate().await else {
        return Ok(password::busy_response());
    };
    let accounts = state.accounts.clone();
    tokio::task::spawn_blocking(move || -> Result<(), WebError> {
        let hash = {
            let _permit = permit;
            password::hash(&form.password)?
        };
        Ok(accounts.set_password(id, &hash)?)
    })
    .await??;
    Ok(Redirect::to("/users").into_response())
}

/// `POST /users/{id}/unlock`: forgets the account's failed sign-ins from every
/// address, so no wait applies to it any more.
pub async fn unlock(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let accounts = state.accounts.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<bool, WebError> {
        let Some(user) = accounts.user(id)? else {
            return Ok(false);
        };
        accounts.clear_failures_with_prefix(&super::signin::account_prefix(&user.username))?;
        Ok(true)
    })
    .await??;
    if !found {
        return refused(&state, "no such account").await;
    }
    Ok(Redirect::to("/users").into_response())
}
