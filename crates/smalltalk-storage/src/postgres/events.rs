//! The event log on PostgreSQL.

use async_trait::async_trait;
use smalltalk_types::{Event, StorageKey, Timestamp};

use sqlx::Row;

use super::{PgStore, pg_error};
use crate::codec::{self, to_i64, to_u64};
use crate::{Error, EventFilter, EventLog, EventLogStats, LogBounds, LogEntry, Result};

impl PgStore {
    /// Through the node's committer: concurrent appends share one
    /// transaction and, where none expects a position, one statement. The
    /// head row's lock orders appenders until commit, so positions follow
    /// commit order, gap-free, and readers never see a gap close behind
    /// them.
    async fn append(&self, events: &[Event], expected: Option<u64>) -> Result<Vec<u64>> {
        let rows = EventRows::encode(events)?;
        let last = self
            .event_committer
            .submit(AppendJob { rows, expected })
            .await?;
        self.log_watch.advance(last);
        Ok((last + 1 - events.len() as u64..=last).collect())
    }
}

/// Events to insert, column by column (as the statement binds them).
#[derive(Debug, Default)]
pub(super) struct EventRows {
    ids: Vec<String>,
    types: Vec<String>,
    publishers: Vec<String>,
    topics: Vec<String>,
    priorities: Vec<String>,
    sessions: Vec<Option<String>>,
    conversations: Vec<Option<String>>,
    timestamps: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

impl EventRows {
    fn encode(events: &[Event]) -> Result<Self> {
        let mut rows = Self::default();
        for event in events {
            rows.ids.push(event.id.to_string());
            rows.types.push(event.event_type.clone());
            rows.publishers.push(event.publisher.clone());
            rows.topics.push(event.topic.as_str().to_owned());
            rows.priorities.push(event.priority.as_str().to_owned());
            rows.sessions
                .push(event.session_id.map(|id| id.to_string()));
            rows.conversations
                .push(event.conversation_id.map(|id| id.to_string()));
            rows.timestamps.push(event.timestamp.as_micros());
            rows.bodies.push(codec::encode_event(event)?);
        }
        Ok(rows)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn extend_from(&mut self, other: &EventRows) {
        self.ids.extend_from_slice(&other.ids);
        self.types.extend_from_slice(&other.types);
        self.publishers.extend_from_slice(&other.publishers);
        self.topics.extend_from_slice(&other.topics);
        self.priorities.extend_from_slice(&other.priorities);
        self.sessions.extend_from_slice(&other.sessions);
        self.conversations.extend_from_slice(&other.conversations);
        self.timestamps.extend_from_slice(&other.timestamps);
        self.bodies.extend_from_slice(&other.bodies);
    }
}

/// One caller's append: its rows, and the log's newest position it
/// expects (`None`: wherever the log is).
pub(super) struct AppendJob {
    rows: EventRows,
    expected: Option<u64>,
}

/// Appends batched by the node's committer.
pub(super) struct AppendBatch;

#[async_trait]
impl super::committer::BatchWork for AppendBatch {
    type Job = AppendJob;
    /// The job's last position.
    type Output = u64;

    fn job_bytes(job: &AppendJob) -> usize {
        job.rows.bodies.iter().map(Vec::len).sum()
    }

    fn one_statement(&self, jobs: &[AppendJob]) -> bool {
        // A conditional append that fails reads the head once more, for
        // the error only.
        jobs.len() == 1 || jobs.iter().all(|job| job.expected.is_none())
    }

    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: &[AppendJob],
    ) -> Result<Vec<Result<u64>>> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut next = 0;
        while next < jobs.len() {
            if let Some(expected) = jobs[next].expected {
                // A conditional append goes alone, at its place in line.
                let outcome = match insert(conn, &jobs[next].rows, Some(expected)).await? {
                    Some(last) => Ok(last),
                    None => {
                        let found: i64 =
                            sqlx::query_scalar("SELECT last FROM event_log_head WHERE id = 1")
                                .fetch_one(&mut *conn)
                                .await
                                .map_err(pg_error)?;
                        Err(Error::PositionConflict {
                            expected,
                            found: to_u64(found),
                        })
                    }
                };
                outcomes.push(outcome);
                next += 1;
                continue;
            }
            // A run of unconditional appends: one statement, positions in
            // the order they were queued.
            let start = next;
            let mut merged = EventRows::default();
            while next < jobs.len() && jobs[next].expected.is_none() {
                merged.extend_from(&jobs[next].rows);
                next += 1;
            }
            let last = insert(conn, &merged, None)
                .await?
                .ok_or_else(|| Error::Backend {
                    backend: "postgres",
                    source: "the log's head row is missing".into(),
                })?;
            let mut end = last;
            let mut ends = Vec::with_capacity(next - start);
            for job in jobs[start..next].iter().rev() {
                ends.push(end);
                end -= job.rows.len() as u64;
            }
            outcomes.extend(ends.into_iter().rev().map(Ok));
        }
        Ok(outcomes)
    }
}

/// One subscriber's cursor to store.
pub(super) struct CursorJob {
    subscriber: String,
    cursor: crate::Cursor,
    at: i64,
}

/// Cursor writes batched by the node's committer: one upsert statement
/// per commit.
pub(super) struct CursorBatch;

#[async_trait]
impl super::committer::BatchWork for CursorBatch {
    type Job = CursorJob;
    type Output = ();

    fn job_bytes(job: &CursorJob) -> usize {
        job.subscriber.len() + 24
    }

    fn one_statement(&self, _jobs: &[CursorJob]) -> bool {
        true
    }

    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: &[CursorJob],
    ) -> Result<Vec<Result<()>>> {
        // One row per subscriber (an upsert may touch a row once): the
        // last queued, as each caller waits for its write before the next.
        // In key order: two nodes upserting the same cursors lock them in
        // the same order, so they cannot deadlock.
        let mut last: std::collections::BTreeMap<&str, &CursorJob> =
            std::collections::BTreeMap::new();
        for job in jobs {
            last.insert(job.subscriber.as_str(), job);
        }
        let (mut subscribers, mut positions, mut ats, mut lives) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for job in last.values() {
            subscribers.push(job.subscriber.as_str());
            positions.push(to_i64(job.cursor.position));
            ats.push(job.at);
            lives.push(to_i64(job.cursor.live_until));
        }
        sqlx::query(
            "INSERT INTO event_cursors (subscriber, position, updated_at, live_until)
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[])
             ON CONFLICT (subscriber) DO UPDATE SET position = excluded.position,
                updated_at = excluded.updated_at, live_until = excluded.live_until",
        )
        .bind(&subscribers)
        .bind(&positions)
        .bind(&ats)
        .bind(&lives)
        .execute(&mut *conn)
        .await
        .map_err(pg_error)?;
        Ok(jobs.iter().map(|_| Ok(())).collect())
    }
}

/// Inserts `rows` after the head (if it is at `expected`, when given);
/// the new head, or `None` when it was not at `expected`.
async fn insert(
    conn: &mut sqlx::PgConnection,
    rows: &EventRows,
    expected: Option<u64>,
) -> Result<Option<u64>> {
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
    .bind(rows.len() as i64)
    .bind(expected.map(to_i64))
    .bind(&rows.topics)
    .bind(&rows.priorities)
    .bind(&rows.sessions)
    .bind(&rows.conversations)
    .bind(&rows.timestamps)
    .bind(&rows.bodies)
    .bind(&rows.ids)
    .bind(&rows.types)
    .bind(&rows.publishers)
    .fetch_optional(&mut *conn)
    .await
    .map_err(pg_error)?;
    Ok(last.map(to_u64))
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
        // Through the node's cursor committer: the cursors of many
        // subscriptions acking at once share one commit.
        self.cursor_committer
            .submit(CursorJob {
                subscriber: subscriber.as_str().to_owned(),
                cursor,
                at: self.clock.now().as_micros(),
            })
            .await
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
