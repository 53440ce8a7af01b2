//! The API's error: an HTTP status and one line, sent as `{"error": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer: status plus a one-line message naming what failed and what to do.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message (one line).
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message` (newlines folded into spaces).
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let message: String = message.into();
        ApiError {
            status,
            message: message.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    /// 400: the request is malformed or invalid.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no valid token, or wrong credentials.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404: no such thing (also for other users' things, so existence does not leak).
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 500 from an internal failure: its whole context chain on one line.
    pub fn internal(e: &anyhow::Error) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, chain(e))
    }
}

/// An error's context chain joined with `: `.
pub fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

impl From<catalog::Error> for ApiError {
    fn from(e: catalog::Error) -> ApiError {
        let status = match &e {
            catalog::Error::NotFound { .. } | catalog::Error::NoUser { .. } => {
                StatusCode::NOT_FOUND
            }
            catalog::Error::AlreadyBound { .. } | catalog::Error::UserExists { .. } => {
                StatusCode::CONFLICT
            }
            catalog::Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        match e.downcast::<catalog::Error>() {
            Ok(c) => c.into(),
            Err(e) => ApiError::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::ErrorBody {
            error: self.message,
        };
        crate::server::json(self.status, &body)
    }
}
