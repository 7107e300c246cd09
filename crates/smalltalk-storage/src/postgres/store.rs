//! The storage traits on PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{
    Message, Session, SessionId, SessionState, SessionSummary, StorageKey, Timestamp,
};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};

use super::{PgStore, pg_error};
use crate::codec::{self, EncodedMessage, to_i64, to_u64};
use crate::{
    AppendGuard, AppendOutcome, BackendKind, Error, Expected, KeyValueStore, Result, SessionFilter,
    SessionStore, StoreAdmin, StoreStats,
};

/// A session encoded outside the transaction.
struct EncodedSave<'a> {
    session: &'a Session,
    expected: Expected,
    messages: Vec<EncodedMessage>,
}

fn encode_save(session: &Session, expected: Expected) -> Result<EncodedSave<'_>> {
    let messages = session
        .messages
        .iter()
        .map(codec::encode_message)
        .collect::<Result<_>>()?;
    Ok(EncodedSave {
        session,
        expected,
        messages,
    })
}

/// The metadata column of `messages`, for binding as an array.
fn metas(messages: &[EncodedMessage]) -> Vec<&[u8]> {
    messages
        .iter()
        .map(|message| message.meta.as_slice())
        .collect()
}

/// The content column of `messages`, for binding as an array.
fn contents(messages: &[EncodedMessage]) -> Vec<&[u8]> {
    messages
        .iter()
        .map(|message| message.content.as_slice())
        .collect()
}

/// Attempts before a blind save gives up against a session that keeps
/// changing under it.
const BLIND_SAVE_ATTEMPTS: u32 = 16;

/// Compare-and-swap save in two round trips and one atomic statement: read
/// the stored version and message count, then write the header and insert
/// only the snapshot's messages past that count, guarded on both values (a
/// concurrent append in between makes the guard miss, and we look again).
/// Works on a pooled connection or inside a transaction.
async fn save_one(conn: &mut PgConnection, save: &EncodedSave<'_>) -> Result<u64> {
    let session = save.session;
    let id = session.id.to_string();
    let header = codec::encode_header(session)?;
    // The common saves in one round trip: a new session is one INSERT; a
    // save at the expected version whose history is what is stored (or a
    // prefix of it) is one UPDATE. Anything else (history to add, a
    // conflict to tell from a missing session or a diverged history)
    // takes the careful path below.
    match save.expected {
        Expected::Absent => {
            return insert_new(conn, &id, session, &header, &save.messages).await;
        }
        Expected::Version(expected) => {
            if let Some(version) = update_in_place(conn, &id, save, &header, expected).await? {
                return Ok(version);
            }
        }
        Expected::Any => {}
    }
    for _ in 0..BLIND_SAVE_ATTEMPTS {
        let current: Option<(i64, i64)> =
            sqlx::query_as("SELECT version, message_count FROM sessions WHERE id = $1")
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(pg_error)?;
        let (found, stored_count) = match (save.expected, current) {
            (Expected::Absent, Some(_)) => return Err(Error::AlreadyExists { id: session.id }),
            (Expected::Version(_), None) => return Err(Error::NotFound { id: session.id }),
            (Expected::Version(expected), Some((found, _))) if to_u64(found) != expected => {
                return Err(Error::Conflict {
                    id: session.id,
                    expected,
                    found: to_u64(found),
                });
            }
            (_, None) => match insert_new(conn, &id, session, &header, &save.messages).await {
                Err(Error::AlreadyExists { .. }) if save.expected == Expected::Any => continue,
                outcome => return outcome,
            },
            (_, Some((found, count))) => (found, count),
        };
        let tail = save
            .messages
            .get(to_u64(stored_count) as usize..)
            .unwrap_or_default();
        // A snapshot's history must be a prefix or an extension of the
        // stored one (appends do not move the version): compare the last
        // message both have.
        let overlap = save.messages.len().min(to_u64(stored_count) as usize);
        if let (Expected::Version(expected), Some(last)) = (save.expected, overlap.checked_sub(1)) {
            let stored: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT meta FROM messages WHERE session_id = $1 AND seq = $2")
                    .bind(&id)
                    .bind(last as i64)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(pg_error)?;
            // Messages are compared by id: immutable once stored, and unique.
            let same = match stored {
                Some(meta) => codec::message_id(&meta)? == session.messages[last].id,
                None => false,
            };
            if !same {
                return Err(Error::HistoryDiverged {
                    id: session.id,
                    version: expected,
                });
            }
        }
        // Only a save that adds messages depends on the stored count; a
        // header change goes in whatever was appended meanwhile.
        let updated: Option<i64> = sqlx::query_scalar(
            "WITH upd AS (
                UPDATE sessions SET state = $2, version = version + 1, created_at = $3,
                    updated_at = $4, expires_at = $5, header = $6,
                    message_count = message_count + $7, message_bytes = message_bytes + $8
                WHERE id = $1 AND version = $9 AND ($7 = 0 OR message_count = $10)
                RETURNING version, message_count - $7 AS first_seq),
             ins AS (
                INSERT INTO messages (session_id, seq, meta, content)
                SELECT $1, upd.first_seq + batch.ord - 1, batch.meta, batch.content
                FROM upd, UNNEST($11::BYTEA[], $12::BYTEA[]) WITH ORDINALITY AS batch (meta, content, ord))
             SELECT version FROM upd",
        )
        .bind(&id)
        .bind(session.state.as_str())
        .bind(session.created_at.as_micros())
        .bind(session.updated_at.as_micros())
        .bind(session.expires_at.as_micros())
        .bind(&header)
        .bind(tail.len() as i64)
        .bind(tail.iter().map(EncodedMessage::len).sum::<u64>() as i64)
        .bind(found)
        .bind(stored_count)
        .bind(metas(tail))
        .bind(contents(tail))
        .fetch_optional(&mut *conn)
        .await
        .map_err(pg_error)?;
        if let Some(version) = updated {
            return Ok(to_u64(version));
        }
        // The session changed between our look and our write: look again
        // (a compare-and-swap save then reports the conflict).
    }
    Err(Error::Unavailable {
        backend: "postgres",
        source: format!("session {} kept changing during a blind save", session.id).into(),
    })
}

/// The header of `save` written at version `expected` if the stored
/// history holds the snapshot's messages (its last one, compared as
/// stored, where it has one) and nothing needs adding: the new version,
/// or `None` when that is not so (the caller finds out why).
async fn update_in_place(
    conn: &mut PgConnection,
    id: &str,
    save: &EncodedSave<'_>,
    header: &[u8],
    expected: u64,
) -> Result<Option<u64>> {
    let session = save.session;
    let count = save.messages.len() as i64;
    let last = save.messages.last().map(|message| message.meta.as_slice());
    let updated: Option<i64> = sqlx::query_scalar(
        "UPDATE sessions SET state = $2, version = version + 1, created_at = $3,
            updated_at = $4, expires_at = $5, header = $6
         WHERE id = $1 AND version = $7 AND message_count >= $8
           AND ($8 = 0 OR EXISTS (
               SELECT 1 FROM messages WHERE session_id = $1 AND seq = $8 - 1 AND meta = $9))
         RETURNING version",
    )
    .bind(id)
    .bind(session.state.as_str())
    .bind(session.created_at.as_micros())
    .bind(session.updated_at.as_micros())
    .bind(session.expires_at.as_micros())
    .bind(header)
    .bind(to_i64(expected))
    .bind(count)
    .bind(last)
    .fetch_optional(&mut *conn)
    .await
    .map_err(pg_error)?;
    Ok(updated.map(to_u64))
}

/// Creates a session and its history in one statement.
async fn insert_new(
    conn: &mut PgConnection,
    id: &str,
    session: &Session,
    header: &[u8],
    bodies: &[EncodedMessage],
) -> Result<u64> {
    // ON CONFLICT instead of a unique violation: an error would abort an
    // enclosing batch transaction.
    let created: i64 = sqlx::query_scalar(
        "WITH created AS (
            INSERT INTO sessions (id, state, version, created_at, updated_at, expires_at,
                                  message_count, message_bytes, header)
            VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (id) DO NOTHING
            RETURNING id),
         history AS (
            INSERT INTO messages (session_id, seq, meta, content)
            SELECT created.id, batch.ord - 1, batch.meta, batch.content
            FROM created, UNNEST($9::BYTEA[], $10::BYTEA[]) WITH ORDINALITY AS batch (meta, content, ord))
         SELECT COUNT(*) FROM created",
    )
    .bind(id)
    .bind(session.state.as_str())
    .bind(session.created_at.as_micros())
    .bind(session.updated_at.as_micros())
    .bind(session.expires_at.as_micros())
    .bind(bodies.len() as i64)
    .bind(bodies.iter().map(EncodedMessage::len).sum::<u64>() as i64)
    .bind(header)
    .bind(metas(bodies))
    .bind(contents(bodies))
    .fetch_one(&mut *conn)
    .await
    .map_err(pg_error)?;
    if created == 0 {
        // Another writer created it since we looked.
        return Err(Error::AlreadyExists { id: session.id });
    }
    Ok(1)
}

/// Saves a batch atomically: one transaction, all or nothing.
async fn save_all(pool: &PgPool, saves: &[EncodedSave<'_>]) -> Result<Vec<u64>> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let mut versions = Vec::with_capacity(saves.len());
    for save in saves {
        // On error the transaction rolls back when dropped.
        versions.push(save_one(&mut tx, save).await?);
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(versions)
}

fn row_to_summary(row: &PgRow) -> Result<SessionSummary> {
    let get = || -> sqlx::Result<_> {
        Ok((
            row.try_get::<String, _>(0)?,
            row.try_get::<String, _>(1)?,
            row.try_get::<i64, _>(2)?,
            row.try_get::<i64, _>(3)?,
            row.try_get::<i64, _>(4)?,
            row.try_get::<i64, _>(5)?,
            row.try_get::<i64, _>(6)?,
        ))
    };
    let (id, state, version, created, updated, expires, count) = get().map_err(pg_error)?;
    codec::summary(&id, &state, version, created, updated, expires, count)
}

impl PgStore {
    async fn read_session(&self, id: SessionId) -> Result<Option<Session>> {
        let key = id.to_string();
        let Some(row) = sqlx::query(
            "SELECT header, version, updated_at, message_count FROM sessions WHERE id = $1",
        )
        .bind(&key)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let (header, version, updated_at, count): (Vec<u8>, i64, i64, i64) = (|| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })()
        .map_err(pg_error)?;
        // Messages are immutable and appended in order, so reading the first
        // `count` gives the history as of the header, without a transaction.
        let bodies: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT meta, content FROM messages WHERE session_id = $1 AND seq < $2 ORDER BY seq",
        )
        .bind(&key)
        .bind(count)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        codec::decode_session(
            id,
            &header,
            to_u64(version),
            Timestamp::from_micros(updated_at),
            bodies.into_iter(),
        )
        .map(Some)
    }
}

/// Deletes a session and its history in one statement.
async fn delete_one(conn: &mut PgConnection, id: &str) -> Result<bool> {
    let deleted = sqlx::query(
        "WITH history AS (DELETE FROM messages WHERE session_id = $1)
         DELETE FROM sessions WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await
    .map_err(pg_error)?;
    Ok(deleted.rows_affected() > 0)
}

#[async_trait]
impl SessionStore for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = "postgres", session_id = %session.id), err)]
    async fn save_session(&self, session: &Session, expected: Expected) -> Result<u64> {
        let save = encode_save(session, expected)?;
        let mut conn = self.pool.acquire().await.map_err(pg_error)?;
        save_one(&mut conn, &save).await
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        self.read_session(id).await
    }

    async fn has_session(&self, id: SessionId) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)")
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(pg_error)
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(pg_error)?;
        delete_one(&mut conn, &id.to_string()).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "postgres", session_id = %id, count = messages.len()), err)]
    async fn append_messages(
        &self,
        id: SessionId,
        messages: &[Message],
        guard: AppendGuard,
    ) -> Result<AppendOutcome> {
        let codec::EncodedAppend {
            messages: bodies,
            bytes: added_bytes,
            newest,
        } = codec::encode_append(messages)?;
        let newest = newest.map(Timestamp::as_micros);
        let key = id.to_string();
        loop {
            // One statement, one round trip: the UPDATE's row lock serializes
            // concurrent appenders, the guard is checked on the locked row,
            // and the messages go in at the positions it returns.
            let updated: Option<(i64, i64)> = sqlx::query_as(
                "WITH upd AS (
                    UPDATE sessions SET message_count = message_count + $3,
                        updated_at = GREATEST(updated_at, COALESCE($4, updated_at)),
                        message_bytes = message_bytes + $5
                    WHERE id = $1 AND ($2::BIGINT IS NULL OR version = $2)
                      AND ($8::BIGINT IS NULL OR (state IN ('active', 'idle') AND expires_at > $8))
                      AND (NOT $9 OR state <> 'invalidated')
                    RETURNING version, message_count),
                 ins AS (
                    INSERT INTO messages (session_id, seq, meta, content)
                    SELECT $1, upd.message_count - $3 + batch.ord - 1, batch.meta, batch.content
                    FROM upd, UNNEST($6::BYTEA[], $7::BYTEA[]) WITH ORDINALITY AS batch (meta, content, ord))
                 SELECT version, message_count FROM upd",
            )
            .bind(&key)
            .bind(guard.version.map(to_i64))
            .bind(bodies.len() as i64)
            .bind(newest)
            .bind(to_i64(added_bytes))
            .bind(metas(&bodies))
            .bind(contents(&bodies))
            .bind(guard.open_at.map(Timestamp::as_micros))
            .bind(guard.not_invalidated)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?;
            if let Some((version, count)) = updated {
                let message_count = to_u64(count);
                return Ok(AppendOutcome {
                    version: to_u64(version),
                    first_sequence: message_count - bodies.len() as u64,
                    message_count,
                });
            }
            // Say why; if the guard holds now, the row changed in between:
            // try again.
            let found: Option<(i64, String, i64)> =
                sqlx::query_as("SELECT version, state, expires_at FROM sessions WHERE id = $1")
                    .bind(&key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(pg_error)?;
            let (version, state, expires_at) = found.ok_or(Error::NotFound { id })?;
            guard.check(
                id,
                to_u64(version),
                codec::parse_state(&state)?,
                Timestamp::from_micros(expires_at),
            )?;
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "postgres", session_id = %session.id, count = messages.len()), err)]
    async fn save_and_append(
        &self,
        session: &Session,
        expected: Expected,
        messages: &[Message],
    ) -> Result<AppendOutcome> {
        let codec::EncodedAppend {
            messages: bodies,
            bytes: added_bytes,
            newest,
        } = codec::encode_append(messages)?;
        let mut header = Session {
            messages: Vec::new(),
            ..session.clone()
        };
        if let Some(newest) = newest {
            header.updated_at = header.updated_at.max(newest);
        }
        let encoded = codec::encode_header(&header)?;
        let key = session.id.to_string();
        let mut conn = self.pool.acquire().await.map_err(pg_error)?;
        for _ in 0..BLIND_SAVE_ATTEMPTS {
            let expected_version = match expected {
                Expected::Version(version) => version,
                Expected::Absent | Expected::Any => {
                    let found: Option<i64> =
                        sqlx::query_scalar("SELECT version FROM sessions WHERE id = $1")
                            .bind(&key)
                            .fetch_optional(&mut *conn)
                            .await
                            .map_err(pg_error)?;
                    match (expected, found) {
                        (Expected::Absent, Some(_)) => {
                            return Err(Error::AlreadyExists { id: session.id });
                        }
                        (_, None) => {
                            match insert_new(&mut conn, &key, &header, &encoded, &bodies).await {
                                Ok(version) => {
                                    return Ok(AppendOutcome {
                                        version,
                                        first_sequence: 0,
                                        message_count: bodies.len() as u64,
                                    });
                                }
                                Err(Error::AlreadyExists { .. }) if expected == Expected::Any => {
                                    continue;
                                }
                                Err(error) => return Err(error),
                            }
                        }
                        (_, Some(found)) => to_u64(found),
                    }
                }
            };
            // One statement: the header's version guard and the appended
            // rows commit together, or neither does.
            let updated: Option<(i64, i64)> = sqlx::query_as(
                "WITH upd AS (
                    UPDATE sessions SET state = $2, version = version + 1, created_at = $3,
                        updated_at = $4, expires_at = $5, header = $6,
                        message_count = message_count + $7, message_bytes = message_bytes + $8
                    WHERE id = $1 AND version = $9
                    RETURNING version, message_count),
                 ins AS (
                    INSERT INTO messages (session_id, seq, meta, content)
                    SELECT $1, upd.message_count - $7 + batch.ord - 1, batch.meta, batch.content
                    FROM upd, UNNEST($10::BYTEA[], $11::BYTEA[]) WITH ORDINALITY AS batch (meta, content, ord))
                 SELECT version, message_count FROM upd",
            )
            .bind(&key)
            .bind(header.state.as_str())
            .bind(header.created_at.as_micros())
            .bind(header.updated_at.as_micros())
            .bind(header.expires_at.as_micros())
            .bind(&encoded)
            .bind(bodies.len() as i64)
            .bind(to_i64(added_bytes))
            .bind(to_i64(expected_version))
            .bind(metas(&bodies))
            .bind(contents(&bodies))
            .fetch_optional(&mut *conn)
            .await
            .map_err(pg_error)?;
            if let Some((version, count)) = updated {
                let message_count = to_u64(count);
                return Ok(AppendOutcome {
                    version: to_u64(version),
                    first_sequence: message_count - bodies.len() as u64,
                    message_count,
                });
            }
            if let Expected::Version(expected) = expected {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM sessions WHERE id = $1")
                        .bind(&key)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(pg_error)?;
                return Err(match found {
                    None => Error::NotFound { id: session.id },
                    Some(found) => Error::Conflict {
                        id: session.id,
                        expected,
                        found: to_u64(found),
                    },
                });
            }
            // A blind save raced another writer: look again.
        }
        Err(Error::Unavailable {
            backend: "postgres",
            source: format!("session {} kept changing during a blind save", session.id).into(),
        })
    }

    async fn get_session_header(&self, id: SessionId) -> Result<Option<Session>> {
        let row: Option<(Vec<u8>, i64, i64)> =
            sqlx::query_as("SELECT header, version, updated_at FROM sessions WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
        row.map(|(header, version, updated_at)| {
            codec::decode_session(
                id,
                &header,
                to_u64(version),
                Timestamp::from_micros(updated_at),
                std::iter::empty(),
            )
        })
        .transpose()
    }

    async fn get_session_summary(&self, id: SessionId) -> Result<Option<SessionSummary>> {
        sqlx::query(
            "SELECT id, state, version, created_at, updated_at, expires_at, message_count
             FROM sessions WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?
        .as_ref()
        .map(row_to_summary)
        .transpose()
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>> {
        let rows = sqlx::query(
            "SELECT id, state, version, created_at, updated_at, expires_at, message_count
             FROM sessions WHERE ($1::TEXT IS NULL OR state = $1) AND ($2::BIGINT IS NULL OR created_at > $2)
               AND ($5::BIGINT IS NULL OR expires_at <= $5)
               AND ($6::BIGINT IS NULL OR created_at > $6 OR (created_at = $6 AND id > $7::TEXT))
             ORDER BY created_at, id LIMIT $3 OFFSET $4",
        )
        .bind(filter.state.map(SessionState::as_str))
        .bind(filter.created_after.map(Timestamp::as_micros))
        .bind(filter.limit.map(i64::from))
        .bind(to_i64(filter.offset))
        .bind(filter.expired_at.map(Timestamp::as_micros))
        .bind(filter.after.map(|cursor| cursor.created_at.as_micros()))
        .bind(filter.after.map(|cursor| cursor.id.to_string()))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        rows.iter().map(row_to_summary).collect()
    }

    async fn count_sessions_by_state(&self) -> Result<BTreeMap<SessionState, u64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM sessions GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(pg_error)?;
        rows.into_iter()
            .map(|(state, count)| Ok((codec::parse_state(&state)?, to_u64(count))))
            .collect()
    }

    async fn get_sessions(&self, ids: &[SessionId]) -> Result<Vec<Option<Session>>> {
        let mut sessions = Vec::with_capacity(ids.len());
        for id in ids {
            sessions.push(self.read_session(*id).await?);
        }
        Ok(sessions)
    }

    async fn save_sessions(&self, batch: &[(Session, Expected)]) -> Result<Vec<u64>> {
        let saves: Vec<EncodedSave<'_>> = batch
            .iter()
            .map(|(session, expected)| encode_save(session, *expected))
            .collect::<Result<_>>()?;
        save_all(&self.pool, &saves).await
    }

    async fn delete_sessions(&self, ids: &[SessionId]) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let mut deleted = 0;
        for id in ids {
            deleted += u64::from(delete_one(&mut tx, &id.to_string()).await?);
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(deleted)
    }

    async fn delete_history(&self, id: SessionId) -> Result<u64> {
        // One statement: the session row is locked by the UPDATE, so an
        // append cannot slip in between.
        let row: Option<(i64,)> = sqlx::query_as(
            "WITH upd AS (
                UPDATE sessions SET version = version + 1, message_count = 0, message_bytes = 0
                WHERE id = $1 RETURNING id),
             gone AS (
                DELETE FROM messages WHERE session_id IN (SELECT id FROM upd) RETURNING 1)
             SELECT (SELECT COUNT(*) FROM gone) FROM upd",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?;
        row.map(|(deleted,)| to_u64(deleted))
            .ok_or(Error::NotFound { id })
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        sqlx::query(
            "DELETE FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE expires_at <= $1)",
        )
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(deleted.rows_affected())
    }
}

#[async_trait]
impl crate::ImportLedger for PgStore {
    async fn record_import(
        &self,
        entry: &crate::ImportEntry,
    ) -> Result<Option<crate::ImportEntry>> {
        crate::traits::check_import(entry)?;
        let inserted = sqlx::query(
            "INSERT INTO imports (kind, original_id, target_id, source, imported_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, original_id) DO NOTHING",
        )
        .bind(&entry.kind)
        .bind(&entry.original_id)
        .bind(&entry.target_id)
        .bind(&entry.source)
        .bind(entry.imported_at.as_micros())
        .execute(&self.pool)
        .await
        .map_err(pg_error)?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
        self.imported(&entry.kind, &entry.original_id).await
    }

    async fn imported(&self, kind: &str, original_id: &str) -> Result<Option<crate::ImportEntry>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT target_id, source, imported_at FROM imports WHERE kind = $1 AND original_id = $2",
        )
        .bind(kind)
        .bind(original_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(
            row.map(|(target_id, source, imported_at)| crate::ImportEntry {
                kind: kind.to_owned(),
                original_id: original_id.to_owned(),
                target_id,
                source,
                imported_at: Timestamp::from_micros(imported_at),
            }),
        )
    }
}

#[async_trait]
impl KeyValueStore for PgStore {
    async fn set(&self, key: &StorageKey, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let now = self.clock.now();
        sqlx::query(
            "INSERT INTO kv (key, value, updated_at, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                updated_at = excluded.updated_at, expires_at = excluded.expires_at",
        )
        .bind(key.as_str())
        .bind(value)
        .bind(now.as_micros())
        .bind(ttl.map(|ttl| now.saturating_add(ttl).as_micros()))
        .execute(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar(
            "SELECT value FROM kv WHERE key = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(key.as_str())
        .bind(self.clock.now().as_micros())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)
    }

    async fn has(&self, key: &StorageKey) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM kv WHERE key = $1 AND (expires_at IS NULL OR expires_at > $2))",
        )
        .bind(key.as_str())
        .bind(self.clock.now().as_micros())
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        let expires_at: Option<Option<i64>> =
            sqlx::query_scalar("DELETE FROM kv WHERE key = $1 RETURNING expires_at")
                .bind(key.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
        let now = self.clock.now().as_micros();
        Ok(matches!(expires_at, Some(expiry) if expiry.is_none_or(|expiry| expiry > now)))
    }

    async fn clear_older_than(&self, cutoff: Timestamp) -> Result<u64> {
        sqlx::query("DELETE FROM kv WHERE updated_at < $1")
            .bind(cutoff.as_micros())
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(pg_error)
    }

    async fn purge_expired(&self) -> Result<u64> {
        sqlx::query("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= $1")
            .bind(self.clock.now().as_micros())
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(pg_error)
    }
}

#[async_trait]
impl StoreAdmin for PgStore {
    fn backend(&self) -> BackendKind {
        BackendKind::Postgres
    }

    async fn health_check(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(pg_error)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM sessions),
                    (SELECT COALESCE(SUM(message_count), 0)::BIGINT FROM sessions),
                    (SELECT COUNT(*) FROM kv),
                    ((SELECT COALESCE(SUM(length(header) + message_bytes), 0) FROM sessions)
                      + (SELECT COALESCE(SUM(length(key) + length(value)), 0) FROM kv))::BIGINT,
                    (pg_total_relation_size('sessions') + pg_total_relation_size('messages')
                      + pg_total_relation_size('kv'))::BIGINT",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)?;
        let values: [i64; 5] = (|| {
            Ok::<_, sqlx::Error>([
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            ])
        })()
        .map_err(pg_error)?;
        Ok(StoreStats {
            backend: BackendKind::Postgres,
            sessions: to_u64(values[0]),
            messages: to_u64(values[1]),
            kv_entries: to_u64(values[2]),
            bytes: to_u64(values[3]),
            on_disk_bytes: Some(to_u64(values[4])),
        })
    }

    async fn close(&self) -> Result<()> {
        self.listener.stop();
        self.pool.close().await;
        Ok(())
    }
}
