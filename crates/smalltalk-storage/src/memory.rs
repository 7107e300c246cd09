//! The in-memory backend: the reference model every other backend is
//! compared against, and the store for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{
    AgentId, Clock, Event, Message, Session, SessionId, SessionState, SessionSummary, StorageKey,
    SystemClock, Timestamp,
};

use crate::codec::{self, advanced_updated_at};
use crate::versioned::memory::VersionedData;
use crate::versioned::{
    CompactOutcome, KeyHistory, KeyPrefix, KeyVersion, Lease, LeaseId, PurgeOutcome, RangePage,
    RangeRequest, RevisionBounds, Txn, TxnResponse, VersionedStats, VersionedStore,
};
use crate::{
    AppendGuard, AppendOutcome, BackendKind, Error, EventFilter, EventLog, EventLogStats, Expected,
    KeyValueStore, LogBounds, LogEntry, Result, SessionFilter, SessionStore, StoreAdmin,
    StoreStats,
};

/// A store that keeps everything in process memory. Nothing survives the
/// process. Opened by `memory://`.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    log_watch: crate::events::LogWatch,
    versioned: Mutex<VersionedData>,
    revision_watch: crate::events::LogWatch,
    clock: Arc<dyn Clock>,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, StoredSession>,
    kv: BTreeMap<StorageKey, KvEntry>,
    /// The event log: position -> (event with its position, encoded size).
    events: BTreeMap<u64, (Event, u64)>,
    last_position: u64,
    cursors: BTreeMap<StorageKey, crate::Cursor>,
    /// The import ledger, by kind and original id.
    imports: BTreeMap<(String, String), crate::ImportEntry>,
}

#[derive(Debug, Clone)]
struct StoredSession {
    session: Session,
    header_bytes: u64,
    message_bytes: u64,
}

#[derive(Debug, Clone)]
struct KvEntry {
    value: Vec<u8>,
    updated_at: Timestamp,
    expires_at: Option<Timestamp>,
}

impl KvEntry {
    fn live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|expires_at| expires_at > now)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store reading time from `clock` (for TTLs).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            log_watch: Default::default(),
            versioned: Mutex::new(VersionedData::default()),
            revision_watch: Default::default(),
            clock,
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // A panic while holding the lock cannot leave a half-applied write:
        // every mutation below is computed first and applied last.
        Ok(self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl MemoryStore {
    fn versioned(&self) -> Result<MutexGuard<'_, VersionedData>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // As `lock`: every mutation is planned first and applied last.
        Ok(self
            .versioned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Runs a write and wakes revision waiters.
    fn write_versioned<T>(&self, work: impl FnOnce(&mut VersionedData) -> Result<T>) -> Result<T> {
        let mut data = self.versioned()?;
        let outcome = work(&mut data)?;
        let revision = data.bounds().revision;
        drop(data);
        self.revision_watch.advance(revision);
        Ok(outcome)
    }
}

#[async_trait]
impl VersionedStore for MemoryStore {
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        let now = self.clock.now();
        self.write_versioned(|data| data.txn(txn, now))
    }

    async fn get_version(&self, key: &StorageKey, at: Option<u64>) -> Result<Option<KeyVersion>> {
        self.versioned()?.get(key, at)
    }

    async fn range(&self, request: &RangeRequest) -> Result<RangePage> {
        self.versioned()?.range(request)
    }

    async fn key_history(
        &self,
        key: &StorageKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<KeyHistory> {
        self.versioned()?.history(key, before, limit)
    }

    async fn read_revisions(
        &self,
        prefix: &KeyPrefix,
        after: u64,
        limit: u32,
    ) -> Result<Vec<KeyVersion>> {
        self.versioned()?.read_revisions(prefix, after, limit)
    }

    async fn revision_bounds(&self) -> Result<RevisionBounds> {
        Ok(self.versioned()?.bounds())
    }

    async fn revision_before(&self, time: Timestamp) -> Result<Option<u64>> {
        Ok(self.versioned()?.revision_before(time))
    }

    async fn compact(&self, revision: u64, keep_versions: u32) -> Result<CompactOutcome> {
        self.versioned()?.compact(revision, keep_versions)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        let now = self.clock.now();
        self.versioned()?.grant_lease(ttl, now)
    }

    async fn keep_lease_alive(&self, lease: LeaseId) -> Result<Lease> {
        let now = self.clock.now();
        self.versioned()?.keep_lease_alive(lease, now)
    }

    async fn revoke_lease(&self, lease: LeaseId, author: Option<&AgentId>) -> Result<Option<u64>> {
        let now = self.clock.now();
        self.write_versioned(|data| data.revoke_lease(lease, author, now))
    }

    async fn expire_leases(&self) -> Result<u64> {
        let now = self.clock.now();
        self.write_versioned(|data| Ok(data.expire_leases(now)))
    }

    async fn purge_prefix(
        &self,
        prefix: &KeyPrefix,
        author: Option<&AgentId>,
    ) -> Result<PurgeOutcome> {
        let now = self.clock.now();
        self.write_versioned(|data| data.purge_prefix(prefix, author, now))
    }

    async fn wait_for_revision(&self, after: u64, timeout: Duration) -> Result<u64> {
        self.revision_watch
            .wait(after, timeout, || async {
                Ok(self.versioned()?.bounds().revision)
            })
            .await
    }

    async fn versioned_stats(&self) -> Result<VersionedStats> {
        Ok(self.versioned()?.stats())
    }
}

fn summary_of(session: &Session) -> SessionSummary {
    SessionSummary {
        id: session.id,
        state: session.state,
        version: session.version,
        created_at: session.created_at,
        updated_at: session.updated_at,
        expires_at: session.expires_at,
        message_count: session.messages.len() as u64,
    }
}

/// Bytes a message takes, counted as the SQL backends store it.
fn message_len(message: &Message) -> Result<u64> {
    Ok(codec::encode_message(message)?.len())
}

impl Inner {
    /// Checks `expected` and computes the stored form; writes nothing.
    fn prepare_save(&self, session: &Session, expected: Expected) -> Result<StoredSession> {
        let current = self.sessions.get(&session.id);
        let version = match (expected, current) {
            (Expected::Absent, Some(_)) => return Err(Error::AlreadyExists { id: session.id }),
            (Expected::Absent, None) | (Expected::Any, None) => 1,
            (Expected::Version(_), None) => return Err(Error::NotFound { id: session.id }),
            (Expected::Version(expected), Some(stored)) if stored.session.version != expected => {
                return Err(Error::Conflict {
                    id: session.id,
                    expected,
                    found: stored.session.version,
                });
            }
            (_, Some(stored)) => stored.session.version + 1,
        };
        let mut next = session.clone();
        next.version = version;
        let mut message_bytes = 0;
        if let Some(stored) = current {
            // The history is append-only: keep what is stored, add the tail.
            let stored_len = stored.session.messages.len();
            if let Expected::Version(expected) = expected {
                let overlap = next.messages.len().min(stored_len);
                if overlap > 0
                    && next.messages[overlap - 1].id != stored.session.messages[overlap - 1].id
                {
                    return Err(Error::HistoryDiverged {
                        id: session.id,
                        version: expected,
                    });
                }
            }
            // Only the tail is carried: `install` puts it after the stored
            // history, which is moved, not copied.
            next.messages = next.messages.get(stored_len..).unwrap_or_default().to_vec();
            message_bytes = stored.message_bytes;
            for message in &next.messages {
                message_bytes += message_len(message)?;
            }
        } else {
            for message in &next.messages {
                message_bytes += message_len(message)?;
            }
        }
        let header_bytes = codec::encode_header(&next)?.len() as u64;
        Ok(StoredSession {
            session: next,
            header_bytes,
            message_bytes,
        })
    }

    /// Stores what [`prepare_save`](Self::prepare_save) computed: for a
    /// session already stored, its history followed by the new tail.
    fn install(&mut self, mut prepared: StoredSession) {
        let id = prepared.session.id;
        match self.sessions.get_mut(&id) {
            Some(current) => {
                let tail = std::mem::take(&mut prepared.session.messages);
                prepared.session.messages = std::mem::take(&mut current.session.messages);
                prepared.session.messages.extend(tail);
                *current = prepared;
            }
            None => {
                self.sessions.insert(id, prepared);
            }
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn save_session(&self, session: &Session, expected: Expected) -> Result<u64> {
        let mut inner = self.lock()?;
        let stored = inner.prepare_save(session, expected)?;
        let version = stored.session.version;
        inner.install(stored);
        Ok(version)
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        Ok(self
            .lock()?
            .sessions
            .get(&id)
            .map(|stored| stored.session.clone()))
    }

    async fn has_session(&self, id: SessionId) -> Result<bool> {
        Ok(self.lock()?.sessions.contains_key(&id))
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        Ok(self.lock()?.sessions.remove(&id).is_some())
    }

    async fn append_messages(
        &self,
        id: SessionId,
        messages: &[Message],
        guard: AppendGuard,
    ) -> Result<AppendOutcome> {
        let added_bytes = codec::encode_append(messages)?.bytes;
        let mut inner = self.lock()?;
        let stored = inner.sessions.get_mut(&id).ok_or(Error::NotFound { id })?;
        let session = &stored.session;
        guard.check(id, session.version, session.state, session.expires_at)?;
        let first_sequence = stored.session.messages.len() as u64;
        stored.session.messages.extend_from_slice(messages);
        stored.session.updated_at = advanced_updated_at(stored.session.updated_at, messages);
        stored.message_bytes += added_bytes;
        Ok(AppendOutcome {
            version: stored.session.version,
            first_sequence,
            message_count: stored.session.messages.len() as u64,
        })
    }

    async fn save_and_append(
        &self,
        session: &Session,
        expected: Expected,
        messages: &[Message],
    ) -> Result<AppendOutcome> {
        let added_bytes = codec::encode_append(messages)?.bytes;
        let header = Session {
            messages: Vec::new(),
            ..session.clone()
        };
        let mut inner = self.lock()?;
        let mut stored = inner.prepare_save(&header, expected)?;
        let first_sequence = inner
            .sessions
            .get(&session.id)
            .map_or(0, |current| current.session.messages.len() as u64);
        stored.session.messages.extend_from_slice(messages);
        stored.session.updated_at = advanced_updated_at(stored.session.updated_at, messages);
        stored.message_bytes += added_bytes;
        let outcome = AppendOutcome {
            version: stored.session.version,
            first_sequence,
            message_count: first_sequence + messages.len() as u64,
        };
        inner.install(stored);
        Ok(outcome)
    }

    async fn get_session_header(&self, id: SessionId) -> Result<Option<Session>> {
        Ok(self.lock()?.sessions.get(&id).map(|stored| {
            let session = &stored.session;
            Session {
                messages: Vec::new(),
                agent_states: session.agent_states.clone(),
                metadata: session.metadata.clone(),
                ..*session
            }
        }))
    }

    async fn get_session_summary(&self, id: SessionId) -> Result<Option<SessionSummary>> {
        Ok(self
            .lock()?
            .sessions
            .get(&id)
            .map(|stored| summary_of(&stored.session)))
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>> {
        let inner = self.lock()?;
        let mut matching: Vec<SessionSummary> = inner
            .sessions
            .values()
            .map(|stored| &stored.session)
            .filter(|session| filter.state.is_none_or(|state| session.state == state))
            .filter(|session| {
                filter
                    .created_after
                    .is_none_or(|after| session.created_at > after)
            })
            .filter(|session| filter.expired_at.is_none_or(|at| session.expires_at <= at))
            .filter(|session| {
                filter.after.is_none_or(|cursor| {
                    (session.created_at, session.id) > (cursor.created_at, cursor.id)
                })
            })
            .map(summary_of)
            .collect();
        // A UUID's byte order is its lowercase hex text order, which is how
        // the SQL backends order ids.
        matching.sort_by_key(|summary| (summary.created_at, summary.id));
        let offset = usize::try_from(filter.offset).unwrap_or(usize::MAX);
        let limit = filter.limit.map_or(usize::MAX, |limit| limit as usize);
        Ok(matching.into_iter().skip(offset).take(limit).collect())
    }

    async fn count_sessions_by_state(&self) -> Result<BTreeMap<SessionState, u64>> {
        let mut counts = BTreeMap::new();
        for stored in self.lock()?.sessions.values() {
            *counts.entry(stored.session.state).or_insert(0) += 1;
        }
        Ok(counts)
    }

    async fn get_sessions(&self, ids: &[SessionId]) -> Result<Vec<Option<Session>>> {
        let inner = self.lock()?;
        Ok(ids
            .iter()
            .map(|id| inner.sessions.get(id).map(|stored| stored.session.clone()))
            .collect())
    }

    async fn save_sessions(&self, batch: &[(Session, Expected)]) -> Result<Vec<u64>> {
        let mut inner = self.lock()?;
        // Apply to a scratch copy of the touched entries so a failure midway
        // (including a session appearing twice in the batch) writes nothing.
        let mut scratch = Inner::default();
        for (session, _) in batch {
            if let Some(stored) = inner.sessions.get(&session.id) {
                scratch.sessions.insert(session.id, stored.clone());
            }
        }
        let mut versions = Vec::with_capacity(batch.len());
        for (session, expected) in batch {
            let stored = scratch.prepare_save(session, *expected)?;
            versions.push(stored.session.version);
            scratch.install(stored);
        }
        inner.sessions.extend(scratch.sessions);
        Ok(versions)
    }

    async fn delete_sessions(&self, ids: &[SessionId]) -> Result<u64> {
        let mut inner = self.lock()?;
        Ok(ids
            .iter()
            .filter(|id| inner.sessions.remove(id).is_some())
            .count() as u64)
    }

    async fn delete_history(&self, id: SessionId) -> Result<u64> {
        let mut inner = self.lock()?;
        let stored = inner.sessions.get_mut(&id).ok_or(Error::NotFound { id })?;
        let deleted = stored.session.messages.len() as u64;
        stored.session.messages.clear();
        stored.message_bytes = 0;
        stored.session.version += 1;
        Ok(deleted)
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> Result<u64> {
        let mut inner = self.lock()?;
        let before = inner.sessions.len();
        inner
            .sessions
            .retain(|_, stored| stored.session.expires_at > now);
        Ok((before - inner.sessions.len()) as u64)
    }
}

#[async_trait]
impl crate::ImportLedger for MemoryStore {
    async fn record_import(
        &self,
        entry: &crate::ImportEntry,
    ) -> Result<Option<crate::ImportEntry>> {
        crate::traits::check_import(entry)?;
        let mut inner = self.lock()?;
        let key = (entry.kind.clone(), entry.original_id.clone());
        if let Some(existing) = inner.imports.get(&key) {
            return Ok(Some(existing.clone()));
        }
        inner.imports.insert(key, entry.clone());
        Ok(None)
    }

    async fn imported(&self, kind: &str, original_id: &str) -> Result<Option<crate::ImportEntry>> {
        Ok(self
            .lock()?
            .imports
            .get(&(kind.to_owned(), original_id.to_owned()))
            .cloned())
    }
}

#[async_trait]
impl KeyValueStore for MemoryStore {
    async fn set(&self, key: &StorageKey, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let now = self.clock.now();
        let entry = KvEntry {
            value: value.to_vec(),
            updated_at: now,
            expires_at: ttl.map(|ttl| now.saturating_add(ttl)),
        };
        self.lock()?.kv.insert(key.clone(), entry);
        Ok(())
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        let now = self.clock.now();
        Ok(self
            .lock()?
            .kv
            .get(key)
            .filter(|entry| entry.live(now))
            .map(|entry| entry.value.clone()))
    }

    async fn has(&self, key: &StorageKey) -> Result<bool> {
        let now = self.clock.now();
        Ok(self
            .lock()?
            .kv
            .get(key)
            .is_some_and(|entry| entry.live(now)))
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        let now = self.clock.now();
        Ok(self
            .lock()?
            .kv
            .remove(key)
            .is_some_and(|entry| entry.live(now)))
    }

    async fn clear_older_than(&self, cutoff: Timestamp) -> Result<u64> {
        let mut inner = self.lock()?;
        let before = inner.kv.len();
        inner.kv.retain(|_, entry| entry.updated_at >= cutoff);
        Ok((before - inner.kv.len()) as u64)
    }

    async fn purge_expired(&self) -> Result<u64> {
        let now = self.clock.now();
        let mut inner = self.lock()?;
        let before = inner.kv.len();
        inner.kv.retain(|_, entry| entry.live(now));
        Ok((before - inner.kv.len()) as u64)
    }
}

impl Inner {
    fn append_events(&mut self, events: &[Event]) -> Result<Vec<u64>> {
        let mut encoded = Vec::with_capacity(events.len());
        for event in events {
            encoded.push(codec::encode_event(event)?.len() as u64);
        }
        let mut positions = Vec::with_capacity(events.len());
        for (event, bytes) in events.iter().zip(encoded) {
            self.last_position += 1;
            let mut stored = event.clone();
            stored.position = Some(self.last_position);
            self.events.insert(self.last_position, (stored, bytes));
            positions.push(self.last_position);
        }
        Ok(positions)
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn append_events(&self, events: &[Event]) -> Result<Vec<u64>> {
        let positions = self.lock()?.append_events(events)?;
        self.log_watch
            .advance(positions.last().copied().unwrap_or(0));
        Ok(positions)
    }

    async fn append_events_at(&self, events: &[Event], expected_last: u64) -> Result<Vec<u64>> {
        let mut inner = self.lock()?;
        if inner.last_position != expected_last {
            return Err(Error::PositionConflict {
                expected: expected_last,
                found: inner.last_position,
            });
        }
        let positions = inner.append_events(events)?;
        drop(inner);
        self.log_watch
            .advance(positions.last().copied().unwrap_or(0));
        Ok(positions)
    }

    async fn read_log(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        // Events are kept decoded: every entry is one.
        let inner = self.lock()?;
        Ok(inner
            .events
            .range(after.saturating_add(1)..)
            .map(|(_, (event, _))| event)
            .filter(|event| filter.matches(event))
            .take(limit)
            .cloned()
            .map(LogEntry::Event)
            .collect())
    }

    async fn log_bounds(&self) -> Result<LogBounds> {
        let inner = self.lock()?;
        Ok(LogBounds {
            first: inner.events.keys().next().copied(),
            last: inner.last_position,
        })
    }

    async fn cursor(&self, subscriber: &StorageKey) -> Result<Option<crate::Cursor>> {
        Ok(self.lock()?.cursors.get(subscriber).copied())
    }

    async fn set_cursor(&self, subscriber: &StorageKey, cursor: crate::Cursor) -> Result<()> {
        self.lock()?.cursors.insert(subscriber.clone(), cursor);
        Ok(())
    }

    async fn delete_cursor(&self, subscriber: &StorageKey) -> Result<bool> {
        Ok(self.lock()?.cursors.remove(subscriber).is_some())
    }

    async fn purge_events_before(&self, cutoff: Timestamp) -> Result<u64> {
        let mut inner = self.lock()?;
        let before = inner.events.len();
        // By position: the oldest events up to the first one at or after
        // the cutoff, so the retained log has no holes.
        let keep_from = inner
            .events
            .iter()
            .find(|(_, (event, _))| event.timestamp >= cutoff)
            .map(|(position, _)| *position);
        match keep_from {
            Some(first) => inner.events = inner.events.split_off(&first),
            None => inner.events.clear(),
        }
        Ok((before - inner.events.len()) as u64)
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<u64> {
        self.log_watch
            .wait(after, timeout, || async { Ok(self.lock()?.last_position) })
            .await
    }

    async fn event_log_stats(&self) -> Result<EventLogStats> {
        let inner = self.lock()?;
        Ok(EventLogStats {
            events: inner.events.len() as u64,
            bytes: inner.events.values().map(|(_, bytes)| bytes).sum(),
            bounds: LogBounds {
                first: inner.events.keys().next().copied(),
                last: inner.last_position,
            },
            cursors: inner.cursors.len() as u64,
        })
    }
}

#[async_trait]
impl StoreAdmin for MemoryStore {
    fn backend(&self) -> BackendKind {
        BackendKind::Memory
    }

    async fn health_check(&self) -> Result<()> {
        self.lock().map(drop)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let inner = self.lock()?;
        let session_bytes: u64 = inner
            .sessions
            .values()
            .map(|stored| stored.header_bytes + stored.message_bytes)
            .sum();
        let kv_bytes: u64 = inner
            .kv
            .iter()
            .map(|(key, entry)| (key.as_str().len() + entry.value.len()) as u64)
            .sum();
        Ok(StoreStats {
            backend: BackendKind::Memory,
            sessions: inner.sessions.len() as u64,
            messages: inner
                .sessions
                .values()
                .map(|stored| stored.session.messages.len() as u64)
                .sum(),
            kv_entries: inner.kv.len() as u64,
            bytes: session_bytes + kv_bytes,
            on_disk_bytes: None,
        })
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
