//! `async` durability: writes acknowledged from memory and flushed in the
//! background, with the retry, alert and reporting policy of FR-002a/b.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use smalltalk_storage::{AppendGuard, Expected};
use smalltalk_types::{Alert, AlertSeverity, Message, Session, SessionId, SessionState, Timestamp};

use super::{Appended, SessionManager, check_open};
use crate::{Error, Result};

/// Writes to one session acknowledged but not yet stored.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// The session's changed header (no history), if an update is pending.
    header: Option<Session>,
    /// Bumped by every header change, so a flush knows if it raced one.
    header_generation: u64,
    /// Messages acknowledged, in order.
    messages: Vec<Message>,
    /// Their size, as [`message_bytes`] counts it.
    bytes: u64,
    /// The stored version this manager last saw or wrote, to notice other
    /// writers (async mode assumes one writer per session).
    known_version: Option<u64>,
    /// Consecutive failed flushes.
    failures: u32,
    /// When the current run of failures started.
    failing_since: Option<Timestamp>,
    /// No retry before this.
    next_attempt: Timestamp,
    /// Whether the CRITICAL alert of this run of failures was raised.
    critical_raised: bool,
    /// A failed flush to report on the next write.
    surfaced: Option<Arc<smalltalk_storage::Error>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.header.is_none() && self.messages.is_empty()
    }
}

/// What a buffered message counts against
/// [`SessionConfig::max_pending_bytes`](crate::SessionConfig::max_pending_bytes):
/// its content, its metadata as JSON, and 128 bytes for the rest.
pub(super) fn message_bytes(message: &Message) -> u64 {
    let metadata = if message.metadata.is_empty() {
        0
    } else {
        serde_json::to_vec(&message.metadata).map_or(0, |json| json.len())
    };
    (message.content.len() + metadata + 128) as u64
}

/// The pending writes of a manager, by session.
pub(super) type PendingWrites = std::sync::Mutex<HashMap<SessionId, Pending>>;

/// What [`SessionManager::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Sessions whose pending writes are now stored.
    pub flushed: usize,
    /// Sessions whose flush failed; their writes are kept and retried.
    pub failed: usize,
    /// Sessions whose writes could not be stored at all (deleted, or
    /// invalidated elsewhere) and were dropped with an ERROR and an alert.
    pub dropped: usize,
}

/// What a buffered update was applied to.
enum Base {
    /// The buffered header, at this generation.
    Buffered(u64),
    /// The stored header, at this version.
    Stored(u64),
}

/// Why a flush did not store a session's writes.
enum FlushError {
    /// Storage failed: keep the writes, retry later.
    Retry(smalltalk_storage::Error),
    /// The writes can never be stored (the session is gone or was
    /// invalidated elsewhere).
    Drop(String),
}

impl From<smalltalk_storage::Error> for FlushError {
    fn from(error: smalltalk_storage::Error) -> Self {
        FlushError::Retry(error)
    }
}

pub(super) enum Flushed {
    Stored,
    Failed,
    Dropped,
    Nothing,
}

impl SessionManager {
    pub(super) fn pending(&self) -> Option<std::sync::MutexGuard<'_, HashMap<SessionId, Pending>>> {
        self.inner.writeback.as_ref().map(|pending| {
            pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        })
    }

    /// Reports, once, a failed flush of `id`'s earlier writes.
    pub(super) fn take_surfaced(&self, id: SessionId) -> Result<()> {
        if let Some(source) = self
            .pending()
            .and_then(|mut pending| pending.get_mut(&id)?.surfaced.take())
        {
            return Err(Error::FlushFailed { id, source });
        }
        Ok(())
    }

    /// Adds the pending writes of `session` to what storage returned.
    pub(super) fn merge_pending(&self, mut session: Session) -> Session {
        if let Some(pending) = self.pending() {
            if let Some(entry) = pending.get(&session.id) {
                if let Some(header) = &entry.header {
                    session.state = header.state;
                    session.updated_at = header.updated_at;
                    session.expires_at = header.expires_at;
                    session.agent_states = header.agent_states.clone();
                    session.metadata = header.metadata.clone();
                }
                session.messages.extend(entry.messages.iter().cloned());
            }
        }
        session
    }

    /// Records a change to a buffered header or its entry (call with the
    /// pending-writes lock held).
    fn header_changed(&self) {
        self.inner.header_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets `id`'s pending writes (the session is being deleted).
    pub(super) fn discard_pending(&self, id: SessionId) {
        if let Some(mut pending) = self.pending() {
            if let Some(entry) = pending.remove(&id) {
                self.header_changed();
                self.release_bytes(entry.bytes);
            }
        }
    }

    /// Buffered message bytes no longer held.
    fn release_bytes(&self, bytes: u64) {
        let _ =
            self.inner
                .pending_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    Some(held.saturating_sub(bytes))
                });
    }

    /// A session whose last flush failed, with the error.
    pub(super) fn first_unflushed(&self) -> Option<(SessionId, Arc<smalltalk_storage::Error>)> {
        let pending = self.pending()?;
        pending
            .iter()
            .find_map(|(id, entry)| Some((*id, entry.surfaced.clone()?)))
    }

    /// Sessions with pending writes whose expiry has passed (dropped by
    /// cleanup: the TTL strategy applies to them too).
    pub(super) fn expired_pending(&self, now: Timestamp) -> Vec<SessionId> {
        self.pending().map_or_else(Vec::new, |pending| {
            pending
                .iter()
                .filter(|(_, entry)| {
                    entry
                        .header
                        .as_ref()
                        .is_some_and(|header| header.expires_at <= now)
                })
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// How many sessions have writes not yet stored.
    pub(super) fn pending_count(&self) -> usize {
        self.pending().map_or(0, |pending| pending.len())
    }

    /// `update` in async durability: the change is applied to the session's
    /// latest known header and acknowledged; a flush stores it. `change`
    /// returning `None` buffers nothing (`Ok(None)`).
    pub(super) async fn update_buffered<T, F>(
        &self,
        id: SessionId,
        mut change: F,
    ) -> Result<Option<(Session, T)>>
    where
        F: FnMut(&mut Session) -> Result<Option<T>> + Send,
        T: Send,
    {
        self.take_surfaced(id)?;
        loop {
            let now = self.inner.clock.now();
            // The latest header: the buffered one (with its generation), else
            // the stored one. Copied out: `change` runs with no lock held,
            // and the result is kept only if no buffered header changed
            // meanwhile (`header_epoch`, read under the lock).
            let (buffered, epoch) = {
                let pending = self.pending().expect("async durability");
                let epoch = self.inner.header_epoch.load(Ordering::SeqCst);
                let buffered = pending
                    .get(&id)
                    .and_then(|entry| Some((entry.header.clone()?, entry.header_generation)));
                (buffered, epoch)
            };
            let (mut next, base) = match buffered {
                Some((header, generation)) => (header, Base::Buffered(generation)),
                None => {
                    let loaded = self.stored_header(id).await?;
                    let version = loaded.version;
                    (loaded, Base::Stored(version))
                }
            };
            check_open(&next, now)?;
            let Some(value) = change(&mut next)? else {
                return Ok(None);
            };
            // Refused now, not at a flush that could never succeed.
            next.validate_depth()?;
            next.updated_at = now;
            let mut pending = self.pending().expect("async durability");
            if self.inner.header_epoch.load(Ordering::SeqCst) != epoch {
                // A buffered header changed or was flushed meanwhile: again,
                // on fresh data.
                continue;
            }
            match base {
                Base::Buffered(generation) => {
                    match pending.get_mut(&id) {
                        Some(entry)
                            if entry.header.is_some() && entry.header_generation == generation =>
                        {
                            entry.header = Some(next.clone());
                            entry.header_generation += 1;
                            self.header_changed();
                        }
                        // Changed or flushed meanwhile: again, on fresh data.
                        _ => continue,
                    }
                }
                Base::Stored(version) => {
                    let entry = pending.entry(id).or_default();
                    if entry.header.is_some() {
                        // Another update buffered one meanwhile: on top of it.
                        continue;
                    }
                    entry.known_version.get_or_insert(version);
                    entry.header = Some(next.clone());
                    entry.header_generation += 1;
                    self.header_changed();
                }
            }
            drop(pending);
            self.track(&next);
            return Ok(Some((next, value)));
        }
    }

    /// `add_messages` in async durability: checked against what is known of
    /// the session, then acknowledged from memory.
    pub(super) async fn append_buffered(
        &self,
        id: SessionId,
        messages: &[Message],
    ) -> Result<Appended> {
        self.take_surfaced(id)?;
        // Refused now, not at a flush that could never succeed.
        messages.iter().try_for_each(Message::validate_depth)?;
        let now = self.inner.clock.now();
        let known = self.pending().and_then(|pending| {
            pending
                .get(&id)?
                .header
                .as_ref()
                .map(|header| check_open(header, now))
        });
        // Bound first: no lock may be held across the await below.
        let in_pool = self.pool().get(&id).map(|entry| entry.expires_at > now);
        match known {
            Some(open) => open?,
            None => match in_pool {
                Some(true) => {}
                Some(false) => return Err(Error::Expired { id }),
                None => {
                    let summary = self
                        .inner
                        .store
                        .get_session_summary(id)
                        .await?
                        .ok_or(Error::NotFound { id })?;
                    match summary.state {
                        SessionState::Invalidated => return Err(Error::Invalidated { id }),
                        SessionState::Expired => return Err(Error::Expired { id }),
                        _ if summary.expires_at <= now => return Err(Error::Expired { id }),
                        _ => {}
                    }
                }
            },
        }
        let bytes: u64 = messages.iter().map(message_bytes).sum();
        let limit = self.inner.config.max_pending_bytes as u64;
        let pending_messages = {
            let mut pending = self.pending().expect("async durability");
            // Checked and added under the lock: concurrent appends cannot
            // overshoot together.
            let held = self.inner.pending_bytes.load(Ordering::Relaxed);
            if held.saturating_add(bytes) > limit {
                return Err(Error::Backpressure {
                    pending_bytes: held,
                    limit,
                });
            }
            self.inner.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
            let entry = pending.entry(id).or_default();
            entry.messages.extend_from_slice(messages);
            entry.bytes += bytes;
            entry.messages.len()
        };
        if let Some(entry) = self.pool().get_mut(&id) {
            entry.last_activity = now;
        }
        Ok(Appended::Buffered {
            pending: pending_messages,
        })
    }

    /// Stores every session's pending writes now, whatever their retry
    /// schedule. Failures are kept and retried as usual.
    pub async fn flush(&self) -> Result<FlushReport> {
        self.flush_where(|_| true).await
    }

    /// Stores the pending writes that are due: not yet tried, or whose
    /// retry time has come. This is what the background flusher of
    /// [`spawn_maintenance`](Self::spawn_maintenance) runs every
    /// `flush_interval`; call it yourself to schedule flushes another way.
    pub async fn flush_due(&self) -> Result<FlushReport> {
        let now = self.inner.clock.now();
        self.flush_where(|entry| entry.next_attempt <= now).await
    }

    async fn flush_where(&self, due: impl Fn(&Pending) -> bool) -> Result<FlushReport> {
        let ids: Vec<SessionId> = match self.pending() {
            Some(pending) => pending
                .iter()
                .filter(|(_, entry)| due(entry))
                .map(|(id, _)| *id)
                .collect(),
            None => return Ok(FlushReport::default()),
        };
        let mut report = FlushReport::default();
        for id in ids {
            match self.flush_session(id).await {
                Flushed::Stored => report.flushed += 1,
                Flushed::Failed => report.failed += 1,
                Flushed::Dropped => report.dropped += 1,
                Flushed::Nothing => {}
            }
        }
        Ok(report)
    }

    /// Stores `id`'s pending writes and does the bookkeeping of FR-002a/b.
    pub(super) async fn flush_session(&self, id: SessionId) -> Flushed {
        let _one_at_a_time = self.inner.flush_lock.lock().await;
        let snapshot = self.pending().and_then(|pending| {
            let entry = pending.get(&id)?;
            Some((
                entry.header.clone(),
                entry.header_generation,
                entry.messages.clone(),
                entry.known_version,
            ))
        });
        let Some((header, header_generation, messages, known_version)) = snapshot else {
            return Flushed::Nothing;
        };
        let result = self
            .write_pending(id, header.as_ref(), &messages, known_version)
            .await;
        let now = self.inner.clock.now();
        let policy = &self.inner.config.save_retry;
        let mut alerts = Vec::new();
        let outcome = {
            let Some(mut pending) = self.pending() else {
                return Flushed::Nothing;
            };
            let Some(entry) = pending.get_mut(&id) else {
                return Flushed::Nothing;
            };
            match result {
                Ok(version) => {
                    let stored: u64 = entry
                        .messages
                        .drain(..messages.len())
                        .map(|message| message_bytes(&message))
                        .sum();
                    entry.bytes = entry.bytes.saturating_sub(stored);
                    self.release_bytes(stored);
                    if entry.header_generation == header_generation {
                        entry.header = None;
                    }
                    self.header_changed();
                    entry.known_version = Some(version);
                    if entry.failures > 0 {
                        tracing::info!(session_id = %id, failures = entry.failures, "pending session writes stored after failures");
                        if entry.critical_raised {
                            alerts.push(alert(
                                AlertSeverity::Info,
                                id,
                                "session writes are stored again",
                                entry.failures,
                                now,
                                None,
                            ));
                        }
                    }
                    entry.failures = 0;
                    entry.failing_since = None;
                    entry.critical_raised = false;
                    entry.surfaced = None;
                    if entry.is_empty() {
                        pending.remove(&id);
                    }
                    Flushed::Stored
                }
                Err(FlushError::Drop(reason)) => {
                    tracing::error!(session_id = %id, %reason, messages = messages.len(), "acknowledged session writes cannot be stored; dropped");
                    alerts.push(alert(
                        AlertSeverity::Error,
                        id,
                        "acknowledged session writes dropped",
                        entry.failures,
                        now,
                        Some(&reason),
                    ));
                    self.release_bytes(entry.bytes);
                    pending.remove(&id);
                    self.header_changed();
                    Flushed::Dropped
                }
                Err(FlushError::Retry(error)) => {
                    entry.failures += 1;
                    let since = *entry.failing_since.get_or_insert(now);
                    let wait = policy.wait_after(entry.failures);
                    entry.next_attempt = now.saturating_add(wait);
                    let error = Arc::new(error);
                    entry.surfaced = Some(Arc::clone(&error));
                    self.inner
                        .save_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!("smalltalk_session_save_failures_total").increment(1);
                    tracing::error!(
                        session_id = %id,
                        error = %error,
                        retry_count = entry.failures,
                        retry_in_ms = wait.as_millis() as u64,
                        pending_messages = entry.messages.len(),
                        "flushing session writes failed; kept in memory"
                    );
                    let reason = error.to_string();
                    if entry.failures == policy.alert_after {
                        alerts.push(alert(
                            AlertSeverity::Error,
                            id,
                            "session writes keep failing to reach storage",
                            entry.failures,
                            now,
                            Some(&reason),
                        ));
                    }
                    if !entry.critical_raised && now.duration_since(since) >= policy.critical_after
                    {
                        entry.critical_raised = true;
                        alerts.push(alert(
                            AlertSeverity::Critical,
                            id,
                            "session writes have not reached storage for too long",
                            entry.failures,
                            now,
                            Some(&reason),
                        ));
                    }
                    Flushed::Failed
                }
            }
        };
        for alert in alerts {
            self.inner.alerts.raise(alert).await;
        }
        outcome
    }

    /// Writes a snapshot of pending writes; returns the stored version.
    async fn write_pending(
        &self,
        id: SessionId,
        header: Option<&Session>,
        messages: &[Message],
        known_version: Option<u64>,
    ) -> Result<u64, FlushError> {
        let store = &self.inner.store;
        let mut version = known_version.unwrap_or(0);
        if let Some(header) = header {
            let mut stored = None;
            let mut budget = self.conflict_budget();
            loop {
                let summary = store
                    .get_session_summary(id)
                    .await?
                    .ok_or(FlushError::Drop("the session was deleted".into()))?;
                if summary.state == SessionState::Invalidated
                    && header.state != SessionState::Invalidated
                {
                    return Err(FlushError::Drop(
                        "the session was invalidated elsewhere".into(),
                    ));
                }
                if known_version.is_some_and(|known| known != summary.version) {
                    tracing::warn!(
                        session_id = %id,
                        known_version,
                        stored_version = summary.version,
                        "another writer changed the session; the buffered update wins"
                    );
                    self.note_conflict();
                }
                match store
                    .save_session(header, Expected::Version(summary.version))
                    .await
                {
                    Ok(new_version) => {
                        stored = Some(new_version);
                        break;
                    }
                    Err(smalltalk_storage::Error::Conflict { .. }) => {
                        if !self.retry_after_conflict(&mut budget).await {
                            break;
                        }
                    }
                    Err(error) => return Err(FlushError::Retry(error)),
                }
            }
            version = stored.ok_or_else(|| {
                FlushError::Retry(smalltalk_storage::Error::Unavailable {
                    backend: "session",
                    source: "the session kept changing during the flush".into(),
                })
            })?;
        }
        if !messages.is_empty() {
            // Acknowledged messages are stored whatever the state now (an
            // expired session keeps them), except in a session invalidated
            // elsewhere (another node): its history went, and must not come
            // back. The store checks that atomically with the append.
            match store
                .append_messages(id, messages, AppendGuard::not_invalidated())
                .await
            {
                Ok(outcome) => version = outcome.version,
                Err(smalltalk_storage::Error::NotFound { .. }) => {
                    return Err(FlushError::Drop("the session was deleted".into()));
                }
                Err(smalltalk_storage::Error::NotAccepting { .. }) => {
                    return Err(FlushError::Drop(
                        "the session was invalidated elsewhere".into(),
                    ));
                }
                Err(error) => return Err(FlushError::Retry(error)),
            }
        }
        Ok(version)
    }
}

fn alert(
    severity: AlertSeverity,
    id: SessionId,
    message: &str,
    retry_count: u32,
    now: Timestamp,
    error: Option<&str>,
) -> Alert {
    let mut context = serde_json::Map::new();
    context.insert("sessionId".into(), id.to_string().into());
    context.insert("retryCount".into(), retry_count.into());
    if let Some(error) = error {
        context.insert("error".into(), error.into());
    }
    Alert {
        severity,
        source: "session".into(),
        message: message.into(),
        context,
        timestamp: now,
    }
}
