//! What the manager announces through the event port.

use std::sync::Arc;

use smalltalk_session::{CreateOptions, SessionManager};
use smalltalk_storage::MemoryStore;
use smalltalk_types::{EventPriority, Message, RecordingEventSink, Role, SessionState, Timestamp};

#[tokio::test]
async fn changes_are_announced_after_they_are_acknowledged_and_refusals_are_not() {
    let events = Arc::new(RecordingEventSink::default());
    let sessions = SessionManager::builder(Arc::new(MemoryStore::new()))
        .events(events.clone())
        .build()
        .unwrap();
    let session = sessions.create(CreateOptions::default()).await.unwrap();
    let other = sessions.create(CreateOptions::default()).await.unwrap();
    sessions
        .add_message(
            session.id,
            Message::new(Role::User, "hello", Timestamp::now()),
        )
        .await
        .unwrap();
    sessions
        .update_state(session.id, SessionState::Idle)
        .await
        .unwrap();
    sessions.invalidate(session.id).await.unwrap();
    sessions.invalidate(session.id).await.unwrap();
    assert!(
        sessions
            .add_message(
                session.id,
                Message::new(Role::User, "refused", Timestamp::now())
            )
            .await
            .is_err()
    );
    assert!(sessions.delete(other.id).await.unwrap());
    assert!(!sessions.delete(other.id).await.unwrap());

    assert_eq!(
        events.topics(),
        [
            "session:created",
            "session:created",
            "session:message-added",
            "session:state-changed",
            "session:invalidated",
            "session:deleted",
        ],
        "one announcement per acknowledged change; none for refusals or repeats"
    );
    let announced = events.announcements();
    assert_eq!(announced[0].session_id, Some(session.id));
    // Ids, positions and counts: never the content, which must go with an
    // invalidation.
    assert_eq!(announced[2].payload["count"], 1);
    assert_eq!(announced[2].payload["firstSequence"], 0);
    assert_eq!(
        announced[2].payload["messageIds"].as_array().unwrap().len(),
        1
    );
    for announcement in &announced {
        let text = announcement.payload.to_string();
        assert!(!text.contains("hello"), "content announced: {text}");
    }
    assert_eq!(
        announced[3].payload,
        serde_json::json!({"from": "active", "to": "idle"})
    );
    assert_eq!(announced[4].priority, EventPriority::Critical);
    assert_eq!(announced[5].session_id, Some(other.id));
}
