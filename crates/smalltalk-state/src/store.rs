//! [`StateStore`]: the operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use smalltalk_storage::VersionedStore;
use smalltalk_storage::versioned::{
    CompactOutcome, Compare, KeyPrefix, KeyVersion, Lease, LeaseId, OpResult, PurgeOutcome,
    RangeRequest, RevisionBounds, Txn, TxnOp, TxnResponse, VersionedStats,
};
use smalltalk_types::{AgentId, Clock, StorageKey, SystemClock, TryIntoId};
use tokio::time::Instant;

use crate::policy::{self, ConflictPolicy, Merged, Policies, Resolution};
use crate::{
    Error, Expect, History, Namespace, Page, PutOutcome, Resolved, Result, StateChange,
    StateConfig, StateEntry,
};

/// Versioned, externalized state (FR-022 to FR-026) over any
/// [`VersionedStore`]. Cheap to clone; clones share everything but their
/// author (see [`as_author`](Self::as_author)). See the
/// [crate docs](crate) for an example.
#[derive(Clone)]
pub struct StateStore {
    pub(crate) inner: Arc<Inner>,
    author: Option<AgentId>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn VersionedStore>,
    pub(crate) config: StateConfig,
    policies: Policies,
    pub(crate) clock: Arc<dyn Clock>,
    conflicts: AtomicU64,
    overwrites: AtomicU64,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("store", &self.inner.store)
            .field("author", &self.author)
            .finish_non_exhaustive()
    }
}

/// Builds a [`StateStore`]; see [`StateStore::builder`].
#[derive(Debug)]
pub struct StateStoreBuilder {
    store: Arc<dyn VersionedStore>,
    config: StateConfig,
    policies: Policies,
    clock: Arc<dyn Clock>,
}

impl StateStoreBuilder {
    /// The configuration (validated by [`build`](Self::build)).
    pub fn config(mut self, config: StateConfig) -> Self {
        self.config = config;
        self
    }

    /// The conflict policies (default: every key rejects).
    pub fn policies(mut self, policies: Policies) -> Self {
        self.policies = policies;
        self
    }

    /// The clock of maintenance (compaction by age); tests use a
    /// `ManualClock`. Versions are timestamped by the store's own clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the configuration and builds the store.
    pub fn build(self) -> Result<StateStore> {
        self.config.validate()?;
        let author = self.config.author.clone();
        Ok(StateStore {
            inner: Arc::new(Inner {
                store: self.store,
                config: self.config,
                policies: self.policies,
                clock: self.clock,
                conflicts: AtomicU64::new(0),
                overwrites: AtomicU64::new(0),
            }),
            author,
        })
    }
}

/// Counters of a [`StateStore`] and what its storage holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateStats {
    /// Conditional writes (and update attempts) that found a newer
    /// version, whatever was done about it (`smalltalk_state_conflicts_total`, by
    /// `policy`; `update` for updates and patches).
    pub conflicts: u64,
    /// Of those, the ones last-write-wins overwrote.
    pub overwrites: u64,
    /// Keys, versions, leases and revisions in storage.
    pub storage: VersionedStats,
}

/// What [`StateStore::list`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// Keys strictly after this one (a page's `next`).
    pub after: Option<StorageKey>,
    /// At most this many entries, 1 to 10,000 (default 100).
    pub limit: u32,
    /// At this revision (`None`, the default: the latest).
    pub revision: Option<u64>,
}

impl Default for ListOptions {
    fn default() -> Self {
        Self {
            after: None,
            limit: 100,
            revision: None,
        }
    }
}

/// The longest history one call returns.
pub const MAX_HISTORY_DEPTH: u32 = smalltalk_storage::versioned::MAX_READ_LIMIT;

impl StateStore {
    /// Starts building a state store over `store`.
    pub fn builder(store: Arc<dyn VersionedStore>) -> StateStoreBuilder {
        StateStoreBuilder {
            store,
            config: StateConfig::default(),
            policies: Policies::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// A store with the defaults over `store`.
    pub fn new(store: Arc<dyn VersionedStore>) -> Self {
        Self::builder(store)
            .build()
            .expect("the default configuration is valid")
    }

    /// A handle recording `author` on its writes (sharing everything else
    /// with this one).
    pub fn as_author(&self, author: impl TryIntoId<AgentId>) -> Result<Self> {
        Ok(Self {
            inner: Arc::clone(&self.inner),
            author: Some(author.try_into_id()?),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StateConfig {
        &self.inner.config
    }

    /// The storage underneath.
    pub fn versioned_store(&self) -> &Arc<dyn VersionedStore> {
        &self.inner.store
    }

    /// `key`'s latest value, or `None` if absent.
    #[tracing::instrument(name = "state.get", skip_all, fields(key), err)]
    pub async fn get(&self, key: impl TryIntoId<StorageKey>) -> Result<Option<StateEntry>> {
        let key = record_key(key)?;
        self.read(&key, None).await
    }

    /// `key`'s value as it was at `revision`, or `None` if it was absent
    /// then. Errors: [`Error::Compacted`] below the compaction point (if that
    /// version is gone), [`Error::FutureRevision`], [`Error::Purged`].
    #[tracing::instrument(name = "state.get_at", skip_all, fields(key, revision), err)]
    pub async fn get_at(
        &self,
        key: impl TryIntoId<StorageKey>,
        revision: u64,
    ) -> Result<Option<StateEntry>> {
        let key = record_key(key)?;
        self.read(&key, Some(revision)).await
    }

    async fn read(&self, key: &StorageKey, at: Option<u64>) -> Result<Option<StateEntry>> {
        match self.inner.store.get_version(key, at).await? {
            Some(version) => StateEntry::from_version(version),
            None => Ok(None),
        }
    }

    /// Writes `value` whatever is stored (a blind write: no conflict is
    /// possible).
    #[tracing::instrument(name = "state.put", skip_all, fields(key), err)]
    pub async fn put(&self, key: impl TryIntoId<StorageKey>, value: Value) -> Result<PutOutcome> {
        let key = record_key(key)?;
        self.write(&key, value, Expect::Any, None).await
    }

    /// Writes `value` if the key is still as `expect` says (the version the
    /// writer read); otherwise the key's [`ConflictPolicy`] decides: reject
    /// (the default, [`Error::Conflict`]), last-write-wins, merge, or a
    /// custom resolver.
    #[tracing::instrument(name = "state.put_if", skip_all, fields(key, expect = %expect), err)]
    pub async fn put_if(
        &self,
        key: impl TryIntoId<StorageKey>,
        value: Value,
        expect: Expect,
    ) -> Result<PutOutcome> {
        let key = record_key(key)?;
        self.write(&key, value, expect, None).await
    }

    /// Writes `value` attached to `lease`: it is deleted when the lease
    /// expires or is revoked.
    #[tracing::instrument(name = "state.put_with_lease", skip_all, fields(key, lease = %lease), err)]
    pub async fn put_with_lease(
        &self,
        key: impl TryIntoId<StorageKey>,
        value: Value,
        lease: LeaseId,
    ) -> Result<PutOutcome> {
        let key = record_key(key)?;
        self.write(&key, value, Expect::Any, Some(lease)).await
    }

    /// Deletes `key` (one tombstone revision); `false` if it was absent.
    #[tracing::instrument(name = "state.delete", skip_all, fields(key), err)]
    pub async fn delete(&self, key: impl TryIntoId<StorageKey>) -> Result<bool> {
        let key = record_key(key)?;
        let response = self
            .run(Txn {
                success: vec![TxnOp::Delete { key }],
                author: self.author.clone(),
                ..Txn::default()
            })
            .await?;
        Ok(matches!(
            response.results.first(),
            Some(OpResult::Delete { deleted: true })
        ))
    }

    /// Reads `key`, computes its next value with `change` and writes it if
    /// nothing changed meanwhile; on a newer version, runs `change` again
    /// on it, until [`StateConfig::update_timeout`]
    /// ([`Error::Contention`]). `change` gets `None` for an absent key.
    #[tracing::instrument(name = "state.update", skip_all, fields(key), err)]
    pub async fn update<F>(
        &self,
        key: impl TryIntoId<StorageKey>,
        mut change: F,
    ) -> Result<StateEntry>
    where
        F: FnMut(Option<&Value>) -> Value + Send,
    {
        let key = record_key(key)?;
        self.update_with(&key, |current| Ok::<_, Error>(change(current)))
            .await
    }

    /// [`update`](Self::update) with a closure that may fail: its error
    /// ends the update, nothing written.
    #[tracing::instrument(name = "state.try_update", skip_all, fields(key))]
    pub async fn try_update<F, E>(
        &self,
        key: impl TryIntoId<StorageKey>,
        change: F,
    ) -> Result<StateEntry, E>
    where
        F: FnMut(Option<&Value>) -> Result<Value, E> + Send,
        E: From<Error>,
    {
        let key = record_key(key).map_err(E::from)?;
        self.update_with(&key, change).await
    }

    async fn update_with<F, E>(&self, key: &StorageKey, mut change: F) -> Result<StateEntry, E>
    where
        F: FnMut(Option<&Value>) -> Result<Value, E> + Send,
        E: From<Error>,
    {
        let mut retry = Retry::new(self, key);
        loop {
            let current = self.read(key, None).await?;
            let value = change(current.as_ref().map(|entry| &entry.value))?;
            let bytes = self.encode(key, &value)?;
            let response = self
                .run(Txn {
                    compare: vec![compare_for(key, Expect::read(current.as_ref()))],
                    success: vec![TxnOp::Put {
                        key: key.clone(),
                        value: bytes,
                        lease: None,
                    }],
                    failure: Vec::new(),
                    author: self.author.clone(),
                })
                .await?;
            if response.succeeded {
                return Ok(self.written(key, value, None, &response));
            }
            self.count_conflict("update");
            retry.wait().await?;
        }
    }

    /// Applies an RFC 7396 merge patch to `key`'s value (an absent key is
    /// patched from `null`), as an [`update`](Self::update).
    #[tracing::instrument(name = "state.patch", skip_all, fields(key), err)]
    pub async fn patch(
        &self,
        key: impl TryIntoId<StorageKey>,
        merge_patch: &Value,
    ) -> Result<StateEntry> {
        let key = record_key(key)?;
        self.update_with(&key, |current| {
            let mut document = current.cloned().unwrap_or(Value::Null);
            json_patch::merge(&mut document, merge_patch);
            Ok::<_, Error>(document)
        })
        .await
    }

    /// Up to `depth` versions of `key`, newest first (deletes and purged
    /// versions included). A depth of 0 or over [`MAX_HISTORY_DEPTH`] is
    /// refused. [`History::compacted_below`] says where a compacted history
    /// starts.
    #[tracing::instrument(name = "state.history", skip_all, fields(key, depth), err)]
    pub async fn history(&self, key: impl TryIntoId<StorageKey>, depth: u32) -> Result<History> {
        let key = record_key(key)?;
        self.history_page(&key, None, depth).await
    }

    /// [`history`](Self::history) from before revision `before` (the
    /// oldest revision of the previous page): the next page, older.
    #[tracing::instrument(
        name = "state.history_before",
        skip_all,
        fields(key, before, depth),
        err
    )]
    pub async fn history_before(
        &self,
        key: impl TryIntoId<StorageKey>,
        before: u64,
        depth: u32,
    ) -> Result<History> {
        let key = record_key(key)?;
        self.history_page(&key, Some(before), depth).await
    }

    async fn history_page(
        &self,
        key: &StorageKey,
        before: Option<u64>,
        depth: u32,
    ) -> Result<History> {
        let history = self.inner.store.key_history(key, before, depth).await?;
        Ok(History {
            changes: history
                .versions
                .into_iter()
                .map(StateChange::from_version)
                .collect(),
            compacted_below: history.compacted_below,
        })
    }

    /// What changed in `key` from revision `from` to revision `to`, as an
    /// RFC 6902 JSON Patch (an absent key counts as `null`): applying it to
    /// the value at `from` gives the value at `to`.
    #[tracing::instrument(name = "state.diff", skip_all, fields(key, from, to), err)]
    pub async fn diff(
        &self,
        key: impl TryIntoId<StorageKey>,
        from: u64,
        to: u64,
    ) -> Result<json_patch::Patch> {
        let key = record_key(key)?;
        let before = self.read(&key, Some(from)).await?;
        let after = self.read(&key, Some(to)).await?;
        let value = |entry: Option<StateEntry>| entry.map_or(Value::Null, |entry| entry.value);
        Ok(json_patch::diff(&value(before), &value(after)))
    }

    /// A page of keys under `prefix`, in key order (see [`ListOptions`]:
    /// the continuation, the page size, the revision). Below the compaction
    /// point: [`Error::Compacted`] (a listing needs every key's version at
    /// that revision; [`get_at`](Self::get_at) answers for a key whose
    /// versions are still kept).
    #[tracing::instrument(name = "state.list", skip_all, fields(prefix, limit = options.limit), err)]
    pub async fn list(
        &self,
        prefix: impl TryIntoId<KeyPrefix>,
        options: &ListOptions,
    ) -> Result<Page> {
        let prefix = prefix.try_into_id()?;
        tracing::Span::current().record("prefix", prefix.as_str());
        let page = self
            .inner
            .store
            .range(&RangeRequest {
                prefix,
                at: options.revision,
                after_key: options.after.clone(),
                limit: options.limit,
            })
            .await?;
        let mut entries = Vec::with_capacity(page.items.len());
        for version in page.items {
            entries.extend(StateEntry::from_version(version)?);
        }
        Ok(Page {
            revision: page.revision,
            entries,
            next: page.next,
        })
    }

    /// The newest revision and the compaction point.
    #[tracing::instrument(name = "state.revision", skip_all, err)]
    pub async fn revision(&self) -> Result<RevisionBounds> {
        Ok(self.inner.store.revision_bounds().await?)
    }

    /// Grants a lease living `ttl` (1 s to 24 h) unless kept alive.
    #[tracing::instrument(name = "state.grant_lease", skip_all, err)]
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        Ok(self.inner.store.grant_lease(ttl).await?)
    }

    /// Renews a lease for its TTL.
    #[tracing::instrument(name = "state.keep_alive", skip_all, fields(lease = %lease), err)]
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Lease> {
        Ok(self.inner.store.keep_lease_alive(lease).await?)
    }

    /// Revokes a lease, deleting its keys in one revision.
    #[tracing::instrument(name = "state.revoke_lease", skip_all, fields(lease = %lease), err)]
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<Option<u64>> {
        let revision = self
            .inner
            .store
            .revoke_lease(lease, self.author.as_ref())
            .await?;
        record_revision(revision);
        Ok(revision)
    }

    /// Deletes every key of `namespace`, and erases the values of their
    /// history (their revisions stay, as purged versions).
    #[tracing::instrument(name = "state.purge", skip_all, fields(prefix = %namespace.prefix()), err)]
    pub async fn purge(&self, namespace: &Namespace) -> Result<PurgeOutcome> {
        let outcome = self
            .inner
            .store
            .purge_prefix(namespace.prefix(), self.author.as_ref())
            .await?;
        record_revision(outcome.revision);
        Ok(outcome)
    }

    /// Compacts now, by the configuration: the point moves to the newest
    /// revision older than [`StateConfig::retention`], or to keep at most
    /// [`StateConfig::max_revisions`], whichever is further.
    #[tracing::instrument(name = "state.compact", skip_all, err)]
    pub async fn compact(&self) -> Result<CompactOutcome> {
        let config = &self.inner.config;
        let bounds = self.inner.store.revision_bounds().await?;
        let by_age = self
            .inner
            .store
            .revision_before(self.inner.clock.now().saturating_sub(config.retention))
            .await?
            .unwrap_or(0);
        let by_count = config
            .max_revisions
            .map_or(0, |max| bounds.revision.saturating_sub(max));
        let point = by_age.max(by_count);
        if point <= bounds.compact_revision {
            // Nothing new below the point: no write, no lock.
            return Ok(CompactOutcome::unchanged(bounds.compact_revision));
        }
        Ok(self
            .inner
            .store
            .compact(point, config.keep_versions)
            .await?)
    }

    /// Moves the compaction point to `revision` (never back).
    #[tracing::instrument(name = "state.compact_to", skip_all, fields(revision), err)]
    pub async fn compact_to(&self, revision: u64) -> Result<CompactOutcome> {
        Ok(self
            .inner
            .store
            .compact(revision, self.inner.config.keep_versions)
            .await?)
    }

    /// Counters and what storage holds.
    #[tracing::instrument(name = "state.stats", skip_all, err)]
    pub async fn stats(&self) -> Result<StateStats> {
        Ok(StateStats {
            conflicts: self.inner.conflicts.load(Ordering::Relaxed),
            overwrites: self.inner.overwrites.load(Ordering::Relaxed),
            storage: self.inner.store.versioned_stats().await?,
        })
    }

    /// Encodes a value, checking depth and size.
    pub(crate) fn encode(&self, key: &StorageKey, value: &Value) -> Result<Vec<u8>> {
        smalltalk_types::format::check_depth("state value", value)?;
        let bytes = serde_json::to_vec(value).map_err(smalltalk_types::Error::Encoding)?;
        let limit = self.inner.config.max_value_bytes;
        if bytes.len() > limit {
            return Err(Error::ValueTooLarge {
                key: key.clone(),
                size: bytes.len(),
                limit,
            });
        }
        Ok(bytes)
    }

    pub(crate) fn author(&self) -> Option<&AgentId> {
        self.author.as_ref()
    }

    /// Runs a transaction and records the revision gauge.
    pub(crate) async fn run(&self, txn: Txn) -> Result<TxnResponse> {
        let response = self.inner.store.txn(&txn).await?;
        if response.wrote {
            record_revision(Some(response.revision));
        }
        Ok(response)
    }

    /// The entry a successful single put wrote.
    fn written(
        &self,
        key: &StorageKey,
        value: Value,
        lease: Option<LeaseId>,
        response: &TxnResponse,
    ) -> StateEntry {
        let (version, create_revision) = response
            .results
            .iter()
            .find_map(|result| match result {
                OpResult::Put {
                    version,
                    create_revision,
                    ..
                } => Some((*version, *create_revision)),
                _ => None,
            })
            .unwrap_or((0, 0));
        StateEntry {
            key: key.clone(),
            value,
            revision: response.revision,
            create_revision,
            version,
            lease,
            author: self.author.clone(),
            timestamp: response.timestamp,
        }
    }

    /// A conditional write, through the key's policy on a conflict.
    async fn write(
        &self,
        key: &StorageKey,
        ours: Value,
        expect: Expect,
        lease: Option<LeaseId>,
    ) -> Result<PutOutcome> {
        let policy = self.inner.policies.for_key(key).clone();
        let mut value = ours.clone();
        let mut condition = expect;
        let mut resolved = None;
        let mut base: Option<Option<Value>> = None;
        let mut retry = Retry::new(self, key);
        loop {
            let bytes = self.encode(key, &value)?;
            let put = TxnOp::Put {
                key: key.clone(),
                value: bytes,
                lease,
            };
            // Last write wins in one round trip: the failure branch writes
            // too, and says what it overwrote.
            let failure = match policy {
                ConflictPolicy::LastWriteWins => put.clone(),
                _ => TxnOp::Get { key: key.clone() },
            };
            let response = self
                .run(Txn {
                    compare: (condition != Expect::Any)
                        .then(|| compare_for(key, condition))
                        .into_iter()
                        .collect(),
                    success: vec![put],
                    failure: vec![failure],
                    author: self.author.clone(),
                })
                .await?;
            if response.succeeded {
                return Ok(PutOutcome {
                    entry: self.written(key, value, lease, &response),
                    resolved,
                });
            }
            self.count_conflict(policy.name());
            if let ConflictPolicy::LastWriteWins = policy {
                self.inner.overwrites.fetch_add(1, Ordering::Relaxed);
                let previous = response.results.iter().find_map(|result| match result {
                    OpResult::Put { previous, .. } => Some(*previous),
                    _ => None,
                });
                tracing::warn!(
                    key = %key,
                    expected = %expect,
                    overwritten_version = ?previous.flatten(),
                    revision = response.revision,
                    "last write wins: overwrote a newer version"
                );
                return Ok(PutOutcome {
                    entry: self.written(key, value, lease, &response),
                    resolved: Some(Resolved::Overwrote),
                });
            }
            let current = match response.results.into_iter().next() {
                Some(OpResult::Get(Some(version))) => current_entry(version)?,
                _ => None,
            };
            match &policy {
                ConflictPolicy::Merge(resolver) => {
                    let base = match &base {
                        Some(base) => base.clone(),
                        None => {
                            let read = self.base_of(key, expect, current.as_ref()).await?;
                            base = Some(read.clone());
                            read
                        }
                    };
                    let theirs = current.as_ref().map(|entry| &entry.value);
                    match policy::three_way(
                        key,
                        base.as_ref(),
                        theirs,
                        Some(&ours),
                        resolver.as_ref(),
                    ) {
                        Merged::Value(Some(merged)) => value = merged,
                        Merged::Value(None) => {
                            return Err(Error::MergeConflict {
                                key: key.clone(),
                                paths: vec![String::new()],
                                current: current.map(Box::new),
                            });
                        }
                        Merged::Conflicts(paths) => {
                            return Err(Error::MergeConflict {
                                key: key.clone(),
                                paths,
                                current: current.map(Box::new),
                            });
                        }
                    }
                    resolved = Some(Resolved::Merged);
                }
                ConflictPolicy::Custom(resolver) => {
                    let base = match &base {
                        Some(base) => base.clone(),
                        None => {
                            // A base no longer kept reaches the resolver as
                            // `None`; other failures end the write.
                            let read = match self.base_of(key, expect, current.as_ref()).await {
                                Err(Error::BaseCompacted { .. }) => None,
                                other => other?,
                            };
                            base = Some(read.clone());
                            read
                        }
                    };
                    match resolver(&policy::Conflict {
                        key,
                        base: base.as_ref(),
                        theirs: current.as_ref(),
                        ours: &ours,
                    }) {
                        Resolution::Use(chosen) => value = chosen,
                        Resolution::Remove | Resolution::Reject => {
                            return Err(Error::Rejected {
                                key: key.clone(),
                                current: current.map(Box::new),
                            });
                        }
                    }
                    resolved = Some(Resolved::Resolver);
                }
                // Reject (and any policy added later).
                _ => {
                    return Err(Error::Conflict {
                        key: key.clone(),
                        expected: expect,
                        current: current.map(Box::new),
                    });
                }
            }
            condition = Expect::read(current.as_ref());
            retry.wait_after_first().await?;
        }
    }

    fn count_conflict(&self, policy: &'static str) {
        self.inner.conflicts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("smalltalk_state_conflicts_total", "policy" => policy).increment(1);
    }

    /// The value the writer read, for a merge: at the revision it names, or
    /// the version it names within the key's current life (a version number
    /// restarts at 1 after a delete).
    async fn base_of(
        &self,
        key: &StorageKey,
        expect: Expect,
        current: Option<&StateEntry>,
    ) -> Result<Option<Value>> {
        let compacted = || Error::BaseCompacted {
            key: key.clone(),
            expected: expect,
        };
        match expect {
            Expect::Any | Expect::Absent => Ok(None),
            Expect::Revision(revision) => match self.read(key, Some(revision)).await {
                Ok(entry) => Ok(entry.map(|entry| entry.value)),
                Err(Error::Compacted { .. }) => Err(compacted()),
                Err(error) => Err(error),
            },
            Expect::Version(wanted) => {
                let Some(current) = current else {
                    return Err(compacted());
                };
                // Versions of this life between `wanted` and now, at most.
                let depth = current
                    .version
                    .saturating_sub(wanted)
                    .saturating_add(1)
                    .min(u64::from(MAX_HISTORY_DEPTH)) as u32;
                let history = self.history(key, depth.max(1)).await?;
                history
                    .changes
                    .into_iter()
                    .find(|change| {
                        change.version == wanted
                            && change.create_revision == current.create_revision
                            && change.kind == crate::ChangeKind::Put
                    })
                    .map(|change| change.value)
                    .ok_or_else(compacted)
            }
        }
    }
}

/// The compare `expect` stands for.
pub(crate) fn compare_for(key: &StorageKey, expect: Expect) -> Compare {
    match expect {
        Expect::Any | Expect::Absent => Compare::absent(key.clone()),
        Expect::Version(version) => Compare::version(key.clone(), version),
        Expect::Revision(revision) => Compare::mod_revision(key.clone(), revision),
    }
}

fn current_entry(version: KeyVersion) -> Result<Option<StateEntry>> {
    match StateEntry::from_version(version) {
        // A purged current version cannot be: purging deletes live keys.
        Err(Error::Purged { .. }) => Ok(None),
        other => other,
    }
}

fn record_key(key: impl TryIntoId<StorageKey>) -> Result<StorageKey> {
    let key = key.try_into_id()?;
    tracing::Span::current().record("key", key.as_str());
    Ok(key)
}

pub(crate) fn record_revision(revision: Option<u64>) {
    if let Some(revision) = revision {
        metrics::gauge!("smalltalk_state_revision").set(revision as f64);
    }
}

/// Retries after a conflict: backoff with jitter, up to the update timeout.
struct Retry<'a> {
    store: &'a StateStore,
    key: &'a StorageKey,
    started: Instant,
    attempts: u32,
}

impl<'a> Retry<'a> {
    fn new(store: &'a StateStore, key: &'a StorageKey) -> Self {
        Self {
            store,
            key,
            started: Instant::now(),
            attempts: 0,
        }
    }

    /// Counts a failed attempt; waits, or gives up past the timeout.
    async fn wait(&mut self) -> Result<()> {
        self.attempts += 1;
        let waited = self.started.elapsed();
        let config = &self.store.inner.config;
        if waited >= config.update_timeout {
            return Err(Error::Contention {
                key: self.key.clone(),
                attempts: self.attempts,
                waited,
            });
        }
        let delay = config.conflict_backoff.delay(self.attempts - 1);
        // Jitter (up to half the delay) keeps contenders from retrying in
        // lockstep.
        let jitter = delay.mul_f64(f64::from(uuid::Uuid::new_v4().as_u128() as u16) / 131_070.0);
        tokio::time::sleep(delay / 2 + jitter).await;
        Ok(())
    }

    /// As [`wait`](Self::wait), but the first retry goes at once (a policy
    /// resolved the conflict: the next attempt is expected to land).
    async fn wait_after_first(&mut self) -> Result<()> {
        if self.attempts == 0 {
            self.attempts = 1;
            return Ok(());
        }
        self.wait().await
    }
}
