//! The event log: a totally ordered, durable log of events with
//! per-subscriber cursors (the storage side of the event bus).

use std::fmt;

use async_trait::async_trait;
use smalltalk_types::{
    ConversationId, Event, EventPriority, SessionId, StorageKey, Timestamp, TopicPattern,
};

use crate::Result;

/// Which events [`EventLog::read_events`] returns; every set field must
/// match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Topic patterns; an event matches if any does. Empty: every topic.
    pub patterns: Vec<TopicPattern>,
    /// Only this priority.
    pub priority: Option<EventPriority>,
    /// Only events of this session.
    pub session_id: Option<SessionId>,
    /// Only events of this conversation.
    pub conversation_id: Option<ConversationId>,
    /// Only events published at or after this time.
    pub since: Option<Timestamp>,
    /// Only events published before this time.
    pub until: Option<Timestamp>,
}

impl EventFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        (self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|pattern| pattern.matches(&event.topic)))
            && self
                .priority
                .is_none_or(|priority| event.priority == priority)
            && self
                .session_id
                .is_none_or(|id| event.session_id == Some(id))
            && self
                .conversation_id
                .is_none_or(|id| event.conversation_id == Some(id))
            && self.since.is_none_or(|since| event.timestamp >= since)
            && self.until.is_none_or(|until| event.timestamp < until)
    }
}

/// The positions a log holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest retained event's position; `None` if none is retained.
    pub first: Option<u64>,
    /// The newest position ever assigned (0 if none); never goes back,
    /// even when events are purged.
    pub last: u64,
}

/// A subscriber's durable cursor in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The last position acknowledged: everything up to it is settled.
    pub position: u64,
    /// The log's newest position the last time the subscriber was known to
    /// be there (at least `position`, and at least every position it was
    /// handed). When it comes back, everything up to here that is not
    /// settled is delivered again whatever its replay policy: the policy
    /// governs only what was published while it was away.
    pub live_until: u64,
}

impl Cursor {
    /// A cursor at `position`, live until there.
    pub const fn at(position: u64) -> Self {
        Self {
            position,
            live_until: position,
        }
    }
}

/// One row of the log, as [`EventLog::read_log`] returns it: decoded or
/// not, nothing else (exhaustive on purpose, so readers handle both).
#[derive(Debug)]
pub enum LogEntry {
    /// An event.
    Event(Event),
    /// A row that does not decode.
    Undecodable(UndecodableEvent),
}

impl LogEntry {
    /// Its position in the log.
    pub fn position(&self) -> u64 {
        match self {
            LogEntry::Event(event) => event.position.unwrap_or(0),
            LogEntry::Undecodable(row) => row.position,
        }
    }

    /// The event, or [`Error::UndecodableEvent`](crate::Error::UndecodableEvent).
    pub fn into_event(self) -> Result<Event> {
        match self {
            LogEntry::Event(event) => Ok(event),
            LogEntry::Undecodable(row) => Err(crate::Error::UndecodableEvent {
                position: row.position,
                source: row.error,
            }),
        }
    }
}

/// A logged row that does not decode: written by a newer release, damaged,
/// or edited by hand. Readers skip it by position; the event bus
/// dead-letters it with an ERROR and goes on.
#[derive(Debug)]
#[non_exhaustive]
pub struct UndecodableEvent {
    /// Its position.
    pub position: u64,
    /// Its id column, as stored.
    pub event_id: String,
    /// Its topic column, as stored.
    pub topic: String,
    /// Why it does not decode: a column of the wrong type, a body that is
    /// not the JSON expected, a format from a newer release, a bad id.
    pub error: smalltalk_types::BoxError,
}

/// Counts and sizes of a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventLogStats {
    /// Events retained.
    pub events: u64,
    /// Bytes of encoded events retained.
    pub bytes: u64,
    /// Positions retained.
    pub bounds: LogBounds,
    /// Subscriber cursors stored.
    pub cursors: u64,
}

/// A durable, totally ordered event log (FR-011, FR-014).
///
/// Positions start at 1, increase by one per event, and are never reused:
/// an event appended after another commits after it, so a reader that has
/// seen position `n` has seen every event up to `n` (no gaps appear behind
/// a reader). Purging removes old events; [`LogBounds::first`] says where
/// the retained log starts, so a reader can tell it missed purged events.
#[async_trait]
pub trait EventLog: Send + Sync + fmt::Debug + 'static {
    /// Appends `events` in order, atomically; returns their positions. The
    /// `position` field of the events passed in is ignored.
    async fn append_events(&self, events: &[Event]) -> Result<Vec<u64>>;

    /// Appends `events` only if the newest position is `expected_last` (0:
    /// empty log), else [`Error::PositionConflict`](crate::Error::PositionConflict)
    /// and nothing is written.
    async fn append_events_at(&self, events: &[Event], expected_last: u64) -> Result<Vec<u64>>;

    /// Up to `limit` entries after position `after` (exclusive) that pass
    /// `filter`, in position order: each an event with its position set,
    /// or a row that does not decode ([`LogEntry::Undecodable`], counted in
    /// `limit`; a damaged or hand-edited row never hides the rows after
    /// it).
    async fn read_log(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<LogEntry>>;

    /// [`read_log`](EventLog::read_log) for readers that want events only:
    /// a row that does not decode fails the read with
    /// [`Error::UndecodableEvent`](crate::Error::UndecodableEvent), which
    /// names its position (read on after it to skip it).
    async fn read_events(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.read_log(after, filter, limit)
            .await?
            .into_iter()
            .map(LogEntry::into_event)
            .collect()
    }

    /// The retained range of positions.
    async fn log_bounds(&self) -> Result<LogBounds>;

    /// A subscriber's durable cursor. One stored by a release before
    /// `live_until` existed reads as [`Cursor::at`] its position.
    async fn cursor(&self, subscriber: &StorageKey) -> Result<Option<Cursor>>;

    /// Sets a subscriber's cursor.
    async fn set_cursor(&self, subscriber: &StorageKey, cursor: Cursor) -> Result<()>;

    /// Deletes a subscriber's cursor; `false` if it had none.
    async fn delete_cursor(&self, subscriber: &StorageKey) -> Result<bool>;

    /// Deletes the oldest events, by position, up to the first one
    /// published at or after `cutoff` (all of them if none is); returns how
    /// many. The retained log stays contiguous: an event whose publisher's
    /// clock was behind is kept if a newer one came before it.
    async fn purge_events_before(&self, cutoff: Timestamp) -> Result<u64>;

    /// Counts and sizes.
    async fn event_log_stats(&self) -> Result<EventLogStats>;

    /// Waits until the log's newest position is beyond `after`, or
    /// `timeout` passes, and returns the newest position then (compare it
    /// with `after` to tell which). Appends through this store wake waiters
    /// at once; on PostgreSQL so do appends by any other process sharing
    /// the database (LISTEN/NOTIFY). SQLite cannot be notified by other
    /// processes: their appends are seen at the timeout, so poll with it.
    async fn wait_for_events(&self, after: u64, timeout: std::time::Duration) -> Result<u64>;
}

/// The newest position a store knows of, with a way to wait for it to
/// move. Each backend feeds it from its own appends (and PostgreSQL from
/// notifications).
#[derive(Debug)]
pub(crate) struct LogWatch(tokio::sync::watch::Sender<u64>);

impl Default for LogWatch {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl LogWatch {
    /// Records that the log reached `position`.
    pub(crate) fn advance(&self, position: u64) {
        self.0.send_if_modified(|last| {
            let newer = position > *last;
            if newer {
                *last = position;
            }
            newer
        });
    }

    /// Waits for a position beyond `after`, up to `timeout`; `current` is
    /// the newest position read from storage, to catch up first and to
    /// answer at the timeout.
    pub(crate) async fn wait<F, Fut>(
        &self,
        after: u64,
        timeout: std::time::Duration,
        current: F,
    ) -> Result<u64>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let mut changes = self.0.subscribe();
        self.advance(current().await?);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = *changes.borrow_and_update();
            if last > after {
                return Ok(last);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // Timed out (or the store is gone): report what storage has.
                _ => {
                    let last = current().await?;
                    self.advance(last);
                    return Ok(last);
                }
            }
        }
    }
}
