//! [`FaultyStore`]: a store wrapper that fails on demand, for testing what
//! callers do when storage breaks.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{
    AgentId, Event, Message, Session, SessionId, SessionState, SessionSummary, StorageKey,
    Timestamp,
};

use crate::versioned::{
    CompactOutcome, KeyHistory, KeyPrefix, KeyVersion, Lease, LeaseId, PurgeOutcome, RangePage,
    RangeRequest, RevisionBounds, Txn, TxnResponse, VersionedStats, VersionedStore,
};
use crate::{
    AppendGuard, AppendOutcome, BackendKind, Error, EventFilter, EventLog, EventLogStats, Expected,
    KeyValueStore, LogBounds, Result, SessionFilter, SessionStore, Store, StoreAdmin, StoreStats,
};

/// Wraps a store; while a switch is on, matching calls fail with
/// [`Error::Unavailable`] (as a lost connection would) and reach nothing.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
    failing_operations: Mutex<HashSet<&'static str>>,
    injected: tokio::sync::watch::Sender<u64>,
    short_positions: AtomicBool,
}

impl FaultyStore {
    /// Wraps `inner`, healthy.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            failing_operations: Mutex::new(HashSet::new()),
            injected: tokio::sync::watch::Sender::new(0),
            short_positions: AtomicBool::new(false),
        })
    }

    /// Makes writes fail (or succeed again).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Makes reads fail (or succeed again).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Makes one operation fail (or succeed again), named as its trait
    /// method: `"delete_history"`, `"append_messages"`, ...
    pub fn fail_operation(&self, operation: &'static str, fail: bool) {
        let mut failing = self
            .failing_operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if fail {
            failing.insert(operation);
        } else {
            failing.remove(operation);
        }
    }

    /// Makes event appends answer with one position fewer than events (a
    /// broken backend), or correctly again.
    pub fn short_positions(&self, short: bool) {
        self.short_positions.store(short, Ordering::SeqCst);
    }

    fn maybe_short(&self, mut positions: Vec<u64>) -> Vec<u64> {
        if self.short_positions.load(Ordering::SeqCst) {
            positions.pop();
        }
        positions
    }

    /// How many calls were failed on purpose.
    pub fn injected(&self) -> u64 {
        *self.injected.borrow()
    }

    /// Waits until at least `count` faults were injected (woken by each,
    /// never polled).
    pub async fn wait_for_injected(&self, count: u64) {
        let mut injected = self.injected.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = injected.wait_for(|injected| *injected >= count).await;
    }

    /// The wrapped store, to look behind the faults.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn check(&self, switch: &AtomicBool, operation: &'static str) -> Result<()> {
        let named = self
            .failing_operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(operation);
        if switch.load(Ordering::SeqCst) || named {
            self.injected.send_modify(|injected| *injected += 1);
            return Err(Error::Unavailable {
                backend: "faulty",
                source: "injected fault".into(),
            });
        }
        Ok(())
    }

    fn write(&self, operation: &'static str) -> Result<()> {
        self.check(&self.fail_writes, operation)
    }

    fn read(&self, operation: &'static str) -> Result<()> {
        self.check(&self.fail_reads, operation)
    }
}

#[async_trait]
impl SessionStore for FaultyStore {
    async fn save_session(&self, session: &Session, expected: Expected) -> Result<u64> {
        self.write("save_session")?;
        self.inner.save_session(session, expected).await
    }
    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        self.read("get_session")?;
        self.inner.get_session(id).await
    }
    async fn has_session(&self, id: SessionId) -> Result<bool> {
        self.read("has_session")?;
        self.inner.has_session(id).await
    }
    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        self.write("delete_session")?;
        self.inner.delete_session(id).await
    }
    async fn append_messages(
        &self,
        id: SessionId,
        messages: &[Message],
        guard: AppendGuard,
    ) -> Result<AppendOutcome> {
        self.write("append_messages")?;
        self.inner.append_messages(id, messages, guard).await
    }
    async fn save_and_append(
        &self,
        session: &Session,
        expected: Expected,
        messages: &[Message],
    ) -> Result<AppendOutcome> {
        self.write("save_and_append")?;
        self.inner
            .save_and_append(session, expected, messages)
            .await
    }
    async fn get_session_header(&self, id: SessionId) -> Result<Option<Session>> {
        self.read("get_session_header")?;
        self.inner.get_session_header(id).await
    }
    async fn get_session_summary(&self, id: SessionId) -> Result<Option<SessionSummary>> {
        self.read("get_session_summary")?;
        self.inner.get_session_summary(id).await
    }
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>> {
        self.read("list_sessions")?;
        self.inner.list_sessions(filter).await
    }
    async fn count_sessions_by_state(&self) -> Result<BTreeMap<SessionState, u64>> {
        self.read("count_sessions_by_state")?;
        self.inner.count_sessions_by_state().await
    }
    async fn get_sessions(&self, ids: &[SessionId]) -> Result<Vec<Option<Session>>> {
        self.read("get_sessions")?;
        self.inner.get_sessions(ids).await
    }
    async fn save_sessions(&self, batch: &[(Session, Expected)]) -> Result<Vec<u64>> {
        self.write("save_sessions")?;
        self.inner.save_sessions(batch).await
    }
    async fn delete_sessions(&self, ids: &[SessionId]) -> Result<u64> {
        self.write("delete_sessions")?;
        self.inner.delete_sessions(ids).await
    }
    async fn delete_history(&self, id: SessionId) -> Result<u64> {
        self.write("delete_history")?;
        self.inner.delete_history(id).await
    }
    async fn delete_expired_sessions(&self, now: Timestamp) -> Result<u64> {
        self.write("delete_expired_sessions")?;
        self.inner.delete_expired_sessions(now).await
    }
}

#[async_trait]
impl crate::ImportLedger for FaultyStore {
    async fn record_import(
        &self,
        entry: &crate::ImportEntry,
    ) -> Result<Option<crate::ImportEntry>> {
        self.write("record_import")?;
        self.inner.record_import(entry).await
    }
    async fn imported(&self, kind: &str, original_id: &str) -> Result<Option<crate::ImportEntry>> {
        self.read("imported")?;
        self.inner.imported(kind, original_id).await
    }
}

#[async_trait]
impl KeyValueStore for FaultyStore {
    async fn set(&self, key: &StorageKey, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.write("set")?;
        self.inner.set(key, value, ttl).await
    }
    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        self.read("get")?;
        self.inner.get(key).await
    }
    async fn has(&self, key: &StorageKey) -> Result<bool> {
        self.read("has")?;
        self.inner.has(key).await
    }
    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        self.write("delete")?;
        self.inner.delete(key).await
    }
    async fn clear_older_than(&self, cutoff: Timestamp) -> Result<u64> {
        self.write("clear_older_than")?;
        self.inner.clear_older_than(cutoff).await
    }
    async fn purge_expired(&self) -> Result<u64> {
        self.write("purge_expired")?;
        self.inner.purge_expired().await
    }
}

#[async_trait]
impl EventLog for FaultyStore {
    async fn append_events(&self, events: &[Event]) -> Result<Vec<u64>> {
        self.write("append_events")?;
        let positions = self.inner.append_events(events).await?;
        Ok(self.maybe_short(positions))
    }
    async fn append_events_at(&self, events: &[Event], expected_last: u64) -> Result<Vec<u64>> {
        self.write("append_events_at")?;
        let positions = self.inner.append_events_at(events, expected_last).await?;
        Ok(self.maybe_short(positions))
    }
    async fn read_log(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<crate::LogEntry>> {
        self.read("read_events")?;
        self.inner.read_log(after, filter, limit).await
    }
    async fn log_bounds(&self) -> Result<LogBounds> {
        self.read("log_bounds")?;
        self.inner.log_bounds().await
    }
    async fn cursor(&self, subscriber: &StorageKey) -> Result<Option<crate::Cursor>> {
        self.read("cursor")?;
        self.inner.cursor(subscriber).await
    }
    async fn set_cursor(&self, subscriber: &StorageKey, cursor: crate::Cursor) -> Result<()> {
        self.write("set_cursor")?;
        self.inner.set_cursor(subscriber, cursor).await
    }
    async fn delete_cursor(&self, subscriber: &StorageKey) -> Result<bool> {
        self.write("delete_cursor")?;
        self.inner.delete_cursor(subscriber).await
    }
    async fn purge_events_before(&self, cutoff: Timestamp) -> Result<u64> {
        self.write("purge_events_before")?;
        self.inner.purge_events_before(cutoff).await
    }
    async fn event_log_stats(&self) -> Result<EventLogStats> {
        self.read("event_log_stats")?;
        self.inner.event_log_stats().await
    }
    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<u64> {
        self.read("wait_for_events")?;
        self.inner.wait_for_events(after, timeout).await
    }
}

#[async_trait]
impl VersionedStore for FaultyStore {
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        self.write("txn")?;
        self.inner.txn(txn).await
    }
    async fn get_version(&self, key: &StorageKey, at: Option<u64>) -> Result<Option<KeyVersion>> {
        self.read("get_version")?;
        self.inner.get_version(key, at).await
    }
    async fn range(&self, request: &RangeRequest) -> Result<RangePage> {
        self.read("range")?;
        self.inner.range(request).await
    }
    async fn key_history(
        &self,
        key: &StorageKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<KeyHistory> {
        self.read("key_history")?;
        self.inner.key_history(key, before, limit).await
    }
    async fn read_revisions(
        &self,
        prefix: &KeyPrefix,
        after: u64,
        limit: u32,
    ) -> Result<Vec<KeyVersion>> {
        self.read("read_revisions")?;
        self.inner.read_revisions(prefix, after, limit).await
    }
    async fn revision_bounds(&self) -> Result<RevisionBounds> {
        self.read("revision_bounds")?;
        self.inner.revision_bounds().await
    }
    async fn revision_before(&self, time: Timestamp) -> Result<Option<u64>> {
        self.read("revision_before")?;
        self.inner.revision_before(time).await
    }
    async fn compact(&self, revision: u64, keep_versions: u32) -> Result<CompactOutcome> {
        self.write("compact")?;
        self.inner.compact(revision, keep_versions).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.write("grant_lease")?;
        self.inner.grant_lease(ttl).await
    }
    async fn keep_lease_alive(&self, lease: LeaseId) -> Result<Lease> {
        self.write("keep_lease_alive")?;
        self.inner.keep_lease_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId, author: Option<&AgentId>) -> Result<Option<u64>> {
        self.write("revoke_lease")?;
        self.inner.revoke_lease(lease, author).await
    }
    async fn expire_leases(&self) -> Result<u64> {
        self.write("expire_leases")?;
        self.inner.expire_leases().await
    }
    async fn purge_prefix(
        &self,
        prefix: &KeyPrefix,
        author: Option<&AgentId>,
    ) -> Result<PurgeOutcome> {
        self.write("purge_prefix")?;
        self.inner.purge_prefix(prefix, author).await
    }
    async fn wait_for_revision(&self, after: u64, timeout: Duration) -> Result<u64> {
        self.read("wait_for_revision")?;
        self.inner.wait_for_revision(after, timeout).await
    }
    async fn versioned_stats(&self) -> Result<VersionedStats> {
        self.read("versioned_stats")?;
        self.inner.versioned_stats().await
    }
}

#[async_trait]
impl StoreAdmin for FaultyStore {
    fn backend(&self) -> BackendKind {
        self.inner.backend()
    }
    async fn health_check(&self) -> Result<()> {
        self.read("health_check")?;
        self.inner.health_check().await
    }
    async fn stats(&self) -> Result<StoreStats> {
        self.read("stats")?;
        self.inner.stats().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
