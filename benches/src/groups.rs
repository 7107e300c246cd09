//! Group measurements shared by the report (the GROUPS rows):
//!
//! - `select_round_robin` / `select_priority` (SC-013): choosing the next
//!   speaker among 10 agents (no storage, no LLM);
//! - `select_llm_overhead`: an LLM selection against a local
//!   OpenAI-compatible server that answers at once, so what is measured
//!   is everything but the model: prompt, HTTP over loopback, parsing,
//!   validation;
//! - `turn_overhead` (SC-012): each turn of an agent that answers at
//!   once, timed one by one, the commit of its message with the group
//!   record at the turn boundary included; `turn_overhead_with_bus`: the
//!   same with the turn's announcements published on a durable bus over
//!   the same store, as the `Runtime` wires it;
//! - `concurrent_1000_groups_turns_per_sec`: 1,000 groups taking turns at
//!   once on one node, with the process's resident memory after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use smalltalk_groups::llm::{LlmClient, LlmConfig};
use smalltalk_groups::{
    Agent, GroupEvent, GroupManager, GroupSpec, GroupsConfig, Participant, ScriptedAgent, Strategy,
    Termination, Throttle,
};
use smalltalk_storage::{SessionStore, Store};
use smalltalk_types::{AgentId, ConversationId};

use crate::Samples;

fn agent_id(index: usize) -> AgentId {
    AgentId::parse(&format!("agent-{index}")).expect("valid id")
}

/// A manager over `store` with `agents` scripted agents registered.
pub fn manager(store: Arc<dyn Store>, agents: usize, llm: Option<LlmClient>) -> GroupManager {
    manager_announcing(store, agents, llm, None)
}

/// [`manager`], announcing its events on `bus` as the `Runtime` wires it.
pub fn manager_announcing(
    store: Arc<dyn Store>,
    agents: usize,
    llm: Option<LlmClient>,
    bus: Option<Arc<dyn smalltalk_types::EventSink>>,
) -> GroupManager {
    let mut builder = GroupManager::builder(store as Arc<dyn SessionStore>).config(GroupsConfig {
        max_active_groups: 10_000,
        ..GroupsConfig::default()
    });
    if let Some(bus) = bus {
        builder = builder.events(bus);
    }
    for index in 0..agents {
        builder = builder.agent(Arc::new(ScriptedAgent::new(agent_id(index))) as Arc<dyn Agent>);
    }
    if let Some(client) = llm {
        builder = builder.selector_llm(client);
    }
    builder.build().expect("valid configuration")
}

/// A group of the first `size` agents.
pub async fn group(
    manager: &GroupManager,
    size: usize,
    strategy: Strategy,
    turns_per_round: u64,
) -> ConversationId {
    let participants = (0..size)
        .map(|index| {
            Participant::new(agent_id(index), "member")
                .description("a member")
                .priority((index % 3) as i32)
        })
        .collect();
    let spec = GroupSpec::new(participants)
        .strategy(strategy)
        .termination(Termination::MaxTurns(turns_per_round))
        .throttle(Throttle {
            max_turns_per_round: 1000,
            ..Throttle::default()
        });
    manager.create_group(spec).await.expect("create").id
}

/// Speaker selections in group `id`, without taking turns.
pub async fn measure_selection(
    manager: &GroupManager,
    id: ConversationId,
    warmup: usize,
    count: usize,
) -> Samples {
    Samples::collect(warmup, count, || async {
        manager
            .select_speaker(id)
            .await
            .expect("select")
            .expect("someone may speak");
    })
    .await
}

/// A client for the local server at `base_url`.
pub fn local_llm(base_url: String) -> LlmClient {
    LlmClient::new(LlmConfig::new(base_url, "bench")).expect("valid configuration")
}

/// The time of each turn of `rounds` rounds of 10 turns, one by one: from
/// the commit before it (the round's start, or the turn before) to its own
/// commit, so selection, asking the agent (which answers at once), the
/// commit and the announcements are in it. Timed on the group's event
/// stream.
pub async fn measure_turns(manager: &GroupManager, warmup: usize, rounds: usize) -> Samples {
    let id = group(manager, 3, Strategy::RoundRobin, 10).await;
    for _ in 0..warmup {
        manager.handle_message(id, "go").await.expect("round");
    }
    let mut events = manager.subscribe(id).await.expect("subscribe");
    let collector = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut last = None;
        while let Some(event) = events.next().await {
            let now = Instant::now();
            match event.expect("the collector keeps up") {
                GroupEvent::RoundStarted { .. } => last = Some(now),
                GroupEvent::Message { .. } => {
                    if let Some(before) = last.replace(now) {
                        samples.push(now - before);
                    }
                }
                _ => {}
            }
        }
        samples
    });
    for _ in 0..rounds {
        manager.handle_message(id, "go").await.expect("round");
    }
    manager.release(id).await;
    Samples::from_durations(collector.await.expect("collector"))
}

/// `groups` groups each running one round of `turns` turns at once:
/// turns per second over all of them.
pub async fn concurrent_groups(manager: &GroupManager, groups: usize, turns: u64) -> f64 {
    let mut ids = Vec::with_capacity(groups);
    for _ in 0..groups {
        ids.push(group(manager, 3, Strategy::RoundRobin, turns).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.handle_message(id, "go").await.expect("round") })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task").turns.len();
    }
    total as f64
        / started
            .elapsed()
            .max(Duration::from_micros(1))
            .as_secs_f64()
}

/// This process's resident memory, in MiB (Linux; `None` elsewhere).
pub fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
