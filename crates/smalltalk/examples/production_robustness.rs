//! Every capability in one short program, through the `Runtime`: a session
//! that survives a restart, an event bus with replay, an agent whose crash
//! is detected and healed, a group conversation whose next round an event
//! starts, and versioned shared state with a watcher.
//!
//! ```text
//! cargo run -p smalltalk --example production_robustness          # ./smalltalk-data/robustness.db
//! cargo run -p smalltalk --example production_robustness -- URL   # any storage URL
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::json;
use smalltalk::events::{Delivery, Outcome, PublishOptions, ReplayOptions, SubscribeOptions};
use smalltalk::groups::{GroupEvent, GroupSpec, Participant, ScriptedAgent, Termination};
use smalltalk::health::{AgentError, Heartbeat, MonitoredAgent};
use smalltalk::state::WatchEvent;
use smalltalk::types::{HealthState, RecoveryStrategy, TopicPattern};
use smalltalk::{AgentId, AgentState, CreateOptions, Expect, Message, Role, Runtime, Timestamp};

/// An agent that crashes when told to; a restart brings it back.
#[derive(Debug, Default)]
struct Worker {
    crashed: AtomicBool,
    restarted: tokio::sync::Notify,
}

#[async_trait]
impl MonitoredAgent for Worker {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        if self.crashed.load(Ordering::Acquire) {
            return Err(AgentError::Failed("gone".into()));
        }
        Ok(Heartbeat::idle(0))
    }

    async fn probe(&self) -> Result<(), AgentError> {
        self.heartbeat().await.map(|_| ())
    }

    async fn restart(&self, state: Option<AgentState>) -> Result<(), AgentError> {
        let notes = state.and_then(|state| state.context.get("notes").cloned());
        println!("health   worker restarted with its saved state: notes = {notes:?}");
        self.crashed.store(false, Ordering::Release);
        self.restarted.notify_one();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite://smalltalk-data/robustness.db".to_owned());
    if let Some(path) = url.strip_prefix("sqlite://") {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let health = smalltalk::HealthConfig {
        heartbeat_interval: Duration::from_millis(100),
        activity_timeout: Duration::from_millis(100),
        probe_interval: Duration::from_millis(200),
        ..smalltalk::HealthConfig::default()
    };
    let names = ["planner", "researcher", "writer"];
    let mut builder = Runtime::builder(url.as_str()).health(health);
    for name in names {
        builder = builder.agent(Arc::new(ScriptedAgent::new(AgentId::parse(name)?)));
    }
    let runtime = builder
        .build()
        .await
        .with_context(|| format!("opening {url}"))?;
    println!("runtime  on {url}");

    // Sessions: a conversation and an agent's state, stored as they happen.
    let sessions = runtime.sessions();
    let session = sessions.create(CreateOptions::default()).await?;
    sessions
        .add_message(
            session.id,
            Message::new(Role::User, "Plan the launch.", Timestamp::now()),
        )
        .await?;
    let worker_id = AgentId::parse("worker")?;
    let mut state = AgentState::new(worker_id.clone(), Timestamp::now());
    state.context.insert("notes".into(), json!("draft 1"));
    sessions
        .update_agent_state(session.id, state.clone())
        .await?;
    println!("session  {} created, 1 message, 1 agent state", session.id);

    // Events: a durable subscriber, and an explicit replay.
    let _audit = runtime
        .events()
        .subscribe(
            "task:*",
            "audit",
            |delivery: Delivery| async move {
                let replay = if delivery.is_replay() {
                    " (replay)"
                } else {
                    ""
                };
                println!("events   audit saw {}{replay}", delivery.event().topic);
                Outcome::Ack
            },
            SubscribeOptions::default(),
        )
        .await?;

    // Health: a crash, detected and healed with the saved state.
    let worker = Arc::new(Worker::default());
    let strategy = RecoveryStrategy {
        initial_backoff: Duration::from_millis(50),
        ..RecoveryStrategy::default()
    };
    runtime
        .health()
        .register(worker_id.clone(), worker.clone(), strategy, None)?;
    runtime
        .health()
        .attach_session(worker_id.clone(), session.id)?;
    worker.crashed.store(true, Ordering::Release);
    println!("health   worker crashes");
    let restarted = tokio::time::timeout(Duration::from_secs(10), worker.restarted.notified())
        .await
        .is_ok();
    let healed = restarted
        && runtime
            .health()
            .wait_for_state(&worker_id, HealthState::Active, Duration::from_secs(10))
            .await?;
    if !healed {
        bail!("the worker was not healed");
    }
    println!("health   worker is active again");

    // Groups: three agents take turns; `task:completed` starts the next
    // round with no routing named.
    let groups = runtime.groups();
    let participants = names
        .iter()
        .map(|name| Ok(Participant::new(AgentId::parse(name)?, "member")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = GroupSpec::new(participants)
        .termination(Termination::MaxTurns(3))
        .triggers(vec![TopicPattern::parse("task:completed")?]);
    let group = groups.create_group(spec).await?;
    let mut rounds = groups.subscribe(group.id).await?;
    groups
        .handle_message(group.id, "Kick off the launch plan.")
        .await?;
    println!(
        "groups   round 1 done: {} messages",
        groups.history(group.id).await?.len()
    );
    runtime
        .events()
        .publish(
            "task:completed",
            json!({"task": "research"}),
            PublishOptions::default().critical(),
        )
        .await?;
    while let Some(event) = rounds.next().await {
        if let Ok(GroupEvent::Terminated { round: 2, .. }) = event {
            break;
        }
    }
    let history = groups.history(group.id).await?;
    println!(
        "groups   round 2 started by task:completed: {} messages in all",
        history.len()
    );
    for message in history.iter().rev().take(3).rev() {
        println!(
            "           [{}] {}",
            message.agent_id.as_ref().map_or("-", AgentId::as_str),
            message.content
        );
    }
    let replayed = runtime
        .events()
        .replay("audit", ReplayOptions::default())
        .await?;
    println!(
        "events   replayed {} event(s) to audit on request",
        replayed.delivered
    );

    // State: versions checked on write, history, and a watcher.
    let state_store = runtime.state();
    // A key of this run's own: the program can run again on the same data.
    let key = format!("launch:{}", session.id);
    let mut watch = state_store.watch_key(key.as_str(), None).await?;
    let first = state_store
        .put_if(key.as_str(), json!({"step": 1}), Expect::Absent)
        .await?;
    let stale = state_store
        .put_if(key.as_str(), json!({"step": 9}), Expect::Version(0))
        .await;
    state_store
        .put_if(
            key.as_str(),
            json!({"step": 2}),
            Expect::Version(first.entry.version),
        )
        .await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let Some(Ok(WatchEvent::Changes { revision, .. })) = watch.next().await {
            seen.push(revision);
        }
    }
    let history = state_store.history(key.as_str(), 10).await?;
    println!(
        "state    {key} at version 2; a stale write refused ({}); history {} versions; watcher saw revisions {seen:?}",
        if stale.is_err() {
            "conflict"
        } else {
            "accepted?!"
        },
        history.changes.len()
    );

    // A restart: everything above is still there.
    runtime.shutdown().await?;
    let runtime = Runtime::builder(url.as_str()).build().await?;
    let restored = runtime.sessions().restore(session.id).await?;
    println!(
        "restart  session {} restored: {} message(s), worker notes = {}",
        restored.id,
        restored.messages.len(),
        restored.agent_states[&worker_id].context["notes"]
    );
    runtime.shutdown().await?;
    Ok(())
}
