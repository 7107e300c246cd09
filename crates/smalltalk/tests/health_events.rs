//! The health monitor and the event bus, wired through their ports:
//! transitions are published, and a recovered agent gets what it missed.

#![cfg(all(feature = "health", feature = "events"))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk::health::{AgentError, Heartbeat};
use smalltalk::types::{AgentState, HealthState, RecoveryStrategy};
use smalltalk::{
    AgentHealthMonitor, Delivery, EventBus, HealthConfig, MonitoredAgent, Outcome, PublishOptions,
    SubscribeOptions,
};

#[derive(Debug, Default)]
struct Flaky {
    down: AtomicBool,
}

#[async_trait]
impl MonitoredAgent for Flaky {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(AgentError::Failed("down".into()));
        }
        Ok(Heartbeat::idle(0))
    }
    async fn probe(&self) -> Result<(), AgentError> {
        Ok(())
    }
    async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
        self.down.store(false, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_go_onto_the_bus_and_recovery_replays_missed_events() -> anyhow::Result<()> {
    let bus = EventBus::in_memory().await?;
    // What the agent handles, and what an observer sees of its health.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let work = bus
        .subscribe(
            "task.*",
            "worker",
            {
                let handled = handled.clone();
                move |delivery: Delivery| {
                    handled
                        .lock()
                        .unwrap()
                        .push((delivery.event().topic.to_string(), delivery.is_replay()));
                    async { Outcome::Ack }
                }
            },
            SubscribeOptions::default(),
        )
        .await?;
    let health = Arc::new(Mutex::new(Vec::new()));
    let observer = bus
        .subscribe(
            "agent.health-changed",
            "observer",
            {
                let health = health.clone();
                move |delivery: Delivery| {
                    health.lock().unwrap().push(
                        delivery.event().payload.to_value().unwrap()["to"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    );
                    async { Outcome::Ack }
                }
            },
            SubscribeOptions::default(),
        )
        .await?;
    let monitor = AgentHealthMonitor::builder()
        .config(HealthConfig {
            heartbeat_interval: Duration::from_millis(20),
            activity_timeout: Duration::from_millis(200),
            probe_interval: Duration::from_secs(60),
            ..Default::default()
        })
        .events(Arc::new(bus.clone()))
        .replayer(Arc::new(bus.clone()))
        .build()?;
    let agent = Arc::new(Flaky::default());
    monitor.register(
        "worker",
        agent.clone(),
        RecoveryStrategy {
            initial_backoff: Duration::from_millis(1),
            ..Default::default()
        },
        None,
    )?;
    monitor.sweep().await;
    bus.publish(
        "task.before",
        serde_json::json!({}),
        PublishOptions::default(),
    )
    .await?;
    agent.down.store(true, Ordering::SeqCst);
    let _sweeper = monitor.spawn();
    // Three transitions seen, and the event handled twice (live, then by
    // the replay after the recovery).
    let wait = Duration::from_secs(10);
    assert!(
        observer.wait_until(|stats| stats.acked >= 3, wait).await,
        "{health:?}"
    );
    assert!(
        work.wait_until(|stats| stats.acked >= 2, wait).await,
        "{handled:?}"
    );
    assert_eq!(
        health.lock().unwrap().clone(),
        ["disconnected", "recovering", "active"]
    );
    assert_eq!(monitor.status("worker")?.state, HealthState::Active);
    // task.before was handled live, then again by the replay after the
    // recovery (published after the last good heartbeat).
    assert_eq!(
        handled.lock().unwrap().clone(),
        [
            ("task.before".to_owned(), false),
            ("task.before".to_owned(), true)
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_system_pauses_new_sessions() -> anyhow::Result<()> {
    let store = smalltalk::open("memory://").await?;
    let sessions = smalltalk::SessionManager::new(store);
    let monitor = AgentHealthMonitor::builder()
        .config(HealthConfig {
            heartbeat_interval: Duration::from_millis(20),
            probe_interval: Duration::from_secs(60),
            ..Default::default()
        })
        .degradation_control(Arc::new(sessions.clone()))
        .build()?;
    let alert_only = RecoveryStrategy {
        kind: smalltalk::types::RecoveryKind::Alert,
        ..Default::default()
    };
    let mut agents = Vec::new();
    for index in 0..4 {
        let agent = Arc::new(Flaky::default());
        monitor.register(format!("a{index}"), agent.clone(), alert_only.clone(), None)?;
        agents.push(agent);
    }
    sessions.create(Default::default()).await?;
    for agent in &agents {
        agent.down.store(true, Ordering::SeqCst);
    }
    let _sweeper = monitor.spawn();
    assert!(
        monitor
            .wait_for_degraded(true, Duration::from_secs(10))
            .await,
        "never degraded"
    );
    assert!(sessions.is_degraded());
    assert!(matches!(
        sessions.create(Default::default()).await,
        Err(smalltalk::session::Error::Paused { .. })
    ));
    Ok(())
}
