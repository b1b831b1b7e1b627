//! Who is asking, and may they: sessions, CSRF, the role policy and the audit
//! log, in one middleware ([`authorize`]) that every routed request passes.
//!
//! - A browser signs in (`/login`, or the first admin at `/setup` with the
//!   one-time setup code from the log) and gets a random 256-bit session token in
//!   the cookie `__Host-carehub_session` (`Secure; HttpOnly; SameSite=Strict;
//!   Path=/`). Only the token's SHA-256 is stored, in `sessions`; sessions end
//!   after `web.session_idle_minutes` unused and `web.session_max_hours` in all.
//!   On the plain-HTTP loopback demo the cookie cannot be `Secure` (the browser
//!   would not send it back over HTTP) and so cannot carry the `__Host-` prefix:
//!   it is `carehub_session`, `HttpOnly; SameSite=Strict; Path=/`.
//! - `carehub pair` sends `Authorization: Bearer <token>` with the token the
//!   daemon writes to `cli-token` in its state directory (owner-only), accepted
//!   only from a loopback address. It has no staff role: it passes only the
//!   policy lines marked [`policy::Who::AtLeastOrPairCli`] (opening and closing
//!   the pairing window), and the audit log and the pairing record name it
//!   [`PAIR_CLI`]. A bearer token is not sent by browsers on their own, so these
//!   requests need no CSRF token.
//! - Every state-changing request (anything but GET and HEAD) must come from our
//!   own pages: `Sec-Fetch-Site`, when sent, must be `same-origin` or `none`;
//!   `Origin`, when sent, must be this server; and a session's request must carry
//!   the session's synchronizer token, in the form field `csrf` or the header
//!   `X-CSRF-Token`. Otherwise: 403 with a plain message. A form's `csrf` field
//!   is taken out of the body once checked, so handlers never see it.
//! - The route's line in [`policy::POLICY`] says who may pass; a route with no
//!   line is refused to everyone. Anonymous callers get 401 (JSON for `/api`) or
//!   a redirect to `/login` for pages; signed-in callers without the role get 403
//!   with no data.
//! - Every change, and every view of residents' data, is written to `audit_log`
//!   with who, what, when, from where and the status.

pub mod audit;
pub mod password;
pub mod policy;
pub mod signin;
pub mod users;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::AppState;
use super::conn::Guarded;
use crate::model::Timestamp;
use crate::store::accounts::{AuditEntry, Role, SessionLimits};
use policy::{Audit, Who};

/// Settings of the security layer, from `[web]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub limits: SessionLimits,
    /// Served over HTTPS: the cookie is `__Host-` and `Secure`, and `Origin` must
    /// say `https`.
    pub https: bool,
    /// SHA-256 of the token `carehub pair` reads from the state directory.
    pub cli_token_hash: Option<[u8; 32]>,
    /// The host names the server answers to (`web::headers`).
    pub hosts: std::sync::Arc<super::headers::AllowedHosts>,
}

impl AuthSettings {
    /// The name of the session cookie: `__Host-carehub_session` over HTTPS.
    pub fn cookie_name(&self) -> &'static str {
        if self.https {
            "__Host-carehub_session"
        } else {
            "carehub_session"
        }
    }

    /// The `Set-Cookie` value that hands a browser its session token.
    pub fn session_cookie(&self, token: &str) -> String {
        let secure = if self.https { "; Secure" } else { "" };
        format!(
            "{}={token}; Path=/{secure}; HttpOnly; SameSite=Strict",
            self.cookie_name()
        )
    }

    /// The `Set-Cookie` value that makes a browser forget its session.
    pub fn clear_cookie(&self) -> String {
        let secure = if self.https { "; Secure" } else { "" };
        format!(
            "{}=; Path=/{secure}; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie_name()
        )
    }
}

/// Who the audit log and the pairing record name for `carehub pair` (its
/// bearer token). No username can look like it: usernames have no spaces.
pub const PAIR_CLI: &str = "cli (carehub pair)";

/// A signed-in caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The username, or [`PAIR_CLI`].
    pub username: String,
    /// A member of staff and their role, or `carehub pair`'s token.
    pub caller: policy::Caller,
    /// `None` for `carehub pair`.
    pub user_id: Option<i64>,
    /// The session's synchronizer token; `None` for bearer callers.
    pub csrf: Option<String>,
    /// The stored hash of the session token; `None` for bearer callers.
    pub session: Option<[u8; 32]>,
}

impl Principal {
    /// The staff role; `None` for `carehub pair`, which has none.
    pub fn role(&self) -> Option<Role> {
        match self.caller {
            policy::Caller::Staff(r) => Some(r),
            policy::Caller::Anonymous | policy::Caller::PairCli => None,
        }
    }
}

tokio::task_local! {
    /// The caller of the request being handled, so that `pages::page` can show
    /// who is signed in and forms can carry the CSRF token without every handler
    /// passing them along.
    static CURRENT: Option<Principal>;
}

/// The signed-in caller of the request being handled, if any.
pub fn current() -> Option<Principal> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// The hidden form field with the session's CSRF token: every `<form
/// method="post">` must contain it.
pub fn csrf_field() -> Markup {
    let token = current().and_then(|p| p.csrf).unwrap_or_default();
    html! { input type="hidden" name="csrf" value=(token); }
}

/// The peer address of a connection, as `ConnectInfo` for our listeners (plain
/// TCP and TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Guarded<L>>>
    for ClientAddr
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Guarded<L>>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// The client's IP address, when the server knows it.
pub fn client_ip(req: &axum::http::Extensions) -> Option<IpAddr> {
    req.get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0.ip())
        .or_else(|| req.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
}

fn client_label(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The header carrying the CSRF token for scripts and API clients.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Marks the fail-closed refusal of a route missing from the policy, for the test
/// that every route has a line.
pub const POLICY_MISSING_HEADER: &str = "x-carehub-policy";

const FORBIDDEN: &str =
    "You do not have permission to do this. Ask an administrator if you need it.";
const CSRF_REFUSED: &str = "This request did not come from a carehub page, or the page is too old. Go back, reload the page and try again.";

fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Sent by `live.js` on the requests it makes on its own: they show the page is
/// open, not that anybody is using it, so they do not keep a session alive.
pub const LIVE_HEADER: &str = "x-carehub-live";

/// Whether the page made this request on its own (the event stream, a live
/// refresh) rather than a member of staff.
fn automatic(route: Option<&str>, headers: &HeaderMap) -> bool {
    route == Some("/events") || headers.contains_key(LIVE_HEADER)
}

/// Who is calling: the bearer token of `carehub pair`, or a session cookie. An
/// `automatic` request does not count as use of the session.
async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    automatic: bool,
    loopback: bool,
) -> Result<Option<Principal>, super::WebError> {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        // The token is for `carehub pair` on the gateway itself: from any other
        // address it is refused even when right (a copied token is useless on
        // the network).
        let ok = loopback
            && state
                .auth
                .cli_token_hash
                .is_some_and(|h| h == password::token_hash(token.trim()));
        return Ok(ok.then(|| Principal {
            username: PAIR_CLI.to_owned(),
            caller: policy::Caller::PairCli,
            user_id: None,
            csrf: None,
            session: None,
        }));
    }
    let Some(token) = cookie(headers, state.auth.cookie_name()) else {
        return Ok(None);
    };
    let hash = password::token_hash(token);
    let limits = state.auth.limits;
    // A session checked in the table less than a minute ago (by its mark) needs
    // no trip to a blocking thread; any other goes to the table.
    let session = match state.accounts.live_session(&hash, limits, Timestamp::now()) {
        Some(s) => Some(s),
        None => {
            let accounts = state.accounts.clone();
            tokio::task::spawn_blocking(move || {
                if automatic {
                    accounts.session_unused(&hash, limits, Timestamp::now())
                } else {
                    accounts.session(&hash, limits, Timestamp::now())
                }
            })
            .await??
        }
    };
    Ok(session.map(|s| Principal {
        username: s.user.username,
        caller: policy::Caller::Staff(s.user.role),
        user_id: Some(s.user.id),
        csrf: Some(s.csrf),
        session: Some(hash),
    }))
}

/// Whether `Origin` and `Sec-Fetch-Site`, where the browser sent them, say the
/// request comes from our own pages.
pub fn same_origin(headers: &HeaderMap, https: bool) -> bool {
    let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if site.is_some_and(|s| !matches!(s, b"same-origin" | b"none")) {
        return false;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        // Under `Referrer-Policy: no-referrer` (`web::headers`) browsers send
        // `Origin: null` with a form's POST; `Sec-Fetch-Site`, which no page
        // can set, then says where it came from.
        Some(o) if o.as_bytes() == b"null" => site == Some(b"same-origin".as_slice()),
        Some(origin) => {
            let scheme = if https { "https" } else { "http" };
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            match (origin.to_str().ok(), host) {
                (Some(o), Some(h)) => o == format!("{scheme}://{h}"),
                _ => false,
            }
        }
    }
}

/// The `csrf` field of a URL-encoded form body. The token is hex, so it needs no
/// decoding.
fn form_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Largest form body read to find its CSRF field; larger forms are refused.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Checks the session's synchronizer token; hands back the request with its body.
async fn check_csrf(req: Request, expected: &str) -> Result<Request, Response> {
    let refused = || (StatusCode::FORBIDDEN, CSRF_REFUSED).into_response();
    if let Some(given) = req.headers().get(CSRF_HEADER) {
        return match given.to_str() {
            Ok(g) if password::same_secret(g, expected) => Ok(req),
            _ => Err(refused()),
        };
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(refused());
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response())?;
    match form_field(&bytes, "csrf") {
        Some(g) if password::same_secret(g, expected) => {
            // The handler gets the form without the token: it has been checked,
            // and forms that refuse unknown fields need not list it.
            let rest = without_field(&bytes, "csrf");
            let mut parts = parts;
            parts
                .headers
                .insert(header::CONTENT_LENGTH, rest.len().into());
            Ok(Request::from_parts(parts, Body::from(rest)))
        }
        _ => Err(refused()),
    }
}

/// A URL-encoded form body without every `name=...` pair.
fn without_field(body: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for pair in body.split(|b| *b == b'&') {
        let key = pair.split(|b| *b == b'=').next().unwrap_or_default();
        if pair.is_empty() || key == name.as_bytes() {
            continue;
        }
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(pair);
    }
    out
}

fn sign_in_first(path: &str, method: &Method) -> Response {
    if path.starts_with("/api/") {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "sign in first"})),
        )
            .into_response()
    } else if is_safe(method) {
        let next: String = path
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        Redirect::to(&format!("/login?next={next}")).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, "Sign in first.").into_response()
    }
}

/// The middleware every routed request passes (see the module documentation).
pub async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(rule) = route
        .as_deref()
        .and_then(|r| policy::lookup(method.as_str(), r))
    else {
        // axum runs route layers for a method the route does not have, too.
        if route
            .as_deref()
            .is_some_and(|r| policy::POLICY.iter().any(|p| p.route == r))
        {
            return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
        }
        tracing::error!(%method, route = ?route, "route has no line in the web policy: refused (fail closed)");
        let mut res = (StatusCode::FORBIDDEN, FORBIDDEN).into_response();
        res.headers_mut()
            .insert(POLICY_MISSING_HEADER, HeaderValue::from_static("missing"));
        return res;
    };
    let ip = client_ip(req.extensions());
    let client = client_label(ip);
    let automatic = automatic(route.as_deref(), req.headers());
    let loopback = ip.is_some_and(|ip| ip.is_loopback());
    let principal = match resolve(&state, req.headers(), automatic, loopback).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let caller = principal
        .as_ref()
        .map_or(policy::Caller::Anonymous, |p| p.caller);
    if !policy::allows(rule.who, caller, loopback) {
        return match (&principal, rule.who) {
            (None, Who::AtLeast(_) | Who::LoopbackOrAdmin | Who::AtLeastOrPairCli(_)) => {
                sign_in_first(&path, &method)
            }
            _ => (StatusCode::FORBIDDEN, FORBIDDEN).into_response(),
        };
    }
    let mut req = req;
    if !is_safe(&method) {
        if !same_origin(req.headers(), state.auth.https) {
            return (StatusCode::FORBIDDEN, CSRF_REFUSED).into_response();
        }
        if let Some(expected) = principal.as_ref().and_then(|p| p.csrf.clone()) {
            req = match check_csrf(req, &expected).await {
                Ok(r) => r,
                Err(res) => return res,
            };
        }
    }
    if let Some(p) = &principal {
        req.extensions_mut().insert(p.clone());
    }
    let anonymous = principal.is_none();
    let who = principal
        .as_ref()
        .map_or_else(|| "anonymous".to_owned(), |p| p.username.clone());
    let res = CURRENT.scope(principal, next.run(req)).await;
    let action = match rule.audit {
        Audit::Own => None,
        _ if !is_safe(&method) => Some(format!("{} {}", method, rule.route)),
        Audit::View(what) if res.status().is_success() => Some(format!("view {what}")),
        _ => None,
    };
    if let Some(action) = action {
        let entry = AuditEntry {
            at: Timestamp::now(),
            who,
            action,
            target: path,
            client,
            status: res.status().as_u16(),
        };
        if anonymous {
            // Counted, not a row each: nobody signed in can grow the log.
            state.accounts.audit_anonymous(entry);
        } else if automatic && is_safe(&method) {
            // A page's own refresh: one row per user and page in a while.
            if let Err(e) = state.accounts.audit_refresh(entry).await {
                tracing::error!(error = %e, "audit entry not written");
            }
        } else {
            write_audit(&state, entry).await;
        }
    }
    res
}

/// Writes one audit entry and waits for its commit; a failure is logged loudly
/// (the request has happened).
pub async fn write_audit(state: &AppState, entry: AuditEntry) {
    if let Err(e) = state.accounts.audit(entry).await {
        tracing::error!(error = %e, "audit entry not written");
    }
}

/// Session limits from `[web]`.
pub fn limits(idle_minutes: u32, max_hours: u32) -> SessionLimits {
    SessionLimits {
        idle: Duration::from_secs(u64::from(idle_minutes) * 60),
        absolute: Duration::from_secs(u64::from(max_hours) * 3600),
    }
}

/// Sign-in helpers for tests and benches (never called by the daemon).
#[doc(hidden)]
pub mod testing;

#[cfg(test)]
mod tests;
