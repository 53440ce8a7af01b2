//! HTTP plumbing shared by every route: JSON answers, the body and token extractors, the
//! blocking pool, the accept loop, and the one mapping of the node's errors to HTTP statuses.
//! It knows no route and no domain module, so route modules and the router import it without
//! a cycle.

use crate::error::{Error, Kind};
use crate::Node;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = (status, bytes).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::error!("encoding an answer: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"error":"the node could not encode its answer (see its log)"}"#,
            )
                .into_response()
        }
    }
}

/// 200 with a JSON body.
pub(crate) fn ok<T: Serialize>(value: &T) -> Response {
    json(StatusCode::OK, value)
}

/// A request body parsed as JSON `T`: 413 over the node's limit, 400 if it is not `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, Error> {
        let limit = node.config.max_body;
        let too_big = || {
            Error::new(
                Kind::TooLarge,
                format!("request body over the node's limit of {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_big());
        }
        let wait = node.config.connections.body();
        let read = tokio::time::timeout(wait, axum::body::to_bytes(req.into_body(), limit));
        let bytes = read
            .await
            .map_err(|_| {
                Error::invalid(format!(
                    "the request body did not arrive within {} s (the node's body_timeout)",
                    wait.as_secs()
                ))
            })?
            .map_err(|e| {
                if e.into_inner().is::<http_body_util::LengthLimitError>() {
                    too_big()
                } else {
                    Error::invalid("reading the request body failed")
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Error::invalid(format!("malformed JSON request body: {e}")))
    }
}

/// The user a request's bearer token belongs to.
pub struct AuthUser(pub String);

/// A request's user once its token was looked up (kept in the request's extensions, so a
/// route behind the env routes' middleware, which looked it up already, does not again).
#[derive(Clone)]
pub(crate) struct Checked(pub(crate) String);

impl FromRequestParts<Arc<Node>> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Error> {
        if let Some(Checked(user)) = parts.extensions.get() {
            return Ok(AuthUser(user.clone()));
        }
        let user = AuthUser::of_token(node, bearer(&parts.headers)?).await?;
        parts.extensions.insert(Checked(user.0.clone()));
        Ok(user)
    }
}

/// The token of a request's `Authorization: Bearer TOKEN` header, or 401.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Result<String, Error> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Error::unauthorized(
            "no token: log in with `spawngrid login`",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .ok_or_else(|| Error::unauthorized("the Authorization header must be `Bearer TOKEN`"))
}

impl AuthUser {
    /// The user `token` belongs to (and the access log's user), or 401.
    pub(crate) async fn of_token(node: &Arc<Node>, token: String) -> Result<Self, Error> {
        let node = node.clone();
        let user = blocking(move || Ok(node.cat.token_user(&token)?)).await?;
        match user {
            Some(u) => {
                let _ = CURRENT_USER.try_with(|cell| {
                    *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(u.clone())
                });
                Ok(AuthUser(u))
            }
            None => Err(Error::unauthorized(
                "token not valid (expired, revoked or unknown): log in again with `spawngrid login`",
            )),
        }
    }
}

/// Runs blocking work (runtime, SQLite, Argon2) off the async workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(&anyhow::anyhow!("worker failed: {e}")))?
}

/// Path parameter `env`, or 400.
pub(crate) fn env_param(
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, Error> {
    p.map(|Path(e)| e)
        .map_err(|e| Error::invalid(format!("bad env in the path: {e}")))
}

/// The client's address of a connection, put into its requests by [`crate::server::serve`].
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::IpAddr);

tokio::task_local! {
    /// The authenticated user of the request being served, for the access log.
    pub(crate) static CURRENT_USER: std::sync::Mutex<Option<String>>;
}

/// The next connection on `listener` (the `what` listener, for the log): after an error
/// (EMFILE and friends) it waits 100 ms and tries again instead of spinning. Accepted
/// connections get `TCP_NODELAY`: keystrokes and small answers must not wait for Nagle.
pub(crate) async fn accept(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, peer);
            }
            Err(e) => {
                tracing::warn!("{what} accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The HTTP status of each kind of failure: the one place errors become statuses.
pub(crate) fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::TooMany => StatusCode::TOO_MANY_REQUESTS,
        Kind::Gone => StatusCode::GONE,
        Kind::BadGateway => StatusCode::BAD_GATEWAY,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = status(self.kind);
        json(
            status,
            &api::ErrorBody {
                error: self.message,
            },
        )
    }
}
