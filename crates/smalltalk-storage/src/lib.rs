//! Storage for SmallTalk-rs: the traits every backend implements, the
//! backends, and the contract suite that proves they behave the same.
//!
//! # Traits
//!
//! - [`SessionStore`]: compare-and-swap saves on a version ([`Expected`]),
//!   an append path for messages that never rewrites the history, batch
//!   get/save/delete, listing with filters ([`SessionFilter`]), expiry.
//! - [`KeyValueStore`]: small blobs under validated
//!   [`StorageKey`](smalltalk_types::StorageKey)s, with TTLs judged by an
//!   injectable [`Clock`](smalltalk_types::Clock).
//! - [`EventLog`]: a totally ordered, durable event log with subscriber
//!   cursors.
//! - [`VersionedStore`]: versioned records with a global revision,
//!   compare-and-set transactions, history, compaction, leases and purges
//!   (see [`versioned`]).
//! - [`StoreAdmin`]: backend identity, health check, [`StoreStats`], close.
//! - [`Store`]: all of them; what [`open`] returns as `Arc<dyn Store>`.
//!
//! # Backends
//!
//! | URL | type | feature |
//! |---|---|---|
//! | `memory://` | [`MemoryStore`] | always |
//! | `sqlite://PATH` | `sqlite::SqliteStore` | `sqlite` (default) |
//! | `postgres://...` | `postgres::PgStore` | `postgres` |
//!
//! # Features
//!
//! - `sqlite` (default): the embedded backend, SQLite compiled in.
//! - `postgres`: the PostgreSQL backend.
//! - `contract`: exposes [`contract`], the suite a backend must pass.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use smalltalk_storage::{AppendGuard, Expected, open};
//! use smalltalk_types::{Message, Role, Session, SessionId, Timestamp};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = open(&format!("sqlite://{}", dir.path().join("demo.db").display())).await?;
//!
//! let now = Timestamp::now();
//! let session = Session::new(SessionId::new(), now, Duration::from_secs(3600));
//! let version = store.save_session(&session, Expected::Absent).await?;
//! assert_eq!(version, 1);
//!
//! // Appending does not rewrite the history, nor move the header's version.
//! let hello = Message::new(Role::User, "hello", now);
//! store.append_messages(session.id, &[hello], AppendGuard::NONE).await?;
//! let mut header = store.get_session_header(session.id).await?.expect("saved");
//! header.metadata.insert("topic".into(), "greetings".into());
//! assert_eq!(store.save_session(&header, Expected::Version(1)).await?, 2);
//!
//! // A stale compare-and-swap is refused, never applied.
//! let stale = store.save_session(&session, Expected::Version(1)).await;
//! assert!(matches!(stale, Err(smalltalk_storage::Error::Conflict { found: 2, .. })));
//!
//! let restored = store.get_session(session.id).await?.expect("saved");
//! assert_eq!(restored.messages.len(), 1);
//! store.close().await?;
//! # Ok(())
//! # }
//! ```

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub mod codec;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod compat;
mod error;
mod events;
mod memory;
mod open;
mod traits;
pub mod versioned;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

#[cfg(feature = "contract")]
#[cfg_attr(docsrs, doc(cfg(feature = "contract")))]
pub mod contract;

pub use error::{BoxError, Error, Result};
pub use events::{
    Cursor, EventFilter, EventLog, EventLogStats, LogBounds, LogEntry, UndecodableEvent,
};
pub use memory::MemoryStore;
pub use open::{OpenOptions, open, open_with};
pub use traits::{
    AppendGuard, AppendOutcome, BackendKind, Expected, ImportEntry, ImportLedger, KeyValueStore,
    MAX_IMPORT_FIELD, SessionCursor, SessionFilter, SessionStore, Store, StoreAdmin, StoreStats,
};
pub use versioned::VersionedStore;
