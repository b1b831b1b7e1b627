//! The frame every staff page shares: the gateway's name, the navigation, the
//! embedded stylesheet and live-update script, and the plain-words error pages.
//!
//! A page that updates itself marks one element `data-live="<events>"`; the
//! script re-fetches the page and swaps that element when `/events` names one of
//! the events. Without JavaScript a `<noscript>` refresh does the same, slower.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::assets;
use crate::model::Timestamp;

/// The sections of the navigation, in the order staff meet them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Residents,
    Alerts,
    Handover,
    Devices,
    Gateway,
    ManageResidents,
    Users,
    Audit,
    /// A page outside the navigation (errors).
    None,
}

/// Every link of the navigation. Alerts, users and audit are pages other work
/// adds; the links are here so that the navigation does not change shape then.
const NAV: &[(Section, &str, &str)] = &[
    (Section::Residents, "/", "Residents"),
    (Section::Alerts, "/alerts", "Alerts"),
    (Section::Handover, "/handover", "Handover"),
    (Section::Devices, "/pairing", "Devices"),
    (Section::Gateway, "/gateway", "Gateway"),
    (Section::ManageResidents, "/residents", "Manage residents"),
    (Section::Users, "/users", "Users"),
    (Section::Audit, "/audit", "Audit log"),
];

/// Whether the signed-in user's role may open `section`: the navigation offers
/// only what works (the server refuses the rest anyway).
fn shown(section: Section) -> bool {
    use crate::store::accounts::Role;
    let role = super::auth::current().and_then(|p| p.role());
    match section {
        Section::Users | Section::Audit => role == Some(Role::Admin),
        Section::ManageResidents => role.is_some_and(|r| r >= Role::Nurse),
        _ => true,
    }
}

/// What the frame needs besides the page's own content.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// `site.gateway_id`, so that staff with two gateways know which one this is.
    pub gateway: &'a str,
    pub section: Section,
    pub now: Timestamp,
    /// The events (`readings`, `devices`, `uplink`) that refresh the page; `None`
    /// for pages with forms, which must never change under the user's hands.
    pub live: Option<&'static str>,
}

/// The care home's zone (`site.timezone`): every time a person reads on a page
/// is its wall-clock time, as on the clock on the ward's wall. Set once when the
/// router is built; UTC until then.
static SITE_ZONE: std::sync::OnceLock<crate::model::SiteZone> = std::sync::OnceLock::new();

pub(crate) fn remember_zone(zone: &crate::model::SiteZone) {
    let _ = SITE_ZONE.set(zone.clone());
}

fn zone() -> crate::model::SiteZone {
    SITE_ZONE
        .get()
        .cloned()
        .unwrap_or_else(crate::model::SiteZone::utc)
}

/// "HH:MM:SS" of a time, in the site's local time.
pub fn clock(t: Timestamp) -> String {
    zone().clock_seconds(t)
}

/// The site zone's abbreviation at `t` ("GMT", "BST"), for a label.
pub fn zone_abbreviation(t: Timestamp) -> String {
    zone().abbreviation(t)
}

/// "HH:MM" of a time, in the site's local time.
pub fn short_clock(t: Timestamp) -> String {
    zone().clock(t)
}

/// "2026-11-23 21:01", in the site's local time.
pub fn date_time(t: Timestamp) -> String {
    zone().date_time(t)
}

/// The whole page. `title` is the page's `h1` and the window title.
pub fn page(frame: Frame<'_>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if frame.live.is_some() {
                    noscript { meta http-equiv="refresh" content="30"; }
                }
                title { (title) " — " (frame.gateway) }
                link rel="stylesheet" href=(assets::css_url());
                @if frame.live.is_some() {
                    script src=(assets::js_url()) defer {}
                }
            }
            body {
                a.skip href="#content" { "Skip to content" }
                header.top {
                    p.gw { (frame.gateway) }
                    nav aria-label="Main" {
                        ul {
                            @for (section, href, label) in NAV.iter().filter(|(s, _, _)| shown(*s)) {
                                li {
                                    @if *section == frame.section {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(who) = super::auth::current() {
                        form.signout method="post" action="/logout" {
                            (super::csrf_field())
                            span.who {
                                (who.username)
                                @if let Some(role) = who.role() { " (" (role.as_str()) ")" }
                            } " "
                            button type="submit" { "Sign out" }
                        }
                    }
                    p.updated {
                        span id="updated" { "Updated " time datetime=(frame.now.to_rfc3339()) { (clock(frame.now)) " " (zone().abbreviation(frame.now)) } }
                        @if frame.live.is_some() {
                            " · " span id="live-status" role="status" { "" }
                        }
                    }
                    // The overview's opt-in sound for a new high alert, outside
                    // the live region so that it stays as tapped. Shown by
                    // live.js (hidden without it): a tablet plays sound only
                    // after a tap, so staff turn it on.
                    @if frame.section == Section::Residents && frame.live.is_some() {
                        p.sound { button #alert-sound type="button" aria-pressed="false" hidden { "Turn on alert sound" } }
                    }
                }
                main id="content" {
                    h1 { (title) }
                    @match frame.live {
                        Some(events) => div data-live=(events) { (body) },
                        None => (body),
                    }
                }
                footer { "carehub " (env!("CARGO_PKG_VERSION")) " · values older than the clinical window are marked STALE · times in " (zone().name()) " local time" }
            }
        }
    }
}

/// A page that says in plain words what went wrong, with `status`.
pub fn error_page(gateway: &str, status: StatusCode, title: &str, words: &str) -> Response {
    let frame = Frame {
        gateway,
        section: Section::None,
        now: Timestamp::now(),
        live: None,
    };
    let body = html! {
        p.notice { (words) }
        p { a href="/" { "Back to the residents" } }
    };
    (status, Html(page(frame, title, body).into_string())).into_response()
}

/// The 404 page for an unknown address.
pub fn not_found(gateway: &str) -> Response {
    error_page(
        gateway,
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no page at this address. It may have been moved, or the link may be mistyped.",
    )
}
