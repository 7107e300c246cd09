//! The PostgreSQL backend: several processes share one database.
//!
//! The same schema shape as SQLite (a header row per session, a row per
//! message keyed by `(session_id, seq)`, a key-value table), through sqlx's
//! non-macro query API, so no database is needed at compile time.
//!
//! - URL options `schema=NAME` (created if absent; every table lives there),
//!   `max_connections=N` (default 10) and `acquire_timeout_ms=N` (how long a
//!   call waits for a connection, default 5000) are taken out of the URL; the
//!   rest goes to the driver.
//! - The pool tests a connection before handing it out, so after the server
//!   restarts, dead connections are replaced and calls succeed again without
//!   reopening the store; while the server is down calls fail with
//!   [`Error::Unavailable`].
//! - Migrations are embedded and run on open under an advisory lock, so
//!   several processes can open the same database at once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use smalltalk_types::Clock;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::codec::to_u64;
use crate::compat;
use crate::open::query_pairs;
use crate::{Error, Result};

mod committer;
mod events;
mod store;
mod versioned;

mod migrations;
use migrations::MIGRATIONS;

/// A store in a PostgreSQL database. Opened by `postgres://...`.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: Option<String>,
    clock: Arc<dyn Clock>,
    log_watch: Arc<crate::events::LogWatch>,
    revision_watch: Arc<crate::events::LogWatch>,
    state_committer: Arc<committer::Committer<versioned::TxnBatch>>,
    event_committer: Arc<committer::Committer<events::AppendBatch>>,
    cursor_committer: Arc<committer::Committer<events::CursorBatch>>,
    listener: Arc<ListenerTask>,
}

/// The task receiving the log's notifications; stops with the last clone
/// of the store.
#[derive(Debug, Default)]
struct ListenerTask(std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>);

impl ListenerTask {
    fn stop(&self) {
        if let Some(task) = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PgStore {
    /// Connects, creates the schema if asked, and migrates.
    pub async fn open_with(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let mut max_connections = 10;
        let mut acquire_timeout = Duration::from_secs(5);
        let mut passthrough = Vec::new();
        for (name, value) in query_pairs(query)? {
            match name.as_str() {
                "schema" => schema = Some(validate_schema(&value)?.to_owned()),
                "max_connections" => {
                    max_connections =
                        value
                            .parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| Error::InvalidUrl {
                                reason: "max_connections must be a positive integer".into(),
                            })?;
                }
                "acquire_timeout_ms" => {
                    let millis: u64 = value.parse().map_err(|_| Error::InvalidUrl {
                        reason: "acquire_timeout_ms must be a whole number of milliseconds".into(),
                    })?;
                    acquire_timeout = Duration::from_millis(millis);
                }
                // Decoded above: encoded again for the driver.
                _ => {
                    let encode = |part: &str| {
                        percent_encoding::utf8_percent_encode(
                            part,
                            percent_encoding::NON_ALPHANUMERIC,
                        )
                        .to_string()
                    };
                    passthrough.push(format!("{}={}", encode(&name), encode(&value)));
                }
            }
        }
        let driver_url = if passthrough.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passthrough.join("&"))
        };
        let mut connect =
            PgConnectOptions::from_str(&driver_url).map_err(|error| Error::InvalidUrl {
                reason: error.to_string(),
            })?;
        if let Some(schema) = &schema {
            create_schema(connect.clone(), schema).await?;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(true)
            .connect_with(connect)
            .await
            .map_err(pg_error)?;
        let store = Self {
            state_committer: Arc::new(committer::Committer::start(
                pool.clone(),
                versioned::TxnBatch,
            )),
            event_committer: Arc::new(committer::Committer::start(
                pool.clone(),
                events::AppendBatch,
            )),
            cursor_committer: Arc::new(committer::Committer::start(
                pool.clone(),
                events::CursorBatch,
            )),
            pool,
            schema,
            clock,
            log_watch: Default::default(),
            revision_watch: Default::default(),
            listener: Default::default(),
        };
        store.migrate().await?;
        store.listen().await?;
        tracing::debug!(
            backend = "postgres",
            schema = store.schema.as_deref(),
            "opened store"
        );
        Ok(store)
    }

    /// Starts the task that turns the log's notifications (sent by a
    /// trigger on every append, from any process) into wake-ups.
    async fn listen(&self) -> Result<()> {
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&self.pool)
            .await
            .map_err(pg_error)?;
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(pg_error)?;
        let (events_channel, state_channel) = (
            format!("smalltalk_events_{schema}"),
            format!("smalltalk_state_{schema}"),
        );
        listener
            .listen_all([events_channel.as_str(), state_channel.as_str()])
            .await
            .map_err(pg_error)?;
        let (log_watch, revision_watch) = (
            Arc::clone(&self.log_watch),
            Arc::clone(&self.revision_watch),
        );
        let task = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        let watch = if notification.channel() == state_channel {
                            &revision_watch
                        } else {
                            &log_watch
                        };
                        if let Ok(position) = notification.payload().parse() {
                            watch.advance(position);
                        }
                    }
                    Err(error) => {
                        // The listener reconnects on the next call; waiters
                        // meanwhile fall back to their timeout.
                        tracing::warn!(backend = "postgres", %error, "event notifications interrupted; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        *self
            .listener
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        Ok(())
    }

    /// The schema the tables live in, if one was named.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('smalltalk:' || current_schema()))")
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS smalltalk_migrations (
                version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
        let current: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM smalltalk_migrations")
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(pg_error)?;
        let current = to_u64(current);
        sqlx::Executor::execute(
            &mut *tx,
            format!(
                "CREATE TABLE IF NOT EXISTS {} (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
                compat::TABLE
            )
            .as_str(),
        )
        .await
        .map_err(pg_error)?;
        let supported = MIGRATIONS.len() as u64;
        if current > supported {
            let floor: Option<String> = sqlx::query_scalar(&format!(
                "SELECT value FROM {} WHERE name = 'readable_from'",
                compat::TABLE
            ))
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?;
            compat::check_newer(
                current,
                supported,
                floor.and_then(|value| value.parse().ok()),
            )?;
            // Used as it is: nothing to migrate, nothing to record.
            return tx.commit().await.map_err(pg_error);
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            sqlx::Executor::execute(&mut *tx, migration.sql)
                .await
                .map_err(pg_error)?;
            sqlx::query("INSERT INTO smalltalk_migrations (version) VALUES ($1)")
                .bind(index as i64 + 1)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tracing::info!(
                backend = "postgres",
                schema_version = index + 1,
                "applied migration"
            );
        }
        // Recorded by the release that migrated; an open with nothing to
        // migrate only fills in what is missing.
        let on_conflict = if current < supported {
            "DO UPDATE SET value = EXCLUDED.value"
        } else {
            "DO NOTHING"
        };
        for (name, value) in [
            ("readable_from", compat::floor(MIGRATIONS).to_string()),
            ("migrated_by", env!("CARGO_PKG_VERSION").to_owned()),
        ] {
            sqlx::query(&format!(
                "INSERT INTO {} (name, value) VALUES ($1, $2) ON CONFLICT (name) {on_conflict}",
                compat::TABLE
            ))
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }
}

/// Schema names are spliced into `CREATE SCHEMA`, so only plain lowercase
/// identifiers are accepted.
fn validate_schema(name: &str) -> Result<&str> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(name)
    } else {
        Err(Error::InvalidUrl {
            reason: "schema must match [a-z_][a-z0-9_]{0,62}".into(),
        })
    }
}

async fn create_schema(connect: PgConnectOptions, schema: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&connect)
        .await
        .map_err(pg_error)?;
    // Concurrent creators race on the catalog; the advisory lock orders them.
    let mut tx = conn.begin().await.map_err(pg_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('smalltalk:create-schema'))")
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    sqlx::Executor::execute(&mut *tx, create.as_str())
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    let _ = conn.close().await;
    Ok(())
}

/// Maps a driver error: connection trouble is transient, the rest a failure.
fn pg_error(error: sqlx::Error) -> Error {
    if matches!(error, sqlx::Error::PoolClosed) {
        return Error::Closed;
    }
    let transient = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: shutdown / cannot connect now.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    };
    let source = Box::new(error);
    if transient {
        Error::Unavailable {
            backend: "postgres",
            source,
        }
    } else {
        Error::Backend {
            backend: "postgres",
            source,
        }
    }
}
