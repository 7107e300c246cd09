//! An original session, as ours: each turn becomes the user's message
//! then one message per agent answer, in order, with their timestamps;
//! `active` stays active, `paused` becomes idle, `closed` and `expired`
//! become expired (kept until their own expiry);
//! `invalidated_pending_cleanup` is not imported (it was meant to be
//! deleted). Agent states carry over, `sharedContext` goes under the
//! metadata key `sharedContext`, the original's id and version under
//! `importedFrom`. An id that is not valid here gets a new one (the
//! original stays under `importedFrom`). Versions are the store's.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use smalltalk::{AgentId, AgentState, Message, Role, Session, SessionId, SessionState};

use super::original::{OriginalAgentState, OriginalSession, OriginalState};

/// The metadata key recording where an imported record came from.
pub const IMPORTED_FROM: &str = "importedFrom";

/// The metadata key holding the original's shared context.
pub const SHARED_CONTEXT: &str = "sharedContext";

/// What became of one original session.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Ours, to be stored.
    Session(Box<MappedSession>),
    /// Not imported, on purpose.
    Skipped {
        /// The original's id.
        original_id: String,
        /// Why.
        reason: &'static str,
    },
}

/// An original session as ours.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedSession {
    /// The session (version 0: the store assigns it).
    pub session: Session,
    /// The original's id, when it was not valid here and the session got a
    /// new one.
    pub renamed_from: Option<String>,
    /// Agent ids that were not valid here, with the ids they got.
    pub renamed_agents: BTreeMap<String, AgentId>,
    /// What of the original could not be kept as it was, and why (the
    /// rest was imported).
    pub warnings: Vec<String>,
}

/// Maps `original` (read from `source`).
pub fn map_session(original: OriginalSession, source: &str) -> Mapped {
    let state = match original.state {
        OriginalState::Active => SessionState::Active,
        OriginalState::Paused => SessionState::Idle,
        OriginalState::Expired | OriginalState::Closed => SessionState::Expired,
        OriginalState::InvalidatedPendingCleanup => {
            return Mapped::Skipped {
                original_id: original.id,
                reason: "invalidated, pending cleanup: it was meant to be deleted",
            };
        }
    };
    let (id, renamed_from) = match SessionId::parse(&original.id) {
        Ok(id) if id.to_string() == original.id => (id, None),
        // Not ours (or ours written otherwise, as in upper case): an id
        // derived from the original, the same on every run.
        _ => (derived_session_id(&original.id), Some(original.id.clone())),
    };
    // Valid agent ids first, so no renamed one takes an id a valid one has.
    let mut agents = AgentNames::default();
    for name in original
        .agent_ids
        .iter()
        .chain(original.agent_states.keys())
        .chain(
            original
                .conversation_history
                .iter()
                .flat_map(|turn| turn.agent_responses.iter().map(|answer| &answer.agent_id)),
        )
    {
        agents.keep_if_valid(name);
    }
    let updated_at = original.updated_at.unwrap_or(original.created_at);
    let mut session = Session::new(id, original.created_at, std::time::Duration::ZERO);
    session.state = state;
    session.updated_at = updated_at.max(original.created_at);
    session.expires_at = original.expires_at;
    session.version = 0;
    let mut turns = original.conversation_history;
    turns.sort_by_key(|turn| turn.sequence);
    for turn in turns {
        session
            .messages
            .push(Message::new(Role::User, turn.user_message, turn.timestamp));
        for answer in turn.agent_responses {
            let agent = agents.ours(&answer.agent_id);
            session.messages.push(
                Message::new(
                    Role::Assistant,
                    answer.response,
                    answer.timestamp.unwrap_or(turn.timestamp),
                )
                .with_agent(agent),
            );
        }
    }
    for named in &original.agent_ids {
        agents.ours(named);
    }
    let mut warnings = Vec::new();
    for (named, raw) in original.agent_states {
        let agent = agents.ours(&named);
        let state = match serde_json::from_value::<OriginalAgentState>(raw) {
            Ok(state) => state,
            Err(error) => {
                warnings.push(format!(
                    "the state of agent {named:?} is not {{config, context, messageHistory}} ({error}): imported empty"
                ));
                OriginalAgentState::default()
            }
        };
        let state = agent_state(agent.clone(), &named, state, updated_at, &mut warnings);
        session.agent_states.insert(agent, state);
    }
    let mut metadata = original.metadata;
    if !original.shared_context.is_empty() {
        metadata.insert(
            SHARED_CONTEXT.into(),
            Value::Object(original.shared_context),
        );
    }
    let mut from = json!({
        "system": "smalltalk-ts",
        "source": source,
        "id": original.id,
        "version": original.version,
    });
    if !agents.renamed.is_empty() {
        from["agentIds"] = agents
            .renamed
            .iter()
            .map(|(original, ours)| (original.clone(), Value::from(ours.as_str())))
            .collect::<Map<_, _>>()
            .into();
    }
    metadata.insert(IMPORTED_FROM.into(), from);
    session.metadata = metadata;
    Mapped::Session(Box::new(MappedSession {
        session,
        renamed_from,
        renamed_agents: agents.renamed,
        warnings,
    }))
}

/// An original agent state as ours: `_metadata` in the context names the
/// trimmable fields (`{"trimmable": [...]}` or `{"<field>": {"trimmable":
/// true}}`) and is not kept; history entries are `{role, content,
/// timestamp}`.
fn agent_state(
    agent: AgentId,
    named: &str,
    original: OriginalAgentState,
    updated_at: smalltalk::Timestamp,
    warnings: &mut Vec<String>,
) -> AgentState {
    let mut state = AgentState::new(agent, updated_at);
    state.config = original.config;
    let mut context = original.context;
    if let Some(Value::Object(flags)) = context.remove("_metadata") {
        let mut trimmable: Vec<String> = match flags.get("trimmable") {
            Some(Value::Array(fields)) => fields
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => flags
                .iter()
                .filter(|(_, flag)| flag.get("trimmable") == Some(&Value::Bool(true)))
                .map(|(field, _)| field.clone())
                .collect(),
        };
        trimmable.sort();
        trimmable.dedup();
        state.trimmable_fields = trimmable;
    }
    state.context = context;
    state.history = original
        .message_history
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| {
            let Some(content) = entry.get("content") else {
                warnings.push(format!(
                    "history entry {index} of agent {named:?} has no content: left out"
                ));
                return None;
            };
            let content = match content {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let role = match entry.get("role").and_then(Value::as_str) {
                Some("user") => Role::User,
                Some("system") => Role::System,
                Some("tool") => Role::Tool,
                _ => Role::Assistant,
            };
            let timestamp = entry
                .get("timestamp")
                .and_then(|at| serde_json::from_value(at.clone()).ok())
                .unwrap_or(updated_at);
            Some(Message::new(role, content, timestamp))
        })
        .collect();
    state
}

/// The session id for an original id that is not one of ours: a UUID v4
/// made from a SHA-256 of it, so every run (and every node) gives the same.
pub fn derived_session_id(original: &str) -> SessionId {
    derived_uuid("session", original)
}

/// A UUID v4 id of `kind` (`session`, `event`, `conversation`) made from
/// a SHA-256 of `original`: the same on every run.
pub(crate) fn derived_uuid<T>(kind: &str, original: &str) -> T
where
    T: std::str::FromStr,
    T::Err: std::fmt::Debug,
{
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("smalltalk-ts {kind} {original}").as_bytes());
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    text.parse()
        .expect("version and variant bits set: a UUID v4 in its canonical form")
}

/// The characters of `original` safe in an id here (`[A-Za-z0-9_:-]`,
/// others as `-`), at most `max` of them, starting with a letter or digit.
pub(crate) fn safe_name(original: &str, max: usize) -> String {
    let safe: String = original
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':') {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    safe.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Agent ids here for the original's: valid ones as they are, others
/// made valid the same way every time (so a re-run names them alike).
#[derive(Debug, Default)]
struct AgentNames {
    taken: BTreeMap<String, AgentId>,
    used: std::collections::HashSet<AgentId>,
    renamed: BTreeMap<String, AgentId>,
}

impl AgentNames {
    /// Takes `original` as it is if it is a valid id.
    fn keep_if_valid(&mut self, original: &str) {
        if let Ok(id) = AgentId::parse(original) {
            if !self.taken.contains_key(original) {
                self.used.insert(id.clone());
                self.taken.insert(original.to_owned(), id);
            }
        }
    }

    fn ours(&mut self, original: &str) -> AgentId {
        if let Some(known) = self.taken.get(original) {
            return known.clone();
        }
        let id = AgentId::parse(original).unwrap_or_else(|_| {
            let safe = safe_name(original, 100);
            let base = if safe.is_empty() {
                "agent".to_owned()
            } else {
                safe
            };
            let mut n = 1;
            loop {
                let candidate = format!("imported-{base}-{n}");
                if let Ok(id) = AgentId::parse(&candidate) {
                    if !self.used.contains(&id) {
                        self.renamed.insert(original.to_owned(), id.clone());
                        break id;
                    }
                }
                n += 1;
            }
        });
        self.used.insert(id.clone());
        self.taken.insert(original.to_owned(), id.clone());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(state: &str, id: &str) -> OriginalSession {
        serde_json::from_value(json!({
            "id": id,
            "createdAt": "2025-03-01T10:00:00.000Z",
            "updatedAt": "2025-03-01T10:05:00.000Z",
            "expiresAt": "2025-03-08T10:00:00.000Z",
            "state": state,
            "agentIds": ["planner", "bad agent/../x"],
            "agentStates": {
                "planner": {
                    "config": {"model": "gpt-4o"},
                    "context": {"plan": [1, 2], "scratch": "long", "_metadata": {"scratch": {"trimmable": true}}},
                    "messageHistory": [{"role": "user", "content": "plan it", "timestamp": "2025-03-01T10:01:00.000Z"}]
                }
            },
            "conversationHistory": [
                {"sequence": 2, "timestamp": "2025-03-01T10:03:00.000Z", "userMessage": "and then?",
                 "agentResponses": [{"agentId": "planner", "response": "ship it"}]},
                {"sequence": 1, "timestamp": "2025-03-01T10:01:00.000Z", "userMessage": "plan the launch",
                 "agentResponses": [
                    {"agentId": "planner", "response": "step one", "timestamp": "2025-03-01T10:02:00.000Z"},
                    {"agentId": "bad agent/../x", "response": "agreed"}
                 ]}
            ],
            "sharedContext": {"topic": "launch"},
            "metadata": {"owner": "ops"},
            "version": 7
        }))
        .unwrap()
    }

    #[test]
    fn turns_become_messages_in_order_and_everything_else_carries_over() {
        let id = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
        let Mapped::Session(mapped) = map_session(original("paused", id), "/data") else {
            panic!("mapped");
        };
        let session = &mapped.session;
        assert_eq!(session.id.to_string(), id);
        assert_eq!(mapped.renamed_from, None);
        assert_eq!(session.state, SessionState::Idle);
        assert_eq!(
            session.expires_at.to_string(),
            "2025-03-08T10:00:00.000000Z"
        );
        let transcript: Vec<(Role, Option<&str>, &str)> = session
            .messages
            .iter()
            .map(|m| {
                (
                    m.role,
                    m.agent_id.as_ref().map(AgentId::as_str),
                    m.content.as_str(),
                )
            })
            .collect();
        assert_eq!(
            transcript,
            [
                (Role::User, None, "plan the launch"),
                (Role::Assistant, Some("planner"), "step one"),
                (Role::Assistant, Some("imported-bad-agent----x-1"), "agreed"),
                (Role::User, None, "and then?"),
                (Role::Assistant, Some("planner"), "ship it"),
            ]
        );
        assert_eq!(
            session.messages[2].timestamp, session.messages[0].timestamp,
            "an answer without a time takes its turn's"
        );
        let planner = &session.agent_states[&AgentId::parse("planner").unwrap()];
        assert_eq!(planner.config, json!({"model": "gpt-4o"}));
        assert_eq!(planner.trimmable_fields, ["scratch"]);
        assert!(!planner.context.contains_key("_metadata"));
        assert_eq!(planner.history[0].content, "plan it");
        assert_eq!(session.metadata["owner"], "ops");
        assert_eq!(session.metadata[SHARED_CONTEXT], json!({"topic": "launch"}));
        let from = &session.metadata[IMPORTED_FROM];
        assert_eq!(
            (from["id"].as_str(), from["version"].as_u64()),
            (Some(id), Some(7))
        );
        assert_eq!(
            from["agentIds"]["bad agent/../x"],
            "imported-bad-agent----x-1"
        );
        assert_eq!(mapped.renamed_agents.len(), 1);
    }

    #[test]
    fn states_map_and_pending_cleanup_is_left_out() {
        let id = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
        for (theirs, ours) in [
            ("active", SessionState::Active),
            ("paused", SessionState::Idle),
            ("expired", SessionState::Expired),
            ("closed", SessionState::Expired),
        ] {
            let Mapped::Session(mapped) = map_session(original(theirs, id), "/data") else {
                panic!("{theirs} is imported");
            };
            assert_eq!(mapped.session.state, ours, "{theirs}");
        }
        assert!(matches!(
            map_session(original("invalidated_pending_cleanup", id), "/data"),
            Mapped::Skipped { original_id, .. } if original_id == id
        ));
    }

    #[test]
    fn an_id_that_is_not_ours_gets_a_new_one_and_keeps_the_original() {
        for bad in [
            "session-42",
            "../../etc/passwd",
            "1b4e28ba-2fa1-1d3b-a3f5-ef19b5a7633b",
        ] {
            let Mapped::Session(mapped) = map_session(original("active", bad), "/data") else {
                panic!("mapped");
            };
            assert_eq!(mapped.renamed_from.as_deref(), Some(bad));
            assert_ne!(mapped.session.id.to_string(), bad);
            assert_eq!(mapped.session.metadata[IMPORTED_FROM]["id"], bad);
        }
    }

    #[test]
    fn a_renamed_agent_never_takes_a_valid_agents_id() {
        let mut session = original("active", "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b");
        // A valid agent already named as the invalid one would be renamed.
        session.agent_ids = vec!["bad agent/../x".into(), "imported-bad-agent----x-1".into()];
        let Mapped::Session(mapped) = map_session(session, "/data") else {
            panic!("mapped");
        };
        let renamed = &mapped.renamed_agents["bad agent/../x"];
        assert_ne!(renamed.as_str(), "imported-bad-agent----x-1");
        assert_eq!(
            derived_session_id("legacy-42"),
            derived_session_id("legacy-42"),
            "the same on every run"
        );
        assert_ne!(
            derived_session_id("legacy-42"),
            derived_session_id("legacy-43")
        );
        // A UUID written otherwise is ours normalised, and listed.
        let upper = "1B4E28BA-2FA1-4D3B-A3F5-EF19B5A7633B";
        let Mapped::Session(mapped) = map_session(original("active", upper), "/data") else {
            panic!("mapped");
        };
        assert_eq!(mapped.renamed_from.as_deref(), Some(upper));
    }

    #[test]
    fn agent_names_are_made_valid_alike_every_time() {
        let mut first = AgentNames::default();
        let mut second = AgentNames::default();
        for name in ["ok", "a b", "a/b", "", "ünï"] {
            assert_eq!(first.ours(name), second.ours(name), "{name:?}");
            assert_eq!(first.ours(name), first.ours(name), "{name:?}");
        }
        assert_ne!(first.ours("a b"), first.ours("a/b"), "no two share an id");
        assert_eq!(first.ours("ok").as_str(), "ok");
    }
}
