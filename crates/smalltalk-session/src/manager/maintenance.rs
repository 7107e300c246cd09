//! Maintenance: the idle sweep, expiry cleanup (with `keep-latest`), the
//! retried deletion of invalidated content, and the background task.

use super::*;

/// What one maintenance run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceReport {
    /// Sessions moved to `idle` after inactivity.
    pub idled: usize,
    /// Sessions deleted (expired or invalidated).
    pub deleted: u64,
}

impl SessionManager {
    /// Applies the TTL strategy to every session past its expiry (deleted,
    /// or reduced to its latest state), and deletes sessions marked
    /// `expired` by hand; returns how many sessions it touched (FR-004).
    #[tracing::instrument(skip_all, fields(count), err)]
    pub async fn cleanup_expired(&self) -> Result<u64> {
        let now = self.inner.clock.now();
        let store = &self.inner.store;
        let mut cleaned = match self.inner.config.ttl_strategy {
            // With content purgers, page by page: each session's purge
            // goes before it.
            TtlStrategy::Delete if !self.inner.purgers.is_empty() => {
                self.delete_matching(SessionFilter {
                    expired_at: Some(now),
                    ..Default::default()
                })
                .await?
            }
            TtlStrategy::Delete => self.note_failure(store.delete_expired_sessions(now).await)?,
            TtlStrategy::KeepLatest => self.keep_latest_of_expired(now).await?,
        };
        // Sessions marked `expired` by hand go too (keep-latest ones stay).
        if self.inner.config.ttl_strategy == TtlStrategy::Delete {
            let by_hand = SessionFilter {
                state: Some(SessionState::Expired),
                ..Default::default()
            };
            cleaned += self.delete_matching(by_hand).await?;
        }
        for id in self.expired_pending(now) {
            self.discard_pending(id);
        }
        {
            let mut pool = self.pool();
            pool.retain(|_, entry| entry.expires_at > now);
            metrics::gauge!("smalltalk_sessions_active").set(pool.len() as f64);
        }
        tracing::Span::current().record("count", cleaned);
        tracing::info!(cleaned, "expired sessions cleaned up");
        Ok(cleaned)
    }

    /// Ids of the first page (500) of sessions matching `filter`.
    pub(super) async fn page_ids(&self, filter: &SessionFilter) -> Result<Vec<SessionId>> {
        let page = SessionFilter {
            limit: Some(500),
            ..filter.clone()
        };
        Ok(self
            .inner
            .store
            .list_sessions(&page)
            .await?
            .iter()
            .map(|summary| summary.id)
            .collect())
    }

    /// Deletes every session matching `filter`, a page at a time; returns
    /// how many.
    pub(super) async fn delete_matching(&self, filter: SessionFilter) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let ids = self.page_ids(&filter).await?;
            if ids.is_empty() {
                return Ok(deleted);
            }
            // What purgers keep goes first; a session whose purge fails
            // stays for the next run.
            let mut purged = Vec::with_capacity(ids.len());
            for id in ids {
                if self.purge_before(id).await.is_ok() {
                    purged.push(id);
                }
            }
            if purged.is_empty() {
                return Ok(deleted);
            }
            let round = self.note_failure(self.inner.store.delete_sessions(&purged).await)?;
            deleted += round;
            if round == 0 {
                // Listed but not deletable by us: stop rather than spin.
                return Ok(deleted);
            }
        }
    }

    /// `keep_latest`: expired sessions lose their history and are marked
    /// `expired`; expired tombstones (invalidated) are deleted.
    pub(super) async fn keep_latest_of_expired(&self, now: Timestamp) -> Result<u64> {
        let store = &self.inner.store;
        let mut cleaned = 0;
        for state in [
            SessionState::Active,
            SessionState::Idle,
            SessionState::Invalidated,
        ] {
            let filter = SessionFilter {
                state: Some(state),
                expired_at: Some(now),
                ..Default::default()
            };
            if state == SessionState::Invalidated {
                cleaned += self.delete_matching(filter).await?;
                continue;
            }
            loop {
                let ids = self.page_ids(&filter).await?;
                if ids.is_empty() {
                    break;
                }
                let before = cleaned;
                for id in ids {
                    // What purgers keep goes with the history; if that
                    // fails, the session waits for the next run.
                    if self.purge_before(id).await.is_err() {
                        continue;
                    }
                    self.note_failure(store.delete_history(id).await)?;
                    let Some(mut header) = store.get_session_header(id).await? else {
                        continue;
                    };
                    let loaded = header.version;
                    header.state = SessionState::Expired;
                    match store.save_session(&header, Expected::Version(loaded)).await {
                        Ok(_) => cleaned += 1,
                        // Changed meanwhile: the next run sees it again.
                        Err(smalltalk_storage::Error::Conflict { .. }) => {}
                        Err(other) => return self.note_failure(Err(other)),
                    }
                }
                if cleaned == before {
                    break;
                }
            }
        }
        Ok(cleaned)
    }

    /// Deletes `id`'s content: its history (invalidation) and what the
    /// content purgers keep of it; on failure queues it for maintenance to
    /// retry.
    pub(super) async fn purge_history(&self, id: SessionId) {
        let history = match self.inner.store.delete_history(id).await {
            Ok(_) | Err(smalltalk_storage::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(Box::new(error) as smalltalk_types::BoxError),
        };
        let outcome = match history {
            Ok(()) => self.run_purgers(id).await,
            Err(error) => Err(error),
        };
        self.settle_purge(id, outcome).await;
    }

    /// After a session is deleted: what the content purgers keep of it (its
    /// history went with it), queued for retry on failure.
    pub(super) async fn purge_others(&self, id: SessionId) {
        if self.inner.purgers.is_empty() {
            return;
        }
        let outcome = self.run_purgers(id).await;
        self.settle_purge(id, outcome).await;
    }

    /// Runs the content purgers before a session's content goes; their
    /// failure stops the caller ([`Error::PurgeFailed`]), so nothing is
    /// left behind a crash.
    pub(super) async fn purge_before(&self, id: SessionId) -> Result<()> {
        self.run_purgers(id).await.map_err(|source| {
            tracing::warn!(session_id = %id, error = %source, "purging a session's content failed");
            Error::PurgeFailed { id, source }
        })
    }

    async fn run_purgers(&self, id: SessionId) -> Result<(), smalltalk_types::BoxError> {
        for purger in &self.inner.purgers {
            purger.purge_session(id).await?;
        }
        Ok(())
    }

    async fn settle_purge(&self, id: SessionId, outcome: Result<(), smalltalk_types::BoxError>) {
        match outcome {
            Ok(()) => {
                self.purges().remove(&id);
            }
            Err(error) => {
                let failures = {
                    let mut purges = self.purges();
                    let failures = purges.entry(id).or_insert(0);
                    *failures += 1;
                    *failures
                };
                self.inner.save_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("smalltalk_session_save_failures_total").increment(1);
                tracing::error!(session_id = %id, %error, retry_count = failures, "deleting a session's content failed; maintenance retries");
                if failures == self.inner.config.save_retry.alert_after {
                    let mut context = Map::new();
                    context.insert("sessionId".into(), id.to_string().into());
                    context.insert("retryCount".into(), failures.into());
                    context.insert("error".into(), error.to_string().into());
                    self.inner
                        .alerts
                        .raise(Alert {
                            severity: AlertSeverity::Error,
                            source: "session".into(),
                            message: "a session's content could not be deleted".into(),
                            context,
                            timestamp: self.inner.clock.now(),
                        })
                        .await;
                }
            }
        }
    }

    pub(super) fn purges(&self) -> MutexGuard<'_, HashMap<SessionId, u32>> {
        self.inner
            .purges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One maintenance pass: sessions of the pool idle for `idle_after`
    /// become `idle` (leaving the pool), invalidated sessions whose history
    /// could not be deleted are retried, then
    /// [`cleanup_expired`](Self::cleanup_expired) runs.
    #[tracing::instrument(skip_all, err)]
    pub async fn run_maintenance(&self) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        if let Some(idle_after) = self.inner.config.idle_after {
            let cutoff = self.inner.clock.now().saturating_sub(idle_after);
            let idle: Vec<SessionId> = self
                .pool()
                .iter()
                .filter(|(_, entry)| entry.last_activity <= cutoff)
                .map(|(id, _)| *id)
                .collect();
            for id in idle {
                let outcome = self
                    .update(id, |session| {
                        if session.state == SessionState::Active {
                            session.state = SessionState::Idle;
                        }
                    })
                    .await;
                match outcome {
                    Ok(_) => report.idled += 1,
                    // Gone, invalidated or expired meanwhile: just let go.
                    Err(
                        Error::NotFound { .. } | Error::Invalidated { .. } | Error::Expired { .. },
                    ) => self.untrack(id),
                    Err(error) => return Err(error),
                }
            }
        }
        let queued: Vec<SessionId> = self.purges().keys().copied().collect();
        for id in queued {
            self.purge_history(id).await;
        }
        report.deleted = self.cleanup_expired().await?;
        Ok(report)
    }

    /// Runs [`run_maintenance`](Self::run_maintenance) every
    /// `maintenance_interval` on the current tokio runtime until the
    /// returned task is dropped (at once) or shut down (after the run under
    /// way); in `async` durability also flushes due
    /// writes every `flush_interval`. A failed run is logged and retried at
    /// the next tick.
    pub fn spawn_maintenance(&self) -> BackgroundTask {
        let mut task = BackgroundTask::new("session maintenance");
        let manager = self.clone();
        let period = self.inner.config.maintenance_interval;
        // Anchored now, not when the task first gets to run.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        task.spawn(|mut stop| async move {
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.stopped() => return,
                }
                if let Err(error) = manager.run_maintenance().await {
                    tracing::error!(%error, "session maintenance failed; retrying at the next tick");
                }
            }
        });
        if let Durability::Async { flush_interval } = self.inner.config.durability {
            let manager = self.clone();
            let mut flushes = tokio::time::interval_at(
                tokio::time::Instant::now() + flush_interval,
                flush_interval,
            );
            flushes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            task.spawn(|mut stop| async move {
                loop {
                    tokio::select! {
                        _ = flushes.tick() => {}
                        () = stop.stopped() => return,
                    }
                    // Failures are kept, retried on their schedule and
                    // alerted inside flush_due.
                    let _ = manager.flush_due().await;
                }
            });
        }
        task
    }
}
