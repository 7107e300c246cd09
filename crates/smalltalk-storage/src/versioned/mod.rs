//! Versioned records: keys with a global revision, per-key versions,
//! transactions, history, compaction and leases, modelled on etcd (the
//! storage side of `smalltalk-state`).
//!
//! # Revisions
//!
//! A store has one revision counter, starting at 0. Every transaction that
//! changes something takes the next revision, whatever number of keys it
//! touches; revisions are gap-free and follow commit order, on every
//! backend (on PostgreSQL across processes too). A transaction that
//! changes nothing (its ops are reads, or deletes of absent keys) takes
//! none.
//!
//! Each key has a `create_revision` (the revision that created it since it
//! last did not exist), a `mod_revision` (the revision of its last change)
//! and a `version` (1 on creation, plus one per put; a delete resets it to
//! 0 and writes a tombstone revision).
//!
//! # Compaction
//!
//! [`VersionedStore::compact`] moves one global compaction point forward.
//! Below it, each live key keeps its newest `keep_versions` versions and the
//! version that was current at the compaction point; everything else below
//! it goes, and so do keys whose tombstone is below it. A read that needs
//! what went fails with [`Error::Compacted`]:
//! nothing answers with a silently shortened history.
//!
//! # Purging
//!
//! [`VersionedStore::purge_prefix`] deletes every live key under a prefix in
//! one revision, and erases the values of every older version of those keys
//! (they read back as [`VersionKind::Purged`]): the revisions stay, so a
//! watcher never sees a hole, but the content is gone.

pub(crate) mod memory;
mod plan;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{AgentId, StorageKey, Timestamp};

use crate::{Error, Result};

pub(crate) use plan::{Head, TxnView, plan, tombstone};

/// The most operations in one branch of a [`Txn`], and the most compares.
pub const MAX_TXN_OPS: usize = 128;

/// The largest value a put accepts, in bytes (1.5 MiB, as etcd).
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// The most versions one read returns.
pub const MAX_READ_LIMIT: u32 = 10_000;

/// A key prefix: empty (every key) or text in the [`StorageKey`] charset.
/// A prefix matches the keys that start with it, byte for byte.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Every key.
    pub const ALL: KeyPrefix = KeyPrefix(String::new());

    /// Validates `text`: empty, or a valid [`StorageKey`] (so `agent:` and
    /// `session:1234:` are prefixes; `../` and `a/b` are refused with
    /// [`smalltalk_types::Error::InvalidId`]).
    pub fn parse(text: &str) -> smalltalk_types::Result<Self> {
        if !text.is_empty() {
            StorageKey::parse(text)?;
        }
        Ok(Self(text.to_owned()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `key` starts with this prefix.
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.0)
    }

    /// The smallest text above every key with this prefix (the prefix with
    /// its last byte incremented), or `None` for the empty prefix. Keys are
    /// ASCII, so the result is too.
    pub fn upper_bound(&self) -> Option<String> {
        let mut bytes = self.0.clone().into_bytes();
        let last = bytes.pop()?;
        bytes.push(last + 1);
        Some(String::from_utf8(bytes).expect("ASCII stays ASCII"))
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({:?})", self.0)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<StorageKey> for KeyPrefix {
    fn from(key: StorageKey) -> Self {
        Self(key.as_str().to_owned())
    }
}

impl From<&StorageKey> for KeyPrefix {
    fn from(key: &StorageKey) -> Self {
        Self(key.as_str().to_owned())
    }
}

impl From<&KeyPrefix> for KeyPrefix {
    /// A copy: lets `&prefix` stand wherever a prefix is taken
    /// ([`TryIntoId`](smalltalk_types::TryIntoId)).
    fn from(prefix: &KeyPrefix) -> Self {
        prefix.clone()
    }
}

impl TryFrom<&str> for KeyPrefix {
    type Error = smalltalk_types::Error;
    fn try_from(text: &str) -> smalltalk_types::Result<Self> {
        Self::parse(text)
    }
}

impl TryFrom<&String> for KeyPrefix {
    type Error = smalltalk_types::Error;
    fn try_from(text: &String) -> smalltalk_types::Result<Self> {
        Self::parse(text)
    }
}

impl TryFrom<String> for KeyPrefix {
    type Error = smalltalk_types::Error;
    fn try_from(text: String) -> smalltalk_types::Result<Self> {
        Self::parse(&text)
    }
}

/// A lease: keys put with it are deleted together when it expires or is
/// revoked.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// How long it lives after each keep-alive.
    pub ttl: Duration,
    /// When it expires unless kept alive, by the store's clock.
    pub expires_at: Timestamp,
}

/// The longest lease TTL accepted (24 h), and the shortest (1 s).
pub const LEASE_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// What a version of a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionKind {
    /// A put: the value is there.
    Put,
    /// A delete (a tombstone): no value, `version` and `create_revision`
    /// are 0.
    Delete,
    /// A put whose value was erased by [`VersionedStore::purge_prefix`].
    Purged,
}

impl VersionKind {
    /// `put`, `delete` or `purged`.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionKind::Put => "put",
            VersionKind::Delete => "delete",
            VersionKind::Purged => "purged",
        }
    }

    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "put" => Some(VersionKind::Put),
            "delete" => Some(VersionKind::Delete),
            "purged" => Some(VersionKind::Purged),
            _ => None,
        }
    }
}

/// One version of a key: what one revision wrote to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyVersion {
    /// The key.
    pub key: StorageKey,
    /// Put, delete or purged.
    pub kind: VersionKind,
    /// The value (`None` for a delete or a purged version).
    pub value: Option<Vec<u8>>,
    /// The revision that wrote this version (the key's `mod_revision` while
    /// it was current).
    pub revision: u64,
    /// The revision that created the key (0 for a delete).
    pub create_revision: u64,
    /// The key's version: 1 on creation, plus one per put (0 for a delete).
    pub version: u64,
    /// The lease the key was attached to.
    pub lease: Option<LeaseId>,
    /// Who wrote it, if the writer said.
    pub author: Option<AgentId>,
    /// When it was written, by the writer's clock.
    pub timestamp: Timestamp,
}

impl KeyVersion {
    /// Whether this version holds a value (a put, not erased).
    pub fn is_live(&self) -> bool {
        self.kind == VersionKind::Put
    }
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// The stored one is less.
    Less,
    /// The stored one is greater.
    Greater,
}

impl CompareOp {
    fn holds<T: Ord + ?Sized>(self, stored: &T, given: &T) -> bool {
        match self {
            CompareOp::Equal => stored == given,
            CompareOp::NotEqual => stored != given,
            CompareOp::Less => stored < given,
            CompareOp::Greater => stored > given,
        }
    }
}

/// What a [`Compare`] looks at. An absent (or deleted) key has version,
/// `mod_revision` and `create_revision` 0; a compare of its value is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0: absent).
    Version(u64),
    /// The key's `mod_revision`.
    ModRevision(u64),
    /// The key's `create_revision`.
    CreateRevision(u64),
    /// The key's value, compared byte by byte.
    Value(Vec<u8>),
}

/// A condition of a [`Txn`], on the latest version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: StorageKey,
    /// How.
    pub op: CompareOp,
    /// Against what.
    pub target: CompareTarget,
}

impl Compare {
    /// `key`'s version equals `version` (0: the key is absent).
    pub fn version(key: StorageKey, version: u64) -> Self {
        Self {
            key,
            op: CompareOp::Equal,
            target: CompareTarget::Version(version),
        }
    }

    /// `key`'s `mod_revision` equals `revision`.
    pub fn mod_revision(key: StorageKey, revision: u64) -> Self {
        Self {
            key,
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// `key` is absent.
    pub fn absent(key: StorageKey) -> Self {
        Self::version(key, 0)
    }

    /// Whether the compare holds for `head` (the key's latest version; its
    /// value, where the compare needs it).
    pub(crate) fn holds(&self, head: Option<&Head>, value: Option<&[u8]>) -> bool {
        let (version, mod_revision, create_revision) =
            head.filter(|head| head.live).map_or((0, 0, 0), |head| {
                (head.version, head.mod_revision, head.create_revision)
            });
        match &self.target {
            CompareTarget::Version(given) => self.op.holds(&version, given),
            CompareTarget::ModRevision(given) => self.op.holds(&mod_revision, given),
            CompareTarget::CreateRevision(given) => self.op.holds(&create_revision, given),
            CompareTarget::Value(given) => {
                value.is_some_and(|stored| self.op.holds(stored, given.as_slice()))
            }
        }
    }
}

/// One operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Reads the key's latest version, as of before this transaction.
    Get {
        /// The key.
        key: StorageKey,
    },
    /// Writes a value.
    Put {
        /// The key.
        key: StorageKey,
        /// At most [`MAX_VALUE_BYTES`].
        value: Vec<u8>,
        /// Attach the key to this lease (else it is attached to none).
        lease: Option<LeaseId>,
    },
    /// Deletes the key (nothing if absent).
    Delete {
        /// The key.
        key: StorageKey,
    },
}

impl TxnOp {
    /// The key it is about.
    pub fn key(&self) -> &StorageKey {
        match self {
            TxnOp::Get { key } | TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// An atomic transaction: if every compare holds, the success ops run,
/// else the failure ops; all in one revision (none if nothing changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold (none: always).
    pub compare: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
    /// Recorded on every version written.
    pub author: Option<AgentId>,
}

/// Why a transaction or a read was refused before reaching storage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// More than [`MAX_TXN_OPS`] compares or ops in one branch.
    TooManyOps {
        /// `compare`, `success` or `failure`.
        part: &'static str,
        /// How many were given.
        count: usize,
    },
    /// A key appears twice among one branch's ops.
    DuplicateKey {
        /// The key.
        key: StorageKey,
    },
    /// A value over [`MAX_VALUE_BYTES`].
    ValueTooLarge {
        /// The key.
        key: StorageKey,
        /// Its size in bytes.
        size: usize,
    },
    /// A limit of 0, or over [`MAX_READ_LIMIT`].
    BadLimit {
        /// The limit given.
        limit: u32,
    },
    /// A lease TTL outside [`LEASE_TTL_RANGE`].
    BadLeaseTtl {
        /// The TTL given.
        ttl: Duration,
    },
    /// A `keep_versions` of 0.
    BadKeepVersions,
    /// The empty prefix where it would mean every key.
    EmptyPrefix,
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidRequest::TooManyOps { part, count } => {
                write!(f, "{count} {part} operations (at most {MAX_TXN_OPS})")
            }
            InvalidRequest::DuplicateKey { key } => {
                write!(f, "key `{key}` appears twice in one branch")
            }
            InvalidRequest::ValueTooLarge { key, size } => write!(
                f,
                "the value of `{key}` is {size} bytes (at most {MAX_VALUE_BYTES})"
            ),
            InvalidRequest::BadLimit { limit } => {
                write!(f, "limit {limit} is not within 1..={MAX_READ_LIMIT}")
            }
            InvalidRequest::BadLeaseTtl { ttl } => write!(
                f,
                "lease TTL {ttl:?} is not within {:?}..={:?}",
                LEASE_TTL_RANGE.0, LEASE_TTL_RANGE.1
            ),
            InvalidRequest::BadKeepVersions => f.write_str("keep_versions must be at least 1"),
            InvalidRequest::EmptyPrefix => f.write_str("the empty prefix is not allowed here"),
        }
    }
}

impl Txn {
    /// Checks the limits ([`MAX_TXN_OPS`], unique keys per branch, value
    /// sizes) without touching storage.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason| Err(Error::InvalidRequest { reason });
        for (part, count) in [
            ("compare", self.compare.len()),
            ("success", self.success.len()),
            ("failure", self.failure.len()),
        ] {
            if count > MAX_TXN_OPS {
                return invalid(InvalidRequest::TooManyOps { part, count });
            }
        }
        for compare in &self.compare {
            if let CompareTarget::Value(value) = &compare.target {
                if value.len() > MAX_VALUE_BYTES {
                    return invalid(InvalidRequest::ValueTooLarge {
                        key: compare.key.clone(),
                        size: value.len(),
                    });
                }
            }
        }
        for ops in [&self.success, &self.failure] {
            let mut seen = std::collections::HashSet::with_capacity(ops.len());
            for op in ops {
                if !seen.insert(op.key()) {
                    return invalid(InvalidRequest::DuplicateKey {
                        key: op.key().clone(),
                    });
                }
                if let TxnOp::Put { key, value, .. } = op {
                    if value.len() > MAX_VALUE_BYTES {
                        return invalid(InvalidRequest::ValueTooLarge {
                            key: key.clone(),
                            size: value.len(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether any op writes.
    pub fn writes(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(|op| !matches!(op, TxnOp::Get { .. }))
    }
}

/// What one op of a transaction did, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpResult {
    /// The key's latest version before the transaction (`None`: absent).
    Get(Option<KeyVersion>),
    /// The version written (without its value).
    Put {
        /// The key's new version.
        version: u64,
        /// Its create revision.
        create_revision: u64,
        /// The version it replaced, if the key existed (without its value).
        previous: Option<u64>,
    },
    /// Whether the key existed.
    Delete {
        /// `true` if a tombstone was written.
        deleted: bool,
    },
}

/// The outcome of [`VersionedStore::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxnResponse {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// The transaction's revision if it wrote, else the store's revision
    /// it was evaluated at.
    pub revision: u64,
    /// Whether it took a revision.
    pub wrote: bool,
    /// One per op of the branch that ran.
    pub results: Vec<OpResult>,
    /// When it was evaluated, by the store's clock: the timestamp of every
    /// version it wrote.
    pub timestamp: Timestamp,
}

/// A page of [`VersionedStore::range`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RangePage {
    /// The revision the page was read at.
    pub revision: u64,
    /// Live keys in key order, each its version at `revision`.
    pub items: Vec<KeyVersion>,
    /// Pass as `after_key` for the next page; `None` on the last page.
    pub next: Option<StorageKey>,
}

impl RangePage {
    /// A page from up to `limit + 1` rows read at `revision`: the extra row
    /// only says there is a next page.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn from_rows(revision: u64, mut items: Vec<KeyVersion>, limit: u32) -> Self {
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|last| last.key.clone())
        } else {
            None
        };
        Self {
            revision,
            items,
            next,
        }
    }
}

/// What [`VersionedStore::range`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    /// Keys starting with this.
    pub prefix: KeyPrefix,
    /// At this revision (`None`: the latest). Below the compaction point:
    /// [`Error::Compacted`].
    pub at: Option<u64>,
    /// Keys strictly after this one (a page's `next`).
    pub after_key: Option<StorageKey>,
    /// At most this many keys, 1 to [`MAX_READ_LIMIT`].
    pub limit: u32,
}

impl RangeRequest {
    /// The first `limit` keys under `prefix`, latest.
    pub fn new(prefix: KeyPrefix, limit: u32) -> Self {
        Self {
            prefix,
            at: None,
            after_key: None,
            limit,
        }
    }
}

/// A key's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyHistory {
    /// Versions, newest first.
    pub versions: Vec<KeyVersion>,
    /// If compaction removed older versions of this key: the revision of
    /// the oldest one kept (the history is complete from there on).
    pub compacted_below: Option<u64>,
}

/// The revisions a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevisionBounds {
    /// The newest revision (0: nothing written yet).
    pub revision: u64,
    /// The compaction point (0: never compacted). Every revision from here
    /// on is complete.
    pub compact_revision: u64,
}

/// What [`VersionedStore::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactOutcome {
    /// The compaction point now.
    pub compact_revision: u64,
    /// Versions removed.
    pub removed: u64,
}

impl CompactOutcome {
    /// The point at `compact_revision`, nothing removed (a compaction that
    /// had nothing to do).
    pub fn unchanged(compact_revision: u64) -> Self {
        Self {
            compact_revision,
            removed: 0,
        }
    }
}

/// What [`VersionedStore::purge_prefix`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeOutcome {
    /// The revision of the deletes, if any key was live.
    pub revision: Option<u64>,
    /// Live keys deleted.
    pub deleted: u64,
    /// Older versions whose value was erased.
    pub erased: u64,
}

/// Counts and sizes of a versioned store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionedStats {
    /// Live keys.
    pub keys: u64,
    /// Versions stored (tombstones and purged versions included).
    pub versions: u64,
    /// Bytes of values stored.
    pub value_bytes: u64,
    /// Leases granted and not yet revoked.
    pub leases: u64,
    /// Revisions.
    pub bounds: RevisionBounds,
}

/// Versioned records (FR-022 to FR-026): see the [module docs](self).
///
/// Every call validates its input first and refuses bad input with a typed
/// error before any I/O: nothing is changed.
#[async_trait]
pub trait VersionedStore: Send + Sync + fmt::Debug + 'static {
    /// Runs `txn` atomically. Errors: [`Error::InvalidRequest`] (limits),
    /// [`Error::LeaseNotFound`] for a put on an unknown lease (nothing is
    /// written).
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse>;

    /// `key`'s version current at revision `at` (`None`: the latest), or
    /// `None` if the key did not exist then. A deleted key reads as `None`;
    /// a purged one as its [`VersionKind::Purged`] version. Errors:
    /// [`Error::FutureRevision`], [`Error::Compacted`].
    async fn get_version(&self, key: &StorageKey, at: Option<u64>) -> Result<Option<KeyVersion>>;

    /// A page of live keys, in key order.
    async fn range(&self, request: &RangeRequest) -> Result<RangePage>;

    /// Up to `limit` versions of `key`, newest first, written before
    /// revision `before` (`None`: all).
    async fn key_history(
        &self,
        key: &StorageKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<KeyHistory>;

    /// Every version written at revisions after `after`, under `prefix`, in
    /// revision then key order: whole revisions only, at least `limit`
    /// versions unless fewer exist (a revision is never split). Errors:
    /// [`Error::Compacted`] if revisions after `after` were compacted.
    async fn read_revisions(
        &self,
        prefix: &KeyPrefix,
        after: u64,
        limit: u32,
    ) -> Result<Vec<KeyVersion>>;

    /// The newest revision and the compaction point.
    async fn revision_bounds(&self) -> Result<RevisionBounds>;

    /// The newest revision written strictly before `time`, if any is still
    /// stored (compaction by age uses it).
    async fn revision_before(&self, time: Timestamp) -> Result<Option<u64>>;

    /// Moves the compaction point to `revision` (never back; at most the
    /// newest revision, else [`Error::FutureRevision`]). Each live key keeps
    /// its newest `keep_versions` versions (at least 1) and its version
    /// current at the point.
    async fn compact(&self, revision: u64, keep_versions: u32) -> Result<CompactOutcome>;

    /// Grants a lease living `ttl` (see [`LEASE_TTL_RANGE`]).
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease>;

    /// Renews a lease for its TTL. [`Error::LeaseNotFound`] if it was
    /// revoked or expired.
    async fn keep_lease_alive(&self, lease: LeaseId) -> Result<Lease>;

    /// Revokes a lease, deleting its keys in one revision; returns the
    /// revision if any key was deleted. [`Error::LeaseNotFound`] if unknown.
    async fn revoke_lease(&self, lease: LeaseId, author: Option<&AgentId>) -> Result<Option<u64>>;

    /// Revokes every lease expired by the store's clock; returns how many.
    async fn expire_leases(&self) -> Result<u64>;

    /// Deletes every live key under `prefix` in one revision and erases the
    /// values of their older versions (for privacy: a session's namespace
    /// when the session is deleted). The empty prefix is refused (it would
    /// erase everything).
    async fn purge_prefix(
        &self,
        prefix: &KeyPrefix,
        author: Option<&AgentId>,
    ) -> Result<PurgeOutcome>;

    /// Waits until the newest revision is beyond `after`, or `timeout`
    /// passes, and returns the newest revision then. Writes through this
    /// store wake waiters at once; on PostgreSQL so do other processes'
    /// (LISTEN/NOTIFY); SQLite sees other processes' writes at the timeout.
    async fn wait_for_revision(&self, after: u64, timeout: Duration) -> Result<u64>;

    /// Counts and sizes.
    async fn versioned_stats(&self) -> Result<VersionedStats>;
}

/// Checks a read limit.
pub(crate) fn check_limit(limit: u32) -> Result<()> {
    if limit == 0 || limit > MAX_READ_LIMIT {
        return Err(Error::InvalidRequest {
            reason: InvalidRequest::BadLimit { limit },
        });
    }
    Ok(())
}

/// Checks a lease TTL.
pub(crate) fn check_lease_ttl(ttl: Duration) -> Result<()> {
    if ttl < LEASE_TTL_RANGE.0 || ttl > LEASE_TTL_RANGE.1 {
        return Err(Error::InvalidRequest {
            reason: InvalidRequest::BadLeaseTtl { ttl },
        });
    }
    Ok(())
}

/// Checks a revision asked for against the bounds.
pub(crate) fn check_revision(at: u64, bounds: RevisionBounds) -> Result<()> {
    if at > bounds.revision {
        return Err(Error::FutureRevision {
            requested: at,
            revision: bounds.revision,
        });
    }
    Ok(())
}
