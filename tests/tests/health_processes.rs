//! Agents in real child processes: SIGKILL, SIGSTOP and a zombie are each
//! detected and healed, with the saved state restored.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use smalltalk::storage::MemoryStore;
use smalltalk::types::{AgentId, AgentState, HealthState, RecoveryStrategy, Timestamp};
use smalltalk_health::{AgentHealthMonitor, HealthConfig, ProcessAgent, ProcessCommand};

const WORKER: &str = env!("CARGO_BIN_EXE_agent-worker");

fn command() -> ProcessCommand {
    ProcessCommand {
        program: WORKER.into(),
        args: Vec::new(),
    }
}

/// Sends a real signal with kill(1).
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits (up to 10 s) for the agent to run in a new process and be active
/// again; `false` if it did not.
async fn recovered(monitor: &AgentHealthMonitor, id: &str, agent: &ProcessAgent, old: u32) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if agent.pid().await.is_some_and(|pid| pid != old)
            && monitor.status(id).unwrap().state == HealthState::Active
        {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stopped_and_zombie_children_are_detected_and_restored() {
    let monitor = AgentHealthMonitor::builder()
        .config(HealthConfig {
            heartbeat_interval: Duration::from_millis(100),
            // Generous, so a busy CI machine does not fail healthy agents:
            // 400 ms of silence (interval x missed) before one is failed.
            activity_timeout: Duration::from_millis(500),
            max_missed: 4,
            // The zombie's hung probe is caught well before that silence
            // limit (a probe due every 100 ms, failed after 150 ms).
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(150),
            restoration_timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .states(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let strategy = RecoveryStrategy {
        initial_backoff: Duration::from_millis(10),
        max_restarts: 100,
        ..Default::default()
    };
    let mut agents = Vec::new();
    for index in 0..5 {
        let id = format!("agent-{index}");
        let mut state = AgentState::new(AgentId::parse(&id).unwrap(), Timestamp::now());
        state
            .context
            .insert("memory".into(), json!(format!("remember {id}")));
        monitor.save_state(&state).await.unwrap();
        let agent = Arc::new(ProcessAgent::spawn(command(), Some(state)).await.unwrap());
        monitor
            .register(&id, agent.clone(), strategy.clone(), None)
            .unwrap();
        agents.push((id, agent));
    }
    let _sweeper = monitor.spawn();

    // SIGKILL: detected, restarted with its saved state, the conversation
    // continues.
    let (id, agent) = &agents[0];
    assert_eq!(
        agent.handle(json!({"say": "hi"})).await.unwrap()["handled"],
        1
    );
    let pid = agent.pid().await.unwrap();
    signal(pid, "KILL");
    assert!(
        recovered(&monitor, id, agent, pid).await,
        "{:?}",
        monitor.status(id)
    );
    let reply = agent.handle(json!({"say": "still there?"})).await.unwrap();
    assert_eq!(reply["memory"], "remember agent-0");
    assert_ne!(reply["pid"], pid);

    // SIGSTOP: heartbeats time out; the stopped process is replaced.
    let (id, agent) = &agents[1];
    let pid = agent.pid().await.unwrap();
    signal(pid, "STOP");
    assert!(
        recovered(&monitor, id, agent, pid).await,
        "{:?}",
        monitor.status(id)
    );
    assert_eq!(
        agent.handle(json!({"say": "back"})).await.unwrap()["memory"],
        "remember agent-1"
    );

    // A zombie answers heartbeats but not work: the probe finds it.
    let (id, agent) = &agents[2];
    let pid = agent.pid().await.unwrap();
    agent.handle(json!({"become": "zombie"})).await.unwrap();
    assert!(
        recovered(&monitor, id, agent, pid).await,
        "{:?}",
        monitor.status(id)
    );
    assert_eq!(
        agent.handle(json!({"say": "alive"})).await.unwrap()["memory"],
        "remember agent-2"
    );
    let reason = monitor.status(id).unwrap().last_error.unwrap_or_default();
    assert!(reason.contains("probe"), "{reason}");

    // 20 kills in a row (SC-004).
    let (id, agent) = &agents[3];
    let (mut recovered_count, mut failed) = (0, 0);
    for _ in 0..20 {
        let pid = agent.pid().await.unwrap();
        signal(pid, "KILL");
        if recovered(&monitor, id, agent, pid).await {
            recovered_count += 1;
        } else {
            failed += 1;
        }
    }
    eprintln!("20 SIGKILLs in a row: recovered={recovered_count} failed={failed}");
    assert_eq!((recovered_count, failed), (20, 0));
    assert_eq!(
        agent
            .handle(json!({"say": "after all that"}))
            .await
            .unwrap()["memory"],
        "remember agent-3"
    );

    // The one left alone was never touched.
    let untouched = monitor.status(&agents[4].0).unwrap();
    assert_eq!(untouched.state, HealthState::Active);
    assert_eq!(untouched.recovery_attempts, 0);
    let stats = monitor.stats();
    assert_eq!(stats.recovery_successes, 23);
    assert_eq!(stats.agents[&HealthState::Active], 5);
}

/// A SIGSTOPped child whose input pipe is full blocks no caller: requests
/// beyond the queue fail at once, `handle` times out, and a restart (which
/// SIGKILLs the stopped child) goes through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_child_with_a_full_pipe_blocks_no_caller() {
    use smalltalk_health::MonitoredAgent;
    let agent = Arc::new(
        ProcessAgent::spawn(command(), None)
            .await
            .unwrap()
            .with_handle_timeout(Duration::from_millis(200)),
    );
    let pid = agent.pid().await.unwrap();
    signal(pid, "STOP");
    // Far more than a pipe holds (64 KiB): large messages to handle.
    let big = json!({ "text": "x".repeat(16 * 1024) });
    let mut calls = Vec::new();
    for _ in 0..200 {
        let (agent, big) = (Arc::clone(&agent), big.clone());
        calls.push(tokio::spawn(async move { agent.handle(big).await }));
    }
    let every_call_answered = tokio::time::timeout(Duration::from_secs(10), async {
        for call in calls {
            assert!(call.await.unwrap().is_err(), "a stopped child answered");
        }
    })
    .await;
    assert!(
        every_call_answered.is_ok(),
        "a caller was blocked by the full pipe"
    );
    let restarted = tokio::time::timeout(Duration::from_secs(10), agent.restart(None)).await;
    assert!(
        matches!(restarted, Ok(Ok(()))),
        "the restart was blocked: {restarted:?}"
    );
    assert_ne!(agent.pid().await, Some(pid));
    tokio::time::timeout(Duration::from_secs(10), agent.probe())
        .await
        .expect("the new child answers")
        .unwrap();
}
