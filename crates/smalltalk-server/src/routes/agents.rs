//! `/v1/agents`: health statuses, and agents on other hosts that register,
//! send heartbeats with phase and progress, and deregister over HTTP.
//!
//! A remote agent is watched like any other: the monitor asks it for a
//! heartbeat every interval, and its answer is the last one it sent, if
//! that is fresh (at most one and a half heartbeat intervals old).
//! A heartbeat it did not send in time counts as missed. Remote agents
//! cannot be restarted from here, so their strategy is alert-only: they
//! come back to `active` by sending heartbeats again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use smalltalk::AgentId;
use smalltalk::health::{AgentError, Heartbeat, MonitoredAgent};
use smalltalk::types::{AgentHealthStatus, AgentPhase, RecoveryKind, RecoveryStrategy};
use utoipa::ToSchema;

use super::agent_id;
use crate::AppState;
use crate::problem::{ApiError, ApiResult, Problem};

/// The remote agents this node watches.
#[derive(Debug, Default)]
pub(crate) struct RemoteAgents {
    agents: Mutex<HashMap<AgentId, Arc<RemoteAgent>>>,
}

impl RemoteAgents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Arc<RemoteAgent>>> {
        self.agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An agent on another host: its heartbeats arrive over HTTP.
#[derive(Debug)]
struct RemoteAgent {
    /// How old the last heartbeat may be and still count.
    fresh_for: Duration,
    last: Mutex<(Instant, Heartbeat)>,
}

impl RemoteAgent {
    fn current(&self) -> Result<Heartbeat, AgentError> {
        let (at, beat) = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if at.elapsed() <= self.fresh_for {
            Ok(beat)
        } else {
            Err(AgentError::Failed(format!(
                "no heartbeat over HTTP for {:?}",
                at.elapsed()
            )))
        }
    }
}

#[async_trait]
impl MonitoredAgent for RemoteAgent {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        self.current()
    }

    /// Work cannot be asked of a remote agent from here: its heartbeats
    /// are the only signal, judged by `heartbeat` and the missed-beat
    /// limit.
    async fn probe(&self) -> Result<(), AgentError> {
        Ok(())
    }

    async fn restart(&self, _state: Option<smalltalk::AgentState>) -> Result<(), AgentError> {
        Err(AgentError::Failed(
            "a remote agent restarts itself; it comes back by sending heartbeats".into(),
        ))
    }
}

/// A remote agent to watch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterAgent {
    /// Its id (letters, digits, `-`, `_`, `.`, `:`; 1 to 128 bytes).
    pub agent_id: String,
}

/// A heartbeat from a remote agent.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatBody {
    /// `idle` (default), `llm-call`, `tool-call`, or a custom phase name.
    pub phase: Option<String>,
    /// A counter that grows with progress (default 0).
    pub progress: Option<u64>,
}

/// An agent's health.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatusView {
    /// The agent.
    pub agent_id: String,
    /// `active`, `disconnected`, `recovering`, `failed` or `degraded`.
    pub state: String,
    /// What it said it is doing.
    pub phase: String,
    /// Its progress counter.
    pub progress: u64,
    /// Heartbeats missed in a row.
    pub missed_beats: u32,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Why it last failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn phase_name(phase: &AgentPhase) -> String {
    match phase {
        AgentPhase::Idle => "idle".into(),
        AgentPhase::LlmCall => "llm-call".into(),
        AgentPhase::ToolCall => "tool-call".into(),
        AgentPhase::Custom(name) => name.clone(),
    }
}

fn view(status: AgentHealthStatus) -> AgentStatusView {
    let state = serde_json::to_value(status.state)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    AgentStatusView {
        agent_id: status.agent_id.to_string(),
        state,
        phase: phase_name(&status.phase),
        progress: status.progress,
        missed_beats: status.missed_beats,
        last_heartbeat: status.last_heartbeat.map(|at| at.to_string()),
        last_error: status.last_error,
    }
}

fn health_error(error: smalltalk::health::Error) -> ApiError {
    use smalltalk::health::Error as E;
    let detail = error.to_string();
    match error {
        E::UnknownAgent { .. } => ApiError::new(StatusCode::NOT_FOUND, "agent_not_found", detail),
        E::AlreadyRegistered { .. } => {
            ApiError::new(StatusCode::CONFLICT, "already_registered", detail)
        }
        E::Invalid(_) => ApiError::invalid(detail),
        _ => ApiError::unavailable(detail),
    }
}

/// Every watched agent's health.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, body = [AgentStatusView])))]
pub(crate) async fn list(State(app): State<AppState>) -> Json<Vec<AgentStatusView>> {
    let mut statuses = app.runtime().health.statuses();
    statuses.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Json(statuses.into_iter().map(view).collect())
}

/// One agent's health.
#[utoipa::path(get, path = "/v1/agents/{agent}", tag = "agents",
    params(("agent" = String, Path, description = "The agent id")),
    responses((status = 200, body = AgentStatusView), (status = 404, body = Problem)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<AgentStatusView>> {
    let Path(raw) = path?;
    let id = agent_id(&raw)?;
    let status = app.runtime().health.status(id).map_err(health_error)?;
    Ok(Json(view(status)))
}

/// Registers a remote agent; it must send heartbeats from now on.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = RegisterAgent,
    responses((status = 201, body = AgentStatusView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn register(
    State(app): State<AppState>,
    body: Result<Json<RegisterAgent>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(body) = body?;
    let id = agent_id(&body.agent_id)?;
    let config = app.runtime().health.config();
    let agent = Arc::new(RemoteAgent {
        // Half an interval of slack for the network; later than that, the
        // monitor's next ask finds the beat missed.
        fresh_for: config.heartbeat_interval + config.heartbeat_interval / 2,
        last: Mutex::new((Instant::now(), Heartbeat::idle(0))),
    });
    let strategy = RecoveryStrategy {
        kind: RecoveryKind::Alert,
        ..RecoveryStrategy::default()
    };
    app.runtime()
        .health
        .register(
            id.clone(),
            Arc::clone(&agent) as Arc<dyn MonitoredAgent>,
            strategy,
            None,
        )
        .map_err(health_error)?;
    app.remote_agents().lock().insert(id.clone(), agent);
    let status = app.runtime().health.status(id).map_err(health_error)?;
    Ok((StatusCode::CREATED, Json(view(status))))
}

/// A heartbeat from a registered remote agent, with its phase and
/// progress.
#[utoipa::path(post, path = "/v1/agents/{agent}/heartbeat", tag = "agents", request_body = HeartbeatBody,
    params(("agent" = String, Path, description = "The agent id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn heartbeat(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<HeartbeatBody>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Path(raw) = path?;
    let id = agent_id(&raw)?;
    let Json(body) = body?;
    let phase = match body.phase.as_deref() {
        None | Some("idle") => AgentPhase::Idle,
        Some("llm-call") => AgentPhase::LlmCall,
        Some("tool-call") => AgentPhase::ToolCall,
        Some(name)
            if !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            AgentPhase::Custom(name.to_owned())
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "phase must be idle, llm-call, tool-call or a name of letters, digits, - and _ (got {other:?})"
            )));
        }
    };
    let agent = app
        .remote_agents()
        .lock()
        .get(&id)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "agent_not_found",
                format!("agent {id} is not registered here over HTTP"),
            )
        })?;
    *agent
        .last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = (
        Instant::now(),
        Heartbeat {
            phase,
            progress: body.progress.unwrap_or(0),
        },
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Stops watching a remote agent.
#[utoipa::path(delete, path = "/v1/agents/{agent}", tag = "agents",
    params(("agent" = String, Path, description = "The agent id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn deregister(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(raw) = path?;
    let id = agent_id(&raw)?;
    if app.remote_agents().lock().remove(&id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "agent_not_found",
            format!("agent {id} is not registered here over HTTP"),
        ));
    }
    app.runtime().health.unregister(id).map_err(health_error)?;
    Ok(StatusCode::NO_CONTENT)
}
