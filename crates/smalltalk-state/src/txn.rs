//! [`TxnBuilder`]: multi-key compare-and-set transactions.

use serde_json::Value;
use smalltalk_storage::versioned::{
    Compare, CompareOp, CompareTarget, LeaseId, OpResult, Txn, TxnOp,
};
use smalltalk_types::{StorageKey, TryIntoId};

use crate::store::compare_for;
use crate::{Error, Expect, Result, StateEntry, StateStore};

/// Builds an atomic transaction: compares, then the ops to run if they all
/// hold and the ops to run otherwise, in one revision. Made by
/// [`StateStore::txn`]; nothing reaches storage before
/// [`commit`](Self::commit), and bad input (an invalid key, an oversize
/// value, more than 128 ops, a key twice in one branch) is refused there
/// with nothing written.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use serde_json::json;
/// use smalltalk_state::{Expect, StateStore};
///
/// let state = StateStore::new(Arc::new(smalltalk_storage::MemoryStore::new()));
/// state.put("stock:apples", json!(3)).await?;
/// let stock = state.get("stock:apples").await?.expect("stocked");
/// // Take one apple and record the order, only if nobody else took one.
/// let outcome = state
///     .txn()
///     .expect("stock:apples", Expect::Revision(stock.revision))
///     .put("stock:apples", json!(2))
///     .put("order:1", json!({"item": "apple"}))
///     .or_else()
///     .get("stock:apples")
///     .commit()
///     .await?;
/// assert!(outcome.succeeded);
/// assert_eq!(state.get("order:1").await?.expect("ordered").revision, outcome.revision);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a transaction does nothing until committed"]
pub struct TxnBuilder<'a> {
    store: &'a StateStore,
    txn: Txn,
    values: Vec<(bool, Value)>,
    failure: bool,
    error: Option<Error>,
}

/// What one op of a committed transaction did, in the order of the branch
/// that ran.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TxnResult {
    /// The key's latest entry before the transaction.
    Get(Option<StateEntry>),
    /// The written entry.
    Put(StateEntry),
    /// Whether the key existed.
    Delete(bool),
    /// A read whose stored value does not decode as JSON (written around
    /// this crate, or damaged); the transaction itself went through.
    Undecodable {
        /// The key.
        key: StorageKey,
        /// The version's revision.
        revision: u64,
    },
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TxnOutcome {
    /// Whether every compare held (the success ops ran).
    pub succeeded: bool,
    /// Its revision if it wrote, else the revision it was evaluated at.
    pub revision: u64,
    /// One per op of the branch that ran.
    pub results: Vec<TxnResult>,
}

impl<'a> TxnBuilder<'a> {
    pub(crate) fn new(store: &'a StateStore) -> Self {
        Self {
            store,
            txn: Txn {
                author: store.author().cloned(),
                ..Txn::default()
            },
            values: Vec::new(),
            failure: false,
            error: None,
        }
    }

    fn key(&mut self, key: impl TryIntoId<StorageKey>) -> Option<StorageKey> {
        match key.try_into_id() {
            Ok(key) => Some(key),
            Err(error) => {
                self.error.get_or_insert(error.into());
                None
            }
        }
    }

    fn compare(
        mut self,
        key: impl TryIntoId<StorageKey>,
        op: CompareOp,
        target: CompareTarget,
    ) -> Self {
        if let Some(key) = self.key(key) {
            self.txn.compare.push(Compare { key, op, target });
        }
        self
    }

    /// The key is as a writer that read it expects ([`Expect::Any`] adds
    /// nothing).
    pub fn expect(mut self, key: impl TryIntoId<StorageKey>, expect: Expect) -> Self {
        if let Some(key) = self.key(key) {
            if expect != Expect::Any {
                self.txn.compare.push(compare_for(&key, expect));
            }
        }
        self
    }

    /// The key's version compares with `version` by `op` (0: absent).
    pub fn version(self, key: impl TryIntoId<StorageKey>, op: CompareOp, version: u64) -> Self {
        self.compare(key, op, CompareTarget::Version(version))
    }

    /// The key's last-change revision compares with `revision` by `op`.
    pub fn mod_revision(
        self,
        key: impl TryIntoId<StorageKey>,
        op: CompareOp,
        revision: u64,
    ) -> Self {
        self.compare(key, op, CompareTarget::ModRevision(revision))
    }

    /// The key's create revision compares with `revision` by `op`.
    pub fn create_revision(
        self,
        key: impl TryIntoId<StorageKey>,
        op: CompareOp,
        revision: u64,
    ) -> Self {
        self.compare(key, op, CompareTarget::CreateRevision(revision))
    }

    /// The key's value equals `value` (false if absent). Compared as
    /// encoded JSON, byte for byte: values this crate wrote encode the same
    /// way whenever they are equal (object keys sorted).
    pub fn value_equals(mut self, key: impl TryIntoId<StorageKey>, value: &Value) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.compare(key, CompareOp::Equal, CompareTarget::Value(bytes)),
            Err(error) => {
                self.error
                    .get_or_insert(smalltalk_types::Error::Encoding(error).into());
                self
            }
        }
    }

    fn op(mut self, op: Option<TxnOp>, value: Option<Value>) -> Self {
        if let Some(op) = op {
            if let Some(value) = value {
                self.values.push((self.failure, value));
            }
            if self.failure {
                self.txn.failure.push(op);
            } else {
                self.txn.success.push(op);
            }
        }
        self
    }

    fn put_op(
        mut self,
        key: impl TryIntoId<StorageKey>,
        value: Value,
        lease: Option<LeaseId>,
    ) -> Self {
        let op = self
            .key(key)
            .and_then(|key| match self.store.encode(&key, &value) {
                Ok(bytes) => Some(TxnOp::Put {
                    key,
                    value: bytes,
                    lease,
                }),
                Err(error) => {
                    self.error.get_or_insert(error);
                    None
                }
            });
        self.op(op, Some(value))
    }

    /// Writes `value`.
    pub fn put(self, key: impl TryIntoId<StorageKey>, value: Value) -> Self {
        self.put_op(key, value, None)
    }

    /// Writes `value` attached to `lease`.
    pub fn put_with_lease(
        self,
        key: impl TryIntoId<StorageKey>,
        value: Value,
        lease: LeaseId,
    ) -> Self {
        self.put_op(key, value, Some(lease))
    }

    /// Deletes the key.
    pub fn delete(mut self, key: impl TryIntoId<StorageKey>) -> Self {
        let op = self.key(key).map(|key| TxnOp::Delete { key });
        self.op(op, None)
    }

    /// Reads the key (as of before the transaction).
    pub fn get(mut self, key: impl TryIntoId<StorageKey>) -> Self {
        let op = self.key(key).map(|key| TxnOp::Get { key });
        self.op(op, None)
    }

    /// The ops after this run when a compare fails.
    pub fn or_else(mut self) -> Self {
        self.failure = true;
        self
    }

    /// Commits, atomically.
    #[tracing::instrument(name = "state.txn", skip_all, fields(compares = self.txn.compare.len(), ops = self.txn.success.len() + self.txn.failure.len()), err)]
    pub async fn commit(self) -> Result<TxnOutcome> {
        if let Some(error) = self.error {
            return Err(error);
        }
        self.txn.validate()?;
        let response = self.store.run(self.txn.clone()).await?;
        let ran = if response.succeeded {
            &self.txn.success
        } else {
            &self.txn.failure
        };
        let mut values = self
            .values
            .into_iter()
            .filter(|(failure, _)| *failure != response.succeeded)
            .map(|(_, value)| value);
        // The transaction is committed: nothing below may fail.
        let mut results = Vec::with_capacity(ran.len());
        for (op, result) in ran.iter().zip(response.results) {
            results.push(match (op, result) {
                (_, OpResult::Get(None)) => TxnResult::Get(None),
                (_, OpResult::Get(Some(version))) => {
                    let (key, revision) = (version.key.clone(), version.revision);
                    match StateEntry::from_version(version) {
                        Ok(entry) => TxnResult::Get(entry),
                        Err(_) => TxnResult::Undecodable { key, revision },
                    }
                }
                (
                    TxnOp::Put { key, lease, .. },
                    OpResult::Put {
                        version,
                        create_revision,
                        ..
                    },
                ) => TxnResult::Put(StateEntry {
                    key: key.clone(),
                    value: values.next().unwrap_or(Value::Null),
                    revision: response.revision,
                    create_revision,
                    version,
                    lease: *lease,
                    author: self.txn.author.clone(),
                    timestamp: response.timestamp,
                }),
                (_, OpResult::Delete { deleted }) => TxnResult::Delete(deleted),
                (op, other) => {
                    tracing::error!(?op, result = ?other, "a transaction result does not match its op");
                    continue;
                }
            });
        }
        Ok(TxnOutcome {
            succeeded: response.succeeded,
            revision: response.revision,
            results,
        })
    }
}

impl StateStore {
    /// Starts an atomic multi-key transaction (see [`TxnBuilder`]).
    pub fn txn(&self) -> TxnBuilder<'_> {
        TxnBuilder::new(self)
    }
}
