//! [`Watch`]: the changes under a prefix, revision by revision (FR-025).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::stream::BoxStream;
use smalltalk_storage::versioned::KeyPrefix;
use smalltalk_types::TryIntoId;
use tokio::time::Instant;

use crate::{Error, Result, StateChange, StateStore};

/// What a [`Watch`] yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// One revision's changes under the prefix, whole (never split), in key
    /// order. Revisions come in order, each once.
    Changes {
        /// The revision.
        revision: u64,
        /// What it did to keys under the prefix.
        changes: Vec<StateChange>,
    },
    /// Nothing under the prefix changed up to `revision`: sent after
    /// [`StateConfig::progress_interval`](crate::StateConfig::progress_interval)
    /// of quiet, so a watcher knows it is caught up and alive.
    Progress {
        /// Every revision up to here was looked at.
        revision: u64,
    },
}

/// Versions read per storage call (whole revisions: up to 127 more).
const PAGE: u32 = 128;

/// A stream of [`WatchEvent`]s from a revision on, made by
/// [`StateStore::watch`]. It never skips or splits a revision. If the
/// revision it starts from (or has reached) is compacted away, it yields
/// [`Error::Compacted`] and ends; it also ends when the store is closed.
/// Another storage error is yielded as it comes, and the watch goes on from
/// where it was after a pause of
/// [`sync_interval`](crate::StateConfig::sync_interval).
pub struct Watch {
    inner: BoxStream<'static, Result<WatchEvent>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct Cursor {
    store: StateStore,
    prefix: KeyPrefix,
    /// Only this key (a watch of one key: its prefix also matches longer
    /// keys).
    exact: Option<smalltalk_types::StorageKey>,
    /// Every revision up to here was delivered or looked at.
    after: u64,
    /// Where to start, until the first read checks it.
    start: Option<u64>,
    pending: VecDeque<WatchEvent>,
    /// The newest revision a wait returned: committed, so it stands for a
    /// read of the head.
    known_head: Option<u64>,
    quiet_since: Instant,
    /// The last poll yielded an error: pause before reading again.
    retry_after_error: bool,
    done: bool,
}

impl Cursor {
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        if self.done {
            return None;
        }
        if std::mem::take(&mut self.retry_after_error) {
            tokio::time::sleep(self.store.inner.config.sync_interval).await;
        }
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            match self.fill().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    match &error {
                        // Gone for good: the watch ends.
                        Error::Compacted { .. }
                        | Error::Storage(smalltalk_storage::Error::Closed) => {
                            self.done = true;
                        }
                        // Yielded, then retried after a pause.
                        _ => self.retry_after_error = true,
                    }
                    return Some(Err(error));
                }
            }
            let config = &self.store.inner.config;
            let quiet = self.quiet_since.elapsed();
            if quiet >= config.progress_interval {
                self.quiet_since = Instant::now();
                return Some(Ok(WatchEvent::Progress {
                    revision: self.after,
                }));
            }
            let wait = config.sync_interval.min(config.progress_interval - quiet);
            if let Err(error) = self
                .store
                .inner
                .store
                .wait_for_revision(self.after, wait)
                .await
            {
                return Some(Err(error.into()));
            }
        }
    }

    /// Reads what follows `after`; `true` if something was queued.
    async fn fill(&mut self) -> Result<bool> {
        let store = &self.store.inner.store;
        if let Some(start) = self.start {
            let bounds = store.revision_bounds().await?;
            if start < bounds.compact_revision {
                self.done = true;
                return Err(Error::Compacted {
                    compact_revision: bounds.compact_revision,
                });
            }
            self.after = start.saturating_sub(1);
            self.start = None;
        }
        let mut page = store.read_revisions(&self.prefix, self.after, PAGE).await?;
        if page.is_empty() {
            // Nothing under the prefix follows `after` up to some head read
            // *before* the rows were: move `after` there, so unrelated
            // revisions do not wake the watch again. A head the last wait
            // returned was read before; otherwise read one, then the rows
            // again.
            let head = match self.known_head.take() {
                Some(head) => head,
                None => {
                    let head = store.revision_bounds().await?.revision;
                    page = store.read_revisions(&self.prefix, self.after, PAGE).await?;
                    head
                }
            };
            if page.is_empty() {
                self.after = self.after.max(head);
                return Ok(false);
            }
        }
        self.known_head = None;
        let now = smalltalk_types::Timestamp::now();
        let mut current: Option<(u64, Vec<StateChange>)> = None;
        for version in page {
            if self
                .exact
                .as_ref()
                .is_some_and(|exact| *exact != version.key)
            {
                self.after = self.after.max(version.revision);
                continue;
            }
            let lag = now.duration_since(version.timestamp);
            metrics::histogram!("smalltalk_state_watch_lag_seconds").record(lag.as_secs_f64());
            let revision = version.revision;
            let change = StateChange::from_version(version);
            match &mut current {
                Some((at, changes)) if *at == revision => changes.push(change),
                _ => {
                    if let Some((revision, changes)) = current.take() {
                        self.pending
                            .push_back(WatchEvent::Changes { revision, changes });
                    }
                    current = Some((revision, vec![change]));
                }
            }
        }
        let Some((revision, changes)) = current else {
            // Only other keys (a one-key watch): `after` moved past them.
            return Ok(false);
        };
        self.pending
            .push_back(WatchEvent::Changes { revision, changes });
        self.after = revision;
        self.quiet_since = Instant::now();
        Ok(true)
    }
}

impl StateStore {
    /// Watches the keys under `prefix` from `from_revision` on (inclusive;
    /// `None`: what is written after this call). In process, a write wakes
    /// the watch at once; other processes' writes are seen at once on
    /// PostgreSQL (LISTEN/NOTIFY) and within
    /// [`StateConfig::sync_interval`](crate::StateConfig::sync_interval) on
    /// SQLite. A `from_revision` in the future waits for it; one below the
    /// compaction point yields [`Error::Compacted`].
    #[tracing::instrument(name = "state.watch", skip_all, err)]
    pub async fn watch(
        &self,
        prefix: impl TryIntoId<KeyPrefix>,
        from_revision: Option<u64>,
    ) -> Result<Watch> {
        let prefix = prefix.try_into_id()?;
        self.watch_from(prefix, None, from_revision).await
    }

    /// Watches one key (not the longer keys its name is a prefix of), as
    /// [`watch`](Self::watch).
    #[tracing::instrument(name = "state.watch_key", skip_all, err)]
    pub async fn watch_key(
        &self,
        key: impl TryIntoId<smalltalk_types::StorageKey>,
        from_revision: Option<u64>,
    ) -> Result<Watch> {
        let key = key.try_into_id()?;
        self.watch_from(KeyPrefix::from(&key), Some(key), from_revision)
            .await
    }

    async fn watch_from(
        &self,
        prefix: KeyPrefix,
        exact: Option<smalltalk_types::StorageKey>,
        from_revision: Option<u64>,
    ) -> Result<Watch> {
        let from_revision = match from_revision {
            Some(revision) => revision,
            None => self.inner.store.revision_bounds().await?.revision + 1,
        };
        let cursor = Cursor {
            store: self.clone(),
            prefix,
            exact,
            after: 0,
            start: Some(from_revision),
            pending: VecDeque::new(),
            known_head: None,
            quiet_since: Instant::now(),
            retry_after_error: false,
            done: false,
        };
        let stream = futures_util::stream::unfold(cursor, |mut cursor| async move {
            let item = cursor.next().await?;
            Some((item, cursor))
        });
        Ok(Watch {
            inner: Box::pin(stream),
        })
    }
}
