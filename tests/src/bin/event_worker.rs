//! An event-log writer process for cross-process tests:
//! `event-worker STORAGE_URL COUNT` appends COUNT events one call at a
//! time, printing `appended <position> <unix micros>` after each.

use anyhow::{Context, bail};
use smalltalk::types::{Event, EventId, EventPriority, FORMAT_VERSION, Timestamp, Topic};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, count] = args.as_slice() else {
        bail!("usage: event-worker STORAGE_URL COUNT");
    };
    let count: usize = count.parse().context("COUNT")?;
    let store = smalltalk::open(url).await?;
    for index in 0..count {
        let event = Event {
            id: EventId::new(),
            topic: Topic::parse("task:completed")?,
            event_type: "test".into(),
            publisher: format!("pid-{}", std::process::id()),
            timestamp: Timestamp::now(),
            priority: EventPriority::Critical,
            session_id: None,
            conversation_id: None,
            payload: serde_json::json!({ "index": index }).into(),
            metadata: serde_json::Map::new(),
            position: None,
            format_version: FORMAT_VERSION,
        };
        let positions = store.append_events(&[event]).await?;
        println!("appended {} {}", positions[0], Timestamp::now().as_micros());
    }
    store.close().await?;
    Ok(())
}
