//! The group record: everything a group is and where it stands, saved in
//! its session's header (metadata key [`RECORD_KEY`]) at every turn
//! boundary, atomically with the turn's messages.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use smalltalk_types::{AgentId, EventId, Timestamp};

use crate::{GroupSpec, RoundEnd, Workflow};

/// The session metadata key holding a group's record.
pub const RECORD_KEY: &str = "smalltalk.group";

/// The record's format version (see `smalltalk_types::format`).
pub const RECORD_FORMAT: u32 = 1;

/// How many trigger event ids a group remembers, to start one round per
/// event however often it is delivered.
pub(crate) const REMEMBERED_TRIGGERS: usize = 64;

/// The round under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundState {
    /// Its number, from 1.
    pub number: u64,
    /// When it started.
    pub started_at: Timestamp,
    /// Turns taken.
    pub turns: u64,
    /// Messages in it, the one that started it included.
    pub messages: u64,
    /// Tokens its turns used.
    pub tokens: u64,
}

/// How the last round ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRound {
    /// Its number.
    pub number: u64,
    /// Turns taken.
    pub turns: u64,
    /// Why it ended.
    pub end: RoundEnd,
    /// When.
    pub ended_at: Timestamp,
}

/// A group as stored: its spec and every counter the rules depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRecord {
    /// [`RECORD_FORMAT`] when written.
    pub format_version: u32,
    /// Participants and rules.
    pub spec: GroupSpec,
    /// The current topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Shared context, merge-updated (RFC 7396).
    #[serde(default)]
    pub shared_context: Map<String, Value>,
    /// Tasks.
    #[serde(default)]
    pub workflow: Workflow,
    /// Who spoke last.
    #[serde(default)]
    pub last_speaker: Option<AgentId>,
    /// How many turns in a row `last_speaker` took.
    #[serde(default)]
    pub consecutive: u32,
    /// Turns each throttled agent still sits out.
    #[serde(default)]
    pub cooldowns: BTreeMap<AgentId, u32>,
    /// The turn number (over the group's life) each agent last spoke at.
    #[serde(default)]
    pub last_spoke: BTreeMap<AgentId, u64>,
    /// Turns over the group's life.
    #[serde(default)]
    pub turns: u64,
    /// Messages over the group's life.
    #[serde(default)]
    pub messages: u64,
    /// Rounds completed.
    #[serde(default)]
    pub rounds_completed: u64,
    /// Tokens over the group's life.
    #[serde(default)]
    pub tokens: u64,
    /// The round under way, if one is.
    #[serde(default)]
    pub round: Option<RoundState>,
    /// How the last round ended.
    #[serde(default)]
    pub last_round: Option<LastRound>,
    /// Why the group finished, once it has.
    #[serde(default)]
    pub finished: Option<String>,
    /// Event ids that started rounds, newest last.
    #[serde(default)]
    pub triggers_seen: VecDeque<EventId>,
}

impl GroupRecord {
    /// A new group's record.
    pub fn new(spec: GroupSpec) -> Self {
        Self {
            format_version: RECORD_FORMAT,
            topic: spec.topic.clone(),
            spec,
            shared_context: Map::new(),
            workflow: Workflow::default(),
            last_speaker: None,
            consecutive: 0,
            cooldowns: BTreeMap::new(),
            last_spoke: BTreeMap::new(),
            turns: 0,
            messages: 0,
            rounds_completed: 0,
            tokens: 0,
            round: None,
            last_round: None,
            finished: None,
            triggers_seen: VecDeque::new(),
        }
    }

    /// Records a turn by `speaker`: the throttle's counters move.
    pub(crate) fn count_turn(&mut self, speaker: &AgentId, tokens: u64) {
        let throttle = self.spec.throttle;
        self.cooldowns.retain(|agent, left| {
            if agent == speaker {
                return true;
            }
            *left = left.saturating_sub(1);
            *left > 0
        });
        if self.last_speaker.as_ref() == Some(speaker) {
            self.consecutive = self.consecutive.saturating_add(1);
        } else {
            self.consecutive = 1;
            self.last_speaker = Some(speaker.clone());
        }
        if self.consecutive >= throttle.max_consecutive {
            self.cooldowns
                .insert(speaker.clone(), throttle.cooldown_turns);
        }
        self.turns += 1;
        self.messages += 1;
        self.tokens = self.tokens.saturating_add(tokens);
        self.last_spoke.insert(speaker.clone(), self.turns);
        if let Some(round) = &mut self.round {
            round.turns += 1;
            round.messages += 1;
            round.tokens = round.tokens.saturating_add(tokens);
        }
    }

    /// Whether `agent` sits out the next turn.
    pub(crate) fn throttled(&self, agent: &AgentId) -> bool {
        self.cooldowns.get(agent).is_some_and(|left| *left > 0)
    }

    /// Ends the round under way.
    pub(crate) fn end_round(&mut self, end: RoundEnd, now: Timestamp) {
        if let Some(round) = self.round.take() {
            self.rounds_completed += 1;
            self.last_round = Some(LastRound {
                number: round.number,
                turns: round.turns,
                end,
                ended_at: now,
            });
        }
    }

    /// Remembers a trigger; `false` if it was seen already.
    pub(crate) fn remember_trigger(&mut self, event: EventId) -> bool {
        if self.triggers_seen.contains(&event) {
            return false;
        }
        self.triggers_seen.push_back(event);
        while self.triggers_seen.len() > REMEMBERED_TRIGGERS {
            self.triggers_seen.pop_front();
        }
        true
    }
}
