//! The HTTP API through a real client over a real socket: every session
//! route, the operations endpoints, and the error statuses, each a
//! problem+json document with a stable code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use smalltalk_server::{AppState, Secret, ServerConfig, router};

struct Server {
    base: String,
    app: AppState,
    task: tokio::task::JoinHandle<()>,
    client: reqwest::Client,
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        let app = AppState::start(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let service = router(app.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, service).await.unwrap();
        });
        Self {
            base,
            app,
            task,
            client: reqwest::Client::new(),
        }
    }

    async fn memory() -> Self {
        Self::start(ServerConfig {
            storage_url: "memory://".into(),
            ..ServerConfig::default()
        })
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn stop(self) {
        self.task.abort();
        self.app.shutdown().await.unwrap();
    }
}

/// The status of `GET path` sent as raw bytes over TCP.
async fn raw_status(base: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Asserts `response` is a problem+json with `status` and `code`.
async fn problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "expected {code}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{code}"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["type"], format!("urn:smalltalk:problem:{code}"));
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty())
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_messages_and_agent_states_round_trip() {
    let server = Server::memory().await;
    let created = server
        .post("/v1/sessions", json!({"metadata": {"topic": "trip"}}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(created.headers().contains_key("x-request-id"));
    let session: Value = created.json().await.unwrap();
    let id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(session["state"], "active");
    assert_eq!(session["metadata"]["topic"], "trip");

    for (index, (role, agent)) in [("user", None), ("assistant", Some("planner"))]
        .into_iter()
        .cycle()
        .take(10)
        .enumerate()
    {
        let mut body = json!({"role": role, "content": format!("message {index}")});
        if let Some(agent) = agent {
            body["agentId"] = agent.into();
        }
        let appended = server
            .post(&format!("/v1/sessions/{id}/messages"), body)
            .await;
        assert_eq!(appended.status(), StatusCode::CREATED);
        let appended: Value = appended.json().await.unwrap();
        assert_eq!(appended["stored"], true);
        assert_eq!(appended["sequence"], index);
    }
    let full: Value = server
        .get(&format!("/v1/sessions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(full["messageCount"], 10);
    assert_eq!(full["messages"][9]["content"], "message 9");
    assert_eq!(full["messages"][1]["agentId"], "planner");
    let page: Value = server
        .get(&format!("/v1/sessions/{id}/messages?from=8&limit=5"))
        .await
        .json()
        .await
        .unwrap();
    let sequences: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [8, 9]);

    let saved = server
        .client
        .put(server.url(&format!("/v1/sessions/{id}/agents/planner")))
        .json(&json!({"config": {"model": "m"}, "context": {"notes": "v2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::NO_CONTENT);
    let states: Value = server
        .get(&format!("/v1/sessions/{id}/agents"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(states[0]["agentId"], "planner");
    assert_eq!(states[0]["context"]["notes"], "v2");

    // Invalidated: 410 from then on.
    let invalidated = server
        .post(&format!("/v1/sessions/{id}/invalidate"), json!({}))
        .await;
    assert_eq!(invalidated.status(), StatusCode::NO_CONTENT);
    problem(
        server
            .post(
                &format!("/v1/sessions/{id}/messages"),
                json!({"role": "user", "content": "late"}),
            )
            .await,
        StatusCode::GONE,
        "session_invalidated",
    )
    .await;
    problem(
        server.get(&format!("/v1/sessions/{id}")).await,
        StatusCode::GONE,
        "session_invalidated",
    )
    .await;
    let deleted = server
        .client
        .delete(server.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    problem(
        server.get(&format!("/v1/sessions/{id}")).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_by_cursor_covering_each_session_once() {
    let server = Server::start(ServerConfig {
        storage_url: "memory://".into(),
        max_concurrent_sessions: 100,
        ..ServerConfig::default()
    })
    .await;
    let mut created = Vec::new();
    for _ in 0..25 {
        let session: Value = server
            .post("/v1/sessions", json!({}))
            .await
            .json()
            .await
            .unwrap();
        created.push(session["id"].as_str().unwrap().to_owned());
    }
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/sessions?limit=10&cursor={cursor}"),
            None => "/v1/sessions?limit=10".to_owned(),
        };
        let page: Value = server.get(&path).await.json().await.unwrap();
        pages += 1;
        listed.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["id"].as_str().unwrap().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25, "each session once");
    created.sort();
    assert_eq!(sorted, created);
    problem(
        server.get("/v1/sessions?cursor=garbage").await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
    problem(
        server.get("/v1/sessions?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    problem(
        server.get("/v1/sessions?state=zombie").await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    problem(
        server.get("/v1/sessions?limit=ten").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_4xx_problems_never_5xx() {
    let server = Server::start(ServerConfig {
        storage_url: "memory://".into(),
        max_body_bytes: 4096,
        ..ServerConfig::default()
    })
    .await;
    let session: Value = server
        .post("/v1/sessions", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let id = session["id"].as_str().unwrap().to_owned();
    let messages = format!("/v1/sessions/{id}/messages");
    let raw = |path: &str, body: &'static str| {
        server
            .client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    problem(
        raw(&messages, "{\"role\": ").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    problem(
        raw(&messages, "{\"role\": 7, \"content\": []}")
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    )
    .await;
    problem(
        raw(
            &messages,
            "{\"role\": \"user\", \"content\": \"x\", \"sneaky\": 1}",
        )
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    )
    .await;
    problem(
        server
            .post(&messages, json!({"role": "root", "content": "x"}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    problem(
        server
            .post(
                &messages,
                json!({"role": "user", "content": "x".repeat(10_000)}),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
    .await;
    problem(
        server
            .client
            .post(server.url(&messages))
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    for bad in [
        "not-a-uuid",
        "'%3B%20DROP%20TABLE%20sessions%3B--",
        "..%2F..%2Fetc%2Fpasswd",
        "00000000-0000-0000-0000-000000000000",
    ] {
        problem(
            server.get(&format!("/v1/sessions/{bad}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        )
        .await;
    }
    // Raw, so no client normalises the dots away first.
    for path in [
        "/v1/sessions/../../etc/passwd",
        "/v1/sessions/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/../../../etc/passwd",
    ] {
        let status = raw_status(&server.base, path).await;
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    problem(
        server
            .post(
                &messages,
                json!({"role": "assistant", "content": "x", "agentId": "bad id!"}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    )
    .await;
    problem(
        server.get("/v2/nothing").await,
        StatusCode::NOT_FOUND,
        "no_route",
    )
    .await;
    problem(
        server
            .client
            .patch(server.url("/v1/sessions"))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    // Unknown sessions, valid ids.
    let stranger = "2b0e3d4c-61f2-4c55-9a54-5d7d4f0c4b8a";
    problem(
        server.get(&format!("/v1/sessions/{stranger}")).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_503_with_retry_after() {
    let server = Server::start(ServerConfig {
        storage_url: "memory://".into(),
        max_concurrent_sessions: 2,
        ..ServerConfig::default()
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            server.post("/v1/sessions", json!({})).await.status(),
            StatusCode::CREATED
        );
    }
    let refused = server.post("/v1/sessions", json!({})).await;
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    problem(refused, StatusCode::SERVICE_UNAVAILABLE, "at_capacity").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_but_health_and_readiness() {
    let token = "0123456789abcdef0123";
    let server = Server::start(ServerConfig {
        storage_url: "memory://".into(),
        token: Some(Secret::new(token)),
        ..ServerConfig::default()
    })
    .await;
    let missing = server.post("/v1/sessions", json!({})).await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    problem(missing, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong = server
        .client
        .get(server.url("/v1/sessions"))
        .bearer_auth("0123456789abcdef0124")
        .send()
        .await
        .unwrap();
    problem(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    problem(
        server.get("/metrics").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let right = server
        .client
        .get(server.url("/v1/sessions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    // The scheme is case-insensitive (RFC 9110); a longer token fails.
    let lower = server
        .client
        .get(server.url("/v1/sessions"))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);
    let longer = server
        .client
        .get(server.url("/v1/sessions"))
        .bearer_auth(format!("{token}0"))
        .send()
        .await
        .unwrap();
    assert_eq!(longer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.get("/health").await.status(), StatusCode::OK);
    assert_eq!(server.get("/ready").await.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_the_openapi_document() {
    let server = Server::memory().await;
    let health: Value = server.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let ready = server.get("/ready").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["storage"], "ok");
    assert_eq!(ready["checks"]["bus"], "ok");
    // Sent by the client, the request id comes back.
    let echoed = server
        .client
        .get(server.url("/health"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-42");
    let _ = server.get("/v1/sessions/not-an-id").await;
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    for name in [
        "smalltalk_http_requests_total",
        "smalltalk_http_request_seconds_bucket",
        "smalltalk_errors_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // Prometheus conventions: our prefix on every series.
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        assert!(line.starts_with("smalltalk_"), "unprefixed series: {line}");
    }
    promtool_lint(&text);
    let spec: Value = server.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/messages",
        "/health",
        "/ready",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }
    // Errors are documented as the problem documents they are.
    let get = &spec["paths"]["/v1/sessions/{id}"]["get"];
    for status in ["400", "401", "404", "410", "503", "504"] {
        assert!(
            get["responses"][status]["content"]["application/problem+json"].is_object(),
            "{status}: {}",
            get["responses"][status]
        );
    }
    assert!(spec["paths"]["/v1/sessions"]["post"]["responses"]["422"].is_object());
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Draining: readiness turns 503, health stays.
    server.app.drain();
    let draining = server.get("/ready").await;
    assert_eq!(draining.status(), StatusCode::SERVICE_UNAVAILABLE);
    let draining: Value = draining.json().await.unwrap();
    assert_eq!(draining["checks"]["server"], "draining");
    assert_eq!(server.get("/health").await.status(), StatusCode::OK);
    server.stop().await;
}

/// `promtool check metrics` on `text`: skipped when promtool is not
/// installed, unless `SMALLTALK_REQUIRE_TOOLS=1` (as `.ci/run` sets).
fn promtool_lint(text: &str) {
    use std::io::Write;
    let required = std::env::var("SMALLTALK_REQUIRE_TOOLS").is_ok_and(|value| value == "1");
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if !required => {
            eprintln!("skipped: promtool is not installed ({error})");
            return;
        }
        Err(error) => panic!("SMALLTALK_REQUIRE_TOOLS=1 but promtool cannot run: {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_runs_a_post_once() {
    use sha2::{Digest, Sha256};
    let server = Server::memory().await;
    let post = |key: &'static str, body: Value| {
        server
            .client
            .post(server.url("/v1/sessions"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = post("create-1", json!({"metadata": {"n": 1}}))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!first.headers().contains_key("idempotency-replayed"));
    let first: Value = first.json().await.unwrap();
    let again = post("create-1", json!({"metadata": {"n": 1}}))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["id"], first["id"],
        "the same session, not a second one"
    );
    let listed: Value = server.get("/v1/sessions").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    problem(
        post("create-1", json!({"metadata": {"n": 2}}))
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    problem(
        post("has space", json!({})).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
    )
    .await;

    // Messages: a retried append stores one message.
    let id = first["id"].as_str().unwrap();
    for _ in 0..3 {
        let appended = server
            .client
            .post(server.url(&format!("/v1/sessions/{id}/messages")))
            .header("idempotency-key", "append-1")
            .json(&json!({"role": "user", "content": "once"}))
            .send()
            .await
            .unwrap();
        assert_eq!(appended.status(), StatusCode::CREATED);
    }
    let messages: Value = server
        .get(&format!("/v1/sessions/{id}/messages"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(messages.as_array().unwrap().len(), 1);

    // A first request still running: 409; one abandoned long ago is taken
    // over.
    let body = br#"{"metadata":{"n":3}}"#;
    let mut print = Sha256::new();
    print.update(b"POST\0/v1/sessions\0");
    print.update(body);
    let fingerprint = hex(&print.finalize());
    let record = format!("smalltalk.idempotency:{}", hex(&Sha256::digest(b"slow-1")));
    let state = &server.app.runtime().state;
    let now = smalltalk::Timestamp::now().as_micros();
    state
        .put(
            record.as_str(),
            json!({"state": "in-flight", "fingerprint": fingerprint, "claimedAt": now}),
        )
        .await
        .unwrap();
    let raw = |key: &'static str| {
        server
            .client
            .post(server.url("/v1/sessions"))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
    };
    problem(
        raw("slow-1").await.unwrap(),
        StatusCode::CONFLICT,
        "idempotency_in_flight",
    )
    .await;
    state
        .put(
            record.as_str(),
            json!({"state": "in-flight", "fingerprint": fingerprint, "claimedAt": now - 3_600_000_000i64}),
        )
        .await
        .unwrap();
    assert_eq!(raw("slow-1").await.unwrap().status(), StatusCode::CREATED);
    // The server's own keys are not reachable through the state routes.
    problem(
        server.get(&format!("/v1/state/{record}")).await,
        StatusCode::BAD_REQUEST,
        "reserved_key",
    )
    .await;
    server.stop().await;
}
