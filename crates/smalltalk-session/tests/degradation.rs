//! Graceful degradation (FR-010a) as the session manager honours it.

use std::sync::Arc;

use smalltalk_session::{CreateOptions, Error, SessionConfig, SessionManager};
use smalltalk_storage::MemoryStore;
use smalltalk_types::{DegradationControl, SessionState};

#[tokio::test]
async fn degraded_pauses_new_sessions_and_halves_capacity() {
    let sessions = SessionManager::builder(Arc::new(MemoryStore::new()))
        .config(SessionConfig {
            max_active_sessions: 4,
            ..Default::default()
        })
        .build()
        .unwrap();
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(sessions.create(CreateOptions::default()).await.unwrap());
    }
    sessions
        .update_state(created[2].id, SessionState::Idle)
        .await
        .unwrap();
    sessions.set_degraded(true);
    assert!(sessions.is_degraded());
    assert!(matches!(
        sessions.create(CreateOptions::default()).await,
        Err(Error::Paused { .. })
    ));
    // Two are active, the halved limit: the idle one cannot come back.
    assert!(matches!(
        sessions
            .update_state(created[2].id, SessionState::Active)
            .await,
        Err(Error::CapacityExceeded { limit: 2, .. })
    ));
    sessions.set_degraded(false);
    sessions
        .update_state(created[2].id, SessionState::Active)
        .await
        .unwrap();
    sessions.create(CreateOptions::default()).await.unwrap();
}
