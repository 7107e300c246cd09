//! `POST /v1/state-txn`: an atomic multi-key transaction (etcd's shape):
//! if every compare holds the `success` ops run, else the `failure` ops;
//! all in one revision. A compare that failed is 409
//! `txn_compare_failed`, with the failure ops' results in the problem.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use smalltalk::state::{Expect, TxnResult};
use smalltalk::storage::versioned::CompareOp;
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::{ApiError, ApiResult, Problem};

/// The most compares plus ops in one transaction.
pub const MAX_TXN_OPS: usize = 128;

/// One condition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// Holds if the key is absent.
    #[serde(default)]
    pub absent: bool,
    /// Holds if the key's last change is this revision.
    pub revision: Option<u64>,
    /// Holds if the key is at this version.
    pub version: Option<u64>,
    /// Holds if the key's value equals this.
    pub value_equals: Option<Value>,
}

/// One operation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, tag = "op")]
pub enum Op {
    /// Writes a value.
    #[serde(rename = "put")]
    Put {
        /// The key.
        key: String,
        /// The value.
        #[schema(value_type = Object)]
        value: Value,
    },
    /// Deletes a key.
    #[serde(rename = "delete")]
    Delete {
        /// The key.
        key: String,
    },
    /// Reads a key (as of before the transaction).
    #[serde(rename = "get")]
    Get {
        /// The key.
        key: String,
    },
}

/// A transaction.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Txn {
    /// Conditions that must all hold.
    #[serde(default)]
    pub compare: Vec<Compare>,
    /// Run when they do.
    #[serde(default)]
    pub success: Vec<Op>,
    /// Run when one does not.
    #[serde(default)]
    pub failure: Vec<Op>,
}

fn reserved(key: &str) -> ApiResult<()> {
    if key.starts_with(crate::idempotency::RESERVED_PREFIX) {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reserved_key",
            "keys under \"smalltalk.\" are the server's own",
        ))
    } else {
        Ok(())
    }
}

/// Adds `op` to the transaction.
fn add<'a>(
    builder: smalltalk::state::TxnBuilder<'a>,
    op: &Op,
) -> ApiResult<smalltalk::state::TxnBuilder<'a>> {
    Ok(match op {
        Op::Put { key, value } => {
            reserved(key)?;
            builder.put(key.as_str(), value.clone())
        }
        Op::Delete { key } => {
            reserved(key)?;
            builder.delete(key.as_str())
        }
        Op::Get { key } => {
            reserved(key)?;
            builder.get(key.as_str())
        }
    })
}

fn result_json(result: TxnResult) -> Value {
    match result {
        TxnResult::Get(entry) => json!({"op": "get", "entry": entry}),
        TxnResult::Put(entry) => json!({"op": "put", "entry": entry}),
        TxnResult::Delete(existed) => json!({"op": "delete", "existed": existed}),
        _ => json!({"op": "get", "undecodable": true}),
    }
}

/// Commits a transaction atomically.
#[utoipa::path(post, path = "/v1/state-txn", tag = "state", request_body = Txn,
    responses((status = 200, description = "`{succeeded: true, revision, results}`", content_type = "application/json"), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn txn(
    State(app): State<AppState>,
    body: Result<Json<Txn>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let count = body.compare.len() + body.success.len() + body.failure.len();
    if count == 0 || count > MAX_TXN_OPS {
        return Err(ApiError::invalid(format!(
            "a transaction has 1 to {MAX_TXN_OPS} compares and ops (got {count})"
        )));
    }
    let state = &app.runtime().state;
    let mut builder = state.txn();
    for compare in &body.compare {
        reserved(&compare.key)?;
        let conditions = usize::from(compare.absent)
            + usize::from(compare.revision.is_some())
            + usize::from(compare.version.is_some())
            + usize::from(compare.value_equals.is_some());
        if conditions != 1 {
            return Err(ApiError::invalid(format!(
                "compare on {:?} takes exactly one of absent, revision, version, valueEquals",
                compare.key
            )));
        }
        let key = compare.key.as_str();
        builder = if compare.absent {
            builder.expect(key, Expect::Absent)
        } else if let Some(revision) = compare.revision {
            builder.expect(key, Expect::Revision(revision))
        } else if let Some(version) = compare.version {
            builder.version(key, CompareOp::Equal, version)
        } else {
            builder.value_equals(key, compare.value_equals.as_ref().unwrap_or(&Value::Null))
        };
    }
    for op in &body.success {
        builder = add(builder, op)?;
    }
    if !body.failure.is_empty() {
        builder = builder.or_else();
        for op in &body.failure {
            builder = add(builder, op)?;
        }
    }
    let outcome = builder
        .commit()
        .await
        .map_err(|error| super::state::state_error(error, false))?;
    let results: Vec<Value> = outcome.results.into_iter().map(result_json).collect();
    if !outcome.succeeded {
        let mut problem = ApiError::new(
            StatusCode::CONFLICT,
            "txn_compare_failed",
            "a compare did not hold: the failure ops ran instead",
        )
        .into_response();
        // The failure ops' results ride along as an extension member.
        let document = json!({
            "type": "urn:smalltalk:problem:txn_compare_failed",
            "title": "Conflict",
            "status": 409,
            "detail": "a compare did not hold: the failure ops ran instead",
            "code": "txn_compare_failed",
            "revision": outcome.revision,
            "results": results,
        });
        *problem.body_mut() = axum::body::Body::from(document.to_string());
        return Ok(problem);
    }
    Ok(
        Json(json!({"succeeded": true, "revision": outcome.revision, "results": results}))
            .into_response(),
    )
}
