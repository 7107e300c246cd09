//! A failing log or a subscription stopped mid-way delays delivery; it
//! never loses an event or moves a cursor past one not handled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use smalltalk_events::{
    Delivery, EventBus, EventBusConfig, Outcome, PublishOptions, SubscribeOptions,
};
use smalltalk_storage::contract::FaultyStore;
use smalltalk_storage::{MemoryStore, Store};
use smalltalk_types::{EventReplayPolicy, ReplayMode};
use tokio::sync::{Semaphore, watch};

fn full() -> SubscribeOptions {
    SubscribeOptions::default().policy(EventReplayPolicy {
        mode: ReplayMode::Full,
        ..Default::default()
    })
}

/// Records topics; waits for counts.
#[derive(Clone)]
struct Seen {
    topics: Arc<Mutex<Vec<String>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Seen {
    fn new() -> Self {
        Self {
            topics: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }

    fn record(&self, delivery: &Delivery) {
        self.topics
            .lock()
            .unwrap()
            .push(delivery.event().topic.to_string());
        self.count.send_modify(|count| *count += 1);
    }

    async fn wait_for(&self, n: usize) {
        let mut count = self.count.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(20), count.wait_for(|seen| *seen >= n)).await;
        assert!(waited.is_ok(), "saw only {:?}", self.topics());
    }

    fn topics(&self) -> Vec<String> {
        self.topics.lock().unwrap().clone()
    }
}

async fn durable(faulty: &Arc<FaultyStore>, config: EventBusConfig) -> EventBus {
    EventBus::builder()
        .config(config)
        .log(Arc::clone(faulty) as Arc<dyn Store>)
        .build()
        .await
        .unwrap()
}

async fn publish(bus: &EventBus, topic: &str) {
    bus.publish(topic, json!(null), PublishOptions::default())
        .await
        .unwrap();
}

/// Waits (up to 20 s, then fails) until `count` faults were injected.
async fn faults(faulty: &FaultyStore, what: &str, count: u64) {
    let waited =
        tokio::time::timeout(Duration::from_secs(20), faulty.wait_for_injected(count)).await;
    assert!(waited.is_ok(), "timed out: {what}");
}

/// The log fails while a subscriber must catch up after a queue overflow:
/// it waits for the log instead of handling what comes after the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_waits_for_a_failing_log() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let bus = durable(
        &faulty,
        EventBusConfig {
            queue_capacity: 1,
            ..Default::default()
        },
    )
    .await;
    let gate = Arc::new(Semaphore::new(0));
    let seen = Seen::new();
    let handler = {
        let (gate, seen) = (gate.clone(), seen.clone());
        move |delivery: Delivery| {
            let (gate, seen) = (gate.clone(), seen.clone());
            async move {
                seen.record(&delivery);
                gate.acquire().await.unwrap().forget();
                Outcome::Ack
            }
        }
    };
    let _subscription = bus
        .subscribe("f.*", "patient", handler, SubscribeOptions::default())
        .await
        .unwrap();
    publish(&bus, "f.e1").await;
    seen.wait_for(1).await; // in the handler
    publish(&bus, "f.e2").await; // queued
    publish(&bus, "f.e3").await; // dropped: the queue is full
    faulty.fail_operation("read_events", true);
    faulty.fail_operation("log_bounds", true);
    gate.add_permits(100);
    faults(&faulty, "catch-up attempts to fail", 3).await;
    publish(&bus, "f.e4").await;
    assert_eq!(
        seen.topics(),
        ["f.e1"],
        "nothing past the gap while the log fails"
    );
    faulty.fail_operation("read_events", false);
    faulty.fail_operation("log_bounds", false);
    seen.wait_for(4).await;
    assert_eq!(seen.topics(), ["f.e1", "f.e2", "f.e3", "f.e4"]);
}

/// The replay on re-subscribe fails at first: live events wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replay_is_retried_before_live_events() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let bus = durable(&faulty, EventBusConfig::default()).await;
    let seen = Seen::new();
    let handler = {
        let seen = seen.clone();
        move |delivery: Delivery| {
            seen.record(&delivery);
            async { Outcome::Ack }
        }
    };
    let first = bus
        .subscribe("r.*", "returning", handler.clone(), full())
        .await
        .unwrap();
    publish(&bus, "r.before").await;
    seen.wait_for(1).await;
    first.unsubscribe().await;
    publish(&bus, "r.missed").await;
    faulty.fail_operation("read_events", true);
    let _again = bus
        .subscribe("r.*", "returning", handler, full())
        .await
        .unwrap();
    publish(&bus, "r.live").await;
    faults(&faulty, "replay attempts to fail", 2).await;
    assert_eq!(seen.topics(), ["r.before"]);
    faulty.fail_operation("read_events", false);
    seen.wait_for(3).await;
    assert_eq!(seen.topics(), ["r.before", "r.missed", "r.live"]);
}

/// Unsubscribed while waiting to redeliver a nak'd event: its position is
/// not saved as handled, so the next subscription gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_abandoned_mid_retry_is_delivered_next_time() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let bus = durable(&faulty, EventBusConfig::default()).await;
    let seen = Seen::new();
    let nak_first = {
        let seen = seen.clone();
        move |delivery: Delivery| {
            seen.record(&delivery);
            let outcome = if delivery.attempt() == 1 && delivery.event().topic.as_str() == "n.hard"
            {
                Outcome::nak_after(Duration::from_secs(3600))
            } else {
                Outcome::Ack
            };
            async move { outcome }
        }
    };
    let first = bus
        .subscribe("n.*", "retrier", nak_first.clone(), full())
        .await
        .unwrap();
    publish(&bus, "n.easy").await;
    publish(&bus, "n.hard").await;
    seen.wait_for(2).await; // n.hard was nak'd; its redelivery is an hour away
    first.unsubscribe().await;
    let _again = bus
        .subscribe("n.*", "retrier", nak_first, full())
        .await
        .unwrap();
    seen.wait_for(3).await;
    assert_eq!(seen.topics(), ["n.easy", "n.hard", "n.hard"]);
}

/// Another node's event sits before ours in the log and cannot be read
/// when ours commits: ours waits, and both go out in log order once the
/// log can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_another_node_that_cannot_be_read_yet_are_not_skipped() {
    let shared_log: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let other_node = EventBus::durable(shared_log.clone()).await.unwrap();
    let faulty = FaultyStore::new(shared_log);
    let this_node = durable(
        &faulty,
        EventBusConfig {
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .await;
    let seen = Seen::new();
    let handler = {
        let seen = seen.clone();
        move |delivery: Delivery| {
            seen.record(&delivery);
            async { Outcome::Ack }
        }
    };
    let _subscription = this_node
        .subscribe("x.*", "here", handler, SubscribeOptions::default())
        .await
        .unwrap();
    // This node can neither wait on the log nor read it for a while.
    faulty.fail_operation("wait_for_events", true);
    faulty.fail_operation("read_events", true);
    faults(&faulty, "the tailer to notice", 1).await;
    publish(&other_node, "x.theirs").await;
    publish(&this_node, "x.ours").await; // committed; x.theirs is unread
    assert!(seen.topics().is_empty(), "nothing out of order");
    faulty.fail_operation("wait_for_events", false);
    faulty.fail_operation("read_events", false);
    seen.wait_for(2).await;
    assert_eq!(seen.topics(), ["x.theirs", "x.ours"]);
}

/// A log that answers an append with fewer positions than events is a
/// typed error for the publisher, never a panic; the bus goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_short_of_positions_is_an_error_not_a_panic() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let bus = EventBus::durable(faulty.clone() as Arc<dyn Store>)
        .await
        .unwrap();
    faulty.short_positions(true);
    let drafts = vec![
        smalltalk_events::Draft::new("a.b", json!(1)).unwrap(),
        smalltalk_events::Draft::new("a.b", json!(2)).unwrap(),
    ];
    let result = bus.publish_batch(drafts).await;
    assert!(
        matches!(&result, Err(smalltalk_events::Error::Storage(_))),
        "{result:?}"
    );
    faulty.short_positions(false);
    bus.publish("a.c", json!(3), PublishOptions::default())
        .await
        .unwrap();
}

/// A process that runs for months keeps bounded memory: 100,000 distinct
/// topics leave at most the cache's bound behind, and 10,000 subscribers
/// coming and going at most the idle registries' bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_subscribers_that_come_and_go_stay_bounded() {
    let bus = EventBus::builder()
        .config(EventBusConfig {
            memory_log_capacity: 1_000,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let _all = bus
        .subscribe(
            ">",
            "everything",
            |_| async { Outcome::Ack },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    for n in 0..100_000 {
        bus.publish(&format!("t{n}.x"), json!(null), PublishOptions::default())
            .await
            .unwrap();
    }
    let stats = bus.stats().await.unwrap();
    assert!(
        stats.cached_topics <= 4_096,
        "{} topics cached",
        stats.cached_topics
    );
    for n in 0..10_000 {
        let subscription = bus
            .subscribe(
                "come.and.go",
                &format!("visitor-{n}"),
                |_| async { Outcome::Ack },
                SubscribeOptions::default(),
            )
            .await
            .unwrap();
        subscription.unsubscribe().await;
    }
    let stats = bus.stats().await.unwrap();
    // 256 idle at the last subscribe, the one that left since, the live one.
    assert!(
        stats.processed_registries <= 256 + 2,
        "{} registries kept",
        stats.processed_registries
    );
    // The one still subscribed keeps its registry.
    assert!(stats.processed_registries >= 1);
}
