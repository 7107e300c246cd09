//! Options for publishing, subscribing and replaying.

use serde_json::{Map, Value};
use smalltalk_types::{
    ConversationId, EventId, EventPriority, EventReplayPolicy, Payload, SessionId, Timestamp,
    Topic, TopicPattern, TryIntoId,
};

use crate::Result;

/// How an event is published. Everything is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishOptions {
    /// Urgency. Default normal.
    pub priority: EventPriority,
    /// The session it belongs to.
    pub session_id: Option<SessionId>,
    /// The conversation it belongs to.
    pub conversation_id: Option<ConversationId>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// Application-level type. Default: the topic.
    pub event_type: Option<String>,
    /// Who publishes. Default: [`EventBusConfig::publisher`](crate::EventBusConfig::publisher).
    pub publisher: Option<String>,
    /// The event's id. Default: a new one. A publisher that retries after a
    /// failure it cannot interpret reuses the id, and subscribers drop the
    /// second copy (FR-011a).
    pub id: Option<EventId>,
}

impl PublishOptions {
    /// Marks the event critical (replayed under the default policy).
    pub fn critical(mut self) -> Self {
        self.priority = EventPriority::Critical;
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: EventPriority) -> Self {
        self.priority = priority;
        self
    }

    /// Scopes the event to a session.
    pub fn session(mut self, id: SessionId) -> Self {
        self.session_id = Some(id);
        self
    }

    /// Scopes the event to a conversation.
    pub fn conversation(mut self, id: ConversationId) -> Self {
        self.conversation_id = Some(id);
        self
    }

    /// Adds one metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the application-level type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets who publishes.
    pub fn publisher(mut self, publisher: impl Into<String>) -> Self {
        self.publisher = Some(publisher.into());
        self
    }

    /// Sets the event id (for a retried publish).
    pub fn id(mut self, id: EventId) -> Self {
        self.id = Some(id);
        self
    }
}

/// One event to publish in a batch ([`EventBus::publish_batch`](crate::EventBus::publish_batch)).
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The topic.
    pub topic: Topic,
    /// The body.
    pub payload: Payload,
    /// Priority, scope, metadata.
    pub options: PublishOptions,
}

impl Draft {
    /// A draft on `topic` (validated) with default options.
    pub fn new(topic: impl TryIntoId<Topic>, payload: impl Into<Payload>) -> Result<Self> {
        Ok(Self {
            topic: topic.try_into_id()?,
            payload: payload.into(),
            options: PublishOptions::default(),
        })
    }

    /// Sets the options.
    pub fn options(mut self, options: PublishOptions) -> Self {
        self.options = options;
        self
    }
}

/// A published event's id and log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub id: EventId,
    /// Its position in the log.
    pub position: u64,
}

/// Which events a subscription receives besides its pattern, and how it
/// replays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Only events of this priority.
    pub priority: Option<EventPriority>,
    /// Only events of this session.
    pub session_id: Option<SessionId>,
    /// Only events of this conversation.
    pub conversation_id: Option<ConversationId>,
    /// The replay policy on re-subscribe; default: the configured one for
    /// this subscriber ([`EventBusConfig::policies`](crate::EventBusConfig::policies)).
    pub policy: Option<EventReplayPolicy>,
}

impl SubscribeOptions {
    /// Only critical events.
    pub fn critical_only(mut self) -> Self {
        self.priority = Some(EventPriority::Critical);
        self
    }

    /// Only events of this priority.
    pub fn priority(mut self, priority: EventPriority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Only events of this session.
    pub fn session(mut self, id: SessionId) -> Self {
        self.session_id = Some(id);
        self
    }

    /// Only events of this conversation.
    pub fn conversation(mut self, id: ConversationId) -> Self {
        self.conversation_id = Some(id);
        self
    }

    /// This replay policy instead of the configured one.
    pub fn policy(mut self, policy: EventReplayPolicy) -> Self {
        self.policy = Some(policy);
        self
    }
}

/// Which past events [`EventBus::replay`](crate::EventBus::replay)
/// delivers again; each set field must match, on top of each
/// subscription's own pattern and filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Published at or after this time.
    pub since: Option<Timestamp>,
    /// Published before this time.
    pub until: Option<Timestamp>,
    /// Only this priority.
    pub priority: Option<EventPriority>,
    /// Only topics matching one of these (empty: all).
    pub topics: Vec<TopicPattern>,
    /// At most this many per subscription (the oldest first).
    pub limit: Option<usize>,
    /// Leave out imported history
    /// ([`Event::is_imported`](smalltalk_types::Event::is_imported)),
    /// delivered by default: the replay of what a recovered agent missed
    /// sets it, as what it missed was live.
    pub skip_imported: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Events delivered again.
    pub delivered: u64,
    /// Of which the handler gave up on (naks or panics past
    /// `max_deliver`).
    pub failed: u64,
    /// Purged events the replay could not deliver, if any.
    pub gaps: Vec<crate::GapNotice>,
}
