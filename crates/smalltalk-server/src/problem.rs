//! Every error as RFC 9457 `application/problem+json`, with a stable
//! `code` (the part after `urn:smalltalk:problem:` in `type`).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:smalltalk:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for a human.
    pub detail: String,
    /// The stable error code (also the end of `type`).
    pub code: String,
}

/// An error a handler returns: a status, a code and a detail.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// What happened.
    pub detail: String,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    pub retry_after: Option<Duration>,
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_input`.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", detail)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 500 `internal`: a fault of the server, not of the request.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// 503 `storage_unavailable`, retry after a second.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            detail,
        )
        .retry_after(Duration::from_secs(1))
    }

    /// With a `Retry-After`.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The document sent.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:smalltalk:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("smalltalk_errors_total", "code" => self.code).increment(1);
        if self.status.is_server_error() {
            tracing::warn!(
                code = self.code,
                status = self.status.as_u16(),
                "{}",
                self.detail
            );
        }
        let mut response = (self.status, Json(self.problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "malformed_json",
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            // A route without the parameters its handler takes: our bug.
            PathRejection::MissingPathParams(_) => Self::internal(rejection.body_text()),
            _ => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                rejection.body_text(),
            ),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

impl From<smalltalk::types::Error> for ApiError {
    fn from(error: smalltalk::types::Error) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", error.to_string())
    }
}

impl From<smalltalk::StorageError> for ApiError {
    fn from(error: smalltalk::StorageError) -> Self {
        use smalltalk::StorageError as E;
        let detail = error.to_string();
        match error {
            E::NotFound { .. } => Self::not_found(detail),
            E::Conflict { .. } | E::HistoryDiverged { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", detail)
            }
            E::AlreadyExists { .. } => Self::new(StatusCode::CONFLICT, "already_exists", detail),
            E::NotAccepting { .. } => Self::new(StatusCode::GONE, "not_accepting", detail),
            E::Domain(error) => error.into(),
            E::InvalidRequest { .. } | E::InvalidImport { .. } => Self::invalid(detail),
            // Transient: worth retrying.
            E::Unavailable { .. } | E::Closed | E::Io { .. } | E::Backend { .. } => {
                Self::unavailable(detail)
            }
            // A damaged record or a schema from a newer release: retrying
            // will not help.
            _ => Self::internal(detail),
        }
    }
}

impl From<smalltalk::session::Error> for ApiError {
    fn from(error: smalltalk::session::Error) -> Self {
        use smalltalk::session::Error as E;
        let detail = error.to_string();
        match error {
            E::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "session_not_found", detail),
            E::Invalidated { .. } => Self::new(StatusCode::GONE, "session_invalidated", detail),
            E::Expired { .. } => Self::new(StatusCode::GONE, "session_expired", detail),
            E::CapacityExceeded { retry_after, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "at_capacity", detail)
                    .retry_after(retry_after)
            }
            E::Paused { retry_after } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "degraded", detail)
                    .retry_after(retry_after)
            }
            E::Backpressure { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "backpressure", detail)
                    .retry_after(Duration::from_secs(1))
            }
            E::Conflict { .. } => Self::new(StatusCode::CONFLICT, "conflict", detail),
            E::InvalidTransition { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", detail)
            }
            E::AgentStateTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "agent_state_too_large",
                detail,
            ),
            E::Domain(error) => error.into(),
            E::Storage(error) => error.into(),
            E::FlushFailed { .. } | E::PurgeFailed { .. } => Self::unavailable(detail),
            _ => Self::internal(detail),
        }
    }
}

impl From<smalltalk::groups::Error> for ApiError {
    fn from(error: smalltalk::groups::Error) -> Self {
        use smalltalk::groups::Error as E;
        let detail = error.to_string();
        match error {
            E::ParticipantCount { .. } | E::InvalidGroup { .. } | E::InvalidInput { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_group", detail)
            }
            E::Workflow { .. } => Self::invalid(detail),
            E::UnknownAgent { .. } => Self::new(StatusCode::BAD_REQUEST, "unknown_agent", detail),
            E::UnknownEndpoint { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "unknown_endpoint", detail)
            }
            E::DuplicateParticipant { .. } => {
                Self::new(StatusCode::CONFLICT, "duplicate_agent", detail)
            }
            E::NotParticipant { .. } => {
                Self::new(StatusCode::NOT_FOUND, "agent_not_in_group", detail)
            }
            E::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "group_not_found", detail),
            E::AlreadyExists { .. } => Self::new(StatusCode::CONFLICT, "already_exists", detail),
            E::AtCapacity { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "at_capacity", detail)
                    .retry_after(Duration::from_secs(5))
            }
            E::RoundInProgress { .. } => {
                Self::new(StatusCode::CONFLICT, "round_in_progress", detail)
            }
            E::NoRoundInProgress { .. } => {
                Self::new(StatusCode::CONFLICT, "no_round_in_progress", detail)
            }
            E::Finished { .. } => Self::new(StatusCode::CONFLICT, "group_finished", detail),
            // Another node committed the turn first.
            E::Conflict { .. } => Self::new(StatusCode::CONFLICT, "group_conflict", detail),
            E::SessionClosed { .. } => Self::new(StatusCode::GONE, "group_closed", detail),
            // The model behind the agents failed, not the request.
            E::AgentFailed { .. } | E::AllAgentsFailed { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "agent_failed", detail)
            }
            E::Closed => Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", detail)
                .retry_after(Duration::from_secs(1)),
            // A record a newer release wrote: retrying will not help.
            E::Domain(smalltalk::types::Error::UnsupportedFormatVersion { .. }) => {
                Self::internal(detail)
            }
            E::Domain(error) => error.into(),
            E::Storage(error) => error.into(),
            _ => Self::internal(detail),
        }
    }
}
