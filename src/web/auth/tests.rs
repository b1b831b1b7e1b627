//! Router tests of the security layer, through the real router with `oneshot`:
//! the authorization matrix, fail-closed routes, CSRF, cookies, session
//! fixation, idle time-out, rate limiting and lock-out, the setup code, the demo
//! link, users and the audit log.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::policy::{Caller, POLICY, Who};
use super::signin::{FirstStart, first_start};
use super::testing::{Login, sign_in};
use super::*;
use crate::store::accounts::Role;
use crate::web::AppState;
use crate::web::test_support::{self, Res, call, form, setup};

fn from(addr: &str, mut req: Request<Body>) -> Request<Body> {
    let addr: SocketAddr = addr.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(ClientAddr(addr)));
    req
}

/// A request from the client address the tests sign in from.
fn request(method: &str, uri: &str, login: Option<&Login>) -> Request<Body> {
    from("192.0.2.10:5000", test_support::request(method, uri, login))
}

/// A concrete path for a route pattern.
fn concrete(route: &str, user_id: i64) -> String {
    route
        .replace("{address}", "C0:00:00:00:00:01")
        .replace("{id}", &user_id.to_string())
        .replace("{token}", "not-a-real-token")
}

#[tokio::test]
async fn authorization_matrix_every_policy_line_times_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    // Someone to act on, so that /users/{id}/... reaches its handler.
    let target = sign_in(&state, "target-carer", Role::Carer);
    // Every role, nobody, and `carehub pair`'s token (from loopback, the only
    // place it is accepted).
    let callers = [
        Caller::Anonymous,
        Caller::Staff(Role::Carer),
        Caller::Staff(Role::Nurse),
        Caller::Staff(Role::Admin),
        Caller::PairCli,
    ];
    for rule in POLICY {
        for caller in callers {
            let path = concrete(rule.route, target.user_id);
            let req = match caller {
                Caller::Anonymous => request(rule.method, &path, None),
                // A fresh session each time: /logout ends the one it is given.
                Caller::Staff(r) => {
                    let login = sign_in(&state, &format!("matrix-{}", r.as_str()), r);
                    request(rule.method, &path, Some(&login))
                }
                Caller::PairCli => {
                    let mut req = request(rule.method, &path, None);
                    req.headers_mut()
                        .insert(header::AUTHORIZATION, "Bearer cli-secret".parse().unwrap());
                    from("127.0.0.1:5000", req)
                }
            };
            let res = call(&state, req).await;
            let what = format!(
                "{} {} as {:?}: {} {}",
                rule.method, path, caller, res.status, res.body
            );
            assert!(res.headers.get(POLICY_MISSING_HEADER).is_none(), "{what}");
            let loopback = caller == Caller::PairCli;
            let allowed = policy::allows(rule.who, caller, loopback);
            let login_redirect = res
                .headers
                .get(header::LOCATION)
                .is_some_and(|l| l.as_bytes().starts_with(b"/login?next="));
            if allowed {
                assert!(
                    res.status != StatusCode::UNAUTHORIZED && !login_redirect,
                    "allowed but refused: {what}"
                );
                if rule.who != Who::Anyone {
                    assert_ne!(
                        res.status,
                        StatusCode::FORBIDDEN,
                        "allowed but refused: {what}"
                    );
                }
            } else if caller == Caller::Anonymous {
                if rule.route.starts_with("/api/") {
                    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{what}");
                    assert_eq!(res.body, r#"{"error":"sign in first"}"#, "{what}");
                } else if rule.method == "GET" {
                    assert!(login_redirect, "anonymous page must go to /login: {what}");
                } else {
                    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{what}");
                }
            } else {
                assert_eq!(res.status, StatusCode::FORBIDDEN, "{what}");
                assert_eq!(res.body, FORBIDDEN, "403 carries no data: {what}");
            }
        }
    }
}

/// Every `.route("path", get(..).post(..))` under src/web (tests aside): the
/// path and the methods named in its method router.
fn routes_in_source() -> Vec<(String, Vec<&'static str>)> {
    fn methods_in(args: &str) -> Vec<&'static str> {
        let mut found = Vec::new();
        for (name, method) in [
            ("get", "GET"),
            ("post", "POST"),
            ("put", "PUT"),
            ("delete", "DELETE"),
            ("patch", "PATCH"),
        ] {
            let call = format!("{name}(");
            let named = args.match_indices(&call).any(|(i, _)| {
                !args[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            });
            if named {
                found.push(method);
            }
        }
        found
    }
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, Vec<&'static str>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.to_string_lossy().ends_with("tests.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices(".route(") {
                    let rest = text[i + 7..].trim_start();
                    let Some(lit) = rest.strip_prefix('"') else {
                        continue;
                    };
                    let Some(end) = lit.find('"') else { continue };
                    if !lit.starts_with('/') {
                        continue;
                    }
                    // The rest of the call's arguments, up to its closing parenthesis.
                    let mut depth = 1;
                    let args: String = lit[end..]
                        .chars()
                        .take_while(|c| {
                            match c {
                                '(' => depth += 1,
                                ')' => depth -= 1,
                                _ => {}
                            }
                            depth > 0
                        })
                        .collect();
                    out.push((lit[..end].to_owned(), methods_in(&args)));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web"),
        &mut out,
    );
    out
}

#[tokio::test]
async fn every_routed_path_and_method_has_a_policy_line_and_every_line_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let target = sign_in(&state, "target-carer", Role::Carer);
    let routes = routes_in_source();
    assert!(
        routes.len() >= 20,
        "the source scan found too few routes: {routes:?}"
    );
    let mut missing = Vec::new();
    for (route, methods) in &routes {
        assert!(
            !methods.is_empty(),
            "no method found for {route}: the scan needs a look"
        );
        for method in methods {
            if policy::lookup(method, route).is_none() {
                missing.push(format!("{method} {route}"));
            }
        }
        // And at run time: whatever the source says, no method of a routed path
        // meets the fail-closed refusal for a path the policy does not know.
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let admin = sign_in(&state, "matrix-admin", Role::Admin);
            let res = call(
                &state,
                request(method, &concrete(route, target.user_id), Some(&admin)),
            )
            .await;
            if res.headers.get(POLICY_MISSING_HEADER).is_some() {
                missing.push(format!("{method} {route}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routed but not in auth::policy::POLICY (denied to everyone): {missing:?}"
    );
    for rule in POLICY {
        assert!(
            routes
                .iter()
                .any(|(r, m)| r == rule.route && m.contains(&rule.method)),
            "policy line for a route the router does not have: {} {}",
            rule.method,
            rule.route
        );
        let admin = sign_in(&state, "matrix-admin", Role::Admin);
        let res = call(
            &state,
            request(
                rule.method,
                &concrete(rule.route, target.user_id),
                Some(&admin),
            ),
        )
        .await;
        assert!(
            res.status != StatusCode::METHOD_NOT_ALLOWED && res.body != "not found",
            "policy line {} {} is not routed: {}",
            rule.method,
            rule.route,
            res.status
        );
    }
}

#[tokio::test]
async fn a_route_missing_from_the_policy_is_refused_to_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let admin = sign_in(&state, "ann", Role::Admin);
    let router = axum::Router::new()
        .route("/not-in-policy", axum::routing::get(|| async { "secret" }))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state.clone());
    for login in [None, Some(&admin)] {
        let res = router
            .clone()
            .oneshot(request("GET", "/not-in-policy", login))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(res.headers().get(POLICY_MISSING_HEADER).is_some());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }
}

#[tokio::test]
async fn state_changes_need_the_session_csrf_token_and_our_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let nurse = sign_in(&state, "nina", Role::Nurse);
    let other = sign_in(&state, "olga", Role::Nurse);
    let check = async |req: Request<Body>, expected: StatusCode, why: &str| {
        let res = call(&state, req).await;
        assert_eq!(res.status, expected, "{why}: {}", res.body);
        if expected == StatusCode::FORBIDDEN {
            assert!(
                res.body.contains("did not come from a carehub page"),
                "{why}: {}",
                res.body
            );
        }
    };
    let c = Some(nurse.cookie.as_str());
    check(
        form("/pairing/window", c, "seconds=60"),
        StatusCode::FORBIDDEN,
        "no token",
    )
    .await;
    check(
        form(
            "/pairing/window",
            c,
            &format!("seconds=60&csrf={}", other.csrf),
        ),
        StatusCode::FORBIDDEN,
        "another session's token",
    )
    .await;
    let mut cross = form(
        "/pairing/window",
        c,
        &format!("seconds=60&csrf={}", nurse.csrf),
    );
    cross
        .headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    cross
        .headers_mut()
        .insert(header::HOST, "gw.local".parse().unwrap());
    check(cross, StatusCode::FORBIDDEN, "foreign origin").await;
    let mut cross = form(
        "/pairing/window",
        c,
        &format!("seconds=60&csrf={}", nurse.csrf),
    );
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    check(cross, StatusCode::FORBIDDEN, "cross-site fetch").await;
    let mut own = form(
        "/pairing/window",
        c,
        &format!("seconds=60&csrf={}", nurse.csrf),
    );
    own.headers_mut()
        .insert(header::ORIGIN, "https://gw.local".parse().unwrap());
    own.headers_mut()
        .insert(header::HOST, "gw.local".parse().unwrap());
    own.headers_mut()
        .insert("sec-fetch-site", "same-origin".parse().unwrap());
    check(own, StatusCode::SEE_OTHER, "own page").await;

    let json = |csrf: Option<&str>| {
        let mut b = Request::post("/api/v1/pairing/window")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, &nurse.cookie);
        if let Some(t) = csrf {
            b = b.header(CSRF_HEADER, t);
        }
        b.body(Body::from(r#"{"seconds": 60}"#)).unwrap()
    };
    check(json(None), StatusCode::FORBIDDEN, "api without header").await;
    check(
        json(Some("0000")),
        StatusCode::FORBIDDEN,
        "api with a wrong header",
    )
    .await;
    check(
        json(Some(&nurse.csrf)),
        StatusCode::OK,
        "api with the header",
    )
    .await;
    // The CLI's bearer token is not ambient: no CSRF token needed.
    let cli = || {
        Request::post("/api/v1/pairing/window")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, "Bearer cli-secret")
            .body(Body::from(r#"{"seconds": 60}"#))
            .unwrap()
    };
    check(from("127.0.0.1:5", cli()), StatusCode::OK, "cli bearer").await;
    // Regression (issue 17, finding 9): the token worked from any address.
    check(
        from("192.0.2.10:5", cli()),
        StatusCode::UNAUTHORIZED,
        "cli bearer from the network",
    )
    .await;
    let bad = Request::post("/api/v1/pairing/window")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer guessed")
        .body(Body::from(r#"{"seconds": 60}"#))
        .unwrap();
    check(bad, StatusCode::UNAUTHORIZED, "wrong bearer").await;
}

/// Regression (issue 17, finding 9): the `cli-token` acted as a nurse and was
/// logged only as "cli". Now it opens and closes the pairing window, is refused
/// everywhere else (reading a resident, acknowledging an alert, changing a
/// device), and the audit log names `carehub pair`.
#[tokio::test]
async fn the_cli_token_only_opens_and_closes_the_pairing_window_and_is_named_in_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let cli = |method: &str, uri: &str, body: &'static str| {
        from(
            "127.0.0.1:5",
            Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, "Bearer cli-secret")
                .body(Body::from(body))
                .unwrap(),
        )
    };
    for (method, uri, body) in [
        ("GET", "/api/v1/residents/1", ""),
        ("GET", "/residents/1", ""),
        ("GET", "/api/v1/residents", ""),
        ("POST", "/api/v1/alerts/1/ack", ""),
        ("POST", "/alerts/1/ack", ""),
        (
            "PUT",
            "/api/v1/devices/C0:00:00:00:00:01/key",
            r#"{"key":"00"}"#,
        ),
        ("POST", "/api/v1/pairing/passkey", r#"{"passkey":"123456"}"#),
        ("GET", "/api/v1/audit", ""),
    ] {
        let res = call(&state, cli(method, uri, body)).await;
        assert_eq!(
            res.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            res.body
        );
        assert_eq!(res.body, FORBIDDEN, "403 carries no data: {method} {uri}");
    }
    let open = call(
        &state,
        cli("POST", "/api/v1/pairing/window", r#"{"seconds": 60}"#),
    )
    .await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.body);
    let close = call(&state, cli("DELETE", "/api/v1/pairing/window", "")).await;
    assert!(close.status.is_success(), "{} {}", close.status, close.body);
    // `carehub health-check` reads the gateway's status: no residents in it.
    let status = call(&state, cli("GET", "/api/v1/gateway", "")).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    assert!(status.body.contains("\"storage\""), "{}", status.body);
    let entries = state.accounts.audit_page(0, 100).unwrap();
    for action in [
        "POST /api/v1/pairing/window",
        "DELETE /api/v1/pairing/window",
    ] {
        let e = entries
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("{action} not audited: {entries:?}"));
        assert_eq!(e.who, PAIR_CLI, "{e:?}");
        assert_eq!(e.who, "cli (carehub pair)");
        assert_eq!(e.client, "127.0.0.1");
    }
}

async fn add_user(state: &AppState, name: &str, pw: &str, role: Role) {
    let hash = password::hash(pw).unwrap();
    state
        .accounts
        .create_user(name, &hash, role, "test", crate::model::Timestamp::now())
        .unwrap();
}

fn set_cookie(res: &Res) -> String {
    res.headers
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn login_form(user: &str, pw: &str, cookie: Option<&str>, client: &str) -> Request<Body> {
    from(
        client,
        form("/login", cookie, &format!("username={user}&password={pw}")),
    )
}

#[tokio::test]
async fn login_sets_a_fresh_strict_cookie_and_drops_any_planted_session() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    add_user(&state, "ann", "a long passphrase", Role::Nurse).await;
    // A session the attacker holds and plants in the victim's browser.
    let planted = sign_in(&state, "mallory", Role::Carer);
    // The sign-in page, loaded with the planted cookie, carries that session's
    // CSRF token; signing in must still give a new session.
    let page = call(&state, request("GET", "/login", Some(&planted))).await;
    assert!(page.body.contains(&planted.csrf));
    let req = from(
        "192.0.2.1:1",
        form(
            "/login",
            Some(&planted.cookie),
            &format!(
                "csrf={}&username=ann&password=a+long+passphrase",
                planted.csrf
            ),
        ),
    );
    let res = call(&state, req).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let cookie = set_cookie(&res);
    assert!(cookie.starts_with("__Host-carehub_session="), "{cookie}");
    for flag in ["; Path=/", "; Secure", "; HttpOnly", "; SameSite=Strict"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    let token = cookie.split(';').next().unwrap();
    assert_ne!(token, planted.cookie, "a new session id at sign-in");
    // The planted session is gone; the new one is ann's.
    assert_eq!(
        call(&state, request("GET", "/", Some(&planted)))
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let mine = Request::get("/")
        .header(header::COOKIE, token)
        .body(Body::empty())
        .unwrap();
    let res = call(&state, mine).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("ann (nurse)"), "{}", res.body);

    // Over plain HTTP on loopback the cookie cannot be Secure or __Host-.
    let mut plain = state.clone();
    plain.auth = Arc::new(AuthSettings {
        https: false,
        ..(*state.auth).clone()
    });
    let res = call(
        &plain,
        login_form("ann", "a+long+passphrase", None, "127.0.0.1:1"),
    )
    .await;
    let cookie = set_cookie(&res);
    assert!(cookie.starts_with("carehub_session="), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // Sign out ends the session on the server, not only in the browser.
    let l = sign_in(&state, "ann", Role::Nurse);
    let out = call(
        &state,
        from(
            "192.0.2.1:1",
            form("/logout", Some(&l.cookie), &format!("csrf={}", l.csrf)),
        ),
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(set_cookie(&out).contains("Max-Age=0"));
    assert_eq!(
        call(&state, request("GET", "/", Some(&l))).await.status,
        StatusCode::SEE_OTHER
    );
}

/// Regression (issue 17, finding 6): five wrong passwords from one address
/// locked the account for everyone, admins included. Now the wait is per
/// account *and* address, grows, and an admin can clear it.
#[tokio::test]
async fn failures_make_that_address_wait_for_that_account_only_and_an_admin_can_clear_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    add_user(&state, "ann", "a long passphrase", Role::Nurse).await;
    add_user(&state, "bob", "another passphrase", Role::Carer).await;
    let unknown = call(
        &state,
        login_form("nobody", "whatever+it+is", None, "198.51.100.1:1"),
    )
    .await;
    let wrong = call(
        &state,
        login_form("ann", "wrong+password+here", None, "198.51.100.2:1"),
    )
    .await;
    assert_eq!(
        (unknown.status, wrong.status),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    let words = |b: &str| b.contains("The username or password is not right.");
    assert!(words(&unknown.body) && words(&wrong.body));
    // Five wrong passwords for ann from one address.
    for _ in 0..5 {
        let r = call(
            &state,
            login_form("ann", "wrong+password+here", None, "198.51.100.3:1"),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // That address now waits for ann, even with the right password...
    let r = call(
        &state,
        login_form("ann", "a+long+passphrase", None, "198.51.100.3:1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body.contains("Wait 1 minute,"), "{}", r.body);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert!(set_cookie(&r).is_empty());
    // ...but ann at her own desk is not locked out by it.
    let r = call(
        &state,
        login_form("ann", "a+long+passphrase", None, "203.0.113.9:1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    // An address failing across many names waits for every account.
    for i in 0..signin::MAX_FAILURES_PER_ADDRESS {
        call(
            &state,
            login_form(
                &format!("u{i}"),
                "wrong+password+here",
                None,
                "198.51.100.50:1",
            ),
        )
        .await;
    }
    let r = call(
        &state,
        login_form("bob", "another+passphrase", None, "198.51.100.50:1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // The failures are in SQLite: a new connection (a restart) still sees them.
    let reopened = testing::accounts(&dir.path().join("t.db"));
    let since = crate::model::Timestamp::now().saturating_sub(signin::FAILURE_WINDOW);
    let key = signin::account_key("ann", "198.51.100.3");
    assert_eq!(reopened.failures(&key, since).unwrap().0, 5);
    // An admin clears ann's failures: the address may try her account again.
    let admin = sign_in(&state, "root", Role::Admin);
    let ann = state.accounts.credentials("ann").unwrap().unwrap().user.id;
    let r = call(
        &state,
        form(
            &format!("/users/{ann}/unlock"),
            Some(&admin.cookie),
            &format!("csrf={}", admin.csrf),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = call(
        &state,
        login_form("ann", "a+long+passphrase", None, "198.51.100.3:1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

#[test]
fn the_wait_doubles_with_each_failure_up_to_an_hour() {
    let last = crate::model::Timestamp::from_unix_ms(1_000_000_000);
    let at = |s: u64| last.saturating_add(std::time::Duration::from_secs(s));
    let wait = |n: u32, s: u64| signin::wait_left(n, Some(last), signin::MAX_FAILURES, at(s));
    assert_eq!(wait(4, 0), None);
    assert_eq!(wait(5, 0), Some(std::time::Duration::from_secs(60)));
    assert_eq!(wait(5, 60), None);
    assert_eq!(wait(6, 30), Some(std::time::Duration::from_secs(90)));
    assert_eq!(wait(8, 0), Some(std::time::Duration::from_secs(480)));
    assert_eq!(wait(40, 0), Some(std::time::Duration::from_secs(3600)));
}

/// Regression (issue 17, finding 3): `next` with a tab or line feed once
/// decoded (`/%09/host`, `/%0a…`) left the site or gave a 500 after the session
/// was made.
#[test]
fn next_is_a_path_on_this_site_or_the_overview() {
    for (given, want) in [
        ("/residents/3", "/residents/3"),
        ("/alerts?x=1", "/alerts?x=1"),
        ("/\t/example.invalid/phish", "/"),
        ("/\n/example.invalid", "/"),
        ("/\r\nSet-Cookie:x", "/"),
        ("//example.invalid", "/"),
        ("/\\example.invalid", "/"),
        ("https://example.invalid/", "/"),
        ("javascript:alert(1)", "/"),
        ("/ /x", "/"),
        ("/résumé", "/"),
        ("", "/"),
    ] {
        assert_eq!(signin::safe_next(Some(given)), want, "{given:?}");
    }
}

#[tokio::test]
async fn an_idle_session_is_signed_out() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let u = state
        .accounts
        .create_user(
            "ann",
            password::NO_PASSWORD,
            Role::Nurse,
            "t",
            crate::model::Timestamp::now(),
        )
        .unwrap();
    let idle_since =
        crate::model::Timestamp::now().saturating_sub(std::time::Duration::from_secs(31 * 60));
    let token = "f".repeat(64);
    state
        .accounts
        .create_session(&password::token_hash(&token), u.id, "c", "t", idle_since)
        .unwrap();
    let req = Request::get("/api/v1/residents")
        .header(header::COOKIE, format!("__Host-carehub_session={token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&state, req).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_setup_code_creates_the_first_admin_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let FirstStart::SetupCode(code) = first_start(&state.accounts, false).unwrap() else {
        panic!("no admin: a setup code is expected");
    };
    let page = call(&state, request("GET", "/setup", None)).await;
    assert!(page.body.contains("Setup code"), "{}", page.body);
    let setup = |code: &str, user: &str, pw: &str| {
        from(
            "192.0.2.7:1",
            form(
                "/setup",
                None,
                &format!("code={code}&username={user}&password={pw}&password_again={pw}"),
            ),
        )
    };
    let r = call(
        &state,
        setup("AAAA-BBBB-CCCC-DDDD", "ann", "a+long+passphrase"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("setup code is not right"), "{}", r.body);
    let r = call(&state, setup(&code, "ann", "short")).await;
    assert!(r.body.contains("at least 12 characters"), "{}", r.body);
    let r = call(
        &state,
        setup(&code.to_lowercase(), "ann", "a+long+passphrase"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(set_cookie(&r).starts_with("__Host-carehub_session="));
    assert!(state.accounts.has_admin().unwrap());
    let r = call(&state, setup(&code, "eve", "a+long+passphrase")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(state.accounts.credentials("eve").unwrap().is_none());
    // Even with the admin gone, the used code does not work again.
    let eve_admin = sign_in(&state, "second-admin", Role::Admin);
    let ann = state.accounts.credentials("ann").unwrap().unwrap().user;
    state.accounts.set_disabled(ann.id, true).unwrap();
    state
        .accounts
        .set_disabled(eve_admin.user_id, false)
        .unwrap();
    assert_eq!(
        state
            .accounts
            .use_code(
                &password::token_hash(&password::normalise_code(&code)),
                crate::store::accounts::CodeKind::Setup,
                crate::model::Timestamp::now()
            )
            .unwrap(),
        None
    );
    assert_eq!(
        first_start(&state.accounts, false).unwrap(),
        FirstStart::Ready
    );
}

#[tokio::test]
async fn the_demo_link_signs_in_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let FirstStart::SignInLink(token) = first_start(&state.accounts, true).unwrap() else {
        panic!("demo: a link is expected");
    };
    let r = call(&state, request("GET", &format!("/signin/{token}"), None)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let cookie = set_cookie(&r);
    let page = Request::get("/users")
        .header(header::COOKIE, cookie.split(';').next().unwrap())
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        call(&state, page).await.status,
        StatusCode::OK,
        "the demo user is an admin"
    );
    let again = call(&state, request("GET", &format!("/signin/{token}"), None)).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    assert!(set_cookie(&again).is_empty());
    // The demo account has no password that works.
    let r = call(&state, login_form("demo", "", None, "127.0.0.1:1")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admins_manage_users_but_never_remove_the_last_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let admin = sign_in(&state, "root-admin", Role::Admin);
    let post = |uri: &str, body: &str| {
        form(
            uri,
            Some(&admin.cookie),
            &format!("csrf={}&{body}", admin.csrf),
        )
    };
    let r = call(
        &state,
        post("/users", "username=carla&role=carer&password=carla"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("at least 12 characters"), "{}", r.body);
    let r = call(
        &state,
        post(
            "/users",
            "username=carla&role=carer&password=carla+is+here+now",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = call(
        &state,
        post(
            "/users",
            "username=Carla&role=nurse&password=carla+is+here+now",
        ),
    )
    .await;
    assert!(r.body.contains("already an account"), "{}", r.body);
    let ok = call(
        &state,
        login_form("carla", "carla+is+here+now", None, "192.0.2.3:1"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    let carla = Request::get("/")
        .header(header::COOKIE, set_cookie(&ok).split(';').next().unwrap())
        .body(Body::empty())
        .unwrap();
    let carla_id = state
        .accounts
        .credentials("carla")
        .unwrap()
        .unwrap()
        .user
        .id;
    let r = call(&state, post(&format!("/users/{carla_id}/disable"), "")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        call(&state, carla).await.status,
        StatusCode::SEE_OTHER,
        "disabled: signed out"
    );
    let r = call(
        &state,
        post(&format!("/users/{}/disable", admin.user_id), ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("last admin"), "{}", r.body);
    let r = call(
        &state,
        post(&format!("/users/{carla_id}/password"), "password=short"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let page = call(&state, request("GET", "/users", Some(&admin))).await;
    assert!(
        page.body.contains("carla") && page.body.contains("disabled"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!("value=\"{}\"", admin.csrf)),
        "forms carry the csrf token"
    );
}

#[tokio::test]
async fn views_and_changes_are_audited_with_who_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, state) = setup(dir.path()).await;
    let nurse = sign_in(&state, "nina", Role::Nurse);
    let admin = sign_in(&state, "root-admin", Role::Admin);
    assert_eq!(
        call(&state, request("GET", "/", Some(&nurse))).await.status,
        StatusCode::OK
    );
    let r = call(
        &state,
        from(
            "192.0.2.44:9",
            form(
                "/pairing/window",
                Some(&nurse.cookie),
                &format!("csrf={}&seconds=60", nurse.csrf),
            ),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // A refused attempt is recorded too.
    let carer = sign_in(&state, "cara", Role::Carer);
    assert_eq!(
        call(&state, request("POST", "/pairing/close", Some(&carer)))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let res = call(
        &state,
        request("GET", "/api/v1/audit?limit=10", Some(&admin)),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&res.body).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let find = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action} not in {v}"))
    };
    let view = find("view residents overview");
    assert_eq!(
        (view["who"].as_str(), view["client"].as_str()),
        (Some("nina"), Some("192.0.2.10"))
    );
    let change = find("POST /pairing/window");
    assert_eq!(
        (
            change["who"].as_str(),
            change["client"].as_str(),
            change["status"].as_u64()
        ),
        (Some("nina"), Some("192.0.2.44"), Some(303))
    );
    let csv = call(&state, request("GET", "/audit.csv", Some(&admin))).await;
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert!(
        csv.body
            .contains("\"nina\",\"POST /pairing/window\",\"/pairing/window\",\"192.0.2.44\",303"),
        "{}",
        csv.body
    );
    let page = call(&state, request("GET", "/audit", Some(&admin))).await;
    assert!(
        page.body.contains("view residents overview"),
        "{}",
        page.body
    );
}

#[test]
fn the_checked_csrf_field_is_taken_out_of_the_form_and_nothing_else() {
    // (body, what the handler gets)
    let cases = [
        ("csrf=ab12&scale=2", "scale=2"),
        ("scale=2&csrf=ab12", "scale=2"),
        ("a=1&csrf=ab12&b=2", "a=1&b=2"),
        ("csrf=ab12", ""),
        ("&csrf=ab12", ""),
        ("csrfx=1&xcsrf=2&csrf=ab12", "csrfx=1&xcsrf=2"),
        ("note=csrf%3D1&csrf=ab12", "note=csrf%3D1"),
    ];
    for (body, expected) in cases {
        assert_eq!(
            String::from_utf8(without_field(body.as_bytes(), "csrf")).unwrap(),
            expected,
            "{body}"
        );
    }
}

/// Under `Referrer-Policy: no-referrer` Chromium posts forms with `Origin:
/// null`: accepted only when `Sec-Fetch-Site` says same-origin.
#[test]
fn origin_null_passes_only_with_sec_fetch_site_same_origin() {
    let check = |origin: &str, site: Option<&str>, want: bool| {
        let mut h = axum::http::HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(header::HOST, "gw.local".parse().unwrap());
        if let Some(s) = site {
            h.insert("sec-fetch-site", s.parse().unwrap());
        }
        assert_eq!(super::same_origin(&h, true), want, "{origin} {site:?}");
    };
    check("null", Some("same-origin"), true);
    check("null", None, false);
    check("null", Some("cross-site"), false);
    check("null", Some("none"), false);
    check("https://gw.local", None, true);
    check("https://evil.example", Some("same-origin"), false);
}
