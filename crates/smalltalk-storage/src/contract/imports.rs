//! Contract cases for [`ImportLedger`](crate::ImportLedger).

use std::sync::Arc;

use smalltalk_types::{Clock, Timestamp};

use super::{Backend, test_clock};
use crate::{Error, ImportEntry, MAX_IMPORT_FIELD};

fn entry(kind: &str, original: &str, target: &str) -> ImportEntry {
    ImportEntry {
        kind: kind.into(),
        original_id: original.into(),
        target_id: target.into(),
        source: "/data/sessions".into(),
        imported_at: Timestamp::from_micros(1_700_000_000_000_000),
    }
}

/// The first entry for a kind and original id is kept; a second is
/// answered with the first, and changes nothing; kinds are apart.
pub async fn record_and_look_up(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    assert_eq!(store.imported("session", "s-1").await.unwrap(), None);
    let first = entry("session", "s-1", "3f0c1b7e-0d5b-4b7e-9a57-0c6c9e0f2a11");
    assert_eq!(store.record_import(&first).await.unwrap(), None);
    assert_eq!(
        store.imported("session", "s-1").await.unwrap(),
        Some(first.clone())
    );
    let again = entry("session", "s-1", "another-target");
    assert_eq!(
        store.record_import(&again).await.unwrap(),
        Some(first.clone()),
        "the first entry is answered"
    );
    assert_eq!(
        store.imported("session", "s-1").await.unwrap(),
        Some(first),
        "and stays"
    );
    // The same original id as an event is another record.
    let event = entry("event", "s-1", "e-target");
    assert_eq!(store.record_import(&event).await.unwrap(), None);
    assert_eq!(store.imported("event", "s-1").await.unwrap(), Some(event));
    // Ids are taken exactly: hostile ones are data, not SQL or paths.
    for odd in [
        "../../etc/passwd",
        "x'; DROP TABLE imports;--",
        "ünï cødé",
        "a\u{7f}b",
    ] {
        let odd_entry = entry("session", odd, "t");
        assert_eq!(
            store.record_import(&odd_entry).await.unwrap(),
            None,
            "{odd:?}"
        );
        assert_eq!(
            store.imported("session", odd).await.unwrap(),
            Some(odd_entry)
        );
    }
}

/// An entry with an empty, oversize or NUL-bearing field is refused, and
/// nothing is recorded.
pub async fn bad_entries_are_refused(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    let long = "x".repeat(MAX_IMPORT_FIELD + 1);
    for bad in [
        entry("", "a", "t"),
        entry("session", "", "t"),
        entry("session", "a", ""),
        entry("session", "a\0b", "t"),
        entry("session", &long, "t"),
        ImportEntry {
            source: long.clone(),
            ..entry("session", "a", "t")
        },
    ] {
        let refused = store.record_import(&bad).await;
        assert!(
            matches!(refused, Err(Error::InvalidImport { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(store.imported("session", "a").await.unwrap(), None);
}

/// Many importers racing to record the same original id: one records it,
/// every other is answered with that one.
pub async fn concurrent_records_keep_one(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    let mut tasks = Vec::new();
    for n in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mine = entry("session", "raced", &format!("target-{n}"));
            (store.record_import(&mine).await.unwrap(), mine)
        }));
    }
    let mut winners = Vec::new();
    let mut answered = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (None, mine) => winners.push(mine),
            (Some(first), _) => answered.push(first),
        }
    }
    assert_eq!(winners.len(), 1, "one records it");
    assert!(answered.iter().all(|first| *first == winners[0]));
    assert_eq!(
        store.imported("session", "raced").await.unwrap().as_ref(),
        Some(&winners[0])
    );
}

/// Recorded entries outlive the store.
pub async fn persistence_across_reopen(backend: &impl Backend) {
    if !backend.persistent() {
        return;
    }
    let clock = test_clock();
    let kept = ImportEntry {
        imported_at: clock.now(),
        ..entry("kv", "settings", "imported:settings")
    };
    {
        let store = backend.open(clock.clone()).await;
        store.record_import(&kept).await.unwrap();
        store.close().await.unwrap();
    }
    let store = backend.open(clock).await;
    assert_eq!(store.imported("kv", "settings").await.unwrap(), Some(kept));
}
