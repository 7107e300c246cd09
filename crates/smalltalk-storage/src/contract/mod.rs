//! The contract suite: what every backend must do, written once.
//!
//! Each trait has a module of cases ([`sessions`], [`kv`], [`events`], [`versioned`]), each case an
//! async function taking a [`Backend`]: something that opens a store on a
//! given clock, and reopens the *same* data if the backend persists.
//! [`model`] and [`versioned_model`] run random operation sequences
//! against a backend and against [`MemoryStore`], the reference model, and
//! compare every result.
//!
//! [`storage_contract!`](crate::storage_contract) stamps every case into a
//! test module, so a new backend is one line:
//!
//! ```no_run
//! smalltalk_storage::storage_contract!(sqlite, smalltalk_storage::contract::SqliteBackend::fresh);
//! # fn main() {}
//! ```
//!
//! The factory is an async function returning `Option<impl Backend>`;
//! `None` skips the cases (used when no PostgreSQL server is reachable and
//! `SMALLTALK_REQUIRE_POSTGRES` is not `1`). The invoking crate needs
//! `tokio` with the `macros` and `rt-multi-thread` features.

pub mod events;
mod faulty;
pub mod imports;
pub mod kv;
pub mod model;
mod recorder;
pub mod sessions;
pub mod versioned;
pub mod versioned_model;

pub use faulty::FaultyStore;
pub use recorder::RecordingRecorder;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{Clock, ManualClock, Timestamp};

use crate::{MemoryStore, Store};

/// Runs a model-based property for the backend made by `fresh`: `cases`
/// (`SMALLTALK_MODEL_CASES`, default 32) sequences from `strategy`, each
/// given to `case` with a runtime to block on. Failing cases are saved to
/// `regressions` (relative to the crate running the suite) and run first
/// from then on, on every backend: commit the file when one appears. Skips
/// if `fresh` returns `None`; panics with the failure.
pub(crate) fn run_model<F, Fut, B, S, C>(
    fresh: &F,
    regressions: &'static str,
    strategy: &S,
    case: C,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<B>>,
    B: Backend,
    S: proptest::strategy::Strategy,
    C: Fn(&tokio::runtime::Runtime, S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
{
    use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a runtime");
    if runtime.block_on(fresh()).is_none() {
        eprintln!("skipped: backend not available");
        return;
    }
    let cases = std::env::var("SMALLTALK_MODEL_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    });
    if let Err(failure) = runner.run(strategy, |value| case(&runtime, value)) {
        panic!("{failure}");
    }
}

/// A storage location the suite can open, and reopen for persistence cases.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Whether data survives [`open`](Self::open) being called again.
    fn persistent(&self) -> bool;

    /// Opens the location with `clock` for TTLs.
    async fn open(&self, clock: Arc<dyn Clock>) -> Arc<dyn Store>;
}

/// A clock for the suite: starts at a fixed, realistic time.
pub fn test_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::from_micros(
        1_767_225_600_000_000,
    )))
}

/// [`MemoryStore`]: not persistent.
#[derive(Debug, Default)]
pub struct MemoryBackend;

impl MemoryBackend {
    /// A memory backend (always available).
    pub async fn fresh() -> Option<Self> {
        Some(Self)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn persistent(&self) -> bool {
        false
    }

    async fn open(&self, clock: Arc<dyn Clock>) -> Arc<dyn Store> {
        Arc::new(MemoryStore::with_clock(clock))
    }
}

/// A SQLite file in a temporary directory, removed on drop.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct SqliteBackend {
    dir: tempfile::TempDir,
}

#[cfg(feature = "sqlite")]
impl SqliteBackend {
    /// A new empty location.
    pub async fn fresh() -> Option<Self> {
        Some(Self {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        })
    }

    /// The database file.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("contract.db")
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl Backend for SqliteBackend {
    fn persistent(&self) -> bool {
        true
    }

    async fn open(&self, clock: Arc<dyn Clock>) -> Arc<dyn Store> {
        let options = crate::sqlite::SqliteOptions {
            clock,
            ..Default::default()
        };
        Arc::new(
            crate::sqlite::SqliteStore::open_with(self.path(), options)
                .await
                .expect("open sqlite"),
        )
    }
}

/// The PostgreSQL server tests use: `SMALLTALK_TEST_POSTGRES_URL`, else
/// `postgres://postgres@127.0.0.1:5432/test` if that port answers. With
/// `SMALLTALK_REQUIRE_POSTGRES=1`, an unreachable server panics instead of
/// returning `None`.
pub async fn postgres_test_url() -> Option<String> {
    let required = std::env::var("SMALLTALK_REQUIRE_POSTGRES").is_ok_and(|value| value == "1");
    let url = match std::env::var("SMALLTALK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let probe = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect("127.0.0.1:5432"),
            )
            .await;
            matches!(probe, Ok(Ok(_))).then(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
        }
    };
    if url.is_none() && required {
        panic!("SMALLTALK_REQUIRE_POSTGRES=1 but no PostgreSQL server is reachable");
    }
    url
}

/// A private schema on the test server, dropped when this value is.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PgBackend {
    url: String,
    schema: String,
}

#[cfg(feature = "postgres")]
impl PgBackend {
    /// A new empty schema, or `None` if no server is reachable (see
    /// [`postgres_test_url`]).
    pub async fn fresh() -> Option<Self> {
        let url = postgres_test_url().await?;
        let schema = format!("st_test_{}", uuid::Uuid::new_v4().simple());
        Some(Self { url, schema })
    }

    /// Runs `sql` in this backend's schema on a connection of its own (for
    /// tests that tamper with rows behind the store's back).
    pub async fn execute(&self, sql: &str) -> sqlx::Result<u64> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let search_path = format!("SET search_path TO \"{}\"", self.schema);
        sqlx::Executor::execute(&mut conn, search_path.as_str()).await?;
        let done = sqlx::Executor::execute(&mut conn, sql).await?;
        conn.close().await?;
        Ok(done.rows_affected())
    }

    /// Runs a query returning one `BIGINT` (a count) in this backend's
    /// schema, on a connection of its own.
    pub async fn scalar(&self, sql: &str) -> sqlx::Result<i64> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let search_path = format!("SET search_path TO \"{}\"", self.schema);
        sqlx::Executor::execute(&mut conn, search_path.as_str()).await?;
        let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok(value)
    }

    /// This backend's schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Runs a script of several SQL statements (simple query protocol) on
    /// a connection of its own, with no search path set.
    pub async fn execute_script(&self, sql: &str) -> sqlx::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
        conn.close().await
    }

    /// The store URL, schema included.
    pub fn store_url(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}schema={}", self.url, self.schema)
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl Backend for PgBackend {
    fn persistent(&self) -> bool {
        true
    }

    async fn open(&self, clock: Arc<dyn Clock>) -> Arc<dyn Store> {
        Arc::new(
            crate::postgres::PgStore::open_with(&self.store_url(), clock)
                .await
                .expect("open postgres"),
        )
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgBackend {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime: clean up from a thread of our own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                sqlx::Executor::execute(&mut conn, drop.as_str())
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        });
        let _ = cleanup.join();
    }
}

/// Stamps the whole contract suite into a module named `$name`, for the
/// backend made by the async factory `$fresh` (returning
/// `Option<impl Backend>`). Tests are named `$name::<suite>::<case>`.
/// Attributes after the factory go on every test: PostgreSQL's suite is
/// `#[ignore = "needs PostgreSQL ..."]`, so without a server it shows as
/// skipped, and `cargo xtask ci` runs it (`--include-ignored`) when one is
/// reachable.
#[macro_export]
macro_rules! storage_contract {
    ($name:ident, $fresh:path $(, #[$attr:meta])* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn fresh() -> Option<impl $crate::contract::Backend> {
                $fresh().await
            }

            $crate::__contract_cases!([$(#[$attr])*];sessions;
                round_trip_every_field,
                large_header_round_trips,
                not_found,
                compare_and_swap,
                save_and_append_commits_once,
                append_order,
                append_guard,
                summary,
                header_without_history,
                save_never_rewrites_history,
                list_filters_and_pagination,
                count_by_state,
                batches,
                delete_expired,
                delete_history_keeps_the_session,
                stats,
                persistence_across_reopen,
                concurrent_appenders_lose_nothing,
                appends_never_conflict_header_changes,
                concurrent_blind_saves_all_land,
                too_deep_values_are_refused,
                bad_ids_are_rejected,
                closed_store_refuses_calls,
            );

            $crate::__contract_cases!([$(#[$attr])*];events;
                append_and_read_in_order,
                conditional_append,
                filters,
                cursors,
                purge_keeps_positions,
                concurrent_appenders_get_contiguous_positions,
                concurrent_appenders_are_told_their_own_positions,
                persistence_across_reopen,
                stats,
                wakeups,
                too_deep_events_are_refused,
            );

            $crate::__contract_cases!([$(#[$attr])*];kv;
                round_trip,
                ttl_expiry,
                clear_older_than,
                persistence_across_reopen,
                bad_keys_are_rejected,
            );

            $crate::__contract_cases!([$(#[$attr])*];imports;
                record_and_look_up,
                bad_entries_are_refused,
                concurrent_records_keep_one,
                persistence_across_reopen,
            );

            $crate::__contract_cases!([$(#[$attr])*];versioned;
                revisions_and_versions,
                conditional_writes,
                transactions_are_atomic,
                bad_input_changes_nothing,
                range_pages,
                revisions_are_read_whole,
                compaction,
                leases,
                purge,
                concurrent_writers_lose_nothing,
                persistence_across_reopen,
                wakeups,
                closed_store_refuses_calls,
            );

            mod model {
                $(#[$attr])*
                #[test]
                fn equivalence_with_memory() {
                    $crate::contract::model::check(super::fresh);
                }

                $(#[$attr])*
                #[test]
                fn versioned_equivalence_with_memory() {
                    $crate::contract::versioned_model::check(super::fresh);
                }
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __contract_cases {
    ($attrs:tt; $suite:ident; $($case:ident),+ $(,)?) => {
        mod $suite {
            $( $crate::__contract_case!($attrs; $suite; $case); )+
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __contract_case {
    ([$($attr:tt)*]; $suite:ident; $case:ident) => {
        $($attr)*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(backend) = super::fresh().await else {
                eprintln!("skipped: backend not available");
                return;
            };
            $crate::contract::$suite::$case(&backend).await;
        }
    };
}
