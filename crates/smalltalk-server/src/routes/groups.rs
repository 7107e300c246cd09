//! `/v1/groups`: group conversations of LLM agents described by
//! configuration (name, role, system prompt, model, endpoint): create,
//! read, add or remove agents, post a message to run a round (whole, or
//! streamed over SSE), resume an unfinished round, end.
//!
//! The server opens a group for a request and releases it afterwards: no
//! node holds a group between requests, so memory stays bounded and any
//! node sharing the storage serves the next one. Which node commits a
//! turn is decided by the store's compare-and-swap: the loser answers 409
//! `group_conflict` and stores nothing.

use std::convert::Infallible;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smalltalk::groups::{
    Error as GroupError, GroupEvent, GroupEvents, GroupInfo, GroupSpec, LlmProfile, Participant,
    RoundOutcome, Strategy, Termination,
};
use smalltalk::{ConversationId, Message, Role};
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::agent_id;
use super::sessions::{MessageView, MessagesQuery, message_page};
use crate::AppState;
use crate::problem::{ApiError, ApiResult, Problem};

/// An agent of a group: an LLM agent, as configuration.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupAgent {
    /// Its id (1 to 128 of `A-Z a-z 0-9 - _ . :`).
    pub name: String,
    /// Its role, for example `researcher` (at most 4,096 bytes).
    pub role: String,
    /// What it is good at; an `llm-based` selector reads it.
    #[serde(default)]
    pub description: String,
    /// For the `priority` strategy: higher speaks first.
    #[serde(default)]
    pub priority: i32,
    /// Its system prompt (at most 64 KiB).
    #[serde(default)]
    pub system_prompt: String,
    /// A model other than the endpoint's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The name of a configured LLM endpoint (default `default`: the one
    /// `SMALLTALK_LLM_URL` sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The longest answer, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
}

/// How the next speaker is chosen.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    /// In the agents' order.
    RoundRobin,
    /// The highest priority first.
    Priority,
    /// The LLM names the speaker.
    LlmBased,
}

impl From<StrategyName> for Strategy {
    fn from(name: StrategyName) -> Self {
        match name {
            StrategyName::RoundRobin => Strategy::RoundRobin,
            StrategyName::Priority => Strategy::Priority,
            StrategyName::LlmBased => Strategy::LlmBased,
        }
    }
}

/// A new group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGroup {
    /// 2 to 10 agents, each name once.
    pub agents: Vec<GroupAgent>,
    /// Default `round-robin`.
    pub strategy: Option<StrategyName>,
    /// When a round ends, for example `{"kind": "maxTurns", "value": 3}`
    /// or `{"kind": "any", "value": [...]}` (default: each agent once).
    #[schema(value_type = Option<Object>)]
    pub termination: Option<Value>,
    /// The topic it starts with.
    pub topic: Option<String>,
}

/// A group.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    /// Its id (a UUID v4; its history is the session of the same id).
    pub id: String,
    /// Its session's version, which every turn moves.
    pub version: u64,
    /// Messages in its history.
    pub message_count: u64,
    /// How speakers are chosen.
    pub strategy: StrategyName,
    /// Its agents.
    pub agents: Vec<GroupAgent>,
    /// When a round ends.
    #[schema(value_type = Object)]
    pub termination: Value,
    /// The current topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Rounds completed.
    pub rounds_completed: u64,
    /// Turns over its life.
    pub turns: u64,
    /// The round under way (one a stopped node left: `POST .../resume`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_in_progress: Option<u64>,
    /// Why it finished, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
}

/// A message from the user, to run a round.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupMessage {
    /// The text (not empty; at most 1 MiB).
    pub content: String,
}

/// Why a group ends.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndGroup {
    /// Kept as the group's `finished` (default `ended`).
    #[serde(default)]
    pub reason: String,
}

/// One turn of a round.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnView {
    /// The turn within the round, from 1.
    pub turn: u64,
    /// The speaker.
    pub agent_id: String,
    /// The message it stored.
    pub message_id: String,
    /// The message's position in the history, from 0.
    pub sequence: u64,
    /// Agents that failed in the turn before the speaker answered.
    pub failed: Vec<String>,
    /// How the speaker was chosen (`confidence`, `reason`, `source`...).
    #[schema(value_type = Object)]
    pub selection: Value,
}

/// What a round did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoundView {
    /// The group.
    pub group_id: String,
    /// The round, from 1.
    pub round: u64,
    /// Its turns (on resume: the turns this call ran).
    pub turns: Vec<TurnView>,
    /// Why it ended (`{"kind": "condition", "held": [...]}`...).
    #[schema(value_type = Object)]
    pub end: Value,
    /// Messages in the history after it.
    pub message_count: u64,
}

fn group_id(path: Result<Path<String>, PathRejection>) -> ApiResult<ConversationId> {
    let Path(raw) = path?;
    parse_group_id(&raw)
}

fn parse_group_id(raw: &str) -> ApiResult<ConversationId> {
    ConversationId::parse(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{raw:?} is not a group id (a UUID v4)"),
        )
    })
}

fn participant(agent: GroupAgent) -> ApiResult<Participant> {
    let profile = LlmProfile {
        system_prompt: agent.system_prompt,
        model: agent.model,
        endpoint: agent.endpoint,
        max_tokens: agent.max_tokens,
    };
    Ok(Participant::new(agent_id(&agent.name)?, agent.role)
        .description(agent.description)
        .priority(agent.priority)
        .llm(profile))
}

fn agent_view(participant: &Participant) -> GroupAgent {
    let profile = participant.llm.clone().unwrap_or_default();
    GroupAgent {
        name: participant.agent_id.to_string(),
        role: participant.role.clone(),
        description: participant.description.clone(),
        priority: participant.priority,
        system_prompt: profile.system_prompt,
        model: profile.model,
        endpoint: profile.endpoint,
        max_tokens: profile.max_tokens,
    }
}

fn view(info: &GroupInfo) -> GroupView {
    let record = &info.record;
    GroupView {
        id: info.id.to_string(),
        version: info.version,
        message_count: info.message_count,
        strategy: match record.spec.strategy {
            Strategy::RoundRobin => StrategyName::RoundRobin,
            Strategy::Priority => StrategyName::Priority,
            Strategy::LlmBased => StrategyName::LlmBased,
        },
        agents: record.spec.participants.iter().map(agent_view).collect(),
        termination: serde_json::to_value(&record.spec.termination).unwrap_or(Value::Null),
        topic: record.topic.clone(),
        rounds_completed: record.rounds_completed,
        turns: record.turns,
        round_in_progress: record.round.as_ref().map(|round| round.number),
        finished: record.finished.clone(),
    }
}

fn round_view(outcome: &RoundOutcome) -> RoundView {
    RoundView {
        group_id: outcome.group_id.to_string(),
        round: outcome.round,
        turns: outcome
            .turns
            .iter()
            .map(|turn| TurnView {
                turn: turn.turn,
                agent_id: turn.selection.agent_id.to_string(),
                message_id: turn.message_id.to_string(),
                sequence: turn.sequence,
                failed: turn.failed.iter().map(ToString::to_string).collect(),
                selection: serde_json::to_value(&turn.selection).unwrap_or(Value::Null),
            })
            .collect(),
        end: serde_json::to_value(&outcome.end).unwrap_or(Value::Null),
        message_count: outcome.message_count,
    }
}

/// Releases group `id` on this node unless another request still uses
/// it (that one releases it when it ends): the last request out closes it.
fn release_later(app: &AppState, id: ConversationId) {
    app.runtime().groups.release_idle(id);
}

/// Runs `work` on group `id`, then releases the group.
async fn with_group<T>(
    app: &AppState,
    id: ConversationId,
    work: impl std::future::Future<Output = Result<T, GroupError>>,
) -> ApiResult<T> {
    let result = work.await;
    release_later(app, id);
    Ok(result?)
}

/// 400 `llm_not_configured` when this server has no LLM endpoint at all.
fn check_llm(app: &AppState) -> ApiResult<()> {
    if app.runtime().groups.llm_endpoints().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "llm_not_configured",
            "this server has no LLM endpoint: set SMALLTALK_LLM_URL (and SMALLTALK_LLM_MODEL, SMALLTALK_LLM_API_KEY) to run groups",
        ));
    }
    Ok(())
}

/// Creates a group of LLM agents.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupView), (status = 400, body = Problem), (status = 503, body = Problem)))]
pub(crate) async fn create(
    State(app): State<AppState>,
    body: Result<Json<CreateGroup>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(body) = body?;
    check_llm(&app)?;
    let participants = body
        .agents
        .into_iter()
        .map(participant)
        .collect::<ApiResult<Vec<_>>>()?;
    let mut spec = GroupSpec::new(participants);
    if let Some(strategy) = body.strategy {
        spec = spec.strategy(strategy.into());
    }
    if let Some(termination) = body.termination {
        let termination: Termination = serde_json::from_value(termination).map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_group",
                format!("termination: {error}"),
            )
        })?;
        spec = spec.termination(termination);
    }
    if let Some(topic) = body.topic {
        spec = spec.topic(topic);
    }
    let info = app
        .runtime()
        .groups
        .create_group(spec)
        .await
        .map_err(|error| match error {
            // The request names it twice: bad input, not a conflict.
            GroupError::DuplicateParticipant { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", error.to_string())
            }
            other => other.into(),
        })?;
    release_later(&app, info.id);
    Ok((StatusCode::CREATED, Json(view(&info))))
}

/// A group as stored (the last commit of any node).
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = GroupView), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<GroupView>> {
    let id = group_id(id)?;
    let (info, _) = app.runtime().groups.read_group(id).await?;
    Ok(Json(view(&info)))
}

/// A group's messages, a page at a time.
#[utoipa::path(get, path = "/v1/groups/{id}/messages", tag = "groups",
    params(("id" = String, Path, description = "The group id"), MessagesQuery),
    responses((status = 200, body = [MessageView]), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn messages(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<MessageView>>> {
    let id = group_id(id)?;
    let Query(query) = query?;
    // A bad page size is refused before the read.
    message_page(Vec::new(), &query)?;
    let (_, history) = app.runtime().groups.read_group(id).await?;
    Ok(Json(message_page(history, &query)?))
}

/// Adds an agent (a group has at most 10).
#[utoipa::path(post, path = "/v1/groups/{id}/agents", tag = "groups", request_body = GroupAgent,
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = GroupView), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn add_agent(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<GroupAgent>, JsonRejection>,
) -> ApiResult<Json<GroupView>> {
    let id = group_id(id)?;
    let Json(body) = body?;
    let participant = participant(body)?;
    let groups = &app.runtime().groups;
    let info = with_group(&app, id, groups.add_participant(id, participant)).await?;
    Ok(Json(view(&info)))
}

/// Removes an agent (a group keeps at least 2).
#[utoipa::path(delete, path = "/v1/groups/{id}/agents/{agent}", tag = "groups",
    params(("id" = String, Path, description = "The group id"), ("agent" = String, Path, description = "The agent's name")),
    responses((status = 200, body = GroupView), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 410, body = Problem)))]
pub(crate) async fn remove_agent(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<GroupView>> {
    let Path((id, agent)) = path?;
    let id = parse_group_id(&id)?;
    let agent = agent_id(&agent)?;
    let groups = &app.runtime().groups;
    let info = with_group(&app, id, groups.remove_participant(id, &agent)).await?;
    Ok(Json(view(&info)))
}

/// Runs a round answering the message: turns until the group's
/// termination condition holds. Each turn is stored as it is taken. A
/// round longer than the request timeout answers 504 and goes on; the
/// streamed form (`POST .../messages/stream`) has no such limit.
#[utoipa::path(post, path = "/v1/groups/{id}/messages", tag = "groups", request_body = GroupMessage,
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = RoundView), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 410, body = Problem), (status = 502, body = Problem)))]
pub(crate) async fn post_message(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<GroupMessage>, JsonRejection>,
) -> ApiResult<Json<RoundView>> {
    let id = group_id(id)?;
    let Json(body) = body?;
    let groups = &app.runtime().groups;
    let outcome = with_group(&app, id, groups.handle_message(id, &body.content)).await?;
    Ok(Json(round_view(&outcome)))
}

/// Finishes the round a stopped node left unfinished.
#[utoipa::path(post, path = "/v1/groups/{id}/resume", tag = "groups",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = RoundView), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 410, body = Problem), (status = 502, body = Problem)))]
pub(crate) async fn resume(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RoundView>> {
    let id = group_id(id)?;
    let groups = &app.runtime().groups;
    let outcome = with_group(&app, id, groups.resume(id)).await?;
    Ok(Json(round_view(&outcome)))
}

/// Ends a group: it takes no more rounds (409 `group_finished`); its
/// history stays.
#[utoipa::path(post, path = "/v1/groups/{id}/end", tag = "groups", request_body = EndGroup,
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = GroupView), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 410, body = Problem)))]
pub(crate) async fn end(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<EndGroup>, JsonRejection>,
) -> ApiResult<Json<GroupView>> {
    let id = group_id(id)?;
    let Json(body) = body?;
    let groups = &app.runtime().groups;
    let info = with_group(&app, id, groups.end_group(id, &body.reason)).await?;
    Ok(Json(view(&info)))
}

/// A round's stream: its events, then one terminal event. Dropped (the
/// round over, or the client gone), it releases the group if nothing else
/// uses it.
struct RoundStream {
    app: AppState,
    id: ConversationId,
    events: Option<GroupEvents>,
    result: oneshot::Receiver<Result<RoundOutcome, GroupError>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The message that starts this stream's round.
    message: smalltalk::types::MessageId,
    /// This stream's round, once it started.
    round: Option<u64>,
    done: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for RoundStream {
    fn drop(&mut self) {
        // Our subscription goes first, so it does not count as a user.
        self.events = None;
        release_later(&self.app, self.id);
    }
}

enum Step {
    Event(Option<Result<GroupEvent, u64>>),
    Ended(Result<RoundOutcome, GroupError>),
    Shutdown,
}

fn event_round(event: &GroupEvent) -> Option<u64> {
    match event {
        GroupEvent::RoundStarted { round, .. }
        | GroupEvent::SpeakerSelected { round, .. }
        | GroupEvent::Delta { round, .. }
        | GroupEvent::Message { round, .. }
        | GroupEvent::AgentFailed { round, .. }
        | GroupEvent::Terminated { round, .. } => Some(*round),
        _ => None,
    }
}

impl RoundStream {
    async fn step(&mut self) -> Option<SseEvent> {
        loop {
            if self.done {
                return None;
            }
            let step = {
                let events = &mut self.events;
                let next_event = async {
                    match events {
                        Some(events) => events.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    // Events first: the round's last event is in the
                    // channel before its result is sent.
                    biased;
                    event = next_event => Step::Event(event),
                    result = &mut self.result => Step::Ended(result.unwrap_or(Err(GroupError::Closed))),
                    _ = self.stopping.wait_for(|stop| *stop) => Step::Shutdown,
                }
            };
            match step {
                Step::Event(None) => self.events = None,
                Step::Event(Some(Ok(event))) => {
                    if let GroupEvent::RoundStarted { round, message, .. } = &event {
                        if message.id == self.message {
                            self.round = Some(*round);
                        }
                    }
                    // Only this round's events (an event-triggered round
                    // may follow it).
                    if self.round.is_none() || event_round(&event) != self.round {
                        continue;
                    }
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    return Some(SseEvent::default().event(event.name()).data(data));
                }
                Step::Event(Some(Err(skipped))) => {
                    self.done = true;
                    return Some(SseEvent::default().event("lagged").data(
                        serde_json::json!({
                            "skipped": skipped,
                            "detail": "this client fell behind; the round goes on: read GET /v1/groups/{id}/messages"
                        })
                        .to_string(),
                    ));
                }
                Step::Ended(result) => {
                    self.done = true;
                    self.events = None;
                    return Some(match result {
                        Ok(outcome) => SseEvent::default()
                            .event("round-ended")
                            .data(serde_json::to_string(&round_view(&outcome)).unwrap_or_default()),
                        Err(error) => SseEvent::default().event("error").data(
                            serde_json::to_string(&ApiError::from(error).problem())
                                .unwrap_or_default(),
                        ),
                    });
                }
                Step::Shutdown => {
                    self.done = true;
                    return Some(SseEvent::default().event("shutdown").data("{}"));
                }
            }
        }
    }
}

/// Runs a round like `POST .../messages`, streaming it over SSE as it
/// happens: `round-started`, `speaker-selected`, `delta` (the speaker's
/// words as written), `message` (a committed turn), `agent-failed`,
/// `terminated`; then one terminal event: `round-ended` (the round, as
/// `POST .../messages` answers it), `error` (a problem document: the
/// round failed, or another was under way), `lagged` (this client fell
/// behind) or `shutdown`. The round runs to its end whatever the client
/// does; a client that lost the stream reads `GET .../messages`.
#[utoipa::path(post, path = "/v1/groups/{id}/messages/stream", tag = "groups", request_body = GroupMessage,
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, description = "text/event-stream of the round", content_type = "text/event-stream"),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 410, body = Problem), (status = 503, body = Problem)))]
pub(crate) async fn stream_message(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<GroupMessage>, JsonRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let id = group_id(id)?;
    if headers.contains_key(crate::idempotency::IDEMPOTENCY_KEY) {
        // A stream cannot be replayed: a retry would run a second round.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_unsupported",
            "Idempotency-Key is not taken on a streamed round: use POST /v1/groups/{id}/messages, or read GET /v1/groups/{id}/messages before retrying",
        ));
    }
    let Json(body) = body?;
    app.runtime()
        .groups
        .check_user_message(&body.content)
        .map_err(ApiError::from)?;
    let permit = app.stream_permit()?;
    let groups = app.runtime().groups.clone();
    // Subscribed before the round starts: no event is missed. What would
    // refuse the round now gets its own status, not a 200 stream.
    let opened = async {
        let events = groups.subscribe(id).await?;
        let info = groups.group(id).await?;
        if let Some(reason) = info.record.finished {
            return Err(GroupError::Finished {
                group_id: id,
                reason,
            });
        }
        Ok(events)
    }
    .await;
    let events = match opened {
        Ok(events) => events,
        Err(error) => {
            release_later(&app, id);
            return Err(error.into());
        }
    };
    let message = Message::new(Role::User, body.content, smalltalk::Timestamp::now());
    let message_id = message.id;
    let (sender, result) = oneshot::channel();
    app.spawn(async move {
        let outcome = groups.handle_user_message(id, message).await;
        let _ = sender.send(outcome);
        // If the client already went, its stream could not release the
        // group while the round ran.
        groups.release_idle(id);
    });
    let stream = RoundStream {
        app: app.clone(),
        id,
        events: Some(events),
        result,
        stopping: app.stopping(),
        message: message_id,
        round: None,
        done: false,
        _permit: permit,
    };
    // The stream runs on its own (tracked) task into a bounded buffer: a
    // client that leaves it full for `sse_stall_ms` is cut off (it gets
    // `lagged` when it reads again), so a stalled client neither holds a
    // stream permit nor the group.
    let config = app.config();
    let stall = std::time::Duration::from_millis(config.sse_stall_ms);
    let (sender, receiver) = tokio::sync::mpsc::channel::<SseEvent>(config.sse_buffer);
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut = std::sync::Arc::clone(&stalled);
    app.spawn(async move {
        let mut stream = stream;
        while let Some(event) = stream.step().await {
            match tokio::time::timeout(stall, sender.send(event)).await {
                Ok(Ok(())) => {}
                // The client went.
                Ok(Err(_)) => break,
                Err(_) => {
                    cut.store(true, std::sync::atomic::Ordering::Release);
                    break;
                }
            }
        }
    });
    let events = futures_util::stream::unfold(Some(receiver), move |receiver| {
        let stalled = std::sync::Arc::clone(&stalled);
        async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Some(event) => Some((Ok(event), Some(receiver))),
                None if stalled.load(std::sync::atomic::Ordering::Acquire) => Some((
                    Ok(SseEvent::default().event("lagged").data(
                        serde_json::json!({
                            "detail": "this client left its buffer full too long; the round goes on: read GET /v1/groups/{id}/messages"
                        })
                        .to_string(),
                    )),
                    None,
                )),
                None => None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(super::events::KEEP_ALIVE)))
}
