//! Versioned, externalized state for SmallTalk-rs (FR-022 to FR-026), with
//! etcd as the reference.
//!
//! State lives in storage, not in process memory, so a restarted process
//! or another node loads it. Every write takes a store-wide **revision**
//! (gap-free, in commit order, across processes on PostgreSQL); each key
//! has a create revision, a last-change revision and a version, and every
//! version records its author and timestamp.
//!
//! - [`StateStore::get`], [`get_at`](StateStore::get_at) any retained
//!   revision, [`put`](StateStore::put), [`put_if`](StateStore::put_if) the
//!   version read ([`Expect`]), [`delete`](StateStore::delete).
//! - [`update`](StateStore::update): a closure re-run on fresh data after a
//!   conflict; [`patch`](StateStore::patch) with an RFC 7396 merge patch.
//! - [`txn`](StateStore::txn): compare-and-set over up to 128 keys, in one
//!   revision.
//! - [`history`](StateStore::history), [`diff`](StateStore::diff) between
//!   revisions as an RFC 6902 JSON Patch, [`list`](StateStore::list) by
//!   prefix in pages.
//! - [`watch`](StateStore::watch) from a revision: ordered, never skipping
//!   or splitting a revision, with progress notifications, ending with
//!   [`Error::Compacted`] when its start is gone.
//! - **Conflict policies** per key prefix ([`Policies`], longest prefix
//!   wins): reject with both versions (the default), last-write-wins
//!   (logged and counted), a three-way JSON merge, or a custom resolver.
//! - **Namespaces** for sessions, agents and conversations ([`Namespace`]);
//!   a session's is purged, history included, when the session is
//!   invalidated or deleted (through [`smalltalk_types::SessionContentPurger`]).
//! - Leases (keys that expire together), compaction that keeps each key's
//!   newest N versions ([`StateStore::spawn_maintenance`]).
//!
//! Metrics: `smalltalk_state_revision` (gauge), `smalltalk_state_conflicts_total{policy}`,
//! `smalltalk_state_watch_lag_seconds` (histogram). Every public operation has a
//! tracing span (`state.get`, `state.put`, ...).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! use serde_json::json;
//! use smalltalk_state::{ConflictPolicy, Expect, Policies, StateStore, WatchEvent};
//! use smalltalk_storage::versioned::KeyPrefix;
//!
//! let dir = tempfile::tempdir()?;
//! let store = smalltalk_storage::open(&format!("sqlite://{}", dir.path().join("state.db").display())).await?;
//! let state = StateStore::builder(store.clone())
//!     .policies(Policies::new().with(KeyPrefix::parse("shared:")?, ConflictPolicy::merge()))
//!     .build()?
//!     .as_author("planner")?;
//!
//! let mut watch = state.watch("shared:", None).await?;
//! let first = state.put("shared:plan", json!({"goal": "ship", "steps": 1})).await?.entry;
//!
//! // Two writers read revision `first.revision` and change different fields:
//! // under the merge policy both changes land.
//! state.put_if("shared:plan", json!({"goal": "ship", "steps": 2}), Expect::read(Some(&first))).await?;
//! state.put_if("shared:plan", json!({"goal": "ship it", "steps": 1}), Expect::read(Some(&first))).await?;
//! let plan = state.get("shared:plan").await?.expect("written");
//! assert_eq!(plan.value, json!({"goal": "ship it", "steps": 2}));
//! assert_eq!(plan.version, 3);
//!
//! // History, and what changed between two revisions.
//! assert_eq!(state.history("shared:plan", 10).await?.changes.len(), 3);
//! let patch = state.diff("shared:plan", first.revision, plan.revision).await?;
//! assert_eq!(patch.0.len(), 2);
//!
//! // The watcher saw every revision, in order.
//! for revision in [first.revision, first.revision + 1, plan.revision] {
//!     match watch.next().await.expect("open")? {
//!         WatchEvent::Changes { revision: seen, .. } => assert_eq!(seen, revision),
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//! store.close().await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod entry;
mod error;
mod maintenance;
mod namespace;
pub mod policy;
mod store;
mod txn;
mod watch;

pub use config::StateConfig;
pub use entry::{ChangeKind, Expect, History, Page, PutOutcome, Resolved, StateChange, StateEntry};
pub use error::{Error, Result};
pub use namespace::{EntityType, Namespace};
pub use policy::{ConflictPolicy, Policies, Resolution};
pub use store::{ListOptions, MAX_HISTORY_DEPTH, StateStats, StateStore, StateStoreBuilder};
pub use txn::{TxnBuilder, TxnOutcome, TxnResult};
pub use watch::{Watch, WatchEvent};

pub use smalltalk_storage::versioned::{KeyPrefix, Lease, LeaseId};
