//! `smalltalk state get|put|history|watch`: versioned state, in the
//! storage (`STORAGE_URL`) or through a running server (`--server`). Both
//! print the same documents: the API's.

use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use smalltalk::state::{Expect, StateStore, WatchEvent};
use smalltalk::storage::VersionedStore;
use smalltalk_server::routes::state::StateEntryView;

use crate::cli::{Target, print};

/// What `state put` requires of the key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Condition {
    /// Nothing: a blind write.
    None,
    /// Its last change is this revision.
    Revision(u64),
    /// It has no value.
    Absent,
}

async fn open(url: &str) -> anyhow::Result<(Arc<dyn smalltalk::Store>, StateStore)> {
    let store = crate::cli::open(url).await?;
    let versioned: Arc<dyn VersionedStore> = store.clone();
    Ok((store, StateStore::new(versioned)))
}

fn entry_text(entry: &Value) -> String {
    format!(
        "{} = {}  (revision {}, version {}, {})",
        entry["key"].as_str().unwrap_or_default(),
        entry["value"],
        entry["revision"],
        entry["version"],
        entry["timestamp"].as_str().unwrap_or_default()
    )
}

fn change_text(change: &Value) -> String {
    let value = match &change["value"] {
        Value::Null => String::new(),
        value => format!(" = {value}"),
    };
    format!(
        "revision {:>6}  version {:>4}  {:<7} {}{value}  {}",
        change["revision"],
        change["version"],
        change["kind"].as_str().unwrap_or_default(),
        change["key"].as_str().unwrap_or_default(),
        change["timestamp"].as_str().unwrap_or_default()
    )
}

/// `state get KEY [--revision N]`.
pub(crate) async fn get(
    target: &Target,
    key: &str,
    revision: Option<u64>,
    json_output: bool,
) -> anyhow::Result<()> {
    let entry = match target {
        Target::Server(remote) => {
            remote
                .get(remote.url(
                    &["v1", "state", key],
                    &[("revision", revision.map(|r| r.to_string()))],
                ))
                .await?
        }
        Target::Storage(url) => {
            let (store, state) = open(url).await?;
            let entry = match revision {
                Some(revision) => state.get_at(key, revision).await,
                None => state.get(key).await,
            };
            store.close().await?;
            let entry = entry?.with_context(|| format!("no value at {key}"))?;
            serde_json::to_value(StateEntryView::from(&entry))?
        }
    };
    print(json_output, &entry, &entry_text(&entry))
}

/// `state put KEY VALUE [--if-revision N | --if-absent]`; `VALUE` is JSON
/// (`-`: read from stdin).
pub(crate) async fn put(
    target: &Target,
    key: &str,
    value: &str,
    condition: Condition,
    json_output: bool,
) -> anyhow::Result<()> {
    let text = if value == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the value from stdin")?
    } else {
        value.to_owned()
    };
    let value: Value =
        serde_json::from_str(&text).context("the value must be JSON (a string is \"quoted\")")?;
    let entry = match target {
        Target::Server(remote) => {
            let headers = match condition {
                Condition::None => vec![],
                Condition::Revision(revision) => vec![("if-match", format!("\"{revision}\""))],
                Condition::Absent => vec![("if-none-match", "*".to_owned())],
            };
            remote
                .send(
                    Method::PUT,
                    remote.url(&["v1", "state", key], &[]),
                    Some(&value),
                    &headers,
                )
                .await?
        }
        Target::Storage(url) => {
            let (store, state) = open(url).await?;
            let outcome = match condition {
                Condition::None => state.put(key, value).await,
                Condition::Revision(revision) => {
                    state.put_if(key, value, Expect::Revision(revision)).await
                }
                Condition::Absent => state.put_if(key, value, Expect::Absent).await,
            };
            store.close().await?;
            serde_json::to_value(StateEntryView::from(&outcome?.entry))?
        }
    };
    print(json_output, &entry, &entry_text(&entry))
}

/// `state history KEY [--depth N] [--before R]`: versions, newest first.
pub(crate) async fn history(
    target: &Target,
    key: &str,
    depth: u32,
    before: Option<u64>,
    json_output: bool,
) -> anyhow::Result<()> {
    if !(1..=1000).contains(&depth) {
        bail!("--depth must be between 1 and 1000 (got {depth})");
    }
    let history = match target {
        Target::Server(remote) => {
            remote
                .get(remote.url(
                    &["v1", "state", key, "history"],
                    &[
                        ("depth", Some(depth.to_string())),
                        ("before", before.map(|r| r.to_string())),
                    ],
                ))
                .await?
        }
        Target::Storage(url) => {
            let (store, state) = open(url).await?;
            let history = match before {
                Some(before) => state.history_before(key, before, depth).await,
                None => state.history(key, depth).await,
            };
            store.close().await?;
            serde_json::to_value(history?)?
        }
    };
    if json_output {
        return print(true, &history, "");
    }
    for change in history["changes"].as_array().into_iter().flatten() {
        print(false, change, &change_text(change))?;
    }
    if let Some(below) = history["compactedBelow"].as_u64() {
        println!("(compacted: nothing older than revision {below} is kept)");
    }
    Ok(())
}

/// `state watch [--prefix P] [--from R]`: each revision's changes under
/// the prefix, in order, until interrupted.
pub(crate) async fn watch(
    target: &Target,
    prefix: &str,
    from: Option<u64>,
    json_output: bool,
) -> anyhow::Result<()> {
    let show = |revision: &Value, changes: &Value| -> anyhow::Result<()> {
        if json_output {
            return print(true, &json!({"revision": revision, "changes": changes}), "");
        }
        for change in changes.as_array().into_iter().flatten() {
            print(false, change, &change_text(change))?;
        }
        Ok(())
    };
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    match target {
        Target::Server(remote) => {
            let mut stream = remote
                .stream(remote.url(
                    &["v1", "state-watch"],
                    &[
                        ("prefix", Some(prefix.to_owned())),
                        ("from", from.map(|r| r.to_string())),
                    ],
                ))
                .await?;
            loop {
                let sent = tokio::select! {
                    sent = stream.next() => sent,
                    _ = &mut stop => return Ok(()),
                };
                let Some(sent) = sent else {
                    bail!("the server closed the stream");
                };
                let sent = sent?;
                match sent.event.as_str() {
                    "changes" => show(&sent.data["revision"], &sent.data["changes"])?,
                    "progress" => {}
                    "compacted" => bail!(
                        "the revisions asked for were compacted away: read the current values and watch from there"
                    ),
                    "shutdown" => bail!("the server is shutting down"),
                    other => eprintln!("({other}: {})", sent.data),
                }
            }
        }
        Target::Storage(url) => {
            let (store, state) = open(url).await?;
            let mut watch = state.watch(prefix, from).await?;
            let result = loop {
                let next = tokio::select! {
                    next = watch.next() => next,
                    _ = &mut stop => break Ok(()),
                };
                match next {
                    Some(Ok(WatchEvent::Changes { revision, changes })) => {
                        show(&json!(revision), &serde_json::to_value(changes)?)?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break Err(error.into()),
                    None => break Ok(()),
                }
            };
            drop(watch);
            store.close().await?;
            result
        }
    }
}
