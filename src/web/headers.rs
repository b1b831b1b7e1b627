//! What every answer of the web server carries, and which `Host` it answers
//! to: one layer around the whole router, so no handler has to remember.
//!
//! - `Content-Security-Policy: default-src 'self'; frame-ancestors 'none'`
//!   (no inline script or style anywhere: the pages load `/assets/…` only) and
//!   `X-Frame-Options: DENY` for older browsers: no page can be framed, so no
//!   other page on the network (another port of this host is the same *site*,
//!   and gets the SameSite cookie) can trick a click on "pair" or "archive".
//! - `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` (a
//!   resident's address in the URL never leaves in a `Referer`), and
//!   `Strict-Transport-Security` when served over HTTPS.
//! - `Cache-Control: no-store` on every answer that does not set its own (only
//!   the content-hashed assets do): pages and JSON hold residents' data, and a
//!   browser's Back after sign-out must not show them again from its cache.
//! - The `Host` allow-list ([`AllowedHosts`]): a request naming a host that is
//!   neither one of the gateway's configured names nor an IP address is refused
//!   (421) before routing. A DNS-rebinding page (an attacker's name made to
//!   point at the gateway, or at 127.0.0.1 for the demo) therefore never reaches
//!   a handler, and no absolute URL is ever built from a forged `Host`.

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// The content security policy of every answer.
pub const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

/// `Strict-Transport-Security` over HTTPS: a year. No `includeSubDomains`: the
/// gateway's name may sit under the home's own domain.
pub const HSTS: &str = "max-age=31536000";

/// What sign-out tells the browser to forget (its cache of our pages, our
/// cookies and any storage).
pub const CLEAR_SITE_DATA: &str = "\"cache\", \"cookies\", \"storage\"";

/// The host names the server answers to. IP addresses are always accepted: a
/// rebinding attack needs a name, and staff may type the gateway's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Lower case, without a trailing dot.
    names: Vec<String>,
    /// Tests only: every host.
    any: bool,
}

impl AllowedHosts {
    /// `names` (the host name, `localhost`, `web.names`), lower case.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> AllowedHosts {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.as_ref().trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        AllowedHosts { names, any: false }
    }

    /// Every host: for router tests that call handlers without a real server.
    pub fn any() -> AllowedHosts {
        AllowedHosts {
            names: Vec::new(),
            any: true,
        }
    }

    /// The first configured name, for building URLs when the request's own host
    /// is not usable.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`) if it
    /// is one this server answers to; `None` otherwise.
    pub fn check<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = host_part(host)?;
        if self.any || is_ip(name) {
            return Some(name);
        }
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&lower).then_some(name)
    }
}

/// `name` of `name:port`, `[v6]` of `[v6]:port`, with a port that is a number;
/// `None` for anything with characters a host cannot have.
fn host_part(h: &str) -> Option<&str> {
    // `(host, Some(port))` when a port follows the host.
    let (host, port) = if h.starts_with('[') {
        let end = h.find(']')?;
        let rest = &h[end + 1..];
        match rest.strip_prefix(':') {
            Some(p) => (&h[..=end], Some(p)),
            None if rest.is_empty() => (&h[..=end], None),
            None => return None,
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    (port_ok && host_ok).then_some(host)
}

fn is_ip(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

/// What the layer needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hosts: Arc<AllowedHosts>,
    pub https: bool,
}

/// The layer: refuses unknown hosts, then sets the headers on whatever the
/// router answered.
pub async fn layer(State(s): State<Arc<Settings>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().ok().and_then(|h| s.hosts.check(h)).is_some());
    let mut res = if host == Some(false) {
        // A request without a Host (HTTP/1.0) is served: browsers always send one.
        (
            StatusCode::MISDIRECTED_REQUEST,
            "This gateway does not answer to that host name.",
        )
            .into_response()
    } else {
        next.run(req).await
    };
    set_headers(res.headers_mut(), s.https);
    res
}

fn set_headers(h: &mut axum::http::HeaderMap, https: bool) {
    let fixed: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    if https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_we_were_given_or_ip_addresses() {
        let a = AllowedHosts::new(["localhost", "Carehub.Local", "gw-1"]);
        for ok in [
            "localhost",
            "localhost:8080",
            "carehub.local",
            "CAREHUB.LOCAL.:443",
            "gw-1",
            "127.0.0.1:8080",
            "192.168.1.20",
            "[::1]:8443",
            "[fe80::1]",
        ] {
            assert!(a.check(ok).is_some(), "{ok}");
        }
        for bad in [
            "evil.example",
            "attacker.test:8080",
            "localhost.evil.example",
            "localhost:80x",
            "a@b",
            "",
            "evil/x",
            "[::1",
            "gw-1:",
        ] {
            assert!(a.check(bad).is_none(), "{bad}");
        }
    }
}
