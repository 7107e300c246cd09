//! The session manager's announcements reach event-bus subscribers through
//! the EventSink port (features `session` + `events`).

#![cfg(all(feature = "session", feature = "events"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use smalltalk::types::{EventPriority, SessionState};
use smalltalk::{
    CreateOptions, Delivery, EventBus, Message, Outcome, Role, SessionManager, SubscribeOptions,
    Timestamp,
};
use tokio::sync::mpsc;

#[tokio::test]
async fn session_changes_are_published_on_a_durable_bus() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = smalltalk::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await?;
    let bus = EventBus::durable(store.clone()).await?;
    let (tx, mut received) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _subscription = bus
        .subscribe(
            "session.>",
            "observer",
            {
                let seen = seen.clone();
                move |delivery: Delivery| {
                    let event = delivery.shared_event();
                    seen.lock().unwrap().push(event.clone());
                    tx.send(()).unwrap();
                    async { Outcome::Ack }
                }
            },
            SubscribeOptions::default(),
        )
        .await?;
    let sessions = SessionManager::builder(store.clone())
        .events(Arc::new(bus.clone()))
        .build()?;
    let session = sessions.create(CreateOptions::default()).await?;
    sessions
        .add_message(
            session.id,
            Message::new(Role::User, "hello", Timestamp::now()),
        )
        .await?;
    sessions
        .update_state(session.id, SessionState::Idle)
        .await?;
    sessions.invalidate(session.id).await?;
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await?
            .expect("bus delivered");
    }
    let events = seen.lock().unwrap().clone();
    let topics: Vec<String> = events.iter().map(|e| e.topic.to_string()).collect();
    assert_eq!(
        topics,
        [
            "session:created",
            "session:message-added",
            "session:state-changed",
            "session:invalidated"
        ]
    );
    assert!(events.iter().all(|e| e.session_id == Some(session.id)));
    assert_eq!(events[3].priority, EventPriority::Critical);
    assert!(events.iter().all(|e| e.position.is_some()));
    Ok(())
}
