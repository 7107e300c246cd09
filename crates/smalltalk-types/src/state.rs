//! Versioned state records.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::format::{Versioned, default_format_version};
use crate::{StorageKey, Timestamp};

/// What a versioned record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntityType {
    /// A session.
    Session,
    /// An agent.
    Agent,
    /// A group conversation.
    Conversation,
    /// State shared by several agents or instances.
    Shared,
}

/// One version of an entity's state (FR-023).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateVersion {
    /// What kind of entity.
    pub entity_type: EntityType,
    /// Which entity.
    pub entity_id: StorageKey,
    /// Monotonically increasing per entity, from 1.
    pub version: u64,
    /// When this version was written.
    pub timestamp: Timestamp,
    /// Who wrote it.
    pub author: String,
    /// The state itself.
    pub snapshot: Value,
    /// Stored-format version (see [`crate::format`]).
    #[serde(default = "default_format_version")]
    pub format_version: u32,
}

impl Versioned for StateVersion {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}
