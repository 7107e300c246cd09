//! The background maintenance task runs on its interval (virtual time: no
//! real waiting).

use std::sync::Arc;
use std::time::Duration;

use smalltalk_session::{CreateOptions, SessionConfig, SessionManager};
use smalltalk_storage::MemoryStore;
use smalltalk_types::{ManualClock, SessionState, Timestamp};

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn spawned_maintenance_runs_every_interval_until_dropped() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(
        1_767_225_600_000_000,
    )));
    let config = SessionConfig {
        idle_after: Some(Duration::from_secs(60)),
        maintenance_interval: Duration::from_secs(5),
        ..Default::default()
    };
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let sessions = SessionManager::builder(store)
        .config(config)
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = sessions.create(CreateOptions::default()).await.unwrap();
    let task = sessions.spawn_maintenance();
    clock.advance(Duration::from_secs(120));

    let state_after = |sessions: SessionManager, id| async move {
        sessions.get(id).await.unwrap().unwrap().state
    };
    // Not yet: the first run is one interval away.
    tokio::time::advance(Duration::from_secs(4)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        state_after(sessions.clone(), first.id).await,
        SessionState::Active
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        state_after(sessions.clone(), first.id).await,
        SessionState::Idle
    );

    // Dropped: it runs no more.
    drop(task);
    let second = sessions.create(CreateOptions::default()).await.unwrap();
    clock.advance(Duration::from_secs(120));
    tokio::time::advance(Duration::from_secs(30)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        state_after(sessions.clone(), second.id).await,
        SessionState::Active
    );
}
