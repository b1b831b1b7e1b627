//! Signing in and out, the first admin (`/setup` with the one-time setup code)
//! and the demo's one-time sign-in link.
//!
//! Sign-in failures are counted in SQLite (a restart does not reset them) per
//! account name *from* one client address, and per client address: after
//! [`MAX_FAILURES`] failures of one account from one address, that address must
//! wait before it may try that account again, and after
//! [`MAX_FAILURES_PER_ADDRESS`] failures from one address (any names) the
//! address waits for every account. The wait starts at [`FIRST_DELAY`] and
//! doubles with each further failure, up to [`MAX_DELAY`]. Nothing locks an
//! account for everyone: a client guessing at the nurse's account from the
//! visitors' Wi-Fi never stops her signing in at the nurses' station. Admins
//! can clear an account's failures on the users page. An attempt while waiting
//! is answered without checking the password (no Argon2 spent on it); an
//! unknown name and a wrong password get the same words and take the same time
//! (a dummy hash is checked).

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

/// Failed sign-ins of one account from one address before that address waits.
pub const MAX_FAILURES: u32 = 5;
/// Failed sign-ins from one address, of any names, before it waits for all.
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;
/// The first wait; each further failure doubles it...
pub const FIRST_DELAY: Duration = Duration::from_secs(60);
/// ...up to this.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Failures older than this are forgotten.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest name a sign-in form is checked for (no account has a longer
/// one: `password::check_username`); a longer one fails without hashing.
pub const MAX_USERNAME_CHARS: usize = 64;
/// How long the first-start setup code works.
pub const SETUP_CODE_VALID: Duration = Duration::from_secs(24 * 3600);
/// How long the demo's sign-in link works.
pub const SIGNIN_LINK_VALID: Duration = Duration::from_secs(15 * 60);

const BAD_CREDENTIALS: &str = "The username or password is not right.";
const BAD_SETUP_CODE: &str =
    "the setup code is not right, was used already, or has expired (restart carehub for a new one)";
fn locked_words(wait: Duration) -> String {
    let minutes = wait.as_secs().div_ceil(60).max(1);
    format!(
        "Too many failed sign-ins from this device. Wait {minutes} minute{}, then try again, or ask an administrator to unlock the account.",
        if minutes == 1 { "" } else { "s" }
    )
}

/// How long a key with `failures` (the last at `last`) must still wait at
/// `now`, when it has reached `limit`.
pub fn wait_left(
    failures: u32,
    last: Option<Timestamp>,
    limit: u32,
    now: Timestamp,
) -> Option<Duration> {
    let last = last?;
    if failures < limit {
        return None;
    }
    let doublings = (failures - limit).min(16);
    let delay = FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
    let left_ms = last
        .saturating_add(delay)
        .unix_ms()
        .saturating_sub(now.unix_ms());
    u64::try_from(left_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// The failure key of `username` tried from `client`.
pub fn account_key(username: &str, client: &str) -> String {
    format!("acct:{}@{client}", username.to_lowercase())
}

/// The prefix of every failure key of `username` (for an admin's unlock).
pub fn account_prefix(username: &str) -> String {
    format!("acct:{}@", username.to_lowercase())
}

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

/// Where to go after signing in: a path on this site, or `/`. A path starts
/// with one `/` (not `//` or `/\\`, which browsers read as another host), and
/// holds only printable ASCII: a tab or line feed (`%09`, `%0a` once decoded)
/// is dropped by browsers, which then read `/\t/host` as `//host`, and cannot
/// be put in a `Location` header at all.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if is_local_path(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn is_local_path(n: &str) -> bool {
    let b = n.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && n.len() <= 2048
        && b.iter().all(|c| c.is_ascii_graphic() && *c != b'\\')
        && n.parse::<axum::http::uri::PathAndQuery>().is_ok()
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
    let username: String = form.username.trim().to_owned();
    if username.chars().count() > MAX_USERNAME_CHARS {
        // No account has such a name: no hash, no failure row, one audit count.
        write_audit_anonymous(
            &state,
            "sign in failed: name too long",
            &username,
            &client,
            401,
        );
        return Ok((
            StatusCode::UNAUTHORIZED,
            form_page("Sign in", login_form(Some(BAD_CREDENTIALS), &next, "")),
        )
            .into_response());
    }
    // Cheap checks first: an address that must wait is answered at once.
    let accounts = state.accounts.clone();
    let (pair_key, ip_key) = (account_key(&username, &client), format!("ip:{client}"));
    let keys = (pair_key.clone(), ip_key.clone());
    let wait = tokio::task::spawn_blocking(move || -> Result<Option<Duration>, WebError> {
        let now = Timestamp::now();
        let since = now.saturating_sub(FAILURE_WINDOW);
        let (pair, pair_last) = accounts.failures(&keys.0, since)?;
        let (ip, ip_last) = accounts.failures(&keys.1, since)?;
        Ok(wait_left(pair, pair_last, MAX_FAILURES, now).max(wait_left(
            ip,
            ip_last,
            MAX_FAILURES_PER_ADDRESS,
            now,
        )))
    })
    .await??;
    if let Some(wait) = wait {
        write_audit_anonymous(
            &state,
            "sign in refused: locked out",
            &username,
            &client,
            429,
        );
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            form_page(
                "Sign in",
                login_form(Some(&locked_words(wait)), &next, &username),
            ),
        )
            .into_response());
    }
    let Ok(permit) = password::gate().await else {
        return Ok(password::busy_response());
    };
    let accounts = state.accounts.clone();
    let (name, pw) = (username.clone(), form.password);
    let outcome = tokio::task::spawn_blocking(move || -> Result<Outcome, WebError> {
        let _permit = permit;
        let now = Timestamp::now();
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
                accounts.clear_failures(&pair_key)?;
                Ok(Outcome::Ok(c.user))
            }
            _ => {
                accounts.record_failure(
                    &[&pair_key, &ip_key],
                    now,
                    now.saturating_sub(FAILURE_WINDOW),
                )?;
                Ok(Outcome::Bad)
            }
        }
    })
    .await??;
    match outcome {
        Outcome::Bad => {
            write_audit_anonymous(&state, "sign in failed", &username, &client, 401);
            Ok((
                StatusCode::UNAUTHORIZED,
                form_page(
                    "Sign in",
                    login_form(Some(BAD_CREDENTIALS), &next, &username),
                ),
            )
                .into_response())
        }
        Outcome::Ok(user) => {
            let cookie =
                start_session(&state, &user, &client, old_session(&state, &headers)).await?;
            write_audit(
                &state,
                AuditEntry {
                    at: Timestamp::now(),
                    who: user.username.clone(),
                    action: "sign in".to_owned(),
                    target: user.username.clone(),
                    client,
                    status: 303,
                },
            )
            .await;
            Ok(with_cookie(cookie, &next))
        }
    }
}

/// Counts an event of someone not signed in (a failed sign-in, a refused link
/// or setup code) in the audit log's tallies: one row per kind, client and
/// name a minute, however many arrive (`store::accounts`), never one row each.
fn write_audit_anonymous(state: &AppState, action: &str, target: &str, client: &str, status: u16) {
    state.accounts.audit_anonymous(AuditEntry {
        at: Timestamp::now(),
        who: "anonymous".to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        client: client.to_owned(),
        status,
    });
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
        // Its live pages' event streams end now, not at their next check.
        state.events.end_session(&hash);
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
    let mut res = with_cookie(state.auth.clear_cookie(), "/login");
    // The browser forgets its copies of our pages too: Back after sign-out
    // must not show a resident's page from the cache.
    res.headers_mut().insert(
        header::HeaderName::from_static("clear-site-data"),
        header::HeaderValue::from_static(crate::web::headers::CLEAR_SITE_DATA),
    );
    Ok(res)
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
    // The code is checked before hashing (a wrong code costs no Argon2), and
    // used only after: a slow hash never leaves the code used and no account.
    let check = state.accounts.clone();
    let code_ok =
        tokio::task::spawn_blocking(move || -> Result<Result<(), &'static str>, WebError> {
            if check.has_admin()? {
                return Ok(Err("an administrator exists already: sign in instead"));
            }
            if !check.code_valid(&code_hash, CodeKind::Setup, Timestamp::now())? {
                return Ok(Err(BAD_SETUP_CODE));
            }
            Ok(Ok(()))
        })
        .await??;
    if let Err(why) = code_ok {
        write_audit_anonymous(&state, "setup refused", &username, &client, 422);
        return Ok(refuse(why));
    }
    let Ok(permit) = password::gate().await else {
        return Ok(password::busy_response());
    };
    let created =
        tokio::task::spawn_blocking(move || -> Result<Result<User, &'static str>, WebError> {
            let hash = {
                let _permit = permit;
                password::hash(&pw)?
            };
            let now = Timestamp::now();
            if accounts
                .use_code(&code_hash, CodeKind::Setup, now)?
                .is_none()
            {
                return Ok(Err(BAD_SETUP_CODE));
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
            write_audit_anonymous(&state, "setup refused", &username, &client, 422);
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
        write_audit_anonymous(&state, "sign-in link refused", "/signin", &client, 403);
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
