//! The SessionManager contract, run on every storage backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use smalltalk_session::{
    AgentStateLimits, CreateOptions, Error, SessionConfig, SessionManager, TtlStrategy,
};
use smalltalk_storage::Store;
use smalltalk_storage::contract::{Backend, test_clock};
use smalltalk_types::{
    AgentId, AgentState, Backoff, ManualClock, Message, Role, Session, SessionId, SessionState,
    Timestamp,
};

/// A caller's own error type, for `try_update`.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("changed my mind")]
    ChangedMyMind,
    #[error(transparent)]
    Session(#[from] Error),
}

struct Fixture {
    sessions: SessionManager,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
}

async fn fixture(backend: &impl Backend, config: SessionConfig) -> Fixture {
    let clock = test_clock();
    let store = backend.open(clock.clone()).await;
    let sessions = SessionManager::builder(Arc::clone(&store))
        .config(config)
        .clock(clock.clone())
        .build()
        .unwrap();
    Fixture {
        sessions,
        store,
        clock,
    }
}

fn fast() -> SessionConfig {
    SessionConfig {
        conflict_backoff: Backoff::constant(Duration::from_millis(1)),
        ..Default::default()
    }
}

fn text(content: &str, clock: &ManualClock) -> Message {
    use smalltalk_types::Clock;
    Message::new(Role::User, content, clock.now())
}

fn agent(name: &str) -> AgentId {
    AgentId::parse(name).unwrap()
}

async fn create_and_restore_round_trip(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    let mut metadata = serde_json::Map::new();
    metadata.insert("topic".into(), json!("ünïcødé ✓"));
    let session = f
        .sessions
        .create(CreateOptions {
            ttl: None,
            metadata: metadata.clone(),
        })
        .await
        .unwrap();
    assert_eq!(session.version, 1);
    assert_eq!(session.state, SessionState::Active);
    assert_eq!(
        session.expires_at,
        session
            .created_at
            .saturating_add(Duration::from_secs(7 * 24 * 3600))
    );
    let sent: Vec<Message> = (0..100)
        .map(|index| text(&format!("turn {index}"), &f.clock))
        .collect();
    for message in &sent {
        f.sessions
            .add_message(session.id, message.clone())
            .await
            .unwrap();
    }
    let mut state = AgentState::new(agent("writer"), Timestamp::EPOCH);
    state.config = json!({"model": "x"});
    state.context.insert("draft".into(), json!("v1"));
    f.sessions
        .update_agent_state(session.id, state.clone())
        .await
        .unwrap();

    let restored = f.sessions.restore(session.id).await.unwrap();
    assert_eq!(restored.messages, sent);
    assert_eq!(restored.metadata, metadata);
    let stored_state = &restored.agent_states[&agent("writer")];
    assert_eq!(
        (&stored_state.config, &stored_state.context),
        (&state.config, &state.context)
    );
    assert_eq!(
        restored.version, 2,
        "one header change; appends leave the version"
    );
    let unknown = f.sessions.restore(SessionId::new()).await;
    assert!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "{unknown:?}"
    );
}

/// Another writer's update, committed right now from a thread of its own
/// (the caller is inside an update closure, on this runtime's thread).
fn theirs_in_between(sessions: &SessionManager, id: SessionId) {
    let sessions = sessions.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(sessions.update(id, |s| {
            s.metadata.insert("theirs".into(), json!(1));
        }))
    })
    .join()
    .unwrap()
    .unwrap();
}

/// A concurrent writer gets in between: the closure runs again on the fresh
/// data and both changes survive.
async fn update_reapplies_the_closure_after_a_conflict(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let runs = AtomicU32::new(0);
    let other = f.sessions.clone();
    let (updated, ()) = f
        .sessions
        .update(session.id, |current| {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                // Another writer commits between our read and our write.
                theirs_in_between(&other, session.id);
            }
            current.metadata.insert("mine".into(), json!(2));
        })
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "re-applied once");
    assert_eq!(updated.version, 3);
    let stored = f.sessions.get(session.id).await.unwrap().unwrap();
    assert_eq!(
        (&stored.metadata["theirs"], &stored.metadata["mine"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(f.sessions.stats().await.unwrap().conflicts, 1);
}

/// A closure that refuses on its second run, after a conflict: its error
/// comes back and nothing of the refused run is written.
async fn a_refusal_after_a_conflict_writes_nothing(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let runs = AtomicU32::new(0);
    let other = f.sessions.clone();
    let refused = f
        .sessions
        .try_update(session.id, |current| {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                theirs_in_between(&other, session.id);
                current.metadata.insert("first run".into(), json!(true));
                return Ok(());
            }
            current.metadata.insert("second run".into(), json!(true));
            Err(Refusal::ChangedMyMind)
        })
        .await;
    assert!(
        matches!(refused, Err(Refusal::ChangedMyMind)),
        "{refused:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let stored = f.sessions.get(session.id).await.unwrap().unwrap();
    assert_eq!(stored.metadata.len(), 1, "{:?}", stored.metadata);
    assert_eq!(stored.metadata["theirs"], json!(1));
}

/// Many concurrent updates of one counter: none is lost.
async fn concurrent_updates_lose_nothing(backend: &impl Backend) {
    let config = SessionConfig {
        conflict_timeout: Duration::from_secs(60),
        ..fast()
    };
    let f = fixture(backend, config).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let sessions = f.sessions.clone();
        tasks.push(tokio::spawn(async move {
            sessions
                .update(session.id, |s| {
                    let count = s
                        .metadata
                        .get("count")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0);
                    s.metadata.insert("count".into(), json!(count + 1));
                })
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = f.sessions.get(session.id).await.unwrap().unwrap();
    assert_eq!(stored.metadata["count"], json!(16));
}

/// 32 tasks appending at once: every message exactly once.
async fn concurrent_messages_lose_nothing(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (sessions, clock) = (f.sessions.clone(), f.clock.clone());
        tasks.push(tokio::spawn(async move {
            for index in 0..5 {
                sessions
                    .add_message(session.id, text(&format!("{task}/{index}"), &clock))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = f.sessions.restore(session.id).await.unwrap();
    let mut contents: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents.len(), 160);
    contents.sort_unstable();
    contents.dedup();
    assert_eq!(contents.len(), 160, "no duplicates");
}

/// A blind snapshot that lost a race wins anyway, is counted, and keeps the
/// history; an invalidated session is never brought back by it.
async fn blind_save_falls_back_to_last_write_wins(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let mut first = f.sessions.restore(session.id).await.unwrap();
    let mut second = first.clone();
    first.metadata.insert("by".into(), json!("first"));
    assert_eq!(f.sessions.save(&first).await.unwrap(), 2);
    f.sessions
        .add_message(session.id, text("kept", &f.clock))
        .await
        .unwrap();
    second.metadata.insert("by".into(), json!("second"));
    assert_eq!(f.sessions.save(&second).await.unwrap(), 3);
    let stored = f.sessions.restore(session.id).await.unwrap();
    assert_eq!(stored.metadata["by"], json!("second"));
    assert_eq!(
        stored.messages.len(),
        1,
        "the history survives last-write-wins"
    );
    assert_eq!(f.sessions.stats().await.unwrap().conflicts, 1);

    // A snapshot with a message of its own, while another writer appends:
    // both messages are kept, the snapshot's after the other's.
    let mut third = f.sessions.restore(session.id).await.unwrap();
    third.messages.push(text("mine", &f.clock));
    f.sessions
        .add_message(session.id, text("theirs", &f.clock))
        .await
        .unwrap();
    f.sessions.save(&third).await.unwrap();
    let stored = f.sessions.restore(session.id).await.unwrap();
    let texts: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["kept", "theirs", "mine"]);

    f.sessions.invalidate(session.id).await.unwrap();
    let resurrect = f.sessions.save(&stored).await;
    assert!(
        matches!(resurrect, Err(Error::Invalidated { .. })),
        "{resurrect:?}"
    );
    let unknown = Session::new(
        SessionId::new(),
        Timestamp::EPOCH,
        Duration::from_secs(3600),
    );
    assert!(matches!(
        f.sessions.save(&unknown).await,
        Err(Error::NotFound { .. })
    ));
}

/// Writers append as fast as they can while 100 updates and then an
/// invalidation go through: appends never make a header change conflict,
/// so every update lands without a conflict, `invalidate` succeeds on its
/// first call, no append started after it returned is acknowledged, and
/// every writer is told `Invalidated`.
async fn updates_and_invalidation_get_through_an_append_flood(backend: &impl Backend) {
    use std::sync::atomic::AtomicBool;
    const WRITERS: usize = 8;
    let f = fixture(backend, fast()).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let invalidated = Arc::new(AtomicBool::new(false));
    let started = Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (sessions, clock) = (f.sessions.clone(), f.clock.clone());
        let (invalidated, started) = (Arc::clone(&invalidated), Arc::clone(&started));
        writers.push(tokio::spawn(async move {
            let (mut acked, mut acked_after) = (0u64, 0u64);
            let mut first = true;
            loop {
                let after = invalidated.load(Ordering::SeqCst);
                let result = sessions
                    .add_message(session.id, text(&format!("w{writer}"), &clock))
                    .await;
                if first {
                    first = false;
                    started.wait().await;
                }
                match result {
                    Ok(_) if after => acked_after += 1,
                    Ok(_) => acked += 1,
                    Err(error) => return (acked, acked_after, error),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    // Every writer is appending before the first update.
    started.wait().await;
    for round in 0..100u64 {
        let (updated, ()) = f
            .sessions
            .update(session.id, |s| {
                s.metadata.insert("round".into(), json!(round));
            })
            .await
            .unwrap_or_else(|error| panic!("update {round} failed: {error}"));
        assert_eq!(updated.metadata["round"], json!(round));
    }
    assert_eq!(
        f.sessions.stats().await.unwrap().conflicts,
        0,
        "appends made a header change conflict"
    );
    f.sessions
        .invalidate(session.id)
        .await
        .expect("invalidate succeeds on its first call");
    invalidated.store(true, Ordering::SeqCst);
    let mut total = 0;
    for writer in writers {
        let (acked, acked_after, error) = writer.await.unwrap();
        assert!(acked > 0, "every writer appended during the updates");
        assert_eq!(
            acked_after, 0,
            "an append was acknowledged after invalidate returned"
        );
        assert!(
            matches!(error, Error::Invalidated { id } if id == session.id),
            "{error:?}"
        );
        total += acked;
    }
    assert!(total >= WRITERS as u64);
    let stored = f.sessions.get(session.id).await.unwrap().unwrap();
    assert_eq!(stored.state, SessionState::Invalidated);
    assert!(
        stored.messages.is_empty(),
        "the content went with the invalidation"
    );
}

/// The pool refuses past its limit with a retry-after hint, and a slot
/// frees when a session leaves.
async fn capacity_is_enforced(backend: &impl Backend) {
    let config = SessionConfig {
        max_active_sessions: 3,
        ..fast()
    };
    let f = fixture(backend, config).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(f.sessions.create(CreateOptions::default()).await.unwrap());
    }
    let refused = f.sessions.create(CreateOptions::default()).await;
    match refused {
        Err(Error::CapacityExceeded {
            limit: 3,
            retry_after,
        }) => {
            assert!((Duration::from_secs(1)..=Duration::from_secs(60)).contains(&retry_after));
        }
        other => panic!("expected CapacityExceeded, got {other:?}"),
    }
    let stats = f.sessions.stats().await.unwrap();
    assert_eq!((stats.active, stats.capacity, stats.rejections), (3, 3, 1));
    assert_eq!(
        stats.by_state.get(&SessionState::Active),
        Some(&3),
        "nothing stored for the refusal"
    );
    f.sessions
        .update_state(created[0].id, SessionState::Idle)
        .await
        .unwrap();
    let fourth = f.sessions.create(CreateOptions::default()).await.unwrap();
    let back = f
        .sessions
        .update_state(created[0].id, SessionState::Active)
        .await;
    assert!(
        matches!(back, Err(Error::CapacityExceeded { .. })),
        "{back:?}"
    );
    f.sessions.invalidate(fourth.id).await.unwrap();
    f.sessions
        .update_state(created[0].id, SessionState::Active)
        .await
        .unwrap();
    assert_eq!(f.sessions.stats().await.unwrap().active, 3);
}

/// An invalidated session leaves the pool at once, refuses everything with
/// a distinct error, keeps its data until cleanup, then is gone.
async fn invalidation_is_final(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .add_message(session.id, text("before", &f.clock))
        .await
        .unwrap();
    f.sessions.invalidate(session.id).await.unwrap();
    assert_eq!(f.sessions.stats().await.unwrap().active, 0);
    let add = f
        .sessions
        .add_message(session.id, text("after", &f.clock))
        .await;
    assert!(matches!(add, Err(Error::Invalidated { .. })), "{add:?}");
    let update = f.sessions.update(session.id, |_| ()).await;
    assert!(
        matches!(update, Err(Error::Invalidated { .. })),
        "{update:?}"
    );
    assert!(matches!(
        f.sessions.restore(session.id).await,
        Err(Error::Invalidated { .. })
    ));
    let revive = f
        .sessions
        .update_state(session.id, SessionState::Active)
        .await;
    assert!(
        matches!(revive, Err(Error::Invalidated { .. })),
        "{revive:?}"
    );
    f.sessions.invalidate(session.id).await.unwrap();
    let tombstone = f.sessions.get(session.id).await.unwrap().unwrap();
    assert!(
        tombstone.messages.is_empty(),
        "the content is deleted at once"
    );
    assert!(tombstone.agent_states.is_empty());
    assert_eq!(tombstone.state, SessionState::Invalidated);
    assert_eq!(
        f.sessions.cleanup_expired().await.unwrap(),
        0,
        "the tombstone stays until expiry"
    );
    assert!(matches!(
        f.sessions.restore(session.id).await,
        Err(Error::Invalidated { .. })
    ));
    f.clock.advance(Duration::from_secs(8 * 24 * 3600));
    assert_eq!(f.sessions.cleanup_expired().await.unwrap(), 1);
    assert!(matches!(
        f.sessions.restore(session.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        f.sessions.invalidate(session.id).await,
        Err(Error::NotFound { .. })
    ));
}

/// `keep_latest`: past its TTL a session keeps its latest state, loses its
/// history, and refuses writes.
async fn keep_latest_keeps_the_state_and_drops_the_history(backend: &impl Backend) {
    let config = SessionConfig {
        ttl_strategy: TtlStrategy::KeepLatest,
        ..fast()
    };
    let f = fixture(backend, config).await;
    let session = f
        .sessions
        .create(CreateOptions {
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        })
        .await
        .unwrap();
    let other = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .add_message(session.id, text("old turn", &f.clock))
        .await
        .unwrap();
    let mut state = AgentState::new(agent("keeper"), Timestamp::EPOCH);
    state.context.insert("summary".into(), json!("the gist"));
    f.sessions
        .update_agent_state(session.id, state)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(f.sessions.cleanup_expired().await.unwrap(), 1);
    let kept = f.sessions.get(session.id).await.unwrap().expect("kept");
    assert_eq!(kept.state, SessionState::Expired);
    assert!(kept.messages.is_empty());
    assert_eq!(
        kept.agent_states[&agent("keeper")].context["summary"],
        json!("the gist")
    );
    assert_eq!(
        f.sessions.cleanup_expired().await.unwrap(),
        0,
        "already reduced"
    );
    let add = f
        .sessions
        .add_message(session.id, text("late", &f.clock))
        .await;
    assert!(matches!(add, Err(Error::Expired { .. })), "{add:?}");
    assert_eq!(
        f.sessions.get(other.id).await.unwrap().unwrap().state,
        SessionState::Active
    );
}

/// Past its TTL a session refuses writes, and cleanup deletes it.
async fn expiry_and_cleanup(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    let short = f
        .sessions
        .create(CreateOptions {
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        })
        .await
        .unwrap();
    let long = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.clock.advance(Duration::from_secs(2 * 3600));
    let add = f
        .sessions
        .add_message(short.id, text("late", &f.clock))
        .await;
    assert!(matches!(add, Err(Error::Expired { .. })), "{add:?}");
    assert!(matches!(
        f.sessions.restore(short.id).await,
        Err(Error::Expired { .. })
    ));
    let update = f.sessions.update(short.id, |_| ()).await;
    assert!(matches!(update, Err(Error::Expired { .. })), "{update:?}");
    assert_eq!(f.sessions.cleanup_expired().await.unwrap(), 1);
    assert!(f.sessions.get(short.id).await.unwrap().is_none());
    f.sessions
        .add_message(long.id, text("fine", &f.clock))
        .await
        .unwrap();
    assert_eq!(f.sessions.stats().await.unwrap().active, 1);
}

/// Agent state keeps the newest turns; an oversize state is refused and
/// the stored one stays.
async fn agent_state_is_preserved_within_limits(backend: &impl Backend) {
    let config = SessionConfig {
        agent_state: AgentStateLimits {
            max_turns: 3,
            max_bytes: 2048,
        },
        ..fast()
    };
    let f = fixture(backend, config).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let mut state = AgentState::new(agent("coder"), Timestamp::EPOCH);
    state.history = (0..5)
        .map(|index| text(&format!("turn {index}"), &f.clock))
        .collect();
    let report = f
        .sessions
        .update_agent_state(session.id, state)
        .await
        .unwrap();
    assert_eq!(report.turns_over_limit, 2);
    let stored = f.sessions.restore(session.id).await.unwrap();
    let history: Vec<&str> = stored.agent_states[&agent("coder")]
        .history
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(history, ["turn 2", "turn 3", "turn 4"]);

    let mut huge = AgentState::new(agent("coder"), Timestamp::EPOCH);
    huge.context.insert("blob".into(), json!("q".repeat(5000)));
    let refused = f.sessions.update_agent_state(session.id, huge).await;
    assert!(
        matches!(refused, Err(Error::AgentStateTooLarge { limit: 2048, .. })),
        "{refused:?}"
    );
    let after = f.sessions.restore(session.id).await.unwrap();
    assert_eq!(after.agent_states, stored.agent_states, "nothing stored");
    assert_eq!(after.version, stored.version);
}

/// Sessions inactive for `idle_after` become idle at the maintenance run
/// and free their slot; active ones stay; expired ones are deleted.
async fn maintenance_idles_and_cleans_up(backend: &impl Backend) {
    let config = SessionConfig {
        max_active_sessions: 2,
        idle_after: Some(Duration::from_secs(600)),
        ..fast()
    };
    let f = fixture(backend, config).await;
    let busy = f.sessions.create(CreateOptions::default()).await.unwrap();
    let quiet = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.clock.advance(Duration::from_secs(300));
    f.sessions
        .add_message(busy.id, text("still here", &f.clock))
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(360));
    let report = f.sessions.run_maintenance().await.unwrap();
    assert_eq!((report.idled, report.deleted), (1, 0));
    let states = (
        f.sessions.get(busy.id).await.unwrap().unwrap().state,
        f.sessions.get(quiet.id).await.unwrap().unwrap().state,
    );
    assert_eq!(states, (SessionState::Active, SessionState::Idle));
    assert_eq!(f.sessions.stats().await.unwrap().active, 1);
    f.sessions
        .create(CreateOptions::default())
        .await
        .expect("the idle session freed its slot");
    // An idle session still accepts messages.
    f.sessions
        .add_message(quiet.id, text("later", &f.clock))
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(8 * 24 * 3600));
    let report = f.sessions.run_maintenance().await.unwrap();
    assert_eq!(report.deleted, 3);
    assert_eq!(f.sessions.stats().await.unwrap().active, 0);
}

/// A message to an idle session makes it active again, capacity
/// permitting.
async fn a_message_reactivates_an_idle_session(backend: &impl Backend) {
    let config = SessionConfig {
        max_active_sessions: 2,
        idle_after: Some(Duration::from_secs(600)),
        ..fast()
    };
    let f = fixture(backend, config).await;
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.clock.advance(Duration::from_secs(660));
    assert_eq!(f.sessions.run_maintenance().await.unwrap().idled, 1);
    assert_eq!(f.sessions.stats().await.unwrap().active, 0);
    f.sessions
        .add_message(session.id, text("back", &f.clock))
        .await
        .unwrap();
    assert_eq!(
        f.sessions.get(session.id).await.unwrap().unwrap().state,
        SessionState::Active
    );
    assert_eq!(f.sessions.stats().await.unwrap().active, 1);

    // At capacity it stays idle, and the message is still stored.
    f.clock.advance(Duration::from_secs(660));
    f.sessions.run_maintenance().await.unwrap();
    f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .add_message(session.id, text("again", &f.clock))
        .await
        .unwrap();
    let stored = f.sessions.get(session.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.messages.len()),
        (SessionState::Idle, 2)
    );
}

/// Many idle sessions get a message at once: each reactivation reserves
/// its slot before writing, so no more than the limit become active.
async fn concurrent_reactivations_respect_the_limit(backend: &impl Backend) {
    const LIMIT: usize = 3;
    let f = fixture(
        backend,
        SessionConfig {
            max_active_sessions: LIMIT,
            ..fast()
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        for _ in 0..LIMIT {
            idle.push(
                f.sessions
                    .create(CreateOptions::default())
                    .await
                    .unwrap()
                    .id,
            );
        }
        for id in &idle[idle.len() - LIMIT..] {
            f.sessions
                .update_state(*id, SessionState::Idle)
                .await
                .unwrap();
        }
    }
    assert_eq!(f.sessions.stats().await.unwrap().active, 0);
    let mut tasks = Vec::new();
    for id in idle.clone() {
        let (sessions, clock) = (f.sessions.clone(), f.clock.clone());
        tasks.push(tokio::spawn(async move {
            sessions
                .add_message(id, text("wake up", &clock))
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = f.sessions.stats().await.unwrap();
    assert!(
        stats.active <= LIMIT,
        "pool at {} over {LIMIT}",
        stats.active
    );
    let active = stats
        .by_state
        .get(&SessionState::Active)
        .copied()
        .unwrap_or(0);
    assert!(
        active <= LIMIT as u64,
        "{active} sessions active over {LIMIT}"
    );
    assert!(active >= 1, "a message reactivates within the limit");
}

/// Whatever a write accepts, a read returns: session metadata, message
/// metadata and agent states nested 200 levels deep are refused with a
/// typed error, nothing is stored, and the session restores as before.
async fn too_deep_values_are_refused(backend: &impl Backend) {
    let nested = smalltalk_storage::contract::sessions::nested_json;
    let too_deep = |result: &dyn std::fmt::Debug| format!("{result:?}").contains("TooDeep");
    let f = fixture(backend, fast()).await;
    let mut metadata = serde_json::Map::new();
    metadata.insert("x".into(), nested(200));
    let created = f
        .sessions
        .create(CreateOptions {
            metadata,
            ..Default::default()
        })
        .await;
    assert!(
        matches!(
            &created,
            Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
        ),
        "{created:?}"
    );
    assert_eq!(f.sessions.stats().await.unwrap().active, 0, "no slot kept");

    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .add_message(session.id, text("before", &f.clock))
        .await
        .unwrap();
    let mut deep = text("deep", &f.clock);
    deep.metadata.insert("x".into(), nested(200));
    let added = f.sessions.add_message(session.id, deep).await;
    assert!(
        matches!(
            &added,
            Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
        ),
        "{added:?}"
    );
    let mut state = AgentState::new(agent("deep"), Timestamp::EPOCH);
    state.context.insert("x".into(), nested(200));
    let saved = f.sessions.update_agent_state(session.id, state).await;
    assert!(too_deep(&saved), "{saved:?}");
    let updated = f
        .sessions
        .update(session.id, |s| {
            s.metadata.insert("x".into(), nested(200));
        })
        .await;
    assert!(too_deep(&updated), "{updated:?}");
    f.sessions
        .add_message(session.id, text("after", &f.clock))
        .await
        .unwrap();
    let restored = f.sessions.restore(session.id).await.unwrap();
    let texts: Vec<&str> = restored
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(texts, ["before", "after"]);
    assert!(restored.agent_states.is_empty() && restored.metadata.is_empty());
}

/// Bad input gives typed errors and changes nothing.
async fn bad_input_is_refused(backend: &impl Backend) {
    let f = fixture(backend, fast()).await;
    for ttl in [Duration::from_secs(60), Duration::from_secs(31 * 24 * 3600)] {
        let created = f
            .sessions
            .create(CreateOptions {
                ttl: Some(ttl),
                ..Default::default()
            })
            .await;
        assert!(
            matches!(
                created,
                Err(Error::Domain(smalltalk_types::Error::InvalidConfig {
                    field: "ttl",
                    ..
                }))
            ),
            "{created:?}"
        );
    }
    let bad_configs = [
        SessionConfig {
            max_active_sessions: 0,
            ..Default::default()
        },
        SessionConfig {
            default_ttl: Duration::ZERO,
            ..Default::default()
        },
        SessionConfig {
            agent_state: AgentStateLimits {
                max_turns: 0,
                max_bytes: 4096,
            },
            ..Default::default()
        },
        SessionConfig {
            agent_state: AgentStateLimits {
                max_turns: 1,
                max_bytes: 10,
            },
            ..Default::default()
        },
    ];
    for config in bad_configs {
        let built = SessionManager::builder(Arc::clone(&f.store))
            .config(config)
            .build();
        assert!(matches!(
            built,
            Err(Error::Domain(smalltalk_types::Error::InvalidConfig { .. }))
        ));
    }
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let aborted = f.sessions.try_update(session.id, |s| {
        s.metadata.insert("half".into(), json!(true));
        Err::<(), _>(Refusal::ChangedMyMind)
    });
    // The closure's own error comes back as is, in its own type.
    assert!(matches!(aborted.await, Err(Refusal::ChangedMyMind)));
    let unknown_session = f
        .sessions
        .try_update(SessionId::new(), |_| Ok::<_, Refusal>(()))
        .await;
    assert!(
        matches!(
            unknown_session,
            Err(Refusal::Session(Error::NotFound { .. }))
        ),
        "the update's own errors come through From: {unknown_session:?}"
    );
    let swapped = f.sessions.update(session.id, |s| {
        s.id = SessionId::new();
    });
    assert!(matches!(swapped.await, Err(Error::IdChanged { .. })));
    let stored = f.store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.version, stored.metadata.len()),
        (1, 0),
        "nothing written"
    );
    let unknown = SessionId::new();
    assert!(matches!(
        f.sessions.add_message(unknown, text("x", &f.clock)).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        f.sessions.update(unknown, |_| ()).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        f.sessions.update_state(unknown, SessionState::Idle).await,
        Err(Error::NotFound { .. })
    ));
    let state = AgentState::new(agent("a"), Timestamp::EPOCH);
    assert!(matches!(
        f.sessions.update_agent_state(unknown, state).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!f.sessions.delete(unknown).await.unwrap());
}

macro_rules! manager_contract {
    ($name:ident, $fresh:path $(, #[$attr:meta])* $(,)?) => {
        mod $name {
            mod manager {
                manager_contract!(@cases $fresh; [$(#[$attr])*];
                    create_and_restore_round_trip,
                    update_reapplies_the_closure_after_a_conflict,
                    a_refusal_after_a_conflict_writes_nothing,
                    concurrent_updates_lose_nothing,
                    concurrent_messages_lose_nothing,
                    blind_save_falls_back_to_last_write_wins,
                    updates_and_invalidation_get_through_an_append_flood,
                    capacity_is_enforced,
                    invalidation_is_final,
                    expiry_and_cleanup,
                    agent_state_is_preserved_within_limits,
                    maintenance_idles_and_cleans_up,
                    keep_latest_keeps_the_state_and_drops_the_history,
                    a_message_reactivates_an_idle_session,
                    concurrent_reactivations_respect_the_limit,
                    bad_input_is_refused,
                    too_deep_values_are_refused,
                );
            }
        }
    };
    (@cases $fresh:path; $attrs:tt; $($case:ident),+ $(,)?) => {
        $( manager_contract!(@case $fresh; $attrs; $case); )+
    };
    (@case $fresh:path; [$($attr:tt)*]; $case:ident) => {
        $($attr)*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(backend) = $fresh().await else {
                eprintln!("skipped: backend not available");
                return;
            };
            crate::$case(&backend).await;
        }
    };
}

manager_contract!(memory, smalltalk_storage::contract::MemoryBackend::fresh);
manager_contract!(sqlite, smalltalk_storage::contract::SqliteBackend::fresh);
manager_contract!(
    postgres,
    smalltalk_storage::contract::PgBackend::fresh,
    #[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
);
