//! Contract cases for [`KeyValueStore`](crate::KeyValueStore).

use std::time::Duration;

use smalltalk_types::{Clock, StorageKey};

use super::sessions::hostile_ids;
use super::{Backend, test_clock};

fn key(text: &str) -> StorageKey {
    StorageKey::parse(text).expect("valid key")
}

/// Values (binary, empty, 1 MB) read back exactly; overwrite replaces.
pub async fn round_trip(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    let binary: Vec<u8> = (0..=255).collect();
    let large = vec![0xA5_u8; 1024 * 1024];
    for (name, value) in [
        ("binary", &binary[..]),
        ("empty", &[][..]),
        ("large", &large[..]),
        ("text", "ünï ✓".as_bytes()),
    ] {
        store.set(&key(name), value, None).await.unwrap();
        assert_eq!(
            store.get(&key(name)).await.unwrap().as_deref(),
            Some(value),
            "{name}"
        );
        assert!(store.has(&key(name)).await.unwrap());
    }
    store.set(&key("text"), b"second", None).await.unwrap();
    assert_eq!(
        store.get(&key("text")).await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(store.get(&key("absent")).await.unwrap(), None);
    assert!(!store.has(&key("absent")).await.unwrap());
    assert!(store.delete(&key("text")).await.unwrap());
    assert!(!store.delete(&key("text")).await.unwrap());
    assert_eq!(store.get(&key("text")).await.unwrap(), None);
    // Keys are distinct by exact bytes: no case folding, no prefix matching.
    store.set(&key("Case"), b"upper", None).await.unwrap();
    assert_eq!(store.get(&key("case")).await.unwrap(), None);
    assert_eq!(store.get(&key("Cas")).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().kv_entries, 4);
}

/// An entry past its TTL reads as absent at once (by the injected clock,
/// no sleeping) and is removed by `purge_expired`; setting again resets it.
pub async fn ttl_expiry(backend: &impl Backend) {
    let clock = test_clock();
    let store = backend.open(clock.clone()).await;
    store
        .set(&key("short"), b"s", Some(Duration::from_secs(10)))
        .await
        .unwrap();
    store
        .set(&key("long"), b"l", Some(Duration::from_secs(100)))
        .await
        .unwrap();
    store.set(&key("forever"), b"f", None).await.unwrap();
    store
        .set(&key("renewed"), b"r", Some(Duration::from_secs(10)))
        .await
        .unwrap();

    clock.advance(Duration::from_secs(9));
    assert_eq!(
        store.get(&key("short")).await.unwrap().as_deref(),
        Some(&b"s"[..])
    );
    store
        .set(&key("renewed"), b"r2", Some(Duration::from_secs(10)))
        .await
        .unwrap();

    clock.advance(Duration::from_secs(1));
    assert_eq!(
        store.get(&key("short")).await.unwrap(),
        None,
        "expired exactly at its TTL"
    );
    assert!(!store.has(&key("short")).await.unwrap());
    assert!(
        !store.delete(&key("short")).await.unwrap(),
        "deleting an expired entry reports absent"
    );
    store
        .set(&key("short2"), b"x", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(
        store.get(&key("renewed")).await.unwrap().as_deref(),
        Some(&b"r2"[..])
    );

    clock.advance(Duration::from_secs(5));
    assert_eq!(
        store.purge_expired().await.unwrap(),
        1,
        "short2 (short was deleted)"
    );
    assert_eq!(store.stats().await.unwrap().kv_entries, 3);
    clock.advance(Duration::from_secs(1000));
    assert_eq!(store.purge_expired().await.unwrap(), 2);
    assert_eq!(
        store.get(&key("forever")).await.unwrap().as_deref(),
        Some(&b"f"[..])
    );
    store
        .set(&key("forever"), b"f", Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        store.get(&key("forever")).await.unwrap(),
        None,
        "a zero TTL is already expired"
    );
}

/// Entries last set before the cutoff go; newer ones stay.
pub async fn clear_older_than(backend: &impl Backend) {
    let clock = test_clock();
    let store = backend.open(clock.clone()).await;
    store.set(&key("old"), b"1", None).await.unwrap();
    store.set(&key("touched"), b"1", None).await.unwrap();
    clock.advance(Duration::from_secs(60));
    let cutoff = clock.now();
    store.set(&key("new"), b"2", None).await.unwrap();
    store.set(&key("touched"), b"2", None).await.unwrap();
    assert_eq!(store.clear_older_than(cutoff).await.unwrap(), 1);
    assert_eq!(store.get(&key("old")).await.unwrap(), None);
    assert!(store.has(&key("new")).await.unwrap());
    assert!(store.has(&key("touched")).await.unwrap());
}

/// Values and TTLs survive reopening.
pub async fn persistence_across_reopen(backend: &impl Backend) {
    if !backend.persistent() {
        return;
    }
    let clock = test_clock();
    {
        let store = backend.open(clock.clone()).await;
        store.set(&key("kept"), b"v", None).await.unwrap();
        store
            .set(&key("ttl"), b"t", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let store = backend.open(clock.clone()).await;
    assert_eq!(
        store.get(&key("kept")).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert!(store.has(&key("ttl")).await.unwrap());
    clock.advance(Duration::from_secs(5));
    assert!(
        !store.has(&key("ttl")).await.unwrap(),
        "the TTL was persisted too"
    );
}

/// Hostile keys never become a [`StorageKey`], so never reach a backend.
pub async fn bad_keys_are_rejected(backend: &impl Backend) {
    let store = backend.open(test_clock()).await;
    for text in hostile_ids() {
        assert!(
            matches!(
                StorageKey::parse(&text),
                Err(smalltalk_types::Error::InvalidId { .. })
            ),
            "{text:?}"
        );
        assert!(serde_json::from_value::<StorageKey>(serde_json::Value::String(text)).is_err());
    }
    assert_eq!(store.stats().await.unwrap().kv_entries, 0);
}
