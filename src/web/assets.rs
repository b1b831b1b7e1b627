//! The stylesheet and the live-update script, embedded in the binary: the care
//! home's network may have no internet, so nothing comes from a CDN.
//!
//! Each is served under its own path with a content hash in the query
//! (`/assets/carehub.css?v=…`), so that a browser may cache it for a year and a
//! new build is fetched at once.

use axum::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

pub const CSS: &str = include_str!("../../assets/carehub.css");
pub const JS: &str = include_str!("../../assets/live.js");

/// FNV-1a, 64 bit: computed at compile time, enough to tell two builds' files apart.
#[allow(
    clippy::indexing_slicing,
    reason = "i < bytes.len() by the loop condition (a const fn cannot use get)"
)]
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const CSS_HASH: u64 = fnv1a(CSS.as_bytes());
const JS_HASH: u64 = fnv1a(JS.as_bytes());

pub fn css_url() -> String {
    format!("/assets/carehub.css?v={CSS_HASH:016x}")
}

pub fn js_url() -> String {
    format!("/assets/live.js?v={JS_HASH:016x}")
}

#[derive(Deserialize)]
pub struct Version {
    v: Option<String>,
}

/// A year and immutable when the URL names this build's file; otherwise (an old
/// page asking with an old hash, or none) the browser must ask again next time.
fn serve(
    body: &'static str,
    content_type: &'static str,
    hash: u64,
    asked: Option<String>,
) -> Response {
    let cache = if asked.as_deref() == Some(format!("{hash:016x}").as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /assets/carehub.css`
pub async fn css(Query(q): Query<Version>) -> Response {
    serve(CSS, "text/css; charset=utf-8", CSS_HASH, q.v)
}

/// `GET /assets/live.js`
pub async fn js(Query(q): Query<Version>) -> Response {
    serve(JS, "text/javascript; charset=utf-8", JS_HASH, q.v)
}
