//! Conversations that survive restarts: the [`SessionManager`].
//!
//! A session is one conversation: its message history, one state record per
//! agent, metadata, a lifecycle state and an expiry. The manager keeps them
//! in any [`smalltalk_storage`] backend (memory, SQLite, PostgreSQL):
//!
//! - **create / restore**: [`SessionManager::create`] gives a new UUID v4
//!   session that expires after its TTL (default 7 days);
//!   [`SessionManager::restore`] returns it whole, identical to what was
//!   saved, from any process sharing the store.
//! - **updates under optimistic locking**: [`SessionManager::update`] takes
//!   a closure and re-runs it on fresh data when another writer got there
//!   first, so no update is lost; [`SessionManager::save`] (a blind
//!   snapshot) falls back to last-write-wins with a WARN.
//! - **appends that never conflict**: [`SessionManager::add_message`] adds
//!   to the history without rewriting it; an invalidated or expired session
//!   refuses, atomically, even against another process.
//! - **agent state preservation**: [`SessionManager::update_agent_state`]
//!   keeps the newest turns and trims what is over the size limit (see
//!   [`AgentStateLimits`]); large states are stored compressed.
//! - **capacity**: at most [`SessionConfig::max_active_sessions`] active
//!   sessions; beyond, [`Error::CapacityExceeded`] with a retry-after hint.
//! - **invalidation, expiry and idling**: [`SessionManager::invalidate`],
//!   [`SessionManager::cleanup_expired`]; [`SessionManager::spawn_maintenance`]
//!   runs cleanup and moves sessions inactive for `idle_after` to `idle`
//!   periodically.
//!
//! Durability: every write is in storage before the call returns. Metrics go
//! through the [`metrics`] facade (`smalltalk_sessions_active`,
//! `smalltalk_session_restore_seconds`, `smalltalk_session_conflicts_total`,
//! `smalltalk_session_rejections_total`, `smalltalk_session_save_failures_total`); every
//! operation has a `tracing` span with the session id.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use smalltalk_session::{CreateOptions, SessionManager};
//! use smalltalk_types::{AgentId, AgentState, Message, Role, Timestamp};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = smalltalk_storage::open("memory://").await?;
//! let sessions = SessionManager::new(store);
//!
//! let session = sessions.create(CreateOptions::default()).await?;
//! sessions.add_message(session.id, Message::new(Role::User, "Plan a trip", Timestamp::now())).await?;
//!
//! let planner = AgentId::parse("planner")?;
//! let mut state = AgentState::new(planner.clone(), Timestamp::now());
//! state.context.insert("destination".into(), "Lisbon".into());
//! sessions.update_agent_state(session.id, state).await?;
//!
//! // Later, perhaps in another process sharing the store:
//! let restored = sessions.restore(session.id).await?;
//! assert_eq!(restored.messages.len(), 1);
//! assert_eq!(restored.agent_states[&planner].context["destination"], "Lisbon");
//!
//! sessions.invalidate(session.id).await?;
//! let refused = sessions.add_message(session.id, Message::new(Role::User, "hello?", Timestamp::now())).await;
//! assert!(matches!(refused, Err(smalltalk_session::Error::Invalidated { .. })));
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod manager;
mod preserve;

pub use config::{
    AgentStateLimits, Durability, MAX_TTL, MIN_TTL, SaveRetryPolicy, SessionConfig, TtlStrategy,
};
pub use error::{Error, Result};
pub use manager::{
    Appended, CreateOptions, FlushReport, MaintenanceReport, SessionManager, SessionManagerBuilder,
    SessionStats,
};
pub use preserve::Preserved;
/// What [`SessionManager::spawn_maintenance`] returns.
pub use smalltalk_types::BackgroundTask;
