//! A state-store process for multi-process tests:
//!
//! - `state-worker count URL TASKS INCREMENTS`: TASKS tasks each run
//!   INCREMENTS `update`s adding 1 to `storm:<task % 2>`, then print `done`.
//! - `state-worker txns URL WORKER`: commits transactions for ever, each
//!   writing `WORKER:SEQ` to the 8 keys `txn:<0..8>` that every worker
//!   shares (conditioned on the first key's version, so workers conflict),
//!   printing `ack REVISION SEQ` after each commit.
//! - `state-worker watch URL PREFIX FROM`: watches PREFIX from revision FROM
//!   and prints `rev REVISION KEY KIND` per change, `progress REVISION`, or
//!   `compacted POINT` (then exits).

use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use smalltalk::state::{Error, Expect, StateStore, WatchEvent};
use smalltalk::storage::VersionedStore;
use tokio::io::AsyncWriteExt;

async fn state(url: &str) -> anyhow::Result<(StateStore, Arc<dyn smalltalk::Store>)> {
    let store = smalltalk::open(url).await?;
    let config = smalltalk::StateConfig {
        sync_interval: std::time::Duration::from_millis(20),
        progress_interval: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let state = StateStore::builder(Arc::clone(&store) as Arc<dyn VersionedStore>)
        .config(config)
        .build()?;
    Ok((state, store))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, url, tasks, increments] if mode == "count" => {
            let (state, store) = state(url).await?;
            let increments: u64 = increments.parse().context("INCREMENTS")?;
            let mut handles = Vec::new();
            for task in 0..tasks.parse::<u64>().context("TASKS")? {
                let state = state.clone();
                handles.push(tokio::spawn(async move {
                    let key = format!("storm:{}", task % 2);
                    for _ in 0..increments {
                        state
                            .update(key.as_str(), |current| {
                                json!(current.and_then(Value::as_u64).unwrap_or(0) + 1)
                            })
                            .await?;
                    }
                    Ok::<_, Error>(())
                }));
            }
            for handle in handles {
                handle.await??;
            }
            store.close().await?;
            println!("done");
        }
        [mode, url, worker] if mode == "txns" => {
            let (state, _store) = state(url).await?;
            let mut out = tokio::io::stdout();
            for seq in 0_u64.. {
                let current = state.get("txn:0").await?;
                let mut txn = state.txn().expect("txn:0", Expect::read(current.as_ref()));
                for key in 0..8 {
                    txn = txn.put(format!("txn:{key}"), json!(format!("{worker}:{seq}")));
                }
                let outcome = txn.commit().await?;
                if outcome.succeeded {
                    out.write_all(format!("ack {} {seq}\n", outcome.revision).as_bytes())
                        .await?;
                    out.flush().await?;
                }
            }
        }
        [mode, url, prefix, from] if mode == "watch" => {
            let (state, _store) = state(url).await?;
            let mut watch = state
                .watch(prefix.as_str(), Some(from.parse().context("FROM")?))
                .await?;
            let mut out = tokio::io::stdout();
            while let Some(event) = watch.next().await {
                let line = match event {
                    Ok(WatchEvent::Changes { revision, changes }) => changes
                        .iter()
                        .map(|change| format!("rev {revision} {} {:?}\n", change.key, change.kind))
                        .collect::<String>(),
                    Ok(WatchEvent::Progress { revision }) => format!("progress {revision}\n"),
                    Ok(other) => format!("other {other:?}\n"),
                    Err(Error::Compacted { compact_revision }) => {
                        out.write_all(format!("compacted {compact_revision}\n").as_bytes())
                            .await?;
                        out.flush().await?;
                        return Ok(());
                    }
                    Err(error) => return Err(error.into()),
                };
                out.write_all(line.as_bytes()).await?;
                out.flush().await?;
            }
        }
        _ => anyhow::bail!(
            "usage: state-worker count URL TASKS INCREMENTS | txns URL WORKER | watch URL PREFIX FROM"
        ),
    }
    Ok(())
}
