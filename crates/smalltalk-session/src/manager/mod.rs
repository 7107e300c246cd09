//! The [`SessionManager`].

mod maintenance;
mod update;
mod writeback;

pub use maintenance::MaintenanceReport;

pub use writeback::FlushReport;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use smalltalk_storage::{AppendGuard, AppendOutcome, Expected, SessionFilter, Store, StoreStats};
use smalltalk_types::{
    AgentState, Alert, AlertSeverity, AlertSink, Announcement, BackgroundTask, Clock,
    EventPriority, EventSink, LogAlertSink, Message, Session, SessionContentPurger, SessionId,
    SessionState, SessionSummary, SystemClock, Timestamp, Topic,
};

use crate::config::{Durability, SessionConfig, TtlStrategy, check_ttl};
use crate::preserve::{Preserved, preserve};
use crate::{Error, Result};

/// Options for [`SessionManager::create`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateOptions {
    /// Lifetime; the configured default if `None`. 1 hour to 30 days.
    pub ttl: Option<Duration>,
    /// Initial metadata.
    pub metadata: Map<String, Value>,
}

/// How [`SessionManager::add_message`] acknowledged a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored (`sync` durability): where the messages went.
    Stored(AppendOutcome),
    /// Held in memory until the next flush (`async` durability).
    Buffered {
        /// Messages of this session waiting for the flush.
        pending: usize,
    },
}

/// Counts and sizes, for operators (FR-037/038).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Stored sessions per state.
    pub by_state: BTreeMap<SessionState, u64>,
    /// Sessions in this manager's active pool.
    pub active: usize,
    /// The pool's limit.
    pub capacity: usize,
    /// Version conflicts met (each retry or last-write-wins fallback).
    pub conflicts: u64,
    /// Creations refused at capacity.
    pub rejections: u64,
    /// Writes that failed in storage (in `async` durability, each failed
    /// flush attempt).
    pub save_failures: u64,
    /// Sessions with acknowledged writes not yet stored (`async`
    /// durability).
    pub pending: usize,
    /// The store's own counts and sizes.
    pub store: StoreStats,
}

/// Sessions over a store: create, restore, update under optimistic locking,
/// append messages, invalidate, expire. Cheap to clone; clones share state.
///
/// Every write is durable in storage before the call returns. Updates are
/// closures re-applied on fresh data when a concurrent writer got there
/// first, so no update is lost; appends never conflict.
#[derive(Debug, Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    config: SessionConfig,
    clock: Arc<dyn Clock>,
    /// The active pool: sessions this manager holds active.
    pool: Mutex<HashMap<SessionId, PoolEntry>>,
    conflicts: AtomicU64,
    /// Async durability: bumped, under the pending-writes lock, by every
    /// change to a buffered header or its entry; an update that read
    /// before a change applies again on fresh data.
    header_epoch: AtomicU64,
    rejections: AtomicU64,
    save_failures: AtomicU64,
    alerts: Arc<dyn AlertSink>,
    /// Where what happened is announced (the umbrella's event bus).
    events: Option<Arc<dyn EventSink>>,
    /// What else keeps data of a session, purged with its content.
    purgers: Vec<Arc<dyn SessionContentPurger>>,
    /// Pending writes, in `async` durability only.
    writeback: Option<writeback::PendingWrites>,
    /// Serializes flushes.
    flush_lock: tokio::sync::Mutex<()>,
    /// Invalidated sessions whose history still has to be deleted, with
    /// the failures so far.
    purges: Mutex<HashMap<SessionId, u32>>,
    /// Degraded operation (FR-010a): no new sessions, half the capacity.
    degraded: std::sync::atomic::AtomicBool,
    /// Bytes of messages buffered in `async` durability.
    pending_bytes: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pending = self.writeback.as_ref().map_or(0, |pending| {
            pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .len()
        });
        if pending > 0 {
            tracing::error!(
                sessions = pending,
                "session manager dropped with unflushed writes; call close() before exit"
            );
        }
    }
}

/// A session in the active pool.
#[derive(Debug, Clone, Copy)]
struct PoolEntry {
    /// For the retry-after estimate and cleanup.
    expires_at: Timestamp,
    /// For the idle sweep.
    last_activity: Timestamp,
}

/// Builds a [`SessionManager`].
#[derive(Debug)]
pub struct SessionManagerBuilder {
    store: Arc<dyn Store>,
    config: SessionConfig,
    clock: Arc<dyn Clock>,
    alerts: Arc<dyn AlertSink>,
    events: Option<Arc<dyn EventSink>>,
    purgers: Vec<Arc<dyn SessionContentPurger>>,
}

impl SessionManagerBuilder {
    /// Sets the configuration (validated by [`build`](Self::build)).
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the clock (tests use a `ManualClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Announces what happens to sessions through `events`: topics
    /// `session:created`, `session:message-added`, `session:state-changed`,
    /// `session:invalidated` (critical) and `session:deleted`, each after
    /// the change is acknowledged. Announcements carry ids, sequence
    /// numbers and counts, never message content or metadata (they stay on
    /// the event log for its retention, past an invalidation). Default:
    /// none.
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// Also purges `purger`'s data of a session (the state store's session
    /// namespace) when the session is invalidated or deleted, expiry
    /// included; a failure is retried by maintenance, with an alert after
    /// repeated failure. Several may be added.
    pub fn content_purger(mut self, purger: Arc<dyn SessionContentPurger>) -> Self {
        self.purgers.push(purger);
        self
    }

    /// Sets where alerts go (default: an ERROR log line each).
    pub fn alerts(mut self, alerts: Arc<dyn AlertSink>) -> Self {
        self.alerts = alerts;
        self
    }

    /// Validates the configuration and builds the manager.
    pub fn build(self) -> Result<SessionManager> {
        self.config.validate()?;
        let writeback =
            matches!(self.config.durability, Durability::Async { .. }).then(Default::default);
        Ok(SessionManager {
            inner: Arc::new(Inner {
                store: self.store,
                config: self.config,
                clock: self.clock,
                pool: Mutex::new(HashMap::new()),
                conflicts: AtomicU64::new(0),
                header_epoch: AtomicU64::new(0),
                rejections: AtomicU64::new(0),
                save_failures: AtomicU64::new(0),
                alerts: self.alerts,
                events: self.events,
                purgers: self.purgers,
                writeback,
                flush_lock: tokio::sync::Mutex::new(()),
                purges: Mutex::new(HashMap::new()),
                degraded: std::sync::atomic::AtomicBool::new(false),
                pending_bytes: AtomicU64::new(0),
            }),
        })
    }
}

/// The degradation port (FR-010a): the health monitor switches it; while
/// degraded, [`SessionManager::create`] answers [`Error::Paused`] and the
/// active pool's limit is halved (idle sessions are reactivated only within
/// it).
impl smalltalk_types::DegradationControl for SessionManager {
    fn set_degraded(&self, degraded: bool) {
        let was = self.inner.degraded.swap(degraded, Ordering::Relaxed);
        if was != degraded {
            tracing::warn!(degraded, "session manager degradation changed");
        }
    }
}

/// The agent-state port (FR-009a): the health monitor keeps and restores an
/// agent's state in the session it serves, through
/// [`update_agent_state`](SessionManager::update_agent_state) (so the
/// preservation limits apply) and the session's header.
#[async_trait::async_trait]
impl smalltalk_types::AgentStateSource for SessionManager {
    async fn load_agent_state(
        &self,
        session: SessionId,
        agent: &smalltalk_types::AgentId,
    ) -> std::result::Result<Option<AgentState>, smalltalk_types::BoxError> {
        let header = self
            .inner
            .store
            .get_session_header(session)
            .await
            .map_err(Error::from)?;
        Ok(header
            .map(|header| self.merge_pending(header))
            .and_then(|mut header| header.agent_states.remove(agent)))
    }

    async fn store_agent_state(
        &self,
        session: SessionId,
        state: AgentState,
    ) -> std::result::Result<(), smalltalk_types::BoxError> {
        self.update_agent_state(session, state)
            .await
            .map(drop)
            .map_err(Into::into)
    }
}

/// Refuses an update that changed the session's identity.
fn check_same_id(id: SessionId, session: &Session) -> Result<()> {
    if session.id != id {
        return Err(Error::IdChanged { id });
    }
    Ok(())
}

/// Rejects writes to sessions that no longer accept them.
fn check_open(session: &Session, now: Timestamp) -> Result<()> {
    match session.state {
        SessionState::Invalidated => Err(Error::Invalidated { id: session.id }),
        SessionState::Expired => Err(Error::Expired { id: session.id }),
        _ if session.expires_at <= now => Err(Error::Expired { id: session.id }),
        _ => Ok(()),
    }
}

impl SessionManager {
    /// A manager with the default configuration and the system clock.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::builder(store)
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts building a manager over `store`.
    pub fn builder(store: Arc<dyn Store>) -> SessionManagerBuilder {
        SessionManagerBuilder {
            store,
            config: SessionConfig::default(),
            clock: Arc::new(SystemClock),
            alerts: Arc::new(LogAlertSink),
            events: None,
            purgers: Vec::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    fn pool(&self) -> MutexGuard<'_, HashMap<SessionId, PoolEntry>> {
        self.inner
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts the session in the pool if it is active (now active), else
    /// takes it out.
    fn track(&self, session: &Session) {
        let now = self.inner.clock.now();
        let mut pool = self.pool();
        if session.state == SessionState::Active && session.expires_at > now {
            pool.insert(
                session.id,
                PoolEntry {
                    expires_at: session.expires_at,
                    last_activity: now,
                },
            );
        } else {
            pool.remove(&session.id);
        }
        metrics::gauge!("smalltalk_sessions_active").set(pool.len() as f64);
    }

    fn untrack(&self, id: SessionId) {
        let mut pool = self.pool();
        pool.remove(&id);
        metrics::gauge!("smalltalk_sessions_active").set(pool.len() as f64);
    }

    fn note_failure<T>(&self, result: smalltalk_storage::Result<T>) -> Result<T> {
        result.map_err(|error| {
            if matches!(
                error,
                smalltalk_storage::Error::Unavailable { .. }
                    | smalltalk_storage::Error::Backend { .. }
            ) {
                self.inner.save_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("smalltalk_session_save_failures_total").increment(1);
            }
            error.into()
        })
    }

    /// Announces a change to `id` through the event port, if one is set.
    async fn announce(&self, topic: &str, priority: EventPriority, id: SessionId, payload: Value) {
        let Some(events) = &self.inner.events else {
            return;
        };
        let Ok(topic) = Topic::parse(topic) else {
            tracing::error!(topic, "invalid announcement topic");
            return;
        };
        let announcement = Announcement {
            topic,
            priority,
            session_id: Some(id),
            conversation_id: None,
            payload,
            timestamp: self.inner.clock.now(),
        };
        events.announce(announcement).await;
    }

    fn note_conflict(&self) {
        self.inner.conflicts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("smalltalk_session_conflicts_total").increment(1);
    }

    /// When a slot is likely to free up: the soonest expiry or idle
    /// deadline in the pool, between 1 and 60 seconds away.
    fn retry_after(&self, pool: &HashMap<SessionId, PoolEntry>, now: Timestamp) -> Duration {
        let idle_after = self.inner.config.idle_after;
        let soonest = pool
            .values()
            .map(|entry| match idle_after {
                Some(idle) => entry
                    .expires_at
                    .min(entry.last_activity.saturating_add(idle)),
                None => entry.expires_at,
            })
            .min()
            .map_or(Duration::from_secs(1), |deadline| {
                deadline.duration_since(now)
            });
        soonest.clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Sessions in this manager's active pool now.
    pub fn active_count(&self) -> usize {
        self.pool().len()
    }

    /// Whether the manager runs degraded (see
    /// [`DegradationControl`](smalltalk_types::DegradationControl)).
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// The active pool's limit now: halved while degraded.
    fn capacity(&self) -> usize {
        let limit = self.inner.config.max_active_sessions;
        if self.is_degraded() {
            (limit / 2).max(1)
        } else {
            limit
        }
    }

    /// Creates a session (UUID v4, expiring after the TTL) and stores it.
    /// Fails with [`Error::CapacityExceeded`] when the active pool is full,
    /// and [`Error::Paused`] while the system is degraded.
    #[tracing::instrument(skip_all, fields(session_id), err)]
    pub async fn create(&self, options: CreateOptions) -> Result<Session> {
        let ttl = options.ttl.unwrap_or(self.inner.config.default_ttl);
        check_ttl("ttl", ttl)?;
        let now = self.inner.clock.now();
        let mut session = Session::new(SessionId::new(), now, ttl);
        session.metadata = options.metadata;
        tracing::Span::current().record("session_id", tracing::field::display(session.id));
        if self.is_degraded() {
            self.inner.rejections.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("smalltalk_session_rejections_total").increment(1);
            return Err(Error::Paused {
                retry_after: Duration::from_secs(60),
            });
        }
        {
            let mut pool = self.pool();
            let limit = self.capacity();
            if pool.len() >= limit {
                self.inner.rejections.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("smalltalk_session_rejections_total").increment(1);
                return Err(Error::CapacityExceeded {
                    limit,
                    retry_after: self.retry_after(&pool, now),
                });
            }
            // Reserve the slot before the write, so concurrent creations
            // cannot overshoot the limit.
            pool.insert(
                session.id,
                PoolEntry {
                    expires_at: session.expires_at,
                    last_activity: now,
                },
            );
        }
        match self.note_failure(
            self.inner
                .store
                .save_session(&session, Expected::Absent)
                .await,
        ) {
            Ok(version) => {
                session.version = version;
                self.track(&session);
                // No metadata: announcements outlive invalidation on the log.
                let payload = serde_json::json!({ "expiresAt": session.expires_at });
                self.announce(
                    "session:created",
                    EventPriority::Normal,
                    session.id,
                    payload,
                )
                .await;
                Ok(session)
            }
            Err(error) => {
                self.untrack(session.id);
                Err(error)
            }
        }
    }

    /// Restores a session with its whole history, agent states and metadata,
    /// exactly as saved. An active session joins this manager's pool (a
    /// restore is not refused at capacity: the conversation exists).
    #[tracing::instrument(skip_all, fields(session_id = %id), err)]
    pub async fn restore(&self, id: SessionId) -> Result<Session> {
        let started = Instant::now();
        let session = self
            .inner
            .store
            .get_session(id)
            .await?
            .ok_or(Error::NotFound { id })?;
        let session = self.merge_pending(session);
        metrics::histogram!("smalltalk_session_restore_seconds")
            .record(started.elapsed().as_secs_f64());
        check_open(&session, self.inner.clock.now())?;
        self.track(&session);
        Ok(session)
    }

    /// Reads a session whatever its state (for inspection), with writes
    /// not yet flushed in `async` durability.
    pub async fn get(&self, id: SessionId) -> Result<Option<Session>> {
        Ok(self
            .inner
            .store
            .get_session(id)
            .await?
            .map(|session| self.merge_pending(session)))
    }

    /// In `async` durability, stores `id`'s pending writes before an
    /// operation that must see storage as the caller does.
    async fn flush_first(&self, id: SessionId) -> Result<()> {
        if self.inner.writeback.is_some() {
            if let writeback::Flushed::Failed = self.flush_session(id).await {
                self.take_surfaced(id)?;
            }
        }
        Ok(())
    }

    /// Stores every pending write and reports failure (`async`
    /// durability; a no-op in `sync`). Call it before the process exits:
    /// writes not yet flushed live only in memory.
    pub async fn close(&self) -> Result<()> {
        let report = self.flush().await?;
        match self.first_unflushed() {
            Some((id, source)) if report.failed > 0 => Err(Error::FlushFailed { id, source }),
            _ => Ok(()),
        }
    }

    /// Appends one message. Never conflicts: concurrent appends are
    /// serialized by storage and none is lost. An invalidated or expired
    /// session refuses it ([`Error::Invalidated`], [`Error::Expired`]),
    /// checked atomically with the write in `sync` durability (in `async`,
    /// against what this manager knows of the session).
    pub async fn add_message(&self, id: SessionId, message: Message) -> Result<Appended> {
        self.add_messages(id, std::slice::from_ref(&message)).await
    }

    /// Appends several messages atomically, in order (see
    /// [`add_message`](Self::add_message)).
    #[tracing::instrument(skip_all, fields(session_id = %id, count = messages.len()), err)]
    pub async fn add_messages(&self, id: SessionId, messages: &[Message]) -> Result<Appended> {
        let appended = if self.inner.writeback.is_some() {
            self.append_buffered(id, messages).await?
        } else {
            self.append_stored(id, messages).await?
        };
        // Ids, positions and counts only: content lives in the history and
        // nowhere else, so invalidating the session removes it everywhere.
        let ids: Vec<_> = messages.iter().map(|message| message.id).collect();
        let payload = match appended {
            Appended::Stored(outcome) => serde_json::json!({
                "messageIds": ids,
                "count": messages.len(),
                "firstSequence": outcome.first_sequence,
                "messageCount": outcome.message_count,
            }),
            Appended::Buffered { .. } => serde_json::json!({
                "messageIds": ids,
                "count": messages.len(),
            }),
        };
        self.announce("session:message-added", EventPriority::Normal, id, payload)
            .await;
        self.reactivate_if_idle(id).await;
        Ok(appended)
    }

    /// `id`'s stored header (no history), or [`Error::NotFound`].
    async fn stored_header(&self, id: SessionId) -> Result<Session> {
        self.inner
            .store
            .get_session_header(id)
            .await?
            .ok_or(Error::NotFound { id })
    }

    /// A message to an idle session makes it active again (and brings it
    /// back into the pool), capacity permitting; at capacity it stays idle.
    /// Sessions in the pool are active already: no read for them.
    async fn reactivate_if_idle(&self, id: SessionId) {
        if self.pool().contains_key(&id) {
            return;
        }
        let idle = matches!(
            self.inner.store.get_session_summary(id).await,
            Ok(Some(summary)) if summary.state == SessionState::Idle
        );
        if idle {
            match self.update_state(id, SessionState::Active).await {
                Ok(_) => tracing::debug!(session_id = %id, "idle session active again"),
                Err(error) => tracing::debug!(session_id = %id, %error, "idle session stays idle"),
            }
        }
    }

    async fn append_stored(&self, id: SessionId, messages: &[Message]) -> Result<Appended> {
        let now = self.inner.clock.now();
        let result = self
            .inner
            .store
            .append_messages(id, messages, AppendGuard::open_at(now))
            .await;
        match &result {
            Ok(_) => {
                if let Some(entry) = self.pool().get_mut(&id) {
                    entry.last_activity = now;
                }
            }
            Err(smalltalk_storage::Error::NotAccepting { .. }) => self.untrack(id),
            Err(_) => {}
        }
        self.note_failure(result).map(Appended::Stored)
    }

    /// Moves a session to `state`. Going to `invalidated` is
    /// [`invalidate`](Self::invalidate); leaving `invalidated` or `expired`
    /// is refused; going to `active` needs a free slot in the pool.
    #[tracing::instrument(skip_all, fields(session_id = %id, state = %state), err)]
    pub async fn update_state(&self, id: SessionId, state: SessionState) -> Result<Session> {
        if state == SessionState::Invalidated {
            self.invalidate(id).await?;
            return self.stored_header(id).await;
        }
        // Going active takes a slot, reserved before the write so that
        // concurrent reactivations cannot overshoot the limit.
        let mut reserved = false;
        if state == SessionState::Active {
            let mut pool = self.pool();
            let limit = self.capacity();
            let now = self.inner.clock.now();
            if !pool.contains_key(&id) {
                if pool.len() >= limit {
                    self.inner.rejections.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("smalltalk_session_rejections_total").increment(1);
                    let retry_after = self.retry_after(&pool, now);
                    return Err(Error::CapacityExceeded { limit, retry_after });
                }
                pool.insert(
                    id,
                    PoolEntry {
                        expires_at: now.saturating_add(self.inner.config.default_ttl),
                        last_activity: now,
                    },
                );
                reserved = true;
            }
        }
        let mut from = None;
        let updated = self
            .update(id, |session| {
                from = Some(session.state);
                session.state = state;
            })
            .await;
        let (session, ()) = match updated {
            Ok(updated) => updated,
            Err(error) => {
                if reserved {
                    self.untrack(id);
                }
                return Err(error);
            }
        };
        let payload = serde_json::json!({ "from": from, "to": state });
        self.announce("session:state-changed", EventPriority::Normal, id, payload)
            .await;
        Ok(session)
    }

    /// Stores one agent's state in the session, after preservation
    /// (FR-009a): the newest `max_turns` turns kept; over `max_bytes`, the
    /// oldest turns then the trimmable fields dropped (with a WARN); still
    /// over it compressed, refused with [`Error::AgentStateTooLarge`] and
    /// nothing stored. Returns what preservation did.
    #[tracing::instrument(skip_all, fields(session_id = %id, agent_id = %state.agent_id), err)]
    pub async fn update_agent_state(
        &self,
        id: SessionId,
        mut state: AgentState,
    ) -> Result<Preserved> {
        let report = preserve(&mut state, self.inner.config.agent_state)?;
        state.updated_at = self.inner.clock.now();
        self.update(id, |session| {
            session
                .agent_states
                .insert(state.agent_id.clone(), state.clone());
        })
        .await?;
        Ok(report)
    }

    /// Terminates a session (FR-004a): it leaves the active pool at once and
    /// from then on refuses messages and updates with
    /// [`Error::Invalidated`], on every process sharing the store. Its
    /// content (history and agent states) is deleted at once; only a
    /// tombstone with the metadata stays until the session's expiry, so the
    /// distinct error outlives the content. If deleting the history fails,
    /// maintenance retries it, with an alert after repeated failure.
    /// Invalidating twice is not an error.
    #[tracing::instrument(skip_all, fields(session_id = %id), err)]
    pub async fn invalidate(&self, id: SessionId) -> Result<()> {
        self.untrack(id);
        // Acknowledged writes go in before the tombstone.
        self.flush_first(id).await?;
        // What purgers keep goes before the tombstone too (and again after
        // it, for writes in between): a crash in between cannot leave it.
        self.purge_before(id).await?;
        let written = self
            .change_header(id, |session, _| {
                if session.state == SessionState::Invalidated {
                    return Ok(None);
                }
                session.state = SessionState::Invalidated;
                // The tombstone keeps the metadata (for audit), not the content.
                session.agent_states.clear();
                Ok(Some(()))
            })
            .await?;
        if written.is_some() {
            self.purge_history(id).await;
            self.announce(
                "session:invalidated",
                EventPriority::Critical,
                id,
                Value::Null,
            )
            .await;
        }
        Ok(())
    }

    /// Deletes a session and its history now, and what content purgers
    /// keep of it (first: if that fails, [`Error::PurgeFailed`] and the
    /// session stays); `false` if it did not exist.
    #[tracing::instrument(skip_all, fields(session_id = %id), err)]
    pub async fn delete(&self, id: SessionId) -> Result<bool> {
        self.untrack(id);
        self.discard_pending(id);
        self.purge_before(id).await?;
        let deleted = self.note_failure(self.inner.store.delete_session(id).await)?;
        if deleted {
            self.purge_others(id).await;
            self.announce("session:deleted", EventPriority::Normal, id, Value::Null)
                .await;
        }
        Ok(deleted)
    }

    /// Lists session summaries (see [`SessionFilter`]).
    pub async fn list(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>> {
        Ok(self.inner.store.list_sessions(filter).await?)
    }

    /// Counts per state, the pool, conflict / rejection / failure counters
    /// and storage sizes.
    pub async fn stats(&self) -> Result<SessionStats> {
        let by_state = self.inner.store.count_sessions_by_state().await?;
        let store = self.inner.store.stats().await?;
        Ok(SessionStats {
            by_state,
            active: self.pool().len(),
            capacity: self.inner.config.max_active_sessions,
            conflicts: self.inner.conflicts.load(Ordering::Relaxed),
            rejections: self.inner.rejections.load(Ordering::Relaxed),
            save_failures: self.inner.save_failures.load(Ordering::Relaxed),
            pending: self.pending_count(),
            store,
        })
    }
}
