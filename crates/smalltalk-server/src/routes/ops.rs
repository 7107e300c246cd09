//! `/health`, `/ready`, `/metrics`, `/openapi.json`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use smalltalk::types::HealthState;
use utoipa::{OpenApi, ToSchema};

use crate::problem::ApiError;
use crate::{ApiDoc, AppState};

/// How the node is doing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `healthy`, `degraded` (new sessions paused, or agents failed) or
    /// `unhealthy` (storage does not answer).
    pub status: String,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// Sessions in this node's active pool.
    pub active_sessions: usize,
    /// Monitored agents in `failed`.
    pub failed_agents: usize,
    /// The server's version.
    pub version: String,
}

/// Whether the node takes traffic, with a check per component.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not-ready`.
    pub status: String,
    /// `ok`, or why not, per component (`storage`, `bus`, `server`).
    pub checks: BTreeMap<String, String>,
}

/// How long a probe waits for storage.
const STORAGE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Storage's own health check, bounded: a stalled database makes the probe
/// answer "unhealthy" in 2 s instead of hanging.
async fn storage_check(store: &std::sync::Arc<dyn smalltalk::Store>) -> Result<(), String> {
    match tokio::time::timeout(STORAGE_CHECK, store.health_check()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {STORAGE_CHECK:?}")),
    }
}

/// The node's health.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(crate) async fn health(State(app): State<AppState>) -> impl IntoResponse {
    let parts = app.runtime();
    let storage = storage_check(&parts.store).await;
    let stats = parts.health.stats();
    let failed = stats.agents.get(&HealthState::Failed).copied().unwrap_or(0);
    let status = if storage.is_err() {
        "unhealthy"
    } else if stats.degraded || parts.sessions.is_degraded() || failed > 0 {
        "degraded"
    } else {
        "healthy"
    };
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Health {
        status: status.into(),
        uptime_seconds: app.started().elapsed().as_secs(),
        active_sessions: parts.sessions.active_count(),
        failed_agents: failed,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    (code, Json(body))
}

/// 200 when the node takes traffic; 503 until storage and the bus are up,
/// and while it shuts down.
#[utoipa::path(get, path = "/ready", tag = "operations", responses((status = 200, body = Ready), (status = 503, body = Ready)))]
pub(crate) async fn ready(State(app): State<AppState>) -> impl IntoResponse {
    let parts = app.runtime();
    let mut checks = BTreeMap::new();
    let storage = match storage_check(&parts.store).await {
        Ok(()) => "ok".to_owned(),
        Err(error) => error,
    };
    checks.insert("storage".to_owned(), storage);
    let bus = if parts.events.is_closed() {
        "closed"
    } else {
        "ok"
    };
    checks.insert("bus".to_owned(), bus.to_owned());
    let server = if app.is_draining() { "draining" } else { "ok" };
    checks.insert("server".to_owned(), server.to_owned());
    let ready = checks.values().all(|check| check == "ok");
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if ready { "ready" } else { "not-ready" };
    (
        code,
        Json(Ready {
            status: status.into(),
            checks,
        }),
    )
}

/// Prometheus text.
pub(crate) async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    match app.metrics() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

/// The OpenAPI 3.1 document.
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
