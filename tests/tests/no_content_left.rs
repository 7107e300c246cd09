//! Privacy (SPEC: message content lives in the session's history and
//! nowhere else): after `invalidate` and the store's `close`, a marker
//! written into 50 messages appears nowhere: not in the SQLite file or its
//! WAL, not in any row PostgreSQL shows through SQL (announcements on the
//! event log included).

use std::sync::Arc;

use smalltalk::{EventBus, Message, Role, SessionManager, Timestamp};
use smalltalk_storage::contract::{PgBackend, SqliteBackend};

const MARKER: &str = "zq-private-marker-7f3a";

/// Runs the conversation and the invalidation on the store at `url`.
async fn converse_then_invalidate(url: &str) {
    let store = smalltalk::open(url).await.unwrap();
    let bus = EventBus::durable(store.clone()).await.unwrap();
    let sessions = SessionManager::builder(store.clone())
        .events(Arc::new(bus.clone()))
        .build()
        .unwrap();
    let session = sessions.create(Default::default()).await.unwrap();
    for n in 0..50 {
        let text = format!("turn {n}: {MARKER} and some more words");
        sessions
            .add_message(session.id, Message::new(Role::User, text, Timestamp::now()))
            .await
            .unwrap();
    }
    sessions.invalidate(session.id).await.unwrap();
    sessions.close().await.unwrap();
    bus.close().await;
    store.close().await.unwrap();
}

fn count_in(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_hold_no_invalidated_content() {
    let backend = SqliteBackend::fresh().await.unwrap();
    let path = backend.path().to_path_buf();
    converse_then_invalidate(&format!("sqlite://{}", path.display())).await;
    let mut hits = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = format!("{}{suffix}", path.display());
        if let Ok(bytes) = std::fs::read(&file) {
            hits.push((file, count_in(&bytes, MARKER.as_bytes())));
        }
    }
    assert!(!hits.is_empty());
    assert!(
        hits.iter().all(|(_, count)| *count == 0),
        "content left behind: {hits:?}"
    );
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_hold_no_invalidated_content() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    converse_then_invalidate(&backend.store_url()).await;
    let hex: String = MARKER.bytes().map(|byte| format!("{byte:02x}")).collect();
    for table in ["sessions", "messages", "events", "event_cursors", "kv"] {
        // The row as text shows bytea columns in hex.
        let hits = backend
            .scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE {table}::text LIKE '%{MARKER}%' OR {table}::text LIKE '%{hex}%'"
            ))
            .await
            .unwrap();
        assert_eq!(hits, 0, "content left behind in {table}");
    }
}
