//! Event-bus measurements shared by the criterion bench and the report:
//!
//! - `publish_to_handler`: one publish at a time; the time from the
//!   publish call to each subscriber's handler starting (SC-008), with 1,
//!   10 or 100 subscribers.
//! - `throughput`: events per second from publishing tasks until one
//!   subscriber has handled them all (EVENT-THROUGHPUT).
//! - `replay`: an on-demand replay of a whole backlog to one subscriber,
//!   until its handler has had every event (SC-011).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use smalltalk_events::{
    Delivery, Draft, EventBus, EventBusConfig, Outcome, PublishOptions, ReplayOptions,
    SubscribeOptions,
};
use smalltalk_storage::Store;
use tokio::sync::Notify;

use crate::Samples;

/// A bus in memory, or durable over `store`.
pub async fn bus(store: Option<Arc<dyn Store>>, config: EventBusConfig) -> EventBus {
    let mut builder = EventBus::builder().config(config);
    if let Some(store) = store {
        builder = builder.log(store);
    }
    builder.build().await.expect("bus")
}

/// Counts handled events and wakes a waiter at a target.
#[derive(Default)]
struct Progress {
    handled: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
}

impl Progress {
    fn handled_one(&self) {
        let handled = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if handled == self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    /// Waits until `target` events in all were handled (fails after two
    /// minutes, rather than hang).
    async fn wait(&self, target: usize) {
        let reached = self.reached.notified();
        self.target.store(target, Ordering::Release);
        if self.handled.load(Ordering::Acquire) >= target {
            return;
        }
        if tokio::time::timeout(Duration::from_secs(120), reached)
            .await
            .is_err()
        {
            panic!(
                "only {} of {target} events handled after two minutes",
                self.handled.load(Ordering::Acquire)
            );
        }
    }
}

/// Subscribes a handler that only counts what it handled.
async fn counting(
    bus: &EventBus,
    pattern: &str,
    subscriber: &str,
) -> (Arc<Progress>, smalltalk_events::Subscription) {
    let progress = Arc::new(Progress::default());
    let handler = {
        let progress = Arc::clone(&progress);
        move |_: Delivery| {
            progress.handled_one();
            async { Outcome::Ack }
        }
    };
    let subscription = bus
        .subscribe(pattern, subscriber, handler, SubscribeOptions::default())
        .await
        .expect("subscribe");
    (progress, subscription)
}

/// SC-008: `count` publishes (after `warmup`), each measured from the call
/// to each of `subscribers` handlers starting.
pub async fn measure_publish_to_handler(
    bus: &EventBus,
    subscribers: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let epoch = Instant::now();
    let progress = Arc::new(Progress::default());
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count * subscribers)));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut subscriptions = Vec::new();
    for index in 0..subscribers {
        let (progress, latencies, measuring) = (
            Arc::clone(&progress),
            Arc::clone(&latencies),
            Arc::clone(&measuring),
        );
        let handler = move |delivery: Delivery| {
            let started = epoch.elapsed();
            // A handler decodes what it reads: part of what is measured.
            let sent = delivery
                .event()
                .payload
                .to_value()
                .ok()
                .and_then(|payload| payload["t"].as_u64());
            let sent = Duration::from_nanos(sent.unwrap_or(0));
            if measuring.load(Ordering::Relaxed) {
                latencies
                    .lock()
                    .expect("latencies")
                    .push(started.saturating_sub(sent));
            }
            progress.handled_one();
            async { Outcome::Ack }
        };
        subscriptions.push(
            bus.subscribe(
                "bench.*",
                &format!("sub-{index}"),
                handler,
                SubscribeOptions::default(),
            )
            .await
            .expect("subscribe"),
        );
    }
    for round in 0..warmup + count {
        if round == warmup {
            measuring.store(true, Ordering::Relaxed);
        }
        let sent = epoch.elapsed().as_nanos() as u64;
        bus.publish(
            "bench.tick",
            json!({ "t": sent }),
            PublishOptions::default(),
        )
        .await
        .expect("publish");
        progress.wait((round + 1) * subscribers).await;
    }
    for subscription in subscriptions {
        subscription.unsubscribe().await;
    }
    let samples = std::mem::take(&mut *latencies.lock().expect("latencies"));
    Samples::from_durations(samples)
}

/// EVENT-THROUGHPUT: `total` events published by `tasks` tasks (each
/// publish call carrying `batch` events) until one subscriber handled them
/// all; events per second.
pub async fn measure_throughput(bus: &EventBus, tasks: usize, batch: usize, total: usize) -> f64 {
    let (progress, subscription) = counting(bus, "load.*", "sink").await;
    let started = Instant::now();
    let per_task = total / tasks;
    publish_from(bus, tasks, batch, per_task).await;
    progress.wait(per_task * tasks).await;
    let rate = (per_task * tasks) as f64 / started.elapsed().as_secs_f64();
    subscription.unsubscribe().await;
    rate
}

/// Events per second `tasks` tasks publish one at a time, counted when
/// every publish returned (durable: committed to the log), with no
/// subscriber: the publishing path alone.
pub async fn measure_publish_rate(bus: &EventBus, tasks: usize, total: usize) -> f64 {
    let started = Instant::now();
    let per_task = total / tasks;
    publish_from(bus, tasks, 1, per_task).await;
    (per_task * tasks) as f64 / started.elapsed().as_secs_f64()
}

/// `tasks` tasks each publishing `per_task` events on `load.event`,
/// `batch` a call; returns when every publish has.
async fn publish_from(bus: &EventBus, tasks: usize, batch: usize, per_task: usize) {
    let mut publishers = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let bus = bus.clone();
        publishers.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < per_task {
                let size = batch.min(per_task - sent);
                if size == 1 {
                    bus.publish(
                        "load.event",
                        json!({ "n": sent }),
                        PublishOptions::default(),
                    )
                    .await
                    .expect("publish");
                } else {
                    let drafts = (0..size)
                        .map(|n| Draft::new("load.event", json!({ "n": sent + n })).expect("topic"))
                        .collect();
                    bus.publish_batch(drafts).await.expect("publish");
                }
                sent += size;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
}

/// Fills the log behind `bus` with `backlog` events for [`measure_replay`].
pub async fn fill(bus: &EventBus, backlog: usize) {
    for start in (0..backlog).step_by(1000) {
        let drafts = (start..backlog.min(start + 1000))
            .map(|n| {
                Draft::new(
                    "history.event",
                    json!({ "n": n, "text": "a short payload" }),
                )
                .expect("topic")
            })
            .collect();
        bus.publish_batch(drafts).await.expect("fill");
    }
}

/// SC-011: an on-demand replay of the whole log (`backlog` events) to one
/// subscriber, until its handler has had every one.
pub async fn measure_replay(
    bus: &EventBus,
    backlog: usize,
    warmup: usize,
    count: usize,
) -> Samples {
    let (progress, subscription) = counting(bus, "history.*", "replayer").await;
    let rounds = AtomicUsize::new(0);
    let samples = Samples::collect(warmup, count, || {
        let round = rounds.fetch_add(1, Ordering::Relaxed) + 1;
        let (bus, progress) = (bus.clone(), Arc::clone(&progress));
        async move {
            let report = bus
                .replay("replayer", ReplayOptions::default())
                .await
                .expect("replay");
            assert_eq!(report.delivered as usize, backlog);
            progress.wait(round * backlog).await;
        }
    })
    .await;
    subscription.unsubscribe().await;
    samples
}

/// One publish and its handling, repeatable (for criterion): a subscriber
/// on `bench.*` that counts what it handled.
pub struct RoundTrip {
    bus: EventBus,
    progress: Arc<Progress>,
    sent: AtomicUsize,
    _subscription: smalltalk_events::Subscription,
}

impl RoundTrip {
    /// Subscribes the counting handler to `bus`.
    pub async fn new(bus: EventBus) -> Self {
        let (progress, subscription) = counting(&bus, "bench.*", "round-trip").await;
        Self {
            bus,
            progress,
            sent: AtomicUsize::new(0),
            _subscription: subscription,
        }
    }

    /// Publishes one event and waits until the handler has it.
    pub async fn once(&self) {
        let sent = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        self.bus
            .publish(
                "bench.tick",
                json!({ "n": sent }),
                PublishOptions::default(),
            )
            .await
            .expect("publish");
        self.progress.wait(sent).await;
    }

    /// Waits until `live` events published directly (not through
    /// [`once`](Self::once)) were handled.
    pub async fn replay_settle(&self, live: usize) {
        let sent = self.sent.fetch_add(live, Ordering::Relaxed) + live;
        self.progress.wait(sent).await;
    }

    /// Replays the whole log (of `backlog` events on `bench.*`) to the
    /// handler and waits until it has every one.
    pub async fn replay(&self, backlog: usize) {
        let report = self
            .bus
            .replay("round-trip", ReplayOptions::default())
            .await
            .expect("replay");
        assert_eq!(report.delivered as usize, backlog);
        let sent = self.sent.fetch_add(backlog, Ordering::Relaxed) + backlog;
        self.progress.wait(sent).await;
    }
}
