//! The one place where errors become HTTP responses.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use selves_store::StoreError;
use selves_wire::native::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("rate limited: retry after {} s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("no such endpoint")]
    NotFound,
    #[error("the store is busy: retry shortly")]
    Busy,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Gap { .. } => ApiError::Conflict {
                code: "gap",
                detail: e.to_string(),
            },
            StoreError::UnknownStream(_) => ApiError::BadRequest(e.to_string()),
            _ if e.is_retryable() => ApiError::Busy,
            _ => {
                tracing::error!(error = %e, "store error");
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = match &self {
            ApiError::Internal(_) => Some("see the server log".to_owned()),
            other => Some(other.to_string()),
        };
        let body = ErrorBody {
            error: code.to_owned(),
            detail,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after } => Some(retry_after.as_secs().max(1)),
            ApiError::Busy => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            // A refused token keeps no connection open.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
