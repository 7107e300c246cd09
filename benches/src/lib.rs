//! Shared fixtures for the criterion benches and the report tool, so both
//! measure exactly the same operations.
//!
//! - `save_<size>`: compare-and-swap save of a session carrying `<size>` of
//!   agent state and no history (the header path; SC-009's shape).
//! - `get_<size>`: restore of a session whose history is 100 messages
//!   totalling `<size>`, plus 1 KB of agent state (SC-007's shape at 500 KB).
//! - `append`: appending one 1 KB message to a session of 100 messages.

pub mod events;
pub mod groups;
pub mod health;
pub mod import;
pub mod server;
pub mod sessions;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use smalltalk_storage::contract::{Backend, MemoryBackend, PgBackend, SqliteBackend};
use smalltalk_storage::{AppendGuard, Expected, Store};
use smalltalk_types::{
    AgentId, AgentState, Message, Role, Session, SessionId, SystemClock, Timestamp,
};

/// The sizes measured.
pub const SIZES: [(&str, usize); 3] = [("1kb", 1024), ("10kb", 10 * 1024), ("500kb", 500 * 1024)];

/// An opened backend and what keeps its location alive.
pub struct BenchStore {
    /// `memory`, `sqlite` or `postgres`.
    pub name: &'static str,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its URL, for another process to open it (`None` in memory).
    pub url: Option<String>,
    _location: Box<dyn std::any::Any + Send + Sync>,
}

/// The backends measured, in order.
pub const BACKENDS: [&str; 3] = ["memory", "sqlite", "postgres"];

/// A fresh store of backend `name` (`memory`, `sqlite`, `postgres`), or
/// `None` if it is not available here (PostgreSQL without a server; see
/// `smalltalk_storage::contract::postgres_test_url`).
pub async fn fresh_store(name: &'static str) -> Option<BenchStore> {
    let clock = Arc::new(SystemClock);
    match name {
        "memory" => {
            let memory = MemoryBackend::fresh().await?;
            Some(BenchStore {
                name,
                store: memory.open(clock).await,
                url: None,
                _location: Box::new(memory),
            })
        }
        "sqlite" => {
            let sqlite = SqliteBackend::fresh().await?;
            Some(BenchStore {
                name,
                store: sqlite.open(clock).await,
                url: Some(format!("sqlite://{}", sqlite.path().display())),
                _location: Box::new(sqlite),
            })
        }
        "postgres" => {
            let postgres = PgBackend::fresh().await?;
            Some(BenchStore {
                name,
                store: postgres.open(clock).await,
                url: Some(postgres.store_url()),
                _location: Box::new(postgres),
            })
        }
        _ => None,
    }
}

/// A fresh store of every backend available here.
pub async fn backends() -> Vec<BenchStore> {
    let mut stores = Vec::new();
    for name in BACKENDS {
        match fresh_store(name).await {
            Some(store) => stores.push(store),
            None => eprintln!("{name}: not available here, skipped"),
        }
    }
    stores
}

/// Varied text of exactly `bytes` ASCII bytes.
pub fn filler(bytes: usize) -> String {
    // Varied text, so compression does not flatter any backend.
    let mut text = String::with_capacity(bytes);
    let mut seed: u32 = 0x9E37_79B9;
    while text.len() < bytes {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        text.push(char::from(b'a' + (seed % 26) as u8));
        if seed % 7 == 0 {
            text.push(' ');
        }
    }
    text.truncate(bytes);
    text
}

/// A session with `bytes` of agent state and no messages.
pub fn session_with_state(bytes: usize) -> Session {
    let now = Timestamp::now();
    let mut session = Session::new(SessionId::new(), now, Duration::from_secs(3600));
    let agent = AgentId::parse("agent-1").expect("valid");
    let mut state = AgentState::new(agent.clone(), now);
    state.context.insert("notes".into(), json!(filler(bytes)));
    session.agent_states.insert(agent, state);
    session
}

/// `count` messages of `bytes_each`.
pub fn messages(count: usize, bytes_each: usize) -> Vec<Message> {
    (0..count)
        .map(|index| {
            let role = if index % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            Message::new(role, filler(bytes_each), Timestamp::now())
        })
        .collect()
}

/// A session with a 100-message history of `total_bytes` and 1 KB of state.
pub fn session_with_history(total_bytes: usize) -> Session {
    let mut session = session_with_state(1024);
    session.messages = messages(100, total_bytes / 100);
    session
}

/// Stores `session` as new; returns its version.
pub async fn create(store: &dyn Store, session: &Session) -> u64 {
    store
        .save_session(session, Expected::Absent)
        .await
        .expect("create")
}

/// Latency samples and their percentiles.
#[derive(Debug, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Runs `op` `warmup` times unmeasured, then `count` times measured.
    pub async fn collect<F, Fut>(warmup: usize, count: usize, mut op: F) -> Self
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        for _ in 0..warmup {
            op().await;
        }
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            op().await;
            samples.push(started.elapsed());
        }
        samples.sort();
        Self(samples)
    }

    /// Samples measured elsewhere.
    pub fn from_durations(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self(samples)
    }

    /// The `p`-th percentile (0-100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `count` compare-and-swap saves of a session with `bytes` of state.
pub async fn measure_saves(
    store: Arc<dyn Store>,
    bytes: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let session = session_with_state(bytes);
    let mut version = create(store.as_ref(), &session).await;
    Samples::collect(warmup, count, || {
        let (store, session) = (Arc::clone(&store), session.clone());
        let expected = version;
        version += 1;
        async move {
            store
                .save_session(&session, Expected::Version(expected))
                .await
                .expect("save");
        }
    })
    .await
}

/// `count` restores of a 100-message session of `bytes`.
pub async fn measure_gets(
    store: Arc<dyn Store>,
    bytes: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let session = session_with_history(bytes);
    create(store.as_ref(), &session).await;
    Samples::collect(warmup, count, || {
        let store = Arc::clone(&store);
        async move {
            store
                .get_session(session.id)
                .await
                .expect("get")
                .expect("present");
        }
    })
    .await
}

/// `count` appends of one 1 KB message to a 100-message session.
pub async fn measure_appends(store: Arc<dyn Store>, warmup: usize, count: usize) -> Samples {
    let session = session_with_history(100 * 1024);
    create(store.as_ref(), &session).await;
    let message = messages(1, 1024).remove(0);
    Samples::collect(warmup, count, || {
        let (store, message) = (Arc::clone(&store), message.clone());
        async move {
            store
                .append_messages(session.id, &[message], AppendGuard::NONE)
                .await
                .expect("append");
        }
    })
    .await
}

/// An event like the bus will publish: small JSON payload.
pub fn bench_event(index: usize) -> smalltalk_types::Event {
    smalltalk_types::Event {
        id: smalltalk_types::EventId::new(),
        topic: smalltalk_types::Topic::parse(if index % 2 == 0 {
            "task:completed"
        } else {
            "agent:heartbeat"
        })
        .expect("valid topic"),
        event_type: "bench".into(),
        publisher: "bench".into(),
        timestamp: Timestamp::now(),
        priority: if index % 10 == 0 {
            smalltalk_types::EventPriority::Critical
        } else {
            Default::default()
        },
        session_id: None,
        conversation_id: None,
        payload: serde_json::json!({"index": index, "text": "a short payload"}).into(),
        metadata: serde_json::Map::new(),
        position: None,
        format_version: smalltalk_types::FORMAT_VERSION,
    }
}

/// Reads of a `backlog`-event log from the start (what a replay reads).
pub async fn measure_log_reads(
    store: Arc<dyn Store>,
    backlog: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let events: Vec<_> = (0..backlog).map(bench_event).collect();
    for chunk in events.chunks(1000) {
        store.append_events(chunk).await.expect("append");
    }
    let filter = smalltalk_storage::EventFilter::default();
    Samples::collect(warmup, count, || {
        let (store, filter) = (Arc::clone(&store), filter.clone());
        async move {
            let read = store.read_events(0, &filter, backlog).await.expect("read");
            assert_eq!(read.len(), backlog);
        }
    })
    .await
}

/// Appends one event at a time from `concurrency` tasks; events per second.
pub async fn measure_log_appends(store: Arc<dyn Store>, concurrency: usize, total: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut index = task;
            while index < total {
                store
                    .append_events(&[bench_event(index)])
                    .await
                    .expect("append");
                index += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}
