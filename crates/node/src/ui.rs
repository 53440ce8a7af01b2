//! The web UI's routes: the page at `/` and its files at `/ui/PATH` (embedded by the `web`
//! crate), with their content types and caching; the page also gets the security headers
//! (a strict [`web::CSP`], no sniffing, no referrer, no framing). No token is needed: the page
//! signs in through the API like the CLI.

use crate::error::Error;
use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The route of the page.
pub const INDEX: &str = "/";

/// The route of the page's files.
pub const ASSETS: &str = "/ui/{*path}";

/// `GET /`: the page.
pub async fn index() -> Response {
    let mut r = serve(web::INDEX);
    let headers = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, web::CSP),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// `GET /ui/PATH`: one of the page's files, or 404.
pub async fn asset(Path(path): Path<String>) -> Result<Response, Error> {
    web::asset(&path).map(serve).ok_or_else(|| {
        Error::not_found(format!(
            "no file /ui/{path} in the web UI (open the UI at /)"
        ))
    })
}

/// The asset's bytes with its type, caching, and `nosniff` (types are never guessed).
fn serve(a: web::Asset) -> Response {
    let headers: [(HeaderName, HeaderValue); 3] = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(a.cache_control),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (headers, a.bytes).into_response()
}
