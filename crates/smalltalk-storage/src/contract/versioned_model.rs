//! The model-based property test for
//! [`VersionedStore`](crate::VersionedStore): random sequences of
//! transactions, reads, compactions, leases and purges run on a backend and
//! on [`MemoryStore`], and every result must be the same.
//!
//! Cases default to 32 per backend; `SMALLTALK_MODEL_CASES` overrides.

use std::future::Future;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use smalltalk_types::{Clock, StorageKey};

use super::{Backend, test_clock};
use crate::versioned::{
    Compare, CompareOp, CompareTarget, KeyPrefix, LeaseId, RangeRequest, Txn, TxnOp,
};
use crate::{Error, MemoryStore, Store};

const KEYS: [&str; 4] = ["a:1", "a:2", "a:10", "b:1"];
const PREFIXES: [&str; 4] = ["", "a:", "a:1", "b:"];

#[derive(Debug, Clone)]
enum GenOp {
    Get(usize),
    Put(usize, u8, Option<u64>),
    Delete(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Txn {
        compare: Vec<(usize, u8, u64)>,
        success: Vec<GenOp>,
        failure: Vec<GenOp>,
    },
    Get {
        key: usize,
        at: Option<u64>,
    },
    Range {
        prefix: usize,
        at: Option<u64>,
        after: Option<usize>,
        limit: u32,
    },
    History {
        key: usize,
        before: Option<u64>,
        limit: u32,
    },
    ReadRevisions {
        prefix: usize,
        after: u64,
        limit: u32,
    },
    Compact {
        revision: u64,
        keep: u32,
    },
    Grant {
        ttl: u64,
    },
    KeepAlive {
        lease: u64,
    },
    Revoke {
        lease: u64,
    },
    Expire,
    Advance {
        seconds: u64,
    },
    Purge {
        prefix: usize,
    },
    Bounds,
    Stats,
    RevisionBefore {
        seconds_ago: u64,
    },
}

fn gen_op() -> impl Strategy<Value = GenOp> {
    let key = 0..KEYS.len();
    prop_oneof![
        1 => key.clone().prop_map(GenOp::Get),
        4 => (key.clone(), any::<u8>(), prop::option::weighted(0.2, 1..4_u64))
            .prop_map(|(key, value, lease)| GenOp::Put(key, value, lease)),
        2 => key.prop_map(GenOp::Delete),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let prefix = 0..PREFIXES.len();
    let revision = 0..24_u64;
    prop_oneof![
        8 => (
            prop::collection::vec((key.clone(), 0..16_u8, 0..6_u64), 0..3),
            prop::collection::vec(gen_op(), 0..4),
            prop::collection::vec(gen_op(), 0..3),
        )
            .prop_map(|(compare, success, failure)| Op::Txn { compare, success, failure }),
        3 => (key.clone(), prop::option::of(revision.clone()))
            .prop_map(|(key, at)| Op::Get { key, at }),
        2 => (prefix.clone(), prop::option::of(revision.clone()), prop::option::of(key.clone()), 1..4_u32)
            .prop_map(|(prefix, at, after, limit)| Op::Range { prefix, at, after, limit }),
        2 => (key, prop::option::of(revision.clone()), 1..4_u32)
            .prop_map(|(key, before, limit)| Op::History { key, before, limit }),
        2 => (prefix.clone(), revision.clone(), 1..5_u32)
            .prop_map(|(prefix, after, limit)| Op::ReadRevisions { prefix, after, limit }),
        1 => (revision, 1..3_u32).prop_map(|(revision, keep)| Op::Compact { revision, keep }),
        1 => (1..20_u64).prop_map(|ttl| Op::Grant { ttl }),
        1 => (1..4_u64).prop_map(|lease| Op::KeepAlive { lease }),
        1 => (1..4_u64).prop_map(|lease| Op::Revoke { lease }),
        1 => Just(Op::Expire),
        2 => (1..8_u64).prop_map(|seconds| Op::Advance { seconds }),
        1 => (1..PREFIXES.len()).prop_map(|prefix| Op::Purge { prefix }),
        1 => Just(Op::Bounds),
        1 => Just(Op::Stats),
        1 => (0..20_u64).prop_map(|seconds_ago| Op::RevisionBefore { seconds_ago }),
    ]
}

fn key(index: usize) -> StorageKey {
    StorageKey::parse(KEYS[index]).expect("valid key")
}

fn prefix(index: usize) -> KeyPrefix {
    KeyPrefix::parse(PREFIXES[index]).expect("valid prefix")
}

fn txn_op(op: &GenOp) -> TxnOp {
    match op {
        GenOp::Get(index) => TxnOp::Get { key: key(*index) },
        GenOp::Put(index, value, lease) => TxnOp::Put {
            key: key(*index),
            value: vec![*value],
            lease: lease.map(LeaseId),
        },
        GenOp::Delete(index) => TxnOp::Delete { key: key(*index) },
    }
}

fn compare(index: usize, kind: u8, given: u64) -> Compare {
    // The operator and the target vary independently (kind 0..16).
    let op = match kind % 4 {
        0 => CompareOp::Equal,
        1 => CompareOp::NotEqual,
        2 => CompareOp::Less,
        _ => CompareOp::Greater,
    };
    let target = match kind / 4 {
        0 => CompareTarget::Version(given),
        1 => CompareTarget::ModRevision(given),
        2 => CompareTarget::CreateRevision(given),
        _ => CompareTarget::Value(vec![given as u8]),
    };
    Compare {
        key: key(index),
        op,
        target,
    }
}

/// A result in comparable form: its `Debug` text (every result type is
/// plain data), or the error's variant.
fn show<T: std::fmt::Debug>(result: crate::Result<T>) -> String {
    match result {
        Ok(value) => format!("{value:?}"),
        Err(error) => match error {
            Error::InvalidRequest { reason } => format!("InvalidRequest({reason:?})"),
            Error::FutureRevision {
                requested,
                revision,
            } => {
                format!("FutureRevision({requested}, {revision})")
            }
            Error::Compacted { compact_revision } => format!("Compacted({compact_revision})"),
            Error::LeaseNotFound { lease } => format!("LeaseNotFound({lease})"),
            other => format!("unexpected: {other}"),
        },
    }
}

async fn apply(store: &dyn Store, op: &Op, clock: &dyn Clock) -> String {
    match op {
        Op::Txn {
            compare: compares,
            success,
            failure,
        } => {
            // Keys unique per branch, as the limits require (duplicates are
            // the bad-input case's business).
            let unique = |ops: &[GenOp]| {
                let mut seen = std::collections::HashSet::new();
                ops.iter()
                    .filter(|op| {
                        seen.insert(match op {
                            GenOp::Get(k) | GenOp::Put(k, ..) | GenOp::Delete(k) => *k,
                        })
                    })
                    .map(txn_op)
                    .collect::<Vec<_>>()
            };
            let txn = Txn {
                compare: compares
                    .iter()
                    .map(|(index, kind, given)| compare(*index, *kind, *given))
                    .collect(),
                success: unique(success),
                failure: unique(failure),
                author: None,
            };
            show(store.txn(&txn).await)
        }
        Op::Get { key: index, at } => show(store.get_version(&key(*index), *at).await),
        Op::Range {
            prefix: index,
            at,
            after,
            limit,
        } => show(
            store
                .range(&RangeRequest {
                    prefix: prefix(*index),
                    at: *at,
                    after_key: after.map(key),
                    limit: *limit,
                })
                .await,
        ),
        Op::History {
            key: index,
            before,
            limit,
        } => show(store.key_history(&key(*index), *before, *limit).await),
        Op::ReadRevisions {
            prefix: index,
            after,
            limit,
        } => show(store.read_revisions(&prefix(*index), *after, *limit).await),
        Op::Compact { revision, keep } => show(store.compact(*revision, *keep).await),
        Op::Grant { ttl } => show(store.grant_lease(Duration::from_secs(*ttl)).await),
        Op::KeepAlive { lease } => show(store.keep_lease_alive(LeaseId(*lease)).await),
        Op::Revoke { lease } => show(store.revoke_lease(LeaseId(*lease), None).await),
        Op::Expire => show(store.expire_leases().await),
        Op::Advance { .. } => String::new(),
        Op::Purge { prefix: index } => show(store.purge_prefix(&prefix(*index), None).await),
        Op::Bounds => show(store.revision_bounds().await),
        Op::Stats => show(store.versioned_stats().await),
        Op::RevisionBefore { seconds_ago } => show(
            store
                .revision_before(
                    clock
                        .now()
                        .saturating_sub(Duration::from_secs(*seconds_ago)),
                )
                .await,
        ),
    }
}

/// Where failing cases are kept (relative to the crate running the suite).
const REGRESSIONS: &str = "proptest-regressions/versioned_model.txt";

/// Runs the property for the backend made by `fresh` (one fresh location
/// per case). Skips if `fresh` returns `None`.
pub fn check<F, Fut, B>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<B>>,
    B: Backend,
{
    let strategy = prop::collection::vec(op(), 1..50);
    super::run_model(&fresh, REGRESSIONS, &strategy, |runtime, ops| {
        runtime.block_on(async {
            let backend = fresh().await.expect("backend became unavailable");
            let clock = test_clock();
            let subject = backend.open(clock.clone()).await;
            let model = MemoryStore::with_clock(clock.clone());
            for (step, op) in ops.iter().enumerate() {
                if let Op::Advance { seconds } = op {
                    clock.advance(Duration::from_secs(*seconds));
                }
                let expected = apply(&model, op, clock.as_ref()).await;
                let actual = apply(subject.as_ref(), op, clock.as_ref()).await;
                if expected != actual {
                    subject.close().await.ok();
                    return Err(TestCaseError::fail(format!(
                        "step {step} {op:?}:\n model gave   {expected}\n backend gave {actual}"
                    )));
                }
            }
            subject.close().await.ok();
            Ok(())
        })
    });
}
