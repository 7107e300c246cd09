//! `/v1/events`: publish; read the log (replay); stream it over SSE with
//! `id:` set to the log position, resuming from `Last-Event-ID` without
//! loss.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use smalltalk::SessionId;
use smalltalk::events::{Draft, PublishOptions};
use smalltalk::storage::{EventFilter, LogEntry};
use smalltalk::types::{ConversationId, Event, EventPriority, TopicPattern};
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::{ApiError, ApiResult, Problem};

/// Events read from the log per round trip while streaming or replaying.
const READ_BATCH: usize = 256;

/// How often a quiet stream gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// An event to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEvent {
    /// Its topic (`domain:action`, segments of letters, digits, `-`, `_`,
    /// `.`, separated by `:` or `/`).
    pub topic: String,
    /// Any JSON.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub payload: Value,
    /// `normal` (default) or `critical`.
    pub priority: Option<String>,
    /// The session it concerns.
    pub session_id: Option<String>,
    /// The conversation it concerns.
    pub conversation_id: Option<String>,
    /// Its metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A published event's place.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedView {
    /// Its id.
    pub id: String,
    /// Its position in the log (what SSE sends as `id:`).
    pub position: u64,
}

/// An event as read from the log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Its position in the log.
    pub position: u64,
    /// Its id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// `normal` or `critical`.
    pub priority: String,
    /// RFC 3339.
    pub timestamp: String,
    /// The session it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The conversation it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// The payload (any JSON).
    pub payload: Value,
    /// Its metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// Which events to read.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only topics matching this pattern (`*` one segment, `>` the rest).
    pub topic: Option<String>,
    /// Events after this position (default 0: from the oldest retained).
    pub after: Option<u64>,
    /// At most this many, 1 to 1,000 (default 100; replay only).
    pub limit: Option<u32>,
}

/// A page of the log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    /// The events, in log order.
    pub items: Vec<EventView>,
    /// Pass as `after` for the next page.
    pub last_position: u64,
    /// The log's newest position when it was read.
    pub head_position: u64,
}

fn view(event: Event) -> EventView {
    EventView {
        position: event.position.unwrap_or_default(),
        id: event.id.to_string(),
        topic: event.topic.as_str().to_owned(),
        priority: event.priority.as_str().to_owned(),
        timestamp: event.timestamp.to_string(),
        session_id: event.session_id.map(|id| id.to_string()),
        conversation_id: event.conversation_id.map(|id| id.to_string()),
        payload: event.payload.to_value().unwrap_or(Value::Null),
        metadata: event.metadata,
    }
}

fn filter(topic: Option<&str>) -> ApiResult<EventFilter> {
    let mut filter = EventFilter::default();
    if let Some(pattern) = topic {
        let pattern = TopicPattern::parse(pattern)
            .map_err(|error| ApiError::invalid(format!("topic: {error}")))?;
        filter.patterns.push(pattern);
    }
    Ok(filter)
}

/// Publishes an event on the bus (durable in the log before the answer).
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = NewEvent,
    responses((status = 201, body = PublishedView), (status = 400, body = Problem), (status = 413, body = Problem)))]
pub(crate) async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewEvent>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(body) = body?;
    let priority = match body.priority.as_deref() {
        None | Some("normal") => EventPriority::Normal,
        Some("critical") => EventPriority::Critical,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "priority must be normal or critical (got {other:?})"
            )));
        }
    };
    let mut options = PublishOptions {
        priority,
        metadata: body.metadata.unwrap_or_default(),
        ..PublishOptions::default()
    };
    // The trace the request belongs to travels with the event (unless the
    // publisher put one there itself), so its handlers join it.
    if !options.metadata.contains_key(crate::telemetry::TRACEPARENT) {
        if let Some(traceparent) = crate::telemetry::current_traceparent(&headers) {
            options
                .metadata
                .insert(crate::telemetry::TRACEPARENT.into(), traceparent.into());
        }
    }
    if let Some(session) = &body.session_id {
        options.session_id = Some(SessionId::parse(session).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                format!("sessionId {session:?} is not a session id"),
            )
        })?);
    }
    if let Some(conversation) = &body.conversation_id {
        options.conversation_id = Some(ConversationId::parse(conversation).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                format!("conversationId {conversation:?} is not a conversation id"),
            )
        })?);
    }
    let draft = Draft::new(body.topic.as_str(), body.payload)
        .map_err(event_error)?
        .options(options);
    let published = app
        .runtime()
        .events
        .publish_batch(vec![draft])
        .await
        .map_err(event_error)?;
    let published = published
        .first()
        .ok_or_else(|| ApiError::internal("the bus published nothing"))?;
    Ok((
        StatusCode::CREATED,
        Json(PublishedView {
            id: published.id.to_string(),
            position: published.position,
        }),
    ))
}

/// Reads the log: events after a position, oldest first (explicit
/// replay; nothing is redelivered to subscribers).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(LogQuery),
    responses((status = 200, body = EventPage), (status = 400, body = Problem)))]
pub(crate) async fn read(
    State(app): State<AppState>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> ApiResult<Json<EventPage>> {
    let Query(query) = query?;
    let limit = match query.limit {
        None => 100,
        Some(limit) if (1..=1000).contains(&limit) => limit as usize,
        Some(limit) => {
            return Err(ApiError::invalid(format!(
                "limit must be between 1 and 1000 (got {limit})"
            )));
        }
    };
    let filter = filter(query.topic.as_deref())?;
    let after = query.after.unwrap_or(0);
    let store = &app.runtime().store;
    // Read before the page: a short page has covered the log up to it.
    let head = store.log_bounds().await?.last;
    let entries = store.read_log(after, &filter, limit).await?;
    let read_to = entries.last().map_or(after, LogEntry::position);
    let last_position = if entries.len() < limit {
        read_to.max(head)
    } else {
        read_to
    };
    let items = entries
        .into_iter()
        .filter_map(|entry| match entry {
            LogEntry::Event(event) => Some(view(event)),
            LogEntry::Undecodable(_) => None,
        })
        .collect();
    Ok(Json(EventPage {
        items,
        last_position,
        head_position: head,
    }))
}

/// How a stream ended, sent as its last (terminal) event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client made no room in its buffer for `sse_stall_ms`, or fell
    /// more than the byte budget behind.
    Lagged,
    /// The server is shutting down.
    Shutdown,
    /// Reading the log failed.
    Failed,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Lagged => "lagged",
            End::Shutdown => "shutdown",
            End::Failed => "error",
        }
    }
}

/// The most bytes of events one client may have waiting: past it the
/// client is `lagged` whatever the event count.
const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;

/// Streams the log over SSE: every event after `after` (or the
/// `Last-Event-ID` header, which wins), then new ones as they are
/// committed. Each event's `id:` is its log position, so a client that
/// reconnects with `Last-Event-ID` misses nothing and sees nothing twice.
/// A position beyond the log's newest is refused (400: another log); one
/// before the retained start first gets a `gap` event naming where the log
/// now starts. A keep-alive comment comes every 15 s. The stream ends with
/// a terminal event whose `id:` and data are the last position sent:
/// `lagged` (the client made no room in its `SMALLTALK_SSE_BUFFER`-event
/// buffer for `SMALLTALK_SSE_STALL_MS`, or 16 MiB waited for it; resume
/// with `Last-Event-ID`), `shutdown`, or `error`.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(LogQuery),
    responses((status = 200, description = "text/event-stream of events", content_type = "text/event-stream"), (status = 400, body = Problem), (status = 503, body = Problem)))]
pub(crate) async fn stream(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let Query(query) = query?;
    let filter = filter(query.topic.as_deref())?;
    let resume = super::last_event_id(&headers, "a log position")?;
    let bounds = app.runtime().store.log_bounds().await?;
    let start = resume.or(query.after).unwrap_or(bounds.last);
    if start > bounds.last {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "position_ahead",
            format!(
                "position {start} is beyond the log's newest ({}): it came from another log",
                bounds.last
            ),
        ));
    }
    let gap = bounds.first.filter(|first| start + 1 < *first);
    let permit = app.stream_permit()?;
    let config = app.config();
    let stall = Duration::from_millis(config.sse_stall_ms);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(config.sse_buffer);
    let (ended, end) = tokio::sync::oneshot::channel::<End>();
    let buffered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let waiting = std::sync::Arc::clone(&buffered);
    let store = std::sync::Arc::clone(&app.runtime().store);
    let mut stopping = app.stopping();
    // The reader runs on its own (tracked) task, so a slow client never
    // slows the log; it ends when the client goes, falls behind, or the
    // server stops.
    app.spawn(async move {
        let _permit = permit;
        let mut after = start;
        // The log's newest position when last looked at: a filtered read
        // that returns less than a batch has covered the log up to it.
        let mut head = bounds.last;
        let outcome = 'read: loop {
            let entries = tokio::select! {
                read = store.read_log(after, &filter, READ_BATCH) => read,
                _ = stopping.wait_for(|stop| *stop) => break End::Shutdown,
                () = sender.closed() => return,
            };
            let entries = match entries {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!("an SSE stream stopped reading the log: {error}");
                    break End::Failed;
                }
            };
            let full = entries.len() == READ_BATCH;
            for entry in entries {
                let position = entry.position();
                let event = match entry {
                    LogEntry::Event(event) => event,
                    LogEntry::Undecodable(row) => {
                        tracing::warn!(
                            position,
                            "an SSE stream skips an undecodable event: {}",
                            row.error
                        );
                        after = position;
                        continue;
                    }
                };
                // Imported history is for explicit reads (`GET
                // /v1/events`), not a live stream.
                if event.is_imported() {
                    after = position;
                    continue;
                }
                let size = event.payload.get().len();
                if waiting.fetch_add(size, std::sync::atomic::Ordering::AcqRel) + size
                    > MAX_BUFFERED_BYTES
                {
                    break 'read End::Lagged;
                }
                // Room in the client's buffer, or lagged after the stall.
                let slot = tokio::select! {
                    slot = tokio::time::timeout(stall, sender.reserve()) => slot,
                    _ = stopping.wait_for(|stop| *stop) => break 'read End::Shutdown,
                };
                match slot {
                    Ok(Ok(slot)) => slot.send(event),
                    // The client is gone.
                    Ok(Err(_)) => return,
                    Err(_) => break 'read End::Lagged,
                }
                after = position;
            }
            if full {
                continue;
            }
            // Everything up to `head` was read: skip what the filter left
            // out, then wait for the log to move past it.
            after = after.max(head);
            tokio::select! {
                waited = store.wait_for_events(after, Duration::from_secs(1)) => match waited {
                    Ok(newest) => head = newest,
                    Err(error) => {
                        tracing::warn!("an SSE stream stopped waiting for the log: {error}");
                        break End::Failed;
                    }
                },
                _ = stopping.wait_for(|stop| *stop) => break End::Shutdown,
                () = sender.closed() => return,
            }
        };
        let _ = ended.send(outcome);
    });
    // Events as the reader hands them over; when it stops (the channel
    // closes), one terminal event saying why, with the last position sent.
    struct Tail {
        receiver: tokio::sync::mpsc::Receiver<Event>,
        end: Option<tokio::sync::oneshot::Receiver<End>>,
        gap: Option<u64>,
        last: u64,
        buffered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }
    let tail = Tail {
        receiver,
        end: Some(end),
        gap,
        last: start,
        buffered,
    };
    let events = futures_util::stream::unfold(tail, |mut tail| async move {
        if let Some(first) = tail.gap.take() {
            let data = json!({"requested": tail.last, "first": first}).to_string();
            let sse = SseEvent::default()
                .id(tail.last.to_string())
                .event("gap")
                .data(data);
            return Some((Ok(sse), tail));
        }
        if let Some(event) = tail.receiver.recv().await {
            tail.buffered.fetch_sub(
                event.payload.get().len(),
                std::sync::atomic::Ordering::AcqRel,
            );
            tail.last = event.position.unwrap_or(tail.last);
            let data = serde_json::to_string(&view(event)).unwrap_or_default();
            let sse = SseEvent::default()
                .id(tail.last.to_string())
                .event("event")
                .data(data);
            return Some((Ok(sse), tail));
        }
        let end = tail.end.take()?;
        let end = end.await.unwrap_or(End::Failed);
        let sse = SseEvent::default()
            .id(tail.last.to_string())
            .event(end.name())
            .data(tail.last.to_string());
        Some((Ok(sse), tail))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn event_error(error: smalltalk::events::Error) -> ApiError {
    use smalltalk::events::Error as E;
    let detail = error.to_string();
    match error {
        E::Invalid(_) | E::ReservedMetadata { .. } => ApiError::invalid(detail),
        E::PayloadTooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
        }
        E::Closed | E::Storage(_) | E::Timeout { .. } => ApiError::unavailable(detail),
        _ => ApiError::internal(detail),
    }
}
