//! The semantics of a transaction, written once: every backend reads what
//! the planner asks for, and writes what it returns.

use smalltalk_types::{StorageKey, Timestamp};

use super::{KeyVersion, LeaseId, OpResult, Txn, TxnOp, TxnResponse, VersionKind};
use crate::{Error, Result};

/// A key's latest version, without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Whether the latest version is a put (not a tombstone).
    pub(crate) live: bool,
    pub(crate) mod_revision: u64,
    pub(crate) create_revision: u64,
    pub(crate) version: u64,
    pub(crate) lease: Option<LeaseId>,
}

impl Head {
    /// The head a newly written version leaves.
    pub(crate) fn of(version: &KeyVersion) -> Self {
        Self {
            live: version.kind == VersionKind::Put,
            mod_revision: version.revision,
            create_revision: version.create_revision,
            version: version.version,
            lease: version.lease,
        }
    }
}

/// What the planner reads, as of before the transaction.
pub(crate) trait TxnView {
    /// The key's head, if it has one (live or a tombstone).
    fn head(&mut self, key: &StorageKey) -> Result<Option<Head>>;
    /// The key's latest version with its value, if live.
    fn latest(&mut self, key: &StorageKey) -> Result<Option<KeyVersion>>;
    /// Whether the lease is granted.
    fn lease_exists(&mut self, lease: LeaseId) -> Result<bool>;
}

/// A planned transaction: the answer, and the versions to write (all at
/// `response.revision` when `response.wrote`).
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) response: TxnResponse,
    pub(crate) writes: Vec<KeyVersion>,
}

/// Evaluates `txn` against `view`, at store revision `current`. Writes
/// nothing; an error (an unknown lease) means nothing may be written.
pub(crate) fn plan(
    txn: &Txn,
    view: &mut impl TxnView,
    current: u64,
    timestamp: Timestamp,
) -> Result<Planned> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let head = view.head(&compare.key)?;
        let value = match compare.target {
            super::CompareTarget::Value(_) => view.latest(&compare.key)?.and_then(|v| v.value),
            _ => None,
        };
        if !compare.holds(head.as_ref(), value.as_deref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let revision = current + 1;
    let mut results = Vec::with_capacity(ops.len());
    let mut writes = Vec::new();
    for op in ops {
        match op {
            TxnOp::Get { key } => results.push(OpResult::Get(view.latest(key)?)),
            TxnOp::Put { key, value, lease } => {
                if let Some(lease) = lease {
                    if !view.lease_exists(*lease)? {
                        return Err(Error::LeaseNotFound { lease: *lease });
                    }
                }
                let head = view.head(key)?.filter(|head| head.live);
                let (version, create_revision) = match head {
                    Some(head) => (head.version + 1, head.create_revision),
                    None => (1, revision),
                };
                results.push(OpResult::Put {
                    version,
                    create_revision,
                    previous: head.map(|head| head.version),
                });
                writes.push(KeyVersion {
                    key: key.clone(),
                    kind: VersionKind::Put,
                    value: Some(value.clone()),
                    revision,
                    create_revision,
                    version,
                    lease: *lease,
                    author: txn.author.clone(),
                    timestamp,
                });
            }
            TxnOp::Delete { key } => {
                let live = view.head(key)?.is_some_and(|head| head.live);
                results.push(OpResult::Delete { deleted: live });
                if live {
                    writes.push(tombstone(key.clone(), revision, txn, timestamp));
                }
            }
        }
    }
    let wrote = !writes.is_empty();
    Ok(Planned {
        response: TxnResponse {
            succeeded,
            revision: if wrote { revision } else { current },
            wrote,
            results,
            timestamp,
        },
        writes,
    })
}

/// A delete of `key` at `revision`.
pub(crate) fn tombstone(
    key: StorageKey,
    revision: u64,
    txn: &Txn,
    timestamp: Timestamp,
) -> KeyVersion {
    KeyVersion {
        key,
        kind: VersionKind::Delete,
        value: None,
        revision,
        create_revision: 0,
        version: 0,
        lease: None,
        author: txn.author.clone(),
        timestamp,
    }
}
