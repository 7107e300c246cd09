//! The manager's metrics reach whatever recorder the application installs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use smalltalk_session::{CreateOptions, SessionConfig, SessionManager};
use smalltalk_storage::MemoryStore;
use smalltalk_storage::contract::FaultyStore;
use smalltalk_types::{Message, Role, Timestamp};

/// Counters and gauges by name (histograms: how many values recorded).
#[derive(Debug, Clone, Default)]
struct Recording(Arc<Mutex<BTreeMap<String, f64>>>);

struct Handle {
    name: String,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Handle {
    fn update(&self, change: impl FnOnce(&mut f64)) {
        change(
            self.values
                .lock()
                .unwrap()
                .entry(self.name.clone())
                .or_insert(0.0),
        );
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.update(|total| *total += value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|total| *total = value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.update(|gauge| *gauge += value);
    }
    fn decrement(&self, value: f64) {
        self.update(|gauge| *gauge -= value);
    }
    fn set(&self, value: f64) {
        self.update(|gauge| *gauge = value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, _value: f64) {
        self.update(|count| *count += 1.0);
    }
}

impl Recording {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            name: key.name().to_owned(),
            values: Arc::clone(&self.0),
        })
    }

    fn value(&self, name: &str) -> f64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

// A current-thread runtime: every operation records on this thread, where
// the local recorder is installed.
#[tokio::test(flavor = "current_thread")]
async fn every_session_metric_is_emitted() {
    let recording = Recording::default();
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
    assert_eq!(recording.value("session_count"), 2.0);
    assert!(sessions.create(CreateOptions::default()).await.is_err());
    assert_eq!(recording.value("session_rejections_total"), 1.0);

    let stale = sessions.restore(first.id).await.unwrap();
    let _ = sessions.restore(first.id).await.unwrap();
    assert_eq!(
        recording.value("session_restore_latency_ms"),
        2.0,
        "one histogram value per restore"
    );
    sessions
        .add_message(
            first.id,
            Message::new(Role::User, "moves the version on", Timestamp::now()),
        )
        .await
        .unwrap();
    sessions.save(&stale).await.unwrap();
    assert_eq!(recording.value("session_conflicts_total"), 1.0);

    faulty.fail_writes(true);
    assert!(
        sessions
            .add_message(first.id, Message::new(Role::User, "x", Timestamp::now()))
            .await
            .is_err()
    );
    faulty.fail_writes(false);
    assert_eq!(recording.value("session_save_failures_total"), 1.0);

    sessions.invalidate(first.id).await.unwrap();
    assert_eq!(recording.value("session_count"), 1.0);
}
