//! The event bus on SQLite: a subscriber goes away, events keep coming,
//! and when it subscribes again it gets what it missed, per its replay
//! policy. Run it twice: the log and the subscriber's position persist.
//!
//! ```text
//! cargo run -p smalltalk --example event_bus            # ./smalltalk-data/events.db
//! cargo run -p smalltalk --example event_bus -- URL     # any storage URL
//! ```

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use smalltalk::events::{EventBus, EventBusConfig, ReplayPolicies};
use smalltalk::{Delivery, Outcome, PublishOptions, SubscribeOptions};
use tokio::sync::mpsc;

/// The auditor gets everything it missed; everyone else only critical
/// events (the default). The same text can live in a file:
/// `ReplayPolicies::from_yaml_file("policies.yaml")`.
const POLICIES: &str = "
subscribers:
  auditor:
    mode: full
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite://smalltalk-data/events.db".to_owned());
    let store = smalltalk::open(&url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let bus = EventBus::builder()
        .config(EventBusConfig {
            policies: ReplayPolicies::from_yaml_str(POLICIES)?,
            ..Default::default()
        })
        .log(store.clone())
        .build()
        .await?;
    println!("event log: {url}, at position {}", bus.position());

    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    let handler = move |delivery: Delivery| {
        let event = delivery.event();
        let line = format!(
            "  auditor got #{} {} {}{}",
            delivery.position(),
            event.topic,
            event.payload,
            if delivery.is_replay() {
                "  (replayed)"
            } else {
                ""
            }
        );
        seen_tx.send(line).expect("main is listening");
        async { Outcome::Ack }
    };

    let auditor = bus
        .subscribe(
            "task.>",
            "auditor",
            handler.clone(),
            SubscribeOptions::default(),
        )
        .await?;
    bus.publish(
        "task:started",
        json!({"task": 1}),
        PublishOptions::default(),
    )
    .await?;
    bus.publish(
        "task:completed",
        json!({"task": 1}),
        PublishOptions::default().critical(),
    )
    .await?;
    for _ in 0..2 {
        println!("{}", next(&mut seen).await?);
    }

    auditor.unsubscribe().await;
    println!("auditor unsubscribed; two more events are published");
    bus.publish(
        "task:started",
        json!({"task": 2}),
        PublishOptions::default(),
    )
    .await?;
    bus.publish(
        "task:failed",
        json!({"task": 2}),
        PublishOptions::default().critical(),
    )
    .await?;

    let _auditor = bus
        .subscribe("task.>", "auditor", handler, SubscribeOptions::default())
        .await?;
    println!("auditor subscribed again:");
    for _ in 0..2 {
        println!("{}", next(&mut seen).await?);
    }

    let stats = bus.stats().await?;
    println!(
        "published {} ({} critical) in this run; the log holds {} events, {} bytes",
        stats.published,
        stats.published_critical,
        stats.log_events.unwrap_or_default(),
        stats.log_bytes.unwrap_or_default()
    );
    bus.close().await;
    store.close().await?;
    Ok(())
}

async fn next(seen: &mut mpsc::UnboundedReceiver<String>) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .context("no event within 10 s")?
        .context("handler gone")
}
