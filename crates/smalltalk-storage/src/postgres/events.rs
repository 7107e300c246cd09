//! The event log on PostgreSQL.

use async_trait::async_trait;
use smalltalk_types::{Event, StorageKey, Timestamp};

use sqlx::Row;

use super::{PgStore, pg_error};
use crate::codec::{self, to_i64, to_u64};
use crate::{Error, EventFilter, EventLog, EventLogStats, LogBounds, LogEntry, Result};

impl PgStore {
    /// One statement: the head row's lock orders appenders until commit,
    /// so positions follow commit order and readers never see a gap close
    /// behind them.
    async fn append(&self, events: &[Event], expected: Option<u64>) -> Result<Vec<u64>> {
        let count = events.len() as i64;
        let mut ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut publishers = Vec::with_capacity(events.len());
        let mut topics = Vec::with_capacity(events.len());
        let mut priorities = Vec::with_capacity(events.len());
        let mut sessions = Vec::with_capacity(events.len());
        let mut conversations = Vec::with_capacity(events.len());
        let mut timestamps = Vec::with_capacity(events.len());
        let mut bodies = Vec::with_capacity(events.len());
        for event in events {
            ids.push(event.id.to_string());
            types.push(event.event_type.clone());
            publishers.push(event.publisher.clone());
            topics.push(event.topic.as_str().to_owned());
            priorities.push(event.priority.as_str().to_owned());
            sessions.push(event.session_id.map(|id| id.to_string()));
            conversations.push(event.conversation_id.map(|id| id.to_string()));
            timestamps.push(event.timestamp.as_micros());
            bodies.push(codec::encode_event(event)?);
        }
        let last: Option<i64> = sqlx::query_scalar(
            "WITH head AS (
                UPDATE event_log_head SET last = last + $1
                WHERE id = 1 AND ($2::BIGINT IS NULL OR last = $2) RETURNING last),
             ins AS (
                INSERT INTO events (position, event_id, topic, event_type, publisher, priority, session_id,
                                    conversation_id, timestamp, body)
                SELECT head.last - $1 + batch.ord, batch.event_id, batch.topic, batch.event_type,
                       batch.publisher, batch.priority, batch.session_id, batch.conversation_id, batch.ts,
                       batch.body
                FROM head, UNNEST($3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], $8::BYTEA[],
                                  $9::TEXT[], $10::TEXT[], $11::TEXT[])
                     WITH ORDINALITY AS batch (topic, priority, session_id, conversation_id, ts, body,
                                               event_id, event_type, publisher, ord))
             SELECT last FROM head",
        )
        .bind(count)
        .bind(expected.map(to_i64))
        .bind(topics)
        .bind(priorities)
        .bind(sessions)
        .bind(conversations)
        .bind(timestamps)
        .bind(bodies)
        .bind(ids)
        .bind(types)
        .bind(publishers)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?;
        let Some(last) = last else {
            let found: i64 = sqlx::query_scalar("SELECT last FROM event_log_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(pg_error)?;
            return Err(Error::PositionConflict {
                expected: expected.unwrap_or(0),
                found: to_u64(found),
            });
        };
        let last = to_u64(last);
        self.log_watch.advance(last);
        Ok((last + 1 - events.len() as u64..=last).collect())
    }
}

/// The columns of an `events` row, in the read's select order.
fn event_columns(row: &sqlx::postgres::PgRow) -> sqlx::Result<codec::EventColumns<'_>> {
    Ok(codec::EventColumns {
        position: row.try_get(0)?,
        id: row.try_get(1)?,
        topic: row.try_get(2)?,
        event_type: row.try_get(3)?,
        publisher: row.try_get(4)?,
        timestamp: row.try_get(5)?,
        priority: row.try_get(6)?,
        session_id: row.try_get(7)?,
        conversation_id: row.try_get(8)?,
        body: row.try_get(9)?,
    })
}

#[async_trait]
impl EventLog for PgStore {
    async fn append_events(&self, events: &[Event]) -> Result<Vec<u64>> {
        self.append(events, None).await
    }

    async fn append_events_at(&self, events: &[Event], expected_last: u64) -> Result<Vec<u64>> {
        self.append(events, Some(expected_last)).await
    }

    async fn read_log(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        let batch = limit.clamp(1, 1024);
        let mut events = Vec::new();
        let mut cursor = after;
        while events.len() < limit {
            let rows = sqlx::query(
                "SELECT position, event_id, topic, event_type, publisher, timestamp, priority, session_id,
                        conversation_id, body FROM events
                 WHERE position > $1 AND ($2::TEXT IS NULL OR priority = $2)
                   AND ($3::TEXT IS NULL OR session_id = $3) AND ($4::TEXT IS NULL OR conversation_id = $4)
                   AND ($5::BIGINT IS NULL OR timestamp >= $5) AND ($6::BIGINT IS NULL OR timestamp < $6)
                 ORDER BY position LIMIT $7",
            )
            .bind(to_i64(cursor))
            .bind(filter.priority.map(|priority| priority.as_str()))
            .bind(filter.session_id.map(|id| id.to_string()))
            .bind(filter.conversation_id.map(|id| id.to_string()))
            .bind(filter.since.map(Timestamp::as_micros))
            .bind(filter.until.map(Timestamp::as_micros))
            .bind(batch as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?;
            let fetched = rows.len();
            for row in &rows {
                match event_columns(row) {
                    Ok(columns) => {
                        codec::take_if_matching(&columns, filter, &mut events, &mut cursor);
                    }
                    // A column that does not read (e.g. text that is not
                    // UTF-8 in a SQL_ASCII database): that row is
                    // undecodable, the rest reads on.
                    Err(error) => {
                        let position: i64 = row.try_get(0).map_err(pg_error)?;
                        cursor = to_u64(position);
                        let text =
                            |index: usize| row.try_get::<String, _>(index).unwrap_or_default();
                        let topic = text(2);
                        if !codec::topic_excluded(filter, &topic) {
                            events.push(codec::undecodable_row(position, text(1), topic, error));
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

    async fn log_bounds(&self) -> Result<LogBounds> {
        let (first, last): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT MIN(position) FROM events), (SELECT last FROM event_log_head WHERE id = 1)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(LogBounds {
            first: first.map(to_u64),
            last: to_u64(last),
        })
    }

    async fn cursor(&self, subscriber: &StorageKey) -> Result<Option<crate::Cursor>> {
        let found: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT position, live_until FROM event_cursors WHERE subscriber = $1")
                .bind(subscriber.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
        Ok(found.map(|(position, live_until)| crate::Cursor {
            position: to_u64(position),
            live_until: to_u64(live_until.unwrap_or(position).max(position)),
        }))
    }

    async fn set_cursor(&self, subscriber: &StorageKey, cursor: crate::Cursor) -> Result<()> {
        sqlx::query(
            "INSERT INTO event_cursors (subscriber, position, updated_at, live_until)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (subscriber) DO UPDATE SET position = excluded.position,
                updated_at = excluded.updated_at, live_until = excluded.live_until",
        )
        .bind(subscriber.as_str())
        .bind(to_i64(cursor.position))
        .bind(self.clock.now().as_micros())
        .bind(to_i64(cursor.live_until))
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(pg_error)
    }

    async fn delete_cursor(&self, subscriber: &StorageKey) -> Result<bool> {
        sqlx::query("DELETE FROM event_cursors WHERE subscriber = $1")
            .bind(subscriber.as_str())
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected() > 0)
            .map_err(pg_error)
    }

    async fn purge_events_before(&self, cutoff: Timestamp) -> Result<u64> {
        // By position: the oldest events up to the first one at or after
        // the cutoff, so the retained log has no holes.
        sqlx::query(
            "DELETE FROM events WHERE position < COALESCE(
                (SELECT position FROM events WHERE timestamp >= $1 ORDER BY position LIMIT 1),
                (SELECT MAX(position) + 1 FROM events))",
        )
        .bind(cutoff.as_micros())
        .execute(&self.pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(pg_error)
    }

    async fn wait_for_events(&self, after: u64, timeout: std::time::Duration) -> Result<u64> {
        self.log_watch
            .wait(after, timeout, || async {
                Ok(self.log_bounds().await?.last)
            })
            .await
    }

    async fn event_log_stats(&self) -> Result<EventLogStats> {
        let (events, bytes, cursors): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COALESCE(SUM(length(body)), 0)::BIGINT FROM events),
                    (SELECT COUNT(*) FROM event_cursors)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(EventLogStats {
            events: to_u64(events),
            bytes: to_u64(bytes),
            bounds: self.log_bounds().await?,
            cursors: to_u64(cursors),
        })
    }
}
