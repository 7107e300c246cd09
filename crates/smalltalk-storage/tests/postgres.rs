//! PostgreSQL-specific behaviour: cross-process wake-ups through the log's
//! notifications.

use std::sync::Arc;
use std::time::Duration;

use smalltalk_storage::contract::events::event;
use smalltalk_storage::contract::{Backend, PgBackend, test_clock};

use smalltalk_types::EventPriority;

/// Two stores on one database (separate pools and listener connections, as
/// two processes would have): an append through one wakes a waiter on the
/// other, through the server's NOTIFY.
#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_in_one_store_wakes_a_waiter_on_another() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let writer = backend.open(test_clock()).await;
    let reader = backend.open(test_clock()).await;
    writer
        .append_events(&[event("first", 1, EventPriority::Normal)])
        .await
        .unwrap();
    // A waiter that starts after the append sees it by reading, not by
    // notification; over ten rounds, only working notifications pass.
    for round in 1..=10_u64 {
        let waiter = {
            let reader = Arc::clone(&reader);
            // An hour: only a notification (or a late start) ends it.
            tokio::spawn(async move {
                reader
                    .wait_for_events(round, Duration::from_secs(3600))
                    .await
            })
        };
        writer
            .append_events(&[event("next", 2, EventPriority::Critical)])
            .await
            .unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("the notification must arrive");
        assert_eq!(woken.unwrap().unwrap(), round + 1);
    }
    reader.close().await.unwrap();
    writer.close().await.unwrap();
}

/// A message row damaged behind the store's back: the read names the
/// session and the message's position instead of failing opaquely, and a
/// damaged header is named too.
#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_row_is_named_by_the_read() {
    use smalltalk_storage::Error;
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let store = backend.open(test_clock()).await;
    let session =
        smalltalk_storage::contract::sessions::stored_with_messages(store.as_ref(), 3).await;
    backend
        .execute("UPDATE messages SET meta = '\\x7b6e6f7420'::bytea WHERE seq = 1")
        .await
        .unwrap();
    let read = store.get_session(session.id).await;
    assert!(
        matches!(&read, Err(Error::Undecodable { id, sequence: Some(1), .. }) if *id == session.id),
        "{read:?}"
    );
    backend
        .execute("UPDATE sessions SET header = '\\x5b5b'::bytea")
        .await
        .unwrap();
    let read = store.get_session_header(session.id).await;
    assert!(
        matches!(&read, Err(Error::Undecodable { sequence: None, .. })),
        "{read:?}"
    );
}

/// A schema a newer release migrated (blue-green: both releases on one
/// database): this release uses it as it is while the recorded floor (the
/// oldest release that may use it) is not above it, and refuses it when
/// it is.
#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_used_down_to_its_floor_and_refused_below() {
    use smalltalk_storage::Error;
    use smalltalk_storage::postgres::PgStore;
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    backend.open(test_clock()).await.close().await.unwrap();
    // A newer release ran an additive migration (its floor unchanged).
    backend
        .execute(
            "INSERT INTO smalltalk_migrations (version)
             SELECT MAX(version) + 1 FROM smalltalk_migrations",
        )
        .await
        .unwrap();
    let store = backend.open(test_clock()).await;
    let session =
        smalltalk_storage::contract::sessions::stored_with_messages(store.as_ref(), 2).await;
    assert_eq!(
        store
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        2
    );
    store.close().await.unwrap();
    // It marked the schema unusable by older releases.
    backend
        .execute(
            "UPDATE smalltalk_schema SET value = (SELECT MAX(version) FROM smalltalk_migrations)::text
              WHERE name = 'readable_from'",
        )
        .await
        .unwrap();
    let refused = PgStore::open_with(&backend.store_url(), test_clock()).await;
    assert!(
        matches!(
            &refused,
            Err(Error::SchemaTooNew { found, supported, readable_from })
                if *found == *supported + 1 && *readable_from == *found
        ),
        "{:?}",
        refused.as_ref().err()
    );
}
