//! What a group is: its participants and the rules of its conversation.
//! A [`GroupSpec`] is saved with the group, so a process that resumes the
//! group applies the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smalltalk_types::{AgentId, Backoff, TopicPattern};

use crate::Termination;

/// The fewest participants a group has.
pub const MIN_PARTICIPANTS: usize = 2;
/// The most participants a group has.
pub const MAX_PARTICIPANTS: usize = 10;
/// The longest role, description or topic, in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// The agent, as registered with the [`GroupManager`](crate::GroupManager).
    pub agent_id: AgentId,
    /// Its role, for example `researcher`.
    pub role: String,
    /// What it is good at: the LLM selector reads it.
    #[serde(default)]
    pub description: String,
    /// For the priority strategy: higher speaks first.
    #[serde(default)]
    pub priority: i32,
    /// Its own view of the history, instead of the group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<HistoryView>,
    /// An LLM agent described by configuration, saved with the group: any
    /// manager with the named endpoint runs it, with no agent registered
    /// ([`GroupManagerBuilder::llm_endpoint`](crate::GroupManagerBuilder::llm_endpoint)).
    /// Without it, the agent registered under `agent_id` speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmProfile>,
}

/// The longest system prompt of an [`LlmProfile`], in bytes.
pub const MAX_PROMPT_LEN: usize = 64 * 1024;

/// The endpoint an [`LlmProfile`] uses when it names none.
pub const DEFAULT_ENDPOINT: &str = "default";

/// An LLM agent as configuration: what the group saves so that any
/// process can run the agent (see [`Participant::llm`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LlmProfile {
    /// Its system prompt (at most [`MAX_PROMPT_LEN`] bytes).
    #[serde(default)]
    pub system_prompt: String,
    /// A model other than the endpoint's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The endpoint's name, as the manager knows it (default
    /// [`DEFAULT_ENDPOINT`]). A name, not a URL: which hosts agents may
    /// call is the operator's choice, not the group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The longest answer, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

impl LlmProfile {
    /// The endpoint's name: [`DEFAULT_ENDPOINT`] unless one is named.
    pub fn endpoint_name(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    }

    /// What is wrong with it, if anything.
    fn problem(&self) -> Option<String> {
        if self.system_prompt.len() > MAX_PROMPT_LEN {
            return Some(format!(
                "its system prompt is longer than {MAX_PROMPT_LEN} bytes"
            ));
        }
        if let Some(model) = &self.model {
            if model.trim().is_empty() || model.len() > 256 || model.chars().any(char::is_control) {
                return Some("its model must be 1 to 256 printable characters".into());
            }
        }
        let endpoint = self.endpoint_name();
        if endpoint.is_empty()
            || endpoint.len() > 64
            || !endpoint
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Some(
                "its endpoint must be the name of a configured endpoint (1 to 64 of A-Z a-z 0-9 - _ .)"
                    .into(),
            );
        }
        if self.max_tokens == Some(0) {
            return Some("its maxTokens must be at least 1".into());
        }
        None
    }
}

impl Participant {
    /// A participant with a role, no description, priority 0.
    pub fn new(agent_id: AgentId, role: impl Into<String>) -> Self {
        Self {
            agent_id,
            role: role.into(),
            description: String::new(),
            priority: 0,
            view: None,
            llm: None,
        }
    }

    /// Described as an LLM agent (see [`Participant::llm`]).
    pub fn llm(mut self, profile: LlmProfile) -> Self {
        self.llm = Some(profile);
        self
    }

    /// With a description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// With a priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// With its own view of the history.
    pub fn view(mut self, view: HistoryView) -> Self {
        self.view = Some(view);
        self
    }
}

/// How the next speaker is chosen among the eligible ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// In participant order, after the last speaker.
    RoundRobin,
    /// The highest priority; ties go to the one that spoke least recently.
    Priority,
    /// An LLM names the speaker (`{agentId, confidence, reasoning}`), asked
    /// again with the exact error when its answer is invalid, at most 3
    /// times; then round-robin among the eligible.
    LlmBased,
}

impl Strategy {
    /// `round-robin`, `priority` or `llm-based`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Priority => "priority",
            Strategy::LlmBased => "llm-based",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may speak after whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "graph")]
pub enum Transitions {
    /// After each agent, only the agents listed (an agent not listed may be
    /// followed by anyone).
    Allowed(BTreeMap<AgentId, BTreeSet<AgentId>>),
    /// After each agent, anyone but the agents listed.
    Disallowed(BTreeMap<AgentId, BTreeSet<AgentId>>),
}

impl Transitions {
    /// Whether `next` may speak after `previous`.
    pub fn permits(&self, previous: Option<&AgentId>, next: &AgentId) -> bool {
        let Some(previous) = previous else {
            return true;
        };
        match self {
            Transitions::Allowed(graph) => graph
                .get(previous)
                .is_none_or(|allowed| allowed.contains(next)),
            Transitions::Disallowed(graph) => graph
                .get(previous)
                .is_none_or(|disallowed| !disallowed.contains(next)),
        }
    }

    /// No agent speaks twice in a row.
    pub fn no_repeats<'a>(agents: impl IntoIterator<Item = &'a AgentId>) -> Self {
        Transitions::Disallowed(
            agents
                .into_iter()
                .map(|agent| (agent.clone(), BTreeSet::from([agent.clone()])))
                .collect(),
        )
    }

    fn graph(&self) -> &BTreeMap<AgentId, BTreeSet<AgentId>> {
        match self {
            Transitions::Allowed(graph) | Transitions::Disallowed(graph) => graph,
        }
    }
}

/// Limits against one agent taking over, and against endless rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// The most turns one agent takes in a row (default 3); then it sits
    /// out `cooldown_turns`.
    pub max_consecutive: u32,
    /// How many turns an agent sits out after `max_consecutive` (default 1;
    /// 1 to 100).
    pub cooldown_turns: u32,
    /// The most turns in one round (default 10), whatever the termination
    /// condition says: a round always ends.
    pub max_turns_per_round: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            max_consecutive: 3,
            cooldown_turns: 1,
            max_turns_per_round: 10,
        }
    }
}

/// What part of the history an agent sees, so cost does not grow with
/// every agent receiving everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "last")]
pub enum HistoryView {
    /// Everything.
    Full,
    /// The last N messages (at least 1).
    Window(u32),
    /// The last N messages, with what came before summarized by the
    /// manager's [`Summarizer`](crate::Summarizer).
    Summary(u32),
}

impl HistoryView {
    pub(crate) fn keep(self) -> Option<usize> {
        match self {
            HistoryView::Full => None,
            HistoryView::Window(last) | HistoryView::Summary(last) => Some(last as usize),
        }
    }
}

/// What the group does when an agent errors or times out in its turn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// How long an agent has to answer (default 120 s).
    #[serde(with = "smalltalk_types::time::duration_ms")]
    pub timeout: Duration,
    /// Times the agent is asked again (default 1).
    pub retries: u32,
    /// The wait before each retry (default 200 ms doubling to 2 s).
    #[serde(with = "backoff_serde")]
    pub backoff: Backoff,
    /// Once the retries are spent.
    pub then: AfterRetries,
}

/// What happens once an agent's retries are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterRetries {
    /// Another eligible agent takes the turn; when every one has failed,
    /// the round fails with [`Error::AllAgentsFailed`](crate::Error::AllAgentsFailed).
    Skip,
    /// The round fails with [`Error::AgentFailed`](crate::Error::AgentFailed).
    FailTurn,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            retries: 1,
            backoff: Backoff::new(Duration::from_millis(200), 2.0, Duration::from_secs(2)),
            then: AfterRetries::Skip,
        }
    }
}

mod backoff_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use smalltalk_types::Backoff;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Plain {
        initial_ms: u64,
        multiplier: f64,
        max_ms: u64,
    }

    fn ms(duration: Duration) -> u64 {
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn serialize<S: Serializer>(
        value: &Backoff,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        Plain {
            initial_ms: ms(value.initial),
            multiplier: value.multiplier,
            max_ms: ms(value.max),
        }
        .serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Backoff, D::Error> {
        let plain = Plain::deserialize(deserializer)?;
        Ok(Backoff::new(
            Duration::from_millis(plain.initial_ms),
            plain.multiplier,
            Duration::from_millis(plain.max_ms),
        ))
    }
}

/// A group's members and rules, saved with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSpec {
    /// 2 to 10 participants, each agent once.
    pub participants: Vec<Participant>,
    /// How speakers are chosen (default round-robin).
    pub strategy: Strategy,
    /// Who may follow whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transitions: Option<Transitions>,
    /// Consecutive-turn and per-round limits.
    #[serde(default)]
    pub throttle: Throttle,
    /// When a round ends (default: each participant once, as
    /// `MaxTurns(participants)`), and when the group has finished.
    pub termination: Termination,
    /// What agents see of the history, unless a participant has its own
    /// (default: the last 20 messages).
    pub view: HistoryView,
    /// Errors and timeouts of agents.
    #[serde(default)]
    pub failure: FailurePolicy,
    /// Topics whose events start a round (FR-015).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TopicPattern>,
    /// The topic the group starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl GroupSpec {
    /// A round-robin group of `participants`, each speaking once per round.
    pub fn new(participants: Vec<Participant>) -> Self {
        let turns = participants.len().max(1) as u64;
        Self {
            participants,
            strategy: Strategy::RoundRobin,
            transitions: None,
            throttle: Throttle::default(),
            termination: Termination::MaxTurns(turns),
            view: HistoryView::Window(20),
            failure: FailurePolicy::default(),
            triggers: Vec::new(),
            topic: None,
        }
    }

    /// With a strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// With a termination condition.
    pub fn termination(mut self, termination: Termination) -> Self {
        self.termination = termination;
        self
    }

    /// With transition rules.
    pub fn transitions(mut self, transitions: Transitions) -> Self {
        self.transitions = Some(transitions);
        self
    }

    /// With throttling limits.
    pub fn throttle(mut self, throttle: Throttle) -> Self {
        self.throttle = throttle;
        self
    }

    /// With a history view for every agent.
    pub fn view(mut self, view: HistoryView) -> Self {
        self.view = view;
        self
    }

    /// With a failure policy.
    pub fn failure(mut self, failure: FailurePolicy) -> Self {
        self.failure = failure;
        self
    }

    /// With topics whose events start rounds.
    pub fn triggers(mut self, triggers: Vec<TopicPattern>) -> Self {
        self.triggers = triggers;
        self
    }

    /// With a topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The participant `agent`, if it is one.
    pub fn participant(&self, agent: &AgentId) -> Option<&Participant> {
        self.participants
            .iter()
            .find(|participant| participant.agent_id == *agent)
    }

    /// Checks the spec; the error says what is wrong.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let invalid = |reason: String| crate::Error::InvalidGroup { reason };
        let count = self.participants.len();
        if !(MIN_PARTICIPANTS..=MAX_PARTICIPANTS).contains(&count) {
            return Err(crate::Error::ParticipantCount {
                count,
                min: MIN_PARTICIPANTS,
                max: MAX_PARTICIPANTS,
            });
        }
        let mut seen = BTreeSet::new();
        for participant in &self.participants {
            if !seen.insert(&participant.agent_id) {
                return Err(crate::Error::DuplicateParticipant {
                    agent_id: participant.agent_id.clone(),
                });
            }
            if participant.role.trim().is_empty() {
                return Err(invalid(format!(
                    "participant {} has no role",
                    participant.agent_id
                )));
            }
            for (what, text) in [
                ("role", &participant.role),
                ("description", &participant.description),
            ] {
                if text.len() > MAX_TEXT_LEN {
                    return Err(invalid(format!(
                        "participant {}'s {what} is longer than {MAX_TEXT_LEN} bytes",
                        participant.agent_id
                    )));
                }
            }
            if let Some(view) = participant.view {
                validate_view(view)?;
            }
            if let Some(problem) = participant.llm.as_ref().and_then(LlmProfile::problem) {
                return Err(invalid(format!(
                    "participant {}: {problem}",
                    participant.agent_id
                )));
            }
        }
        validate_view(self.view)?;
        if let Some(transitions) = &self.transitions {
            for (from, to) in transitions.graph() {
                if let Some(stranger) = std::iter::once(from)
                    .chain(to)
                    .find(|agent| !seen.contains(agent))
                {
                    return Err(invalid(format!(
                        "the transition graph names {stranger}, who is not a participant"
                    )));
                }
            }
        }
        let throttle = &self.throttle;
        if throttle.max_consecutive == 0 {
            return Err(invalid(
                "throttle.max_consecutive must be at least 1".into(),
            ));
        }
        if throttle.max_turns_per_round == 0 || throttle.max_turns_per_round > 1000 {
            return Err(invalid(
                "throttle.max_turns_per_round must be between 1 and 1000".into(),
            ));
        }
        if throttle.cooldown_turns == 0 || throttle.cooldown_turns > 100 {
            // 0 would let an agent past max_consecutive: the cooldown is
            // what enforces it.
            return Err(invalid(
                "throttle.cooldown_turns must be between 1 and 100".into(),
            ));
        }
        self.termination
            .validate()
            .map_err(|reason| invalid(format!("termination: {reason}")))?;
        let failure = &self.failure;
        if failure.timeout.is_zero() || failure.timeout > Duration::from_secs(3600) {
            return Err(invalid(
                "failure.timeout must be between 1 ms and 1 hour".into(),
            ));
        }
        if failure.retries > 10 {
            return Err(invalid("failure.retries must be at most 10".into()));
        }
        failure
            .backoff
            .validate("failure.backoff")
            .map_err(|error| invalid(error.to_string()))?;
        if self
            .topic
            .as_ref()
            .is_some_and(|topic| topic.len() > MAX_TEXT_LEN)
        {
            return Err(invalid(format!(
                "the topic is longer than {MAX_TEXT_LEN} bytes"
            )));
        }
        if self.triggers.len() > 32 {
            return Err(invalid("at most 32 trigger patterns".into()));
        }
        Ok(())
    }
}

fn validate_view(view: HistoryView) -> Result<(), crate::Error> {
    match view {
        HistoryView::Window(0) | HistoryView::Summary(0) => Err(crate::Error::InvalidGroup {
            reason: "a history window must keep at least 1 message".into(),
        }),
        HistoryView::Window(last) | HistoryView::Summary(last) if last > 10_000 => {
            Err(crate::Error::InvalidGroup {
                reason: "a history window keeps at most 10000 messages".into(),
            })
        }
        _ => Ok(()),
    }
}
