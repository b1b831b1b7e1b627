//! Signing in and out, the first admin (`/setup` with the one-time setup code)
//! and the demo's one-time sign-in link.
//!
//! Sign-in failures are counted in SQLite per account name and per client
//! address: [`MAX_FAILURES`] within [`LOCKOUT`] lock both out for the rest of
//! that time, across restarts. An unknown name and a wrong password get the same
//! words and take the same time (a dummy hash is checked).

use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::password::{self, NO_PASSWORD};
use super::{Principal, client_ip, client_label, cookie, write_audit};
use crate::model::Timestamp;
use crate::store::accounts::{AccountError, Accounts, AuditEntry, CodeKind, Role, User};
use crate::web::{AppState, WebError};

/// Failed sign-ins allowed per account name and per client address...
pub const MAX_FAILURES: u32 = 5;
/// ...within this long, which is also how long the lock-out lasts.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// How long the first-start setup code works.
pub const SETUP_CODE_VALID: Duration = Duration::from_secs(24 * 3600);
/// How long the demo's sign-in link works.
pub const SIGNIN_LINK_VALID: Duration = Duration::from_secs(15 * 60);

const BAD_CREDENTIALS: &str = "The username or password is not right.";
const LOCKED: &str =
    "Too many failed sign-ins. Wait 15 minutes, then try again, or ask an administrator.";

fn form_page(title: &str, body: Markup) -> Html<String> {
    Html(crate::web::pages::form_page(title, Timestamp::now(), body).into_string())
}

fn error_box(error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error {
            p.error role="alert" { strong { "Not done: " } (e) }
        }
    }
}

/// Where to go after signing in: only a path on this site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    pub next: Option<String>,
}

fn login_form(error: Option<&str>, next: &str, username: &str) -> Markup {
    html! {
        section.form {
            (error_box(error))
            form method="post" action="/login" {
                (super::csrf_field())
                input type="hidden" name="next" value=(next);
                p { label { "Username" br; input type="text" name="username" value=(username) autocomplete="username" required autofocus; } }
                p { label { "Password" br; input type="password" name="password" autocomplete="current-password" required; } }
                p { button type="submit" { "Sign in" } }
            }
            p { small { "First start? An administrator creates the first account at " a href="/setup" { "/setup" } " with the setup code from the gateway's log." } }
        }
    }
}

/// `GET /login`.
pub async fn login_page(Query(q): Query<NextQuery>) -> Html<String> {
    form_page(
        "Sign in",
        login_form(None, &safe_next(q.next.as_deref()), ""),
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub next: Option<String>,
}

/// Starts a new session for `user` (a fresh token: the old session, if the
/// browser sent one, is deleted, so a planted token is never promoted); returns
/// the `Set-Cookie` value.
pub async fn start_session(
    state: &AppState,
    user: &User,
    client: &str,
    old: Option<[u8; 32]>,
) -> Result<String, WebError> {
    let token = password::new_token()?;
    let csrf = password::new_token()?;
    let hash = password::token_hash(&token);
    let accounts = state.accounts.clone();
    let (user_id, client) = (user.id, client.to_owned());
    tokio::task::spawn_blocking(move || {
        if let Some(old) = old {
            accounts.delete_session(&old)?;
        }
        accounts.create_session(&hash, user_id, &csrf, &client, Timestamp::now())
    })
    .await??;
    Ok(state.auth.session_cookie(&token))
}

fn old_session(state: &AppState, headers: &HeaderMap) -> Option<[u8; 32]> {
    cookie(headers, state.auth.cookie_name()).map(password::token_hash)
}

fn with_cookie(cookie: String, to: &str) -> Response {
    let mut res = Redirect::to(to).into_response();
    if let Ok(v) = cookie.parse() {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

enum Outcome {
    Locked,
    Bad,
    Ok(User),
}

/// `POST /login`.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, WebError> {
    let client = client_label(client_ip(request.extensions()));
    let Form(form) = match Form::<LoginForm>::from_request(request, &()).await {
        Ok(f) => f,
        Err(_) => {
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                "Type a username and a password.",
            )
                .into_response());
        }
    };
    let next = safe_next(form.next.as_deref());
    let username = form.username.trim().to_owned();
    let accounts = state.accounts.clone();
    let (name, pw, ip) = (username.clone(), form.password, client.clone());
    let outcome = tokio::task::spawn_blocking(move || -> Result<Outcome, WebError> {
        let now = Timestamp::now();
        let since = now.saturating_sub(LOCKOUT);
        let user_key = format!("user:{}", name.to_lowercase());
        let ip_key = format!("ip:{ip}");
        if accounts.failures_since(&user_key, since)? >= MAX_FAILURES
            || accounts.failures_since(&ip_key, since)? >= MAX_FAILURES
        {
            // Same time as a real check, so a locked account is not told apart by timing.
            password::verify_dummy(&pw);
            return Ok(Outcome::Locked);
        }
        let creds = accounts.credentials(&name)?;
        let good = match &creds {
            Some(c) if !c.user.disabled => password::verify(&pw, &c.password_hash),
            _ => {
                password::verify_dummy(&pw);
                false
            }
        };
        match creds {
            Some(c) if good => {
                accounts.clear_failures(&user_key)?;
                Ok(Outcome::Ok(c.user))
            }
            _ => {
                accounts.record_failure(&[&user_key, &ip_key], now, since)?;
                Ok(Outcome::Bad)
            }
        }
    })
    .await??;
    let (status, action, response) = match outcome {
        Outcome::Locked => (429, "sign in refused: locked out", None),
        Outcome::Bad => (401, "sign in failed", None),
        Outcome::Ok(user) => {
            let cookie =
                start_session(&state, &user, &client, old_session(&state, &headers)).await?;
            (303, "sign in", Some(with_cookie(cookie, &next)))
        }
    };
    write_audit(
        &state,
        AuditEntry {
            at: Timestamp::now(),
            who: username.clone(),
            action: action.to_owned(),
            target: username.clone(),
            client,
            status,
        },
    )
    .await;
    Ok(match response {
        Some(r) => r,
        None => {
            let (code, words) = if status == 429 {
                (StatusCode::TOO_MANY_REQUESTS, LOCKED)
            } else {
                (StatusCode::UNAUTHORIZED, BAD_CREDENTIALS)
            };
            (
                code,
                form_page("Sign in", login_form(Some(words), &next, &username)),
            )
                .into_response()
        }
    })
}

use axum::extract::FromRequest;

/// `POST /logout`: deletes the session and the cookie.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, WebError> {
    let principal = request.extensions().get::<Principal>().cloned();
    if let Some(hash) = old_session(&state, &headers) {
        let accounts = state.accounts.clone();
        tokio::task::spawn_blocking(move || accounts.delete_session(&hash)).await??;
    }
    if let Some(p) = principal {
        write_audit(
            &state,
            AuditEntry {
                at: Timestamp::now(),
                who: p.username.clone(),
                action: "sign out".to_owned(),
                target: p.username,
                client: client_label(client_ip(request.extensions())),
                status: 303,
            },
        )
        .await;
    }
    Ok(with_cookie(state.auth.clear_cookie(), "/login"))
}

fn setup_form(error: Option<&str>, username: &str) -> Markup {
    html! {
        section.form {
            p { "No administrator account exists yet. Type the setup code from the gateway's log (" code { "journalctl -u carehub" } ") and choose the first administrator's name and password." }
            (error_box(error))
            form method="post" action="/setup" {
                (super::csrf_field())
                p { label { "Setup code" br; input type="text" name="code" autocomplete="off" required autofocus; } }
                p { label { "Administrator's username" br; input type="text" name="username" value=(username) autocomplete="username" required; } }
                p { label { "Password (at least 12 characters, not the username)" br; input type="password" name="password" autocomplete="new-password" minlength="12" required; } }
                p { label { "The same password again" br; input type="password" name="password_again" autocomplete="new-password" required; } }
                p { button type="submit" { "Create the administrator" } }
            }
        }
    }
}

async fn has_admin(state: &AppState) -> Result<bool, WebError> {
    let accounts = state.accounts.clone();
    Ok(tokio::task::spawn_blocking(move || accounts.has_admin()).await??)
}

/// `GET /setup`: the form while no admin exists.
pub async fn setup_page(State(state): State<AppState>) -> Result<Response, WebError> {
    if has_admin(&state).await? {
        return Ok(Redirect::to("/login").into_response());
    }
    Ok(form_page("First start", setup_form(None, "")).into_response())
}

#[derive(Deserialize)]
pub struct SetupForm {
    pub code: String,
    pub username: String,
    pub password: String,
    pub password_again: String,
}

/// `POST /setup`: uses the setup code (once) and creates the first admin.
pub async fn setup(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, WebError> {
    let client = client_label(client_ip(request.extensions()));
    let Form(form) = match Form::<SetupForm>::from_request(request, &()).await {
        Ok(f) => f,
        Err(_) => {
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                form_page("First start", setup_form(Some("fill in every field"), "")),
            )
                .into_response());
        }
    };
    let username = form.username.trim().to_owned();
    let refuse = |why: &str| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            form_page("First start", setup_form(Some(why), &username)),
        )
            .into_response()
    };
    if let Err(why) = password::check_username(&username) {
        return Ok(refuse(why));
    }
    if let Err(why) = password::check_policy(&username, &form.password) {
        return Ok(refuse(why));
    }
    if form.password != form.password_again {
        return Ok(refuse("the two passwords are not the same"));
    }
    let accounts = state.accounts.clone();
    let code_hash = password::token_hash(&password::normalise_code(&form.code));
    let (name, pw) = (username.clone(), form.password);
    let created = tokio::task::spawn_blocking(move || -> Result<Result<User, &'static str>, WebError> {
        if accounts.has_admin()? {
            return Ok(Err("an administrator exists already: sign in instead"));
        }
        // Hash before using the code, so that a slow hash cannot leave the code
        // used and no account made.
        let hash = password::hash(&pw)?;
        let now = Timestamp::now();
        if accounts.use_code(&code_hash, CodeKind::Setup, now)?.is_none() {
            return Ok(Err("the setup code is not right, was used already, or has expired (restart carehub for a new one)"));
        }
        match accounts.create_user(&name, &hash, Role::Admin, "setup code", now) {
            Ok(u) => Ok(Ok(u)),
            Err(AccountError::Taken(_)) => Ok(Err("that username is taken")),
            Err(e) => Err(e.into()),
        }
    })
    .await??;
    let user = match created {
        Ok(u) => u,
        Err(why) => {
            write_audit(
                &state,
                AuditEntry {
                    at: Timestamp::now(),
                    who: "anonymous".into(),
                    action: "setup refused".into(),
                    target: username.clone(),
                    client,
                    status: 422,
                },
            )
            .await;
            return Ok(refuse(why));
        }
    };
    write_audit(
        &state,
        AuditEntry {
            at: Timestamp::now(),
            who: user.username.clone(),
            action: "first admin created with the setup code".into(),
            target: user.username.clone(),
            client: client.clone(),
            status: 303,
        },
    )
    .await;
    let cookie = start_session(&state, &user, &client, old_session(&state, &headers)).await?;
    Ok(with_cookie(cookie, "/users"))
}

/// `GET /signin/{token}`: the demo's one-time link; signs in as its account.
pub async fn signin_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, WebError> {
    let client = client_label(client_ip(request.extensions()));
    let accounts = state.accounts.clone();
    let hash = password::token_hash(&token);
    let user = tokio::task::spawn_blocking(move || -> Result<Option<User>, WebError> {
        match accounts.use_code(&hash, CodeKind::SignIn, Timestamp::now())? {
            Some(Some(id)) => Ok(accounts.user(id)?.filter(|u| !u.disabled)),
            _ => Ok(None),
        }
    })
    .await??;
    let Some(user) = user else {
        write_audit(
            &state,
            AuditEntry {
                at: Timestamp::now(),
                who: "anonymous".into(),
                action: "sign-in link refused".into(),
                target: "/signin".into(),
                client,
                status: 403,
            },
        )
        .await;
        return Ok((
            StatusCode::FORBIDDEN,
            form_page("Sign in", html! { p.error { "This sign-in link was used already or has expired. Restart " code { "carehub demo" } " for a new one, or " a href="/login" { "sign in" } "." } }),
        )
            .into_response());
    };
    write_audit(
        &state,
        AuditEntry {
            at: Timestamp::now(),
            who: user.username.clone(),
            action: "sign in with a one-time link".into(),
            target: user.username.clone(),
            client: client.clone(),
            status: 303,
        },
    )
    .await;
    let cookie = start_session(&state, &user, &client, old_session(&state, &headers)).await?;
    Ok(with_cookie(cookie, "/"))
}

/// What start-up did about accounts.
#[derive(Debug, Clone, PartialEq)]
pub enum FirstStart {
    /// An admin exists: nothing to do.
    Ready,
    /// No admin: this setup code (printed to the log) creates the first.
    SetupCode(String),
    /// Demo: sign in with this one-time token at `/signin/{token}`.
    SignInLink(String),
}

/// The account the demo's sign-in link signs in as.
pub const DEMO_USER: &str = "demo";

/// At start-up: in the demo, a one-time sign-in link for the demo admin (made if
/// missing, with no usable password); otherwise, while no admin exists, a fresh
/// setup code (older ones stop working). Blocking.
pub fn first_start(accounts: &Accounts, demo: bool) -> Result<FirstStart, WebError> {
    let now = Timestamp::now();
    if demo {
        let user = match accounts.credentials(DEMO_USER)? {
            Some(c) => c.user,
            None => {
                accounts.create_user(DEMO_USER, NO_PASSWORD, Role::Admin, "carehub demo", now)?
            }
        };
        let token = password::new_token()?;
        accounts.create_code(
            &password::token_hash(&token),
            CodeKind::SignIn,
            Some(user.id),
            now.saturating_add(SIGNIN_LINK_VALID),
        )?;
        return Ok(FirstStart::SignInLink(token));
    }
    if accounts.has_admin()? {
        return Ok(FirstStart::Ready);
    }
    let code = password::new_setup_code()?;
    accounts.create_code(
        &password::token_hash(&password::normalise_code(&code)),
        CodeKind::Setup,
        None,
        now.saturating_add(SETUP_CODE_VALID),
    )?;
    Ok(FirstStart::SetupCode(code))
}
