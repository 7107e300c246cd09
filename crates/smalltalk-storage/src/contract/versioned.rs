//! Contract cases for [`VersionedStore`](crate::VersionedStore).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use smalltalk_types::{AgentId, Clock, StorageKey};

use super::{Backend, test_clock};
use crate::versioned::{
    Compare, CompareOp, CompareTarget, InvalidRequest, KeyPrefix, LeaseId, MAX_TXN_OPS,
    MAX_VALUE_BYTES, OpResult, RangeRequest, Txn, TxnOp, TxnResponse, VersionKind,
};
use crate::{Error, Store};

/// A key.
pub fn key(text: &str) -> StorageKey {
    StorageKey::parse(text).expect("valid key")
}

fn prefix(text: &str) -> KeyPrefix {
    KeyPrefix::parse(text).expect("valid prefix")
}

/// A put op.
pub fn put_op(name: &str, value: &[u8]) -> TxnOp {
    TxnOp::Put {
        key: key(name),
        value: value.to_vec(),
        lease: None,
    }
}

/// An unconditional put of one key.
pub async fn put(store: &dyn Store, name: &str, value: &[u8]) -> TxnResponse {
    store
        .txn(&Txn {
            success: vec![put_op(name, value)],
            ..Txn::default()
        })
        .await
        .expect("put")
}

async fn delete(store: &dyn Store, name: &str) -> TxnResponse {
    store
        .txn(&Txn {
            success: vec![TxnOp::Delete { key: key(name) }],
            ..Txn::default()
        })
        .await
        .expect("delete")
}

async fn value_at(store: &dyn Store, name: &str, at: Option<u64>) -> Option<Vec<u8>> {
    store
        .get_version(&key(name), at)
        .await
        .expect("get")
        .and_then(|version| version.value)
}

async fn revision(store: &dyn Store) -> u64 {
    store.revision_bounds().await.unwrap().revision
}

/// Revisions count from 1, one per writing transaction; each key has its
/// create revision, mod revision and version; a delete writes a tombstone
/// and resets the version; author and timestamp are recorded.
pub async fn revisions_and_versions(backend: &impl Backend) {
    let clock = test_clock();
    let store = backend.open(clock.clone()).await;
    assert_eq!(revision(&*store).await, 0);
    assert_eq!(store.get_version(&key("a"), None).await.unwrap(), None);

    let first = put(&*store, "a", b"1").await;
    assert_eq!(
        (first.succeeded, first.wrote, first.revision),
        (true, true, 1)
    );
    assert_eq!(
        first.results,
        vec![OpResult::Put {
            version: 1,
            create_revision: 1,
            previous: None
        }]
    );
    clock.advance(Duration::from_secs(1));
    let planner = AgentId::parse("planner").unwrap();
    let second = store
        .txn(&Txn {
            success: vec![put_op("a", b"2"), put_op("b", b"x")],
            author: Some(planner.clone()),
            ..Txn::default()
        })
        .await
        .unwrap();
    assert_eq!(second.revision, 2, "two keys, one revision");
    let a = store.get_version(&key("a"), None).await.unwrap().unwrap();
    assert_eq!(
        (a.revision, a.create_revision, a.version, a.kind),
        (2, 1, 2, VersionKind::Put)
    );
    assert_eq!(a.value.as_deref(), Some(&b"2"[..]));
    assert_eq!(a.author, Some(planner));
    assert_eq!(a.timestamp, clock.now());

    let gone = delete(&*store, "a").await;
    assert_eq!(gone.revision, 3);
    assert_eq!(gone.results, vec![OpResult::Delete { deleted: true }]);
    assert_eq!(store.get_version(&key("a"), None).await.unwrap(), None);
    // Deleting what is absent changes nothing and takes no revision.
    let again = delete(&*store, "a").await;
    assert_eq!((again.wrote, again.revision), (false, 3));
    assert_eq!(again.results, vec![OpResult::Delete { deleted: false }]);

    // Recreated: a new life, version 1 again, created at its revision.
    put(&*store, "a", b"3").await;
    let a = store.get_version(&key("a"), None).await.unwrap().unwrap();
    assert_eq!((a.revision, a.create_revision, a.version), (4, 4, 1));

    // Every past revision reads as it was.
    assert_eq!(value_at(&*store, "a", Some(0)).await, None);
    assert_eq!(
        value_at(&*store, "a", Some(1)).await.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        value_at(&*store, "a", Some(2)).await.as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(value_at(&*store, "a", Some(3)).await, None);
    assert_eq!(value_at(&*store, "b", Some(1)).await, None);
    assert_eq!(
        value_at(&*store, "b", Some(4)).await.as_deref(),
        Some(&b"x"[..])
    );
    // The tombstone is in the history, newest first.
    let history = store.key_history(&key("a"), None, 10).await.unwrap();
    let kinds: Vec<(u64, VersionKind, u64)> = history
        .versions
        .iter()
        .map(|version| (version.revision, version.kind, version.version))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (4, VersionKind::Put, 1),
            (3, VersionKind::Delete, 0),
            (2, VersionKind::Put, 2),
            (1, VersionKind::Put, 1)
        ]
    );
    assert_eq!(history.compacted_below, None);
    let older = store.key_history(&key("a"), Some(3), 1).await.unwrap();
    assert_eq!(older.versions.len(), 1);
    assert_eq!(older.versions[0].revision, 2);
    // A revision in the future is refused.
    assert!(matches!(
        store.get_version(&key("a"), Some(5)).await,
        Err(Error::FutureRevision {
            requested: 5,
            revision: 4
        })
    ));
}

/// Compares on version, mod revision, create revision and value pick the
/// branch; the failure branch can read the current value; a failed compare
/// with no failure ops writes nothing.
pub async fn conditional_writes(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    let create = |expect: Compare, value: &[u8]| Txn {
        compare: vec![expect],
        success: vec![put_op("k", value)],
        failure: vec![TxnOp::Get { key: key("k") }],
        author: None,
    };
    let made = store
        .txn(&create(Compare::absent(key("k")), b"v1"))
        .await
        .unwrap();
    assert!(made.succeeded);
    let again = store
        .txn(&create(Compare::absent(key("k")), b"no"))
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert!(!again.wrote);
    assert_eq!(again.revision, 1);
    match &again.results[..] {
        [OpResult::Get(Some(current))] => {
            assert_eq!(current.value.as_deref(), Some(&b"v1"[..]));
            assert_eq!(current.version, 1);
        }
        other => panic!("expected the current version, got {other:?}"),
    }
    // Version 1 is current: a write expecting it lands, a stale one not.
    let landed = store
        .txn(&create(Compare::version(key("k"), 1), b"v2"))
        .await
        .unwrap();
    assert!(landed.succeeded);
    let stale = store
        .txn(&create(Compare::version(key("k"), 1), b"lost"))
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(
        value_at(&*store, "k", None).await.as_deref(),
        Some(&b"v2"[..])
    );
    let by_revision = store
        .txn(&create(Compare::mod_revision(key("k"), 2), b"v3"))
        .await
        .unwrap();
    assert!(by_revision.succeeded);
    assert!(
        !store
            .txn(&create(Compare::mod_revision(key("k"), 2), b"lost"))
            .await
            .unwrap()
            .succeeded
    );
    let cases = [
        (CompareOp::Equal, CompareTarget::CreateRevision(1), true),
        (CompareOp::Greater, CompareTarget::Version(2), true),
        (CompareOp::Less, CompareTarget::Version(3), false),
        (CompareOp::NotEqual, CompareTarget::ModRevision(3), false),
        (CompareOp::Equal, CompareTarget::Value(b"v3".to_vec()), true),
        (CompareOp::Less, CompareTarget::Value(b"v4".to_vec()), true),
        (
            CompareOp::Greater,
            CompareTarget::Value(b"v4".to_vec()),
            false,
        ),
    ];
    for (op, target, holds) in cases {
        let probe = Txn {
            compare: vec![Compare {
                key: key("k"),
                op,
                target: target.clone(),
            }],
            ..Txn::default()
        };
        let response = store.txn(&probe).await.unwrap();
        assert_eq!(response.succeeded, holds, "{op:?} {target:?}");
        assert!(!response.wrote);
    }
    // Every compare must hold.
    let mixed = Txn {
        compare: vec![
            Compare::version(key("k"), 3),
            Compare::absent(key("other")),
            Compare::version(key("missing"), 1),
        ],
        success: vec![put_op("other", b"x")],
        ..Txn::default()
    };
    assert!(!store.txn(&mixed).await.unwrap().succeeded);
    assert_eq!(value_at(&*store, "other", None).await, None);
    // A value compare on an absent key is false, whatever the operator.
    let absent_value = Txn {
        compare: vec![Compare {
            key: key("missing"),
            op: CompareOp::NotEqual,
            target: CompareTarget::Value(b"x".to_vec()),
        }],
        ..Txn::default()
    };
    assert!(!store.txn(&absent_value).await.unwrap().succeeded);
    assert_eq!(revision(&*store).await, 3);
}

/// A transaction of 128 keys takes one revision and reads back whole; one
/// naming an unknown lease is refused and writes none of its keys.
pub async fn transactions_are_atomic(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    let names: Vec<String> = (0..MAX_TXN_OPS)
        .map(|index| format!("batch:{index:03}"))
        .collect();
    let big = Txn {
        success: names
            .iter()
            .map(|name| put_op(name, name.as_bytes()))
            .collect(),
        ..Txn::default()
    };
    let response = store.txn(&big).await.unwrap();
    assert_eq!(response.revision, 1);
    let changes = store.read_revisions(&prefix("batch:"), 0, 1).await.unwrap();
    assert_eq!(changes.len(), MAX_TXN_OPS, "a revision is never split");
    assert!(changes.iter().all(|version| version.revision == 1));
    let sorted: Vec<&str> = changes.iter().map(|version| version.key.as_str()).collect();
    let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "revision, then key order");

    let unknown = Txn {
        success: vec![
            put_op("batch:000", b"changed"),
            TxnOp::Put {
                key: key("leased"),
                value: b"x".to_vec(),
                lease: Some(LeaseId(999)),
            },
        ],
        ..Txn::default()
    };
    assert!(matches!(
        store.txn(&unknown).await,
        Err(Error::LeaseNotFound {
            lease: LeaseId(999)
        })
    ));
    assert_eq!(
        value_at(&*store, "batch:000", None).await.as_deref(),
        Some(&b"batch:000"[..])
    );
    assert_eq!(value_at(&*store, "leased", None).await, None);
    assert_eq!(revision(&*store).await, 1);
}

/// Bad input gets a typed error and changes nothing.
pub async fn bad_input_changes_nothing(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    put(&*store, "seed", b"1").await;
    let invalid = |result: crate::Result<TxnResponse>| match result {
        Err(Error::InvalidRequest { reason }) => reason,
        other => panic!("expected InvalidRequest, got {other:?}"),
    };
    let too_many = Txn {
        success: (0..=MAX_TXN_OPS)
            .map(|index| put_op(&format!("k{index}"), b"v"))
            .collect(),
        ..Txn::default()
    };
    assert_eq!(
        invalid(store.txn(&too_many).await),
        InvalidRequest::TooManyOps {
            part: "success",
            count: MAX_TXN_OPS + 1
        }
    );
    let compares = Txn {
        compare: (0..=MAX_TXN_OPS)
            .map(|index| Compare::absent(key(&format!("k{index}"))))
            .collect(),
        ..Txn::default()
    };
    assert!(matches!(
        invalid(store.txn(&compares).await),
        InvalidRequest::TooManyOps {
            part: "compare",
            ..
        }
    ));
    let twice = Txn {
        failure: vec![put_op("dup", b"1"), TxnOp::Delete { key: key("dup") }],
        ..Txn::default()
    };
    assert_eq!(
        invalid(store.txn(&twice).await),
        InvalidRequest::DuplicateKey { key: key("dup") }
    );
    let oversize = Txn {
        success: vec![put_op("big", &vec![0; MAX_VALUE_BYTES + 1])],
        ..Txn::default()
    };
    assert_eq!(
        invalid(store.txn(&oversize).await),
        InvalidRequest::ValueTooLarge {
            key: key("big"),
            size: MAX_VALUE_BYTES + 1
        }
    );
    // The limit itself is accepted.
    let largest = Txn {
        success: vec![put_op("big", &vec![7; MAX_VALUE_BYTES])],
        ..Txn::default()
    };
    store.txn(&largest).await.unwrap();
    assert_eq!(
        value_at(&*store, "big", None)
            .await
            .map(|value| value.len()),
        Some(MAX_VALUE_BYTES)
    );
    let head = revision(&*store).await;
    assert!(matches!(
        store.get_version(&key("seed"), Some(head + 1)).await,
        Err(Error::FutureRevision { .. })
    ));
    assert!(matches!(
        store
            .range(&RangeRequest {
                at: Some(head + 10),
                ..RangeRequest::new(KeyPrefix::ALL, 10)
            })
            .await,
        Err(Error::FutureRevision { .. })
    ));
    assert!(matches!(
        store.compact(head + 1, 10).await,
        Err(Error::FutureRevision { .. })
    ));
    for limit in [0, crate::versioned::MAX_READ_LIMIT + 1] {
        assert!(matches!(
            store.key_history(&key("seed"), None, limit).await,
            Err(Error::InvalidRequest {
                reason: InvalidRequest::BadLimit { .. }
            })
        ));
        assert!(matches!(
            store.range(&RangeRequest::new(KeyPrefix::ALL, limit)).await,
            Err(Error::InvalidRequest { .. })
        ));
        assert!(matches!(
            store.read_revisions(&KeyPrefix::ALL, 0, limit).await,
            Err(Error::InvalidRequest { .. })
        ));
    }
    assert!(matches!(
        store.compact(1, 0).await,
        Err(Error::InvalidRequest {
            reason: InvalidRequest::BadKeepVersions
        })
    ));
    for ttl in [
        Duration::from_millis(999),
        Duration::from_secs(24 * 3600 + 1),
    ] {
        assert!(matches!(
            store.grant_lease(ttl).await,
            Err(Error::InvalidRequest {
                reason: InvalidRequest::BadLeaseTtl { .. }
            })
        ));
    }
    assert!(matches!(
        store.purge_prefix(&KeyPrefix::ALL, None).await,
        Err(Error::InvalidRequest {
            reason: InvalidRequest::EmptyPrefix
        })
    ));
    for hostile in ["../etc", "a/b", ".hidden", "a\0b", "é"] {
        assert!(KeyPrefix::parse(hostile).is_err(), "{hostile:?}");
    }
    assert_eq!(revision(&*store).await, head, "nothing was written");
    let stats = store.versioned_stats().await.unwrap();
    assert_eq!((stats.keys, stats.leases), (2, 0));
    assert_eq!(stats.bounds.compact_revision, 0);
}

/// Ranges by prefix, in key order, in pages, at the latest or a past
/// revision; deleted keys and other prefixes are left out.
pub async fn range_pages(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    for name in [
        "agent:a", "agent:b", "agent:c", "agent:d", "agent.x", "agenta", "b",
    ] {
        put(&*store, name, name.as_bytes()).await;
    }
    let before_delete = revision(&*store).await;
    delete(&*store, "agent:b").await;
    put(&*store, "agent:c", b"changed").await;
    let mut request = RangeRequest::new(prefix("agent:"), 2);
    let first = store.range(&request).await.unwrap();
    let names = |page: &crate::versioned::RangePage| -> Vec<String> {
        page.items.iter().map(|item| item.key.to_string()).collect()
    };
    assert_eq!(names(&first), ["agent:a", "agent:c"]);
    assert_eq!(first.next, Some(key("agent:c")));
    assert_eq!(first.revision, revision(&*store).await);
    assert_eq!(first.items[1].value.as_deref(), Some(&b"changed"[..]));
    request.after_key = first.next.clone();
    let second = store.range(&request).await.unwrap();
    assert_eq!(names(&second), ["agent:d"]);
    assert_eq!(second.next, None);
    // At a past revision: as it was then.
    let past = store
        .range(&RangeRequest {
            at: Some(before_delete),
            ..RangeRequest::new(prefix("agent:"), 10)
        })
        .await
        .unwrap();
    assert_eq!(names(&past), ["agent:a", "agent:b", "agent:c", "agent:d"]);
    assert_eq!(past.items[2].value.as_deref(), Some(&b"agent:c"[..]));
    let everything = store
        .range(&RangeRequest::new(KeyPrefix::ALL, 100))
        .await
        .unwrap();
    assert_eq!(everything.items.len(), 6);
    let exact = store
        .range(&RangeRequest::new(prefix("b"), 100))
        .await
        .unwrap();
    assert_eq!(names(&exact), ["b"]);
}

/// `read_revisions` returns whole revisions in order, filtered by prefix,
/// at least `limit` versions unless fewer exist.
pub async fn revisions_are_read_whole(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    for round in 0..5_u8 {
        store
            .txn(&Txn {
                success: vec![
                    put_op("w:a", &[round]),
                    put_op("w:b", &[round]),
                    put_op("x:c", &[round]),
                ],
                ..Txn::default()
            })
            .await
            .unwrap();
    }
    let watched = prefix("w:");
    let page = store.read_revisions(&watched, 0, 3).await.unwrap();
    let seen: Vec<(u64, &str)> = page
        .iter()
        .map(|version| (version.revision, version.key.as_str()))
        .collect();
    assert_eq!(seen, [(1, "w:a"), (1, "w:b"), (2, "w:a"), (2, "w:b")]);
    let rest = store.read_revisions(&watched, 2, 100).await.unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(rest.first().map(|version| version.revision), Some(3));
    assert_eq!(rest.last().map(|version| version.revision), Some(5));
    assert!(
        store
            .read_revisions(&watched, 5, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Compaction keeps each live key's newest N and its version at the point,
/// drops keys deleted before it, and what it removed reads as `Compacted`,
/// never as a shorter history.
pub async fn compaction(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    for value in 1..=6_u8 {
        put(&*store, "hot", &[value]).await; // revisions 1..=6
    }
    put(&*store, "cold", b"c").await; // 7
    put(&*store, "doomed", b"d").await; // 8
    delete(&*store, "doomed").await; // 9
    put(&*store, "hot", &[7]).await; // 10
    let outcome = store.compact(10, 2).await.unwrap();
    assert_eq!(outcome.compact_revision, 10);
    // hot keeps 10 and 6 (its newest two); 1..=5 go. doomed, deleted
    // below the point, goes whole (2 versions).
    assert_eq!(outcome.removed, 7);
    let history = store.key_history(&key("hot"), None, 10).await.unwrap();
    let revisions: Vec<u64> = history.versions.iter().map(|v| v.revision).collect();
    assert_eq!(revisions, [10, 6]);
    assert_eq!(history.compacted_below, Some(6));
    assert_eq!(value_at(&*store, "hot", Some(9)).await, Some(vec![6]));
    assert_eq!(value_at(&*store, "hot", Some(6)).await, Some(vec![6]));
    assert!(matches!(
        store.get_version(&key("hot"), Some(5)).await,
        Err(Error::Compacted {
            compact_revision: 10
        })
    ));
    // cold was never trimmed: its full history still answers below.
    assert_eq!(
        value_at(&*store, "cold", Some(7)).await,
        Some(b"c".to_vec())
    );
    assert!(matches!(
        store.get_version(&key("cold"), Some(3)).await,
        Err(Error::Compacted { .. })
    ));
    assert_eq!(value_at(&*store, "doomed", Some(10)).await, None);
    assert!(matches!(
        store.get_version(&key("doomed"), Some(8)).await,
        Err(Error::Compacted { .. })
    ));
    assert!(matches!(
        store.read_revisions(&KeyPrefix::ALL, 8, 10).await,
        Err(Error::Compacted {
            compact_revision: 10
        })
    ));
    let from_point = store.read_revisions(&KeyPrefix::ALL, 9, 10).await.unwrap();
    assert_eq!(
        from_point.iter().map(|v| v.revision).collect::<Vec<_>>(),
        [10]
    );
    assert!(matches!(
        store
            .range(&RangeRequest {
                at: Some(9),
                ..RangeRequest::new(KeyPrefix::ALL, 10)
            })
            .await,
        Err(Error::Compacted { .. })
    ));
    // The point never moves back.
    assert_eq!(store.compact(3, 2).await.unwrap().compact_revision, 10);
    let stats = store.versioned_stats().await.unwrap();
    assert_eq!((stats.keys, stats.versions), (2, 3));
    assert_eq!(stats.bounds.compact_revision, 10);
}

/// Keys put with a lease are deleted together, in one revision, when it is
/// revoked or expires; keep-alive extends it.
pub async fn leases(backend: &impl Backend) {
    let clock = test_clock();
    let store = backend.open(clock.clone()).await;
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        lease.expires_at,
        clock.now().saturating_add(Duration::from_secs(10))
    );
    let leased = |name: &str, lease: LeaseId| TxnOp::Put {
        key: key(name),
        value: b"x".to_vec(),
        lease: Some(lease),
    };
    store
        .txn(&Txn {
            success: vec![leased("lock:a", lease.id), leased("lock:b", lease.id)],
            ..Txn::default()
        })
        .await
        .unwrap();
    put(&*store, "plain", b"p").await;
    let version = store
        .get_version(&key("lock:a"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(version.lease, Some(lease.id));
    clock.advance(Duration::from_secs(8));
    let renewed = store.keep_lease_alive(lease.id).await.unwrap();
    assert_eq!(
        renewed.expires_at,
        clock.now().saturating_add(Duration::from_secs(10))
    );
    clock.advance(Duration::from_secs(8));
    assert_eq!(store.expire_leases().await.unwrap(), 0, "it was renewed");
    assert!(value_at(&*store, "lock:a", None).await.is_some());
    clock.advance(Duration::from_secs(2));
    let before = revision(&*store).await;
    assert_eq!(store.expire_leases().await.unwrap(), 1);
    assert_eq!(
        revision(&*store).await,
        before + 1,
        "one revision for both keys"
    );
    assert_eq!(value_at(&*store, "lock:a", None).await, None);
    assert_eq!(value_at(&*store, "lock:b", None).await, None);
    assert!(value_at(&*store, "plain", None).await.is_some());
    assert!(matches!(
        store.keep_lease_alive(lease.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
    // Revoking by hand; a put without the lease detaches the key.
    let second = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    assert_ne!(second.id, lease.id);
    store
        .txn(&Txn {
            success: vec![leased("lock:c", second.id), leased("lock:d", second.id)],
            ..Txn::default()
        })
        .await
        .unwrap();
    put(&*store, "lock:d", b"detached").await;
    let revoked = store.revoke_lease(second.id, None).await.unwrap();
    assert_eq!(revoked, Some(revision(&*store).await));
    assert_eq!(value_at(&*store, "lock:c", None).await, None);
    assert!(value_at(&*store, "lock:d", None).await.is_some());
    assert!(matches!(
        store.revoke_lease(second.id, None).await,
        Err(Error::LeaseNotFound { .. })
    ));
    // An expired lease cannot take keys.
    let short = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        store
            .txn(&Txn {
                success: vec![leased("late", short.id)],
                ..Txn::default()
            })
            .await,
        Err(Error::LeaseNotFound { .. })
    ));
    assert_eq!(store.versioned_stats().await.unwrap().leases, 1);
}

/// Purging a prefix deletes its live keys in one revision and erases every
/// older value under it; the revisions stay (as purged versions), other
/// keys are untouched.
pub async fn purge(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    put(&*store, "session:1:notes", b"secret-1").await; // 1
    put(&*store, "session:1:notes", b"secret-2").await; // 2
    put(&*store, "session:1:plan", b"secret-3").await; // 3
    delete(&*store, "session:1:plan").await; // 4
    put(&*store, "session:10:notes", b"other").await; // 5
    put(&*store, "session:2:notes", b"kept").await; // 6
    let outcome = store
        .purge_prefix(&prefix("session:1:"), None)
        .await
        .unwrap();
    assert_eq!(outcome.revision, Some(7));
    assert_eq!((outcome.deleted, outcome.erased), (1, 3));
    assert_eq!(value_at(&*store, "session:1:notes", None).await, None);
    let old = store
        .get_version(&key("session:1:notes"), Some(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old.kind, old.value), (VersionKind::Purged, None));
    let everything = store.read_revisions(&KeyPrefix::ALL, 0, 100).await.unwrap();
    assert_eq!(
        everything.iter().map(|v| v.revision).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7],
        "no revision disappears"
    );
    assert!(
        everything
            .iter()
            .filter(|v| v.key.as_str().starts_with("session:1:"))
            .all(|v| v.value.is_none()),
        "no value under the prefix survives"
    );
    assert_eq!(
        value_at(&*store, "session:10:notes", None).await.as_deref(),
        Some(&b"other"[..])
    );
    assert_eq!(
        value_at(&*store, "session:2:notes", None).await.as_deref(),
        Some(&b"kept"[..])
    );
    let nothing = store
        .purge_prefix(&prefix("session:1:"), None)
        .await
        .unwrap();
    assert_eq!(
        (nothing.revision, nothing.deleted, nothing.erased),
        (None, 0, 0)
    );
}

/// Concurrent compare-and-set increments lose nothing; revisions stay
/// gap-free and each is read exactly once, in order.
pub async fn concurrent_writers_lose_nothing(backend: &impl Backend) {
    let store: Arc<dyn Store> = backend.open(test_clock()).await;
    let (tasks, increments) = (8, 40_u64);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let counter = key(&format!("counter:{}", task % 2));
            let mut done = 0;
            while done < increments {
                let current = store.get_version(&counter, None).await.unwrap();
                let (value, version) = current.map_or((0, 0), |version| {
                    let text = String::from_utf8(version.value.unwrap()).unwrap();
                    (text.parse::<u64>().unwrap(), version.version)
                });
                let attempt = Txn {
                    compare: vec![Compare::version(counter.clone(), version)],
                    success: vec![TxnOp::Put {
                        key: counter.clone(),
                        value: (value + 1).to_string().into_bytes(),
                        lease: None,
                    }],
                    ..Txn::default()
                };
                if store.txn(&attempt).await.unwrap().succeeded {
                    done += 1;
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let total = |name: &str| {
        let store = Arc::clone(&store);
        let name = name.to_owned();
        async move {
            String::from_utf8(value_at(&*store, &name, None).await.unwrap())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let expected = increments * tasks as u64 / 2;
    assert_eq!(total("counter:0").await, expected);
    assert_eq!(total("counter:1").await, expected);
    let head = revision(&*store).await;
    assert_eq!(head, increments * tasks as u64, "one revision per write");
    let mut seen = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store
            .read_revisions(&KeyPrefix::ALL, after, 50)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.revision;
        for version in page {
            *seen.entry(version.revision).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len() as u64, head);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(index, (revision, count))| { *revision == index as u64 + 1 && *count == 1 })
    );
}

/// Everything survives a reopen: values, history, the compaction point,
/// leases.
pub async fn persistence_across_reopen(backend: &impl Backend) {
    if !backend.persistent() {
        return;
    }
    let clock = test_clock();
    let lease = {
        let store = backend.open(clock.clone()).await;
        put(&*store, "p", b"1").await;
        put(&*store, "p", b"2").await;
        put(&*store, "p", b"3").await;
        store.compact(2, 1).await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        store.close().await.unwrap();
        lease
    };
    let store = backend.open(clock.clone()).await;
    let bounds = store.revision_bounds().await.unwrap();
    assert_eq!((bounds.revision, bounds.compact_revision), (3, 2));
    assert_eq!(value_at(&*store, "p", Some(2)).await, Some(b"2".to_vec()));
    assert!(matches!(
        store.get_version(&key("p"), Some(1)).await,
        Err(Error::Compacted { .. })
    ));
    assert_eq!(store.keep_lease_alive(lease.id).await.unwrap().id, lease.id);
    assert_eq!(put(&*store, "p", b"4").await.revision, 4);
}

/// `wait_for_revision` wakes at once on a write, and answers at the
/// timeout otherwise.
pub async fn wakeups(backend: &impl Backend) {
    let store: Arc<dyn Store> = backend.open(test_clock()).await;
    assert_eq!(
        store
            .wait_for_revision(0, Duration::from_millis(10))
            .await
            .unwrap(),
        0
    );
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.wait_for_revision(0, Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    put(&*store, "wake", b"up").await;
    // Woken by the write, long before the waiter's own timeout.
    let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the write wakes the waiter");
    assert_eq!(woken.unwrap().unwrap(), 1);
    assert_eq!(
        store
            .wait_for_revision(0, Duration::from_secs(30))
            .await
            .unwrap(),
        1,
        "already past: no wait"
    );
}

/// A closed store refuses versioned calls.
pub async fn closed_store_refuses_calls(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    put(&*store, "k", b"v").await;
    store.close().await.unwrap();
    assert!(matches!(
        store.txn(&Txn::default()).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        store.get_version(&key("k"), None).await,
        Err(Error::Closed)
    ));
}
