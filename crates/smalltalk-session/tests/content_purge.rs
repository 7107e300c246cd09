//! Content purgers (the state store's session namespace) go with the
//! session: on invalidation, deletion and expiry, and before the session's
//! own content, so a failure leaves nothing behind.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_session::{CreateOptions, Error, SessionManager};
use smalltalk_storage::MemoryStore;
use smalltalk_types::{BoxError, ManualClock, SessionContentPurger, SessionId, Timestamp};

#[derive(Debug, Default)]
struct Recording {
    purged: Mutex<HashSet<SessionId>>,
    failing: AtomicBool,
}

#[async_trait]
impl SessionContentPurger for Recording {
    async fn purge_session(&self, session: SessionId) -> Result<(), BoxError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("the state store is down".into());
        }
        self.purged.lock().unwrap().insert(session);
        Ok(())
    }
}

fn manager(purger: Arc<Recording>, clock: Arc<ManualClock>) -> SessionManager {
    SessionManager::builder(Arc::new(MemoryStore::with_clock(clock.clone())))
        .clock(clock)
        .content_purger(purger)
        .build()
        .unwrap()
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::from_micros(
        1_767_225_600_000_000,
    )))
}

#[tokio::test]
async fn invalidation_deletion_and_expiry_purge_the_content() {
    let (purger, clock) = (Arc::new(Recording::default()), clock());
    let sessions = manager(Arc::clone(&purger), clock.clone());
    let invalidated = sessions.create(CreateOptions::default()).await.unwrap().id;
    let deleted = sessions.create(CreateOptions::default()).await.unwrap().id;
    let expiring = sessions
        .create(CreateOptions {
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let kept = sessions.create(CreateOptions::default()).await.unwrap().id;
    sessions.invalidate(invalidated).await.unwrap();
    assert!(sessions.delete(deleted).await.unwrap());
    clock.advance(Duration::from_secs(2 * 3600));
    sessions.cleanup_expired().await.unwrap();
    let purged = purger.purged.lock().unwrap().clone();
    assert_eq!(
        purged,
        HashSet::from([invalidated, deleted, expiring]),
        "{kept} is not purged"
    );
}

#[tokio::test]
async fn a_failing_purge_leaves_the_session_as_it_was() {
    let (purger, clock) = (Arc::new(Recording::default()), clock());
    let sessions = manager(Arc::clone(&purger), clock);
    let id = sessions.create(CreateOptions::default()).await.unwrap().id;
    purger.failing.store(true, Ordering::SeqCst);
    assert!(matches!(
        sessions.delete(id).await,
        Err(Error::PurgeFailed { id: failed, .. }) if failed == id
    ));
    assert!(matches!(
        sessions.invalidate(id).await,
        Err(Error::PurgeFailed { .. })
    ));
    // Neither happened: the session is still active.
    let session = sessions.restore(id).await.unwrap();
    assert_eq!(session.state, smalltalk_types::SessionState::Active);
    purger.failing.store(false, Ordering::SeqCst);
    assert!(sessions.delete(id).await.unwrap());
    assert!(purger.purged.lock().unwrap().contains(&id));
}
