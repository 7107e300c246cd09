//! The registry of active subscriptions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use smalltalk_types::{StorageKey, SubscriberId, Topic};

use crate::subscription::SubShared;

/// The active subscriptions, with a generation that changes with them (the
/// dispatcher's per-topic cache is rebuilt when it does).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    subscriptions: RwLock<Vec<Arc<SubShared>>>,
    generation: AtomicU64,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<SubShared>>> {
        self.subscriptions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<SubShared>>> {
        self.subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn matching(&self, topic: &Topic) -> Vec<Arc<SubShared>> {
        self.read()
            .iter()
            .filter(|subscription| subscription.pattern.matches(topic))
            .cloned()
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<SubShared>> {
        self.read().clone()
    }

    pub(crate) fn has_key(&self, key: &StorageKey) -> bool {
        self.read()
            .iter()
            .any(|subscription| &subscription.key == key)
    }

    pub(crate) fn insert(&self, subscription: Arc<SubShared>) {
        self.write().push(subscription);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove(&self, serial: u64) {
        let mut subscriptions = self.write();
        let before = subscriptions.len();
        subscriptions.retain(|subscription| subscription.serial != serial);
        if subscriptions.len() != before {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn remove_subscriber(&self, subscriber: &SubscriberId) -> Vec<Arc<SubShared>> {
        let mut subscriptions = self.write();
        let (removed, kept): (Vec<_>, Vec<_>) = subscriptions
            .drain(..)
            .partition(|subscription| &subscription.subscriber == subscriber);
        *subscriptions = kept;
        if !removed.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    pub(crate) fn of_subscriber(&self, subscriber: &SubscriberId) -> Vec<Arc<SubShared>> {
        self.read()
            .iter()
            .filter(|subscription| &subscription.subscriber == subscriber)
            .cloned()
            .collect()
    }
}
