//! `async` durability: writes acknowledged from memory, flushed later, and
//! the FR-002a/b policy when flushes fail. Time is a ManualClock; nothing
//! sleeps.

use std::sync::Arc;
use std::time::Duration;

use smalltalk_session::{
    Appended, CreateOptions, Durability, Error, SessionConfig, SessionManager,
};
use smalltalk_storage::MemoryStore;
use smalltalk_storage::contract::FaultyStore;
use smalltalk_types::{
    AlertSeverity, ManualClock, Message, RecordingAlertSink, Role, SessionId, SessionState,
    Timestamp,
};

struct Fixture {
    sessions: SessionManager,
    faulty: Arc<FaultyStore>,
    clock: Arc<ManualClock>,
    alerts: Arc<RecordingAlertSink>,
}

fn fixture() -> Fixture {
    fixture_with(|config| config)
}

/// A fixture whose `async` configuration `adjust` changes last.
fn fixture_with(adjust: impl FnOnce(SessionConfig) -> SessionConfig) -> Fixture {
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(
        1_767_225_600_000_000,
    )));
    let faulty = FaultyStore::new(Arc::new(MemoryStore::with_clock(clock.clone())));
    let alerts = Arc::new(RecordingAlertSink::default());
    let config = SessionConfig {
        durability: Durability::Async {
            flush_interval: Duration::from_secs(1),
        },
        ..Default::default()
    };
    let sessions = SessionManager::builder(faulty.clone())
        .config(adjust(config))
        .clock(clock.clone())
        .alerts(alerts.clone())
        .build()
        .unwrap();
    Fixture {
        sessions,
        faulty,
        clock,
        alerts,
    }
}

/// Runs the due flushes; returns how many sessions were attempted.
async fn attempts(f: &Fixture) -> usize {
    let report = f.sessions.flush_due().await.unwrap();
    report.flushed + report.failed + report.dropped
}

fn text(content: &str) -> Message {
    Message::new(Role::User, content, Timestamp::EPOCH)
}

async fn stored_contents(f: &Fixture, id: SessionId) -> Vec<String> {
    f.faulty
        .inner()
        .get_session(id)
        .await
        .unwrap()
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.content)
        .collect()
}

#[tokio::test]
async fn writes_are_acknowledged_from_memory_visible_at_once_and_flushed() {
    let f = fixture();
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    for index in 0..3 {
        let ack = f
            .sessions
            .add_message(session.id, text(&format!("m{index}")))
            .await
            .unwrap();
        assert_eq!(ack, Appended::Buffered { pending: index + 1 });
    }
    f.sessions
        .update(session.id, |s| {
            s.metadata.insert("k".into(), "v".into());
        })
        .await
        .unwrap();
    assert!(
        stored_contents(&f, session.id).await.is_empty(),
        "not stored yet"
    );
    let seen = f.sessions.restore(session.id).await.unwrap();
    assert_eq!(seen.messages.len(), 3, "reads see acknowledged writes");
    assert_eq!(seen.metadata["k"], "v");
    assert_eq!(f.sessions.stats().await.unwrap().pending, 1);

    let report = f.sessions.flush().await.unwrap();
    assert_eq!((report.flushed, report.failed), (1, 0));
    assert_eq!(stored_contents(&f, session.id).await, ["m0", "m1", "m2"]);
    let stored = f
        .faulty
        .inner()
        .get_session(session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.metadata["k"], "v");
    assert_eq!(f.sessions.stats().await.unwrap().pending, 0);
    assert_eq!(
        f.sessions.restore(session.id).await.unwrap().messages.len(),
        3,
        "no double counting"
    );
}

#[tokio::test]
async fn failed_flushes_follow_the_retry_policy_alert_and_lose_nothing() {
    let f = fixture();
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .add_message(session.id, text("first"))
        .await
        .unwrap();
    f.faulty.fail_writes(true);

    // Attempt 1 fails at t0; the next write reports it, once.
    assert_eq!(f.sessions.flush().await.unwrap().failed, 1);
    let reported = f.sessions.add_message(session.id, text("refused")).await;
    assert!(
        matches!(reported, Err(Error::FlushFailed { .. })),
        "{reported:?}"
    );
    f.sessions
        .add_message(session.id, text("second"))
        .await
        .unwrap();

    // Nothing is retried before its time.
    let injected = f.faulty.injected();
    assert_eq!(attempts(&f).await, 0);
    assert_eq!(f.faulty.injected(), injected);

    // Then 1 s, 5 s, 30 s, and every 60 s after; the third failure alerts.
    let mut waits = vec![1, 5, 30];
    waits.extend([60; 6]);
    for (attempt, wait) in waits.into_iter().enumerate() {
        f.clock.advance(Duration::from_secs(wait - 1));
        assert_eq!(attempts(&f).await, 0, "attempt {} came early", attempt + 2);
        f.clock.advance(Duration::from_secs(1));
        assert_eq!(attempts(&f).await, 1, "attempt {} was due", attempt + 2);
    }
    let alerts = f.alerts.alerts();
    let errors: Vec<_> = alerts
        .iter()
        .filter(|alert| alert.severity == AlertSeverity::Error)
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one alert at the third failure: {alerts:?}"
    );
    assert_eq!(errors[0].context["retryCount"], 3);
    assert_eq!(errors[0].context["sessionId"], session.id.to_string());
    let critical = alerts
        .iter()
        .filter(|alert| alert.severity == AlertSeverity::Critical)
        .count();
    assert_eq!(
        critical, 1,
        "one CRITICAL once failing for 5 minutes (at t0 + 336 s), not repeated"
    );
    assert_eq!(f.sessions.stats().await.unwrap().save_failures, 10);

    // Recovery: everything acknowledged is stored, in order.
    f.faulty.fail_writes(false);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(attempts(&f).await, 1);
    assert_eq!(stored_contents(&f, session.id).await, ["first", "second"]);
    assert!(
        f.alerts
            .alerts()
            .iter()
            .any(|alert| alert.severity == AlertSeverity::Info),
        "recovery announced"
    );
    assert_eq!(f.sessions.stats().await.unwrap().pending, 0);

    // Re-armed: a new run of failures raises a new CRITICAL after 5 minutes.
    f.sessions
        .add_message(session.id, text("third"))
        .await
        .unwrap();
    f.faulty.fail_writes(true);
    f.sessions.flush().await.unwrap();
    f.clock.advance(Duration::from_secs(301));
    f.sessions.flush().await.unwrap();
    let critical = f
        .alerts
        .alerts()
        .iter()
        .filter(|alert| alert.severity == AlertSeverity::Critical)
        .count();
    assert_eq!(critical, 2);
}

#[tokio::test]
async fn close_flushes_and_reports_what_could_not_be_stored() {
    let f = fixture();
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .add_message(session.id, text("kept"))
        .await
        .unwrap();
    f.faulty.fail_writes(true);
    assert!(matches!(
        f.sessions.close().await,
        Err(Error::FlushFailed { .. })
    ));
    f.faulty.fail_writes(false);
    f.sessions.close().await.unwrap();
    assert_eq!(stored_contents(&f, session.id).await, ["kept"]);
}

#[tokio::test]
async fn invalidation_flushes_first_and_fails_if_it_cannot() {
    let f = fixture();
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .add_message(session.id, text("before"))
        .await
        .unwrap();
    f.faulty.fail_writes(true);
    let refused = f.sessions.invalidate(session.id).await;
    assert!(
        matches!(refused, Err(Error::FlushFailed { .. })),
        "{refused:?}"
    );
    f.faulty.fail_writes(false);
    let stored = f
        .faulty
        .inner()
        .get_session(session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.state,
        SessionState::Active,
        "not invalidated while writes were pending"
    );

    f.sessions.invalidate(session.id).await.unwrap();
    let tombstone = f
        .faulty
        .inner()
        .get_session(session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tombstone.state, SessionState::Invalidated);
    assert!(
        tombstone.messages.is_empty(),
        "content deleted with the invalidation"
    );
    assert_eq!(
        f.sessions.stats().await.unwrap().pending,
        0,
        "nothing left behind in memory"
    );
    let after = f.sessions.add_message(session.id, text("after")).await;
    assert!(matches!(after, Err(Error::Invalidated { .. })), "{after:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_background_flusher_stores_writes_every_interval() {
    let f = fixture();
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let _task = f.sessions.spawn_maintenance();
    f.sessions
        .add_message(session.id, text("buffered"))
        .await
        .unwrap();
    assert!(stored_contents(&f, session.id).await.is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(stored_contents(&f, session.id).await, ["buffered"]);
}

/// Cleanup applies the TTL to buffered writes too: an expired session's
/// pending writes go with it.
#[tokio::test]
async fn cleanup_drops_the_pending_writes_of_expired_sessions() {
    let f = fixture();
    let short = f
        .sessions
        .create(CreateOptions {
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        })
        .await
        .unwrap();
    let long = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions
        .update(short.id, |s| {
            s.metadata.insert("pending".into(), true.into());
        })
        .await
        .unwrap();
    f.sessions.add_message(long.id, text("kept")).await.unwrap();
    assert_eq!(f.sessions.stats().await.unwrap().pending, 2);
    f.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(f.sessions.cleanup_expired().await.unwrap(), 1);
    assert_eq!(
        f.sessions.stats().await.unwrap().pending,
        1,
        "only the live session's writes remain"
    );
    assert!(
        f.faulty
            .inner()
            .get_session(short.id)
            .await
            .unwrap()
            .is_none()
    );
    f.sessions.flush().await.unwrap();
    assert_eq!(stored_contents(&f, long.id).await, ["kept"]);
}

/// In `async` durability a value nested too deep is refused when written,
/// not acknowledged and then failing at every flush.
#[tokio::test]
async fn too_deep_values_are_refused_before_the_acknowledgement() {
    let f = fixture();
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    let nested = smalltalk_storage::contract::sessions::nested_json;
    let mut deep = text("deep");
    deep.metadata.insert("x".into(), nested(200));
    let added = f.sessions.add_message(session.id, deep).await;
    assert!(
        matches!(
            added,
            Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
        ),
        "{added:?}"
    );
    let updated = f
        .sessions
        .update(session.id, |s| {
            s.metadata.insert("x".into(), nested(200));
        })
        .await;
    assert!(
        matches!(
            updated,
            Err(Error::Domain(smalltalk_types::Error::TooDeep { .. }))
        ),
        "{updated:?}"
    );
    f.sessions
        .add_message(session.id, text("ok"))
        .await
        .unwrap();
    let report = f.sessions.flush().await.unwrap();
    assert_eq!((report.flushed, report.failed), (1, 0));
    let stored = f
        .faulty
        .inner()
        .get_session(session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.messages.len(), 1);
    assert!(stored.metadata.is_empty());
}

/// While storage fails, acknowledged messages pile up in memory only to
/// `max_pending_bytes`: past it appends are refused with a transient
/// typed error and nothing acknowledged is dropped; once flushes go
/// through there is room again.
#[tokio::test]
async fn the_write_back_buffer_is_capped_in_bytes() {
    let Fixture {
        sessions, faulty, ..
    } = fixture_with(|config| SessionConfig {
        max_pending_bytes: 8 * 1024,
        ..config
    });
    let session = sessions.create(CreateOptions::default()).await.unwrap();
    faulty.fail_writes(true);
    let kilobyte = || text(&"k".repeat(1024));
    let mut acknowledged = 0;
    let refused = loop {
        match sessions.add_message(session.id, kilobyte()).await {
            Ok(_) => acknowledged += 1,
            Err(error) => break error,
        }
        assert!(acknowledged < 100, "never refused");
    };
    assert!(
        matches!(refused, Error::Backpressure { limit: 8192, .. }),
        "{refused:?}"
    );
    assert!(refused.is_transient());
    assert!(
        (5..=7).contains(&acknowledged),
        "{acknowledged} acknowledged"
    );
    let _ = sessions.flush().await;
    faulty.fail_writes(false);
    let report = sessions.flush().await.unwrap();
    assert_eq!(report.flushed, 1);
    let stored = faulty
        .inner()
        .get_session(session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.messages.len(),
        acknowledged,
        "nothing acknowledged was dropped"
    );
    sessions.add_message(session.id, kilobyte()).await.unwrap();
}

/// A refused update in `async` durability buffers nothing: no empty pending
/// entry is left behind, and the closure's own error comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_buffers_nothing() {
    let f = fixture();
    let session = f.sessions.create(CreateOptions::default()).await.unwrap();
    f.sessions.flush().await.unwrap();
    assert_eq!(f.sessions.stats().await.unwrap().pending, 0);
    let refused = f
        .sessions
        .try_update(session.id, |s| {
            s.metadata.insert("half".into(), true.into());
            Err::<(), _>(Error::IdChanged { id: session.id })
        })
        .await;
    assert!(
        matches!(refused, Err(Error::IdChanged { .. })),
        "{refused:?}"
    );
    assert_eq!(
        f.sessions.stats().await.unwrap().pending,
        0,
        "nothing buffered"
    );
    assert!(
        f.sessions
            .get(session.id)
            .await
            .unwrap()
            .unwrap()
            .metadata
            .is_empty()
    );
}
