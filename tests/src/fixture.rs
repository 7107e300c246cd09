//! The stored-data fixture: fixed content (sessions with messages and agent
//! states, events, cursors, key-value entries) that `write-fixture` stored
//! with the release of 2026-12-02 (schema: SQLite 2, PostgreSQL 3), and
//! that every later release must read back unchanged.
//!
//! `tests/fixtures/release-0.1.0.db` (SQLite) and
//! `tests/fixtures/release-0.1.0.pg.sql` (a `pg_dump` of the PostgreSQL
//! schema) are the stored forms; `tests/tests/stored_data.rs` opens copies
//! with the current code and compares them with [`content`].

use std::time::Duration;

use serde_json::json;
use smalltalk::storage::{AppendGuard, Cursor, Expected, Store};
use smalltalk::types::{
    AgentId, AgentState, Event, EventId, EventPriority, Message, MessageId, Role, Session,
    SessionId, SessionState, StorageKey, Timestamp, Topic,
};

/// Everything the fixture holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    /// Sessions, with their whole history.
    pub sessions: Vec<Session>,
    /// Events, in log order (positions 1..).
    pub events: Vec<Event>,
    /// Subscriber cursors (release 0.1.0 stored positions only).
    pub cursors: Vec<(StorageKey, Cursor)>,
    /// Key-value entries.
    pub kv: Vec<(StorageKey, Vec<u8>)>,
}

fn at(seconds: i64) -> Timestamp {
    // 2026-12-02T00:00:00Z
    Timestamp::from_micros((1_796_169_600 + seconds) * 1_000_000)
}

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The fixed content. Expiries are far in the future (2036) so the
/// sessions never expire under a reader.
pub fn content() -> Content {
    let ttl = Duration::from_secs(10 * 365 * 24 * 3600);
    let mut sessions = Vec::new();
    for s in 0..3u32 {
        let mut session = Session::new(
            SessionId::parse(&uuid(100 + s)).expect("v4"),
            at(i64::from(s)),
            ttl,
        );
        session.state = [
            SessionState::Active,
            SessionState::Idle,
            SessionState::Active,
        ][s as usize];
        session
            .metadata
            .insert("title".into(), json!(format!("fixture session {s} ✓")));
        session
            .metadata
            .insert("nested".into(), json!({"a": [1, 2, {"b": null}]}));
        for m in 0..(5 * (s + 1)) {
            let mut message = Message::new(
                if m % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                format!("message {m} of session {s}: ünïcødé, \"quotes\", \0 nul"),
                at(i64::from(10 + m)),
            );
            message.id = MessageId::parse(&uuid(1000 + s * 100 + m)).expect("v4");
            if m % 2 == 1 {
                message.agent_id = Some(AgentId::parse("writer").expect("valid"));
                message.metadata.insert("tokens".into(), json!(m * 7));
            }
            session.messages.push(message);
        }
        let mut state = AgentState::new(AgentId::parse("writer").expect("valid"), at(5));
        state.config = json!({"model": "local", "temperature": 0.5});
        state.context.insert("notes".into(), json!("kept"));
        state.trimmable_fields.push("notes".into());
        state.history = session.messages.iter().take(2).cloned().collect();
        session.agent_states.insert(state.agent_id.clone(), state);
        session.updated_at = session
            .messages
            .last()
            .map_or(session.created_at, |message| message.timestamp);
        sessions.push(session);
    }
    let events = (0..6u32)
        .map(|n| Event {
            id: EventId::parse(&uuid(5000 + n)).expect("v4"),
            topic: Topic::parse(if n % 2 == 0 {
                "task:done"
            } else {
                "agent.health"
            })
            .expect("valid"),
            event_type: "fixture".into(),
            publisher: "write-fixture".into(),
            timestamp: at(100 + i64::from(n)),
            priority: if n % 3 == 0 {
                EventPriority::Critical
            } else {
                EventPriority::Normal
            },
            session_id: (n == 1).then(|| sessions[0].id),
            conversation_id: None,
            payload: json!({"n": n, "text": "payload ✓"}).into(),
            metadata: serde_json::Map::new(),
            position: Some(u64::from(n) + 1),
            format_version: 1,
        })
        .collect();
    let cursors = vec![
        (
            StorageKey::parse("worker:task:s").expect("valid"),
            Cursor::at(2),
        ),
        (
            StorageKey::parse("monitor:agent.g").expect("valid"),
            Cursor::at(6),
        ),
    ];
    let kv = vec![
        (
            StorageKey::parse("config:a").expect("valid"),
            b"{\"x\":1}".to_vec(),
        ),
        (
            StorageKey::parse("blob.b").expect("valid"),
            vec![0, 1, 2, 255],
        ),
    ];
    Content {
        sessions,
        events,
        cursors,
        kv,
    }
}

/// Writes `content` through `store` (what `write-fixture` did).
pub async fn write(store: &dyn Store, content: &Content) -> anyhow::Result<()> {
    for session in &content.sessions {
        let mut header = session.clone();
        header.messages.clear();
        store.save_session(&header, Expected::Absent).await?;
        // Appends in two calls, so the history is rows added over time.
        let (first, rest) = session.messages.split_at(session.messages.len() / 2);
        store
            .append_messages(session.id, first, AppendGuard::NONE)
            .await?;
        store
            .append_messages(session.id, rest, AppendGuard::NONE)
            .await?;
    }
    store.append_events(&content.events).await?;
    for (key, cursor) in &content.cursors {
        store.set_cursor(key, *cursor).await?;
    }
    for (key, value) in &content.kv {
        store.set(key, value, None).await?;
    }
    Ok(())
}

/// Reads everything back through `store` and compares it with `content`
/// (versions excepted: they depend on how the rows were written).
pub async fn check(store: &dyn Store, content: &Content) -> anyhow::Result<()> {
    for expected in &content.sessions {
        let mut stored = store
            .get_session(expected.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("session {} is missing", expected.id))?;
        stored.version = expected.version;
        anyhow::ensure!(
            &stored == expected,
            "session {} differs:\nstored   {stored:?}\nexpected {expected:?}",
            expected.id
        );
    }
    let events = store.read_events(0, &Default::default(), 100).await?;
    anyhow::ensure!(
        events == content.events,
        "events differ:\nstored   {events:?}\nexpected {:?}",
        content.events
    );
    for (key, cursor) in &content.cursors {
        let stored = store.cursor(key).await?;
        anyhow::ensure!(stored == Some(*cursor), "cursor {key}: {stored:?}");
    }
    for (key, value) in &content.kv {
        let stored = store.get(key).await?;
        anyhow::ensure!(
            stored.as_deref() == Some(value.as_slice()),
            "kv {key}: {stored:?}"
        );
    }
    Ok(())
}
