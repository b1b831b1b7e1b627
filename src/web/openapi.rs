//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of every `/api/v1`
//! route, written by hand in `openapi.json` beside this file and embedded.
//! Tests hold it to the router (every route documented, nothing documented
//! that is not routed) and to the handlers (their real responses validate
//! against the documented schemas).

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DOCUMENT,
    )
}
