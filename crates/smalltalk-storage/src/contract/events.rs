//! Contract cases for [`EventLog`](crate::EventLog).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use smalltalk_types::{
    ConversationId, Event, EventId, EventPriority, SessionId, StorageKey, Timestamp, Topic,
    TopicPattern,
};

use super::{Backend, test_clock};
use crate::{Error, EventFilter, Store};

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros(1_767_225_600_000_000 + seconds * 1_000_000)
}

/// An event on `topic` at `seconds` past the suite's epoch.
pub fn event(topic: &str, seconds: i64, priority: EventPriority) -> Event {
    Event {
        id: EventId::new(),
        topic: Topic::parse(topic).expect("valid topic"),
        event_type: "test".into(),
        publisher: "contract".into(),
        timestamp: at(seconds),
        priority,
        session_id: None,
        conversation_id: None,
        payload: json!({"text": "ünïcødé ✓", "n": seconds}).into(),
        metadata: serde_json::Map::new(),
        position: None,
        format_version: smalltalk_types::FORMAT_VERSION,
    }
}

fn normal(topic: &str, seconds: i64) -> Event {
    event(topic, seconds, EventPriority::Normal)
}

async fn open(backend: &impl Backend) -> Arc<dyn Store> {
    backend.open(test_clock()).await
}

fn all() -> EventFilter {
    EventFilter::default()
}

fn positions(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .map(|event| event.position.expect("positioned"))
        .collect()
}

/// Positions start at 1 and follow append order; events read back whole.
pub async fn append_and_read_in_order(backend: &impl Backend) {
    let log = open(backend).await;
    let mut first = normal("task:completed", 1);
    first.session_id = Some(SessionId::new());
    first.conversation_id = Some(ConversationId::new());
    first.metadata.insert("trace".into(), json!("abc"));
    let batch = vec![first, normal("a.b", 2), normal("a.c", 3)];
    assert_eq!(log.append_events(&batch).await.unwrap(), [1, 2, 3]);
    assert_eq!(
        log.append_events(&[normal("x", 4), normal("y", 5)])
            .await
            .unwrap(),
        [4, 5]
    );
    assert_eq!(log.append_events(&[]).await.unwrap(), Vec::<u64>::new());
    let read = log.read_events(0, &all(), 100).await.unwrap();
    assert_eq!(positions(&read), [1, 2, 3, 4, 5]);
    for (stored, sent) in read.iter().zip(&batch) {
        let mut expected = sent.clone();
        expected.position = stored.position;
        assert_eq!(stored, &expected);
    }
    assert_eq!(
        positions(&log.read_events(3, &all(), 100).await.unwrap()),
        [4, 5]
    );
    assert_eq!(
        positions(&log.read_events(0, &all(), 2).await.unwrap()),
        [1, 2]
    );
    assert!(log.read_events(5, &all(), 10).await.unwrap().is_empty());
    let bounds = log.log_bounds().await.unwrap();
    assert_eq!((bounds.first, bounds.last), (Some(1), 5));
}

/// A conditional append lands only at the expected position.
pub async fn conditional_append(backend: &impl Backend) {
    let log = open(backend).await;
    assert_eq!(log.log_bounds().await.unwrap().last, 0);
    assert_eq!(
        log.append_events_at(&[normal("a", 1)], 0).await.unwrap(),
        [1]
    );
    let stale = log.append_events_at(&[normal("b", 2)], 0).await;
    assert!(
        matches!(
            stale,
            Err(Error::PositionConflict {
                expected: 0,
                found: 1
            })
        ),
        "{stale:?}"
    );
    assert_eq!(log.log_bounds().await.unwrap().last, 1, "nothing written");
    assert_eq!(
        log.append_events_at(&[normal("b", 2), normal("c", 3)], 1)
            .await
            .unwrap(),
        [2, 3]
    );
    assert_eq!(log.read_events(0, &all(), 10).await.unwrap().len(), 3);
}

/// Every filter, alone and combined; the limit counts matching events.
pub async fn filters(backend: &impl Backend) {
    let log = open(backend).await;
    let session = SessionId::new();
    let conversation = ConversationId::new();
    let mut events = vec![
        normal("task:completed", 1),
        event("task.step.done", 2, EventPriority::Critical),
        normal("agent:heartbeat", 3),
        event("agent:failed", 4, EventPriority::Critical),
    ];
    events[1].session_id = Some(session);
    events[2].session_id = Some(session);
    events[3].conversation_id = Some(conversation);
    log.append_events(&events).await.unwrap();
    let read = |filter: EventFilter| {
        let log = Arc::clone(&log);
        async move { positions(&log.read_events(0, &filter, 100).await.unwrap()) }
    };
    let pattern = |text: &str| TopicPattern::parse(text).unwrap();
    assert_eq!(
        read(EventFilter {
            patterns: vec![pattern("task.>")],
            ..all()
        })
        .await,
        [1, 2]
    );
    assert_eq!(
        read(EventFilter {
            patterns: vec![pattern("agent:*")],
            ..all()
        })
        .await,
        [3, 4]
    );
    assert_eq!(
        read(EventFilter {
            patterns: vec![pattern("task:completed"), pattern("agent.failed")],
            ..all()
        })
        .await,
        [1, 4]
    );
    assert_eq!(
        read(EventFilter {
            priority: Some(EventPriority::Critical),
            ..all()
        })
        .await,
        [2, 4]
    );
    assert_eq!(
        read(EventFilter {
            session_id: Some(session),
            ..all()
        })
        .await,
        [2, 3]
    );
    assert_eq!(
        read(EventFilter {
            conversation_id: Some(conversation),
            ..all()
        })
        .await,
        [4]
    );
    assert_eq!(
        read(EventFilter {
            since: Some(at(2)),
            until: Some(at(4)),
            ..all()
        })
        .await,
        [2, 3]
    );
    let combined = EventFilter {
        patterns: vec![pattern("agent:*")],
        priority: Some(EventPriority::Normal),
        session_id: Some(session),
        ..all()
    };
    assert_eq!(read(combined).await, [3]);

    // Matches far apart: the limit counts matches, across read batches.
    let noise: Vec<Event> = (0..1500).map(|index| normal("noise", 10 + index)).collect();
    log.append_events(&noise).await.unwrap();
    log.append_events(&[
        normal("signal.a", 2000),
        normal("signal.b", 2001),
        normal("signal.c", 2002),
    ])
    .await
    .unwrap();
    let signal = EventFilter {
        patterns: vec![pattern("signal.*")],
        ..all()
    };
    let found = log.read_events(4, &signal, 2).await.unwrap();
    assert_eq!(positions(&found), [1505, 1506]);
    assert_eq!(
        positions(&log.read_events(1505, &signal, 10).await.unwrap()),
        [1506, 1507]
    );
}

/// Cursors are per subscriber, overwritable and deletable, and keep both
/// their acknowledged position and how far the log was while the
/// subscriber was there.
pub async fn cursors(backend: &impl Backend) {
    use crate::Cursor;
    let log = open(backend).await;
    let (alpha, beta) = (
        StorageKey::parse("alpha").unwrap(),
        StorageKey::parse("beta").unwrap(),
    );
    assert_eq!(log.cursor(&alpha).await.unwrap(), None);
    let live = Cursor {
        position: 5,
        live_until: 12,
    };
    log.set_cursor(&alpha, live).await.unwrap();
    log.set_cursor(&beta, Cursor::at(9)).await.unwrap();
    assert_eq!(log.cursor(&alpha).await.unwrap(), Some(live));
    log.set_cursor(&alpha, Cursor::at(3)).await.unwrap();
    assert_eq!(log.cursor(&alpha).await.unwrap(), Some(Cursor::at(3)));
    assert_eq!(log.event_log_stats().await.unwrap().cursors, 2);
    assert!(log.delete_cursor(&alpha).await.unwrap());
    assert!(!log.delete_cursor(&alpha).await.unwrap());
    assert_eq!(log.cursor(&alpha).await.unwrap(), None);
    assert_eq!(log.cursor(&beta).await.unwrap(), Some(Cursor::at(9)));
}

/// Purging removes old events; positions are never reused.
pub async fn purge_keeps_positions(backend: &impl Backend) {
    let log = open(backend).await;
    let events: Vec<Event> = (0..10).map(|seconds| normal("tick", seconds)).collect();
    log.append_events(&events).await.unwrap();
    assert_eq!(log.purge_events_before(at(5)).await.unwrap(), 5);
    let bounds = log.log_bounds().await.unwrap();
    assert_eq!((bounds.first, bounds.last), (Some(6), 10));
    assert_eq!(
        log.append_events(&[normal("tock", 20)]).await.unwrap(),
        [11]
    );
    assert_eq!(
        positions(&log.read_events(0, &all(), 100).await.unwrap()),
        [6, 7, 8, 9, 10, 11]
    );
    assert_eq!(log.purge_events_before(at(100)).await.unwrap(), 6);
    let bounds = log.log_bounds().await.unwrap();
    assert_eq!((bounds.first, bounds.last), (None, 11));
    assert_eq!(
        log.append_events(&[normal("later", 200)]).await.unwrap(),
        [12]
    );

    // Publishers' clocks disagree: purging goes by position, so no hole
    // opens mid-log (an old timestamp after a newer one is kept).
    let skewed: Vec<Event> = [300, 250, 400, 260]
        .into_iter()
        .map(|seconds| normal("skew", seconds))
        .collect();
    log.append_events(&skewed).await.unwrap();
    assert_eq!(log.purge_events_before(at(280)).await.unwrap(), 1);
    assert_eq!(
        positions(&log.read_events(0, &all(), 100).await.unwrap()),
        [13, 14, 15, 16],
        "the retained log is contiguous"
    );
}

/// Concurrent appenders get distinct, contiguous positions, and every
/// event is stored once.
pub async fn concurrent_appenders_get_contiguous_positions(backend: &impl Backend) {
    let log = open(backend).await;
    let mut tasks = Vec::new();
    for task in 0..16 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for index in 0..10 {
                let event = normal(&format!("task{task}.e{index}"), index);
                ids.push(event.id);
                log.append_events(&[event]).await.unwrap();
            }
            ids
        }));
    }
    let mut sent = HashSet::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    let read = log.read_events(0, &all(), 1000).await.unwrap();
    assert_eq!(positions(&read), (1..=160).collect::<Vec<u64>>());
    assert_eq!(
        read.iter().map(|event| event.id).collect::<HashSet<_>>(),
        sent
    );
}

/// Concurrent appenders of several events each, some conditional, are
/// each told their own events' positions (backends that batch appenders
/// cut each caller's range out of a shared one).
pub async fn concurrent_appenders_are_told_their_own_positions(backend: &impl Backend) {
    let log = open(backend).await;
    let mut tasks = Vec::new();
    for task in 0..12_usize {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut told = Vec::new();
            for round in 0..8_usize {
                let size = 1 + (task + round) % 3;
                let events: Vec<Event> = (0..size)
                    .map(|index| normal(&format!("t{task}.r{round}.e{index}"), index as i64))
                    .collect();
                let positions = if (task + round) % 4 == 0 {
                    // Conditional: at the head as last seen, again on a
                    // conflict.
                    loop {
                        let head = log.log_bounds().await.unwrap().last;
                        match log.append_events_at(&events, head).await {
                            Ok(positions) => break positions,
                            Err(crate::Error::PositionConflict { .. }) => {}
                            Err(error) => panic!("append_events_at: {error}"),
                        }
                    }
                } else {
                    log.append_events(&events).await.unwrap()
                };
                assert_eq!(positions.len(), size);
                told.extend(
                    positions
                        .into_iter()
                        .zip(events.iter().map(|event| event.id)),
                );
            }
            told
        }));
    }
    let mut told = Vec::new();
    for task in tasks {
        told.extend(task.await.unwrap());
    }
    let read = log.read_events(0, &all(), 10_000).await.unwrap();
    assert_eq!(
        positions(&read),
        (1..=told.len() as u64).collect::<Vec<u64>>(),
        "gap-free"
    );
    let stored: std::collections::HashMap<u64, smalltalk_types::EventId> = read
        .iter()
        .map(|event| (event.position.unwrap(), event.id))
        .collect();
    for (position, id) in told {
        assert_eq!(
            stored[&position], id,
            "position {position} is its caller's event"
        );
    }
}

/// Events, positions and cursors survive reopening.
pub async fn persistence_across_reopen(backend: &impl Backend) {
    if !backend.persistent() {
        return;
    }
    let key = StorageKey::parse("subscriber").unwrap();
    let written = {
        let log = open(backend).await;
        log.append_events(&[normal("a", 1), normal("b", 2)])
            .await
            .unwrap();
        log.set_cursor(&key, crate::Cursor::at(1)).await.unwrap();
        let written = log.read_events(0, &all(), 10).await.unwrap();
        log.close().await.unwrap();
        written
    };
    let log = open(backend).await;
    assert_eq!(log.read_events(0, &all(), 10).await.unwrap(), written);
    assert_eq!(log.cursor(&key).await.unwrap(), Some(crate::Cursor::at(1)));
    assert_eq!(log.append_events(&[normal("c", 3)]).await.unwrap(), [3]);
}

/// Waiters wake when an append through the store moves the log on; with
/// nothing new they return the newest position at their timeout.
pub async fn wakeups(backend: &impl Backend) {
    use std::time::Duration;
    let log = open(backend).await;
    assert_eq!(
        log.wait_for_events(0, Duration::from_millis(20))
            .await
            .unwrap(),
        0,
        "timeout, nothing new"
    );
    let waiter = {
        let log = Arc::clone(&log);
        // An hour: only a wake-up can end this within the bound below.
        tokio::spawn(async move { log.wait_for_events(0, Duration::from_secs(3600)).await })
    };
    log.append_events(&[normal("wake", 1)]).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the append must wake the waiter");
    assert_eq!(woken.unwrap().unwrap(), 1);
    // Already past: returns at once.
    let now = tokio::time::timeout(
        Duration::from_secs(30),
        log.wait_for_events(0, Duration::from_secs(3600)),
    );
    assert_eq!(now.await.expect("no wait when already past").unwrap(), 1);
    assert_eq!(
        log.wait_for_events(1, Duration::from_millis(20))
            .await
            .unwrap(),
        1
    );
}

/// Counts and sizes.
pub async fn stats(backend: &impl Backend) {
    let log = open(backend).await;
    let empty = log.event_log_stats().await.unwrap();
    assert_eq!(
        (empty.events, empty.bytes, empty.cursors, empty.bounds.last),
        (0, 0, 0, 0)
    );
    log.append_events(&[normal("a", 1), normal("b", 2)])
        .await
        .unwrap();
    log.set_cursor(&StorageKey::parse("s").unwrap(), crate::Cursor::at(2))
        .await
        .unwrap();
    let stats = log.event_log_stats().await.unwrap();
    assert_eq!(
        (
            stats.events,
            stats.cursors,
            stats.bounds.first,
            stats.bounds.last
        ),
        (2, 1, Some(1), 2)
    );
    assert!(stats.bytes > 100, "{stats:?}");
}

/// An event whose payload or metadata nests 200 levels deep is refused at
/// append with a typed error, and the log reads on as before.
pub async fn too_deep_events_are_refused(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    store.append_events(&[normal("a:b", 1)]).await.unwrap();
    let mut deep = normal("a:b", 2);
    deep.payload = super::sessions::nested_json(200).into();
    let refused = store.append_events(&[normal("a:b", 2), deep.clone()]).await;
    assert!(
        matches!(
            refused,
            Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
        ),
        "{refused:?}"
    );
    let mut deep_metadata = normal("a:b", 2);
    deep_metadata
        .metadata
        .insert("x".into(), super::sessions::nested_json(200));
    let refused = store.append_events_at(&[deep_metadata], 1).await;
    assert!(
        matches!(
            refused,
            Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
        ),
        "{refused:?}"
    );
    store.append_events(&[normal("a:c", 3)]).await.unwrap();
    let read = store.read_events(0, &all(), 100).await.unwrap();
    assert_eq!(
        positions(&read),
        [1, 2],
        "nothing of the refused batches went in"
    );
}
