//! Entity namespaces (FR-023 `EntityType`): where the state of a session,
//! an agent or a conversation lives, so it can be listed, watched and purged
//! as one.

use std::fmt;

use smalltalk_storage::versioned::KeyPrefix;
use smalltalk_types::{AgentId, ConversationId, SessionId, StorageKey};

use crate::Result;

/// What a namespace belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EntityType {
    /// A session: purged, history included, when the session is
    /// invalidated or deleted.
    Session,
    /// An agent: what it shares beyond one session (memory blocks,
    /// configuration). Per-session agent state stays in the session.
    Agent,
    /// A conversation (a group's, say).
    Conversation,
}

impl EntityType {
    /// `session`, `agent` or `conversation`: the first segment of its keys.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Session => "session",
            EntityType::Agent => "agent",
            EntityType::Conversation => "conversation",
        }
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keys of one entity: `session:<uuid>:<name>`,
/// `conversation:<uuid>:<name>`, and `agent:<length>:<id>:<name>` (an agent
/// id may hold `:`, so its length comes first: no agent's prefix is another
/// agent's).
///
/// ```
/// use smalltalk_state::Namespace;
/// use smalltalk_types::AgentId;
///
/// let planner = Namespace::agent(&AgentId::parse("planner")?);
/// assert_eq!(planner.key("memory")?.as_str(), "agent:7:planner:memory");
/// assert!(!planner.prefix().matches("agent:10:planner:x:memory"));
/// # Ok::<(), smalltalk_state::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    entity: EntityType,
    prefix: KeyPrefix,
}

impl Namespace {
    /// A session's keys.
    pub fn session(id: SessionId) -> Self {
        Self::of(EntityType::Session, format!("session:{id}:"))
    }

    /// An agent's keys.
    pub fn agent(id: &AgentId) -> Self {
        Self::of(
            EntityType::Agent,
            format!("agent:{}:{}:", id.as_str().len(), id.as_str()),
        )
    }

    /// A conversation's keys.
    pub fn conversation(id: ConversationId) -> Self {
        Self::of(EntityType::Conversation, format!("conversation:{id}:"))
    }

    fn of(entity: EntityType, prefix: String) -> Self {
        Self {
            entity,
            prefix: KeyPrefix::parse(&prefix).expect("ids are in the key charset"),
        }
    }

    /// Whose it is.
    pub fn entity(&self) -> EntityType {
        self.entity
    }

    /// The prefix every key of the namespace starts with.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// The key `name` in this namespace; `name` is in the key charset and
    /// the whole key at most [`StorageKey::MAX_LEN`] bytes, else
    /// [`smalltalk_types::Error::InvalidId`].
    pub fn key(&self, name: &str) -> Result<StorageKey> {
        // The name itself must be a valid key, so it cannot start with `.`
        // or `:` or hold `..` across the join.
        StorageKey::parse(name)?;
        Ok(StorageKey::parse(&format!("{}{name}", self.prefix))?)
    }
}
