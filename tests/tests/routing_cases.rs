//! The labelled routing cases (SC-014) through the real selection
//! pipeline, against the local OpenAI-compatible server: each case's first
//! answer is invalid in one of the ways models get it wrong, and the
//! pipeline must reject it, feed the exact error back, and accept the
//! valid second answer. (With a real model, `cargo xtask report` prints
//! the accuracy on the same cases.)

use std::time::Duration;

use smalltalk::groups::SelectionSource;
use smalltalk::groups::llm::{LlmClient, LlmConfig};
use smalltalk::types::Backoff;
use smalltalk_e2e::mock_llm::{MockLlm, MockReply, eligible_in};
use smalltalk_e2e::routing::{RoutingCases, USER};

/// Wrong answers, with the error each must produce.
fn wrong_answer(index: usize, stranger: &str) -> (MockReply, &'static str) {
    match index % 5 {
        0 => (
            MockReply::text("The next speaker should clearly be the expert."),
            "no JSON object",
        ),
        1 => (MockReply::pick(stranger), "is not a participant"),
        2 => (MockReply::text(""), "the answer was empty"),
        3 => (
            MockReply::text(r#"{"speaker": "someone", "confidence": 0.4}"#),
            "has no agentId",
        ),
        _ => (
            MockReply::text(r#"{"agentId": 7, "confidence": 0.4}"#),
            "must be a string",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_labelled_case_routes_through_a_validating_pipeline() {
    let cases = RoutingCases::load().unwrap();
    assert!(
        cases.cases.len() >= 50,
        "SC-014 asks for at least 50 cases, the fixture has {}",
        cases.cases.len()
    );
    let mut names: Vec<&str> = cases.cases.iter().map(|case| case.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.cases.len(), "case names are unique");

    let server = MockLlm::start().await.unwrap();
    let mut config = LlmConfig::new(server.base_url(), "mock-model");
    config.backoff = Backoff::constant(Duration::from_millis(1));
    let client = LlmClient::new(config).unwrap();
    for (index, case) in cases.cases.iter().enumerate() {
        let (wrong, error) = wrong_answer(index, "mallory");
        server.clear_requests();
        server.push([
            wrong,
            MockReply::text(format!(
                "Here you go: {{\"agentId\": \"{}\", \"confidence\": 0.8, \"reasoning\": \"labelled\"}}",
                case.expected
            )),
        ]);
        let selection = smalltalk_e2e::routing::route(&cases, case, client.clone())
            .await
            .unwrap_or_else(|error| panic!("{}: {error:#}", case.name));
        let name = &case.name;
        assert_eq!(selection.agent_id, case.expected, "{name}");
        assert_eq!(selection.source, SelectionSource::Strategy, "{name}");
        assert_eq!(selection.attempts, 2, "{name}");
        assert_eq!(selection.confidence, 0.8, "{name}");
        assert_eq!(selection.reason, "labelled", "{name}");

        let requests = server.requests();
        assert_eq!(requests.len(), 2, "{name}: one wrong answer, one right");
        // The model was shown the group, who may speak, and the history.
        let first = &requests[0];
        let system = first["messages"][0]["content"].as_str().unwrap();
        for member in cases.members(case).unwrap() {
            let line = format!(
                "- {} ({}): {}",
                member.agent_id, member.role, member.description
            );
            assert!(system.contains(&line), "{name}: {line} missing");
        }
        let mut eligible = eligible_in(first);
        eligible.sort_unstable();
        let mut everyone: Vec<String> = cases
            .members(case)
            .unwrap()
            .iter()
            .map(|member| member.agent_id.to_string())
            .collect();
        everyone.sort_unstable();
        assert_eq!(eligible, everyone, "{name}: no one is throttled here");
        let transcript = first["messages"][1]["content"].as_str().unwrap();
        for said in &case.history {
            let line = format!("[{}] {}", said.from, said.text);
            assert!(transcript.contains(&line), "{name}: {line:?} missing");
        }
        let last = case.history.last().unwrap();
        if last.from != USER {
            assert!(
                system.contains(&format!("The last speaker was {}.", last.from)),
                "{name}"
            );
        }
        // The second request repeats the conversation and adds the wrong
        // answer and the exact error.
        let second = &requests[1]["messages"];
        assert_eq!(second[0], first["messages"][0], "{name}");
        assert_eq!(second[1], first["messages"][1], "{name}");
        assert_eq!(second[2]["role"], "assistant", "{name}");
        let feedback = second[3]["content"].as_str().unwrap();
        assert!(
            feedback.starts_with("That answer is invalid: ") && feedback.contains(error),
            "{name}: {feedback}"
        );
    }
}
