//! Contract cases for [`SessionStore`](crate::SessionStore) (and the
//! lifecycle calls of [`StoreAdmin`](crate::StoreAdmin)).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use smalltalk_types::{
    AgentId, AgentState, Message, Role, Session, SessionId, SessionState, StorageKey, Timestamp,
};

use super::{Backend, test_clock};
use crate::{AppendGuard, BackendKind, Error, Expected, SessionFilter, Store};

async fn open(backend: &impl Backend) -> Arc<dyn Store> {
    backend.open(test_clock()).await
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros(1_767_225_600_000_000 + seconds * 1_000_000)
}

/// A message whose content says where it came from.
pub fn message(text: &str, seconds: i64) -> Message {
    Message::new(Role::User, text, at(seconds))
}

/// A session exercising every field: unicode, nested JSON, agent states with
/// every field set, control characters including NUL, and a 1 MB message.
pub fn rich_session() -> Session {
    let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(7 * 24 * 3600));
    session.state = SessionState::Idle;
    session.updated_at = at(5);
    session
        .metadata
        .insert("title".into(), json!("Ünïcødé — 日本語 — emoji 🦀"));
    session.metadata.insert(
        "nested".into(),
        json!({"a": [1, 2.5, null, true], "b": {"c": "d"}}),
    );
    let writer = AgentId::parse("writer").expect("valid");
    let mut state = AgentState::new(writer.clone(), at(3));
    state.config = json!({"model": "gpt-x", "temperature": 0.2});
    state.context.insert("notes".into(), json!("long notes"));
    state.context.insert("plan".into(), json!(["a", "b"]));
    state.trimmable_fields = vec!["notes".into()];
    state
        .history
        .push(message("earlier turn", 1).with_agent(writer.clone()));
    session.agent_states.insert(writer.clone(), state);
    let mut reply = Message::new(
        Role::Assistant,
        "réponse \"quoted\" 'single' \\ back\nslash",
        at(2),
    )
    .with_agent(writer);
    reply.metadata.insert("tokens".into(), json!(42));
    session.messages.push(message("héllo 👋", 1));
    session.messages.push(reply);
    session
        .messages
        .push(Message::new(Role::Tool, "x".repeat(1024 * 1024), at(3)));
    session.messages.push(Message::new(Role::System, "", at(4)));
    session.messages.push(Message::new(
        Role::User,
        "nul \0 inside, tab \t, bell \u{7}",
        at(4),
    ));
    session
}

fn with_version(mut session: Session, version: u64) -> Session {
    session.version = version;
    session
}

/// Every field reads back exactly as written, including a 1 MB message.
pub async fn round_trip_every_field(backend: &impl Backend) {
    let store = open(backend).await;
    let session = rich_session();
    assert_eq!(
        store
            .save_session(&session, Expected::Absent)
            .await
            .unwrap(),
        1
    );
    let restored = store
        .get_session(session.id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(restored, with_version(session.clone(), 1));
    assert!(store.has_session(session.id).await.unwrap());
    let many = store.get_sessions(&[session.id]).await.unwrap();
    assert_eq!(many, vec![Some(with_version(session, 1))]);
}

/// A header over the compression threshold (a large agent state) reads
/// back exactly.
pub async fn large_header_round_trips(backend: &impl Backend) {
    let store = open(backend).await;
    let mut session = rich_session();
    let writer = AgentId::parse("writer").expect("valid");
    let big: String = (0..300_000)
        .map(|index| char::from(b'a' + (index * 7 % 26) as u8))
        .collect();
    session
        .agent_states
        .get_mut(&writer)
        .unwrap()
        .context
        .insert("big".into(), json!(big));
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    assert_eq!(
        store.get_session(session.id).await.unwrap().unwrap(),
        with_version(session.clone(), 1)
    );
    session.metadata.insert("step".into(), json!(2));
    store
        .save_session(&session, Expected::Version(1))
        .await
        .unwrap();
    assert_eq!(
        store.get_session(session.id).await.unwrap().unwrap(),
        with_version(session, 2)
    );
}

/// Unknown ids give `None`, `false` or `NotFound`, never a panic.
pub async fn not_found(backend: &impl Backend) {
    let store = open(backend).await;
    let unknown = SessionId::new();
    assert_eq!(store.get_session(unknown).await.unwrap(), None);
    assert!(!store.has_session(unknown).await.unwrap());
    assert!(!store.delete_session(unknown).await.unwrap());
    let appended = store
        .append_messages(unknown, &[message("x", 1)], AppendGuard::NONE)
        .await;
    assert!(
        matches!(appended, Err(Error::NotFound { id }) if id == unknown),
        "{appended:?}"
    );
    let session = Session::new(unknown, at(0), Duration::from_secs(60));
    let saved = store.save_session(&session, Expected::Version(1)).await;
    assert!(
        matches!(saved, Err(Error::NotFound { id }) if id == unknown),
        "{saved:?}"
    );
    assert!(
        !store.has_session(unknown).await.unwrap(),
        "a failed save must not create"
    );
    let known = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    store.save_session(&known, Expected::Absent).await.unwrap();
    let many = store
        .get_sessions(&[unknown, known.id, unknown])
        .await
        .unwrap();
    assert_eq!(
        many.iter().map(Option::is_some).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(store.delete_sessions(&[unknown]).await.unwrap(), 0);
}

/// A stale version is a typed conflict and writes nothing.
pub async fn compare_and_swap(backend: &impl Backend) {
    let store = open(backend).await;
    let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    assert_eq!(
        store
            .save_session(&session, Expected::Absent)
            .await
            .unwrap(),
        1
    );
    let again = store.save_session(&session, Expected::Absent).await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );

    session.metadata.insert("step".into(), json!(2));
    assert_eq!(
        store
            .save_session(&session, Expected::Version(1))
            .await
            .unwrap(),
        2
    );

    let mut stale = session.clone();
    stale.metadata.insert("step".into(), json!("stale"));
    let conflict = store.save_session(&stale, Expected::Version(1)).await;
    assert!(
        matches!(conflict, Err(Error::Conflict { expected: 1, found: 2, id }) if id == session.id),
        "{conflict:?}"
    );
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(
        stored.metadata["step"],
        json!(2),
        "a conflict must not overwrite"
    );
    assert_eq!(stored.version, 2);

    let appended = store
        .append_messages(session.id, &[message("m", 1)], AppendGuard::at_version(1))
        .await;
    assert!(
        matches!(
            appended,
            Err(Error::Conflict {
                expected: 1,
                found: 2,
                ..
            })
        ),
        "{appended:?}"
    );
    assert!(
        store
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .messages
            .is_empty()
    );

    // Last write wins when asked for, and creates when absent.
    assert_eq!(store.save_session(&stale, Expected::Any).await.unwrap(), 3);
    assert_eq!(
        store
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .metadata["step"],
        json!("stale")
    );
    let fresh = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    assert_eq!(store.save_session(&fresh, Expected::Any).await.unwrap(), 1);
}

/// `save_and_append` writes the header under compare-and-swap and appends
/// in one transaction: a lost race appends nothing, other appends in
/// between do not conflict, and exactly one of several racing writers at
/// one version commits.
pub async fn save_and_append_commits_once(backend: &impl Backend) {
    let store = open(backend).await;
    let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    session.metadata.insert("turn".into(), json!(0));
    let created = store
        .save_and_append(
            &session,
            Expected::Absent,
            &[message("a", 1), message("b", 2)],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            created.version,
            created.first_sequence,
            created.message_count
        ),
        (1, 0, 2)
    );
    let again = store
        .save_and_append(&session, Expected::Absent, &[message("dup", 3)])
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );

    // An append from elsewhere in between does not move the version.
    store
        .append_messages(session.id, &[message("other", 3)], AppendGuard::NONE)
        .await
        .unwrap();
    session.metadata.insert("turn".into(), json!(1));
    // The snapshot's own messages are ignored.
    session.messages.push(message("ignored", 4));
    let turn = store
        .save_and_append(&session, Expected::Version(1), &[message("c", 9)])
        .await
        .unwrap();
    assert_eq!(
        (turn.version, turn.first_sequence, turn.message_count),
        (2, 3, 4)
    );

    let mut stale = session.clone();
    stale.metadata.insert("turn".into(), json!("stale"));
    let lost = store
        .save_and_append(&stale, Expected::Version(1), &[message("lost", 10)])
        .await;
    assert!(
        matches!(
            lost,
            Err(Error::Conflict {
                expected: 1,
                found: 2,
                ..
            })
        ),
        "{lost:?}"
    );
    let missing = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    let absent = store
        .save_and_append(&missing, Expected::Version(1), &[message("x", 1)])
        .await;
    assert!(matches!(absent, Err(Error::NotFound { .. })), "{absent:?}");
    assert!(!store.has_session(missing.id).await.unwrap());

    let mut deep = message("deep", 11);
    deep.metadata.insert("x".into(), nested_json(200));
    let refused = store
        .save_and_append(&stale, Expected::Version(2), &[message("ok", 11), deep])
        .await;
    assert!(is_too_deep(&refused), "{refused:?}");

    let stored = store.get_session(session.id).await.unwrap().unwrap();
    let texts: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        texts,
        ["a", "b", "other", "c"],
        "lost and refused writes appended nothing"
    );
    assert_eq!(stored.metadata["turn"], json!(1));
    assert_eq!(stored.version, 2);
    assert_eq!(
        stored.updated_at,
        at(9),
        "updated_at moves to the newest message"
    );

    // Blind writes land; racing writers at one version: exactly one wins.
    let blind = store
        .save_and_append(&stored, Expected::Any, &[message("blind", 12)])
        .await
        .unwrap();
    assert_eq!((blind.version, blind.first_sequence), (3, 4));
    let racers = (0..8).map(|writer| {
        let store = Arc::clone(&store);
        let mut header = stored.clone();
        header.messages.clear();
        header.metadata.insert("turn".into(), json!(writer));
        tokio::spawn(async move {
            let text = format!("racer {writer}");
            store
                .save_and_append(&header, Expected::Version(3), &[message(&text, 13)])
                .await
                .map(|_| text)
        })
    });
    let mut winners = Vec::new();
    for racer in racers.collect::<Vec<_>>() {
        match racer.await.unwrap() {
            Ok(text) => winners.push(text),
            Err(Error::Conflict { expected: 3, .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(stored.version, 4);
    assert_eq!(stored.messages.len(), 6);
    assert_eq!(stored.messages[5].content, winners[0]);
}

/// Appends keep order, never move the header's version (so they never
/// make a header change conflict), and move `updated_at` to the newest
/// message.
pub async fn append_order(backend: &impl Backend) {
    let store = open(backend).await;
    let session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let first = store
        .append_messages(
            session.id,
            &[message("a", 10), message("b", 11)],
            AppendGuard::NONE,
        )
        .await
        .unwrap();
    assert_eq!(
        (first.version, first.first_sequence, first.message_count),
        (1, 0, 2)
    );
    let second = store
        .append_messages(session.id, &[message("c", 9)], AppendGuard::at_version(1))
        .await
        .unwrap();
    assert_eq!(
        (second.version, second.first_sequence, second.message_count),
        (1, 2, 3)
    );
    let empty = store
        .append_messages(session.id, &[], AppendGuard::NONE)
        .await
        .unwrap();
    assert_eq!((empty.version, empty.message_count), (1, 3));
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    let texts: Vec<&str> = stored
        .messages
        .iter()
        .map(|message| message.content.as_str())
        .collect();
    assert_eq!(texts, ["a", "b", "c"]);
    assert_eq!(stored.version, 1);
    assert_eq!(
        stored.updated_at,
        at(11),
        "updated_at follows the newest message, never back"
    );
    let summary = &store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap()[0];
    assert_eq!(
        (summary.message_count, summary.version, summary.updated_at),
        (3, 1, at(11))
    );
}

/// A guarded append lands only on a session that accepts messages; the
/// rejection is typed, final, and writes nothing.
pub async fn append_guard(backend: &impl Backend) {
    let store = open(backend).await;
    let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(100));
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let open_now = AppendGuard::open_at(at(50));
    store
        .append_messages(session.id, &[message("ok", 50)], open_now)
        .await
        .unwrap();

    let expired = store
        .append_messages(
            session.id,
            &[message("late", 100)],
            AppendGuard::open_at(at(100)),
        )
        .await;
    assert!(
        matches!(expired, Err(Error::NotAccepting { state: SessionState::Expired, id }) if id == session.id),
        "{expired:?}"
    );

    session.state = SessionState::Idle;
    store
        .save_session(&session, Expected::Version(1))
        .await
        .unwrap();
    store
        .append_messages(session.id, &[message("idle ok", 51)], open_now)
        .await
        .unwrap();

    session.state = SessionState::Invalidated;
    store
        .save_session(&session, Expected::Version(2))
        .await
        .unwrap();
    let invalidated = store
        .append_messages(session.id, &[message("no", 52)], open_now)
        .await;
    assert!(
        matches!(
            invalidated,
            Err(Error::NotAccepting {
                state: SessionState::Invalidated,
                ..
            })
        ),
        "{invalidated:?}"
    );
    // Not accepting is reported before a version conflict: it is final.
    let both = AppendGuard {
        version: Some(1),
        open_at: Some(at(50)),
        not_invalidated: true,
    };
    let both = store
        .append_messages(session.id, &[message("no", 52)], both)
        .await;
    assert!(matches!(both, Err(Error::NotAccepting { .. })), "{both:?}");
    let flushed = store
        .append_messages(
            session.id,
            &[message("flushed", 53)],
            AppendGuard::not_invalidated(),
        )
        .await;
    assert!(
        matches!(
            flushed,
            Err(Error::NotAccepting {
                state: SessionState::Invalidated,
                ..
            })
        ),
        "{flushed:?}"
    );
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    let texts: Vec<&str> = stored
        .messages
        .iter()
        .map(|message| message.content.as_str())
        .collect();
    assert_eq!(texts, ["ok", "idle ok"], "rejected appends wrote nothing");
    assert_eq!(stored.version, 3);

    // Expired, not invalidated: a write-back flush still lands.
    let mut lapsed = Session::new(SessionId::new(), at(0), Duration::from_secs(10));
    lapsed.state = SessionState::Expired;
    store.save_session(&lapsed, Expected::Absent).await.unwrap();
    store
        .append_messages(
            lapsed.id,
            &[message("acknowledged", 20)],
            AppendGuard::not_invalidated(),
        )
        .await
        .unwrap();

    let unknown = store
        .append_messages(SessionId::new(), &[message("x", 1)], open_now)
        .await;
    assert!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "{unknown:?}"
    );
}

/// The header read gives everything but the history, and saving it back
/// keeps the history.
pub async fn header_without_history(backend: &impl Backend) {
    let store = open(backend).await;
    assert_eq!(
        store.get_session_header(SessionId::new()).await.unwrap(),
        None
    );
    let session = rich_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let mut header = store
        .get_session_header(session.id)
        .await
        .unwrap()
        .expect("stored");
    let mut expected = with_version(session.clone(), 1);
    expected.messages.clear();
    assert_eq!(header, expected);
    header.metadata.insert("changed".into(), json!(true));
    assert_eq!(
        store
            .save_session(&header, Expected::Version(1))
            .await
            .unwrap(),
        2
    );
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(
        stored.messages, session.messages,
        "saving a header keeps the history"
    );
    assert_eq!(stored.metadata["changed"], json!(true));
}

/// The summary reads the header's columns without the history.
pub async fn summary(backend: &impl Backend) {
    let store = open(backend).await;
    assert_eq!(
        store.get_session_summary(SessionId::new()).await.unwrap(),
        None
    );
    let session = rich_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    store
        .append_messages(session.id, &[message("more", 9)], AppendGuard::NONE)
        .await
        .unwrap();
    let summary = store
        .get_session_summary(session.id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        (
            summary.id,
            summary.state,
            summary.version,
            summary.message_count
        ),
        (
            session.id,
            SessionState::Idle,
            1,
            session.messages.len() as u64 + 1
        )
    );
    assert_eq!(
        (summary.created_at, summary.updated_at, summary.expires_at),
        (at(0), at(9), session.expires_at)
    );
    let listed = store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap();
    assert_eq!(listed, vec![summary]);
}

/// `save_session` appends the snapshot's new messages and never rewrites or
/// drops stored ones.
pub async fn save_never_rewrites_history(backend: &impl Backend) {
    let store = open(backend).await;
    let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    session.messages = vec![message("one", 1), message("two", 2)];
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();

    let mut edited = session.clone();
    edited.messages[0].content = "rewritten".into();
    edited.messages.push(message("three", 3));
    assert_eq!(
        store
            .save_session(&edited, Expected::Version(1))
            .await
            .unwrap(),
        2
    );
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    let texts: Vec<&str> = stored
        .messages
        .iter()
        .map(|message| message.content.as_str())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);

    let mut shorter = stored.clone();
    shorter.messages.truncate(1);
    shorter.state = SessionState::Idle;
    store
        .save_session(&shorter, Expected::Version(2))
        .await
        .unwrap();
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(
        stored.messages.len(),
        3,
        "a shorter snapshot must not drop history"
    );
    assert_eq!(stored.state, SessionState::Idle);
}

/// Filters by state and creation time; pages cover everything exactly once,
/// ordered by creation time.
pub async fn list_filters_and_pagination(backend: &impl Backend) {
    let store = open(backend).await;
    let mut expected_ids = Vec::new();
    for index in 0..10 {
        let mut session = Session::new(SessionId::new(), at(index), Duration::from_secs(60));
        session.state = if index % 3 == 0 {
            SessionState::Idle
        } else {
            SessionState::Active
        };
        session.messages = (0..index).map(|n| message(&n.to_string(), index)).collect();
        store
            .save_session(&session, Expected::Absent)
            .await
            .unwrap();
        expected_ids.push(session.id);
    }
    let all = store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|summary| summary.id).collect::<Vec<_>>(),
        expected_ids
    );
    assert_eq!(all[7].message_count, 7);
    assert_eq!(all[7].created_at, at(7));

    let idle = store
        .list_sessions(&SessionFilter {
            state: Some(SessionState::Idle),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        idle.iter().map(|summary| summary.id).collect::<Vec<_>>(),
        [0, 3, 6, 9].map(|i| expected_ids[i])
    );

    let recent = store
        .list_sessions(&SessionFilter {
            created_after: Some(at(6)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(recent.len(), 3, "strictly after");

    let mut paged = Vec::new();
    for page in 0..4 {
        let filter = SessionFilter {
            limit: Some(3),
            offset: page * 3,
            ..Default::default()
        };
        let rows = store.list_sessions(&filter).await.unwrap();
        assert!(rows.len() <= 3);
        paged.extend(rows.into_iter().map(|summary| summary.id));
    }
    assert_eq!(paged, expected_ids);
    let expired = SessionFilter {
        expired_at: Some(at(62)),
        ..Default::default()
    };
    let rows = store.list_sessions(&expired).await.unwrap();
    assert_eq!(
        rows.iter().map(|summary| summary.id).collect::<Vec<_>>(),
        [0, 1, 2].map(|i| expected_ids[i]),
        "expiry at or before"
    );
    let combined = SessionFilter {
        expired_at: None,
        state: Some(SessionState::Active),
        created_after: Some(at(1)),
        limit: Some(2),
        offset: 1,
        after: None,
    };
    let rows = store.list_sessions(&combined).await.unwrap();
    assert_eq!(
        rows.iter().map(|summary| summary.id).collect::<Vec<_>>(),
        [4, 5].map(|i| expected_ids[i])
    );
    let beyond = SessionFilter {
        offset: 100,
        ..Default::default()
    };
    assert!(store.list_sessions(&beyond).await.unwrap().is_empty());

    // Keyset pages: five more sessions share one creation time, so only
    // the id tells them apart; pages of 2 still cover each exactly once.
    for _ in 0..5 {
        let session = Session::new(SessionId::new(), at(100), Duration::from_secs(60));
        store
            .save_session(&session, Expected::Absent)
            .await
            .unwrap();
    }
    let everything: Vec<SessionId> = store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|summary| summary.id)
        .collect();
    assert_eq!(everything.len(), 15);
    let mut keyset = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_sessions(&SessionFilter {
                after: cursor,
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(crate::SessionCursor::after(last));
        keyset.extend(page.iter().map(|summary| summary.id));
    }
    assert_eq!(keyset, everything, "keyset pages in listing order");
}

/// Per-state counts.
pub async fn count_by_state(backend: &impl Backend) {
    let store = open(backend).await;
    for (state, count) in [(SessionState::Active, 3), (SessionState::Invalidated, 2)] {
        for _ in 0..count {
            let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
            session.state = state;
            store
                .save_session(&session, Expected::Absent)
                .await
                .unwrap();
        }
    }
    let counts = store.count_sessions_by_state().await.unwrap();
    assert_eq!(counts.get(&SessionState::Active), Some(&3));
    assert_eq!(counts.get(&SessionState::Invalidated), Some(&2));
    assert_eq!(counts.get(&SessionState::Idle), None);
}

/// Batch saves are atomic; batch reads keep order; batch deletes count.
pub async fn batches(backend: &impl Backend) {
    let store = open(backend).await;
    let sessions: Vec<Session> = (0..3)
        .map(|index| Session::new(SessionId::new(), at(index), Duration::from_secs(60)))
        .collect();
    let batch: Vec<(Session, Expected)> = sessions
        .iter()
        .map(|session| (session.clone(), Expected::Absent))
        .collect();
    assert_eq!(store.save_sessions(&batch).await.unwrap(), [1, 1, 1]);

    // One conflicting entry: nothing of the batch is written.
    let mut changed = sessions.clone();
    for session in &mut changed {
        session.metadata.insert("batch".into(), json!(2));
    }
    let failing = vec![
        (changed[0].clone(), Expected::Version(1)),
        (changed[1].clone(), Expected::Version(7)),
        (changed[2].clone(), Expected::Version(1)),
    ];
    let result = store.save_sessions(&failing).await;
    assert!(
        matches!(
            result,
            Err(Error::Conflict {
                expected: 7,
                found: 1,
                ..
            })
        ),
        "{result:?}"
    );
    let stored = store
        .get_sessions(
            &sessions
                .iter()
                .map(|session| session.id)
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    for session in stored {
        let session = session.unwrap();
        assert_eq!(
            session.version, 1,
            "no entry of a failed batch may be written"
        );
        assert!(session.metadata.is_empty());
    }
    let newcomer = Session::new(SessionId::new(), at(9), Duration::from_secs(60));
    let failing = vec![
        (newcomer.clone(), Expected::Absent),
        (changed[0].clone(), Expected::Absent),
    ];
    assert!(matches!(
        store.save_sessions(&failing).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(
        !store.has_session(newcomer.id).await.unwrap(),
        "a failed batch must not create"
    );

    let ok: Vec<(Session, Expected)> = changed
        .iter()
        .map(|session| (session.clone(), Expected::Version(1)))
        .collect();
    assert_eq!(store.save_sessions(&ok).await.unwrap(), [2, 2, 2]);
    let ids = [sessions[0].id, SessionId::new(), sessions[2].id];
    assert_eq!(store.delete_sessions(&ids).await.unwrap(), 2);
    assert!(store.has_session(sessions[1].id).await.unwrap());
    assert_eq!(store.stats().await.unwrap().sessions, 1);
}

/// Deleting the history keeps the session, its header and its later
/// appends in order.
pub async fn delete_history_keeps_the_session(backend: &impl Backend) {
    let store = open(backend).await;
    let session = rich_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    assert_eq!(
        store.delete_history(session.id).await.unwrap(),
        session.messages.len() as u64
    );
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert!(stored.messages.is_empty());
    assert_eq!(
        (stored.version, &stored.agent_states, &stored.metadata),
        (2, &session.agent_states, &session.metadata)
    );
    let summary = store
        .get_session_summary(session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.message_count, 0);
    let appended = store
        .append_messages(session.id, &[message("fresh", 9)], AppendGuard::NONE)
        .await
        .unwrap();
    assert_eq!((appended.first_sequence, appended.message_count), (0, 1));
    assert_eq!(
        store
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .messages[0]
            .content,
        "fresh"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.messages, 1);
    let unknown = store.delete_history(SessionId::new()).await;
    assert!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "{unknown:?}"
    );
}

/// Expired sessions are deleted with their history; others stay.
pub async fn delete_expired(backend: &impl Backend) {
    let store = open(backend).await;
    let mut ids = Vec::new();
    for ttl_seconds in [10, 20, 30] {
        let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(ttl_seconds));
        session.messages.push(message("m", 1));
        store
            .save_session(&session, Expected::Absent)
            .await
            .unwrap();
        ids.push(session.id);
    }
    assert_eq!(store.delete_expired_sessions(at(5)).await.unwrap(), 0);
    assert_eq!(
        store.delete_expired_sessions(at(20)).await.unwrap(),
        2,
        "expiry at `now` counts"
    );
    assert!(!store.has_session(ids[0]).await.unwrap());
    assert!(store.has_session(ids[2]).await.unwrap());
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.sessions, stats.messages),
        (1, 1),
        "history goes with its session"
    );
}

/// Counts and sizes reflect what is stored.
pub async fn stats(backend: &impl Backend) {
    let store = open(backend).await;
    let empty = store.stats().await.unwrap();
    assert_eq!(
        (
            empty.sessions,
            empty.messages,
            empty.kv_entries,
            empty.items()
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(empty.backend, store.backend());
    let session = rich_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    store
        .append_messages(session.id, &[message("more", 9)], AppendGuard::NONE)
        .await
        .unwrap();
    store
        .set(&StorageKey::parse("k").unwrap(), b"value", None)
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (
            stats.sessions,
            stats.messages,
            stats.kv_entries,
            stats.items()
        ),
        (1, 6, 1, 2)
    );
    assert!(
        stats.bytes > 1024 * 1024,
        "the 1 MB message is counted: {}",
        stats.bytes
    );
    assert!(
        stats.bytes < 2 * 1024 * 1024,
        "encoding overhead stays small: {}",
        stats.bytes
    );
    // SQLite stores the 1 MB payload as is; PostgreSQL compresses it
    // (TOAST), so only a non-empty size is common to both.
    match store.backend() {
        BackendKind::Sqlite => assert!(stats.on_disk_bytes.unwrap() >= 1024 * 1024, "{stats:?}"),
        BackendKind::Postgres => assert!(stats.on_disk_bytes.unwrap() > 0, "{stats:?}"),
        BackendKind::Memory => assert_eq!(stats.on_disk_bytes, None),
    }
    store.health_check().await.unwrap();
}

/// What was written is there after closing and reopening.
pub async fn persistence_across_reopen(backend: &impl Backend) {
    if !backend.persistent() {
        return;
    }
    let session = rich_session();
    {
        let store = open(backend).await;
        store
            .save_session(&session, Expected::Absent)
            .await
            .unwrap();
        store
            .append_messages(session.id, &[message("after save", 7)], AppendGuard::NONE)
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let store = open(backend).await;
    let restored = store
        .get_session(session.id)
        .await
        .unwrap()
        .expect("persisted");
    let mut expected = with_version(session, 1);
    expected.messages.push(message("after save", 7));
    expected.updated_at = at(7);
    // Message ids are random: compare everything but the last id.
    expected.messages.last_mut().unwrap().id = restored.messages.last().unwrap().id;
    assert_eq!(restored, expected);
}

/// 32 tasks appending to one session at once: every message is stored once.
pub async fn concurrent_appenders_lose_nothing(backend: &impl Backend) {
    const TASKS: usize = 32;
    const PER_TASK: usize = 10;
    let store = open(backend).await;
    let session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for index in 0..PER_TASK {
                let message = message(&format!("{task}/{index}"), 1);
                ids.push(message.id);
                store
                    .append_messages(session.id, &[message], AppendGuard::NONE)
                    .await
                    .unwrap();
            }
            ids
        }));
    }
    let mut sent = HashSet::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(stored.messages.len(), TASKS * PER_TASK);
    let stored_ids: HashSet<_> = stored.messages.iter().map(|message| message.id).collect();
    assert_eq!(stored_ids, sent, "every message exactly once");
    assert_eq!(stored.version, 1, "appends leave the header's version");
    // Each task's own messages keep their order.
    for task in 0..TASKS {
        let prefix = format!("{task}/");
        let order: Vec<usize> = stored
            .messages
            .iter()
            .filter_map(|message| message.content.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert_eq!(order, (0..PER_TASK).collect::<Vec<_>>());
    }
}

/// Header changes get through while others append: appends do not move
/// the version a header save compares on. A snapshot carrying new
/// messages, though, must still end where the stored history does, or it
/// is refused with `HistoryDiverged` and writes nothing.
pub async fn appends_never_conflict_header_changes(backend: &impl Backend) {
    let store = open(backend).await;
    let session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let mut header = store.get_session_header(session.id).await.unwrap().unwrap();
    store
        .append_messages(session.id, &[message("a", 1)], AppendGuard::NONE)
        .await
        .unwrap();
    header.metadata.insert("after".into(), json!("append"));
    assert_eq!(
        store
            .save_session(&header, Expected::Version(1))
            .await
            .unwrap(),
        2,
        "an append in between does not make the header save conflict"
    );

    // A snapshot read before another append, carrying a new message.
    let mut snapshot = store.get_session(session.id).await.unwrap().unwrap();
    store
        .append_messages(session.id, &[message("b", 2)], AppendGuard::NONE)
        .await
        .unwrap();
    snapshot.messages.push(message("mine", 3));
    let diverged = store.save_session(&snapshot, Expected::Version(2)).await;
    assert!(
        matches!(diverged, Err(Error::HistoryDiverged { version: 2, id }) if id == session.id),
        "{diverged:?}"
    );
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    let texts: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["a", "b"], "a diverged snapshot writes nothing");
    assert_eq!(stored.version, 2);

    // The same snapshot on top of the fresh history lands.
    let mut fresh = stored.clone();
    fresh.messages.push(message("mine", 3));
    assert_eq!(
        store
            .save_session(&fresh, Expected::Version(2))
            .await
            .unwrap(),
        3
    );
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    let texts: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["a", "b", "mine"]);
}

/// Blind saves racing to create one session all land, each with its own
/// version: none fails because another created the row first.
pub async fn concurrent_blind_saves_all_land(backend: &impl Backend) {
    const WRITERS: u64 = 8;
    let store = open(backend).await;
    let session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (store, mut session) = (Arc::clone(&store), session.clone());
        session.metadata.insert("writer".into(), json!(writer));
        tasks.push(tokio::spawn(async move {
            store.save_session(&session, Expected::Any).await
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=WRITERS).collect::<Vec<_>>());
    assert_eq!(
        store
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .version,
        WRITERS
    );
}

/// Hostile ids: path traversal, NUL, 10 KB strings, quotes and SQL
/// metacharacters, empty. Every one is refused with the same typed error
/// Stores a new session with `count` messages (`m0`, `m1`, ...) and
/// returns it, for tests that then look behind the store's back.
pub async fn stored_with_messages(store: &dyn crate::SessionStore, count: usize) -> Session {
    let mut session = Session::new(
        SessionId::new(),
        Timestamp::now(),
        Duration::from_secs(3600),
    );
    store
        .save_session(&session, Expected::Absent)
        .await
        .expect("save");
    let messages: Vec<Message> = (0..count)
        .map(|n| Message::new(Role::User, format!("m{n}"), Timestamp::now()))
        .collect();
    store
        .append_messages(session.id, &messages, AppendGuard::NONE)
        .await
        .expect("append");
    session.messages = messages;
    session
}

/// A JSON value `levels` deep.
pub fn nested_json(levels: usize) -> serde_json::Value {
    let mut value = json!("leaf");
    for _ in 0..levels {
        value = json!({ "deeper": value });
    }
    value
}

fn is_too_deep(result: &crate::Result<impl std::fmt::Debug>) -> bool {
    matches!(
        result,
        Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
    )
}

/// Whatever a write accepts, a read returns: metadata, agent states and
/// message metadata nested 200 levels deep are refused with a typed error
/// on every write path, and the session stays readable; values at the
/// documented limit round-trip.
pub async fn too_deep_values_are_refused(backend: &impl Backend) {
    use smalltalk_types::format::MAX_JSON_DEPTH;
    let store = open(backend).await;
    let mut deep = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    deep.metadata.insert("x".into(), nested_json(200));
    let refused = store.save_session(&deep, Expected::Absent).await;
    assert!(is_too_deep(&refused), "{refused:?}");
    assert!(!store.has_session(deep.id).await.unwrap(), "nothing stored");

    let mut session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    // At the limit (the map is one level): accepted and read back.
    session
        .metadata
        .insert("x".into(), nested_json(MAX_JSON_DEPTH - 1));
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();

    let mut with_state = session.clone();
    let mut state = AgentState::new(AgentId::parse("deep").unwrap(), at(1));
    state.config = nested_json(200);
    with_state
        .agent_states
        .insert(state.agent_id.clone(), state);
    let refused = store.save_session(&with_state, Expected::Version(1)).await;
    assert!(is_too_deep(&refused), "{refused:?}");

    let mut deep_message = message("deep", 2);
    deep_message.metadata.insert("x".into(), nested_json(200));
    let refused = store
        .append_messages(
            session.id,
            &[message("ok", 2), deep_message.clone()],
            AppendGuard::NONE,
        )
        .await;
    assert!(is_too_deep(&refused), "{refused:?}");
    let mut snapshot = session.clone();
    snapshot.messages.push(deep_message);
    let refused = store.save_session(&snapshot, Expected::Version(1)).await;
    assert!(is_too_deep(&refused), "{refused:?}");

    store
        .append_messages(session.id, &[message("after", 3)], AppendGuard::NONE)
        .await
        .unwrap();
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(stored.metadata, session.metadata);
    assert!(stored.agent_states.is_empty());
    let texts: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["after"], "refused writes stored nothing");
    assert_eq!(stored.version, 1);
}

/// before it can reach a backend, and the store is left unchanged.
pub async fn bad_ids_are_rejected(backend: &impl Backend) {
    let store = open(backend).await;
    let before = store.stats().await.unwrap();
    for text in hostile_ids() {
        for parsed in [
            SessionId::parse(&text).map(drop),
            AgentId::parse(&text).map(drop),
            StorageKey::parse(&text).map(drop),
        ] {
            assert!(
                matches!(parsed, Err(smalltalk_types::Error::InvalidId { .. })),
                "{text:?} must be refused"
            );
        }
        // A record carrying the id (as from a client or a tampered file)
        // does not decode either.
        let mut record = serde_json::to_value(Session::new(
            SessionId::new(),
            at(0),
            Duration::from_secs(1),
        ))
        .unwrap();
        record["agentStates"] =
            json!({ text.clone(): {"agentId": text.clone(), "updatedAt": at(0)} });
        assert!(serde_json::from_value::<Session>(record).is_err());
        record = json!({"id": text.clone(), "state": "active", "version": 1,
                        "createdAt": at(0), "updatedAt": at(0), "expiresAt": at(0)});
        assert!(serde_json::from_value::<Session>(record).is_err());
    }
    let after = store.stats().await.unwrap();
    assert_eq!(
        (before.sessions, before.kv_entries),
        (after.sessions, after.kv_entries)
    );
}

/// The hostile strings the suite tries everywhere.
pub fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "",
        "../../etc/passwd",
        "..",
        "/abs",
        "a\0b",
        "\0",
        "quote'",
        "\"double\"",
        "x'); DROP TABLE sessions; --",
        "%",
        "a;b",
        "a b",
        "\n",
        "C:\\windows",
    ]
    .iter()
    .map(|text| (*text).to_owned())
    .collect();
    ids.push("a".repeat(10 * 1024));
    ids
}

/// After `close`, calls fail with [`Error::Closed`] and do not write.
pub async fn closed_store_refuses_calls(backend: &impl Backend) {
    let store = open(backend).await;
    store.close().await.unwrap();
    store.close().await.unwrap();
    let session = Session::new(SessionId::new(), at(0), Duration::from_secs(60));
    let saved = store.save_session(&session, Expected::Absent).await;
    assert!(matches!(saved, Err(Error::Closed)), "{saved:?}");
    assert!(matches!(
        store.get_session(session.id).await,
        Err(Error::Closed)
    ));
    if backend.persistent() {
        let reopened = open(backend).await;
        assert!(!reopened.has_session(session.id).await.unwrap());
    }
}
