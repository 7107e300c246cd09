//! `smalltalk demo`: the main job on SQLite with no setup. A conversation
//! between two agents, watched by the health monitor, with every
//! announcement printed from the event bus; one agent crashes and is
//! healed; then a new process restores the conversation and shows it
//! survived.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use smalltalk::events::{Delivery, Outcome, SubscribeOptions};
use smalltalk::health::{AgentError, Heartbeat, MonitoredAgent};
use smalltalk::types::{HealthState, RecoveryStrategy};
use smalltalk::{AgentId, AgentState, CreateOptions, Message, Role, SessionId, Timestamp};

/// Where the demo keeps its data when no storage is given.
pub(crate) const DEMO_STORAGE: &str = "sqlite://./smalltalk-data/demo.db";

/// An in-process agent: answers heartbeats unless it has crashed; a
/// restart brings it back.
#[derive(Debug, Default)]
struct DemoAgent {
    crashed: AtomicBool,
    beats: AtomicU64,
}

#[async_trait]
impl MonitoredAgent for DemoAgent {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        if self.crashed.load(Ordering::Acquire) {
            return Err(AgentError::Failed("the process is gone".into()));
        }
        Ok(Heartbeat::idle(self.beats.fetch_add(1, Ordering::Relaxed)))
    }

    async fn probe(&self) -> Result<(), AgentError> {
        if self.crashed.load(Ordering::Acquire) {
            Err(AgentError::Failed("the process is gone".into()))
        } else {
            Ok(())
        }
    }

    async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
        self.crashed.store(false, Ordering::Release);
        Ok(())
    }
}

/// Runs the demo on `url`: converse, then restore in a new process.
pub(crate) async fn run(url: &str) -> anyhow::Result<()> {
    smalltalk_server::prepare_storage_dir(url)?;
    let health = smalltalk::HealthConfig {
        heartbeat_interval: Duration::from_millis(100),
        activity_timeout: Duration::from_millis(100),
        probe_interval: Duration::from_millis(200),
        ..smalltalk::HealthConfig::default()
    };
    let runtime = smalltalk::Runtime::builder(url)
        .health(health)
        .build()
        .await
        .with_context(|| format!("opening {url}"))?;
    println!("[demo pid {}] storage: {url}", std::process::id());

    // Every announcement, as it happens (ids and counts, never content);
    // health changes also go to the demo, which waits for the healing.
    let (changes, mut healed) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let printer = runtime
        .events()
        .subscribe(
            ">",
            "demo-printer",
            move |delivery: Delivery| {
                let event = delivery.event();
                let payload = event.payload.to_value().unwrap_or_default();
                println!("  event {:<28} {payload}", event.topic.as_str());
                if event.topic.as_str() == smalltalk::health::HEALTH_CHANGED {
                    let _ = changes.send(payload);
                }
                async { Outcome::Ack }
            },
            // This run's events only: nothing replayed from an earlier run.
            SubscribeOptions {
                policy: Some(smalltalk::types::EventReplayPolicy {
                    mode: smalltalk::types::ReplayMode::None,
                    ..Default::default()
                }),
                ..SubscribeOptions::default()
            },
        )
        .await?;

    let planner = AgentId::parse("planner")?;
    let critic = AgentId::parse("critic")?;
    let agents: Vec<(AgentId, Arc<DemoAgent>)> = [&planner, &critic]
        .into_iter()
        .map(|id| (id.clone(), Arc::new(DemoAgent::default())))
        .collect();
    for (id, agent) in &agents {
        runtime.health().register(
            id.clone(),
            Arc::clone(agent) as Arc<dyn MonitoredAgent>,
            RecoveryStrategy {
                initial_backoff: Duration::from_millis(50),
                ..RecoveryStrategy::default()
            },
            None,
        )?;
    }

    let sessions = runtime.sessions();
    let mut metadata = serde_json::Map::new();
    metadata.insert("topic".into(), "weekend trip".into());
    let session = sessions
        .create(CreateOptions {
            metadata,
            ..CreateOptions::default()
        })
        .await?;
    let turns = [
        (None, "Plan a weekend in Lisbon for two."),
        (
            Some(&planner),
            "Day 1: Alfama and the castle; day 2: Belém and LX Factory.",
        ),
        (
            Some(&critic),
            "Add a rain plan: the tile museum is indoors.",
        ),
        (Some(&planner), "Added. Trams 28 and 15 connect everything."),
    ];
    for (author, text) in turns {
        let role = if author.is_some() {
            Role::Assistant
        } else {
            Role::User
        };
        let mut message = Message::new(role, text, Timestamp::now());
        message.agent_id = author.cloned();
        sessions.add_message(session.id, message).await?;
    }
    for (agent, note) in [(&planner, "itinerary v2"), (&critic, "rain plan checked")] {
        let mut state = AgentState::new(agent.clone(), Timestamp::now());
        state.context.insert("notes".into(), note.into());
        sessions.update_agent_state(session.id, state).await?;
    }

    // The planner's process dies; the monitor notices and restarts it.
    println!("[demo] the planner crashes; the health monitor should notice and heal it");
    agents[0].1.crashed.store(true, Ordering::Release);
    let limit = Duration::from_secs(10);
    let recovered = tokio::time::timeout(limit, async {
        while let Some(change) = healed.recv().await {
            if change["agentId"] == planner.as_str()
                && change["from"] == "recovering"
                && change["to"] == "active"
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !recovered || runtime.health().status(&planner)?.state != HealthState::Active {
        bail!("the planner was not detected and healed within {limit:?}");
    }
    println!("[demo] the planner is active again");

    let written = sessions.restore(session.id).await?;
    let hash = written.content_hash();
    println!(
        "[demo] session {} saved: {} messages, {} agent states, hash {hash:016x}",
        session.id,
        written.messages.len(),
        written.agent_states.len()
    );
    printer.unsubscribe().await;
    runtime.shutdown().await?;
    println!("[demo] runtime stopped; a new process restores the session");

    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "demo",
            "--storage",
            url,
            "--restore",
            &session.id.to_string(),
        ])
        .output()
        .await
        .context("starting the restoring process")?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        bail!(
            "the restoring process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let restored = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.split("hash ").nth(1).map(str::to_owned))
        .context("the restoring process printed no hash")?;
    if restored.trim() != format!("{hash:016x}") {
        bail!("restored content differs: {hash:016x} written, {restored} read");
    }
    println!("[demo] identical: the conversation survived the restart (data in {url})");
    Ok(())
}

/// The second process: restores session `id` and prints it.
pub(crate) async fn restore(url: &str, id: &str) -> anyhow::Result<()> {
    let id = SessionId::parse(id).context("the session id")?;
    let runtime = smalltalk::Runtime::builder(url).build().await?;
    let session = runtime.sessions().restore(id).await?;
    println!("[restore pid {}] session {id}:", std::process::id());
    for message in &session.messages {
        let who = message.agent_id.as_ref().map_or("user", AgentId::as_str);
        println!("  [{who}] {}", message.content);
    }
    for (agent, state) in &session.agent_states {
        println!(
            "  state of {agent}: {}",
            serde_json::Value::Object(state.context.clone())
        );
    }
    println!("[restore] hash {:016x}", session.content_hash());
    runtime.shutdown().await?;
    Ok(())
}
