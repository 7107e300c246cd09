//! Importing the original's PostgreSQL database: its
//! `sessions(id TEXT PRIMARY KEY, data JSONB, version INT, created_at,
//! updated_at)` and `key_value(key TEXT PRIMARY KEY, value JSONB, ttl
//! TIMESTAMP, created_at)` tables, read in key order a page at a time,
//! never written. A database holding our own schema is refused.

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::kv::{KV, OriginalEntry};
use super::sessions::SESSION;
use super::{Context, ImportError, ImportReport, Progress};

/// Rows read per query (sessions of the original can be large).
const PAGE: i64 = 100;

/// Imports the sessions, then the key-value entries, of the original's
/// database at `url`.
pub(crate) async fn import_postgres(
    context: &Context<'_>,
    url: &str,
    report: &mut ImportReport,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), ImportError> {
    let read = |reason: String| ImportError::Read {
        source_name: context.source.clone(),
        reason,
    };
    let options: PgConnectOptions = url.parse().map_err(|error: sqlx::Error| {
        ImportError::Source(format!("{}: {error}", context.source))
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|error| read(error.to_string()))?;
    let result = import_tables(context, &pool, report, progress).await;
    pool.close().await;
    result.map_err(read)?
}

/// `Err` (outer) when the database cannot be read at all.
async fn import_tables(
    context: &Context<'_>,
    pool: &sqlx::PgPool,
    report: &mut ImportReport,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Result<(), ImportError>, String> {
    let text = |error: sqlx::Error| error.to_string();
    let ours: bool = sqlx::query_scalar("SELECT to_regclass('smalltalk_schema') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(text)?;
    if ours {
        return Ok(Err(ImportError::Source(format!(
            "{} is a SmallTalk-rs database, not the original's: import reads the TypeScript original's tables",
            context.source
        ))));
    }
    let column = |table: &'static str, column: &'static str| {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2)",
        )
        .bind(table)
        .bind(column)
        .fetch_one(pool)
    };
    let has_sessions = column("sessions", "data").await.map_err(text)?;
    let has_kv = column("key_value", "value").await.map_err(text)?;
    if !has_sessions && !has_kv {
        return Ok(Err(ImportError::Source(format!(
            "{} holds neither the original's sessions(id, data) nor its key_value(key, value) table",
            context.source
        ))));
    }
    if has_sessions {
        let total = count(pool, "sessions").await?;
        let mut after: Option<String> = None;
        let mut done = 0;
        loop {
            let rows = page(
                pool,
                "SELECT id::text AS id, data::text AS data FROM sessions \
                 WHERE $1::text IS NULL OR id::text > $1 ORDER BY id::text LIMIT $2",
                after.as_deref(),
            )
            .await?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let id: String = row.try_get("id").map_err(text)?;
                let what = format!("sessions row {id:?}");
                match row.try_get::<Option<String>, _>("data") {
                    Ok(Some(data)) => {
                        super::sessions::import_json(context, &what, data.as_bytes(), report).await;
                    }
                    Ok(None) => report.fail(SESSION, what, "its data is NULL"),
                    Err(error) => report.fail(SESSION, what, error.to_string()),
                }
                done += 1;
                progress(Progress {
                    kind: SESSION,
                    done,
                    total,
                });
                after = Some(id);
            }
            if !full {
                break;
            }
        }
    }
    if has_kv {
        let ttl_type: Option<String> = sqlx::query_scalar(
            "SELECT data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'key_value' AND column_name = 'ttl'",
        )
        .fetch_optional(pool)
        .await
        .map_err(text)?;
        let expires = match ttl_type.as_deref() {
            Some(kind) if kind.starts_with("timestamp") || kind == "date" => {
                "(extract(epoch FROM ttl) * 1000000)::bigint"
            }
            _ => "NULL::bigint",
        };
        let ttl_text = if ttl_type.is_some() {
            "ttl::text"
        } else {
            "NULL::text"
        };
        let total = count(pool, "key_value").await?;
        let mut after: Option<String> = None;
        let mut done = 0;
        loop {
            // `ttl` is a TIMESTAMP without a zone, which the original
            // writes in UTC (a zone-aware one is taken as it is); a number
            // is milliseconds since the epoch; text is ISO 8601.
            let rows = page(
                pool,
                &format!(
                    "SELECT key::text AS key, value::text AS value, {expires} AS expires_micros, \
                     {ttl_text} AS ttl_text \
                     FROM key_value WHERE $1::text IS NULL OR key::text > $1 ORDER BY key::text LIMIT $2"
                ),
                after.as_deref(),
            )
            .await?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let key: String = row.try_get("key").map_err(text)?;
                let what = format!("key_value row {key:?}");
                let value = row
                    .try_get::<Option<String>, _>("value")
                    .map_err(|error| error.to_string())
                    .and_then(|value| {
                        serde_json::from_str(value.as_deref().unwrap_or("null"))
                            .map_err(|error| format!("its value is not JSON: {error}"))
                    });
                let expires = row
                    .try_get::<Option<i64>, _>("expires_micros")
                    .map_err(|error| error.to_string())
                    .and_then(|micros| match micros {
                        Some(micros) => Ok(Some(smalltalk::Timestamp::from_micros(micros))),
                        None => {
                            let text: Option<String> =
                                row.try_get("ttl_text").map_err(|error| error.to_string())?;
                            match text {
                                None => Ok(None),
                                Some(text) => match text.trim().parse::<i64>() {
                                    Ok(millis) => {
                                        super::kv::expiry_of(&serde_json::Value::from(millis))
                                    }
                                    Err(_) => super::kv::expiry_of(&serde_json::Value::from(text)),
                                },
                            }
                        }
                    });
                match (value, expires) {
                    (Ok(value), Ok(expires)) => {
                        let entry = OriginalEntry {
                            key: key.clone(),
                            value,
                            expires_at: expires,
                        };
                        super::kv::import_entry(context, &what, entry, report).await;
                    }
                    (Err(reason), _) | (_, Err(reason)) => report.fail(KV, what, reason),
                }
                done += 1;
                progress(Progress {
                    kind: KV,
                    done,
                    total,
                });
                after = Some(key);
            }
            if !full {
                break;
            }
        }
    }
    Ok(Ok(()))
}

/// One page of `sql` (keyset paging: `$1` the last key read, or NULL;
/// `$2` the page size).
async fn page(
    pool: &sqlx::PgPool,
    sql: &str,
    after: Option<&str>,
) -> Result<Vec<sqlx::postgres::PgRow>, String> {
    sqlx::query(sql)
        .bind(after)
        .bind(PAGE)
        .fetch_all(pool)
        .await
        .map_err(|error| error.to_string())
}

/// The rows of `table` (one of the original's), for the progress bar.
async fn count(pool: &sqlx::PgPool, table: &str) -> Result<u64, String> {
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .map_err(|error| error.to_string())?;
    Ok(u64::try_from(total).unwrap_or(0))
}
