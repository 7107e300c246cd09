//! `/v1/state/{key}`: versioned shared state. Get (now or at a revision),
//! put (`If-Match` on the revision: 412 when stale; `If-None-Match: *`:
//! create only), delete, history and diffs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smalltalk::state::{Error as StateError, Expect};
use smalltalk::types::StorageKey;
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::{ApiError, ApiResult, Problem};

/// A key's value with its revision.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateEntryView {
    /// The key.
    pub key: String,
    /// The value (any JSON).
    pub value: Value,
    /// The revision of the key's last change (also the `ETag`).
    pub revision: u64,
    /// The revision that created the key.
    pub create_revision: u64,
    /// 1 on creation, plus one per write.
    pub version: u64,
    /// Who wrote this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// RFC 3339.
    pub timestamp: String,
}

impl From<&smalltalk::state::StateEntry> for StateEntryView {
    fn from(entry: &smalltalk::state::StateEntry) -> Self {
        Self {
            key: entry.key.to_string(),
            value: entry.value.clone(),
            revision: entry.revision,
            create_revision: entry.create_revision,
            version: entry.version,
            author: entry.author.as_ref().map(ToString::to_string),
            timestamp: entry.timestamp.to_string(),
        }
    }
}

/// A read at a revision.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AtQuery {
    /// The revision to read at (default: now).
    pub revision: Option<u64>,
}

/// History paging.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Versions per page, 1 to 1,000 (default 100).
    pub depth: Option<u32>,
    /// Older than this revision (the oldest of the previous page).
    pub before: Option<u64>,
}

/// A diff's range.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// From this revision.
    pub from: u64,
    /// To this revision.
    pub to: u64,
}

fn key(path: Result<Path<String>, PathRejection>) -> ApiResult<StorageKey> {
    let Path(raw) = path?;
    if raw.starts_with(crate::idempotency::RESERVED_PREFIX) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reserved_key",
            format!(
                "keys under {:?} are the server's own",
                crate::idempotency::RESERVED_PREFIX
            ),
        ));
    }
    StorageKey::parse(&raw)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", error.to_string()))
}

/// The error for a state failure; `conditional` when the client sent a
/// precondition (then a lost compare is 412, else 409).
pub(crate) fn state_error(error: StateError, conditional: bool) -> ApiError {
    let detail = error.to_string();
    match error {
        StateError::Conflict { .. } | StateError::MergeConflict { .. } if conditional => {
            ApiError::new(StatusCode::PRECONDITION_FAILED, "stale_revision", detail)
        }
        StateError::Conflict { .. }
        | StateError::MergeConflict { .. }
        | StateError::Rejected { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
        StateError::Compacted { .. } | StateError::BaseCompacted { .. } => {
            ApiError::new(StatusCode::GONE, "compacted", detail)
        }
        StateError::Purged { .. } => ApiError::new(StatusCode::GONE, "purged", detail),
        StateError::FutureRevision { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "future_revision", detail)
        }
        StateError::ValueTooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", detail)
        }
        StateError::InvalidRequest { .. } | StateError::Domain(_) => ApiError::invalid(detail),
        StateError::Contention { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "contention", detail)
                .retry_after(std::time::Duration::from_secs(1))
        }
        StateError::Storage(error) => error.into(),
        _ => ApiError::internal(detail),
    }
}

/// The entry as JSON, with its revision as the `ETag`.
fn entry_response(status: StatusCode, entry: &smalltalk::state::StateEntry) -> Response {
    let mut response = (status, Json(StateEntryView::from(entry))).into_response();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", entry.revision)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// A write's precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Precondition {
    /// `If-None-Match: *`: the key must be absent.
    Absent,
    /// `If-Match: *`: the key must exist.
    Exists,
    /// `If-Match: "r1", "r2"`: the key's last change must be one of these
    /// revisions (strong comparison: a weak tag never matches).
    AnyOf(Vec<u64>),
}

/// The precondition in `If-Match` / `If-None-Match`, if any.
fn precondition(headers: &HeaderMap) -> ApiResult<Option<Precondition>> {
    let text = |name: header::HeaderName| -> ApiResult<Option<String>> {
        headers
            .get(&name)
            .map(|value| {
                value
                    .to_str()
                    .map(|text| text.trim().to_owned())
                    .map_err(|_| ApiError::invalid(format!("{name} must be text")))
            })
            .transpose()
    };
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "send one of If-Match and If-None-Match, not both",
        )),
        (None, Some(none)) if none == "*" => Ok(Some(Precondition::Absent)),
        (None, Some(_)) => Err(ApiError::invalid("If-None-Match takes only *")),
        (Some(any), None) if any == "*" => Ok(Some(Precondition::Exists)),
        (Some(list), None) => {
            let mut revisions = Vec::new();
            for tag in list.split(',').map(str::trim) {
                if tag.starts_with("W/") {
                    // Weak tags never match a strong comparison.
                    continue;
                }
                let inner = tag
                    .strip_prefix('"')
                    .and_then(|tag| tag.strip_suffix('"'))
                    .unwrap_or(tag);
                let revision = inner.parse::<u64>().map_err(|_| {
                    ApiError::invalid(format!(
                        "If-Match must list revisions as the ETag gives them (got {tag:?})"
                    ))
                })?;
                revisions.push(revision);
            }
            Ok(Some(Precondition::AnyOf(revisions)))
        }
        (None, None) => Ok(None),
    }
}

/// A key's value, now or at `revision`.
#[utoipa::path(get, path = "/v1/state/{key}", tag = "state", params(("key" = String, Path, description = "The key"), AtQuery),
    responses((status = 200, body = StateEntryView), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<AtQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = key(path)?;
    let Query(query) = query?;
    let state = &app.runtime().state;
    let entry = match query.revision {
        Some(revision) => state.get_at(key.clone(), revision).await,
        None => state.get(key.clone()).await,
    }
    .map_err(|error| state_error(error, false))?;
    match entry {
        Some(entry) => Ok(entry_response(StatusCode::OK, &entry)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("no value at {key}"),
        )),
    }
}

/// Writes a key's value (the body is the JSON value). With `If-Match:
/// "<revision>"` only if the key's last change is still that revision (412
/// otherwise); with `If-None-Match: *` only if the key is absent.
#[utoipa::path(put, path = "/v1/state/{key}", tag = "state", params(("key" = String, Path, description = "The key")),
    request_body(content = serde_json::Value, description = "The new value, any JSON"),
    responses((status = 200, body = StateEntryView), (status = 400, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem), (status = 413, body = Problem)))]
pub(crate) async fn put(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = key(path)?;
    let condition = precondition(&headers)?;
    let body = body.map_err(|rejection| {
        ApiError::new(rejection.status(), "body_too_large", rejection.body_text())
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.to_string())
    })?;
    let state = &app.runtime().state;
    let stale =
        |detail: String| ApiError::new(StatusCode::PRECONDITION_FAILED, "stale_revision", detail);
    let expect = match &condition {
        None => None,
        Some(Precondition::Absent) => Some(Expect::Absent),
        // `*` and lists are checked against the key as it is now, and the
        // write is then conditioned on exactly that revision.
        Some(Precondition::Exists | Precondition::AnyOf(_)) => {
            let current = state
                .get(key.clone())
                .await
                .map_err(|error| state_error(error, true))?;
            let Some(current) = current else {
                return Err(stale(format!("{key} has no value")));
            };
            if let Some(Precondition::AnyOf(revisions)) = &condition {
                if !revisions.contains(&current.revision) {
                    return Err(stale(format!(
                        "{key} is at revision {}, not one If-Match names",
                        current.revision
                    )));
                }
            }
            Some(Expect::Revision(current.revision))
        }
    };
    let outcome = match expect {
        Some(expect) => state.put_if(key, value, expect).await,
        None => state.put(key, value).await,
    }
    .map_err(|error| state_error(error, expect.is_some()))?;
    Ok(entry_response(StatusCode::OK, &outcome.entry))
}

/// Deletes a key (one tombstone revision).
#[utoipa::path(delete, path = "/v1/state/{key}", tag = "state", params(("key" = String, Path, description = "The key")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let key = key(path)?;
    if app
        .runtime()
        .state
        .delete(key.clone())
        .await
        .map_err(|error| state_error(error, false))?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("no value at {key}"),
        ))
    }
}

/// A key's versions, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/state/{key}/history", tag = "state", params(("key" = String, Path, description = "The key"), HistoryQuery),
    responses((status = 200, description = "`{changes: [{key, kind, value, revision, version, author, timestamp}], compactedBelow}`, newest first", content_type = "application/json"), (status = 400, body = Problem)))]
pub(crate) async fn history(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = key(path)?;
    let Query(query) = query?;
    let depth = match query.depth {
        None => 100,
        Some(depth) if (1..=1000).contains(&depth) => depth,
        Some(depth) => {
            return Err(ApiError::invalid(format!(
                "depth must be between 1 and 1000 (got {depth})"
            )));
        }
    };
    let state = &app.runtime().state;
    let history = match query.before {
        Some(before) => state.history_before(key, before, depth).await,
        None => state.history(key, depth).await,
    }
    .map_err(|error| state_error(error, false))?;
    Ok(Json(history).into_response())
}

/// What changed in a key between two revisions, as an RFC 6902 JSON Patch.
#[utoipa::path(get, path = "/v1/state/{key}/diff", tag = "state", params(("key" = String, Path, description = "The key"), DiffQuery),
    responses((status = 200, description = "An RFC 6902 JSON Patch", content_type = "application/json"), (status = 400, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn diff(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = key(path)?;
    let Query(query) = query?;
    let patch = app
        .runtime()
        .state
        .diff(key, query.from, query.to)
        .await
        .map_err(|error| state_error(error, false))?;
    Ok(Json(patch).into_response())
}

/// What to watch.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// Keys starting with this (empty: every key).
    #[serde(default)]
    pub prefix: String,
    /// The first revision sent (default: the next one). `Last-Event-ID`
    /// (the last revision the client saw) wins.
    pub from: Option<u64>,
}

/// Watches the keys under a prefix over SSE: each revision's changes
/// whole, in order, as `event: changes` with `id:` the revision, and
/// `event: progress` (also with an id) after a quiet spell, so a client
/// that reconnects with `Last-Event-ID` misses no revision and sees none
/// twice. It ends with `compacted` (the client's revision was compacted
/// away: read the current values and watch from there) or `shutdown`.
#[utoipa::path(get, path = "/v1/state-watch", tag = "state", params(WatchQuery),
    responses((status = 200, description = "text/event-stream of revisions", content_type = "text/event-stream"), (status = 400, body = Problem), (status = 503, body = Problem)))]
pub(crate) async fn watch(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> ApiResult<
    axum::response::sse::Sse<
        impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures_util::StreamExt;
    use smalltalk::state::WatchEvent;

    let Query(query) = query?;
    if query
        .prefix
        .starts_with(crate::idempotency::RESERVED_PREFIX)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reserved_key",
            "keys under \"smalltalk.\" are the server's own",
        ));
    }
    // After the last revision seen.
    let resume = super::last_event_id(&headers, "a revision")?.map(|seen| seen + 1);
    let permit = app.stream_permit()?;
    let watch = app
        .runtime()
        .state
        .watch(query.prefix.as_str(), resume.or(query.from))
        .await
        .map_err(|error| state_error(error, false))?;
    struct Watching {
        watch: smalltalk::state::Watch,
        stopping: tokio::sync::watch::Receiver<bool>,
        done: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let watching = Watching {
        watch,
        stopping: app.stopping(),
        done: false,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(watching, |mut watching| async move {
        if watching.done {
            return None;
        }
        let next = tokio::select! {
            next = watching.watch.next() => next,
            _ = watching.stopping.wait_for(|stop| *stop) => None,
        };
        let sse = match next {
            Some(Ok(WatchEvent::Changes { revision, changes })) => SseEvent::default()
                .id(revision.to_string())
                .event("changes")
                .data(serde_json::json!({"revision": revision, "changes": changes}).to_string()),
            Some(Ok(WatchEvent::Progress { revision })) => SseEvent::default()
                .id(revision.to_string())
                .event("progress")
                .data(serde_json::json!({"revision": revision}).to_string()),
            // A kind of event this server does not know yet: skipped.
            Some(Ok(_)) => SseEvent::default().comment("unknown watch event"),
            Some(Err(StateError::Compacted { .. })) => {
                watching.done = true;
                SseEvent::default().event("compacted").data("{}")
            }
            Some(Err(error)) => SseEvent::default()
                .event("error")
                .data(serde_json::json!({"detail": error.to_string()}).to_string()),
            None => {
                watching.done = true;
                SseEvent::default().event("shutdown").data("{}")
            }
        };
        Some((Ok(sse), watching))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(crate::routes::events::KEEP_ALIVE)))
}
