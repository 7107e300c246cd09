//! State-store measurements shared by the report (the STATE rows):
//!
//! - `put`: a blind put of a small JSON document (about 100 bytes), one at
//!   a time, over 1,000 keys;
//! - `get`: the latest value of one of those keys;
//! - `get_at_revision`: a key with 1,000 revisions of history, read at a
//!   random one of them;
//! - `txn_10_keys`: a transaction writing 10 keys;
//! - `puts_64_tasks_per_sec`: blind puts from 64 tasks at once;
//! - `watch_in_process`: from the put call to a watcher's stream yielding
//!   it, in the same process;
//! - `watch_cross_process`: from the put call to a watcher in another
//!   process receiving it (default `sync_interval` on SQLite: 100 ms
//!   polling; PostgreSQL is notified).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use smalltalk_state::{StateConfig, StateStore, WatchEvent};
use smalltalk_storage::{Store, VersionedStore};

use crate::Samples;

/// A state store over `store`, with the default configuration.
pub fn state(store: &Arc<dyn Store>) -> StateStore {
    StateStore::new(Arc::clone(store) as Arc<dyn VersionedStore>)
}

fn document(index: usize) -> Value {
    json!({"agent": "planner", "step": index, "note": "check the itinerary against the budget"})
}

/// Blind puts, one at a time.
pub async fn measure_puts(state: &StateStore, warmup: usize, count: usize) -> Samples {
    let mut index = 0;
    Samples::collect(warmup, count, || {
        index += 1;
        let (state, key) = (state.clone(), format!("bench:put:{}", index % 1000));
        async move {
            state.put(key.as_str(), document(index)).await.expect("put");
        }
    })
    .await
}

/// Latest reads of 1,000 keys.
pub async fn measure_gets(state: &StateStore, warmup: usize, count: usize) -> Samples {
    for index in 0..1000 {
        state
            .put(format!("bench:get:{index}"), document(index))
            .await
            .expect("put");
    }
    let mut index = 0;
    Samples::collect(warmup, count, || {
        index += 1;
        let (state, key) = (state.clone(), format!("bench:get:{}", index % 1000));
        async move {
            state
                .get(key.as_str())
                .await
                .expect("get")
                .expect("present");
        }
    })
    .await
}

/// Reads at a random revision of a key with 1,000 revisions of history.
pub async fn measure_get_at(state: &StateStore, warmup: usize, count: usize) -> Samples {
    let mut revisions = Vec::with_capacity(1000);
    for index in 0..1000 {
        revisions.push(
            state
                .put("bench:history", document(index))
                .await
                .expect("put")
                .entry
                .revision,
        );
    }
    let mut seed: u64 = 0x9e37;
    Samples::collect(warmup, count, || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let revision = revisions[(seed >> 33) as usize % revisions.len()];
        let state = state.clone();
        async move {
            state
                .get_at("bench:history", revision)
                .await
                .expect("get_at")
                .expect("present");
        }
    })
    .await
}

/// Transactions of 10 puts.
pub async fn measure_txn_10(state: &StateStore, warmup: usize, count: usize) -> Samples {
    let mut round = 0;
    Samples::collect(warmup, count, || {
        round += 1;
        let state = state.clone();
        async move {
            let mut txn = state.txn();
            for key in 0..10 {
                txn = txn.put(format!("bench:txn:{key}"), document(round));
            }
            txn.commit().await.expect("txn");
        }
    })
    .await
}

/// Blind puts per second from `tasks` tasks, `total` in all.
pub async fn puts_per_sec(state: &StateStore, tasks: usize, total: usize) -> f64 {
    let per_task = total / tasks;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let state = state.clone();
        handles.push(tokio::spawn(async move {
            for index in 0..per_task {
                state
                    .put(
                        format!("bench:many:{task}:{}", index % 100),
                        document(index),
                    )
                    .await
                    .expect("put");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    (per_task * tasks) as f64 / started.elapsed().as_secs_f64()
}

/// From a put call to a watcher in this process yielding it.
pub async fn measure_watch_in_process(state: &StateStore, warmup: usize, count: usize) -> Samples {
    let mut watch = state.watch("bench:watch:", None).await.expect("watch");
    let mut durations = Vec::with_capacity(count);
    for index in 0..warmup + count {
        let started = Instant::now();
        state
            .put("bench:watch:k", document(index))
            .await
            .expect("put");
        match watch.next().await {
            Some(Ok(WatchEvent::Changes { .. })) => {}
            other => panic!("the watch yielded {other:?}"),
        }
        if index >= warmup {
            durations.push(started.elapsed());
        }
    }
    Samples::from_durations(durations)
}

/// The watcher half of the cross-process measurement: prints `seen
/// REVISION MICROS` (wall clock) per revision, after `ready`.
pub async fn watcher_process(url: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let store = smalltalk_storage::open(url).await?;
    let state = StateStore::builder(store as Arc<dyn VersionedStore>)
        .config(StateConfig::default())
        .build()?;
    let mut watch = state.watch("bench:cross:", None).await?;
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    while let Some(event) = watch.next().await {
        if let WatchEvent::Changes { revision, .. } = event? {
            let now = smalltalk_types::Timestamp::now().as_micros();
            out.write_all(format!("seen {revision} {now}\n").as_bytes())
                .await?;
            out.flush().await?;
        }
    }
    Ok(())
}

/// From a put call here to the watcher process (this executable, started
/// with `watcher_args`) receiving it, `count` times.
pub async fn measure_watch_cross_process(
    state: &StateStore,
    watcher_args: &[String],
    count: usize,
) -> anyhow::Result<Samples> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(watcher_args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    anyhow::ensure!(
        lines.next_line().await?.as_deref() == Some("ready"),
        "the watcher process did not start"
    );
    let mut durations = Vec::with_capacity(count);
    for index in 0..count {
        let started = smalltalk_types::Timestamp::now().as_micros();
        let revision = state
            .put("bench:cross:k", document(index))
            .await?
            .entry
            .revision;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await??
                .ok_or_else(|| anyhow::anyhow!("the watcher process ended"))?;
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() == Some(&"seen") && parts[1].parse::<u64>()? == revision {
                let seen: i64 = parts[2].parse()?;
                durations.push(Duration::from_micros((seen - started).max(0) as u64));
                break;
            }
        }
    }
    child.start_kill()?;
    let _ = child.wait().await;
    Ok(Samples::from_durations(durations))
}
