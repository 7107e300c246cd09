//! A durable bus whose PostgreSQL stops answering (a TCP proxy of the
//! test's own stalls the link; the shared server is never touched): `stats`
//! still answers and `subscribe` ends within its configured timeout, while
//! a publish waits in the committer for the log. Nothing is lost once the
//! link comes back.

use std::time::Duration;

use serde_json::json;
use smalltalk::events::{
    Delivery, Error, EventBus, EventBusConfig, Outcome, PublishOptions, SubscribeOptions,
};
use smalltalk_e2e::through_proxy_with;
use smalltalk_storage::contract::PgBackend;
use tokio::sync::mpsc;

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_subscribe_answer_while_the_log_is_stalled() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    // Acquiring a connection never gives up first: only the bus's own
    // timeout can end a wait here.
    let (proxy, url) = through_proxy_with(&backend.store_url(), Duration::from_secs(600))
        .await
        .unwrap();
    let store = smalltalk::open(&url).await.unwrap();
    let timeout = Duration::from_millis(500);
    let bus = EventBus::builder()
        .config(EventBusConfig {
            storage_timeout: timeout,
            ..EventBusConfig::default()
        })
        .log(store)
        .build()
        .await
        .unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let _early = bus
        .subscribe(
            "t.>",
            "early",
            move |delivery: Delivery| {
                let _ = seen_tx.send(delivery.position());
                async { Outcome::Ack }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    bus.publish("t.a", json!(1), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(seen.recv().await, Some(1));

    proxy.stall();
    // This publish waits in the committer, which holds the log's ordering
    // lock across the append.
    let publishing = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.publish("t.a", json!(2), PublishOptions::default())
                .await
        })
    };

    let stats = tokio::time::timeout(10 * timeout, bus.stats())
        .await
        .expect("stats answer while the log is stalled")
        .unwrap();
    assert_eq!(stats.subscriptions, 1);
    assert_eq!(
        stats.log_events, None,
        "the log's sizes are unknown: {stats:?}"
    );

    let subscribed = tokio::time::timeout(
        10 * timeout,
        bus.subscribe(
            "t.>",
            "late",
            |_: Delivery| async { Outcome::Ack },
            SubscribeOptions::default(),
        ),
    )
    .await
    .expect("subscribe ends within its timeout");
    match subscribed {
        Ok(_) => {}
        Err(Error::Timeout {
            operation: "subscribe",
            after,
        }) => assert_eq!(after, timeout),
        Err(other) => panic!("not a timeout: {other:?}"),
    }

    proxy.resume();
    publishing.await.unwrap().unwrap();
    assert_eq!(
        seen.recv().await,
        Some(2),
        "nothing lost once the log answers"
    );
    bus.close().await;
}
