//! Criterion benchmarks of the event bus: a publish and its handling with
//! one subscriber, in memory and durable per backend (SC-008's path, timed
//! as a round trip: until the waiting task hears the handler ran, so a
//! cross-thread wake-up more than the report's publish-to-handler-start),
//! and a replay of 1,000 events per backend (SC-011). Shapes as in
//! `smalltalk_benches::events`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use smalltalk_benches::events::{RoundTrip, bus};
use smalltalk_benches::{BACKENDS, fresh_store};
use smalltalk_events::{Draft, EventBusConfig};

fn events(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("events");
    let in_memory = runtime
        .block_on(async { RoundTrip::new(bus(None, EventBusConfig::default()).await).await });
    group.bench_function("publish_to_handler/in_memory", |b| {
        b.to_async(&runtime)
            .iter(|| async { in_memory.once().await });
    });
    for name in BACKENDS {
        let Some(bench_store) = runtime.block_on(fresh_store(name)) else {
            continue;
        };
        let durable = runtime.block_on(async {
            let bus = bus(Some(bench_store.store.clone()), EventBusConfig::default()).await;
            RoundTrip::new(bus).await
        });
        group.bench_function(format!("publish_to_handler/{name}"), |b| {
            b.to_async(&runtime).iter(|| async { durable.once().await });
        });

        let Some(replay_store) = runtime.block_on(fresh_store(name)) else {
            continue;
        };
        let replaying = runtime.block_on(async {
            let bus = bus(Some(replay_store.store.clone()), EventBusConfig::default()).await;
            let round_trip = RoundTrip::new(bus.clone()).await;
            let drafts = (0..1000)
                .map(|n| Draft::new("bench.history", json!({ "n": n })).expect("topic"))
                .collect();
            bus.publish_batch(drafts).await.expect("fill");
            round_trip
        });
        // The live deliveries of the fill count as handled first.
        runtime.block_on(async { replaying.replay_settle(1000).await });
        group.bench_function(format!("replay_1000/{name}"), |b| {
            b.to_async(&runtime)
                .iter(|| async { replaying.replay(1000).await });
        });
    }
    group.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
