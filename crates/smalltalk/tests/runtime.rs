//! `Runtime`: one store, every capability, every port connected, one
//! shutdown.

#![cfg(all(
    feature = "session",
    feature = "events",
    feature = "health",
    feature = "state",
    feature = "groups"
))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk::health::{AgentError, Heartbeat};
use smalltalk::types::{AgentState, HealthState, RecoveryKind, RecoveryStrategy};
use smalltalk::{
    CreateOptions, Delivery, HealthConfig, Message, MonitoredAgent, Outcome, Role, Runtime,
    SessionConfig, SubscribeOptions, Timestamp,
};

/// An agent the test switches down; it records the state each restart
/// brings.
#[derive(Debug, Default)]
struct Switchable {
    down: AtomicBool,
    restored: Mutex<Vec<Option<AgentState>>>,
    restarted: tokio::sync::Notify,
}

impl Switchable {
    /// Waits (up to 10 s) for the first restart; the state it brought.
    async fn first_restart(&self) -> Option<AgentState> {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let restarted = self.restarted.notified();
                tokio::pin!(restarted);
                restarted.as_mut().enable();
                if let Some(state) = self.restored.lock().unwrap().first() {
                    return state.clone();
                }
                restarted.await;
            }
        })
        .await;
        waited.expect("never restarted")
    }
}

#[async_trait]
impl MonitoredAgent for Switchable {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(AgentError::Failed("down".into()));
        }
        Ok(Heartbeat::idle(0))
    }
    async fn probe(&self) -> Result<(), AgentError> {
        Ok(())
    }
    async fn restart(&self, state: Option<AgentState>) -> Result<(), AgentError> {
        self.restored.lock().unwrap().push(state);
        self.down.store(false, Ordering::SeqCst);
        self.restarted.notify_waiters();
        Ok(())
    }
}

fn recording(
    topics: Arc<tokio::sync::watch::Sender<Vec<String>>>,
) -> impl Fn(Delivery) -> std::future::Ready<Outcome> {
    move |delivery: Delivery| {
        topics.send_modify(|topics| topics.push(delivery.event().topic.to_string()));
        std::future::ready(Outcome::Ack)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_builder_wires_every_port_and_one_call_shuts_down() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("runtime.db").display());
    let runtime = Runtime::builder(&url)
        .health(HealthConfig {
            heartbeat_interval: Duration::from_millis(20),
            activity_timeout: Duration::from_millis(100),
            ..Default::default()
        })
        .build()
        .await?;
    let seen = Arc::new(tokio::sync::watch::Sender::new(Vec::new()));
    let _watch = runtime
        .events()
        .subscribe(
            ">",
            "watcher",
            recording(Arc::clone(&seen)),
            SubscribeOptions::default(),
        )
        .await?;

    // Sessions announce on the bus.
    let session = runtime.sessions().create(CreateOptions::default()).await?;
    runtime
        .sessions()
        .add_message(
            session.id,
            Message::new(Role::User, "hello", Timestamp::now()),
        )
        .await?;

    // The monitor's transitions go onto the bus, and enough failures
    // degrade the session manager (new sessions paused).
    let alert_only = RecoveryStrategy {
        kind: RecoveryKind::Alert,
        ..Default::default()
    };
    for index in 0..4 {
        let agent = Arc::new(Switchable::default());
        agent.down.store(true, Ordering::SeqCst);
        runtime
            .health()
            .register(format!("agent-{index}"), agent, alert_only.clone(), None)?;
    }
    for index in 0..4 {
        let down = runtime
            .health()
            .wait_for_state(
                &format!("agent-{index}"),
                HealthState::Disconnected,
                Duration::from_secs(10),
            )
            .await?;
        assert!(down, "agent-{index} was detected");
    }
    assert!(
        runtime
            .health()
            .wait_for_degraded(true, Duration::from_secs(10))
            .await,
        "never degraded"
    );
    assert!(runtime.sessions().is_degraded());
    let paused = runtime.sessions().create(CreateOptions::default()).await;
    assert!(
        matches!(paused, Err(smalltalk::session::Error::Paused { .. })),
        "{paused:?}"
    );
    let wanted = [
        "session:created",
        "session:message-added",
        "agent:health-changed",
    ];
    let mut topics = seen.subscribe();
    let all_seen = tokio::time::timeout(
        Duration::from_secs(10),
        topics.wait_for(|topics| {
            wanted.iter().all(|wanted| {
                topics
                    .iter()
                    .any(|topic| topic.replace('.', ":") == *wanted)
            })
        }),
    )
    .await
    // Not holding the watch's read guard: the handler writes to it.
    .is_ok();
    assert!(all_seen, "saw only {:?}", *seen.borrow());

    let store = Arc::clone(runtime.store());
    runtime.shutdown().await?;
    assert!(
        matches!(
            store.health_check().await,
            Err(smalltalk::StorageError::Closed)
        ),
        "the store is closed"
    );
    // Everything was stored: a new runtime over the same file reads it.
    let again = Runtime::open(&url).await?;
    let restored = again.sessions().restore(session.id).await?;
    assert_eq!(restored.messages.len(), 1);
    again.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_configuration_is_a_typed_error_naming_the_part() {
    let built = Runtime::builder("memory://")
        .sessions(SessionConfig {
            max_active_sessions: 0,
            ..Default::default()
        })
        .build()
        .await;
    assert!(
        matches!(built, Err(smalltalk::Error::Session(_))),
        "{built:?}"
    );
    let built = Runtime::builder("nosuch://x").build().await;
    assert!(
        matches!(built, Err(smalltalk::Error::Storage(_))),
        "{built:?}"
    );
    let built = Runtime::builder("memory://")
        .state(smalltalk::StateConfig {
            retention: Duration::ZERO,
            ..Default::default()
        })
        .build()
        .await;
    assert!(
        matches!(built, Err(smalltalk::Error::State(_))),
        "{built:?}"
    );
}

/// A session's state namespace goes with the session: purged, history
/// included, when it is invalidated, and when it is deleted; other
/// namespaces stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_state_is_purged_with_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let runtime = Runtime::builder(format!("sqlite://{}", dir.path().join("rt.db").display()))
        .build()
        .await?;
    let state = runtime.state();
    let shared =
        smalltalk::Namespace::agent(&smalltalk::AgentId::parse("planner")?).key("memory")?;
    state.put(&shared, serde_json::json!("shared")).await?;
    for invalidate in [true, false] {
        let session = runtime.sessions().create(CreateOptions::default()).await?;
        let notes = smalltalk::Namespace::session(session.id).key("notes")?;
        let first = state.put(&notes, serde_json::json!("private")).await?.entry;
        state.put(&notes, serde_json::json!("more private")).await?;
        if invalidate {
            runtime.sessions().invalidate(session.id).await?;
        } else {
            assert!(runtime.sessions().delete(session.id).await?);
        }
        assert_eq!(state.get(&notes).await?, None, "invalidate: {invalidate}");
        assert!(matches!(
            state.get_at(&notes, first.revision).await,
            Err(smalltalk::state::Error::Purged { .. })
        ));
        let history = state.history(&notes, 10).await?;
        assert!(history.changes.iter().all(|change| change.value.is_none()));
    }
    assert_eq!(
        state.get(&shared).await?.map(|entry| entry.value),
        Some(serde_json::json!("shared"))
    );
    runtime.shutdown().await?;
    Ok(())
}

/// One home for agent state: the monitor keeps an agent's state in the
/// session it serves (FR-009a limits applied) and a restart gets that
/// state back; nothing is kept under another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_gets_the_state_its_session_kept() -> anyhow::Result<()> {
    use smalltalk::session::AgentStateLimits;
    use smalltalk::types::AgentId;
    let runtime = Runtime::builder("memory://")
        .sessions(SessionConfig {
            agent_state: AgentStateLimits {
                max_turns: 2,
                ..Default::default()
            },
            ..Default::default()
        })
        .health(HealthConfig {
            heartbeat_interval: Duration::from_millis(20),
            activity_timeout: Duration::from_millis(100),
            ..Default::default()
        })
        .build()
        .await?;
    let session = runtime.sessions().create(CreateOptions::default()).await?;
    let agent = Arc::new(Switchable::default());
    runtime
        .health()
        .register("writer", agent.clone(), RecoveryStrategy::default(), None)?;
    runtime.health().attach_session("writer", session.id)?;
    let mut state = AgentState::new(AgentId::parse("writer")?, Timestamp::now());
    state.context.insert("draft".into(), "chapter 3".into());
    state.history = (0..5)
        .map(|n| Message::new(Role::Assistant, format!("turn {n}"), Timestamp::now()))
        .collect();
    runtime.health().save_state(&state).await?;
    // Kept in the session, trimmed to its limits.
    let kept = runtime.sessions().restore(session.id).await?;
    let kept = &kept.agent_states[&state.agent_id];
    assert_eq!(kept.history.len(), 2, "FR-009a: the newest 2 turns");
    assert_eq!(kept.context["draft"], "chapter 3");
    assert_eq!(
        runtime
            .store()
            .get(&smalltalk::StorageKey::parse("health.agent-state.writer")?)
            .await?,
        None,
        "no second copy in the key-value store"
    );

    agent.down.store(true, Ordering::SeqCst);
    let restored = agent.first_restart().await.expect("a state");
    assert_eq!(restored.history.len(), 2);
    assert_eq!(restored.context["draft"], "chapter 3");
    runtime.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_announce_on_the_bus_react_to_events_and_report_failures() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use smalltalk::groups::{GroupEvent, Step};
    use smalltalk::types::TopicPattern;
    use smalltalk::{GroupSpec, Participant, ScriptedAgent, Termination};

    let agent = |name: &str| smalltalk::AgentId::parse(name).unwrap();
    let runtime = Runtime::builder("memory://")
        .background(false)
        .agent(Arc::new(ScriptedAgent::new(agent("researcher"))))
        .agent(Arc::new(
            ScriptedAgent::new(agent("writer")).then(Step::Fail("overloaded".into())),
        ))
        .build()
        .await?;
    let (seen, mut topics) = tokio::sync::mpsc::unbounded_channel();
    let _announcements = runtime
        .events()
        .subscribe(
            "group:>",
            "test-watcher",
            move |delivery: Delivery| {
                let _ = seen.send(delivery.event().topic.to_string());
                async { Outcome::Ack }
            },
            SubscribeOptions::default(),
        )
        .await?;
    let spec = GroupSpec::new(vec![
        Participant::new(agent("writer"), "writing"),
        Participant::new(agent("researcher"), "research"),
    ])
    .termination(Termination::MaxTurns(1))
    .failure(smalltalk::groups::FailurePolicy {
        retries: 0,
        ..Default::default()
    })
    .triggers(vec![TopicPattern::parse("task:*")?]);
    let group = runtime.groups().create_group(spec).await?;
    let mut events = runtime.groups().subscribe(group.id).await?;

    // An event on the bus starts a round in the group.
    runtime
        .events()
        .publish(
            "task:completed",
            serde_json::json!({"task": "research"}),
            Default::default(),
        )
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let Ok(GroupEvent::Terminated { .. }) = event {
                return true;
            }
        }
        false
    })
    .await?;
    assert!(ended);
    let history = runtime.groups().history(group.id).await?;
    assert_eq!(history.len(), 2, "the event and one answer: {history:?}");
    assert!(history[0].content.contains("task:completed"));
    assert_eq!(history[1].agent_id.as_ref().unwrap().as_str(), "researcher");

    // The writer failed its turn: the health monitor heard of it, and the
    // turn's events went onto the bus.
    assert_eq!(runtime.health().stats().reported_failures, 1);
    let mut received = Vec::new();
    while received.last().map(String::as_str) != Some("group:round-ended") {
        received.push(
            tokio::time::timeout(Duration::from_secs(10), topics.recv())
                .await?
                .expect("open"),
        );
    }
    assert!(
        received.contains(&"group:agent-failed".to_owned()),
        "{received:?}"
    );
    assert!(
        received.contains(&"group:message".to_owned()),
        "{received:?}"
    );
    runtime.shutdown().await?;
    Ok(())
}
