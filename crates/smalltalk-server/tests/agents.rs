//! Agents on other hosts over HTTP: register, heartbeats with phase and
//! progress, a missed HTTP heartbeat detected like any other, back to
//! active when heartbeats resume, deregister.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use smalltalk_server::ServerConfig;

mod common;

async fn start() -> (smalltalk_server::AppState, String) {
    common::start(ServerConfig {
        heartbeat_interval_ms: 50,
        ..common::memory()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_agent_is_watched_through_its_http_heartbeats() {
    let (app, base) = start().await;
    let client = reqwest::Client::new();
    let registered = client
        .post(format!("{base}/v1/agents"))
        .json(&json!({"agentId": "remote-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let again = client
        .post(format!("{base}/v1/agents"))
        .json(&json!({"agentId": "remote-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);

    // A few heartbeats, paced like an agent would send them.
    for _ in 0..3 {
        let beat = client
            .post(format!("{base}/v1/agents/remote-1/heartbeat"))
            .json(&json!({"phase": "llm-call", "progress": 7}))
            .send()
            .await
            .unwrap();
        assert_eq!(beat.status(), StatusCode::NO_CONTENT);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let health = &app.runtime().health;
    // Silent: missed heartbeats count like any other.
    assert!(
        health
            .wait_for_state(
                "remote-1",
                smalltalk::types::HealthState::Disconnected,
                Duration::from_secs(10)
            )
            .await
            .unwrap(),
        "a missed HTTP heartbeat disconnects the agent"
    );
    // What the monitor last heard is what the agent sent.
    let view: Value = client
        .get(format!("{base}/v1/agents/remote-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["state"], "disconnected");
    assert_eq!(view["phase"], "llm-call");
    assert_eq!(view["progress"], 7);
    assert!(view["lastError"].is_string() || view["missedBeats"].as_u64() > Some(0));
    // Heartbeats again: back to active.
    let resume = async {
        loop {
            client
                .post(format!("{base}/v1/agents/remote-1/heartbeat"))
                .json(&json!({"progress": 8}))
                .send()
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let active = health.wait_for_state(
        "remote-1",
        smalltalk::types::HealthState::Active,
        Duration::from_secs(10),
    );
    tokio::select! {
        back = active => assert!(back.unwrap(), "heartbeats bring it back"),
        () = resume => unreachable!(),
    }
    let list: Value = client
        .get(format!("{base}/v1/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["agentId"], "remote-1");

    for (method, path, body, status) in [
        (
            "POST",
            "/v1/agents",
            json!({"agentId": "bad id!"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/agents/ghost/heartbeat",
            json!({}),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/v1/agents/remote-1/heartbeat",
            json!({"phase": "<script>"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path} {body}");
    }
    let gone = client
        .delete(format!("{base}/v1/agents/remote-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let missing = client
        .get(format!("{base}/v1/agents/remote-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    app.shutdown().await.unwrap();
}
