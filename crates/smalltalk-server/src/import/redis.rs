//! Importing the original's Redis (`redis://host:port/db`): each
//! `session:<id>` hash (fields `data`, the session's JSON; `state`;
//! `updatedAt`; `agentCount`) and each `kv:<key>` string (JSON, with the
//! key's Redis expiry as its time to live). Keys are found with `SCAN`
//! (never `KEYS`, which blocks the server) and only read.

use std::collections::HashMap;

use super::kv::{KV, OriginalEntry};
use super::original::{OriginalSession, OriginalState};
use super::sessions::SESSION;
use super::{Context, ImportError, ImportReport, Progress};

/// Keys asked for per `SCAN`.
const SCAN_COUNT: u64 = 1000;

/// Imports the sessions, then the key-value entries, of the original's
/// Redis at `url`.
pub(crate) async fn import_redis(
    context: &Context<'_>,
    url: &str,
    report: &mut ImportReport,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), ImportError> {
    let read = |reason: String| ImportError::Read {
        source_name: context.source.clone(),
        reason,
    };
    let client = redis::Client::open(url)
        .map_err(|error| ImportError::Source(format!("{}: {error}", context.source)))?;
    let mut connection = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| read("no answer within 10 s".into()))?
    .map_err(|error| read(error.to_string()))?;
    let sessions = scan(&mut connection, "session:*")
        .await
        .map_err(|error| read(error.to_string()))?;
    let total = sessions.len() as u64;
    for (done, key) in sessions.iter().enumerate() {
        let what = format!("redis key {}", String::from_utf8_lossy(key));
        let fields: redis::RedisResult<HashMap<String, Vec<u8>>> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut connection)
            .await;
        match fields {
            Ok(fields) if fields.is_empty() => {
                // Gone since the scan (expired, or deleted).
            }
            Ok(fields) => match session_of(&fields) {
                Ok(original) => {
                    super::sessions::import_session(context, &what, original, report).await;
                }
                Err(reason) => report.fail(SESSION, what, reason),
            },
            Err(error) if wrong_type(&error) => {
                report.fail(SESSION, what, "not a hash");
            }
            Err(error) => return Err(read(error.to_string())),
        }
        progress(Progress {
            kind: SESSION,
            done: done as u64 + 1,
            total,
        });
    }
    let entries = scan(&mut connection, "kv:*")
        .await
        .map_err(|error| read(error.to_string()))?;
    let total = entries.len() as u64;
    for (done, key) in entries.iter().enumerate() {
        let name = String::from_utf8_lossy(&key[3..]).into_owned();
        let what = format!("redis key {}", String::from_utf8_lossy(key));
        let (value, ttl_ms): (Option<Vec<u8>>, i64) = match redis::pipe()
            .cmd("GET")
            .arg(key)
            .cmd("PTTL")
            .arg(key)
            .query_async(&mut connection)
            .await
        {
            Ok(answer) => answer,
            Err(error) if wrong_type(&error) => {
                report.fail(KV, what, "not a string");
                continue;
            }
            Err(error) => return Err(read(error.to_string())),
        };
        let Some(value) = value else {
            continue;
        };
        if std::str::from_utf8(&key[3..]).is_err() {
            report.fail(KV, what, "its key is not UTF-8");
            continue;
        }
        match serde_json::from_slice(&value) {
            Ok(value) => {
                let expires_at = (ttl_ms >= 0).then(|| {
                    context
                        .now
                        .saturating_add(std::time::Duration::from_millis(ttl_ms as u64))
                });
                let entry = OriginalEntry {
                    key: name,
                    value,
                    expires_at,
                };
                super::kv::import_entry(context, &what, entry, report).await;
            }
            Err(error) => report.fail(KV, what, format!("its value is not JSON: {error}")),
        }
        progress(Progress {
            kind: KV,
            done: done as u64 + 1,
            total,
        });
    }
    Ok(())
}

/// Every key matching `pattern`, in order (a key `SCAN` returns twice is
/// kept once).
async fn scan(
    connection: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut keys = std::collections::BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(connection)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys.into_iter().collect());
        }
        cursor = next;
    }
}

/// The session in a `session:<id>` hash: its `data`, with the hash's
/// `state` when it holds one (the original updates it on its own, for its
/// state index).
fn session_of(fields: &HashMap<String, Vec<u8>>) -> Result<OriginalSession, String> {
    let data = fields.get("data").ok_or("it has no `data` field")?;
    let mut session: OriginalSession = serde_json::from_slice(data)
        .map_err(|error| format!("its data is not a session of the original: {error}"))?;
    if let Some(state) = fields.get("state") {
        let text = String::from_utf8_lossy(state);
        let state: OriginalState =
            serde_json::from_value(serde_json::Value::from(text.as_ref()))
                .map_err(|_| format!("its state {text:?} is not one of the original's"))?;
        session.state = state;
    }
    Ok(session)
}

/// Whether the key holds another kind of value than asked for (Redis'
/// `WRONGTYPE`, or an answer that does not convert).
fn wrong_type(error: &redis::RedisError) -> bool {
    error.code() == Some("WRONGTYPE") || error.kind() == redis::ErrorKind::TypeError
}
