//! A durable bus's background tasks: the committer (group commit of
//! publishes), the tailer (other processes' events) and retention purges.

use std::sync::Arc;

use smalltalk_storage::EventLog;
use smalltalk_types::Event;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Shared, count_published};
use crate::log::Backing;
use crate::{Error, Result};

/// A publish waiting for the durable committer.
pub(super) struct Commit {
    pub(super) events: Vec<Event>,
    pub(super) expected_last: Option<u64>,
    pub(super) reply: oneshot::Sender<Result<Vec<u64>>>,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

pub(super) async fn purge(shared: &Shared) -> Result<u64> {
    let cutoff = shared.clock.now().saturating_sub(shared.config.retention);
    let purged = shared.backing.purge(cutoff).await?;
    if purged > 0 {
        tracing::info!(purged, %cutoff, "purged events past retention");
    }
    Ok(purged)
}

/// Durable mode: takes publishes as they come, appends each group in one
/// commit, then dispatches them (and anything other processes appended
/// before them) in position order.
pub(super) async fn commit_loop(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<Commit>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Backing::Durable(log) = &shared.backing else {
        return;
    };
    let mut waiting: Option<Commit> = None;
    loop {
        let first = match waiting.take() {
            Some(commit) => commit,
            None => tokio::select! {
                request = requests.recv() => match request {
                    Some(commit) => commit,
                    None => return,
                },
                _ = shutdown.changed() => {
                    // Finish what was already asked for, then stop.
                    requests.close();
                    match requests.recv().await {
                        Some(commit) => commit,
                        None => return,
                    }
                }
            },
        };
        let mut group = vec![first];
        if group[0].expected_last.is_none() {
            let mut size = group[0].events.len();
            while size < shared.config.max_batch {
                match requests.try_recv() {
                    Ok(commit) if commit.expected_last.is_none() => {
                        size += commit.events.len();
                        group.push(commit);
                    }
                    Ok(conditional) => {
                        waiting = Some(conditional);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        commit_group(&shared, log.as_ref(), group).await;
    }
}

async fn commit_group(shared: &Shared, log: &dyn EventLog, group: Vec<Commit>) {
    let mut events = Vec::new();
    let mut replies = Vec::with_capacity(group.len());
    for commit in group {
        replies.push((commit.events.len(), commit.expected_last, commit.reply));
        events.extend(commit.events);
    }
    let order = shared.dispatch.order().await;
    let appended = match replies[0].1 {
        Some(expected) => log.append_events_at(&events, expected).await,
        None => log.append_events(&events).await,
    };
    // A log that answers with another number of positions than events is
    // broken: an error for every caller, never a panic or a guess.
    let appended = appended.and_then(|positions| {
        if positions.len() == events.len() {
            Ok(positions)
        } else {
            Err(smalltalk_storage::Error::Backend {
                backend: "event log",
                source: format!(
                    "the log returned {} positions for {} events",
                    positions.len(),
                    events.len()
                )
                .into(),
            })
        }
    });
    let positions = match appended {
        Ok(positions) => positions,
        Err(error) => {
            let error = Error::from(error);
            let shared_error = match &error {
                Error::Storage(source) => Some(Arc::clone(source)),
                _ => None,
            };
            let mut error = Some(error);
            for (_, _, reply) in replies {
                let answer = match (&shared_error, error.take()) {
                    (_, Some(first)) => first,
                    (Some(source), None) => Error::Storage(Arc::clone(source)),
                    (None, None) => Error::Closed,
                };
                let _ = reply.send(Err(answer));
            }
            return;
        }
    };
    let first = positions.first().copied().unwrap_or(0);
    let events: Vec<Arc<Event>> = events
        .into_iter()
        .zip(&positions)
        .map(|(mut event, position)| {
            event.position = Some(*position);
            Arc::new(event)
        })
        .collect();
    // Other processes' events before ours go out first. If they cannot be
    // read now, ours wait too (they are committed): the tailer delivers
    // both from the log, in order.
    if first > shared.dispatch.with(|dispatch| dispatch.dispatched) + 1 {
        if let Err(error) = shared.dispatch_from_log(Some(first)).await {
            tracing::error!(%error, "could not read other processes' events; the tailer will retry");
        }
    }
    count_published(shared, &events);
    shared
        .dispatch
        .with(|dispatch| shared.fan_out(dispatch, &events));
    drop(order);
    let mut positions = positions.into_iter();
    for (count, _, reply) in replies {
        let _ = reply.send(Ok(positions.by_ref().take(count).collect()));
    }
}

/// Durable mode: dispatches events other processes append (woken by the
/// log's notifications, or every `poll_interval`).
pub(super) async fn tail_loop(
    shared: std::sync::Weak<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(bus) = shared.upgrade() else {
            return;
        };
        let after = bus.dispatched();
        let interval = bus.config.poll_interval;
        let newest = tokio::select! {
            newest = bus.backing.wait(after, interval) => newest,
            _ = shutdown.changed() => return,
        };
        match newest {
            Ok(newest) if newest > bus.dispatched() => {
                let order = bus.dispatch.order().await;
                if let Err(error) = bus.dispatch_from_log(None).await {
                    drop(order);
                    tracing::warn!(%error, "could not read the event log; retrying");
                    drop(bus);
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not wait on the event log; retrying");
                drop(bus);
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Purges past retention every `purge_interval`.
pub(super) async fn purge_loop(
    shared: std::sync::Weak<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(interval) = shared.upgrade().map(|bus| bus.config.purge_interval) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let Some(bus) = shared.upgrade() else {
            return;
        };
        if let Err(error) = purge(&bus).await {
            tracing::warn!(%error, "event retention purge failed; will retry");
        }
    }
}
