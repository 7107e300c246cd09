//! The original's event logs into the store's event log.
//!
//! Imported events keep their ids (a non-UUID-v4 id gets one derived from
//! it, listed in the report) and their timestamps, and go in in timestamp
//! order. Each carries [`IMPORTED_FROM`] in its metadata: it is history
//! for explicit replays (`EventBus::replay`, `GET /v1/events`), and the
//! bus's live deliveries, its replay on subscribe and SSE streams pass
//! over it, so subscribers' cursors go on after it. Events older than the
//! retention window are reported and skipped (the bus would purge them at
//! once). Events already in the log (an earlier run, or a run cut short
//! after a batch committed) are duplicates: the log itself is the ledger.

use std::collections::HashSet;

use serde_json::json;
use smalltalk::storage::EventFilter;
use smalltalk::types::event::IMPORTED_FROM;
use smalltalk::types::format::FORMAT_VERSION;
use smalltalk::types::{Event, EventId, EventPriority, Payload, Topic};
use smalltalk::{ConversationId, SessionId, Timestamp};

use super::mapping::{derived_session_id, derived_uuid};
use super::original::OriginalEvent;
use super::{Context, ImportReport, Outcome, Progress};

/// The report's kind of imported events.
pub const EVENT: &str = "event";

/// Events written in one append (one transaction).
const BATCH: usize = 1000;

/// An original event as ours, or why it is not one. `what` names where it
/// was read (file and line).
pub fn map_event(original: OriginalEvent, source: &str, what: &str) -> Result<Mapped, String> {
    let topic = Topic::parse(&original.topic)
        .map_err(|error| format!("topic {:?}: {error}", original.topic))?;
    let priority = match original.priority.as_deref() {
        None | Some("normal" | "low") => EventPriority::Normal,
        Some("critical" | "high") => EventPriority::Critical,
        Some(other) => return Err(format!("priority {other:?} is not normal or critical")),
    };
    let timestamp = original
        .timestamp
        .checked_mul(1000)
        .filter(|micros| *micros >= 0)
        .map(Timestamp::from_micros)
        .ok_or_else(|| format!("timestamp {} is not a time", original.timestamp))?;
    let (id, renamed) = match EventId::parse(&original.id) {
        Ok(id) if id.to_string() == original.id => (id, false),
        _ => (derived_uuid::<EventId>("event", &original.id), true),
    };
    let session_id =
        original
            .session_id
            .as_deref()
            .map(|session| match SessionId::parse(session) {
                Ok(id) if id.to_string() == session => id,
                // As the session itself was renamed on import.
                _ => derived_session_id(session),
            });
    let conversation_id = original.conversation_id.as_deref().map(|conversation| {
        match ConversationId::parse(conversation) {
            Ok(id) if id.to_string() == conversation => id,
            _ => derived_uuid::<ConversationId>("conversation", conversation),
        }
    });
    let mut metadata = original.metadata;
    metadata.insert(
        IMPORTED_FROM.into(),
        json!({"system": "smalltalk-ts", "source": source, "id": original.id, "at": what}),
    );
    let payload = Payload::from(&original.payload);
    let event = Event {
        id,
        event_type: topic.as_str().to_owned(),
        topic,
        publisher: "smalltalk-ts".into(),
        timestamp,
        priority,
        session_id,
        conversation_id,
        payload,
        metadata,
        position: None,
        format_version: FORMAT_VERSION,
    };
    event.validate_depth().map_err(|error| error.to_string())?;
    Ok(Mapped {
        original_id: original.id,
        event,
        renamed,
    })
}

/// An original event as ours.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// The original's id.
    pub original_id: String,
    /// Ours (position not yet assigned).
    pub event: Event,
    /// Whether its id is not the original's.
    pub renamed: bool,
}

/// The ids of the events in the log that were imported.
async fn imported_ids(context: &Context<'_>) -> Result<HashSet<EventId>, String> {
    let mut ids = HashSet::new();
    let mut after = 0;
    loop {
        let batch = context
            .store
            .read_log(after, &EventFilter::default(), BATCH)
            .await
            .map_err(|error| error.to_string())?;
        let full = batch.len() == BATCH;
        for entry in batch {
            after = entry.position();
            if let smalltalk::storage::LogEntry::Event(event) = entry {
                if event.is_imported() {
                    ids.insert(event.id);
                }
            }
        }
        if !full {
            return Ok(ids);
        }
    }
}

/// What the reader of the logs hands on: an event (with `file:line`), or a
/// line or file that is not one (with why).
enum Read {
    Event(String, Box<Mapped>),
    Bad(String, String),
}

/// One log being read: its next event, and the rest.
struct LogFile {
    path: std::path::PathBuf,
    lines: std::io::Split<std::io::BufReader<std::fs::File>>,
    line: usize,
}

impl LogFile {
    /// The next event of the file, handing bad lines to `bad`; `None` at
    /// its end.
    fn next_event(
        &mut self,
        source: &str,
        bad: &mut dyn FnMut(String, String) -> bool,
    ) -> Option<(String, Mapped)> {
        loop {
            let line = self.lines.next()?;
            self.line += 1;
            let what = format!("{}:{}", self.path.display(), self.line);
            let line = match line {
                Ok(line) => line,
                Err(error) => {
                    bad(what, format!("unreadable: {error}"));
                    return None;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mapped = serde_json::from_slice::<OriginalEvent>(&line)
                .map_err(|error| format!("not an event of the original: {error}"))
                .and_then(|original| map_event(original, source, &what));
            match mapped {
                Ok(mapped) => return Some((what, mapped)),
                Err(reason) => {
                    if !bad(what, reason) {
                        return None;
                    }
                }
            }
        }
    }
}

/// Reads the logs `files` on this (blocking) thread, merged by timestamp
/// (each file is in the order the original appended it, its publish
/// order; ties and lines out of order within a file keep the file's
/// order), handing each event to `sender`. Holds one event per file.
fn merge_logs(
    files: Vec<std::path::PathBuf>,
    source: &str,
    sender: &tokio::sync::mpsc::Sender<Read>,
) {
    use std::cmp::Reverse;
    let send = |read: Read| sender.blocking_send(read).is_ok();
    let mut bad = |what: String, reason: String| send(Read::Bad(what, reason));
    let mut logs = Vec::new();
    let mut heads = std::collections::BinaryHeap::new();
    for path in files {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) => {
                if !bad(path.display().to_string(), error.to_string()) {
                    return;
                }
                continue;
            }
        };
        let mut log = LogFile {
            path,
            lines: std::io::BufRead::split(std::io::BufReader::new(file), b'\n'),
            line: 0,
        };
        if let Some((what, mapped)) = log.next_event(source, &mut bad) {
            heads.push(Reverse(Head::new(logs.len(), what, mapped)));
        }
        logs.push(log);
    }
    while let Some(Reverse(head)) = heads.pop() {
        let index = head.index;
        if !send(Read::Event(head.what, head.mapped)) {
            return;
        }
        if let Some((what, mapped)) = logs[index].next_event(source, &mut bad) {
            heads.push(Reverse(Head::new(index, what, mapped)));
        }
    }
}

/// A file's next event, ordered by its time, then by the file.
struct Head {
    timestamp: Timestamp,
    index: usize,
    what: String,
    mapped: Box<Mapped>,
}

impl Head {
    fn new(index: usize, what: String, mapped: Mapped) -> Self {
        Self {
            timestamp: mapped.event.timestamp,
            index,
            what,
            mapped: Box::new(mapped),
        }
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        (self.timestamp, self.index) == (other.timestamp, other.index)
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.timestamp, self.index).cmp(&(other.timestamp, other.index))
    }
}

/// How far in the future an event's time may be (clocks differ): a later
/// one is refused, as it would hold back the retention purge of every
/// event after it.
const FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Imports the event logs `files`, oldest first, as they are read (never
/// all in memory); events before `cutoff` are skipped.
pub(crate) async fn import_logs(
    context: &Context<'_>,
    files: Vec<std::path::PathBuf>,
    cutoff: Timestamp,
    report: &mut ImportReport,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), super::ImportError> {
    let mut known = imported_ids(context)
        .await
        .map_err(|reason| super::ImportError::Read {
            source_name: "the target's event log".into(),
            reason,
        })?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Read>(BATCH);
    let source = context.source.clone();
    let reader = tokio::task::spawn_blocking(move || merge_logs(files, &source, &sender));
    let latest = context.now.saturating_add(FUTURE_SKEW);
    let max_payload = smalltalk::EventBusConfig::default().max_payload_bytes;
    let mut done = 0;
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut pending: Vec<String> = Vec::with_capacity(BATCH);
    while let Some(read) = receiver.recv().await {
        let (what, mapped) = match read {
            Read::Event(what, mapped) => (what, *mapped),
            Read::Bad(what, reason) => {
                report.fail(EVENT, what, reason);
                continue;
            }
        };
        done += 1;
        let event = &mapped.event;
        if event.timestamp < cutoff {
            report.skip(
                EVENT,
                mapped.original_id,
                format!("older than the retention window (before {cutoff})"),
            );
            continue;
        }
        if event.timestamp > latest {
            report.fail(
                EVENT,
                what,
                format!("its time {} is in the future", event.timestamp),
            );
            continue;
        }
        if event.payload.len() > max_payload {
            report.fail(
                EVENT,
                what,
                format!("its payload is over the bus's {max_payload}-byte limit"),
            );
            continue;
        }
        if !known.insert(event.id) {
            report.count(EVENT, Outcome::Duplicate);
            continue;
        }
        if mapped.renamed {
            report.rename(mapped.original_id, event.id.to_string());
        }
        pending.push(what);
        batch.push(mapped.event);
        if batch.len() == BATCH {
            append(context, &mut batch, &mut pending, report).await;
            progress(Progress {
                kind: EVENT,
                done,
                total: done,
            });
        }
    }
    append(context, &mut batch, &mut pending, report).await;
    progress(Progress {
        kind: EVENT,
        done,
        total: done,
    });
    reader.await.map_err(|error| super::ImportError::Read {
        source_name: "the event logs".into(),
        reason: error.to_string(),
    })?;
    Ok(())
}

/// Appends `batch` in one transaction (unless dry), counting each; if the
/// batch fails, each event alone, so one bad event fails only itself.
async fn append(
    context: &Context<'_>,
    batch: &mut Vec<Event>,
    pending: &mut Vec<String>,
    report: &mut ImportReport,
) {
    if batch.is_empty() {
        return;
    }
    let written = if context.dry_run {
        Ok(())
    } else {
        context.store.append_events(batch).await.map(|_| ())
    };
    match written {
        Ok(()) => {
            for _ in batch.iter() {
                report.count(EVENT, Outcome::Imported);
            }
        }
        Err(_) if batch.len() > 1 => {
            for (event, what) in batch.iter().zip(pending.iter()) {
                match context
                    .store
                    .append_events(std::slice::from_ref(event))
                    .await
                {
                    Ok(_) => report.count(EVENT, Outcome::Imported),
                    Err(error) => report.fail(EVENT, what.clone(), error.to_string()),
                }
            }
        }
        Err(error) => {
            for what in pending.iter() {
                report.fail(EVENT, what.clone(), error.to_string());
            }
        }
    }
    batch.clear();
    pending.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(id: &str, topic: &str, priority: Option<&str>) -> OriginalEvent {
        serde_json::from_value(json!({
            "id": id, "topic": topic, "payload": {"n": 1}, "priority": priority,
            "timestamp": 1_767_225_600_000_i64, "sessionId": "legacy-7",
            "metadata": {"source": "planner"}
        }))
        .unwrap()
    }

    #[test]
    fn events_keep_ids_and_times_and_are_marked_imported() {
        let id = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
        let mapped = map_event(
            original(id, "task:completed", Some("critical")),
            "/d",
            "f:1",
        )
        .unwrap();
        let event = &mapped.event;
        assert_eq!(event.id.to_string(), id);
        assert!(!mapped.renamed);
        assert_eq!(event.timestamp.as_millis(), 1_767_225_600_000);
        assert_eq!(event.priority, EventPriority::Critical);
        assert!(event.is_imported());
        assert_eq!(event.metadata["source"], "planner");
        assert_eq!(event.metadata[IMPORTED_FROM]["id"], id);
        assert_eq!(
            event.session_id,
            Some(derived_session_id("legacy-7")),
            "a renamed session's events follow it"
        );
        let renamed = map_event(original("evt_17", "task:completed", None), "/d", "f:2").unwrap();
        assert!(renamed.renamed);
        assert_eq!(
            renamed.event.id,
            map_event(original("evt_17", "task:completed", None), "/d", "f:2")
                .unwrap()
                .event
                .id,
            "derived alike every time"
        );
        assert!(map_event(original(id, "bad topic!", None), "/d", "f:3").is_err());
        assert!(map_event(original(id, "task:x", Some("urgent")), "/d", "f:4").is_err());
    }
}
