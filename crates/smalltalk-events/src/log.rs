//! Where a bus keeps its events: an in-memory ring, or a durable
//! [`EventLog`] (memory, SQLite or PostgreSQL store).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smalltalk_storage::{Cursor, EventFilter, EventLog, LogBounds, LogEntry, UndecodableEvent};
use smalltalk_types::{Event, StorageKey, Timestamp};

use crate::Result;

/// An estimate of what one event costs in memory besides its payload.
const EVENT_OVERHEAD_BYTES: u64 = 160;

/// Events in memory, oldest first; positions are contiguous.
#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<(Arc<Event>, u64)>,
    /// Position of the front event (or of the next one, when empty).
    front: u64,
    bytes: u64,
}

/// The in-memory log of a bus in memory mode.
#[derive(Debug)]
pub(crate) struct MemoryLog {
    ring: Mutex<Ring>,
    cursors: Mutex<HashMap<StorageKey, Cursor>>,
    capacity: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                front: 1,
                ..Ring::default()
            }),
            cursors: Mutex::default(),
            capacity,
        }
    }

    /// Appends events whose positions follow the newest one.
    pub(crate) fn push(&self, events: &[Arc<Event>], payload_bytes: &[usize]) {
        let mut ring = lock(&self.ring);
        for (event, bytes) in events.iter().zip(payload_bytes) {
            let size = *bytes as u64 + event.topic.as_str().len() as u64 + EVENT_OVERHEAD_BYTES;
            ring.bytes += size;
            ring.events.push_back((Arc::clone(event), size));
        }
        while ring.events.len() > self.capacity {
            if let Some((_, size)) = ring.events.pop_front() {
                ring.bytes -= size;
                ring.front += 1;
            }
        }
    }

    fn read(&self, after: u64, filter: &EventFilter, limit: usize) -> Vec<Arc<Event>> {
        let ring = lock(&self.ring);
        let start = usize::try_from((after + 1).saturating_sub(ring.front)).unwrap_or(usize::MAX);
        ring.events
            .iter()
            .skip(start)
            .map(|(event, _)| event)
            .filter(|event| filter.matches(event))
            .take(limit)
            .cloned()
            .collect()
    }

    fn bounds(&self, last: u64) -> LogBounds {
        let ring = lock(&self.ring);
        LogBounds {
            first: (!ring.events.is_empty()).then_some(ring.front),
            last,
        }
    }

    fn purge(&self, cutoff: Timestamp) -> u64 {
        let mut ring = lock(&self.ring);
        let mut purged = 0;
        while let Some((event, size)) = ring.events.front() {
            if event.timestamp >= cutoff {
                break;
            }
            let size = *size;
            ring.events.pop_front();
            ring.bytes -= size;
            ring.front += 1;
            purged += 1;
        }
        purged
    }

    fn stats(&self) -> (u64, u64) {
        let ring = lock(&self.ring);
        (ring.events.len() as u64, ring.bytes)
    }
}

/// One entry read from the log.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Event(Arc<Event>),
    /// A stored row that does not decode: dead-lettered by whoever reads
    /// it, never handed to a handler, never in the way of what follows.
    Undecodable(Arc<UndecodableEvent>),
}

impl Entry {
    pub(crate) fn position(&self) -> u64 {
        match self {
            Entry::Event(event) => event.position.unwrap_or(0),
            Entry::Undecodable(row) => row.position,
        }
    }
}

/// Logs a row that does not decode at ERROR; `reader` says who met it.
pub(crate) fn report_undecodable(row: &UndecodableEvent, reader: &dyn std::fmt::Display) {
    tracing::error!(position = row.position, event_id = %row.event_id, topic = %row.topic,
        error = %row.error, %reader,
        "a logged event does not decode: dead-lettered, reading on after it");
    metrics::counter!("smalltalk_events_dead_lettered_total").increment(1);
}

/// The log behind a bus.
#[derive(Debug)]
pub(crate) enum Backing {
    Memory(MemoryLog),
    Durable(Arc<dyn EventLog>),
}

impl Backing {
    pub(crate) fn is_durable(&self) -> bool {
        matches!(self, Backing::Durable(_))
    }

    /// Up to `limit` entries after `after` that pass `filter`: events, and
    /// (durable only) rows that do not decode, in position order.
    pub(crate) async fn read(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        match self {
            Backing::Memory(log) => Ok(log
                .read(after, filter, limit)
                .into_iter()
                .map(Entry::Event)
                .collect()),
            Backing::Durable(log) => Ok(log
                .read_log(after, filter, limit)
                .await?
                .into_iter()
                .map(|entry| match entry {
                    LogEntry::Event(event) => Entry::Event(Arc::new(event)),
                    LogEntry::Undecodable(row) => Entry::Undecodable(Arc::new(row)),
                })
                .collect()),
        }
    }

    /// The retained range; `last` is the bus's newest position in memory
    /// mode.
    pub(crate) async fn bounds(&self, last: u64) -> Result<LogBounds> {
        match self {
            Backing::Memory(log) => Ok(log.bounds(last)),
            Backing::Durable(log) => Ok(log.log_bounds().await?),
        }
    }

    pub(crate) async fn cursor(&self, key: &StorageKey) -> Result<Option<Cursor>> {
        match self {
            Backing::Memory(log) => Ok(lock(&log.cursors).get(key).copied()),
            Backing::Durable(log) => Ok(log.cursor(key).await?),
        }
    }

    pub(crate) async fn set_cursor(&self, key: &StorageKey, cursor: Cursor) -> Result<()> {
        match self {
            Backing::Memory(log) => {
                let mut cursors = lock(&log.cursors);
                match cursors.get_mut(key) {
                    Some(stored) => *stored = cursor,
                    None => {
                        cursors.insert(key.clone(), cursor);
                    }
                }
                Ok(())
            }
            Backing::Durable(log) => Ok(log.set_cursor(key, cursor).await?),
        }
    }

    pub(crate) async fn delete_cursor(&self, key: &StorageKey) -> Result<bool> {
        match self {
            Backing::Memory(log) => Ok(lock(&log.cursors).remove(key).is_some()),
            Backing::Durable(log) => Ok(log.delete_cursor(key).await?),
        }
    }

    pub(crate) async fn purge(&self, cutoff: Timestamp) -> Result<u64> {
        match self {
            Backing::Memory(log) => Ok(log.purge(cutoff)),
            Backing::Durable(log) => Ok(log.purge_events_before(cutoff).await?),
        }
    }

    /// Events and bytes retained.
    pub(crate) async fn stats(&self) -> Result<(u64, u64)> {
        match self {
            Backing::Memory(log) => Ok(log.stats()),
            Backing::Durable(log) => {
                let stats = log.event_log_stats().await?;
                Ok((stats.events, stats.bytes))
            }
        }
    }

    /// Waits for the log to pass `after` (durable only).
    pub(crate) async fn wait(&self, after: u64, timeout: Duration) -> Result<u64> {
        match self {
            Backing::Memory(_) => Ok(after),
            Backing::Durable(log) => Ok(log.wait_for_events(after, timeout).await?),
        }
    }
}
