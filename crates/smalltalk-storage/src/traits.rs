//! The storage traits every backend implements.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{
    Message, Session, SessionId, SessionState, SessionSummary, StorageKey, Timestamp,
};

use crate::Result;

/// What a compare-and-swap save expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expected {
    /// The session must not exist yet. Else [`Error::AlreadyExists`](crate::Error::AlreadyExists).
    Absent,
    /// The session must be at exactly this version. Else
    /// [`Error::Conflict`](crate::Error::Conflict) or
    /// [`Error::NotFound`](crate::Error::NotFound).
    Version(u64),
    /// Write whatever is stored (last write wins). Creates if absent.
    Any,
}

/// Filters and paging for [`SessionStore::list_sessions`]. Results are
/// ordered by creation time, then id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only sessions in this state.
    pub state: Option<SessionState>,
    /// Only sessions created strictly after this time.
    pub created_after: Option<Timestamp>,
    /// Only sessions whose expiry is at or before this time (expired then).
    pub expired_at: Option<Timestamp>,
    /// Only sessions after this one in the listing's order (creation time,
    /// then id): keyset paging, stable while sessions come and go.
    pub after: Option<SessionCursor>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Skip this many first.
    pub offset: u64,
}

/// A place in a session listing: the last session of a page, from which
/// [`SessionFilter::after`] continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionCursor {
    /// The session's creation time.
    pub created_at: Timestamp,
    /// The session.
    pub id: SessionId,
}

impl SessionCursor {
    /// The cursor just after `summary`.
    pub fn after(summary: &SessionSummary) -> Self {
        Self {
            created_at: summary.created_at,
            id: summary.id,
        }
    }
}

/// Conditions an append must meet, checked atomically with the write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendGuard {
    /// Only if the session's header is at exactly this version, else
    /// [`Error::Conflict`](crate::Error::Conflict). Appends do not move the
    /// header's version, so this guards against a header change (an
    /// invalidation, an update) since it was read, not against other
    /// appends.
    pub version: Option<u64>,
    /// Only if the session accepts messages at this time: its state is
    /// `active` or `idle` and it has not expired. Else
    /// [`Error::NotAccepting`](crate::Error::NotAccepting).
    pub open_at: Option<Timestamp>,
    /// Only if the session has not been invalidated, whatever its expiry
    /// (what a write-back flush of acknowledged messages needs: an expired
    /// session keeps them, an invalidated one must not get a history back).
    /// Else [`Error::NotAccepting`](crate::Error::NotAccepting).
    pub not_invalidated: bool,
}

impl AppendGuard {
    /// No conditions: the append always lands (if the session exists).
    pub const NONE: AppendGuard = AppendGuard {
        version: None,
        open_at: None,
        not_invalidated: false,
    };

    /// Only at `version`.
    pub fn at_version(version: u64) -> Self {
        Self {
            version: Some(version),
            ..Self::NONE
        }
    }

    /// Only if the session accepts messages at `now`.
    pub fn open_at(now: Timestamp) -> Self {
        Self {
            open_at: Some(now),
            ..Self::NONE
        }
    }

    /// Only if the session has not been invalidated.
    pub fn not_invalidated() -> Self {
        Self {
            not_invalidated: true,
            ..Self::NONE
        }
    }

    /// Checks a stored session against the guard; `found` is its version.
    /// Rejection order: not accepting (final) before a version conflict
    /// (retryable).
    pub(crate) fn check(
        &self,
        id: SessionId,
        found: u64,
        state: SessionState,
        expires_at: Timestamp,
    ) -> crate::Result<()> {
        if self.not_invalidated && state == SessionState::Invalidated {
            return Err(crate::Error::NotAccepting { id, state });
        }
        if let Some(now) = self.open_at {
            if !matches!(state, SessionState::Active | SessionState::Idle) {
                return Err(crate::Error::NotAccepting { id, state });
            }
            if expires_at <= now {
                return Err(crate::Error::NotAccepting {
                    id,
                    state: SessionState::Expired,
                });
            }
        }
        match self.version {
            Some(expected) if expected != found => Err(crate::Error::Conflict {
                id,
                expected,
                found,
            }),
            _ => Ok(()),
        }
    }
}

/// The result of [`SessionStore::append_messages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The session's (header) version, which appends leave as it was.
    pub version: u64,
    /// The position (from 0) of the first appended message in the history.
    pub first_sequence: u64,
    /// The history's length after the append.
    pub message_count: u64,
}

/// Session persistence.
///
/// The message history is append-only: [`append_messages`](Self::append_messages)
/// adds messages without rewriting what is stored (O(1) in the history's
/// length), and [`save_session`](Self::save_session) writes the session's
/// other fields and appends the snapshot's messages past the stored count.
/// Stored messages are never rewritten or removed, except by deleting the
/// session.
///
/// Versions are assigned by storage: 1 after the first save, plus one on
/// every save and history deletion. The version is the header's: appends
/// do not move it (the history has its own sequence, `message_count`), so
/// however fast messages arrive, a header change read at version `v` and
/// saved with `Expected::Version(v)` conflicts only with another header
/// change. A snapshot that carries messages must still agree with the
/// stored history (be a prefix or an extension of it), else the save is
/// refused with [`Error::HistoryDiverged`](crate::Error::HistoryDiverged).
/// The `version` field of a snapshot passed in is ignored; the one of
/// [`Expected`] is what counts.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// Writes `session` if the stored version matches `expected`; returns the
    /// new version. On a mismatch nothing is written.
    async fn save_session(&self, session: &Session, expected: Expected) -> Result<u64>;

    /// Reads a whole session with its history, or `None`.
    async fn get_session(&self, id: SessionId) -> Result<Option<Session>>;

    /// Whether the session exists.
    async fn has_session(&self, id: SessionId) -> Result<bool>;

    /// Deletes a session and its history; `false` if it did not exist.
    async fn delete_session(&self, id: SessionId) -> Result<bool>;

    /// Appends `messages` to the history, atomically, if `guard` holds.
    /// Without a version in the guard, concurrent appends are serialized and
    /// none is lost. The session's `updated_at` moves to the newest
    /// message's timestamp if that is later.
    async fn append_messages(
        &self,
        id: SessionId,
        messages: &[Message],
        guard: AppendGuard,
    ) -> Result<AppendOutcome>;

    /// Saves `session`'s header if the stored version matches `expected`
    /// (as [`save_session`](Self::save_session) does) and appends
    /// `messages` after the stored history, in one transaction: both land,
    /// or on any error neither does. `session.messages` is ignored (the
    /// stored history stays). The returned outcome carries the new version.
    ///
    /// This is how a unit of work whose record lives in the header and
    /// whose output is messages (a group's turn) commits once: a writer
    /// that lost the race on `expected` appends nothing.
    async fn save_and_append(
        &self,
        session: &Session,
        expected: Expected,
        messages: &[Message],
    ) -> Result<AppendOutcome>;

    /// Reads a session without its history (`messages` is empty; the agent
    /// states and metadata are there), or `None`. Cheap whatever the
    /// history's length. Saving such a snapshot keeps the stored history:
    /// saves never drop messages.
    async fn get_session_header(&self, id: SessionId) -> Result<Option<Session>>;

    /// Reads a session's summary (no history, no agent states), or `None`.
    /// Cheap whatever the history's length.
    async fn get_session_summary(&self, id: SessionId) -> Result<Option<SessionSummary>>;

    /// Lists session summaries matching `filter`.
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>>;

    /// Counts sessions per state (states with none are absent).
    async fn count_sessions_by_state(&self) -> Result<BTreeMap<SessionState, u64>>;

    /// Reads several sessions; the result is in the order of `ids`.
    async fn get_sessions(&self, ids: &[SessionId]) -> Result<Vec<Option<Session>>>;

    /// Saves several sessions atomically: all are written, or on the first
    /// error none is. Returns the new versions in order.
    async fn save_sessions(&self, batch: &[(Session, Expected)]) -> Result<Vec<u64>>;

    /// Deletes several sessions; returns how many existed.
    async fn delete_sessions(&self, ids: &[SessionId]) -> Result<u64>;

    /// Deletes every session whose `expires_at` is at or before `now`;
    /// returns how many.
    async fn delete_expired_sessions(&self, now: Timestamp) -> Result<u64>;

    /// Deletes a session's whole history, keeping the session itself (for
    /// purging an invalidated session's content, or keeping only the
    /// latest state of an expired one). Bumps the version; returns how many
    /// messages were deleted.
    async fn delete_history(&self, id: SessionId) -> Result<u64>;
}

/// A key-value store for small blobs, with optional time-to-live.
///
/// Expiry is judged by the store's [`Clock`](smalltalk_types::Clock): an
/// entry past its TTL reads as absent at once, and is physically removed by
/// [`purge_expired`](Self::purge_expired).
#[async_trait]
pub trait KeyValueStore: Send + Sync + fmt::Debug + 'static {
    /// Sets `key` to `value`, replacing any previous value and TTL.
    async fn set(&self, key: &StorageKey, value: &[u8], ttl: Option<Duration>) -> Result<()>;

    /// The value of `key`, or `None` if absent or expired.
    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>>;

    /// Whether `key` is present and not expired.
    async fn has(&self, key: &StorageKey) -> Result<bool>;

    /// Deletes `key`; `false` if it was absent or expired.
    async fn delete(&self, key: &StorageKey) -> Result<bool>;

    /// Deletes every entry last set strictly before `cutoff`; returns how many.
    async fn clear_older_than(&self, cutoff: Timestamp) -> Result<u64>;

    /// Deletes every expired entry; returns how many.
    async fn purge_expired(&self) -> Result<u64>;
}

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BackendKind {
    /// [`MemoryStore`](crate::MemoryStore).
    Memory,
    /// `SqliteStore` (feature `sqlite`).
    Sqlite,
    /// `PgStore` (feature `postgres`).
    Postgres,
}

impl BackendKind {
    /// `memory`, `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// The backend.
    pub backend: BackendKind,
    /// Sessions stored.
    pub sessions: u64,
    /// Messages stored, over all sessions.
    pub messages: u64,
    /// Key-value entries stored (expired ones not yet purged included).
    pub kv_entries: u64,
    /// Bytes of encoded records (sessions, messages, values); for SQLite
    /// and PostgreSQL also see `on_disk_bytes`.
    pub bytes: u64,
    /// Bytes the backend occupies on disk (database file and WAL, or
    /// relation sizes), where it has a disk.
    pub on_disk_bytes: Option<u64>,
}

impl StoreStats {
    /// Sessions plus key-value entries.
    pub fn items(&self) -> u64 {
        self.sessions + self.kv_entries
    }
}

/// Lifecycle of a store: identity, health, statistics, shutdown.
#[async_trait]
pub trait StoreAdmin: Send + Sync + fmt::Debug + 'static {
    /// Which backend this is.
    fn backend(&self) -> BackendKind;

    /// Checks the backend answers (a trivial read).
    async fn health_check(&self) -> Result<()>;

    /// Counts and sizes.
    async fn stats(&self) -> Result<StoreStats>;

    /// Flushes and releases resources. Later calls fail with
    /// [`Error::Closed`](crate::Error::Closed). Idempotent.
    async fn close(&self) -> Result<()>;
}

/// What an import brought in: one record, under the id it had where it
/// came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportEntry {
    /// What it is (`session`, `event`, `kv`): ids are unique per kind.
    pub kind: String,
    /// Its id where it came from.
    pub original_id: String,
    /// Its id here.
    pub target_id: String,
    /// Where it came from (a path, a redacted URL).
    pub source: String,
    /// When it was recorded.
    pub imported_at: Timestamp,
}

/// The ledger of imports: which original records were brought in, and as
/// what, so running an import again brings in nothing twice (also when the
/// record was deleted since). An importer records an entry *after* writing
/// the record under an id the original determines: a crash in between
/// leaves a record the next run finds under that id, and records.
#[async_trait]
pub trait ImportLedger: Send + Sync + fmt::Debug + 'static {
    /// Records `entry` unless one exists for its kind and original id:
    /// `None` when it was recorded, else the entry already there (which
    /// stays as it was).
    async fn record_import(&self, entry: &ImportEntry) -> Result<Option<ImportEntry>>;

    /// The entry for `original_id` of `kind`, if one was recorded.
    async fn imported(&self, kind: &str, original_id: &str) -> Result<Option<ImportEntry>>;
}

/// The longest kind, original id or source an [`ImportEntry`] takes, in
/// bytes (target ids are ours, and short).
pub const MAX_IMPORT_FIELD: usize = 1024;

/// [`Error::InvalidImport`](crate::Error::InvalidImport) unless every
/// field of `entry` is 1 to [`MAX_IMPORT_FIELD`] bytes with no NUL.
pub(crate) fn check_import(entry: &ImportEntry) -> Result<()> {
    for (name, value) in [
        ("kind", &entry.kind),
        ("original id", &entry.original_id),
        ("target id", &entry.target_id),
        ("source", &entry.source),
    ] {
        if value.is_empty() || value.len() > MAX_IMPORT_FIELD || value.contains('\0') {
            return Err(crate::Error::InvalidImport {
                reason: format!("its {name} must be 1 to {MAX_IMPORT_FIELD} bytes with no NUL"),
            });
        }
    }
    Ok(())
}

/// Everything a backend implements; what [`open`](crate::open) returns.
pub trait Store:
    SessionStore + KeyValueStore + crate::EventLog + crate::VersionedStore + ImportLedger + StoreAdmin
{
}

impl<
    T: SessionStore
        + KeyValueStore
        + crate::EventLog
        + crate::VersionedStore
        + ImportLedger
        + StoreAdmin,
> Store for T
{
}
