//! The SmallTalk-rs service: an HTTP API over the umbrella
//! [`Runtime`](smalltalk::Runtime), and the `smalltalk` CLI.
//!
//! - [`ServerConfig`]: defaults, an optional TOML file, environment
//!   variables; a bad value names the variable and the range.
//! - [`router`]: the axum router: `/v1/sessions...`, `/v1/groups...`, `/health`, `/ready`,
//!   `/metrics` (Prometheus text), `/openapi.json` (OpenAPI 3.1). Every
//!   error is RFC 9457 `application/problem+json` with a stable code; each
//!   response carries `x-request-id`, which is in every span of the
//!   request.
//! - [`serve`]: binds (loopback by default; another address needs a token
//!   or `insecure`), serves until SIGTERM or SIGINT, then turns `/ready`
//!   to 503, drains in-flight requests (30 s at most), persists every
//!   session and closes storage.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use smalltalk_server::{AppState, ServerConfig, router};
//!
//! let config = ServerConfig { storage_url: "memory://".into(), ..ServerConfig::default() };
//! let app = AppState::start(&config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?;
//! let server = tokio::spawn(axum::serve(listener, router(app.clone())).into_future());
//!
//! let body = reqwest::get(format!("http://{address}/health")).await?.text().await?;
//! assert!(body.contains("\"status\":\"healthy\""));
//! server.abort();
//! app.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod config;
mod error;
pub mod idempotency;
pub mod import;
mod openapi;
pub mod problem;
pub mod routes;
mod serve;
pub mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Instrument;

pub use config::{ConfigError, LogFormat, Secret, ServerConfig};
pub use error::{Error, Result};
pub use openapi::ApiDoc;
pub use problem::{ApiError, Problem};
pub use serve::{ServeOptions, redact as redact_url, serve, terminated};

/// The request id header, set on every request and response.
pub const REQUEST_ID: &str = "x-request-id";

/// The runtime's parts, for handlers (each is a cheap handle).
#[derive(Clone)]
pub struct Parts {
    /// The store.
    pub store: Arc<dyn smalltalk::Store>,
    /// Sessions.
    pub sessions: smalltalk::SessionManager,
    /// The event bus.
    pub events: smalltalk::events::EventBus,
    /// Agent health.
    pub health: smalltalk::AgentHealthMonitor,
    /// Versioned state.
    pub state: smalltalk::StateStore,
    /// Groups.
    pub groups: smalltalk::groups::GroupManager,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Mutex<Option<smalltalk::Runtime>>,
    parts: Parts,
    config: ServerConfig,
    started: Instant,
    draining: AtomicBool,
    /// Turns `true` at shutdown: streams send their terminal event.
    stopping: tokio::sync::watch::Sender<bool>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Every handler runs on a task of this tracker, so shutdown can wait
    /// for the writes of clients that went away.
    tasks: tokio_util::task::TaskTracker,
    /// Agents on other hosts, watched through their HTTP heartbeats.
    remote_agents: routes::agents::RemoteAgents,
    /// One permit per open stream (`max_streams`).
    streams: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("bind", &self.inner.config.bind)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens the storage in `config` and starts the runtime over it.
    pub async fn start(config: &ServerConfig) -> Result<Self> {
        prepare_storage_dir(&config.storage_url).map_err(|source| Error::Storage {
            url: serve::redact(&config.storage_url),
            source: source.into(),
        })?;
        let mut builder = smalltalk::Runtime::builder(config.storage_url.clone())
            .sessions(config.sessions())
            .events(config.events())
            .health(config.health());
        if let Some(llm) = config.llm()? {
            // One client: the selector and the agents share its breaker.
            let client = smalltalk::groups::llm::LlmClient::new(llm)?;
            builder = builder
                .selector_llm(client.clone())
                .llm_endpoint(smalltalk::groups::DEFAULT_ENDPOINT, client);
        }
        let runtime = builder.build().await.map_err(|source| Error::Storage {
            url: serve::redact(&config.storage_url),
            source: Box::new(source),
        })?;
        let parts = Parts {
            store: Arc::clone(runtime.store()),
            sessions: runtime.sessions().clone(),
            events: runtime.events().clone(),
            health: runtime.health().clone(),
            state: runtime.state().clone(),
            groups: runtime.groups().clone(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                parts,
                runtime: Mutex::new(Some(runtime)),
                config: config.clone(),
                started: Instant::now(),
                draining: AtomicBool::new(false),
                stopping: tokio::sync::watch::channel(false).0,
                metrics: metrics_handle(),
                tasks: tokio_util::task::TaskTracker::new(),
                remote_agents: routes::agents::RemoteAgents::default(),
                streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
            }),
        })
    }

    /// The runtime's parts.
    pub fn runtime(&self) -> &Parts {
        &self.inner.parts
    }

    /// The configuration it started with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Marks the server as draining: `/ready` answers 503 from now on.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Ends every open stream with its terminal `shutdown` event (the
    /// listener's graceful shutdown then has nothing open to wait for).
    pub fn close_streams(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// A permit for one more open stream; at `max_streams`, 503
    /// `too_many_streams` with `Retry-After`.
    pub(crate) fn stream_permit(&self) -> problem::ApiResult<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.inner.streams)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_streams",
                    format!(
                        "{} streams are open on this node",
                        self.config().max_streams
                    ),
                )
                .retry_after(Duration::from_secs(5))
            })
    }

    /// Runs `work` on the server's tracked tasks, in the current span.
    pub(crate) fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner
            .tasks
            .spawn(work.instrument(tracing::Span::current()));
    }

    pub(crate) fn remote_agents(&self) -> &routes::agents::RemoteAgents {
        &self.inner.remote_agents
    }

    /// Turns `true` when streams are to end.
    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    /// When the server started.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// The Prometheus registry, if this process could install it.
    pub fn metrics(&self) -> Option<&metrics_exporter_prometheus::PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Waits up to `limit` for the requests still running (handlers run
    /// on their own tasks, also when their client went away); `false` if
    /// some were still running then.
    pub async fn wait_for_requests(&self, limit: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(limit, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// Persists every session, stops the runtime and closes storage. The
    /// second call does nothing.
    pub async fn shutdown(&self) -> Result<()> {
        self.drain();
        self.close_streams();
        let runtime = self.inner.runtime.lock().await.take();
        if let Some(runtime) = runtime {
            runtime.shutdown().await.map_err(Error::Shutdown)?;
        }
        Ok(())
    }
}

/// Creates the directory of an `sqlite://` file (mode 0700), so the
/// default storage URL works on a fresh checkout.
pub fn prepare_storage_dir(url: &str) -> std::io::Result<()> {
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Ok(());
    };
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
    }
    Ok(())
}

/// The process's Prometheus recorder, installed on first use (one per
/// process: every server in it renders the same registry).
fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
                ])
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    let upkeep = handle.clone();
                    // Histograms are drained into their buckets; without
                    // upkeep they grow. A thread of its own: it outlives
                    // any one async runtime of the process.
                    let spawned = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(Duration::from_secs(5));
                                upkeep.run_upkeep();
                            }
                        });
                    if let Err(error) = spawned {
                        tracing::warn!("metrics upkeep did not start: {error}");
                    }
                    describe_metrics();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!("metrics are not exported: {error}");
                    None
                }
            }
        })
        .clone()
}

/// Every metric the crates record, with its help text (promtool's lint
/// wants one on each).
const METRICS: &[(&str, &str, &str)] = &[
    (
        "gauge",
        "smalltalk_sessions_active",
        "Sessions in this node's active pool",
    ),
    (
        "histogram",
        "smalltalk_session_restore_seconds",
        "Time to restore a session from storage",
    ),
    (
        "counter",
        "smalltalk_session_conflicts_total",
        "Session updates that met a newer version",
    ),
    (
        "counter",
        "smalltalk_session_rejections_total",
        "Sessions refused at capacity or while degraded",
    ),
    (
        "counter",
        "smalltalk_session_save_failures_total",
        "Session writes that failed",
    ),
    (
        "gauge",
        "smalltalk_agent_health_status",
        "Agent health: 1 active, 0.5 degraded, 0.25 recovering, 0 disconnected, -1 failed",
    ),
    (
        "counter",
        "smalltalk_events_published_total",
        "Events published on the bus",
    ),
    (
        "histogram",
        "smalltalk_event_propagation_seconds",
        "Time from publication to the handler",
    ),
    (
        "counter",
        "smalltalk_event_latency_violations_total",
        "Deliveries later than the latency budget",
    ),
    (
        "counter",
        "smalltalk_event_replay_gaps_total",
        "Replays that found purged events",
    ),
    (
        "counter",
        "smalltalk_events_dead_lettered_total",
        "Undecodable events skipped",
    ),
    (
        "gauge",
        "smalltalk_state_revision",
        "The state store's newest revision",
    ),
    (
        "counter",
        "smalltalk_state_conflicts_total",
        "State writes that met a newer revision",
    ),
    (
        "histogram",
        "smalltalk_state_watch_lag_seconds",
        "Time from a state commit to a watcher",
    ),
    (
        "counter",
        "smalltalk_group_turns_total",
        "Group turns committed",
    ),
    (
        "counter",
        "smalltalk_group_agent_failures_total",
        "Agents whose retries were spent in a turn",
    ),
    (
        "histogram",
        "smalltalk_group_selection_seconds",
        "Time to choose the next speaker",
    ),
    (
        "gauge",
        "smalltalk_groups_active",
        "Groups open on this node",
    ),
    (
        "counter",
        "smalltalk_llm_calls_total",
        "LLM calls, by outcome",
    ),
    (
        "histogram",
        "smalltalk_llm_call_seconds",
        "LLM call time, retries included",
    ),
    (
        "counter",
        "smalltalk_llm_tokens_total",
        "LLM tokens, by kind",
    ),
    (
        "counter",
        "smalltalk_http_requests_total",
        "HTTP requests, by route, method and status",
    ),
    (
        "histogram",
        "smalltalk_http_request_seconds",
        "HTTP request time, by route",
    ),
    (
        "counter",
        "smalltalk_errors_total",
        "Error answers, by code",
    ),
];

fn describe_metrics() {
    for (kind, name, help) in METRICS {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// The router over `state`.
pub fn router(state: AppState) -> Router {
    let config = state.config().clone();
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let api = Router::new()
        .route(
            "/v1/sessions",
            post(routes::sessions::create).get(routes::sessions::list),
        )
        .route(
            "/v1/sessions/{id}",
            get(routes::sessions::get).delete(routes::sessions::delete),
        )
        .route(
            "/v1/sessions/{id}/invalidate",
            post(routes::sessions::invalidate),
        )
        .route(
            "/v1/sessions/{id}/messages",
            post(routes::sessions::append).get(routes::sessions::messages),
        )
        .route(
            "/v1/sessions/{id}/agents",
            get(routes::sessions::agent_states),
        )
        .route(
            "/v1/sessions/{id}/agents/{agent}",
            put(routes::sessions::put_agent_state),
        )
        .route(
            "/v1/events",
            post(routes::events::publish).get(routes::events::read),
        )
        .route(
            "/v1/agents",
            get(routes::agents::list).post(routes::agents::register),
        )
        .route(
            "/v1/agents/{agent}",
            get(routes::agents::get).delete(routes::agents::deregister),
        )
        .route(
            "/v1/agents/{agent}/heartbeat",
            post(routes::agents::heartbeat),
        )
        .route(
            "/v1/state/{key}",
            get(routes::state::get)
                .put(routes::state::put)
                .delete(routes::state::delete),
        )
        .route("/v1/state-txn", post(routes::state_txn::txn))
        .route("/v1/groups", post(routes::groups::create))
        .route("/v1/groups/{id}", get(routes::groups::get))
        .route(
            "/v1/groups/{id}/messages",
            post(routes::groups::post_message).get(routes::groups::messages),
        )
        .route("/v1/groups/{id}/agents", post(routes::groups::add_agent))
        .route(
            "/v1/groups/{id}/agents/{agent}",
            axum::routing::delete(routes::groups::remove_agent),
        )
        .route("/v1/groups/{id}/resume", post(routes::groups::resume))
        .route("/v1/groups/{id}/end", post(routes::groups::end))
        .route("/v1/state/{key}/history", get(routes::state::history))
        .route("/v1/state/{key}/diff", get(routes::state::diff))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::ops::openapi))
        // Inside the detached task: the claim, the handler and the kept
        // answer run to completion together.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotent,
        ))
        .layer(middleware::from_fn_with_state(
            (state.clone(), timeout),
            run_detached,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // Streams last: they have no request timeout, only the token check.
    let streams = Router::new()
        .route("/v1/events/stream", get(routes::events::stream))
        .route("/v1/state-watch", get(routes::state::watch))
        .route(
            "/v1/groups/{id}/messages/stream",
            post(routes::groups::stream_message),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
        .merge(streams)
        .route("/health", get(routes::ops::health))
        .route("/ready", get(routes::ops::ready))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn(count_request))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("-");
                let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id);
                telemetry::continue_trace(&span, request.headers());
                span
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Runs the handler on its own task (tracked, in the request's span): a
/// client that goes away mid-request does not cut a write in half. Past
/// the request timeout the client gets 504 `timeout`; the write it asked
/// for may still land.
async fn run_detached(
    State((app, limit)): State<(AppState, Duration)>,
    request: Request,
    next: Next,
) -> Response {
    let work = app
        .inner
        .tasks
        .spawn(next.run(request).instrument(tracing::Span::current()));
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed inside the server",
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request took longer than {limit:?}; what it asked for may still be applied"
            ),
        )
        .into_response(),
    }
}

/// Counts every request by route (the matched pattern, so the label set
/// stays bounded), method and status, and times it.
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("smalltalk_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("smalltalk_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The bearer token in `Authorization` (the scheme in any case).
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Refuses a request without the configured bearer token (401). The
/// digests are compared in constant time, so neither the token nor its
/// length shows in the timing. With no token configured every request
/// passes.
async fn authenticate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    use sha2::Digest;
    let Some(token) = &app.config().token else {
        return next.run(request).await;
    };
    let presented = sha2::Sha256::digest(bearer(&request).unwrap_or("").as_bytes());
    let expected = sha2::Sha256::digest(token.expose().as_bytes());
    if bool::from(presented.as_slice().ct_eq(expected.as_slice())) {
        next.run(request).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}
