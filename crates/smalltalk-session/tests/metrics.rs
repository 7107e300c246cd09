//! The manager's metrics reach whatever recorder the application installs.

use smalltalk_session::{CreateOptions, SessionConfig, SessionManager};
use smalltalk_storage::MemoryStore;
use smalltalk_storage::contract::{FaultyStore, RecordingRecorder};
use smalltalk_types::{Message, Role, Timestamp};
use std::sync::Arc;

// A current-thread runtime: every operation records on this thread, where
// the local recorder is installed.
#[tokio::test(flavor = "current_thread")]
async fn every_session_metric_is_emitted() {
    let recording = RecordingRecorder::default();
    let _guard = metrics::set_default_local_recorder(&recording);
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let config = SessionConfig {
        max_active_sessions: 2,
        ..Default::default()
    };
    let sessions = SessionManager::builder(faulty.clone())
        .config(config)
        .build()
        .unwrap();

    let first = sessions.create(CreateOptions::default()).await.unwrap();
    sessions.create(CreateOptions::default()).await.unwrap();
    assert_eq!(recording.value("smalltalk_sessions_active"), 2.0);
    assert!(sessions.create(CreateOptions::default()).await.is_err());
    assert_eq!(recording.value("smalltalk_session_rejections_total"), 1.0);

    let stale = sessions.restore(first.id).await.unwrap();
    let _ = sessions.restore(first.id).await.unwrap();
    assert_eq!(
        recording.value("smalltalk_session_restore_seconds"),
        2.0,
        "one histogram value per restore"
    );
    sessions
        .update(first.id, |session| {
            session
                .metadata
                .insert("moves".into(), "the version on".into());
        })
        .await
        .unwrap();
    sessions.save(&stale).await.unwrap();
    assert_eq!(recording.value("smalltalk_session_conflicts_total"), 1.0);

    faulty.fail_writes(true);
    assert!(
        sessions
            .add_message(first.id, Message::new(Role::User, "x", Timestamp::now()))
            .await
            .is_err()
    );
    faulty.fail_writes(false);
    assert_eq!(
        recording.value("smalltalk_session_save_failures_total"),
        1.0
    );

    sessions.invalidate(first.id).await.unwrap();
    assert_eq!(recording.value("smalltalk_sessions_active"), 1.0);
}
