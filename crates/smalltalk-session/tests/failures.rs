//! What the manager does when storage fails: every write is either
//! acknowledged and stored, or reported with a transient error and absent.

use std::sync::Arc;

use smalltalk_session::{CreateOptions, Error, SessionManager};
use smalltalk_storage::MemoryStore;
use smalltalk_storage::contract::FaultyStore;
use smalltalk_types::{AgentId, AgentState, Message, Role, Timestamp};

fn message(text: &str) -> Message {
    Message::new(Role::User, text, Timestamp::now())
}

fn assert_transient<T: std::fmt::Debug>(result: smalltalk_session::Result<T>) {
    match result {
        Err(error @ Error::Storage(_)) => assert!(error.is_transient(), "{error:?}"),
        other => panic!("expected a transient storage error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_reported_counted_and_leave_no_trace() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let sessions = SessionManager::new(faulty.clone());
    let session = sessions.create(CreateOptions::default()).await.unwrap();
    sessions
        .add_message(session.id, message("acknowledged"))
        .await
        .unwrap();

    faulty.fail_writes(true);
    assert_transient(sessions.create(CreateOptions::default()).await);
    assert_transient(sessions.add_message(session.id, message("refused")).await);
    assert_transient(
        sessions
            .update(session.id, |s| {
                s.metadata.insert("lost".into(), true.into());
            })
            .await,
    );
    let state = AgentState::new(AgentId::parse("agent").unwrap(), Timestamp::now());
    assert_transient(sessions.update_agent_state(session.id, state).await);
    assert_eq!(faulty.injected(), 4);
    faulty.fail_writes(false);

    let stats = sessions.stats().await.unwrap();
    assert_eq!(stats.save_failures, 4);
    assert_eq!(stats.active, 1, "the refused creation left no slot taken");
    let stored = faulty
        .inner()
        .get_session(session.id)
        .await
        .unwrap()
        .unwrap();
    let contents: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        contents,
        ["acknowledged"],
        "only acknowledged writes are stored"
    );
    assert!(stored.metadata.is_empty() && stored.agent_states.is_empty());
    assert_eq!(stored.version, 1, "no header change landed");

    // Healed: writes land again.
    sessions
        .add_message(session.id, message("after"))
        .await
        .unwrap();
    assert_eq!(
        sessions.restore(session.id).await.unwrap().messages.len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reads_are_transient_errors() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let sessions = SessionManager::new(faulty.clone());
    let session = sessions.create(CreateOptions::default()).await.unwrap();
    faulty.fail_reads(true);
    assert_transient(sessions.restore(session.id).await);
    assert_transient(sessions.update(session.id, |_| ()).await);
    faulty.fail_reads(false);
    assert_eq!(sessions.restore(session.id).await.unwrap().id, session.id);
}

/// An invalidated session whose history cannot be deleted stays refused,
/// is retried by maintenance, and raises an alert after repeated failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_content_deletion_is_retried_and_alerted() {
    use smalltalk_types::{AlertSeverity, RecordingAlertSink};
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let alerts = Arc::new(RecordingAlertSink::default());
    let sessions = SessionManager::builder(faulty.clone())
        .alerts(alerts.clone())
        .build()
        .unwrap();
    let session = sessions.create(CreateOptions::default()).await.unwrap();
    sessions
        .add_message(session.id, message("private"))
        .await
        .unwrap();
    faulty.fail_operation("delete_history", true);
    sessions
        .invalidate(session.id)
        .await
        .expect("the invalidation itself succeeds");
    let refused = sessions.add_message(session.id, message("after")).await;
    assert!(
        matches!(refused, Err(Error::Invalidated { .. })),
        "{refused:?}"
    );
    assert_eq!(
        faulty
            .inner()
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        1
    );
    sessions.run_maintenance().await.unwrap();
    sessions.run_maintenance().await.unwrap();
    let errors = alerts
        .alerts()
        .iter()
        .filter(|alert| alert.severity == AlertSeverity::Error)
        .count();
    assert_eq!(errors, 1, "alerted at the third failure");
    faulty.fail_operation("delete_history", false);
    sessions.run_maintenance().await.unwrap();
    assert!(
        faulty
            .inner()
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .messages
            .is_empty(),
        "deleted on retry"
    );
    sessions.run_maintenance().await.unwrap();
    assert_eq!(faulty.injected(), 3, "no retry once done");
}
