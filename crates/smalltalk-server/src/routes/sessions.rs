//! `/v1/sessions`: create, get, list (cursor pages), delete, invalidate;
//! messages; agent states.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use smalltalk::storage::{SessionCursor, SessionFilter};
use smalltalk::types::SessionSummary;
use smalltalk::{AgentState, CreateOptions, Message, Role, Session, SessionId, SessionState};
use utoipa::ToSchema;

use super::agent_id;
use crate::AppState;
use crate::problem::{ApiError, ApiResult, Problem};

/// The most sessions or messages one page holds.
pub const MAX_PAGE: u32 = 1000;

/// A new session.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSession {
    /// Lifetime in seconds (3,600 to 2,592,000); the server's default if
    /// absent.
    pub ttl_seconds: Option<u64>,
    /// Initial metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A session, with its messages.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// Its id (UUID v4).
    pub id: String,
    /// `active`, `idle`, `expired` or `invalidated`.
    pub state: String,
    /// The header's version.
    pub version: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Messages in the history.
    pub message_count: u64,
    /// Its metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Agents with a saved state.
    pub agent_ids: Vec<String>,
    /// The history, oldest first (absent in listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessageView>>,
}

/// One message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// Its position in the history, from 0.
    pub sequence: u64,
    /// Its id.
    pub id: String,
    /// `user`, `assistant`, `system` or `tool`.
    pub role: String,
    /// The agent that wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The text.
    pub content: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Its metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionPage {
    /// The sessions, oldest first.
    pub items: Vec<SessionSummaryView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A session in a listing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummaryView {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: String,
    /// The header's version.
    pub version: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Messages in the history.
    pub message_count: u64,
}

/// Listing parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sessions in this state.
    pub state: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    pub limit: Option<u32>,
    /// Where the previous page ended (its `nextCursor`).
    pub cursor: Option<String>,
}

/// Message paging.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// The first sequence returned (default 0).
    pub from: Option<u64>,
    /// Page size, 1 to 1,000 (default 100).
    pub limit: Option<u32>,
}

/// A message to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMessage {
    /// `user`, `assistant`, `system` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// The agent that wrote it.
    pub agent_id: Option<String>,
    /// Its metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// How an append was acknowledged.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appended {
    /// The message's id.
    pub id: String,
    /// Where it went, when stored before the answer (`sync` durability).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Whether it is in storage (`false`: buffered until the next flush).
    pub stored: bool,
}

/// An agent's saved state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStateView {
    /// The agent.
    pub agent_id: String,
    /// Its configuration (any JSON).
    pub config: Value,
    /// Its working context.
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
    /// Context fields that may be dropped when the state is too large.
    pub trimmable_fields: Vec<String>,
    /// RFC 3339.
    pub updated_at: String,
}

/// An agent's state to save (the agent is named by the path).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutAgentState {
    /// Its configuration (any JSON).
    #[serde(default)]
    pub config: Value,
    /// Its working context.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub context: Map<String, Value>,
    /// Context fields that may be dropped when the state is too large.
    #[serde(default)]
    pub trimmable_fields: Vec<String>,
}

pub(crate) fn session_id(path: Result<Path<String>, PathRejection>) -> ApiResult<SessionId> {
    let Path(raw) = path?;
    SessionId::parse(&raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{raw:?} is not a session id (a UUID v4)"),
        )
    })
}

fn view(session: Session, with_messages: bool) -> SessionView {
    SessionView {
        id: session.id.to_string(),
        state: session.state.as_str().to_owned(),
        version: session.version,
        created_at: session.created_at.to_string(),
        updated_at: session.updated_at.to_string(),
        expires_at: session.expires_at.to_string(),
        message_count: session.messages.len() as u64,
        metadata: session.metadata,
        agent_ids: session
            .agent_states
            .keys()
            .map(ToString::to_string)
            .collect(),
        messages: with_messages.then(|| {
            session
                .messages
                .into_iter()
                .enumerate()
                .map(|(sequence, message)| message_view(sequence as u64, message))
                .collect()
        }),
    }
}

fn message_view(sequence: u64, message: Message) -> MessageView {
    MessageView {
        sequence,
        id: message.id.to_string(),
        role: role_name(message.role).to_owned(),
        agent_id: message.agent_id.map(|agent| agent.to_string()),
        content: message.content,
        timestamp: message.timestamp.to_string(),
        metadata: message.metadata,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::System => "system",
        Role::Tool => "tool",
    }
}

fn summary_view(summary: &SessionSummary) -> SessionSummaryView {
    SessionSummaryView {
        id: summary.id.to_string(),
        state: summary.state.as_str().to_owned(),
        version: summary.version,
        created_at: summary.created_at.to_string(),
        updated_at: summary.updated_at.to_string(),
        expires_at: summary.expires_at.to_string(),
        message_count: summary.message_count,
    }
}

fn encode_cursor(summary: &SessionSummary) -> String {
    format!("{}_{}", summary.created_at.as_micros(), summary.id)
}

fn decode_cursor(raw: &str) -> ApiResult<SessionCursor> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            format!("{raw:?} is not a cursor this server gave"),
        )
    };
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    Ok(SessionCursor {
        created_at: smalltalk::Timestamp::from_micros(micros),
        id: SessionId::parse(id).map_err(|_| bad())?,
    })
}

fn page_size(limit: Option<u32>) -> ApiResult<u32> {
    match limit {
        None => Ok(100),
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_PAGE} (got {limit})"
        ))),
    }
}

/// Creates a session.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses((status = 201, body = SessionView), (status = 400, body = Problem), (status = 503, body = Problem)))]
pub(crate) async fn create(
    State(app): State<AppState>,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(body) = body?;
    let ttl = body
        .ttl_seconds
        .map(|seconds| {
            if (3_600..=30 * 24 * 3_600).contains(&seconds) {
                Ok(std::time::Duration::from_secs(seconds))
            } else {
                Err(ApiError::invalid(format!(
                    "ttlSeconds must be between 3600 and 2592000 (got {seconds})"
                )))
            }
        })
        .transpose()?;
    let metadata = body.metadata.unwrap_or_default();
    if let Some(key) = metadata
        .keys()
        .find(|key| key.starts_with(crate::idempotency::RESERVED_PREFIX))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reserved_key",
            format!(
                "metadata key {key:?}: keys under {:?} are the server's own",
                crate::idempotency::RESERVED_PREFIX
            ),
        ));
    }
    let session = app
        .runtime()
        .sessions
        .create(CreateOptions { ttl, metadata })
        .await?;
    Ok((StatusCode::CREATED, Json(view(session, true))))
}

/// A session with its history.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses((status = 200, body = SessionView), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<SessionView>> {
    let id = session_id(id)?;
    let session = app.runtime().sessions.restore(id).await?;
    Ok(Json(view(session, true)))
}

/// Sessions, a page at a time, oldest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(ListQuery),
    responses((status = 200, body = SessionPage), (status = 400, body = Problem)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<SessionPage>> {
    let Query(query) = query?;
    let limit = page_size(query.limit)?;
    let state = query
        .state
        .as_deref()
        .map(|raw| {
            SessionState::ALL
                .into_iter()
                .find(|state| state.as_str() == raw)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "state must be active, idle, expired or invalidated (got {raw:?})"
                    ))
                })
        })
        .transpose()?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    // One more than asked tells whether a next page exists.
    let mut rows = app
        .runtime()
        .sessions
        .list(&SessionFilter {
            state,
            after,
            limit: Some(limit + 1),
            ..SessionFilter::default()
        })
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(Json(SessionPage {
        next_cursor: more.then(|| rows.last().map(encode_cursor)).flatten(),
        items: rows.iter().map(summary_view).collect(),
    }))
}

/// Deletes a session and its history.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = session_id(id)?;
    if app.runtime().sessions.delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("session {id} not found"),
        ))
    }
}

/// Invalidates a session: it refuses messages from now on (410), and its
/// history goes.
#[utoipa::path(post, path = "/v1/sessions/{id}/invalidate", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn invalidate(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = session_id(id)?;
    app.runtime().sessions.invalidate(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Appends a message.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "sessions", request_body = NewMessage,
    params(("id" = String, Path, description = "The session id")),
    responses((status = 201, body = Appended), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 410, body = Problem), (status = 503, body = Problem)))]
pub(crate) async fn append(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<NewMessage>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let id = session_id(id)?;
    let Json(body) = body?;
    let role = match body.role.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" => Role::System,
        "tool" => Role::Tool,
        other => {
            return Err(ApiError::invalid(format!(
                "role must be user, assistant, system or tool (got {other:?})"
            )));
        }
    };
    let mut message = Message::new(role, body.content, smalltalk::Timestamp::now());
    if let Some(agent) = &body.agent_id {
        message = message.with_agent(agent_id(agent)?);
    }
    message.metadata = body.metadata.unwrap_or_default();
    let message_id = message.id.to_string();
    let appended = app.runtime().sessions.add_message(id, message).await?;
    let (sequence, stored) = match appended {
        smalltalk::session::Appended::Stored(outcome) => (Some(outcome.first_sequence), true),
        smalltalk::session::Appended::Buffered { .. } => (None, false),
    };
    Ok((
        StatusCode::CREATED,
        Json(Appended {
            id: message_id,
            sequence,
            stored,
        }),
    ))
}

/// A session's messages, a page at a time.
#[utoipa::path(get, path = "/v1/sessions/{id}/messages", tag = "sessions", params(("id" = String, Path, description = "The session id"), MessagesQuery),
    responses((status = 200, body = [MessageView]), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn messages(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<MessageView>>> {
    let id = session_id(id)?;
    let Query(query) = query?;
    // A bad page size is refused before the read.
    message_page(Vec::new(), &query)?;
    let session = app.runtime().sessions.restore(id).await?;
    Ok(Json(message_page(session.messages, &query)?))
}

/// The page of `messages` that `query` asks for.
pub(crate) fn message_page(
    messages: Vec<Message>,
    query: &MessagesQuery,
) -> ApiResult<Vec<MessageView>> {
    let limit = page_size(query.limit)? as usize;
    let start = usize::try_from(query.from.unwrap_or(0)).unwrap_or(usize::MAX);
    Ok(messages
        .into_iter()
        .enumerate()
        .skip(start)
        .take(limit)
        .map(|(sequence, message)| message_view(sequence as u64, message))
        .collect())
}

/// The agents' saved states in a session.
#[utoipa::path(get, path = "/v1/sessions/{id}/agents", tag = "sessions", params(("id" = String, Path, description = "The session id")),
    responses((status = 200, body = [AgentStateView]), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn agent_states(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<AgentStateView>>> {
    let id = session_id(id)?;
    let session = app.runtime().sessions.restore(id).await?;
    Ok(Json(
        session
            .agent_states
            .into_values()
            .map(|state| AgentStateView {
                agent_id: state.agent_id.to_string(),
                config: state.config,
                context: state.context,
                trimmable_fields: state.trimmable_fields,
                updated_at: state.updated_at.to_string(),
            })
            .collect(),
    ))
}

/// Saves an agent's state in a session.
#[utoipa::path(put, path = "/v1/sessions/{id}/agents/{agent}", tag = "sessions", request_body = PutAgentState,
    params(("id" = String, Path, description = "The session id"), ("agent" = String, Path, description = "The agent id")),
    responses((status = 204), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 410, body = Problem), (status = 413, body = Problem)))]
pub(crate) async fn put_agent_state(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<PutAgentState>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Path((id, agent)) = path?;
    let id = session_id(Ok(Path(id)))?;
    let agent = agent_id(&agent)?;
    let Json(body) = body?;
    // A group's session is written by its group only: a header saved from
    // here could put an old group record back.
    let session = app.runtime().sessions.restore(id).await?;
    if session.metadata.contains_key(smalltalk::groups::RECORD_KEY) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "group_session",
            format!("session {id} is a group's: its agents are the group's (see /v1/groups/{id})"),
        ));
    }
    let mut state = AgentState::new(agent, smalltalk::Timestamp::now());
    state.config = body.config;
    state.context = body.context;
    state.trimmable_fields = body.trimmable_fields;
    app.runtime().sessions.update_agent_state(id, state).await?;
    Ok(StatusCode::NO_CONTENT)
}
