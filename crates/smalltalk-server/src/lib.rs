//! The SmallTalk-rs service: an HTTP API over the umbrella
//! [`Runtime`](smalltalk::Runtime), and the `smalltalk` CLI.
//!
//! - [`ServerConfig`]: defaults, an optional TOML file, environment
//!   variables; a bad value names the variable and the range.
//! - [`router`]: the axum router: `/v1/sessions...`, `/health`, `/ready`,
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
//! # async fn main() -> anyhow::Result<()> {
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
pub mod demo;
pub mod problem;
pub mod routes;
mod serve;

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
use utoipa::OpenApi;

pub use config::{ConfigError, LogFormat, Secret, ServerConfig};
pub use problem::{ApiError, Problem};
pub use serve::{ServeOptions, serve, terminated};

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
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
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
    pub async fn start(config: &ServerConfig) -> anyhow::Result<Self> {
        prepare_storage_dir(&config.storage_url)?;
        let mut builder = smalltalk::Runtime::builder(config.storage_url.clone())
            .sessions(config.sessions())
            .events(config.events())
            .health(config.health());
        if let Some(llm) = config.llm()? {
            builder = builder.selector_llm(smalltalk::groups::llm::LlmClient::new(llm)?);
        }
        let runtime = builder.build().await?;
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
                metrics: metrics_handle(),
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

    /// Persists every session, stops the runtime and closes storage. The
    /// second call does nothing.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.drain();
        let runtime = self.inner.runtime.lock().await.take();
        if let Some(runtime) = runtime {
            runtime.shutdown().await?;
        }
        Ok(())
    }
}

/// Creates the directory of an `sqlite://` file (mode 0700), so the
/// default storage URL works on a fresh checkout.
fn prepare_storage_dir(url: &str) -> anyhow::Result<()> {
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
                    // upkeep they grow.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(async move {
                            let mut tick = tokio::time::interval(Duration::from_secs(5));
                            loop {
                                tick.tick().await;
                                upkeep.run_upkeep();
                            }
                        });
                    }
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

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "SmallTalk-rs", description = "Sessions that survive restarts, agents whose failures are healed, events with replay, groups and versioned state."),
    paths(
        routes::sessions::create,
        routes::sessions::get,
        routes::sessions::list,
        routes::sessions::delete,
        routes::sessions::invalidate,
        routes::sessions::append,
        routes::sessions::messages,
        routes::sessions::agent_states,
        routes::sessions::put_agent_state,
        routes::ops::health,
        routes::ops::ready,
    ),
    components(schemas(Problem)),
    tags((name = "sessions", description = "Conversations and their history"), (name = "operations", description = "Health, readiness, metrics")),
)]
pub struct ApiDoc;

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
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::ops::openapi))
        .layer(middleware::from_fn_with_state(
            timeout,
            |State(limit): State<Duration>, request: Request, next: Next| async move {
                // The handler runs on its own task: a client that goes away
                // mid-request does not cut a write in half.
                let work = tokio::spawn(next.run(request));
                match tokio::time::timeout(limit, work).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(_)) => ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the request failed",
                    )
                    .into_response(),
                    Err(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        format!("the request took longer than {limit:?}"),
                    )
                    .retry_after(Duration::from_secs(1))
                    .into_response(),
                }
            },
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
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
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Refuses a request without the configured bearer token (401), compared
/// in constant time. With no token configured every request passes.
async fn authenticate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &app.config().token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
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
