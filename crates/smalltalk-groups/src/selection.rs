//! The speaker-selection pipeline, in this order:
//!
//! 1. the group's custom selector function, if any (its pick is used when
//!    it is eligible);
//! 2. the candidates: participants passing the candidate filter and the
//!    transition rules;
//! 3. throttling: an agent that took `max_consecutive` turns in a row sits
//!    out its cooldown;
//! 4. the strategy (round-robin, priority, or an LLM asked at most 3
//!    times, each retry told the exact error);
//! 5. after the last attempt, round-robin among the eligible: never an
//!    excluded agent. With no eligible agent, there is no speaker and the
//!    round ends ([`RoundEnd::NoEligibleSpeaker`](crate::RoundEnd)). Nothing
//!    loops.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use smalltalk_types::{AgentId, ConversationId, Message};

use crate::llm::{ChatMessage, ChatRequest, LlmClient, ResponseFormat};
use crate::{GroupRecord, Participant, Strategy};

/// Who speaks next, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    /// The speaker.
    pub agent_id: AgentId,
    /// How sure the selector was, from 0 to 1 (1 for the deterministic
    /// strategies, 0 for a fallback).
    pub confidence: f64,
    /// Why this agent.
    pub reason: String,
    /// How long the selection took.
    #[serde(with = "micros")]
    pub latency: Duration,
    /// LLM answers asked for (0 without the LLM).
    pub attempts: u32,
    /// The group's strategy.
    pub strategy: Strategy,
    /// Which stage of the pipeline chose.
    pub source: SelectionSource,
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_micros()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(deserializer)?))
    }
}

/// Which stage of the pipeline chose a speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectionSource {
    /// The group's custom selector function.
    Custom,
    /// The group's strategy.
    Strategy,
    /// The deterministic fallback after the LLM's last invalid answer (or
    /// its failure).
    Fallback,
}

/// What the hooks see when a speaker is chosen.
#[derive(Debug, Clone, Copy)]
pub struct SelectionContext<'a> {
    /// The group.
    pub group_id: ConversationId,
    /// The round (from 1).
    pub round: u64,
    /// The turn being chosen for (from 1).
    pub turn: u64,
    /// Every participant.
    pub participants: &'a [Participant],
    /// Who spoke last.
    pub last_speaker: Option<&'a AgentId>,
    /// The most recent messages, oldest first.
    pub recent: &'a [Message],
    /// The current topic.
    pub topic: Option<&'a str>,
    /// The shared context.
    pub shared_context: &'a Map<String, Value>,
}

/// A custom selector: names the next speaker, or `None` to leave it to the
/// strategy. A pick that is not eligible now is ignored (and logged).
pub type SelectorFn = Arc<dyn Fn(&SelectionContext<'_>) -> Option<AgentId> + Send + Sync>;

/// A candidate filter: whether a participant may speak next.
pub type CandidateFilter = Arc<dyn Fn(&SelectionContext<'_>, &Participant) -> bool + Send + Sync>;

/// A group's functions, set with
/// [`GroupManager::set_hooks`](crate::GroupManager::set_hooks). They are
/// code, so they are not saved with the group: a process that resumes a
/// group sets them again.
#[derive(Clone, Default)]
pub struct GroupHooks {
    /// Stage 1 of the pipeline.
    pub selector: Option<SelectorFn>,
    /// Part of stage 2.
    pub filter: Option<CandidateFilter>,
}

impl fmt::Debug for GroupHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupHooks")
            .field("selector", &self.selector.is_some())
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl GroupHooks {
    /// With a custom selector.
    pub fn selector(
        mut self,
        selector: impl Fn(&SelectionContext<'_>) -> Option<AgentId> + Send + Sync + 'static,
    ) -> Self {
        self.selector = Some(Arc::new(selector));
        self
    }

    /// With a candidate filter.
    pub fn filter(
        mut self,
        filter: impl Fn(&SelectionContext<'_>, &Participant) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }
}

/// Runs a hook (code the application gave); a panic is logged and
/// `fallback` stands in for its answer, so a buggy hook cannot take a
/// round down.
pub(crate) fn guarded<T>(
    hook: &str,
    group_id: ConversationId,
    call: impl FnOnce() -> T,
    fallback: T,
) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        tracing::error!(%group_id, "the group's {hook} panicked: {}", panic_message(panic.as_ref()));
        fallback
    })
}

/// What a panic said, when it said it with a string.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Stages 2 and 3: the participants that may speak now, in participant
/// order, leaving out `excluded` (agents that failed in this turn).
pub(crate) fn eligible<'a>(
    record: &'a GroupRecord,
    hooks: &GroupHooks,
    context: &SelectionContext<'_>,
    excluded: &BTreeSet<AgentId>,
) -> Vec<&'a Participant> {
    record
        .spec
        .participants
        .iter()
        .filter(|participant| {
            let agent = &participant.agent_id;
            !excluded.contains(agent)
                && record
                    .spec
                    .transitions
                    .as_ref()
                    .is_none_or(|rules| rules.permits(record.last_speaker.as_ref(), agent))
                && hooks.filter.as_ref().is_none_or(|filter| {
                    guarded(
                        "candidate filter",
                        context.group_id,
                        || filter(context, participant),
                        false,
                    )
                })
                && !record.throttled(agent)
        })
        .collect()
}

/// The first eligible participant after `last` in participant order.
pub(crate) fn round_robin<'a>(
    participants: &[Participant],
    last: Option<&AgentId>,
    eligible: &[&'a Participant],
) -> Option<&'a Participant> {
    let start = last
        .and_then(|last| {
            participants
                .iter()
                .position(|participant| participant.agent_id == *last)
        })
        .map_or(0, |index| index + 1);
    (0..participants.len())
        .map(|offset| &participants[(start + offset) % participants.len()].agent_id)
        .find_map(|agent| {
            eligible
                .iter()
                .copied()
                .find(|participant| participant.agent_id == *agent)
        })
}

/// The highest priority; ties go to the least recent speaker (never
/// spoken first), then participant order.
pub(crate) fn by_priority<'a>(
    eligible: &[&'a Participant],
    last_spoke: &BTreeMap<AgentId, u64>,
) -> Option<&'a Participant> {
    eligible
        .iter()
        .copied()
        .enumerate()
        .max_by(|(left_index, left), (right_index, right)| {
            let recency = |participant: &Participant| {
                last_spoke.get(&participant.agent_id).copied().unwrap_or(0)
            };
            left.priority
                .cmp(&right.priority)
                .then_with(|| recency(right).cmp(&recency(left)))
                .then_with(|| right_index.cmp(left_index))
        })
        .map(|(_, participant)| participant)
}

/// A valid answer of the LLM selector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pick {
    pub(crate) agent_id: AgentId,
    pub(crate) confidence: f64,
    pub(crate) reasoning: String,
}

/// Reads the selector's answer: the first JSON object in it (prose around
/// it is tolerated) with an `agentId` naming an eligible participant. The
/// error is what the model is told.
pub(crate) fn parse_pick(
    answer: &str,
    participants: &[Participant],
    eligible: &[&Participant],
) -> Result<Pick, String> {
    let names = |list: &mut dyn Iterator<Item = &AgentId>| {
        list.map(AgentId::as_str).collect::<Vec<_>>().join(", ")
    };
    let eligible_names = names(&mut eligible.iter().map(|participant| &participant.agent_id));
    if answer.trim().is_empty() {
        return Err(format!(
            "the answer was empty; answer with a JSON object whose agentId is one of: {eligible_names}"
        ));
    }
    let object = answer
        .match_indices('{')
        .find_map(|(start, _)| {
            serde_json::Deserializer::from_str(&answer[start..])
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok)
                .and_then(|value| match value {
                    Value::Object(object) => Some(object),
                    _ => None,
                })
        })
        .ok_or_else(|| {
            format!(
                "no JSON object found in the answer; answer with {{\"agentId\": ..., \"confidence\": ..., \"reasoning\": ...}} where agentId is one of: {eligible_names}"
            )
        })?;
    let named = object
        .get("agentId")
        .or_else(|| object.get("agent_id"))
        .ok_or_else(|| {
            format!("the JSON object has no agentId; it must be one of: {eligible_names}")
        })?;
    let Some(named) = named.as_str() else {
        return Err(format!(
            "agentId must be a string, one of: {eligible_names}"
        ));
    };
    let named = named.trim();
    if !participants
        .iter()
        .any(|participant| participant.agent_id.as_str() == named)
    {
        return Err(format!(
            "agentId {named:?} is not a participant; answer with one of: {eligible_names}"
        ));
    }
    let Some(chosen) = eligible
        .iter()
        .find(|participant| participant.agent_id.as_str() == named)
    else {
        return Err(format!(
            "agentId {named:?} may not speak now (repeats, transition rules or throttling exclude it); answer with one of: {eligible_names}"
        ));
    };
    let confidence = match object.get("confidence") {
        None | Some(Value::Null) => 0.5,
        Some(value) => match value.as_f64() {
            Some(confidence) if (0.0..=1.0).contains(&confidence) => confidence,
            _ => return Err("confidence must be a number from 0 to 1".into()),
        },
    };
    let reasoning = object
        .get("reasoning")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(Pick {
        agent_id: chosen.agent_id.clone(),
        confidence,
        reasoning,
    })
}

/// The LLM selector: asks the model who speaks next, at most `attempts`
/// times.
#[derive(Debug, Clone)]
pub(crate) struct LlmSelector {
    pub(crate) client: LlmClient,
    pub(crate) attempts: u32,
}

/// What the LLM selector came to.
#[derive(Debug)]
pub(crate) enum LlmOutcome {
    Picked { pick: Pick, attempts: u32 },
    GaveUp { attempts: u32, last_error: String },
}

impl LlmSelector {
    pub(crate) fn prompt(
        context: &SelectionContext<'_>,
        eligible: &[&Participant],
    ) -> Vec<ChatMessage> {
        use std::fmt::Write;
        let mut system = String::from(
            "You choose who speaks next in a group conversation, so the conversation moves forward with the participant best placed to answer.\nParticipants:\n",
        );
        for participant in context.participants {
            let _ = writeln!(
                system,
                "- {} ({}): {}",
                participant.agent_id, participant.role, participant.description
            );
        }
        if let Some(topic) = context.topic {
            let _ = writeln!(system, "Topic: {topic}");
        }
        if let Some(last) = context.last_speaker {
            let _ = writeln!(system, "The last speaker was {last}.");
        }
        let names: Vec<&str> = eligible
            .iter()
            .map(|participant| participant.agent_id.as_str())
            .collect();
        let _ = write!(
            system,
            "Who may speak now: {}.\nAnswer with only a JSON object: {{\"agentId\": \"<one of those>\", \"confidence\": <0 to 1>, \"reasoning\": \"<one sentence>\"}}",
            names.join(", ")
        );
        let mut transcript = String::from("The conversation so far:\n");
        for message in context.recent {
            let author = message.agent_id.as_ref().map_or("user", AgentId::as_str);
            let _ = writeln!(transcript, "[{author}] {}", message.content);
        }
        transcript.push_str("\nWho speaks next?");
        vec![ChatMessage::system(system), ChatMessage::user(transcript)]
    }

    pub(crate) async fn select(
        &self,
        context: &SelectionContext<'_>,
        eligible: &[&Participant],
    ) -> LlmOutcome {
        let mut messages = Self::prompt(context, eligible);
        let mut last_error = String::new();
        for attempt in 1..=self.attempts {
            let request = ChatRequest {
                messages: messages.clone(),
                temperature: Some(0.0),
                response_format: Some(ResponseFormat {
                    kind: "json_object".into(),
                }),
                ..ChatRequest::default()
            };
            let answer = match self.client.chat(&request).await {
                Ok(response) => response.text().to_owned(),
                // The client retried already; a failed call ends the asking.
                Err(error) => {
                    return LlmOutcome::GaveUp {
                        attempts: attempt,
                        last_error: format!("the selector's LLM call failed: {error}"),
                    };
                }
            };
            match parse_pick(&answer, context.participants, eligible) {
                Ok(pick) => {
                    return LlmOutcome::Picked {
                        pick,
                        attempts: attempt,
                    };
                }
                Err(error) => {
                    tracing::debug!(attempt, %error, "invalid speaker selection");
                    messages.push(ChatMessage::assistant(answer));
                    messages.push(ChatMessage::user(format!(
                        "That answer is invalid: {error}. Answer again with only the JSON object."
                    )));
                    last_error = error;
                }
            }
        }
        LlmOutcome::GaveUp {
            attempts: self.attempts,
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participants(names: &[&str]) -> Vec<Participant> {
        names
            .iter()
            .map(|name| Participant::new(AgentId::parse(name).unwrap(), "role"))
            .collect()
    }

    #[test]
    fn answers_are_validated_with_errors_worth_repeating() {
        let all = participants(&["researcher", "writer", "reviewer"]);
        let eligible: Vec<&Participant> = all.iter().skip(1).collect();
        let pick = parse_pick(
            "Sure! Here you go: {\"agentId\": \"writer\", \"confidence\": 0.8, \"reasoning\": \"drafts next\"} hope that helps",
            &all,
            &eligible,
        )
        .unwrap();
        assert_eq!(pick.agent_id.as_str(), "writer");
        assert_eq!(pick.confidence, 0.8);
        assert_eq!(pick.reasoning, "drafts next");
        let cases = [
            ("", "empty"),
            ("the writer should go", "no JSON object"),
            ("{\"who\": \"writer\"}", "no agentId"),
            ("{\"agentId\": 3}", "must be a string"),
            ("{\"agentId\": \"mallory\"}", "not a participant"),
            ("{\"agentId\": \"researcher\"}", "may not speak now"),
            ("{\"agentId\": \"writer\", \"confidence\": 7}", "confidence"),
        ];
        for (answer, expected) in cases {
            let error = parse_pick(answer, &all, &eligible).unwrap_err();
            assert!(error.contains(expected), "{answer:?} -> {error}");
        }
        // A brace inside prose before the real object is skipped.
        let pick = parse_pick(
            "{not json} then {\"agentId\":\"reviewer\"}",
            &all,
            &eligible,
        )
        .unwrap();
        assert_eq!(pick.agent_id.as_str(), "reviewer");
        assert_eq!(pick.confidence, 0.5);
    }

    #[test]
    fn round_robin_and_priority_choose_deterministically() {
        let mut all = participants(&["a", "b", "c"]);
        let refs: Vec<&Participant> = all.iter().collect();
        let pick = |last: Option<&str>, eligible: &[&Participant]| {
            let last = last.map(|name| AgentId::parse(name).unwrap());
            round_robin(&all, last.as_ref(), eligible).map(|p| p.agent_id.as_str().to_owned())
        };
        assert_eq!(pick(None, &refs).as_deref(), Some("a"));
        assert_eq!(pick(Some("a"), &refs).as_deref(), Some("b"));
        assert_eq!(pick(Some("c"), &refs).as_deref(), Some("a"));
        assert_eq!(pick(Some("a"), &refs[2..]).as_deref(), Some("c"));
        assert_eq!(pick(Some("a"), &[]), None);

        all[1].priority = 5;
        all[2].priority = 5;
        let refs: Vec<&Participant> = all.iter().collect();
        let mut spoke = BTreeMap::new();
        assert_eq!(by_priority(&refs, &spoke).unwrap().agent_id.as_str(), "b");
        spoke.insert(AgentId::parse("b").unwrap(), 4);
        assert_eq!(
            by_priority(&refs, &spoke).unwrap().agent_id.as_str(),
            "c",
            "the tie goes to the one that spoke least recently"
        );
        spoke.insert(AgentId::parse("c").unwrap(), 5);
        assert_eq!(by_priority(&refs, &spoke).unwrap().agent_id.as_str(), "b");
    }
}
