//! `Idempotency-Key` on POSTs. A key is claimed atomically in the state
//! store (a transaction whose compare is "absent"), under a 24 h lease, so
//! every node sharing the database honours it:
//!
//! - the first request runs; its answer (status and body) is kept for
//!   24 h, and a repeat with the same payload gets it again, with
//!   `Idempotency-Replayed: true`;
//! - the same key with another method, path or body: 422
//!   `idempotency_key_reused`;
//! - a repeat while the first is still running: 409
//!   `idempotency_in_flight`;
//! - a first request that failed with a 5xx releases the key, so a retry
//!   runs again.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use smalltalk::state::TxnResult;
use smalltalk::types::StorageKey;

use crate::AppState;
use crate::problem::ApiError;

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Set on a response given again for a repeated key.
pub const REPLAYED: &str = "idempotency-replayed";

/// The prefix of the state keys the server keeps for itself; the state
/// routes refuse it.
pub const RESERVED_PREFIX: &str = "smalltalk.";

/// How long a key is remembered.
const KEEP: Duration = Duration::from_secs(24 * 3600);

/// The most of a response body kept for replay.
const MAX_KEPT_BODY: usize = 1024 * 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Runs a POST once per `Idempotency-Key` (see the module docs).
pub(crate) async fn idempotent(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(raw) = request.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let key = match raw.to_str() {
        Ok(key)
            if (1..=255).contains(&key.len())
                && key.bytes().all(|byte| (0x21..=0x7e).contains(&byte)) =>
        {
            key.to_owned()
        }
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
            .into_response();
        }
    };
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, app.config().max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body is larger than {} bytes",
                    app.config().max_body_bytes
                ),
            )
            .into_response();
        }
    };
    let mut print = Sha256::new();
    print.update(parts.method.as_str().as_bytes());
    print.update([0]);
    print.update(parts.uri.to_string().as_bytes());
    print.update([0]);
    print.update(&body);
    let fingerprint = hex(&print.finalize());
    let record = match StorageKey::parse(&format!(
        "{RESERVED_PREFIX}idempotency:{}",
        hex(&Sha256::digest(key.as_bytes()))
    )) {
        Ok(record) => record,
        Err(error) => return ApiError::internal(error.to_string()).into_response(),
    };
    let state = &app.runtime().state;
    let lease = match state.grant_lease(KEEP).await {
        Ok(lease) => lease.id,
        Err(error) => return ApiError::unavailable(error.to_string()).into_response(),
    };
    let in_flight = json!({
        "state": "in-flight",
        "fingerprint": fingerprint,
        "claimedAt": smalltalk::Timestamp::now().as_micros(),
    });
    // A claim left in flight longer than this was abandoned (its node
    // died): a repeat may take it over.
    let abandoned_after = Duration::from_millis(app.config().request_timeout_ms) * 2;
    let mut expect = smalltalk::Expect::Absent;
    loop {
        let claim = state
            .txn()
            .expect(record.clone(), expect)
            .put_with_lease(record.clone(), in_flight.clone(), lease)
            .or_else()
            .get(record.clone())
            .commit()
            .await;
        let outcome = match claim {
            Ok(outcome) => outcome,
            Err(error) => return ApiError::unavailable(error.to_string()).into_response(),
        };
        if outcome.succeeded {
            break;
        }
        let existing = outcome.results.into_iter().find_map(|result| match result {
            TxnResult::Get(Some(entry)) => Some(entry),
            _ => None,
        });
        let Some(existing) = existing else {
            // Gone between the compare and the read: claim again.
            expect = smalltalk::Expect::Absent;
            continue;
        };
        let claimed_at = existing.value["claimedAt"].as_i64().unwrap_or(i64::MAX);
        let age = smalltalk::Timestamp::now()
            .duration_since(smalltalk::Timestamp::from_micros(claimed_at));
        let stale = existing.value["state"] == "in-flight"
            && existing.value["fingerprint"].as_str() == Some(fingerprint.as_str())
            && age > abandoned_after;
        if stale && expect == smalltalk::Expect::Absent {
            expect = smalltalk::Expect::Revision(existing.revision);
            continue;
        }
        let _ = state.revoke_lease(lease).await;
        return answer_repeat(existing.value, &fingerprint);
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, MAX_KEPT_BODY).await {
        Ok(body) => body,
        Err(_) => {
            let _ = state.delete(record).await;
            return ApiError::internal("the answer was too large to keep for Idempotency-Key")
                .into_response();
        }
    };
    if parts.status.is_server_error() {
        // Not done: a retry may run again.
        let _ = state.delete(record).await;
    } else {
        let kept = json!({
            "state": "done",
            "fingerprint": fingerprint,
            "status": parts.status.as_u16(),
            "contentType": parts.headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()),
            "body": String::from_utf8_lossy(&body),
        });
        if let Err(error) = state
            .txn()
            .put_with_lease(record, kept, lease)
            .commit()
            .await
        {
            tracing::warn!("an Idempotency-Key answer could not be kept: {error}");
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// The answer to a key seen before.
fn answer_repeat(kept: Value, fingerprint: &str) -> Response {
    if kept["fingerprint"].as_str() != Some(fingerprint) {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request (method, path or body)",
        )
        .into_response();
    }
    if kept["state"] != "done" {
        return ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_in_flight",
            "the first request with this Idempotency-Key is still running",
        )
        .into_response();
    }
    let status = kept["status"]
        .as_u64()
        .and_then(|status| u16::try_from(status).ok())
        .and_then(|status| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::OK);
    let body = kept["body"].as_str().unwrap_or_default().to_owned();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if let Some(kind) = kept["contentType"]
        .as_str()
        .and_then(|kind| HeaderValue::from_str(kind).ok())
    {
        headers.insert(header::CONTENT_TYPE, kind);
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
