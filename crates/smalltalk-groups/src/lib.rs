//! Group conversations for SmallTalk-rs (FR-017 to FR-021): 2 to 10
//! agents share one conversation, with AutoGen's group chat as the
//! reference and its known failures fixed.
//!
//! - [`Agent`]: an async trait; [`LlmAgent`] answers through an
//!   OpenAI-compatible endpoint ([`llm::LlmClient`]: timeouts, retries
//!   honouring `Retry-After`, a circuit breaker, streaming, tool calls,
//!   token usage); [`ScriptedAgent`] answers from a script, for demos and
//!   tests.
//! - [`GroupManager::handle_message`] runs a **round**: turns until the
//!   group's [`Termination`] holds. Events can start rounds too
//!   ([`GroupManager::handle_event`], FR-015).
//! - **Selection** ([`selection`]): custom selector, candidate filter and
//!   transition rules, throttling, then round-robin, priority or an LLM
//!   asked at most 3 times with the exact error fed back, then a
//!   deterministic fallback that never picks an excluded agent. Nothing
//!   loops: with no eligible agent the round ends.
//! - **Termination** composes with AND/OR: max messages, turns, rounds,
//!   a text mention, a token budget, a timeout, an external stop, no
//!   eligible speaker.
//! - **Cost control**: each agent sees its own [`HistoryView`] (a window,
//!   or a summary of what fell out of it).
//! - **Persistence** (FR-021): a group's messages are its session's; its
//!   record (participants, counters, workflow, shared context) is in the
//!   session header, committed with each turn's message in one storage
//!   transaction under compare-and-swap. A new process resumes exactly
//!   where the old one stopped; two never both commit a turn.
//! - **Failure**: an agent that errors or times out is retried, then
//!   skipped or fails the turn ([`FailurePolicy`]); the failure is an event
//!   and goes to the health monitor ([`smalltalk_types::AgentFailureSink`]).
//!
//! Metrics: `smalltalk_group_turns_total{group_id}`,
//! `smalltalk_group_agent_failures_total{group_id}`,
//! `smalltalk_group_selection_seconds{strategy}`, `smalltalk_groups_active`,
//! `smalltalk_llm_calls_total{outcome}`, `smalltalk_llm_call_seconds`, `smalltalk_llm_tokens_total{kind}`.
//! Spans: `group.turn` (with `group_id`, `round`, `turn`), `llm.chat`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use smalltalk_groups::{GroupManager, GroupSpec, Participant, ScriptedAgent, Termination};
//!
//! let store = smalltalk_storage::open("memory://").await?;
//! let groups = GroupManager::builder(store)
//!     .agent(Arc::new(ScriptedAgent::new("researcher".parse()?).then_reply("Three challenges: ...")))
//!     .agent(Arc::new(ScriptedAgent::new("writer".parse()?).then_reply("Draft: ...")))
//!     .build()?;
//! let spec = GroupSpec::new(vec![
//!     Participant::new("researcher".parse()?, "research").description("finds facts"),
//!     Participant::new("writer".parse()?, "writing").description("writes it up"),
//! ])
//! .termination(Termination::MaxTurns(2));
//! let group = groups.create_group(spec).await?;
//!
//! let round = groups.handle_message(group.id, "What are the key challenges in AI alignment?").await?;
//! let speakers: Vec<_> = round.turns.iter().map(|turn| turn.selection.agent_id.as_str()).collect();
//! assert_eq!(speakers, ["researcher", "writer"]);
//! let history = groups.history(group.id).await?;
//! assert_eq!(history.len(), 3); // the question and two answers, stored
//! # Ok(())
//! # }
//! ```

mod agent;
mod config;
mod error;
mod events;
pub mod llm;
mod manager;
mod record;
pub mod selection;
mod spec;
mod termination;
mod workflow;

pub use agent::{Agent, AgentError, AgentReply, AgentRequest, LlmAgent, ScriptedAgent, Step};
pub use config::GroupsConfig;
pub use error::{Error, Result};
pub use events::{GroupEvent, GroupEvents, RoundEnd, RoundOutcome, TurnSummary};
pub use manager::{
    GROUP_AGENT_FAILED, GROUP_CREATED, GROUP_MESSAGE, GROUP_ROUND_ENDED, GROUP_ROUND_STARTED,
    GROUP_SPEAKER_SELECTED, GroupInfo, GroupManager, GroupManagerBuilder, GroupStats,
    MAX_CONTEXT_BYTES, Summarizer, Trigger, session_of,
};
pub use record::{GroupRecord, LastRound, RECORD_FORMAT, RECORD_KEY, RoundState};
pub use selection::{
    CandidateFilter, GroupHooks, Selection, SelectionContext, SelectionSource, SelectorFn,
};
pub use spec::{
    AfterRetries, DEFAULT_ENDPOINT, FailurePolicy, GroupSpec, HistoryView, LlmProfile,
    MAX_PARTICIPANTS, MAX_PROMPT_LEN, MAX_TEXT_LEN, MIN_PARTICIPANTS, Participant, Strategy,
    Throttle, Transitions,
};
pub use termination::Termination;
pub use workflow::{MAX_DEPENDENCIES, MAX_TASKS, Task, TaskStatus, Workflow};
