//! SmallTalk-rs: a robustness layer for multi-agent LLM applications.
//!
//! Conversations that survive restarts and crashes, built as small crates
//! you can pick from; this umbrella crate re-exports them behind features.
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`types`] | `smalltalk-types` | ids, domain records, errors, ports |
//! | [`storage`] | `smalltalk-storage` | storage traits; memory, SQLite, PostgreSQL backends |
//! | `session` | `smalltalk-session` | SessionManager: conversations that survive restarts (feature `session`) |
//! | `events` | `smalltalk-events` | EventBus: wildcard pub/sub over a durable log, with replay (feature `events`) |
//! | `health` | `smalltalk-health` | AgentHealthMonitor: heartbeats, probes, recovery, process agents (feature `health`) |
//! | `state` | `smalltalk-state` | StateStore: versioned state with revisions, transactions, watch (feature `state`) |
//! | `groups` | `smalltalk-groups` | GroupManager: group conversations with LLM agents and speaker selection (feature `groups`) |
//!
//! [`Runtime`] (features `session`, `events`, `health`, `state` and
//! `groups`, all default) opens one store from a URL, builds the session
//! manager, the event bus, the health monitor, the state store and the
//! group manager over it and connects every port between them;
//! `shutdown()` closes it all in order. Use it when you want everything;
//! use a capability crate alone when you want one.
//!
//! The capability crates do not depend on each other; they meet through the
//! ports in [`types`]. An [`EventBus`] is an
//! [`EventSink`](types::EventSink), so a session manager built with
//! `.events(Arc::new(bus.clone()))` publishes `session:created`,
//! `session:message-added`, `session:state-changed`, `session:invalidated`
//! and `session:deleted` on the bus. An `AgentHealthMonitor` built with
//! `.events(Arc::new(bus.clone()))` and `.replayer(Arc::new(bus.clone()))`
//! announces `agent:health-changed` there, and a recovered agent gets the
//! events its subscriptions missed replayed from the bus before it counts
//! as ready.
//!
//! # Features
//!
//! - `sqlite` (default): the embedded SQLite backend, no setup needed.
//! - `session` (default): session persistence and recovery.
//! - `events` (default): the event bus.
//! - `health` (default): agent health monitoring and recovery.
//! - `postgres`: the PostgreSQL backend.
//! - `full`: everything.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use smalltalk::{AppendGuard, Expected, Message, Role, Session, SessionId, Timestamp};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = smalltalk::open("memory://").await?;
//! let now = Timestamp::now();
//! let session = Session::new(SessionId::new(), now, Duration::from_secs(3600));
//! store.save_session(&session, Expected::Absent).await?;
//! store.append_messages(session.id, &[Message::new(Role::User, "hi", now)], AppendGuard::NONE).await?;
//! assert_eq!(store.get_session(session.id).await?.unwrap().messages.len(), 1);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(all(
    feature = "session",
    feature = "events",
    feature = "health",
    feature = "state",
    feature = "groups"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(
        feature = "session",
        feature = "events",
        feature = "health",
        feature = "state",
        feature = "groups"
    )))
)]
pub mod runtime;
#[cfg(all(
    feature = "session",
    feature = "events",
    feature = "health",
    feature = "state",
    feature = "groups"
))]
pub use runtime::{Error, Runtime, RuntimeBuilder};

#[cfg(feature = "events")]
#[cfg_attr(docsrs, doc(cfg(feature = "events")))]
pub use smalltalk_events as events;
#[cfg(feature = "groups")]
#[cfg_attr(docsrs, doc(cfg(feature = "groups")))]
pub use smalltalk_groups as groups;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub use smalltalk_health as health;
#[cfg(feature = "session")]
#[cfg_attr(docsrs, doc(cfg(feature = "session")))]
pub use smalltalk_session as session;
#[cfg(feature = "state")]
#[cfg_attr(docsrs, doc(cfg(feature = "state")))]
pub use smalltalk_state as state;
pub use smalltalk_storage as storage;
pub use smalltalk_types as types;

#[cfg(feature = "events")]
#[cfg_attr(docsrs, doc(cfg(feature = "events")))]
pub use smalltalk_events::{
    Delivery, EventBus, EventBusConfig, Outcome, PublishOptions, SubscribeOptions,
};
#[cfg(feature = "groups")]
#[cfg_attr(docsrs, doc(cfg(feature = "groups")))]
pub use smalltalk_groups::{
    Agent, GroupManager, GroupSpec, GroupsConfig, LlmAgent, Participant, ScriptedAgent, Strategy,
    Termination,
};
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub use smalltalk_health::{AgentHealthMonitor, HealthConfig, MonitoredAgent};
#[cfg(feature = "session")]
#[cfg_attr(docsrs, doc(cfg(feature = "session")))]
pub use smalltalk_session::{CreateOptions, SessionConfig, SessionManager};
#[cfg(feature = "state")]
#[cfg_attr(docsrs, doc(cfg(feature = "state")))]
pub use smalltalk_state::{ConflictPolicy, Expect, Namespace, Policies, StateConfig, StateStore};
pub use smalltalk_storage::{
    AppendGuard, Error as StorageError, Expected, KeyValueStore, SessionFilter, SessionStore,
    Store, StoreAdmin, open, open_with,
};
pub use smalltalk_types::{
    AgentId, AgentState, ConversationId, Message, Role, Session, SessionId, SessionState,
    StorageKey, Timestamp,
};
