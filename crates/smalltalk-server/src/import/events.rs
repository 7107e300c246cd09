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

use serde_json::{Value, json};
use smalltalk::storage::EventFilter;
use smalltalk::types::event::IMPORTED_FROM;
use smalltalk::types::format::FORMAT_VERSION;
use smalltalk::types::{Event, EventId, EventPriority, Payload, Topic};
use smalltalk::{ConversationId, SessionId, Timestamp};

use super::mapping::derived_session_id;
use super::original::OriginalEvent;
use super::{Context, ImportReport, Outcome, Progress, hex_digest};

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

/// A UUID v4 id made from a SHA-256 of `original`: the same on every run.
fn derived_uuid<T: std::str::FromStr>(kind: &str, original: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let digest = hex_digest(&format!("smalltalk-ts {kind} {original}"));
    let mut hex: Vec<u8> = digest.as_bytes()[..32].to_vec();
    hex[12] = b'4';
    hex[16] = b"89ab"[usize::from(hex[16] % 4)];
    let hex = String::from_utf8(hex).expect("hex digits");
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    text.parse().expect("a UUID v4 in text form")
}

/// The ids of the events in the log, and the original ids of those
/// imported.
async fn already_in(context: &Context<'_>) -> Result<(HashSet<EventId>, HashSet<String>), String> {
    let mut ids = HashSet::new();
    let mut originals = HashSet::new();
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
                if let Some(Value::String(original)) = event
                    .metadata
                    .get(IMPORTED_FROM)
                    .and_then(|from| from.get("id"))
                {
                    originals.insert(original.clone());
                }
                ids.insert(event.id);
            }
        }
        if !full {
            return Ok((ids, originals));
        }
    }
}

/// Imports `events` (each with where it was read), oldest first; events
/// before `cutoff` are skipped.
pub(crate) async fn import_events(
    context: &Context<'_>,
    mut events: Vec<(String, Mapped)>,
    cutoff: Timestamp,
    report: &mut ImportReport,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), super::ImportError> {
    events.sort_by_key(|(_, mapped)| mapped.event.timestamp);
    let (mut ids, mut originals) =
        already_in(context)
            .await
            .map_err(|reason| super::ImportError::Read {
                source_name: "the target's event log".into(),
                reason,
            })?;
    let total = events.len() as u64;
    let mut done = 0;
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut pending: Vec<String> = Vec::with_capacity(BATCH);
    for (what, mapped) in events {
        done += 1;
        if mapped.event.timestamp < cutoff {
            report.skip(
                EVENT,
                mapped.original_id,
                format!("older than the retention window (before {cutoff})"),
            );
            continue;
        }
        if originals.contains(&mapped.original_id) {
            report.count(EVENT, Outcome::Duplicate);
            continue;
        }
        if !ids.insert(mapped.event.id) {
            report.fail(
                EVENT,
                what,
                format!(
                    "event {} is already in the log, not imported",
                    mapped.event.id
                ),
            );
            continue;
        }
        originals.insert(mapped.original_id.clone());
        if mapped.renamed {
            report.rename(mapped.original_id, mapped.event.id.to_string());
        }
        pending.push(what);
        batch.push(mapped.event);
        if batch.len() == BATCH {
            append(context, &mut batch, &mut pending, report).await;
            progress(Progress {
                kind: EVENT,
                done,
                total,
            });
        }
    }
    append(context, &mut batch, &mut pending, report).await;
    progress(Progress {
        kind: EVENT,
        done,
        total,
    });
    Ok(())
}

/// Appends `batch` in one transaction (unless dry), counting each.
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
