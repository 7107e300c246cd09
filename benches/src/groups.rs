//! Group measurements shared by the report (the GROUPS rows):
//!
//! - `select_round_robin` / `select_priority` (SC-013): choosing the next
//!   speaker among 10 agents (no storage, no LLM);
//! - `select_llm_overhead`: an LLM selection against a local
//!   OpenAI-compatible server that answers at once, so what is measured
//!   is everything but the model: prompt, HTTP over loopback, parsing,
//!   validation;
//! - `turn_overhead` (SC-012): each turn of an agent that answers at
//!   once, timed one by one from its agent being asked, the commit of its message with the group
//!   record at the turn boundary included; `turn_overhead_with_bus`: the
//!   same with the turn's announcements published on a durable bus over
//!   the same store, as the `Runtime` wires it;
//! - `concurrent_1000_groups_turns_per_sec`: 1,000 groups taking turns at
//!   once on one node, with the process's resident memory after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smalltalk_groups::llm::{LlmClient, LlmConfig};
use smalltalk_groups::{
    Agent, GroupManager, GroupSpec, GroupsConfig, Participant, ScriptedAgent, Strategy,
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

/// An agent that answers at once and notes when it was asked.
#[derive(Debug)]
struct Clocked {
    id: AgentId,
    asked: Arc<std::sync::Mutex<Vec<Instant>>>,
}

#[async_trait::async_trait]
impl Agent for Clocked {
    fn id(&self) -> &AgentId {
        &self.id
    }

    async fn respond(
        &self,
        request: smalltalk_groups::AgentRequest,
    ) -> Result<smalltalk_groups::AgentReply, smalltalk_groups::AgentError> {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Instant::now());
        Ok(smalltalk_groups::AgentReply::text(format!(
            "turn {} of round {}",
            request.turn, request.round
        )))
    }
}

/// The time of each turn of `rounds` rounds of 10 turns, one by one: from
/// its agent being asked to the next agent being asked (the last turn: to
/// the round's end), so the commit of its message with the record, the
/// announcements and the next selection are in it; the agent answers at
/// once.
pub async fn measure_turns(manager: &GroupManager, warmup: usize, rounds: usize) -> Samples {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    for index in 0..3 {
        manager.register_agent(Arc::new(Clocked {
            id: agent_id(index),
            asked: Arc::clone(&asked),
        }));
    }
    let id = group(manager, 3, Strategy::RoundRobin, 10).await;
    for _ in 0..warmup {
        manager.handle_message(id, "go").await.expect("round");
    }
    let mut samples = Vec::with_capacity(rounds * 10);
    for _ in 0..rounds {
        asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        manager.handle_message(id, "go").await.expect("round");
        let ended = Instant::now();
        let marks = asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let next = marks.iter().skip(1).copied().chain(std::iter::once(ended));
        samples.extend(marks.iter().zip(next).map(|(asked, next)| next - *asked));
    }
    Samples::from_durations(samples)
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
