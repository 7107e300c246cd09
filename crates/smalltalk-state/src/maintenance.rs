//! Background upkeep: leases expire, the compaction point advances; and
//! the session purge port.

use async_trait::async_trait;
use smalltalk_types::{BackgroundTask, BoxError, SessionContentPurger, SessionId};

use crate::{Namespace, StateStore};

impl StateStore {
    /// Starts the upkeep: every
    /// [`lease_check_interval`](crate::StateConfig::lease_check_interval),
    /// expired leases are revoked (their keys deleted); every
    /// [`compaction_interval`](crate::StateConfig::compaction_interval),
    /// [`compact`](Self::compact) runs. A failure is logged and retried at
    /// the next tick.
    pub fn spawn_maintenance(&self) -> BackgroundTask {
        let mut task = BackgroundTask::new("state maintenance");
        let leases = self.clone();
        task.spawn(|mut stop| async move {
            let mut tick = tokio::time::interval(leases.inner.config.lease_check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.stopped() => return,
                    _ = tick.tick() => {}
                }
                match leases.inner.store.expire_leases().await {
                    Ok(0) => {}
                    Ok(expired) => tracing::debug!(expired, "revoked expired leases"),
                    Err(error) => tracing::warn!(%error, "expiring leases failed; retrying"),
                }
            }
        });
        let compaction = self.clone();
        task.spawn(|mut stop| async move {
            let mut tick = tokio::time::interval(compaction.inner.config.compaction_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.stopped() => return,
                    _ = tick.tick() => {}
                }
                // Compaction scans history: on a blocking thread, so a
                // SQLite write leader running it is not a runtime worker.
                let handle = tokio::runtime::Handle::current();
                let state = compaction.clone();
                let outcome = tokio::task::spawn_blocking(move || handle.block_on(state.compact()))
                    .await
                    .unwrap_or_else(|join| {
                        Err(crate::Error::Storage(smalltalk_storage::Error::Backend {
                            backend: "state",
                            source: Box::new(join),
                        }))
                    });
                match outcome {
                    Ok(outcome) if outcome.removed > 0 => tracing::debug!(
                        compact_revision = outcome.compact_revision,
                        removed = outcome.removed,
                        "compacted state history"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "compacting state failed; retrying"),
                }
            }
        });
        task
    }
}

/// Purges a session's namespace (SPEC "Privacy and retention"): the
/// session manager calls it when the session is invalidated or deleted.
#[async_trait]
impl SessionContentPurger for StateStore {
    async fn purge_session(&self, session: SessionId) -> Result<(), BoxError> {
        self.purge(&Namespace::session(session))
            .await
            .map(drop)
            .map_err(|error| Box::new(error) as BoxError)
    }
}
