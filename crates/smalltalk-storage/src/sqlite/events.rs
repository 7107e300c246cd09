//! The event log on SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use smalltalk_types::{Event, StorageKey, Timestamp};

use super::{SqliteStore, sqlite_error};
use crate::codec::{self, to_i64, to_u64};
use crate::{Error, EventFilter, EventLog, EventLogStats, LogBounds, LogEntry, Result};

/// Reads of more events than this run on the blocking pool.
const INLINE_READ_EVENTS: usize = 1000;

/// An event encoded outside the writer.
struct EncodedEvent {
    id: String,
    topic: String,
    event_type: String,
    publisher: String,
    priority: &'static str,
    session_id: Option<String>,
    conversation_id: Option<String>,
    timestamp: i64,
    body: Vec<u8>,
}

fn encode(events: &[Event]) -> Result<Vec<EncodedEvent>> {
    events
        .iter()
        .map(|event| {
            Ok(EncodedEvent {
                id: event.id.to_string(),
                topic: event.topic.as_str().to_owned(),
                event_type: event.event_type.clone(),
                publisher: event.publisher.clone(),
                priority: event.priority.as_str(),
                session_id: event.session_id.map(|id| id.to_string()),
                conversation_id: event.conversation_id.map(|id| id.to_string()),
                timestamp: event.timestamp.as_micros(),
                body: codec::encode_event(event)?,
            })
        })
        .collect()
}

/// Inserts after the head; `expected` makes it conditional.
fn append(conn: &Connection, events: &[EncodedEvent], expected: Option<u64>) -> Result<Vec<u64>> {
    let last: i64 = conn
        .prepare_cached("SELECT last FROM event_log_head WHERE id = 1")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .map_err(sqlite_error)?;
    let last = to_u64(last);
    if let Some(expected) = expected.filter(|expected| *expected != last) {
        return Err(Error::PositionConflict {
            expected,
            found: last,
        });
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (position, event_id, topic, event_type, publisher, priority, session_id,
                                 conversation_id, timestamp, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(sqlite_error)?;
    let mut positions = Vec::with_capacity(events.len());
    for (offset, event) in events.iter().enumerate() {
        let position = last + 1 + offset as u64;
        insert
            .execute(params![
                to_i64(position),
                event.id,
                event.topic,
                event.event_type,
                event.publisher,
                event.priority,
                event.session_id,
                event.conversation_id,
                event.timestamp,
                event.body
            ])
            .map_err(sqlite_error)?;
        positions.push(position);
    }
    conn.prepare_cached("UPDATE event_log_head SET last = ?1 WHERE id = 1")
        .and_then(|mut statement| statement.execute([to_i64(last + events.len() as u64)]))
        .map_err(sqlite_error)?;
    Ok(positions)
}

/// Reads in batches, filtering topic patterns here (the rest in SQL).
fn read(
    conn: &Connection,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Result<Vec<LogEntry>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT position, event_id, topic, event_type, publisher, timestamp, priority, session_id,
                    conversation_id, body FROM events
             WHERE position > ?1 AND (?2 IS NULL OR priority = ?2) AND (?3 IS NULL OR session_id = ?3)
               AND (?4 IS NULL OR conversation_id = ?4) AND (?5 IS NULL OR timestamp >= ?5)
               AND (?6 IS NULL OR timestamp < ?6)
             ORDER BY position LIMIT ?7",
        )
        .map_err(sqlite_error)?;
    let batch = limit.clamp(1, 1024);
    let mut events = Vec::with_capacity(batch);
    let mut cursor = after;
    while events.len() < limit {
        let mut rows = statement
            .query(params![
                to_i64(cursor),
                filter.priority.map(|priority| priority.as_str()),
                filter.session_id.map(|id| id.to_string()),
                filter.conversation_id.map(|id| id.to_string()),
                filter.since.map(Timestamp::as_micros),
                filter.until.map(Timestamp::as_micros),
                batch as i64,
            ])
            .map_err(sqlite_error)?;
        let mut fetched = 0;
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            fetched += 1;
            match event_columns(row) {
                Ok(columns) => codec::take_if_matching(&columns, filter, &mut events, &mut cursor),
                // A column of the wrong type (SQLite keeps what it is
                // given): that row is undecodable, the rest reads on.
                Err(error) => {
                    let position: i64 = row.get(0).map_err(sqlite_error)?;
                    cursor = to_u64(position);
                    let topic = row_text(row, 2);
                    if !codec::topic_excluded(filter, &topic) {
                        events.push(codec::undecodable_row(
                            position,
                            row_text(row, 1),
                            topic,
                            error,
                        ));
                    }
                }
            }
            if events.len() == limit {
                break;
            }
        }
        if fetched < batch {
            break;
        }
    }
    Ok(events)
}

/// A text column as far as it can be read, for naming a damaged row.
fn row_text(row: &rusqlite::Row<'_>, index: usize) -> String {
    match row.get_ref(index) {
        Ok(value) => match value {
            rusqlite::types::ValueRef::Text(bytes) | rusqlite::types::ValueRef::Blob(bytes) => {
                String::from_utf8_lossy(bytes).into_owned()
            }
            other => format!("{other:?}"),
        },
        Err(_) => String::new(),
    }
}

/// The columns of an `events` row, borrowed from SQLite's buffers.
fn event_columns<'a>(row: &'a rusqlite::Row<'_>) -> rusqlite::Result<codec::EventColumns<'a>> {
    let text = |index: usize| -> rusqlite::Result<&'a str> {
        row.get_ref(index)?.as_str().map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        })
    };
    let optional_text = |index: usize| -> rusqlite::Result<Option<&'a str>> {
        row.get_ref(index)?.as_str_or_null().map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        })
    };
    Ok(codec::EventColumns {
        position: row.get(0)?,
        id: text(1)?,
        topic: text(2)?,
        event_type: text(3)?,
        publisher: text(4)?,
        timestamp: row.get(5)?,
        priority: text(6)?,
        session_id: optional_text(7)?,
        conversation_id: optional_text(8)?,
        body: row.get_ref(9)?.as_bytes().map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                9,
                rusqlite::types::Type::Blob,
                Box::new(error),
            )
        })?,
    })
}

fn bounds(conn: &Connection) -> Result<LogBounds> {
    conn.query_row(
        "SELECT (SELECT MIN(position) FROM events), (SELECT last FROM event_log_head WHERE id = 1)",
        [],
        |row| {
            Ok(LogBounds {
                first: row.get::<_, Option<i64>>(0)?.map(to_u64),
                last: to_u64(row.get(1)?),
            })
        },
    )
    .map_err(sqlite_error)
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn append_events(&self, events: &[Event]) -> Result<Vec<u64>> {
        let encoded = encode(events)?;
        let positions = self.write(move |conn| append(conn, &encoded, None)).await?;
        self.log_watch
            .advance(positions.last().copied().unwrap_or(0));
        Ok(positions)
    }

    async fn append_events_at(&self, events: &[Event], expected_last: u64) -> Result<Vec<u64>> {
        let encoded = encode(events)?;
        let positions = self
            .write(move |conn| append(conn, &encoded, Some(expected_last)))
            .await?;
        self.log_watch
            .advance(positions.last().copied().unwrap_or(0));
        Ok(positions)
    }

    async fn wait_for_events(&self, after: u64, timeout: std::time::Duration) -> Result<u64> {
        self.log_watch
            .wait(after, timeout, || async {
                Ok(self.log_bounds().await?.last)
            })
            .await
    }

    async fn read_log(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        let filter = filter.clone();
        // Pattern filters are checked row by row in Rust, however many rows
        // that takes: such reads never run on the caller's thread.
        let inline = limit <= INLINE_READ_EVENTS && filter.patterns.is_empty();
        let work = move |conn: &Connection| read(conn, after, &filter, limit);
        if inline {
            self.read_inline(work).await
        } else {
            self.read_blocking(work).await
        }
    }

    async fn log_bounds(&self) -> Result<LogBounds> {
        self.read_inline(bounds).await
    }

    async fn cursor(&self, subscriber: &StorageKey) -> Result<Option<crate::Cursor>> {
        let subscriber = subscriber.clone();
        self.read_inline(move |conn| {
            conn.prepare_cached(
                "SELECT position, live_until FROM event_cursors WHERE subscriber = ?1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row([subscriber.as_str()], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
                    })
                    .optional()
            })
            .map(|found| {
                found.map(|(position, live_until)| crate::Cursor {
                    position: to_u64(position),
                    live_until: to_u64(live_until.unwrap_or(position).max(position)),
                })
            })
            .map_err(sqlite_error)
        })
        .await
    }

    async fn set_cursor(&self, subscriber: &StorageKey, cursor: crate::Cursor) -> Result<()> {
        let (subscriber, now) = (subscriber.clone(), self.clock.now().as_micros());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO event_cursors (subscriber, position, updated_at, live_until)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (subscriber) DO UPDATE SET position = excluded.position,
                    updated_at = excluded.updated_at, live_until = excluded.live_until",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    subscriber.as_str(),
                    to_i64(cursor.position),
                    now,
                    to_i64(cursor.live_until)
                ])
            })
            .map(drop)
            .map_err(sqlite_error)
        })
        .await
    }

    async fn delete_cursor(&self, subscriber: &StorageKey) -> Result<bool> {
        let subscriber = subscriber.clone();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM event_cursors WHERE subscriber = ?1")
                .and_then(|mut statement| statement.execute([subscriber.as_str()]))
                .map(|deleted| deleted > 0)
                .map_err(sqlite_error)
        })
        .await
    }

    async fn purge_events_before(&self, cutoff: Timestamp) -> Result<u64> {
        self.write(move |conn| {
            conn.execute(
                // By position: the oldest events up to the first one at or
                // after the cutoff (walked from the oldest), so the retained
                // log has no holes whatever the publishers' clocks said.
                "DELETE FROM events WHERE position < COALESCE(
                    (SELECT position FROM events WHERE timestamp >= ?1 ORDER BY position LIMIT 1),
                    (SELECT MAX(position) + 1 FROM events))",
                [cutoff.as_micros()],
            )
            .map(|deleted| deleted as u64)
            .map_err(sqlite_error)
        })
        .await
    }

    async fn event_log_stats(&self) -> Result<EventLogStats> {
        self.read_blocking(|conn| {
            let (events, bytes, cursors): (i64, i64, i64) = conn
                .query_row(
                    "SELECT (SELECT COUNT(*) FROM events), (SELECT COALESCE(SUM(length(body)), 0) FROM events),
                            (SELECT COUNT(*) FROM event_cursors)",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .map_err(sqlite_error)?;
            Ok(EventLogStats { events: to_u64(events), bytes: to_u64(bytes), bounds: bounds(conn)?, cursors: to_u64(cursors) })
        })
        .await
    }
}
