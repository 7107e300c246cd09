//! Session-manager measurements (issue 4's success criteria), shared by the
//! report tool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smalltalk_session::{CreateOptions, SessionConfig, SessionManager};
use smalltalk_storage::Store;
use smalltalk_types::{AgentId, AgentState, Message, Role, Timestamp};

use crate::{Samples, filler, messages};

/// A manager over `store` with room for `capacity` active sessions.
pub fn manager(store: Arc<dyn Store>, capacity: usize) -> SessionManager {
    let config = SessionConfig {
        max_active_sessions: capacity,
        ..Default::default()
    };
    SessionManager::builder(store)
        .config(config)
        .build()
        .expect("valid configuration")
}

/// SC-007: restores of a session holding 100 messages totalling `bytes`.
pub async fn measure_restores(
    store: Arc<dyn Store>,
    bytes: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let sessions = manager(store, 10);
    let session = sessions
        .create(CreateOptions::default())
        .await
        .expect("create");
    sessions
        .add_messages(session.id, &messages(100, bytes / 100))
        .await
        .expect("append");
    Samples::collect(warmup, count, || {
        let sessions = sessions.clone();
        async move {
            sessions.restore(session.id).await.expect("restore");
        }
    })
    .await
}

/// SC-009: saves of one agent's `bytes`-large state, in a session that
/// already holds 100 messages.
pub async fn measure_agent_state_saves(
    store: Arc<dyn Store>,
    bytes: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let sessions = manager(store, 10);
    let session = sessions
        .create(CreateOptions::default())
        .await
        .expect("create");
    sessions
        .add_messages(session.id, &messages(100, 1024))
        .await
        .expect("append");
    let mut state = AgentState::new(AgentId::parse("agent-1").expect("valid"), Timestamp::now());
    state.context.insert("notes".into(), filler(bytes).into());
    Samples::collect(warmup, count, || {
        let (sessions, state) = (sessions.clone(), state.clone());
        async move {
            sessions
                .update_agent_state(session.id, state)
                .await
                .expect("save state");
        }
    })
    .await
}

/// SC-020: creations with `present` sessions already stored and active.
pub async fn measure_creates_at(
    store: Arc<dyn Store>,
    present: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let sessions = manager(store, present + warmup + count + 1);
    for _ in 0..present {
        sessions
            .create(CreateOptions::default())
            .await
            .expect("create");
    }
    Samples::collect(warmup, count, || {
        let sessions = sessions.clone();
        async move {
            sessions
                .create(CreateOptions::default())
                .await
                .expect("create");
        }
    })
    .await
}

/// APPEND-SCALING: appends of one 1 KB message to a session already
/// holding `history` messages.
pub async fn measure_appends_at(
    store: Arc<dyn Store>,
    history: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let sessions = manager(store, 10);
    let session = sessions
        .create(CreateOptions::default())
        .await
        .expect("create");
    for chunk in messages(history, 64).chunks(500) {
        sessions
            .add_messages(session.id, chunk)
            .await
            .expect("append");
    }
    let message = messages(1, 1024).remove(0);
    Samples::collect(warmup, count, || {
        let (sessions, message) = (sessions.clone(), message.clone());
        async move {
            sessions
                .add_message(session.id, message)
                .await
                .expect("append");
        }
    })
    .await
}

/// STORAGE-GROWTH: runs a `turns`-turn conversation of 1 KB messages (and
/// an agent state updated every turn); returns its content bytes.
pub async fn converse(store: Arc<dyn Store>, turns: usize) -> u64 {
    let sessions = manager(store, 10);
    let session = sessions
        .create(CreateOptions::default())
        .await
        .expect("create");
    let agent = AgentId::parse("agent-1").expect("valid");
    let mut content = 0;
    for turn in 0..turns {
        let text = filler(1024);
        content += text.len() as u64;
        let role = if turn % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        sessions
            .add_message(session.id, Message::new(role, text, Timestamp::now()))
            .await
            .expect("append");
        let mut state = AgentState::new(agent.clone(), Timestamp::now());
        state.context.insert("turn".into(), turn.into());
        sessions
            .update_agent_state(session.id, state)
            .await
            .expect("state");
    }
    content
}

/// add_message throughput: `total` appends spread over `sessions_count`
/// sessions by `concurrency` tasks; returns messages per second.
pub async fn measure_throughput(
    store: Arc<dyn Store>,
    sessions_count: usize,
    concurrency: usize,
    total: usize,
) -> f64 {
    let sessions = manager(store, sessions_count + 1);
    let mut ids = Vec::with_capacity(sessions_count);
    for _ in 0..sessions_count {
        ids.push(
            sessions
                .create(CreateOptions::default())
                .await
                .expect("create")
                .id,
        );
    }
    let ids = Arc::new(ids);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let (sessions, ids) = (sessions.clone(), Arc::clone(&ids));
        tasks.push(tokio::spawn(async move {
            let mut index = task;
            while index < total {
                let id = ids[index % ids.len()];
                let message = Message::new(Role::User, "throughput", Timestamp::now());
                sessions.add_message(id, message).await.expect("append");
                index += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    total as f64 / started.elapsed().max(Duration::from_nanos(1)).as_secs_f64()
}

/// Most appends one flooding writer makes per round.
const FLOOD_APPENDS_PER_WRITER: usize = 200_000;

/// FLOOD: `rounds` sessions, each with `writers` tasks appending as fast as
/// they can while `updates` header updates and then one invalidation run
/// on it. Returns the update and the invalidation latencies.
pub async fn measure_under_append_flood(
    store: Arc<dyn Store>,
    writers: usize,
    rounds: usize,
    updates: usize,
) -> (Samples, Samples) {
    let sessions = manager(store, rounds + 1);
    let (mut update_times, mut invalidate_times) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let session = sessions
            .create(CreateOptions::default())
            .await
            .expect("create");
        let started = Arc::new(tokio::sync::Barrier::new(writers + 1));
        let mut tasks = Vec::with_capacity(writers);
        for _ in 0..writers {
            let (sessions, started) = (sessions.clone(), Arc::clone(&started));
            tasks.push(tokio::spawn(async move {
                let message = Message::new(Role::User, "flood", Timestamp::now());
                let mut first = true;
                // Bounded, so a fast backend cannot fill memory.
                for _ in 0..FLOOD_APPENDS_PER_WRITER {
                    if sessions
                        .add_message(session.id, message.clone())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if std::mem::take(&mut first) {
                        started.wait().await;
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        started.wait().await;
        for round in 0..updates {
            let begun = Instant::now();
            sessions
                .update(session.id, |s| {
                    s.metadata.insert("round".into(), round.into());
                })
                .await
                .expect("update under flood");
            update_times.push(begun.elapsed());
        }
        let begun = Instant::now();
        sessions
            .invalidate(session.id)
            .await
            .expect("invalidate under flood");
        invalidate_times.push(begun.elapsed());
        for task in tasks {
            task.await.expect("writer");
        }
    }
    (
        Samples::from_durations(update_times),
        Samples::from_durations(invalidate_times),
    )
}

/// This process's resident memory, in bytes (Linux `/proc/self/statm`;
/// `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size on the Linux targets we run on.
    Some(pages * 4096)
}

/// A manager over `store` with `present` active sessions, each holding one
/// message, and their ids.
pub async fn populated(
    store: Arc<dyn Store>,
    present: usize,
    capacity: usize,
) -> (SessionManager, Vec<smalltalk_types::SessionId>) {
    let sessions = manager(store, capacity);
    let mut ids = Vec::with_capacity(present);
    for _ in 0..present {
        let session = sessions
            .create(CreateOptions::default())
            .await
            .expect("create");
        sessions
            .add_message(
                session.id,
                Message::new(Role::User, "hello", Timestamp::now()),
            )
            .await
            .expect("append");
        ids.push(session.id);
    }
    (sessions, ids)
}

/// SC-020 on the rejection path: creations refused with the pool full at
/// `present` active sessions.
pub async fn measure_rejections_at(
    store: Arc<dyn Store>,
    present: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let (sessions, _) = populated(store, present, present).await;
    Samples::collect(warmup, count, || {
        let sessions = sessions.clone();
        async move {
            let refused = sessions.create(CreateOptions::default()).await;
            assert!(
                matches!(
                    refused,
                    Err(smalltalk_session::Error::CapacityExceeded { .. })
                ),
                "at capacity"
            );
        }
    })
    .await
}

/// SC-018: `present` active sessions on one manager; the resident memory
/// they add (MB), and appends spread over them at that load.
pub async fn measure_active_load(
    store: Arc<dyn Store>,
    present: usize,
    warmup: usize,
    count: usize,
) -> (Option<f64>, Samples) {
    let before = resident_bytes();
    let (sessions, ids) = populated(store, present, present).await;
    let after = resident_bytes();
    let added_mb = before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before) as f64 / (1024.0 * 1024.0));
    let mut next = 0usize;
    let samples = Samples::collect(warmup, count, || {
        let sessions = sessions.clone();
        next = (next + 7919) % ids.len();
        let id = ids[next];
        async move {
            sessions
                .add_message(id, Message::new(Role::User, "under load", Timestamp::now()))
                .await
                .expect("append");
        }
    })
    .await;
    (added_mb, samples)
}
