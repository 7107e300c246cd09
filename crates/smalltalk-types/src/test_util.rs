//! Test doubles, behind the `test-util` feature: a [`ManualClock`] that
//! moves only when told to, and sinks that record what they are given.
//! For tests of code built on SmallTalk-rs; not for production use.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Alert, AlertSink, Announcement, Clock, EventSink, Timestamp};

/// A clock that moves only when told to. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start.as_micros()))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.0.fetch_add(micros, Ordering::SeqCst);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        self.0.store(to.as_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// A sink that keeps every alert in memory, for tests.
#[derive(Debug, Default)]
pub struct RecordingAlertSink(Mutex<Vec<Alert>>);

impl RecordingAlertSink {
    /// A copy of the alerts raised so far.
    pub fn alerts(&self) -> Vec<Alert> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[async_trait]
impl AlertSink for RecordingAlertSink {
    async fn raise(&self, alert: Alert) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(alert);
    }
}

/// A sink that keeps every announcement in memory, for tests.
#[derive(Debug, Default)]
pub struct RecordingEventSink(Mutex<Vec<Announcement>>);

impl RecordingEventSink {
    /// A copy of the announcements so far, in order.
    pub fn announcements(&self) -> Vec<Announcement> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The topics announced so far, in order.
    pub fn topics(&self) -> Vec<String> {
        self.announcements()
            .into_iter()
            .map(|announcement| announcement.topic.to_string())
            .collect()
    }
}

#[async_trait]
impl EventSink for RecordingEventSink {
    async fn announce(&self, announcement: Announcement) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(announcement);
    }
}
