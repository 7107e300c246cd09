//! Every LLM path through reqwest to a real OpenAI-compatible server on
//! 127.0.0.1 (`smalltalk_e2e::mock_llm`): the client's retries, breaker,
//! timeouts, streaming and tool calls; LLM agents in a group; the LLM
//! selector's validation, retries with the exact error, and its fallback.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use smalltalk::groups::llm::{
    BreakerConfig, BreakerState, ChatMessage, ChatRequest, Error as LlmError, LlmClient, LlmConfig,
    Tool,
};
use smalltalk::groups::{
    Agent, GroupManager, GroupSpec, LlmAgent, Participant, SelectionSource, Strategy, Termination,
    Transitions,
};
use smalltalk::types::{AgentId, Backoff};
use smalltalk_e2e::mock_llm::{MockLlm, MockReply, eligible_in};

fn id(name: &str) -> AgentId {
    AgentId::parse(name).unwrap()
}

fn config(server: &MockLlm) -> LlmConfig {
    let mut config = LlmConfig::new(server.base_url(), "mock-model");
    config.backoff = Backoff::constant(Duration::from_millis(5));
    config.timeout = Duration::from_secs(5);
    config
}

fn hello() -> ChatRequest {
    ChatRequest::new(vec![ChatMessage::user("hello")])
}

#[tokio::test]
async fn the_client_retries_429_and_5xx_honouring_retry_after() {
    let server = MockLlm::start().await.unwrap();
    let client = LlmClient::new(config(&server)).unwrap();
    server.push([
        MockReply::Status {
            status: 429,
            retry_after: Some("0.2".into()),
        },
        MockReply::Status {
            status: 503,
            retry_after: None,
        },
        MockReply::text("finally"),
    ]);
    let started = std::time::Instant::now();
    let answer = client.chat(&hello()).await.unwrap();
    assert_eq!(answer.text(), "finally");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "Retry-After was honoured"
    );
    let stats = client.stats();
    assert_eq!((stats.calls, stats.retries, stats.failures), (1, 2, 0));
    assert!(stats.usage.total_tokens > 0, "usage recorded");
    assert_eq!(server.requests()[0]["model"], "mock-model");

    // A server asking to wait too long fails the call at once.
    server.push([MockReply::Status {
        status: 429,
        retry_after: Some("3600".into()),
    }]);
    let refused = client.chat(&hello()).await;
    assert!(
        matches!(refused, Err(LlmError::RateLimited { retry_after: Some(wait) }) if wait == Duration::from_secs(3600)),
        "{refused:?}"
    );
    // A 4xx is not retried.
    server.push([MockReply::Status {
        status: 400,
        retry_after: None,
    }]);
    let before = server.requests().len();
    let refused = client.chat(&hello()).await;
    assert!(
        matches!(refused, Err(LlmError::Status { status: 400, .. })),
        "{refused:?}"
    );
    assert_eq!(server.requests().len(), before + 1);
}

#[tokio::test]
async fn malformed_answers_timeouts_and_the_breaker_are_typed_errors() {
    let server = MockLlm::start().await.unwrap();
    let mut config = config(&server);
    config.max_retries = 0;
    config.timeout = Duration::from_millis(100);
    config.breaker = BreakerConfig {
        // An unreadable answer, a timeout and a 5xx: three strikes.
        failure_threshold: 3,
        open_for: Duration::from_millis(300),
    };
    let client = LlmClient::new(config).unwrap();
    server.push([MockReply::Malformed]);
    assert!(matches!(
        client.chat(&hello()).await,
        Err(LlmError::Decode { .. })
    ));
    server.push([
        MockReply::Slow(Duration::from_secs(2), Box::new(MockReply::text("late"))),
        MockReply::Status {
            status: 500,
            retry_after: None,
        },
    ]);
    assert!(matches!(
        client.chat(&hello()).await,
        Err(LlmError::Timeout { .. })
    ));
    assert!(matches!(
        client.chat(&hello()).await,
        Err(LlmError::Status { status: 500, .. })
    ));
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let sent = server.requests().len();
    assert!(matches!(
        client.chat(&hello()).await,
        Err(LlmError::CircuitOpen { .. })
    ));
    assert_eq!(
        server.requests().len(),
        sent,
        "an open breaker sends nothing"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        client.chat(&hello()).await.unwrap().text(),
        "echo: hello",
        "the probe closes it"
    );
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_deadline_bounds_the_retries_and_a_cap_bounds_the_answer() {
    let server = MockLlm::start().await.unwrap();
    let mut config = config(&server);
    config.max_retries = 10;
    config.backoff = Backoff::constant(Duration::from_millis(150));
    config.deadline = Duration::from_millis(400);
    config.max_response_bytes = 1024;
    config.breaker.failure_threshold = 100;
    let client = LlmClient::new(config).unwrap();
    server.respond_with(|_| MockReply::Status {
        status: 503,
        retry_after: None,
    });
    let failed = client.chat(&hello()).await;
    assert!(
        matches!(failed, Err(LlmError::Status { status: 503, .. })),
        "{failed:?}"
    );
    let sent = server.requests().len();
    assert!(
        (2..=3).contains(&sent),
        "10 retries allowed, but the 400 ms deadline leaves room for 2 waits of 150 ms: {sent} requests"
    );
    // A slow answer is cut at the deadline, not at the (longer) timeout.
    server.respond_with(|_| {
        MockReply::Slow(Duration::from_secs(3), Box::new(MockReply::text("late")))
    });
    let failed = client.chat(&hello()).await;
    assert!(
        matches!(failed, Err(LlmError::Timeout { after }) if after == Duration::from_millis(400)),
        "{failed:?}"
    );
    // Answers past max_response_bytes are refused, whole or streamed.
    let huge = "word ".repeat(400);
    server.respond_with(move |_| MockReply::text(huge.clone()));
    let refused = client.chat(&hello()).await;
    assert!(
        matches!(&refused, Err(LlmError::Decode { reason }) if reason.contains("larger than 1024")),
        "{refused:?}"
    );
    let mut deltas = 0;
    let mut count = |_: &str| deltas += 1;
    let refused = client.chat_stream(&hello(), &mut count).await;
    assert!(
        matches!(&refused, Err(LlmError::Decode { reason }) if reason.contains("grew past 1024")),
        "{refused:?}"
    );
    // One event that never ends (no blank line) is cut at the cap too.
    server.respond_with(|_| MockReply::Raw {
        content_type: "text/event-stream",
        body: format!("data: {}", "x".repeat(64 * 1024)),
    });
    let refused = client.chat_stream(&hello(), &mut count).await;
    assert!(
        matches!(&refused, Err(LlmError::Decode { reason }) if reason.contains("grew past 1024")),
        "{refused:?}"
    );
    // A chunk naming tool call 4,000,000,000 is refused, not allocated.
    server.respond_with(|_| MockReply::Raw {
        content_type: "text/event-stream",
        body: "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":4000000000}]}}]}\n\n"
            .into(),
    });
    let refused = client.chat_stream(&hello(), &mut count).await;
    assert!(
        matches!(&refused, Err(LlmError::Decode { reason }) if reason.contains("out of order")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn streams_deliver_deltas_and_tool_calls_pass_through() {
    let server = MockLlm::start().await.unwrap();
    let client = LlmClient::new(config(&server)).unwrap();
    server.push([MockReply::text("one two three")]);
    let mut deltas = Vec::new();
    let mut sink = |delta: &str| deltas.push(delta.to_owned());
    let answer = client.chat_stream(&hello(), &mut sink).await.unwrap();
    assert_eq!(answer.text(), "one two three");
    assert_eq!(deltas, ["one ", "two ", "three"]);
    assert!(answer.usage.is_some(), "usage from the last chunk");
    let sent = &server.requests()[0];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);

    server.push([MockReply::ToolCall {
        name: "search".into(),
        arguments: "{\"q\":\"alignment\"}".into(),
    }]);
    let mut request = hello();
    request.tools.push(Tool::function(
        "search",
        "searches",
        serde_json::json!({"type": "object"}),
    ));
    let answer = client.chat(&request).await.unwrap();
    assert_eq!(answer.tool_calls()[0].function.name, "search");
    assert_eq!(
        server.requests()[1]["tools"][0]["function"]["name"],
        "search"
    );
}

/// The agent a chat request is for, from its system prompt.
fn speaker_in(request: &Value) -> Option<String> {
    let system = request["messages"][0]["content"].as_str()?;
    let before = &system[..system.find(") in a group conversation")?];
    let start = before.rfind("You are ")? + "You are ".len();
    Some(before[start..].split(' ').next()?.to_owned())
}

/// The last speaker a selection request names.
fn last_speaker_in(request: &Value) -> Option<String> {
    let system = request["messages"][0]["content"].as_str()?;
    let line = system
        .lines()
        .find(|line| line.starts_with("The last speaker was "))?;
    Some(
        line["The last speaker was ".len()..]
            .trim_end_matches('.')
            .to_owned(),
    )
}

fn llm_trio(server: &MockLlm) -> (GroupManager, Vec<Participant>) {
    let client = LlmClient::new(config(server)).unwrap();
    let store = Arc::new(smalltalk::storage::MemoryStore::new());
    let mut builder = GroupManager::builder(store).selector_llm(client.clone());
    let mut participants = Vec::new();
    for (name, role, description) in [
        ("researcher", "research", "finds facts and sources"),
        ("writer", "writing", "turns findings into prose"),
        ("reviewer", "review", "checks drafts for errors"),
    ] {
        let agent: Arc<dyn Agent> = Arc::new(
            LlmAgent::new(id(name), client.clone())
                .system_prompt(format!("You are the {role} expert.")),
        );
        builder = builder.agent(agent);
        participants.push(Participant::new(id(name), role).description(description));
    }
    (builder.build().unwrap(), participants)
}

#[tokio::test]
async fn the_seed_scenario_three_llm_agents_with_llm_selection() {
    let server = MockLlm::start().await.unwrap();
    server.respond_with(|request| {
        if !eligible_in(request).is_empty() {
            // Research, then write, then review.
            let next = match last_speaker_in(request).as_deref() {
                None => "researcher",
                Some("researcher") => "writer",
                _ => "reviewer",
            };
            return MockReply::Text(format!(
                "Here is my choice: {{\"agentId\": \"{next}\", \"confidence\": 0.8, \"reasoning\": \"{next} fits\"}}"
            ));
        }
        let speaker = speaker_in(request).unwrap_or_default();
        MockReply::text(format!("{speaker} on alignment: point"))
    });
    let (groups, participants) = llm_trio(&server);
    let spec = GroupSpec::new(participants)
        .strategy(Strategy::LlmBased)
        .termination(Termination::MaxTurns(3));
    let group = groups.create_group(spec).await.unwrap();
    let round = groups
        .handle_message(group.id, "What are the key challenges in AI alignment?")
        .await
        .unwrap();
    let history = groups.history(group.id).await.unwrap();
    let transcript: Vec<(Option<&str>, &str)> = history
        .iter()
        .map(|m| (m.agent_id.as_ref().map(AgentId::as_str), m.content.as_str()))
        .collect();
    assert_eq!(
        transcript,
        [
            (None, "What are the key challenges in AI alignment?"),
            (Some("researcher"), "researcher on alignment: point"),
            (Some("writer"), "writer on alignment: point"),
            (Some("reviewer"), "reviewer on alignment: point"),
        ]
    );
    for (turn, expected) in round.turns.iter().zip(["researcher", "writer", "reviewer"]) {
        let selection = &turn.selection;
        assert_eq!(selection.agent_id.as_str(), expected);
        assert_eq!(
            (selection.attempts, selection.source),
            (1, SelectionSource::Strategy)
        );
        assert_eq!(selection.confidence, 0.8);
        assert_eq!(selection.reason, format!("{expected} fits"));
    }
    // The writer saw the researcher's words as another participant's.
    let writer_request = server
        .requests()
        .into_iter()
        .find(|request| {
            speaker_in(request).as_deref() == Some("writer") && eligible_in(request).is_empty()
        })
        .unwrap();
    let contents: Vec<&str> = writer_request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        contents.contains(&"[researcher] researcher on alignment: point"),
        "{contents:?}"
    );
    assert_eq!(groups.stats().selection_success_rate, 1.0);
}

#[tokio::test]
async fn a_selector_naming_the_excluded_previous_speaker_never_livelocks() {
    let server = MockLlm::start().await.unwrap();
    // The selector always names the previous speaker, which may not repeat.
    server.respond_with(|request| {
        if !eligible_in(request).is_empty() {
            let last = last_speaker_in(request).unwrap_or_else(|| "researcher".into());
            return MockReply::pick(&last);
        }
        MockReply::text(format!(
            "{} speaks",
            speaker_in(request).unwrap_or_default()
        ))
    });
    let (groups, participants) = llm_trio(&server);
    let ids: Vec<AgentId> = participants.iter().map(|p| p.agent_id.clone()).collect();
    let spec = GroupSpec::new(participants)
        .strategy(Strategy::LlmBased)
        .transitions(Transitions::no_repeats(&ids))
        .termination(Termination::MaxTurns(6));
    let group = groups.create_group(spec).await.unwrap();
    let round = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(round.turns.len(), 6, "the round ended by its condition");
    let mut previous: Option<AgentId> = None;
    for turn in &round.turns {
        let selection = &turn.selection;
        if let Some(previous) = &previous {
            assert_ne!(&selection.agent_id, previous, "never the excluded speaker");
            assert_eq!(selection.source, SelectionSource::Fallback);
            assert_eq!(selection.attempts, 3, "at most 3 attempts");
            assert!(
                selection.reason.contains("may not speak now"),
                "{}",
                selection.reason
            );
        }
        previous = Some(selection.agent_id.clone());
    }
    // Each retry was told the exact error of the answer before it.
    let retries: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|request| {
            request["messages"].as_array().unwrap().len() > 2 && !eligible_in(request).is_empty()
        })
        .collect();
    assert!(!retries.is_empty());
    let feedback = retries[0]["messages"][3]["content"].as_str().unwrap();
    assert!(
        feedback.starts_with("That answer is invalid: agentId"),
        "{feedback}"
    );
    assert!(feedback.contains("may not speak now"), "{feedback}");
}

#[tokio::test]
async fn invalid_selector_answers_are_fed_back_until_one_is_valid() {
    let server = MockLlm::start().await.unwrap();
    let (groups, participants) = llm_trio(&server);
    let spec = GroupSpec::new(participants).strategy(Strategy::LlmBased);
    let group = groups.create_group(spec).await.unwrap();
    for (answers, expected_attempts, expected_error) in [
        (vec![MockReply::text("")], 2, "the answer was empty"),
        (vec![MockReply::pick("mallory")], 2, "is not a participant"),
        (
            vec![MockReply::text("I think the writer.")],
            2,
            "no JSON object",
        ),
        (vec![MockReply::Malformed], 1, ""),
    ] {
        server.clear_requests();
        server.push(answers);
        server.push([MockReply::pick("writer")]);
        let selection = groups.select_speaker(group.id).await.unwrap().unwrap();
        if expected_attempts == 1 {
            // An unreadable answer is a failed call: straight to the fallback.
            assert_eq!(selection.source, SelectionSource::Fallback);
            assert!(
                selection.reason.contains("call failed"),
                "{}",
                selection.reason
            );
            continue;
        }
        assert_eq!(selection.agent_id.as_str(), "writer");
        assert_eq!(selection.attempts, expected_attempts);
        let second = &server.requests()[1];
        let feedback = second["messages"][3]["content"].as_str().unwrap();
        assert!(feedback.contains(expected_error), "{feedback}");
    }
}

#[tokio::test]
async fn agents_described_by_configuration_run_on_any_manager_with_the_endpoint() {
    use smalltalk::groups::{Error as GroupError, LlmProfile};
    let server = MockLlm::start().await.unwrap();
    server.respond_with(|request| {
        let speaker = speaker_in(request).unwrap_or_default();
        MockReply::text(format!("{speaker} answers"))
    });
    let store = Arc::new(smalltalk::storage::MemoryStore::new());
    let client = LlmClient::new(config(&server)).unwrap();
    let manager = |store: Arc<smalltalk::storage::MemoryStore>| {
        GroupManager::builder(store)
            .llm_endpoint("default", client.clone())
            .build()
            .unwrap()
    };
    let first = manager(store.clone());
    assert_eq!(first.llm_endpoints(), ["default"]);
    let profile = |prompt: &str| LlmProfile {
        system_prompt: prompt.into(),
        model: Some("profile-model".into()),
        max_tokens: Some(64),
        ..LlmProfile::default()
    };
    let spec = GroupSpec::new(vec![
        Participant::new(id("planner"), "planning").llm(profile("You plan.")),
        Participant::new(id("critic"), "review").llm(profile("You critique.")),
    ])
    .termination(Termination::MaxTurns(2));

    // A profile naming an endpoint the manager lacks, or a broken one, is
    // refused before anything is written.
    let mut unknown = spec.clone();
    unknown.participants[1].llm.as_mut().unwrap().endpoint = Some("elsewhere".into());
    assert!(matches!(
        first.create_group(unknown).await,
        Err(GroupError::UnknownEndpoint { endpoint, .. }) if endpoint == "elsewhere"
    ));
    let mut broken = spec.clone();
    broken.participants[0].llm.as_mut().unwrap().max_tokens = Some(0);
    assert!(matches!(
        first.create_group(broken).await,
        Err(GroupError::InvalidGroup { .. })
    ));
    let mut huge = spec.clone();
    huge.participants[0].llm.as_mut().unwrap().system_prompt =
        "x".repeat(smalltalk::groups::MAX_PROMPT_LEN + 1);
    assert!(matches!(
        first.create_group(huge).await,
        Err(GroupError::InvalidGroup { .. })
    ));

    let group = first.create_group(spec).await.unwrap();
    let round = first.handle_message(group.id, "plan it").await.unwrap();
    assert_eq!(round.turns.len(), 2);
    let answers: Vec<String> = first
        .history(group.id)
        .await
        .unwrap()
        .into_iter()
        .skip(1)
        .map(|m| m.content)
        .collect();
    assert_eq!(answers, ["planner answers", "critic answers"]);
    let sent = server.requests();
    assert_eq!(sent[0]["model"], "profile-model");
    assert_eq!(sent[0]["max_tokens"], 64);
    assert!(
        sent[0]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("You plan."),
        "{:?}",
        sent[0]["messages"][0]
    );

    // The profiles were saved with the group: a second manager with no
    // agent registered runs the next round.
    first.release(group.id).await;
    let second = manager(store);
    let reopened = second.open_group(group.id).await.unwrap();
    assert_eq!(
        reopened.record.spec.participants[1].llm,
        Some(profile("You critique."))
    );
    second.handle_message(group.id, "again").await.unwrap();
    assert_eq!(second.history(group.id).await.unwrap().len(), 6);
}
