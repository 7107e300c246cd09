//! A metrics recorder that keeps what it is given, for tests that prove a
//! metric is emitted. Install it on the test's thread with
//! `metrics::set_default_local_recorder` (on a current-thread runtime, so
//! spawned tasks record on that thread too).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Counters and gauges by name (histograms: how many values recorded).
#[derive(Debug, Clone, Default)]
pub struct RecordingRecorder(Arc<Mutex<BTreeMap<String, f64>>>);

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

impl RecordingRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            name: key.name().to_owned(),
            values: Arc::clone(&self.0),
        })
    }

    /// A counter's total or a gauge's value by metric name; for a
    /// histogram, how many values were recorded. NaN if never emitted.
    pub fn value(&self, name: &str) -> f64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

impl Recorder for RecordingRecorder {
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
