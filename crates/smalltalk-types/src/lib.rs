//! Domain types shared by every SmallTalk-rs crate.
//!
//! This crate holds what the capability crates agree on, and nothing that
//! does I/O:
//!
//! - [`id`]: validated identifiers. [`SessionId`] and the other UUID ids are
//!   version 4 UUIDs from a CSPRNG seeded by the OS; [`AgentId`] and [`StorageKey`] accept
//!   only a documented safe charset, so no id can escape its storage location.
//! - records, all serialized as camelCase JSON: [`Session`] and [`Message`]
//!   and [`AgentState`] ([`session`]), [`AgentHealthStatus`] and
//!   [`RecoveryStrategy`] ([`health`]), [`Event`] and [`EventReplayPolicy`]
//!   ([`event`]). Groups and versioned state define their own records in
//!   their crates when they land;
//! - [`topic`]: event topics and subscription patterns (`agent:*`,
//!   `task.>`), with their grammar and matcher;
//! - [`format`](mod@format): the stored-format version every persisted record carries,
//!   so later releases can migrate old data;
//! - ports: the [`Clock`] ([`time`]), the [`AlertSink`] and the [`EventSink`]
//!   ([`ports`]) through
//!   which crates reach services they do not own;
//! - [`Backoff`]: the one exponential retry schedule, with a cap and
//!   checked arithmetic;
//! - [`BackgroundTask`]: the one convention for background work (stops on
//!   drop, `shutdown()` lets the run under way finish);
//! - [`enum@Error`]: validation and format errors.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use smalltalk_types::{AgentId, Message, Role, Session, SessionId, Timestamp};
//!
//! let now = Timestamp::now();
//! let mut session = Session::new(SessionId::new(), now, Duration::from_secs(3600));
//! let writer = AgentId::parse("writer")?;
//! session.messages.push(Message::new(Role::Assistant, "Hello!", now).with_agent(writer));
//!
//! // Hostile ids never get past parsing.
//! assert!(AgentId::parse("../../etc/passwd").is_err());
//!
//! let json = serde_json::to_string(&session)?;
//! assert!(json.contains("\"agentId\":\"writer\""));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backoff;
pub mod error;
pub mod event;
pub mod format;
pub mod health;
pub mod id;
pub mod payload;
pub mod ports;
pub mod session;
pub mod task;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod time;
pub mod topic;

pub use backoff::Backoff;
pub use error::{Error, IdKind, InvalidIdReason, Result};
pub use event::{Event, EventPriority, EventReplayPolicy, ReplayMode};
pub use format::{FORMAT_VERSION, Versioned};
pub use health::{
    AgentHealthStatus, AgentPhase, HealthState, RecoveryKind, RecoveryStrategy, RestartType,
};
pub use id::{
    AgentId, ConversationId, EventId, MessageId, SessionId, StorageKey, SubscriberId, TryIntoId,
};
pub use payload::Payload;
pub use ports::{
    AgentFailureReport, AgentFailureSink, AgentStateSource, Alert, AlertSeverity, AlertSink,
    Announcement, BoxError, DegradationControl, EventSink, LogAlertSink, MissedEventReplayer,
    ReplayCounts, SessionContentPurger,
};
pub use session::{AgentState, Message, Role, Session, SessionState, SessionSummary};
pub use task::{BackgroundTask, StopSignal};
#[cfg(any(test, feature = "test-util"))]
pub use test_util::{ManualClock, RecordingAlertSink, RecordingEventSink};
pub use time::{Clock, SystemClock, Timestamp};
pub use topic::{MAX_TOPIC_LEN, Topic, TopicPattern};
