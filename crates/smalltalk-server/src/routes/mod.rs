//! The HTTP routes, one module per resource, with the request and response
//! bodies they take and give (the schemas of `/openapi.json`).

pub mod agents;
pub mod events;
pub mod groups;
pub mod ops;
pub mod sessions;
pub mod state;
pub mod state_txn;

use axum::http::{HeaderMap, StatusCode};
use smalltalk::AgentId;

use crate::problem::{ApiError, ApiResult};

/// An agent id from a path or body: 400 `invalid_id` if it is not one.
pub(crate) fn agent_id(raw: &str) -> ApiResult<AgentId> {
    AgentId::parse(raw)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", error.to_string()))
}

/// The number in `Last-Event-ID`, if sent; 400 naming `what` it should be
/// if it is not a number.
pub(crate) fn last_event_id(headers: &HeaderMap, what: &str) -> ApiResult<Option<u64>> {
    headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(format!("Last-Event-ID must be {what} this server sent"))
                })
        })
        .transpose()
}
