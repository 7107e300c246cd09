//! The state store's behaviour above storage: conflict policies, updates,
//! patches and diffs, watches, leases, bad input.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use smalltalk_state::policy::FieldConflict;
use smalltalk_state::{
    ChangeKind, ConflictPolicy, Error, Expect, KeyPrefix, ListOptions, Namespace, Policies,
    Resolution, Resolved, StateConfig, StateStore, WatchEvent,
};
use smalltalk_storage::{MemoryStore, VersionedStore};
use smalltalk_types::{AgentId, Clock, ManualClock, SessionId, StorageKey, Timestamp};

fn memory() -> Arc<dyn VersionedStore> {
    Arc::new(MemoryStore::new())
}

/// Every embedded backend: in memory and SQLite (PostgreSQL runs the same
/// storage contract; what is tested here is above storage). The directory
/// keeps the SQLite file alive.
async fn backends() -> Vec<(
    &'static str,
    Arc<dyn VersionedStore>,
    Option<tempfile::TempDir>,
)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = smalltalk_storage::sqlite::SqliteStore::open(dir.path().join("state.db"))
        .await
        .unwrap();
    vec![
        ("memory", memory(), None),
        ("sqlite", Arc::new(sqlite), Some(dir)),
    ]
}

fn prefix(text: &str) -> KeyPrefix {
    KeyPrefix::parse(text).unwrap()
}

fn with_policies(policies: Policies) -> StateStore {
    StateStore::builder(memory())
        .policies(policies)
        .build()
        .unwrap()
}

#[tokio::test]
async fn reject_carries_the_version_found_and_writes_nothing() {
    for (backend, store, _dir) in backends().await {
        eprintln!("{backend}");
        let state = StateStore::new(store);
        let first = state.put("doc", json!({"n": 1})).await.unwrap().entry;
        state
            .put_if("doc", json!({"n": 2}), Expect::read(Some(&first)))
            .await
            .unwrap();
        let stale = state
            .put_if("doc", json!({"n": 3}), Expect::read(Some(&first)))
            .await;
        match stale {
            Err(Error::Conflict {
                key,
                expected,
                current,
            }) => {
                assert_eq!(key.as_str(), "doc");
                assert_eq!(expected, Expect::Revision(first.revision));
                let current = current.expect("the key exists");
                assert_eq!(
                    (current.version, current.value.clone()),
                    (2, json!({"n": 2}))
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(
            state.get("doc").await.unwrap().unwrap().value,
            json!({"n": 2})
        );
        assert!(matches!(
            state.put_if("doc", json!(0), Expect::Absent).await,
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            state.put_if("doc", json!(0), Expect::Version(1)).await,
            Err(Error::Conflict { .. })
        ));
        let stats = state.stats().await.unwrap();
        assert_eq!((stats.conflicts, stats.overwrites), (3, 0));
    }
}

#[tokio::test]
async fn last_write_wins_overwrites_and_counts() {
    let state = with_policies(Policies::new().with_default(ConflictPolicy::LastWriteWins));
    let first = state.put("doc", json!(1)).await.unwrap().entry;
    state.put("doc", json!(2)).await.unwrap();
    let outcome = state
        .put_if("doc", json!(3), Expect::read(Some(&first)))
        .await
        .unwrap();
    assert_eq!(outcome.resolved, Some(Resolved::Overwrote));
    assert_eq!(outcome.entry.version, 3);
    assert_eq!(state.get("doc").await.unwrap().unwrap().value, json!(3));
    let stats = state.stats().await.unwrap();
    assert_eq!((stats.conflicts, stats.overwrites), (1, 1));
}

#[tokio::test]
async fn merge_combines_fields_and_refuses_a_field_changed_on_both_sides() {
    for (backend, store, _dir) in backends().await {
        eprintln!("{backend}");
        let state = StateStore::builder(store)
            .policies(Policies::new().with(prefix("shared:"), ConflictPolicy::merge()))
            .build()
            .unwrap();
        let base = state
            .put(
                "shared:doc",
                json!({"title": "a", "body": "x", "tags": ["t"]}),
            )
            .await
            .unwrap()
            .entry;
        let read = Expect::read(Some(&base));
        state
            .put_if(
                "shared:doc",
                json!({"title": "b", "body": "x", "tags": ["t"]}),
                read,
            )
            .await
            .unwrap();
        let merged = state
            .put_if(
                "shared:doc",
                json!({"title": "a", "body": "y", "tags": ["t"]}),
                read,
            )
            .await
            .unwrap();
        assert_eq!(merged.resolved, Some(Resolved::Merged));
        assert_eq!(
            state.get("shared:doc").await.unwrap().unwrap().value,
            json!({"title": "b", "body": "y", "tags": ["t"]})
        );
        // The title changed on both sides since `base`: no resolver, refused.
        let conflicting = state
            .put_if(
                "shared:doc",
                json!({"title": "c", "body": "x", "tags": ["t"]}),
                read,
            )
            .await;
        match conflicting {
            Err(Error::MergeConflict { paths, current, .. }) => {
                assert_eq!(paths, ["/title"]);
                assert_eq!(current.unwrap().version, 3);
            }
            other => panic!("expected a merge conflict, got {other:?}"),
        }
        assert_eq!(state.get("shared:doc").await.unwrap().unwrap().version, 3);
        // Outside the prefix the default (reject) holds.
        let plain = state.put("plain", json!({"a": 1})).await.unwrap().entry;
        state.put("plain", json!({"a": 1, "b": 2})).await.unwrap();
        assert!(matches!(
            state
                .put_if("plain", json!({"a": 2}), Expect::read(Some(&plain)))
                .await,
            Err(Error::Conflict { .. })
        ));
    }
}

#[tokio::test]
async fn a_merge_resolver_settles_fields_changed_on_both_sides() {
    // Counters: both sides' increments add up.
    let resolver = |conflict: &FieldConflict<'_>| {
        let number = |value: Option<&Value>| value.and_then(Value::as_i64).unwrap_or(0);
        Resolution::Use(json!(
            number(conflict.theirs) + number(conflict.ours) - number(conflict.base)
        ))
    };
    let state = with_policies(
        Policies::new().with(prefix("counters:"), ConflictPolicy::merge_with(resolver)),
    );
    let base = state
        .put("counters:x", json!({"hits": 10}))
        .await
        .unwrap()
        .entry;
    state
        .put_if(
            "counters:x",
            json!({"hits": 12}),
            Expect::Version(base.version),
        )
        .await
        .unwrap();
    state
        .put_if(
            "counters:x",
            json!({"hits": 15}),
            Expect::Version(base.version),
        )
        .await
        .unwrap();
    assert_eq!(
        state.get("counters:x").await.unwrap().unwrap().value,
        json!({"hits": 17})
    );
}

#[tokio::test]
async fn a_custom_resolver_decides() {
    let policy = ConflictPolicy::custom(|conflict| {
        let theirs = conflict
            .theirs
            .map_or(0, |entry| entry.value.as_i64().unwrap_or(0));
        let ours = conflict.ours.as_i64().unwrap_or(0);
        if ours > theirs {
            Resolution::Use(json!(ours))
        } else {
            Resolution::Reject
        }
    });
    let state = with_policies(Policies::new().with_default(policy));
    let base = state.put("max", json!(1)).await.unwrap().entry;
    state.put("max", json!(5)).await.unwrap();
    assert!(matches!(
        state
            .put_if("max", json!(3), Expect::read(Some(&base)))
            .await,
        Err(Error::Rejected { .. })
    ));
    let won = state
        .put_if("max", json!(9), Expect::read(Some(&base)))
        .await
        .unwrap();
    assert_eq!(won.resolved, Some(Resolved::Resolver));
    assert_eq!(state.get("max").await.unwrap().unwrap().value, json!(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_lose_nothing() {
    for (backend, store, _dir) in backends().await {
        eprintln!("{backend}");
        let state = StateStore::new(store);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    state
                        .update("counter", |current| {
                            json!(current.and_then(Value::as_u64).unwrap_or(0) + 1)
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let counter = state.get("counter").await.unwrap().unwrap();
        assert_eq!((counter.value, counter.version), (json!(800), 800));
    }
}

#[tokio::test]
async fn a_failing_update_closure_writes_nothing() {
    #[derive(Debug)]
    enum AppError {
        Refused,
        State(#[allow(dead_code)] Error),
    }
    impl From<Error> for AppError {
        fn from(error: Error) -> Self {
            AppError::State(error)
        }
    }
    let state = StateStore::new(memory());
    state.put("k", json!(1)).await.unwrap();
    let outcome = state
        .try_update("k", |_| Err::<Value, _>(AppError::Refused))
        .await;
    assert!(matches!(outcome, Err(AppError::Refused)));
    assert_eq!(state.revision().await.unwrap().revision, 1);
}

#[tokio::test]
async fn an_update_gives_up_at_its_timeout() {
    let state = StateStore::builder(memory())
        .config(StateConfig {
            update_timeout: Duration::from_millis(20),
            ..Default::default()
        })
        .build()
        .unwrap();
    let writer = state.clone();
    // Every attempt meets a newer version: the closure itself moves the key.
    let outcome = state
        .update("hot", |current| {
            let writer = writer.clone();
            let next = current.and_then(Value::as_u64).unwrap_or(0) + 1;
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(writer.put("hot", json!(1000 + next)))
                    .unwrap();
            })
            .join()
            .unwrap();
            json!(next)
        })
        .await;
    assert!(
        matches!(outcome, Err(Error::Contention { attempts, .. }) if attempts >= 1),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn patch_merges_and_diff_is_a_json_patch_between_revisions() {
    let state = StateStore::new(memory());
    let first = state
        .put(
            "profile",
            json!({"name": "Ada", "langs": ["en"], "age": 36}),
        )
        .await
        .unwrap()
        .entry;
    let patched = state
        .patch("profile", &json!({"age": null, "city": "London"}))
        .await
        .unwrap();
    assert_eq!(
        patched.value,
        json!({"name": "Ada", "langs": ["en"], "city": "London"})
    );
    // An absent key is patched from null.
    let fresh = state.patch("new", &json!({"a": 1})).await.unwrap();
    assert_eq!(fresh.value, json!({"a": 1}));
    let diff = state
        .diff("profile", first.revision, patched.revision)
        .await
        .unwrap();
    let mut document = first.value.clone();
    json_patch::patch(&mut document, &diff).unwrap();
    assert_eq!(document, patched.value);
    // Backwards too, and from before the key existed.
    let back = state
        .diff("profile", patched.revision, first.revision)
        .await
        .unwrap();
    let mut document = patched.value.clone();
    json_patch::patch(&mut document, &back).unwrap();
    assert_eq!(document, first.value);
    let created = state.diff("profile", 0, first.revision).await.unwrap();
    let mut document = Value::Null;
    json_patch::patch(&mut document, &created).unwrap();
    assert_eq!(document, first.value);
    assert!(matches!(
        state.diff("profile", 0, 99).await,
        Err(Error::FutureRevision { .. })
    ));
}

#[tokio::test]
async fn history_and_get_at_record_author_and_time() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(
        1_700_000_000_000_000,
    )));
    let state = StateStore::new(Arc::new(MemoryStore::with_clock(clock.clone())));
    let planner = state.as_author("planner").unwrap();
    let critic = state.as_author(AgentId::parse("critic").unwrap()).unwrap();
    planner.put("plan", json!("draft")).await.unwrap();
    clock.advance(Duration::from_secs(5));
    critic.put("plan", json!("reviewed")).await.unwrap();
    planner.delete("plan").await.unwrap();
    let history = state.history("plan", 10).await.unwrap();
    let seen: Vec<(ChangeKind, Option<&str>, Option<Value>)> = history
        .changes
        .iter()
        .map(|change| {
            (
                change.kind,
                change.author.as_ref().map(AgentId::as_str),
                change.value.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (ChangeKind::Delete, Some("planner"), None),
            (ChangeKind::Put, Some("critic"), Some(json!("reviewed"))),
            (ChangeKind::Put, Some("planner"), Some(json!("draft"))),
        ]
    );
    assert_eq!(history.changes[1].timestamp, clock.now());
    assert_eq!(
        state.get_at("plan", 1).await.unwrap().unwrap().value,
        json!("draft")
    );
    assert_eq!(state.get_at("plan", 3).await.unwrap(), None);
    assert_eq!(state.history("plan", 1).await.unwrap().changes.len(), 1);
}

#[tokio::test]
async fn bad_input_gets_a_typed_error_and_changes_nothing() {
    let state = StateStore::builder(memory())
        .config(StateConfig {
            max_value_bytes: 1024,
            ..Default::default()
        })
        .build()
        .unwrap();
    state.put("seed", json!(1)).await.unwrap();
    assert!(matches!(
        state.put("../etc/passwd", json!(1)).await,
        Err(Error::Domain(smalltalk_types::Error::InvalidId { .. }))
    ));
    assert!(matches!(
        state.list("a/b", &ListOptions::default()).await,
        Err(Error::Domain(smalltalk_types::Error::InvalidId { .. }))
    ));
    assert!(matches!(
        state.put("big", json!("x".repeat(2000))).await,
        Err(Error::ValueTooLarge {
            size: 2002,
            limit: 1024,
            ..
        })
    ));
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    assert!(matches!(
        state.put("deep", deep).await,
        Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
    ));
    assert!(matches!(
        state.history("seed", 0).await,
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        state.get_at("seed", 2).await,
        Err(Error::FutureRevision {
            requested: 2,
            revision: 1
        })
    ));
    let mut too_many = state.txn();
    for index in 0..129 {
        too_many = too_many.put(format!("k{index}"), json!(index));
    }
    assert!(matches!(
        too_many.commit().await,
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        state
            .txn()
            .put("dup", json!(1))
            .delete("dup")
            .commit()
            .await,
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        state
            .txn()
            .put("ok", json!(1))
            .put("bad key", json!(2))
            .commit()
            .await,
        Err(Error::Domain(_))
    ));
    assert!(matches!(
        state
            .txn()
            .put("ok", json!("y".repeat(4000)))
            .commit()
            .await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(
        state.revision().await.unwrap().revision,
        1,
        "nothing was written"
    );
    // Configuration out of range names the field.
    let bad = StateStore::builder(memory())
        .config(StateConfig {
            keep_versions: 0,
            ..Default::default()
        })
        .build();
    assert!(matches!(
        bad,
        Err(Error::Domain(smalltalk_types::Error::InvalidConfig {
            field: "keep_versions",
            ..
        }))
    ));
}

#[tokio::test]
async fn a_watch_gets_whole_revisions_in_order_then_progress() {
    for (backend, store, _dir) in backends().await {
        eprintln!("{backend}");
        let state = StateStore::builder(store)
            .config(StateConfig {
                progress_interval: Duration::from_millis(50),
                ..Default::default()
            })
            .build()
            .unwrap();
        state.put("w:before", json!(0)).await.unwrap();
        let mut from_start = state.watch("w:", Some(1)).await.unwrap();
        let mut live = state.watch("w:", None).await.unwrap();
        let txn = state
            .txn()
            .put("w:a", json!(1))
            .put("w:b", json!(2))
            .put("elsewhere", json!(3))
            .commit()
            .await
            .unwrap();
        state.delete("w:a").await.unwrap();
        let next = |event: Option<smalltalk_state::Result<WatchEvent>>| match event {
            Some(Ok(WatchEvent::Changes { revision, changes })) => (
                revision,
                changes
                    .into_iter()
                    .map(|change| (change.key.to_string(), change.kind))
                    .collect::<Vec<_>>(),
            ),
            other => panic!("expected changes, got {other:?}"),
        };
        assert_eq!(
            next(from_start.next().await),
            (1, vec![("w:before".into(), ChangeKind::Put)])
        );
        for watch in [&mut from_start, &mut live] {
            assert_eq!(
                next(watch.next().await),
                (
                    txn.revision,
                    vec![
                        ("w:a".into(), ChangeKind::Put),
                        ("w:b".into(), ChangeKind::Put)
                    ]
                ),
                "one revision, whole, without the key outside the prefix"
            );
            assert_eq!(
                next(watch.next().await),
                (txn.revision + 1, vec![("w:a".into(), ChangeKind::Delete)])
            );
            match watch.next().await {
                Some(Ok(WatchEvent::Progress { revision })) => {
                    assert_eq!(revision, txn.revision + 1)
                }
                other => panic!("expected progress, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_watch_below_the_compaction_point_ends_with_compacted() {
    for (backend, store, _dir) in backends().await {
        eprintln!("{backend}");
        let state = StateStore::new(store);
        for value in 0..5 {
            state.put("c:k", json!(value)).await.unwrap();
        }
        state.compact_to(4).await.unwrap();
        let mut watch = state.watch("c:", Some(2)).await.unwrap();
        assert!(matches!(
            watch.next().await,
            Some(Err(Error::Compacted {
                compact_revision: 4
            }))
        ));
        assert!(watch.next().await.is_none(), "the watch ends");
        // From the point itself, it goes on.
        let mut watch = state.watch("c:", Some(4)).await.unwrap();
        assert!(matches!(
            watch.next().await,
            Some(Ok(WatchEvent::Changes { revision: 4, .. }))
        ));
    }
}

#[tokio::test]
async fn a_key_watch_sees_that_key_only() {
    let state = StateStore::new(memory());
    let mut watch = state.watch_key("a:1", None).await.unwrap();
    state.put("a:10", json!("longer key")).await.unwrap();
    state.put("a:1", json!("the key")).await.unwrap();
    match watch.next().await {
        Some(Ok(WatchEvent::Changes { revision, changes })) => {
            assert_eq!(revision, 2);
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].key.as_str(), "a:1");
        }
        other => panic!("expected a:1's change, got {other:?}"),
    }
    let page = state
        .list(
            "a:",
            &ListOptions {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.next.as_ref().map(StorageKey::as_str), Some("a:1"));
    for revision in [3, 4] {
        state.put("a:1", json!(revision)).await.unwrap();
    }
    let newest = state.history("a:1", 2).await.unwrap();
    let older = state
        .history_before("a:1", newest.changes[1].revision, 10)
        .await
        .unwrap();
    assert_eq!(
        older.changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [2]
    );
}

#[tokio::test]
async fn compaction_by_configuration_keeps_the_last_versions() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(
        1_700_000_000_000_000,
    )));
    let state = StateStore::builder(Arc::new(MemoryStore::with_clock(clock.clone())))
        .config(StateConfig {
            keep_versions: 3,
            retention: Duration::from_secs(3600),
            ..Default::default()
        })
        .clock(clock.clone())
        .build()
        .unwrap();
    for value in 0..10 {
        state.put("k", json!(value)).await.unwrap();
    }
    // Nothing is older than the retention yet.
    assert_eq!(state.compact().await.unwrap().removed, 0);
    clock.advance(Duration::from_secs(7200));
    state.put("k", json!(10)).await.unwrap();
    let outcome = state.compact().await.unwrap();
    assert_eq!(outcome.compact_revision, 10);
    let history = state.history("k", 100).await.unwrap();
    assert_eq!(history.changes.len(), 3);
    assert_eq!(history.compacted_below, Some(9));
    assert!(matches!(
        state.get_at("k", 5).await,
        Err(Error::Compacted { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn maintenance_expires_leases() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(
        1_700_000_000_000_000,
    )));
    let state = StateStore::builder(Arc::new(MemoryStore::with_clock(clock.clone())))
        .config(StateConfig {
            lease_check_interval: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
        .unwrap();
    let lease = state.grant_lease(Duration::from_secs(5)).await.unwrap();
    state
        .put_with_lease("lock:job", json!("worker-1"), lease.id)
        .await
        .unwrap();
    let mut watch = state.watch("lock:", None).await.unwrap();
    let maintenance = state.spawn_maintenance();
    clock.advance(Duration::from_secs(6));
    match watch.next().await {
        Some(Ok(WatchEvent::Changes { changes, .. })) => {
            assert_eq!(changes[0].kind, ChangeKind::Delete);
        }
        other => panic!("expected the lease's delete, got {other:?}"),
    }
    assert_eq!(state.get("lock:job").await.unwrap(), None);
    maintenance.shutdown().await;
}

#[tokio::test]
async fn purging_a_session_namespace_erases_its_history() {
    for (backend, store, _dir) in backends().await {
        eprintln!("{backend}");
        let state = StateStore::new(store);
        let session = SessionId::new();
        let namespace = Namespace::session(session);
        let notes = namespace.key("notes").unwrap();
        state.put(&notes, json!("secret")).await.unwrap();
        state.put(&notes, json!("more secret")).await.unwrap();
        state
            .put("agent:7:planner:memory", json!("kept"))
            .await
            .unwrap();
        smalltalk_types::SessionContentPurger::purge_session(&state, session)
            .await
            .unwrap();
        assert_eq!(state.get(&notes).await.unwrap(), None);
        assert!(matches!(
            state.get_at(&notes, 1).await,
            Err(Error::Purged { .. })
        ));
        let history = state.history(&notes, 10).await.unwrap();
        assert!(history.changes.iter().all(|change| change.value.is_none()));
        assert_eq!(
            state
                .get("agent:7:planner:memory")
                .await
                .unwrap()
                .unwrap()
                .value,
            json!("kept")
        );
        let key: StorageKey = Namespace::agent(&AgentId::parse("planner").unwrap())
            .key("memory")
            .unwrap();
        assert_eq!(key.as_str(), "agent:7:planner:memory");
    }
}
