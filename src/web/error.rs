//! Every HTTP error is `{"error": "..."}` with the right status, mapped here in one place.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::service::ServiceError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "request failed");
        }
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// What a caller reads when the store is unreachable: never the backend's own message (that
/// is logged), which would name the backend and its internals.
pub const STORE_UNAVAILABLE: &str =
    "the store is unavailable; nothing was changed, try again shortly";

/// What a caller reads when stored data cannot be read back.
pub const STORE_CORRUPT: &str = "stored data could not be read; see the server's log";

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, message) = match e {
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, e.to_string()),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, e.to_string()),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, e.to_string()),
            ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, e.to_string()),
            ServiceError::Store(store) => {
                tracing::error!(error = %store, "the store failed a request");
                match store {
                    StoreError::Unavailable(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        STORE_UNAVAILABLE.to_owned(),
                    ),
                    StoreError::Corrupt(_) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, STORE_CORRUPT.to_owned())
                    }
                    // Conflicts and lookups that escaped the service: what they say is ours.
                    other => (StatusCode::CONFLICT, other.to_string()),
                }
            }
        };
        ApiError::new(status, message)
    }
}

impl From<crate::service::demo::DemoError> for ApiError {
    fn from(e: crate::service::demo::DemoError) -> Self {
        use crate::service::demo::DemoError;
        let status = match &e {
            DemoError::Service(_) => None,
            DemoError::Docker(_) => Some(StatusCode::SERVICE_UNAVAILABLE),
            DemoError::Conflict(_) => Some(StatusCode::CONFLICT),
            DemoError::Sandbox(_) => Some(StatusCode::INTERNAL_SERVER_ERROR),
        };
        match (e, status) {
            (DemoError::Service(e), _) => ApiError::from(e),
            (other, status) => ApiError::new(
                status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                other.to_string(),
            ),
        }
    }
}

/// Turns every error answer that is not JSON already (axum's extractor rejections, the body
/// limit, unknown methods, the request timeout) into `{"error": …}` with the same status, so
/// every error body on every route has one shape. The text comes from the original body, or
/// the status's reason when it had none.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Error bodies are short texts; more than this is not worth reading.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let mut json = ApiError::new(status, message).into_response();
    // Keep what the original answer said beyond its body (`Allow`, `Retry-After`, …).
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // A body over the limit keeps its 413; every other unreadable body is bad input.
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, rejection.body_text())
    }
}
