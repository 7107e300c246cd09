//! The storage traits on SQLite.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use smalltalk_types::{
    Message, Session, SessionId, SessionState, SessionSummary, StorageKey, Timestamp,
};

use super::{SqliteStore, sqlite_error};
use crate::codec::{self, EncodedMessage, to_i64, to_u64};
use crate::{
    AppendGuard, AppendOutcome, BackendKind, Error, Expected, KeyValueStore, Result, SessionFilter,
    SessionStore, StoreAdmin, StoreStats,
};

impl SqliteStore {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(super) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.check_open()?;
        self.writer.write(work).await
    }

    /// A short read, on the caller's thread (`async` only for a uniform
    /// call shape; it never suspends).
    pub(super) async fn read_inline<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        self.check_open()?;
        match self.readers.try_inline(&work) {
            Some(done) => done,
            // Every reader is busy, or another process holds a lock the
            // read would wait for: wait on the blocking pool, not here.
            None => self.readers.blocking(work).await,
        }
    }

    /// A read that may take long, on the blocking pool.
    pub(super) async fn read_blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.check_open()?;
        self.readers.blocking(work).await
    }
}

/// Encoded form of a session, computed before entering the writer thread
/// so the single writer only runs SQL.
struct EncodedSave {
    id: SessionId,
    expected: Expected,
    state: SessionState,
    created_at: i64,
    updated_at: i64,
    expires_at: i64,
    header: Vec<u8>,
    messages: Vec<EncodedMessage>,
    message_ids: Vec<smalltalk_types::MessageId>,
}

fn encode_save(session: &Session, expected: Expected) -> Result<EncodedSave> {
    Ok(EncodedSave {
        id: session.id,
        expected,
        state: session.state,
        created_at: session.created_at.as_micros(),
        updated_at: session.updated_at.as_micros(),
        expires_at: session.expires_at.as_micros(),
        header: codec::encode_header(session)?,
        messages: session
            .messages
            .iter()
            .map(codec::encode_message)
            .collect::<Result<_>>()?,
        message_ids: session.messages.iter().map(|message| message.id).collect(),
    })
}

/// Compare-and-swap save inside the writer's transaction.
fn save_one(conn: &Connection, save: &EncodedSave) -> Result<u64> {
    let id = save.id.to_string();
    let current: Option<StoredHeader> = conn
        .prepare_cached(
            "SELECT version, message_count, message_bytes, state, created_at, expires_at
             FROM sessions WHERE id = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row([&id], |row| {
                    Ok(StoredHeader {
                        version: row.get(0)?,
                        message_count: row.get(1)?,
                        message_bytes: row.get(2)?,
                        state: row.get(3)?,
                        created_at: row.get(4)?,
                        expires_at: row.get(5)?,
                    })
                })
                .optional()
        })
        .map_err(sqlite_error)?;
    match (save.expected, &current) {
        (Expected::Absent, Some(_)) => return Err(Error::AlreadyExists { id: save.id }),
        (Expected::Version(_), None) => return Err(Error::NotFound { id: save.id }),
        (Expected::Version(expected), Some(stored)) if to_u64(stored.version) != expected => {
            return Err(Error::Conflict {
                id: save.id,
                expected,
                found: to_u64(stored.version),
            });
        }
        _ => {}
    }
    let (stored_count, stored_bytes) = current.as_ref().map_or((0, 0), |stored| {
        (to_u64(stored.message_count), to_u64(stored.message_bytes))
    });
    let version = current
        .as_ref()
        .map_or(1, |stored| to_u64(stored.version) + 1);
    let tail = save
        .messages
        .get(stored_count as usize..)
        .unwrap_or_default();
    // A snapshot's history must be a prefix or an extension of the stored
    // one (appends do not move the version): compare the last message both
    // have.
    let overlap = save.messages.len().min(stored_count as usize);
    if let (Expected::Version(expected), Some(last)) = (save.expected, overlap.checked_sub(1)) {
        let stored_last: Option<Vec<u8>> = conn
            .prepare_cached("SELECT meta FROM messages WHERE session_id = ?1 AND seq = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row(params![id, to_i64(last as u64)], |row| row.get(0))
                    .optional()
            })
            .map_err(sqlite_error)?;
        // Messages are compared by id: immutable once stored, and unique.
        let same = match stored_last {
            Some(meta) => codec::message_id(&meta)? == save.message_ids[last],
            None => false,
        };
        if !same {
            return Err(Error::HistoryDiverged {
                id: save.id,
                version: expected,
            });
        }
    }
    insert_messages(conn, &id, stored_count, tail)?;
    let message_count = to_i64(stored_count + tail.len() as u64);
    let message_bytes = to_i64(stored_bytes + tail.iter().map(EncodedMessage::len).sum::<u64>());
    let unchanged_indexes = current.as_ref().is_some_and(|stored| {
        stored.state == save.state.as_str()
            && stored.created_at == save.created_at
            && stored.expires_at == save.expires_at
    });
    let written = if unchanged_indexes {
        // No indexed column changed: leave the indexes alone, so the commit
        // writes the row's pages only.
        conn.prepare_cached(
            "UPDATE sessions SET version = ?2, updated_at = ?3, message_count = ?4,
                                 message_bytes = ?5, header = ?6
             WHERE id = ?1",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                id,
                to_i64(version),
                save.updated_at,
                message_count,
                message_bytes,
                save.header,
            ])
        })
    } else {
        // Both statements take every column, in the same order.
        let sql = if current.is_some() {
            "UPDATE sessions SET state = ?2, version = ?3, created_at = ?4, updated_at = ?5,
                                 expires_at = ?6, message_count = ?7, message_bytes = ?8,
                                 header = ?9
             WHERE id = ?1"
        } else {
            "INSERT INTO sessions (id, state, version, created_at, updated_at, expires_at,
                                   message_count, message_bytes, header)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        };
        conn.prepare_cached(sql).and_then(|mut statement| {
            statement.execute(params![
                id,
                save.state.as_str(),
                to_i64(version),
                save.created_at,
                save.updated_at,
                save.expires_at,
                message_count,
                message_bytes,
                save.header,
            ])
        })
    };
    written.map_err(sqlite_error)?;
    Ok(version)
}

/// The columns of a summary, in `SELECT id, state, version, created_at,
/// updated_at, expires_at, message_count` order.
type SummaryRow = (String, String, i64, i64, i64, i64, i64);

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

/// The stored columns a save compares against.
struct StoredHeader {
    version: i64,
    message_count: i64,
    message_bytes: i64,
    state: String,
    created_at: i64,
    expires_at: i64,
}

fn insert_messages(
    conn: &Connection,
    id: &str,
    first: u64,
    bodies: &[EncodedMessage],
) -> Result<()> {
    if bodies.is_empty() {
        return Ok(());
    }
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO messages (session_id, seq, meta, content) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(sqlite_error)?;
    for (offset, body) in bodies.iter().enumerate() {
        statement
            .execute(params![
                id,
                to_i64(first + offset as u64),
                body.meta,
                body.content
            ])
            .map_err(sqlite_error)?;
    }
    Ok(())
}

/// Histories larger than this are read on the blocking pool, not inline.
const INLINE_READ_LIMIT: i64 = 64 * 1024;

/// Listings with at most this many rows run inline.
const INLINE_LIST_LIMIT: u32 = 1000;

/// The outcome of [`read_session`].
enum SessionRead {
    Found(Session),
    Missing,
    /// The history is over the limit given; nothing was decoded.
    TooLarge,
}

/// Reads one session, unless its history is over `limit` bytes.
fn read_session(conn: &Connection, id: SessionId, limit: i64) -> Result<SessionRead> {
    let key = id.to_string();
    let header: Option<(Vec<u8>, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT header, version, updated_at, message_bytes FROM sessions WHERE id = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row([&key], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()
        })
        .map_err(sqlite_error)?;
    let Some((header, version, updated_at, message_bytes)) = header else {
        return Ok(SessionRead::Missing);
    };
    if message_bytes > limit {
        return Ok(SessionRead::TooLarge);
    }
    let mut statement = conn
        .prepare_cached("SELECT meta, content FROM messages WHERE session_id = ?1 ORDER BY seq")
        .map_err(sqlite_error)?;
    let bodies = statement
        .query_map([&key], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sqlite_error)?;
    codec::decode_session(
        id,
        &header,
        to_u64(version),
        Timestamp::from_micros(updated_at),
        bodies.into_iter(),
    )
    .map(SessionRead::Found)
}

/// Reads one session whatever its size.
fn read_whole_session(conn: &Connection, id: SessionId) -> Result<Option<Session>> {
    match read_session(conn, id, i64::MAX)? {
        SessionRead::Found(session) => Ok(Some(session)),
        SessionRead::Missing | SessionRead::TooLarge => Ok(None),
    }
}

/// Runs `work` in one read transaction so every statement sees one snapshot.
fn in_read_transaction<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    conn.execute_batch("BEGIN").map_err(sqlite_error)?;
    let result = work(conn);
    let _ = conn.execute_batch("COMMIT");
    result
}

fn delete_one(conn: &Connection, id: &str) -> Result<bool> {
    conn.prepare_cached("DELETE FROM messages WHERE session_id = ?1")
        .and_then(|mut statement| statement.execute([id]))
        .map_err(sqlite_error)?;
    let deleted = conn
        .prepare_cached("DELETE FROM sessions WHERE id = ?1")
        .and_then(|mut statement| statement.execute([id]))
        .map_err(sqlite_error)?;
    Ok(deleted > 0)
}

/// Appends encoded messages after the stored history, if `guard` holds,
/// inside the writer's transaction.
fn append_one(
    conn: &Connection,
    id: SessionId,
    bodies: &[EncodedMessage],
    added_bytes: u64,
    newest: Option<Timestamp>,
    guard: AppendGuard,
) -> Result<AppendOutcome> {
    let key = id.to_string();
    let current: Option<(i64, i64, i64, String, i64)> = conn
        .prepare_cached(
            "SELECT version, message_count, updated_at, state, expires_at
                 FROM sessions WHERE id = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row([&key], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .optional()
        })
        .map_err(sqlite_error)?;
    let (version, count, updated_at, state, expires_at) = current.ok_or(Error::NotFound { id })?;
    let version = to_u64(version);
    guard.check(
        id,
        version,
        codec::parse_state(&state)?,
        Timestamp::from_micros(expires_at),
    )?;
    let first_sequence = to_u64(count);
    insert_messages(conn, &key, first_sequence, bodies)?;
    let updated_at = newest.map_or(updated_at, |newest| updated_at.max(newest.as_micros()));
    // The header's version stays: appends never make a header
    // change conflict.
    let outcome = AppendOutcome {
        version,
        first_sequence,
        message_count: first_sequence + bodies.len() as u64,
    };
    conn.prepare_cached(
        "UPDATE sessions SET message_count = ?2, updated_at = ?3,
                                 message_bytes = message_bytes + ?4
             WHERE id = ?1",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            key,
            to_i64(outcome.message_count),
            updated_at,
            to_i64(added_bytes)
        ])
    })
    .map_err(sqlite_error)?;
    Ok(outcome)
}

#[async_trait]
impl SessionStore for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = "sqlite", session_id = %session.id), err)]
    async fn save_session(&self, session: &Session, expected: Expected) -> Result<u64> {
        let save = encode_save(session, expected)?;
        self.write(move |conn| save_one(conn, &save)).await
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        let small = self
            .read_inline(move |conn| {
                in_read_transaction(conn, |conn| read_session(conn, id, INLINE_READ_LIMIT))
            })
            .await?;
        match small {
            SessionRead::Found(session) => Ok(Some(session)),
            SessionRead::Missing => Ok(None),
            SessionRead::TooLarge => {
                self.read_blocking(move |conn| {
                    in_read_transaction(conn, |conn| read_whole_session(conn, id))
                })
                .await
            }
        }
    }

    async fn has_session(&self, id: SessionId) -> Result<bool> {
        self.read_inline(move |conn| {
            conn.prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")
                .and_then(|mut statement| statement.exists([id.to_string()]))
                .map_err(sqlite_error)
        })
        .await
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        self.write(move |conn| delete_one(conn, &id.to_string()))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "sqlite", session_id = %id, count = messages.len()), err)]
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
        self.write(move |conn| append_one(conn, id, &bodies, added_bytes, newest, guard))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "sqlite", session_id = %session.id, count = messages.len()), err)]
    async fn save_and_append(
        &self,
        session: &Session,
        expected: Expected,
        messages: &[Message],
    ) -> Result<AppendOutcome> {
        let header = Session {
            messages: Vec::new(),
            ..session.clone()
        };
        let save = encode_save(&header, expected)?;
        let codec::EncodedAppend {
            messages: bodies,
            bytes: added_bytes,
            newest,
        } = codec::encode_append(messages)?;
        let id = session.id;
        self.write(move |conn| {
            // One job, so one savepoint: a failing append undoes the save.
            let version = save_one(conn, &save)?;
            let appended = append_one(conn, id, &bodies, added_bytes, newest, AppendGuard::NONE)?;
            Ok(AppendOutcome {
                version,
                ..appended
            })
        })
        .await
    }

    async fn get_session_header(&self, id: SessionId) -> Result<Option<Session>> {
        self.read_inline(move |conn| {
            let row: Option<(Vec<u8>, i64, i64)> = conn
                .prepare_cached("SELECT header, version, updated_at FROM sessions WHERE id = ?1")
                .and_then(|mut statement| {
                    statement
                        .query_row([id.to_string()], |row| {
                            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                        })
                        .optional()
                })
                .map_err(sqlite_error)?;
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
        })
        .await
    }

    async fn get_session_summary(&self, id: SessionId) -> Result<Option<SessionSummary>> {
        self.read_inline(move |conn| {
            let row: Option<SummaryRow> = conn
                .prepare_cached(
                    "SELECT id, state, version, created_at, updated_at, expires_at, message_count
                     FROM sessions WHERE id = ?1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row([id.to_string()], summary_row)
                        .optional()
                })
                .map_err(sqlite_error)?;
            row.map(|(id, state, version, created, updated, expires, count)| {
                codec::summary(&id, &state, version, created, updated, expires, count)
            })
            .transpose()
        })
        .await
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>> {
        let filter = filter.clone();
        let limit = filter.limit;
        let work = move |conn: &Connection| {
            // Values are bound, never spliced into the text.
            let mut statement = conn
                .prepare_cached(
                    "SELECT id, state, version, created_at, updated_at, expires_at, message_count
                 FROM sessions WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR created_at > ?2)
                   AND (?5 IS NULL OR expires_at <= ?5)
                   AND (?6 IS NULL OR created_at > ?6 OR (created_at = ?6 AND id > ?7))
                 ORDER BY created_at, id LIMIT ?3 OFFSET ?4",
                )
                .map_err(sqlite_error)?;
            let rows = statement
                .query_map(
                    params![
                        filter.state.map(SessionState::as_str),
                        filter.created_after.map(Timestamp::as_micros),
                        filter.limit.map_or(-1, i64::from),
                        to_i64(filter.offset),
                        filter.expired_at.map(Timestamp::as_micros),
                        filter.after.map(|cursor| cursor.created_at.as_micros()),
                        filter.after.map(|cursor| cursor.id.to_string()),
                    ],
                    summary_row,
                )
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sqlite_error)?;
            rows.into_iter()
                .map(|(id, state, version, created, updated, expires, count)| {
                    codec::summary(&id, &state, version, created, updated, expires, count)
                })
                .collect()
        };
        // A page of summaries is quick; an unbounded listing may not be.
        if limit.is_some_and(|limit| limit <= INLINE_LIST_LIMIT) {
            self.read_inline(work).await
        } else {
            self.read_blocking(work).await
        }
    }

    async fn count_sessions_by_state(&self) -> Result<BTreeMap<SessionState, u64>> {
        self.read_blocking(|conn| {
            let mut statement = conn
                .prepare_cached("SELECT state, COUNT(*) FROM sessions GROUP BY state")
                .map_err(sqlite_error)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sqlite_error)?;
            rows.into_iter()
                .map(|(state, count)| Ok((codec::parse_state(&state)?, to_u64(count))))
                .collect()
        })
        .await
    }

    async fn get_sessions(&self, ids: &[SessionId]) -> Result<Vec<Option<Session>>> {
        let ids = ids.to_vec();
        self.read_blocking(move |conn| {
            in_read_transaction(conn, |conn| {
                ids.iter().map(|id| read_whole_session(conn, *id)).collect()
            })
        })
        .await
    }

    async fn save_sessions(&self, batch: &[(Session, Expected)]) -> Result<Vec<u64>> {
        let saves: Vec<EncodedSave> = batch
            .iter()
            .map(|(session, expected)| encode_save(session, *expected))
            .collect::<Result<_>>()?;
        // One job: a failure rolls the whole batch back to its savepoint.
        self.write(move |conn| saves.iter().map(|save| save_one(conn, save)).collect())
            .await
    }

    async fn delete_sessions(&self, ids: &[SessionId]) -> Result<u64> {
        let ids = ids.to_vec();
        self.write(move |conn| {
            let mut deleted = 0;
            for id in ids {
                deleted += u64::from(delete_one(conn, &id.to_string())?);
            }
            Ok(deleted)
        })
        .await
    }

    async fn delete_history(&self, id: SessionId) -> Result<u64> {
        self.write(move |conn| {
            let key = id.to_string();
            let deleted = conn
                .prepare_cached("DELETE FROM messages WHERE session_id = ?1")
                .and_then(|mut statement| statement.execute([&key]))
                .map_err(sqlite_error)?;
            let updated = conn
                .prepare_cached(
                    "UPDATE sessions SET version = version + 1, message_count = 0, message_bytes = 0
                     WHERE id = ?1",
                )
                .and_then(|mut statement| statement.execute([&key]))
                .map_err(sqlite_error)?;
            if updated == 0 {
                return Err(Error::NotFound { id });
            }
            Ok(deleted as u64)
        })
        .await
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> Result<u64> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE expires_at <= ?1)",
                [now.as_micros()],
            )
            .map_err(sqlite_error)?;
            let deleted = conn
                .execute("DELETE FROM sessions WHERE expires_at <= ?1", [now.as_micros()])
                .map_err(sqlite_error)?;
            Ok(deleted as u64)
        })
        .await
    }
}

#[async_trait]
impl crate::ImportLedger for SqliteStore {
    async fn record_import(
        &self,
        entry: &crate::ImportEntry,
    ) -> Result<Option<crate::ImportEntry>> {
        crate::traits::check_import(entry)?;
        let entry = entry.clone();
        self.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO imports (kind, original_id, target_id, source, imported_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (kind, original_id) DO NOTHING",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        entry.kind,
                        entry.original_id,
                        entry.target_id,
                        entry.source,
                        entry.imported_at.as_micros()
                    ])
                })
                .map_err(sqlite_error)?;
            if inserted == 1 {
                return Ok(None);
            }
            import_row(conn, &entry.kind, &entry.original_id)
        })
        .await
    }

    async fn imported(&self, kind: &str, original_id: &str) -> Result<Option<crate::ImportEntry>> {
        let (kind, original_id) = (kind.to_owned(), original_id.to_owned());
        self.read_inline(move |conn| import_row(conn, &kind, &original_id))
            .await
    }
}

/// The import ledger's entry for `kind` and `original_id`.
fn import_row(
    conn: &rusqlite::Connection,
    kind: &str,
    original_id: &str,
) -> Result<Option<crate::ImportEntry>> {
    conn.prepare_cached(
        "SELECT target_id, source, imported_at FROM imports WHERE kind = ?1 AND original_id = ?2",
    )
    .and_then(|mut statement| {
        statement
            .query_row(params![kind, original_id], |row| {
                Ok(crate::ImportEntry {
                    kind: kind.to_owned(),
                    original_id: original_id.to_owned(),
                    target_id: row.get(0)?,
                    source: row.get(1)?,
                    imported_at: Timestamp::from_micros(row.get(2)?),
                })
            })
            .optional()
    })
    .map_err(sqlite_error)
}

#[async_trait]
impl KeyValueStore for SqliteStore {
    async fn set(&self, key: &StorageKey, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let now = self.clock.now();
        let expires_at = ttl.map(|ttl| now.saturating_add(ttl).as_micros());
        let (key, value) = (key.clone(), value.to_vec());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO kv (key, value, updated_at, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                    updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            )
            .and_then(|mut statement| {
                statement.execute(params![key.as_str(), value, now.as_micros(), expires_at])
            })
            .map_err(sqlite_error)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        let now = self.clock.now().as_micros();
        let key = key.clone();
        self.read_inline(move |conn| {
            conn.prepare_cached(
                "SELECT value FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![key.as_str(), now], |row| row.get(0))
                    .optional()
            })
            .map_err(sqlite_error)
        })
        .await
    }

    async fn has(&self, key: &StorageKey) -> Result<bool> {
        let now = self.clock.now().as_micros();
        let key = key.clone();
        self.read_inline(move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
            )
            .and_then(|mut statement| statement.exists(params![key.as_str(), now]))
            .map_err(sqlite_error)
        })
        .await
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        let now = self.clock.now().as_micros();
        let key = key.clone();
        self.write(move |conn| {
            let live = conn
                .prepare_cached(
                    "SELECT 1 FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                )
                .and_then(|mut statement| statement.exists(params![key.as_str(), now]))
                .map_err(sqlite_error)?;
            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")
                .and_then(|mut statement| statement.execute([key.as_str()]))
                .map_err(sqlite_error)?;
            Ok(live)
        })
        .await
    }

    async fn clear_older_than(&self, cutoff: Timestamp) -> Result<u64> {
        self.write(move |conn| {
            conn.execute("DELETE FROM kv WHERE updated_at < ?1", [cutoff.as_micros()])
                .map(|count| count as u64)
                .map_err(sqlite_error)
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64> {
        let now = self.clock.now().as_micros();
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                [now],
            )
            .map(|count| count as u64)
            .map_err(sqlite_error)
        })
        .await
    }
}

#[async_trait]
impl StoreAdmin for SqliteStore {
    fn backend(&self) -> BackendKind {
        BackendKind::Sqlite
    }

    async fn health_check(&self) -> Result<()> {
        self.read_inline(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(sqlite_error)
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats> {
        let (sessions, messages, kv_entries, bytes) = self
            .read_blocking(|conn| {
                in_read_transaction(conn, |conn| {
                    conn.query_row(
                        "SELECT (SELECT COUNT(*) FROM sessions),
                                (SELECT COALESCE(SUM(message_count), 0) FROM sessions),
                                (SELECT COUNT(*) FROM kv),
                                (SELECT COALESCE(SUM(length(header) + message_bytes), 0) FROM sessions)
                                  + (SELECT COALESCE(SUM(length(key) + length(value)), 0) FROM kv)",
                        [],
                        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?, row.get::<_, i64>(3)?)),
                    )
                    .map_err(sqlite_error)
                })
            })
            .await?;
        let file_len = |suffix: &str| {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
        };
        Ok(StoreStats {
            backend: BackendKind::Sqlite,
            sessions: to_u64(sessions),
            messages: to_u64(messages),
            kv_entries: to_u64(kv_entries),
            bytes: to_u64(bytes),
            on_disk_bytes: Some(file_len("") + file_len("-wal")),
        })
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Readers first: an idle one would not block the checkpoint at
        // close, but one kept open is one more connection on the file.
        self.readers.clear();
        self.writer.shutdown().await?;
        Ok(())
    }
}
