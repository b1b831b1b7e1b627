//! Who may make which request: one table, consulted for every request by
//! [`super::authorize`] through axum's `MatchedPath`.
//!
//! A route the router knows but this table does not is refused to everyone,
//! admins included (fail closed), and the refusal is logged as a bug. Adding a
//! route therefore means adding one line here; the authorization matrix test in
//! `web::tests` fails until that line exists.

use crate::store::accounts::Role;

/// Who may make a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Anyone, signed in or not (health checks, the sign-in pages).
    Anyone,
    /// A signed-in user with this role or a higher one.
    AtLeast(Role),
    /// Anyone from the gateway itself (the loopback address), else an admin.
    /// Meant for `/metrics`, which a local Prometheus agent scrapes.
    LoopbackOrAdmin,
    /// A signed-in user with this role or a higher one, or the gateway's own
    /// commands (the daemon's `cli-token`, accepted from loopback only). The
    /// only lines the token passes: `carehub pair` opens and closes the pairing
    /// window, and `carehub health-check` reads the gateway's status (no
    /// residents' data); nothing else.
    AtLeastOrPairCli(Role),
}

/// Who is calling, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Nobody signed in.
    Anonymous,
    /// A signed-in member of staff with this role.
    Staff(Role),
    /// `carehub pair` with the daemon's `cli-token`: no staff role at all, only
    /// the lines marked [`Who::AtLeastOrPairCli`].
    PairCli,
}

/// What the audit log records about a request, beyond changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// Nothing for a read; a state-changing request is always recorded as
    /// "METHOD /route" with its path and status.
    Changes,
    /// A read of residents' data: recorded as "view <what>".
    View(&'static str),
    /// The handler writes its own entries (sign-in, setup), with details the
    /// middleware cannot know.
    Own,
}

/// One line of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `GET`, `POST`, `PUT` or `DELETE` (`HEAD` follows `GET`).
    pub method: &'static str,
    /// The route exactly as given to `Router::route`, e.g. `/api/v1/devices/{address}/assignment`.
    pub route: &'static str,
    pub who: Who,
    pub audit: Audit,
}

const fn rule(method: &'static str, route: &'static str, who: Who, audit: Audit) -> Rule {
    Rule {
        method,
        route,
        who,
        audit,
    }
}

use Audit::{Changes, Own, View};
use Who::{Anyone, AtLeast};
const CARER: Who = AtLeast(Role::Carer);
const NURSE: Who = AtLeast(Role::Nurse);
const ADMIN: Who = AtLeast(Role::Admin);
/// Nurses and up, and `carehub pair`: the pairing window.
const NURSE_OR_PAIR_CLI: Who = Who::AtLeastOrPairCli(Role::Nurse);
/// Carers and up, and `carehub health-check`: the gateway's status.
const CARER_OR_LOCAL_CLI: Who = Who::AtLeastOrPairCli(Role::Carer);

/// The policy. One line per method and route.
pub const POLICY: &[Rule] = &[
    // Anonymous: health, signing in and out, first-start setup, the demo link.
    rule("GET", "/healthz", Anyone, Changes),
    rule("GET", "/login", Anyone, Changes),
    rule("POST", "/login", Anyone, Own),
    rule("POST", "/logout", Anyone, Own),
    rule("GET", "/setup", Anyone, Changes),
    rule("POST", "/setup", Anyone, Own),
    rule("GET", "/signin/{token}", Anyone, Own),
    // Residents (carer and up read).
    rule("GET", "/", CARER, View("residents overview")),
    rule(
        "GET",
        "/api/v1/residents",
        CARER,
        View("residents overview (api)"),
    ),
    // The shift handover (web::handover): everyone on shift reads it.
    rule("GET", "/handover", CARER, View("shift handover")),
    rule("GET", "/handover.csv", CARER, View("shift handover export")),
    // Devices and pairing: carers see, nurses change.
    rule("GET", "/pairing", CARER, View("pairing page")),
    rule("GET", "/api/v1/pairing", CARER, Changes),
    rule("GET", "/api/v1/bluetooth", CARER, Changes),
    rule("GET", "/api/v1/devices", CARER, Changes),
    rule(
        "PUT",
        "/api/v1/devices/{address}/assignment",
        NURSE,
        Changes,
    ),
    rule(
        "DELETE",
        "/api/v1/devices/{address}/assignment",
        NURSE,
        Changes,
    ),
    rule("PUT", "/api/v1/devices/{address}/key", NURSE, Changes),
    rule("DELETE", "/api/v1/devices/{address}/key", NURSE, Changes),
    rule("GET", "/devices/{address}", CARER, View("device page")),
    rule("POST", "/devices/{address}/remove", NURSE, Changes),
    rule("POST", "/pairing/key", NURSE, Changes),
    rule("POST", "/pairing/key/remove", NURSE, Changes),
    rule("POST", "/pairing/assign", NURSE, Changes),
    rule("POST", "/pairing/unassign", NURSE, Changes),
    rule("POST", "/pairing/window", NURSE, Changes),
    rule("POST", "/pairing/close", NURSE, Changes),
    rule("POST", "/pairing/passkey", NURSE, Changes),
    // The guided flow (web::pairing_guide): nurses pair.
    rule("GET", "/pairing/guide", NURSE, View("pairing guide")),
    rule("POST", "/pairing/guide", NURSE, Changes),
    rule("POST", "/pairing/guide/assign", NURSE, Changes),
    rule("POST", "/pairing/guide/passkey", NURSE, Changes),
    rule("POST", "/pairing/guide/confirm", NURSE, Changes),
    rule("POST", "/api/v1/pairing/passkey", NURSE, Changes),
    rule("POST", "/api/v1/pairing/confirm", NURSE, Changes),
    // `carehub pair` opens the window (POST); closing it early is the other
    // half of the same job.
    rule("POST", "/api/v1/pairing/window", NURSE_OR_PAIR_CLI, Changes),
    rule(
        "DELETE",
        "/api/v1/pairing/window",
        NURSE_OR_PAIR_CLI,
        Changes,
    ),
    rule(
        "DELETE",
        "/api/v1/pairing/devices/{address}",
        NURSE,
        Changes,
    ),
    // Gateway status.
    rule("GET", "/api/v1/uplink", CARER, Changes),
    // Administration.
    rule("GET", "/users", ADMIN, Changes),
    rule("POST", "/users", ADMIN, Changes),
    rule("POST", "/users/{id}/disable", ADMIN, Changes),
    rule("POST", "/users/{id}/enable", ADMIN, Changes),
    rule("POST", "/users/{id}/password", ADMIN, Changes),
    rule("POST", "/users/{id}/unlock", ADMIN, Changes),
    rule("GET", "/audit", ADMIN, Changes),
    rule("GET", "/audit.csv", ADMIN, Changes),
    rule("GET", "/api/v1/audit", ADMIN, Changes),
    // Staff pages (issue 7): carers read; nurses manage residents.
    rule("GET", "/metrics", Who::LoopbackOrAdmin, Changes),
    rule("GET", "/events", CARER, Changes),
    rule("GET", "/assets/carehub.css", Anyone, Changes),
    rule("GET", "/assets/live.js", Anyone, Changes),
    rule("GET", "/gateway", CARER, Changes),
    rule("POST", "/gateway/uplink/retry", NURSE, Changes),
    rule("GET", "/api/v1/gateway", CARER_OR_LOCAL_CLI, Changes),
    rule("GET", "/api/v1/openapi.json", CARER, Changes),
    rule("GET", "/residents/{id}", CARER, View("resident detail")),
    rule(
        "GET",
        "/api/v1/residents/{id}",
        CARER,
        View("resident detail (api)"),
    ),
    rule("GET", "/residents", NURSE, View("residents list")),
    rule("GET", "/residents/new", NURSE, Changes),
    rule("POST", "/residents", NURSE, Changes),
    rule(
        "GET",
        "/residents/{id}/edit",
        NURSE,
        View("resident edit form"),
    ),
    rule("POST", "/residents/{id}/edit", NURSE, Changes),
    rule(
        "GET",
        "/residents/{id}/archive",
        NURSE,
        View("resident archive form"),
    ),
    rule("POST", "/residents/{id}/archive", NURSE, Changes),
    rule("POST", "/api/v1/residents", NURSE, Changes),
    rule("PUT", "/api/v1/residents/{id}", NURSE, Changes),
    rule("DELETE", "/api/v1/residents/{id}", NURSE, Changes),
    // Alerts (issue 8): carers see and acknowledge them; nurses set limits.
    rule("GET", "/alerts", CARER, View("alerts page")),
    rule("GET", "/api/v1/alerts", CARER, View("alerts (api)")),
    rule("POST", "/api/v1/alerts/{id}/ack", CARER, Changes),
    rule("POST", "/alerts/{id}/ack", CARER, Changes),
    rule("PUT", "/api/v1/residents/{id}/thresholds", NURSE, Changes),
    // Staff observation sets, SpO2 scale and thresholds (web::clinical).
    rule(
        "GET",
        "/residents/{id}/observations",
        NURSE,
        View("observation form"),
    ),
    rule("POST", "/residents/{id}/observations", NURSE, Changes),
    rule(
        "POST",
        "/api/v1/residents/{id}/observations",
        NURSE,
        Changes,
    ),
    rule(
        "GET",
        "/residents/{id}/clinical",
        NURSE,
        View("resident clinical settings"),
    ),
    rule("POST", "/residents/{id}/clinical/scale", NURSE, Changes),
    rule(
        "POST",
        "/residents/{id}/clinical/thresholds",
        NURSE,
        Changes,
    ),
    rule("PUT", "/api/v1/residents/{id}/spo2-scale", NURSE, Changes),
];

/// The rule for a request, `None` when the table has no line for it.
pub fn lookup(method: &str, route: &str) -> Option<&'static Rule> {
    let method = if method == "HEAD" { "GET" } else { method };
    POLICY
        .iter()
        .find(|r| r.method == method && r.route == route)
}

/// Whether `caller` from a loopback client or not may pass `who`.
pub fn allows(who: Who, caller: Caller, loopback: bool) -> bool {
    let at_least = |min: Role| matches!(caller, Caller::Staff(r) if r >= min);
    match who {
        Who::Anyone => true,
        Who::AtLeast(min) => at_least(min),
        Who::LoopbackOrAdmin => loopback || caller == Caller::Staff(Role::Admin),
        Who::AtLeastOrPairCli(min) => at_least(min) || caller == Caller::PairCli,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_and_route_has_exactly_one_line() {
        for (i, a) in POLICY.iter().enumerate() {
            for b in &POLICY[i + 1..] {
                assert!(
                    !(a.method == b.method && a.route == b.route),
                    "{} {} is in the policy twice",
                    a.method,
                    a.route
                );
            }
            assert!(
                ["GET", "POST", "PUT", "DELETE"].contains(&a.method),
                "{} {}: unknown method",
                a.method,
                a.route
            );
        }
    }

    #[test]
    fn roles_include_the_ones_below_and_nobody_passes_an_unknown_route() {
        let check = |who, role, loopback, expected| {
            assert_eq!(
                allows(who, role, loopback),
                expected,
                "{who:?} {role:?} {loopback}"
            )
        };
        use Caller::{Anonymous, PairCli, Staff};
        check(NURSE, Staff(Role::Admin), false, true);
        check(NURSE, Staff(Role::Nurse), false, true);
        check(NURSE, Staff(Role::Carer), false, false);
        check(NURSE, Anonymous, true, false);
        check(Who::LoopbackOrAdmin, Anonymous, true, true);
        check(Who::LoopbackOrAdmin, Staff(Role::Nurse), false, false);
        check(Who::LoopbackOrAdmin, Staff(Role::Admin), false, true);
        // Regression (issue 17, finding 9): the pairing token was a nurse.
        check(NURSE, PairCli, true, false);
        check(CARER, PairCli, true, false);
        check(NURSE_OR_PAIR_CLI, PairCli, true, true);
        check(NURSE_OR_PAIR_CLI, Staff(Role::Nurse), false, true);
        check(NURSE_OR_PAIR_CLI, Staff(Role::Carer), false, false);
        check(NURSE_OR_PAIR_CLI, Anonymous, true, false);
        assert_eq!(lookup("PATCH", "/"), None);
        assert_eq!(lookup("GET", "/nowhere"), None);
        assert_eq!(lookup("HEAD", "/").map(|r| r.who), Some(CARER));
    }
}
