//! Shared, versioned state across two processes: one writes, the other
//! watches.
//!
//! This process starts a *watcher process* (itself, with `watch`), which
//! watches the prefix `team:` from the next revision and prints every
//! change as it arrives. Then it writes: a plan, two agents changing
//! different fields of it from the same version (merged by the `team:`
//! policy), a transaction over two keys (one revision), and a delete. It
//! prints the history and a JSON Patch between two revisions, waits until
//! the watcher has seen the last revision, and stops it.
//!
//! ```text
//! cargo run -p smalltalk --example state_watch             # ./smalltalk-data/state.db
//! cargo run -p smalltalk --example state_watch -- URL      # any storage URL
//! ```

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::json;
use smalltalk::state::{ChangeKind, KeyPrefix, WatchEvent};
use smalltalk::{ConflictPolicy, Expect, Policies, StateConfig, StateStore};
use tokio::io::{AsyncBufReadExt, BufReader};

const DEFAULT_URL: &str = "sqlite://smalltalk-data/state.db";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, url, from] if command == "watch" => watch(url, from.parse()?).await,
        [] => write(DEFAULT_URL).await,
        [url] => write(url).await,
        _ => bail!("usage: state_watch [STORAGE_URL]"),
    }
}

async fn open(url: &str) -> anyhow::Result<(StateStore, Arc<dyn smalltalk::Store>)> {
    let store = smalltalk::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let state =
        StateStore::builder(Arc::clone(&store) as Arc<dyn smalltalk::storage::VersionedStore>)
            .config(StateConfig {
                // How soon another process's writes are seen on SQLite
                // (PostgreSQL notifies at once).
                sync_interval: Duration::from_millis(20),
                ..Default::default()
            })
            .policies(Policies::new().with(KeyPrefix::parse("team:")?, ConflictPolicy::merge()))
            .build()?;
    Ok((state, store))
}

/// The watcher process: prints each change under `team:`.
async fn watch(url: &str, from: u64) -> anyhow::Result<()> {
    let (state, _store) = open(url).await?;
    let mut changes = state.watch("team:", Some(from)).await?;
    println!(
        "[watcher pid {}] watching team: from revision {from}",
        std::process::id()
    );
    while let Some(event) = changes.next().await {
        match event? {
            WatchEvent::Changes { revision, changes } => {
                for change in changes {
                    let value = change
                        .value
                        .map_or_else(String::new, |value| value.to_string());
                    let author = change
                        .author
                        .map_or_else(|| "-".to_owned(), |a| a.to_string());
                    println!(
                        "[watcher] revision {revision}: {:?} {} by {author} {value}",
                        change.kind, change.key
                    );
                }
                println!("seen {revision}");
            }
            WatchEvent::Progress { revision } => {
                println!("[watcher] quiet up to revision {revision}")
            }
            other => println!("[watcher] {other:?}"),
        }
    }
    Ok(())
}

/// The writer process.
async fn write(url: &str) -> anyhow::Result<()> {
    let (state, store) = open(url).await?;
    println!("[writer pid {}] storage: {url}", std::process::id());
    let from = state.revision().await?.revision + 1;
    let mut watcher = tokio::process::Command::new(std::env::current_exe()?)
        .args(["watch", url, &from.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the watcher process")?;
    let mut lines = BufReader::new(watcher.stdout.take().context("watcher stdout")?).lines();
    // The watcher is ready once it says so.
    match lines.next_line().await? {
        Some(line) => println!("{line}"),
        None => bail!("the watcher exited at once"),
    }

    let planner = state.as_author("planner")?;
    let critic = state.as_author("critic")?;
    let plan = planner
        .put(
            "team:plan",
            json!({"goal": "Lisbon weekend", "days": 2, "budget": 600}),
        )
        .await?
        .entry;
    // Both read `plan`, then change different fields: the merge keeps both.
    planner
        .put_if(
            "team:plan",
            json!({"goal": "Lisbon weekend", "days": 3, "budget": 600}),
            Expect::read(Some(&plan)),
        )
        .await?;
    let merged = critic
        .put_if(
            "team:plan",
            json!({"goal": "Lisbon weekend", "days": 2, "budget": 450}),
            Expect::read(Some(&plan)),
        )
        .await?;
    println!(
        "[writer] merged plan: {} ({:?})",
        merged.entry.value, merged.resolved
    );
    // Two keys, one revision.
    let txn = planner
        .txn()
        .put("team:day1", json!("Alfama and the castle"))
        .put("team:day2", json!("Belém and LX Factory"))
        .commit()
        .await?;
    critic.delete("team:day2").await?;
    let last = state.revision().await?.revision;

    let history = state.history("team:plan", 10).await?;
    for change in &history.changes {
        if change.kind == ChangeKind::Put {
            println!(
                "[writer] team:plan v{} at revision {} by {}: {}",
                change.version,
                change.revision,
                change.author.as_ref().map_or("-", |a| a.as_str()),
                change.value.clone().unwrap_or_default()
            );
        }
    }
    let diff = state
        .diff("team:plan", plan.revision, merged.entry.revision)
        .await?;
    println!(
        "[writer] diff {} -> {}: {}",
        plan.revision,
        merged.entry.revision,
        serde_json::to_string(&diff)?
    );
    println!(
        "[writer] transaction took revision {}; waiting for the watcher to see {last}",
        txn.revision
    );

    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            println!("{line}");
            if line == format!("seen {last}") {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(false)
    })
    .await
    .context("the watcher did not keep up")??;
    watcher.start_kill()?;
    let _ = watcher.wait().await;
    store.close().await?;
    if !seen {
        bail!("the watcher stopped before revision {last}");
    }
    println!("[writer] the watcher saw every revision up to {last}");
    Ok(())
}
