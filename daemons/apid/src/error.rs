//! The API's error type and the one place it becomes an HTTP response.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` picks the status and writes a JSON body
//! `{"error": "<code>", "message": "<for the client>"}`. What the client reads is separate
//! from what is logged: internal failures log their full cause chain and tell the client only
//! that something failed, so no SQL, path or secret leaks into a response.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dragonfly_runtime::cli::Chain;
use dragonfly_store::StoreError;
use serde::Serialize;

/// The body of every error response: defined in core, where the agent reads it too.
pub use dragonfly_core::agent_api::ErrorBody;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A 404 whose message is the whole sentence ("the machine has no BMC").
    #[error("{0}")]
    Absent(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    TooLarge,
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("too many attempts; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The server is saturated (e.g. every password-hashing slot and its queue are taken):
    /// try again shortly. Never the answer to a client's own mistake.
    #[error("busy; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    #[error("{message}")]
    Unavailable {
        message: &'static str,
        retry_after_secs: u64,
    },
    /// Another service did not answer in time (504).
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) | Self::Absent(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            Self::Internal(e) => tracing::error!(error = %Chain(e.as_ref()), "request failed"),
            // Floods of these are answered, not journaled one line each.
            Self::Unauthorized
            | Self::NotFound(_)
            | Self::Absent(_)
            | Self::RateLimited { .. }
            | Self::Busy { .. } => tracing::debug!(%status, "{self}"),
            _ => tracing::info!(%status, "request refused: {self}"),
        }
        let body = ErrorBody {
            error: code.to_owned(),
            message: self.to_string(),
        };
        let mut resp = (status, Json(body)).into_response();
        if let Self::RateLimited { retry_after_secs }
        | Self::Busy { retry_after_secs }
        | Self::Unavailable {
            retry_after_secs, ..
        } = self
            && let Ok(v) = retry_after_secs.to_string().parse()
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        if let Self::Unauthorized = self {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"dragonfly\""),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => Self::NotFound(what),
            StoreError::Conflict { expected, current } => Self::Conflict(format!(
                "resourceVersion {expected} is stale; the current version is {current}"
            )),
            // The log line (`e`'s text) names the owning machines; the client is told only
            // that the report was refused: an attacker learns nothing about the owner.
            StoreError::IdentityConflict { .. } => {
                tracing::warn!(error = %Chain(&e), "registration refused: identity conflict");
                Self::Conflict(
                    "the report claims a MAC address or SMBIOS UUID that belongs to another \
                     machine; nothing was written and an operator can see the conflict"
                        .to_owned(),
                )
            }
            StoreError::Full { what, max } => {
                tracing::warn!(what, max, "registration refused: limit reached");
                Self::Unavailable {
                    message: "no new machines are accepted now (the limit is reached)",
                    retry_after_secs: 60,
                }
            }
            StoreError::SessionNotCurrent => Self::Unauthorized,
            StoreError::NotPending { state } => {
                Self::Conflict(format!("the machine is {state}, not awaiting approval"))
            }
            StoreError::AlreadyExists { .. } => Self::Conflict(e.to_string()),
            StoreError::LastAdministrator => Self::Conflict(e.to_string()),
            StoreError::InUse { .. } => Self::Conflict(e.to_string()),
            StoreError::IllegalTransition(t) => Self::Conflict(t.to_string()),
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable(r.body_text()),
            _ => Self::BadRequest(r.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s, so malformed bodies get the JSON error shape.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
