//! An event-bus process for cross-process tests.
//!
//! - `bus-worker subscribe STORAGE_URL SUBSCRIBER PATTERN`: a durable bus
//!   with the default replay policy (critical-only) and a 10 ms poll
//!   interval. For each event the handler prints
//!   `handling <position> <topic> <index>` and waits for a line on stdin:
//!   `go` finishes it (prints `handled <position> <index>`, acks); anything
//!   else or end of input exits at once. Prints `ready` once subscribed.
//! - `bus-worker publish STORAGE_URL COUNT TOPIC PACE_MS`: publishes COUNT
//!   critical events (payload `{"index": i}`), one call at a time and one
//!   every PACE_MS milliseconds, printing `published <position> <unix
//!   micros>` after each.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use smalltalk::events::{Draft, EventBusConfig};
use smalltalk::{Delivery, EventBus, Outcome, PublishOptions, SubscribeOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

fn config() -> EventBusConfig {
    EventBusConfig {
        poll_interval: Duration::from_millis(10),
        ..Default::default()
    }
}

async fn say(line: String) {
    let mut out = tokio::io::stdout();
    out.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    out.flush().await.unwrap();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, url, subscriber, pattern] if mode == "subscribe" => {
            subscribe(url, subscriber, pattern).await
        }
        [mode, url, count, topic, pace] if mode == "publish" => {
            let pace = Duration::from_millis(pace.parse().context("PACE_MS")?);
            publish(url, count.parse().context("COUNT")?, topic, pace).await
        }
        _ => bail!(
            "usage: bus-worker subscribe URL SUBSCRIBER PATTERN | bus-worker publish URL COUNT TOPIC PACE_MS"
        ),
    }
}

async fn subscribe(url: &str, subscriber: &str, pattern: &str) -> anyhow::Result<()> {
    let store = smalltalk::open(url).await?;
    let bus = EventBus::builder()
        .config(config())
        .log(store)
        .build()
        .await?;
    let stdin = Arc::new(Mutex::new(BufReader::new(tokio::io::stdin()).lines()));
    let handler = move |delivery: Delivery| {
        let stdin = Arc::clone(&stdin);
        async move {
            let event = delivery.event();
            let index = event
                .payload
                .to_value()
                .ok()
                .and_then(|payload| payload["index"].as_u64());
            let index = index.unwrap_or(u64::MAX);
            let position = delivery.position();
            say(format!("handling {position} {} {index}", event.topic)).await;
            let answer = stdin.lock().await.next_line().await.ok().flatten();
            match answer.as_deref() {
                Some("go") => {
                    say(format!("handled {position} {index}")).await;
                    Outcome::Ack
                }
                _ => std::process::exit(0),
            }
        }
    };
    let _subscription = bus
        .subscribe(pattern, subscriber, handler, SubscribeOptions::default())
        .await?;
    say("ready".into()).await;
    std::future::pending::<()>().await;
    Ok(())
}

async fn publish(url: &str, count: usize, topic: &str, pace: Duration) -> anyhow::Result<()> {
    let store = smalltalk::open(url).await?;
    let bus = EventBus::builder()
        .config(config())
        .log(store.clone())
        .build()
        .await?;
    let mut ticks = tokio::time::interval(pace);
    for index in 0..count {
        ticks.tick().await;
        let draft = Draft::new(topic, serde_json::json!({ "index": index }))?
            .options(PublishOptions::default().critical());
        let published = bus.publish_batch(vec![draft]).await?;
        say(format!(
            "published {} {}",
            published[0].position,
            smalltalk::Timestamp::now().as_micros()
        ))
        .await;
    }
    bus.close().await;
    store.close().await?;
    Ok(())
}
