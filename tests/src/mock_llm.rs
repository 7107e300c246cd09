//! A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and
//! benchmarks: `POST /v1/chat/completions`, plain or streamed
//! (`stream: true`, server-sent events), scripted to misbehave.
//!
//! Scripted answers ([`MockReply`]) are used in order; when the script is
//! empty, the responder answers (by default: a speaker selection request
//! gets `{"agentId": <the first agent allowed to speak>}`, anything else
//! an echo of the last message). Every request body is kept, so a test
//! can check what the client sent.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum MockReply {
    /// A completion with this text (streamed word by word when asked).
    Text(String),
    /// A completion calling a tool.
    ToolCall {
        /// The function.
        name: String,
        /// Its JSON arguments.
        arguments: String,
    },
    /// An error status, with an optional `Retry-After`.
    Status {
        /// The status code.
        status: u16,
        /// The `Retry-After` header's value.
        retry_after: Option<String>,
    },
    /// A 200 whose body is not JSON.
    Malformed,
    /// A 200 with this content type and body, sent as-is (hostile
    /// streams: an event that never ends, a chunk naming tool call 4e9).
    Raw {
        /// The `Content-Type`.
        content_type: &'static str,
        /// The body.
        body: String,
    },
    /// Waits, then answers.
    Slow(Duration, Box<MockReply>),
}

impl MockReply {
    /// [`MockReply::Text`].
    pub fn text(text: impl Into<String>) -> Self {
        MockReply::Text(text.into())
    }

    /// A selection answer naming `agent`.
    pub fn pick(agent: &str) -> Self {
        MockReply::Text(
            json!({"agentId": agent, "confidence": 0.9, "reasoning": "scripted"}).to_string(),
        )
    }
}

type Responder = dyn Fn(&Value) -> MockReply + Send + Sync;

struct MockState {
    script: VecDeque<MockReply>,
    requests: Vec<Value>,
    responder: Arc<Responder>,
}

/// The running server; stops when dropped.
pub struct MockLlm {
    addr: SocketAddr,
    state: Arc<Mutex<MockState>>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for MockLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlm")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The system prompt's line listing who may speak, in a selection request.
const ELIGIBLE_PREFIX: &str = "Who may speak now: ";

/// The agents a selection request allows (empty for other requests).
pub fn eligible_in(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_str())
        .flat_map(str::lines)
        .find_map(|line| line.strip_prefix(ELIGIBLE_PREFIX))
        .map(|names| {
            names
                .trim_end_matches('.')
                .split(", ")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn default_responder(request: &Value) -> MockReply {
    if let Some(first) = eligible_in(request).first() {
        return MockReply::pick(first);
    }
    let last = request["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default();
    MockReply::Text(format!("echo: {last}"))
}

impl MockLlm {
    /// Starts a server on an ephemeral port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts a server on `addr`.
    pub async fn start_on(addr: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(MockState {
            script: VecDeque::new(),
            requests: Vec::new(),
            responder: Arc::new(default_responder),
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(Arc::clone(&state));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MockState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The base URL to configure a client with (`http://127.0.0.1:<port>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues answers, used before the responder.
    pub fn push(&self, replies: impl IntoIterator<Item = MockReply>) {
        self.lock().script.extend(replies);
    }

    /// What answers once the script is empty.
    pub fn respond_with(&self, responder: impl Fn(&Value) -> MockReply + Send + Sync + 'static) {
        self.lock().responder = Arc::new(responder);
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// Forgets the requests received.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

async fn complete(State(state): State<Arc<Mutex<MockState>>>, body: String) -> Response {
    let request: Value = match serde_json::from_str(&body) {
        Ok(request) => request,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, format!("bad JSON: {error}")).into_response();
        }
    };
    let reply = {
        let mut state = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.requests.push(request.clone());
        match state.script.pop_front() {
            Some(reply) => reply,
            None => (state.responder)(&request),
        }
    };
    let stream = request["stream"].as_bool().unwrap_or(false);
    let model = request["model"].as_str().unwrap_or("mock").to_owned();
    answer(reply, stream, &model).await
}

async fn answer(mut reply: MockReply, stream: bool, model: &str) -> Response {
    while let MockReply::Slow(delay, next) = reply {
        tokio::time::sleep(delay).await;
        reply = *next;
    }
    match reply {
        MockReply::Slow(..) => unreachable!("unwrapped above"),
        MockReply::Status {
            status,
            retry_after,
        } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                json!({"error": {"message": "scripted failure", "type": "mock"}}).to_string(),
            )
                .into_response();
            if let Some(value) = retry_after.and_then(|value| HeaderValue::from_str(&value).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        MockReply::Malformed => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"choices\": [ this is not json",
        )
            .into_response(),
        MockReply::Raw { content_type, body } => {
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        MockReply::Text(text) if stream => streamed(&text, model),
        MockReply::Text(text) => {
            let usage = usage(&text);
            axum::Json(json!({
                "id": "mock-1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            }))
            .into_response()
        }
        MockReply::ToolCall { name, arguments } => axum::Json(json!({
            "id": "mock-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call-1", "type": "function", "function": {"name": name, "arguments": arguments}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        }))
        .into_response(),
    }
}

fn usage(text: &str) -> Value {
    let completion = text.split_whitespace().count().max(1);
    json!({"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion})
}

fn streamed(text: &str, model: &str) -> Response {
    let mut events: Vec<String> = text
        .split_inclusive(' ')
        .map(|word| {
            json!({"id": "mock-1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": word}}]})
            .to_string()
        })
        .collect();
    events.push(
        json!({"id": "mock-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        .to_string(),
    );
    events.push(json!({"choices": [], "usage": usage(text)}).to_string());
    events.push("[DONE]".into());
    let chunks = events
        .into_iter()
        .map(|data| Ok::<_, Infallible>(format!("data: {data}\n\n")));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
