//! Groups over HTTP, with LLM agents described by configuration and a
//! real OpenAI-compatible server on 127.0.0.1 (`smalltalk_e2e::mock_llm`):
//! create, rounds whole and streamed over SSE, agents added and removed,
//! ending, the error statuses, and two nodes sharing one SQLite file.

use common::{memory, start};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use smalltalk_e2e::mock_llm::{MockLlm, MockReply};
use smalltalk_server::ServerConfig;

mod common;

/// The agent a chat request is for, from its system prompt.
fn speaker_in(request: &Value) -> String {
    let system = request["messages"][0]["content"].as_str().unwrap_or("");
    let Some(end) = system.find(") in a group conversation") else {
        return String::new();
    };
    let before = &system[..end];
    let start = before
        .rfind("You are ")
        .map_or(0, |at| at + "You are ".len());
    before[start..]
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A mock LLM whose agents answer `<name> answers`.
async fn llm() -> MockLlm {
    let server = MockLlm::start().await.unwrap();
    server.respond_with(|request| MockReply::text(format!("{} answers", speaker_in(request))));
    server
}

fn with_llm(server: &MockLlm, config: ServerConfig) -> ServerConfig {
    ServerConfig {
        llm_url: Some(server.base_url()),
        llm_model: Some("server-model".into()),
        ..config
    }
}

fn agent(name: &str) -> Value {
    json!({"name": name, "role": format!("{name} role"), "systemPrompt": format!("You are careful, {name}.")})
}

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    answer(reqwest::get(format!("{base}{path}")).await.unwrap()).await
}

async fn delete(base: &str, path: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .delete(format!("{base}{path}"))
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// The status and JSON body; an error must be a problem document.
async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let problem = response
        .headers()
        .get("content-type")
        .is_some_and(|value| value == "application/problem+json");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        assert!(problem, "{status} is a problem document: {body}");
        assert!(body["code"].is_string(), "{body}");
    }
    (status, body)
}

/// `status` and `problem` are the problem document `expected` with `code`.
#[track_caller]
fn assert_problem(status: StatusCode, problem: &Value, expected: StatusCode, code: &str) {
    assert_eq!(
        (status, problem["code"].as_str()),
        (expected, Some(code)),
        "{problem}"
    );
}

fn contents(messages: &Value) -> Vec<(String, String)> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["agentId"].as_str().unwrap_or("user").to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_llm_agents_lives_over_http() {
    let server = llm().await;
    let (_app, base) = start(with_llm(&server, memory())).await;
    let (status, group) = post(
        &base,
        "/v1/groups",
        json!({"agents": [agent("planner"), agent("critic")], "topic": "the launch"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let id = group["id"].as_str().unwrap().to_owned();
    assert_eq!(group["strategy"], "round-robin");
    assert_eq!(
        group["termination"],
        json!({"kind": "maxTurns", "value": 2})
    );
    assert_eq!(
        group["agents"][1]["systemPrompt"],
        "You are careful, critic."
    );

    let (status, round) = post(
        &base,
        &format!("/v1/groups/{id}/messages"),
        json!({"content": "plan the launch"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{round}");
    assert_eq!(round["round"], 1);
    let speakers: Vec<&str> = round["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|turn| turn["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(speakers, ["planner", "critic"]);
    assert_eq!(round["end"]["kind"], "condition");
    assert_eq!(round["messageCount"], 3);
    // The agents were asked as configured: the server's model, their own
    // prompt.
    let asked = server.requests();
    assert_eq!(asked[0]["model"], "server-model");
    assert!(
        asked[0]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("You are careful, planner."),
        "{}",
        asked[0]
    );

    let (status, messages) = get(&base, &format!("/v1/groups/{id}/messages")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        contents(&messages),
        [
            ("user".to_owned(), "plan the launch".to_owned()),
            ("planner".to_owned(), "planner answers".to_owned()),
            ("critic".to_owned(), "critic answers".to_owned()),
        ]
    );
    let (_, page) = get(&base, &format!("/v1/groups/{id}/messages?from=2&limit=5")).await;
    assert_eq!(
        contents(&page),
        [("critic".into(), "critic answers".into())]
    );
    let (status, read) = get(&base, &format!("/v1/groups/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (read["turns"].clone(), read["roundsCompleted"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(read["topic"], "the launch");

    // Agents join and leave; the rules hold.
    let (status, grown) = post(&base, &format!("/v1/groups/{id}/agents"), agent("editor")).await;
    assert_eq!(status, StatusCode::OK, "{grown}");
    assert_eq!(grown["agents"].as_array().unwrap().len(), 3);
    let (status, twice) = post(&base, &format!("/v1/groups/{id}/agents"), agent("editor")).await;
    assert_problem(status, &twice, StatusCode::CONFLICT, "duplicate_agent");
    let (status, _) = delete(&base, &format!("/v1/groups/{id}/agents/editor")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, gone) = delete(&base, &format!("/v1/groups/{id}/agents/editor")).await;
    assert_problem(status, &gone, StatusCode::NOT_FOUND, "agent_not_in_group");
    let (status, too_few) = delete(&base, &format!("/v1/groups/{id}/agents/critic")).await;
    assert_problem(status, &too_few, StatusCode::BAD_REQUEST, "invalid_group");
    let (status, nothing) = post(&base, &format!("/v1/groups/{id}/resume"), json!({})).await;
    assert_problem(
        status,
        &nothing,
        StatusCode::CONFLICT,
        "no_round_in_progress",
    );

    // Ended, it takes no more rounds; its history stays.
    let (status, ended) = post(
        &base,
        &format!("/v1/groups/{id}/end"),
        json!({"reason": "shipped"}),
    )
    .await;
    assert_eq!(
        (status, ended["finished"].as_str()),
        (StatusCode::OK, Some("shipped"))
    );
    let (status, refused) = post(
        &base,
        &format!("/v1/groups/{id}/messages"),
        json!({"content": "one more"}),
    )
    .await;
    assert_problem(status, &refused, StatusCode::CONFLICT, "group_finished");
    let (_, messages) = get(&base, &format!("/v1/groups/{id}/messages")).await;
    assert_eq!(messages.as_array().unwrap().len(), 3);

    // Its session invalidated, the group is gone: 410.
    let (status, _) = post(&base, &format!("/v1/sessions/{id}/invalidate"), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, closed) = get(&base, &format!("/v1/groups/{id}")).await;
    assert_problem(status, &closed, StatusCode::GONE, "group_closed");
}

/// One SSE message: its event name and data.
async fn stream_round(base: &str, id: &str, content: &str) -> Vec<(String, Value)> {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/groups/{id}/messages/stream"))
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream().eventsource();
    let mut seen = Vec::new();
    // The stream ends after its terminal event.
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        seen.push((event.event, serde_json::from_str(&event.data).unwrap()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_streams_over_sse_and_ends_with_its_outcome() {
    let server = llm().await;
    let (_app, base) = start(with_llm(&server, memory())).await;
    let (_, group) = post(
        &base,
        "/v1/groups",
        json!({"agents": [agent("planner"), agent("critic")], "strategy": "priority",
               "termination": {"kind": "any", "value": [{"kind": "maxTurns", "value": 2}, {"kind": "textMention", "value": "DONE"}]}}),
    )
    .await;
    let id = group["id"].as_str().unwrap().to_owned();
    let seen = stream_round(&base, &id, "go").await;
    let names: Vec<&str> = seen
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| *name != "delta")
        .collect();
    assert_eq!(
        names,
        [
            "round-started",
            "speaker-selected",
            "message",
            "speaker-selected",
            "message",
            "terminated",
            "round-ended"
        ]
    );
    // The speakers' words were streamed as they were written.
    let deltas: String = seen
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| data["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas.replace(' ', ""), "planneranswerscriticanswers");
    let (_, outcome) = seen.last().unwrap();
    assert_eq!(outcome["turns"].as_array().unwrap().len(), 2);
    assert_eq!(outcome["messageCount"], 3);
    // What was streamed is what was stored.
    let (_, messages) = get(&base, &format!("/v1/groups/{id}/messages")).await;
    let streamed: Vec<&str> = seen
        .iter()
        .filter(|(name, _)| name == "message")
        .map(|(_, data)| data["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        streamed,
        contents(&messages)[1..]
            .iter()
            .map(|(_, text)| text.as_str())
            .collect::<Vec<_>>()
    );

    // What refuses a round has its own status, before any stream.
    let client = reqwest::Client::new();
    for (path, body, status, code) in [
        (
            format!("/v1/groups/{id}/messages/stream"),
            json!({"content": " "}),
            400,
            "invalid_group",
        ),
        (
            "/v1/groups/6a0c5d0e-6d0b-4d7c-9f5a-2b8f3f1e9c11/messages/stream".to_owned(),
            json!({"content": "hi"}),
            404,
            "group_not_found",
        ),
        (
            "/v1/groups/nope/messages/stream".to_owned(),
            json!({"content": "hi"}),
            400,
            "invalid_id",
        ),
    ] {
        let response = client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (got, problem) = answer(response).await;
        assert_eq!(
            (got.as_u16(), problem["code"].as_str()),
            (status, Some(code)),
            "{path}"
        );
    }
    // Too long for a round: refused before the stream, as the whole form
    // refuses it.
    let response = client
        .post(format!("{base}/v1/groups/{id}/messages/stream"))
        .json(&json!({"content": "x".repeat(1024 * 1024 + 1)}))
        .send()
        .await
        .unwrap();
    let (status, problem) = answer(response).await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid_group");
    // A stream cannot be replayed: Idempotency-Key is refused, not ignored.
    let response = client
        .post(format!("{base}/v1/groups/{id}/messages/stream"))
        .header("idempotency-key", "round-1")
        .json(&json!({"content": "once"}))
        .send()
        .await
        .unwrap();
    let (status, problem) = answer(response).await;
    assert_problem(
        status,
        &problem,
        StatusCode::BAD_REQUEST,
        "idempotency_unsupported",
    );
    post(&base, &format!("/v1/groups/{id}/end"), json!({})).await;
    let response = client
        .post(format!("{base}/v1/groups/{id}/messages/stream"))
        .json(&json!({"content": "more"}))
        .send()
        .await
        .unwrap();
    let (status, problem) = answer(response).await;
    assert_problem(status, &problem, StatusCode::CONFLICT, "group_finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_input_gets_a_problem_never_a_5xx() {
    // Without an LLM endpoint, groups say what to configure.
    let (_plain, plain) = start(memory()).await;
    let (status, problem) = post(
        &plain,
        "/v1/groups",
        json!({"agents": [agent("a"), agent("b")]}),
    )
    .await;
    assert_problem(
        status,
        &problem,
        StatusCode::BAD_REQUEST,
        "llm_not_configured",
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("SMALLTALK_LLM_URL")
    );

    let server = llm().await;
    let (_app, base) = start(with_llm(&server, memory())).await;
    let many: Vec<Value> = (0..11).map(|n| agent(&format!("a{n}"))).collect();
    let cases = [
        (json!({"agents": [agent("solo")]}), 400, "invalid_group"),
        (json!({"agents": many}), 400, "invalid_group"),
        (
            json!({"agents": [agent("a"), agent("a")]}),
            400,
            "invalid_group",
        ),
        (
            json!({"agents": [agent("../etc/passwd"), agent("b")]}),
            400,
            "invalid_id",
        ),
        (
            json!({"agents": [agent("a'; DROP TABLE sessions;--"), agent("b")]}),
            400,
            "invalid_id",
        ),
        (
            json!({"agents": [agent("a"), {"name": "b", "role": "r", "endpoint": "elsewhere"}]}),
            400,
            "unknown_endpoint",
        ),
        (
            json!({"agents": [agent("a"), {"name": "b", "role": "r", "endpoint": "http://evil.example/v1"}]}),
            400,
            "invalid_group",
        ),
        (
            json!({"agents": [agent("a"), {"name": "b", "role": " "}]}),
            400,
            "invalid_group",
        ),
        (
            json!({"agents": [agent("a"), {"name": "b", "role": "r", "maxTokens": 0}]}),
            400,
            "invalid_group",
        ),
        (
            json!({"agents": [agent("a"), {"name": "b", "role": "r", "systemPrompt": "x".repeat(70_000)}]}),
            400,
            "invalid_group",
        ),
        (
            json!({"agents": [agent("a"), agent("b")], "termination": {"kind": "never"}}),
            400,
            "invalid_group",
        ),
        (
            json!({"agents": [agent("a"), agent("b")], "strategy": "loudest"}),
            422,
            "invalid_body",
        ),
        (json!({"agents": "two"}), 422, "invalid_body"),
        (
            json!({"agents": [agent("a"), agent("b")], "extra": 1}),
            422,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let (got, problem) = post(&base, "/v1/groups", body.clone()).await;
        assert_eq!(
            (got.as_u16(), problem["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let malformed = reqwest::Client::new()
        .post(format!("{base}/v1/groups"))
        .header("content-type", "application/json")
        .body("{\"agents\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    // Ids: not a UUID, a UUID of nothing, a session that is not a group.
    let (status, _) = get(&base, "/v1/groups/..%2F..%2Fetc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, problem) = get(&base, "/v1/groups/6a0c5d0e-6d0b-4d7c-9f5a-2b8f3f1e9c11").await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND, "group_not_found");
    let (_, session) = post(&base, "/v1/sessions", json!({})).await;
    let session = session["id"].as_str().unwrap();
    let (status, problem) = get(&base, &format!("/v1/groups/{session}")).await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND, "group_not_found");
    let (status, problem) = post(
        &base,
        &format!("/v1/groups/{session}/messages"),
        json!({"content": "hi"}),
    )
    .await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND, "group_not_found");
    let (status, _) = delete(
        &base,
        "/v1/groups/6a0c5d0e-6d0b-4d7c-9f5a-2b8f3f1e9c11/agents/%2E%2E%2Fx",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The sessions API can neither forge a group nor write over one.
    let (status, problem) = post(
        &base,
        "/v1/sessions",
        json!({"metadata": {"smalltalk.group": {"formatVersion": 1}}}),
    )
    .await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST, "reserved_key");
    let (_, group) = post(
        &base,
        "/v1/groups",
        json!({"agents": [agent("a"), agent("b")]}),
    )
    .await;
    let id = group["id"].as_str().unwrap();
    let response = reqwest::Client::new()
        .put(format!("{base}/v1/sessions/{id}/agents/a"))
        .json(&json!({"context": {"x": 1}}))
        .send()
        .await
        .unwrap();
    let (status, problem) = answer(response).await;
    assert_problem(status, &problem, StatusCode::CONFLICT, "group_session");
    let (status, read) = get(&base, &format!("/v1/groups/{id}")).await;
    assert_eq!(
        (status, read["agents"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_is_a_502_and_stores_no_answer() {
    let server = MockLlm::start().await.unwrap();
    // A 4xx is not retried by the client; the group asks each agent once
    // more, then every one has failed.
    server.respond_with(|_| MockReply::Status {
        status: 400,
        retry_after: None,
    });
    let (_app, base) = start(with_llm(&server, memory())).await;
    let (_, group) = post(
        &base,
        "/v1/groups",
        json!({"agents": [agent("a"), agent("b")]}),
    )
    .await;
    let id = group["id"].as_str().unwrap();
    let (status, problem) = post(
        &base,
        &format!("/v1/groups/{id}/messages"),
        json!({"content": "hi"}),
    )
    .await;
    assert_problem(status, &problem, StatusCode::BAD_GATEWAY, "agent_failed");
    // The endpoint's own error body (which can echo a key) is not passed on.
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("400") && !detail.contains("scripted failure"),
        "{detail}"
    );
    let (_, messages) = get(&base, &format!("/v1/groups/{id}/messages")).await;
    assert_eq!(contents(&messages), [("user".to_owned(), "hi".to_owned())]);
}

/// Two servers on one SQLite file (as two nodes) and a group of two
/// agents created through the first: the file's directory (keep it), both
/// base URLs and the group's id.
async fn two_nodes_with_a_group(server: &MockLlm) -> (tempfile::TempDir, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = with_llm(
        server,
        ServerConfig {
            storage_url: format!("sqlite://{}", dir.path().join("shared.db").display()),
            ..ServerConfig::default()
        },
    );
    let (_, node_a) = start(config.clone()).await;
    let (_, node_b) = start(config).await;
    let (_, group) = post(
        &node_a,
        "/v1/groups",
        json!({"agents": [agent("a"), agent("b")]}),
    )
    .await;
    let id = group["id"].as_str().unwrap().to_owned();
    (dir, node_a, node_b, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_store_serve_the_same_group() {
    let server = llm().await;
    let (_dir, node_a, node_b, id) = two_nodes_with_a_group(&server).await;
    let id = id.as_str();
    // Rounds alternate between the nodes; each sees the other's turns.
    for (n, node) in [&node_b, &node_a, &node_b].into_iter().enumerate() {
        let (status, round) = post(
            node,
            &format!("/v1/groups/{id}/messages"),
            json!({"content": format!("round {n}")}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{round}");
        assert_eq!(round["round"], n + 1);
    }
    let (_, on_a) = get(&node_a, &format!("/v1/groups/{id}")).await;
    assert_eq!(
        (
            on_a["roundsCompleted"].clone(),
            on_a["messageCount"].clone()
        ),
        (json!(3), json!(9))
    );
    let (_, history) = get(&node_b, &format!("/v1/groups/{id}/messages")).await;
    assert_eq!(history.as_array().unwrap().len(), 9);
}

/// A mock whose agents answer after `delay`.
async fn slow_llm(delay: std::time::Duration) -> MockLlm {
    let server = MockLlm::start().await.unwrap();
    server.respond_with(move |request| {
        MockReply::Slow(
            delay,
            Box::new(MockReply::text(format!("{} answers", speaker_in(request)))),
        )
    });
    server
}

/// Opens a round's stream; its events as they come.
async fn open_round(
    base: &str,
    id: &str,
    content: &str,
) -> impl futures_util::Stream<Item = (String, Value)> + Unpin + use<> {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/groups/{id}/messages/stream"))
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes_stream().eventsource().map(|event| {
        let event = event.unwrap();
        (event.event, serde_json::from_str(&event.data).unwrap())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_under_way_refuses_another_at_once_and_the_group_is_released_after() {
    let server = slow_llm(std::time::Duration::from_millis(300)).await;
    let (app, base) = start(with_llm(&server, memory())).await;
    let (_, group) = post(
        &base,
        "/v1/groups",
        json!({"agents": [agent("a"), agent("b")]}),
    )
    .await;
    let id = group["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.runtime().groups.open_groups(),
        0,
        "released after create"
    );
    let mut first = open_round(&base, &id, "first").await;
    let (name, _) = first.next().await.unwrap();
    assert_eq!(name, "round-started");
    // While it runs: a whole round is 409, a streamed one ends with the
    // same problem at once, not when the first round ends.
    let (status, busy) = post(
        &base,
        &format!("/v1/groups/{id}/messages"),
        json!({"content": "second"}),
    )
    .await;
    assert_problem(status, &busy, StatusCode::CONFLICT, "round_in_progress");
    let mut second = open_round(&base, &id, "third").await;
    let (name, problem) = second.next().await.unwrap();
    assert_eq!(
        (name.as_str(), problem["code"].as_str()),
        ("error", Some("round_in_progress"))
    );
    assert!(
        second.next().await.is_none(),
        "the stream ends after its terminal event"
    );
    let mut names = Vec::new();
    while let Some((name, _)) = first.next().await {
        names.push(name);
    }
    assert_eq!(names.last().map(String::as_str), Some("round-ended"));
    drop(first);
    // Only the first round's user message went in.
    let (_, messages) = get(&base, &format!("/v1/groups/{id}/messages")).await;
    assert_eq!(
        contents(&messages),
        [
            ("user".to_owned(), "first".to_owned()),
            ("a".to_owned(), "a answers".to_owned()),
            ("b".to_owned(), "b answers".to_owned()),
        ]
    );
    // No node holds the group between requests: memory stays bounded.
    let released = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while app.runtime().groups.open_groups() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(released.is_ok(), "the group was released after its stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_a_round_one_runs_it_and_the_other_answers_409() {
    let server = slow_llm(std::time::Duration::from_millis(200)).await;
    let (_dir, node_a, node_b, id) = two_nodes_with_a_group(&server).await;
    let path = format!("/v1/groups/{id}/messages");
    let (on_a, on_b) = tokio::join!(
        post(&node_a, &path, json!({"content": "from A"})),
        post(&node_b, &path, json!({"content": "from B"})),
    );
    let mut statuses = [on_a.0.as_u16(), on_b.0.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{on_a:?} {on_b:?}");
    let loser = if on_a.0 == StatusCode::CONFLICT {
        &on_a.1
    } else {
        &on_b.1
    };
    // Refused as soon as it saw the other node's round in the stored
    // record, or when its commit lost the compare-and-swap.
    assert!(
        matches!(
            loser["code"].as_str(),
            Some("round_in_progress" | "group_conflict")
        ),
        "{loser}"
    );
    // The history holds one round, whole: the loser stored nothing.
    let (_, messages) = get(&node_b, &path).await;
    let history = contents(&messages);
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(
        &history[1..],
        [
            ("a".to_owned(), "a answers".to_owned()),
            ("b".to_owned(), "b answers".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_round_is_cut_off_and_the_round_goes_on() {
    let server = MockLlm::start().await.unwrap();
    // Long answers, streamed word by word: some 60 MB of deltas, far more
    // than the buffer and the loopback socket hold (autotuning lets one
    // buffer 32 MB here).
    let words = format!("{} ", "x".repeat(10_000)).repeat(3_000);
    server.respond_with(move |_| MockReply::text(words.clone()));
    let (app, base) = start(ServerConfig {
        sse_buffer: 16,
        sse_stall_ms: 300,
        max_body_bytes: 64 * 1024 * 1024,
        ..with_llm(&server, memory())
    })
    .await;
    let (_, group) = post(
        &base,
        "/v1/groups",
        json!({"agents": [agent("a"), agent("b")]}),
    )
    .await;
    let id = group["id"].as_str().unwrap().to_owned();
    let mut stream = open_round(&base, &id, "talk at length").await;
    // It reads nothing until the round is over: the round goes on without
    // it, and lets go of the group.
    let done = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let (_, read) = get(&base, &format!("/v1/groups/{id}")).await;
            if read["roundsCompleted"] == 1 && app.runtime().groups.open_groups() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "the round finished and the group was released"
    );
    let mut last = None;
    while let Some((name, _)) = stream.next().await {
        last = Some(name);
    }
    assert_eq!(
        last.as_deref(),
        Some("lagged"),
        "the stalled client was cut off"
    );
}
