//! The bus's metrics reach whatever recorder the application installs.

use std::time::Duration;

use serde_json::json;
use smalltalk_events::{
    Delivery, EventBus, EventBusConfig, Outcome, PublishOptions, SubscribeOptions,
};
use smalltalk_storage::contract::{RecordingRecorder, test_clock};
use smalltalk_types::{EventReplayPolicy, ReplayMode};
use tokio::sync::mpsc;

// A current-thread runtime: the subscription tasks record on this thread,
// where the local recorder is installed.
#[tokio::test(flavor = "current_thread")]
async fn every_bus_metric_is_emitted() {
    let recording = RecordingRecorder::default();
    let _guard = metrics::set_default_local_recorder(&recording);
    let clock = test_clock();
    let bus = EventBus::builder()
        .clock(clock.clone())
        .config(EventBusConfig {
            latency_budget: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handler = move |delivery: Delivery| {
        seen_tx.send(delivery.event().topic.to_string()).unwrap();
        async { Outcome::Ack }
    };
    let full = || {
        SubscribeOptions::default().policy(EventReplayPolicy {
            mode: ReplayMode::Full,
            ..Default::default()
        })
    };
    let subscription = bus
        .subscribe("m.*", "watcher", handler.clone(), full())
        .await
        .unwrap();

    // On time: published and handled at the same instant.
    bus.publish("m.fast", json!(1), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(seen.recv().await.as_deref(), Some("m.fast"));
    // Late: the handler runs 20 ms (by the clock) after publication.
    bus.publish("m.slow", json!(2), PublishOptions::default())
        .await
        .unwrap();
    clock.advance(Duration::from_millis(20));
    assert_eq!(seen.recv().await.as_deref(), Some("m.slow"));
    assert_eq!(recording.value("smalltalk_events_published_total"), 2.0);
    assert_eq!(recording.value("smalltalk_event_propagation_seconds"), 2.0);
    assert_eq!(
        recording.value("smalltalk_event_latency_violations_total"),
        1.0
    );
    assert_eq!(bus.stats().await.unwrap().latency_violations, 1);

    // Missed while away, then purged: a gap on the way back.
    subscription.unsubscribe().await;
    bus.publish("m.missed", json!(3), PublishOptions::default())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(bus.purge_expired().await.unwrap(), 3);
    let _again = bus
        .subscribe("m.*", "watcher", handler, full())
        .await
        .unwrap();
    bus.publish("m.after", json!(4), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(seen.recv().await.as_deref(), Some("m.after"));
    assert_eq!(recording.value("smalltalk_event_replay_gaps_total"), 1.0);
}
