//! The SQLite backend: the embedded, zero-configuration default.
//!
//! - WAL journal, `synchronous=NORMAL` by default (a committed write
//!   survives a process crash) or `FULL` (it also survives power loss).
//! - Writes are group-committed: every write queued while a commit runs goes
//!   into the next transaction, and each caller is answered only after its
//!   transaction commits. The caller that finds the write connection free
//!   does the commit on its own thread, so an uncontended write involves no
//!   thread handoff. Reads run on a small pool of read-only connections, also
//!   on the caller's thread.
//! - Several processes can write one file: transactions take the write lock
//!   up front and wait up to the busy timeout (default 5 s) for it.
//! - The database file is created with mode 0600; SQLite gives its WAL and
//!   shared-memory files the same mode.
//! - Migrations are embedded and run on open.

mod events;
mod migrations;
mod pool;
mod schema;
mod store;
mod versioned;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use smalltalk_types::{Clock, SystemClock};

use crate::{Error, Result};
use pool::{Readers, Writer};

/// When SQLite syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Survives a process crash; the last commits may be lost on power loss.
    #[default]
    Normal,
    /// Also survives power loss, at some cost per commit.
    Full,
}

/// Settings for [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability (URL option `synchronous=normal|full`).
    pub synchronous: Synchronous,
    /// How long a write waits for another process's lock (URL option
    /// `busy_timeout_ms`).
    pub busy_timeout: Duration,
    /// Read connections kept open for reuse (at most `max_readers`).
    pub max_idle_readers: usize,
    /// Read connections open at once, at least 1. A read past it waits on
    /// the blocking pool for one to be free; a short read that would wait
    /// moves there instead of waiting on the caller's thread.
    pub max_readers: usize,
    /// The clock used for key-value TTLs.
    pub clock: Arc<dyn Clock>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            max_idle_readers: 4,
            max_readers: 16,
            clock: Arc::new(SystemClock),
        }
    }
}

/// A store in one SQLite file. Opened by `sqlite://PATH`.
pub struct SqliteStore {
    path: PathBuf,
    busy_timeout: Duration,
    writer: Arc<Writer>,
    readers: Arc<Readers>,
    clock: Arc<dyn Clock>,
    closed: AtomicBool,
    log_watch: crate::events::LogWatch,
    revision_watch: crate::events::LogWatch,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database at `path`.
    ///
    /// Errors: [`smalltalk_types::Error::InvalidConfig`] for
    /// `max_readers` of 0; otherwise I/O, schema and backend errors.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        if options.max_readers == 0 {
            return Err(smalltalk_types::Error::InvalidConfig {
                field: "max_readers",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        let path = path.as_ref().to_path_buf();
        let setup_path = path.clone();
        let setup_options = options.clone();
        let conn = tokio::task::spawn_blocking(move || open_writer(&setup_path, &setup_options))
            .await
            .map_err(|join| Error::Backend {
                backend: "sqlite",
                source: Box::new(join),
            })??;
        let writer = Writer::new(conn, path.clone(), options.busy_timeout)?;
        let readers = Readers::new(
            path.clone(),
            options.busy_timeout,
            options.max_idle_readers,
            options.max_readers,
        );
        tracing::debug!(backend = "sqlite", path = %path.display(), "opened store");
        Ok(Self {
            path,
            busy_timeout: options.busy_timeout,
            writer,
            readers,
            clock: options.clock,
            closed: AtomicBool::new(false),
            log_watch: Default::default(),
            revision_watch: Default::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read connections open now, idle or in use: never more than
    /// [`SqliteOptions::max_readers`].
    pub fn reader_connections(&self) -> usize {
        self.readers.open_connections()
    }

    /// The settings in force on the write connection, read back from
    /// SQLite (for diagnostics and to check the documented pragmas hold).
    pub async fn settings(&self) -> Result<SqliteSettings> {
        self.write(|conn| {
            let text = |pragma: &str| -> Result<String> {
                conn.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get(0))
                    .map_err(sqlite_error)
            };
            let number = |pragma: &str| -> Result<i64> {
                conn.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get(0))
                    .map_err(sqlite_error)
            };
            Ok(SqliteSettings {
                journal_mode: text("journal_mode")?,
                synchronous: match number("synchronous")? {
                    3 => Synchronous::Full,
                    _ => Synchronous::Normal,
                },
                wal_autocheckpoint: number("wal_autocheckpoint")?,
                journal_size_limit: number("journal_size_limit")?,
                secure_delete: number("secure_delete")? == 1,
            })
        })
        .await
    }

    /// Copies the whole WAL into the database file and truncates the WAL,
    /// for a consistent single-file copy or an exact size. Waits for readers
    /// and writers up to the busy timeout. Checkpoints also run on their own
    /// in the background as the WAL grows.
    pub async fn checkpoint(&self) -> Result<()> {
        let (path, busy_timeout) = (self.path.clone(), self.busy_timeout);
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sqlite_error)?;
            conn.busy_timeout(busy_timeout).map_err(sqlite_error)?;
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
                .map_err(sqlite_error)?;
            if busy != 0 {
                return Err(Error::Unavailable {
                    backend: "sqlite",
                    source: "the checkpoint could not complete: the database stayed busy".into(),
                });
            }
            Ok(())
        })
        .await
        .map_err(|join| Error::Backend {
            backend: "sqlite",
            source: Box::new(join),
        })?
    }
}

/// The write connection's settings, as [`SqliteStore::settings`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteSettings {
    /// `wal`.
    pub journal_mode: String,
    /// `NORMAL` or `FULL`.
    pub synchronous: Synchronous,
    /// 0: the write connection never checkpoints inside a commit (the
    /// background checkpointer does).
    pub wal_autocheckpoint: i64,
    /// [`JOURNAL_SIZE_LIMIT`] bytes: the WAL is cut back to this after a
    /// checkpoint.
    pub journal_size_limit: i64,
    /// Deleted content is overwritten with zeros.
    pub secure_delete: bool,
}

/// The largest the WAL file stays after a checkpoint (`journal_size_limit`).
pub const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Creates the file with mode 0600 if absent, opens it, sets the pragmas and
/// migrates.
fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection> {
    create_private_file(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_error)?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(sqlite_error)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(sqlite_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Backend {
            backend: "sqlite",
            source: format!("could not enable WAL (journal mode is {mode})").into(),
        });
    }
    let synchronous = match options.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    // Checkpoints run on the checkpointer's thread, never inside a
    // caller's commit; after one, the WAL file is cut back to 64 MB. Deleted
    // content is overwritten, not left in free pages.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous};
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};
         PRAGMA secure_delete = ON;"
    ))
    .map_err(sqlite_error)?;
    conn.set_prepared_statement_cache_capacity(64);
    schema::migrate(&conn)?;
    Ok(conn)
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_error)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(io_error(error)),
    }
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// A driver error shared by every job of a failed group commit.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(Arc<rusqlite::Error>);

impl SharedError {
    fn new(error: rusqlite::Error) -> Self {
        Self(Arc::new(error))
    }

    fn to_error(&self) -> Error {
        classify(is_busy(&self.0), Box::new(self.clone()))
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Maps a driver error: lock timeouts are transient, the rest is a failure.
pub(crate) fn sqlite_error(error: rusqlite::Error) -> Error {
    let transient = is_busy(&error);
    classify(transient, Box::new(error))
}

fn classify(transient: bool, source: crate::error::BoxError) -> Error {
    if transient {
        Error::Unavailable {
            backend: "sqlite",
            source,
        }
    } else {
        Error::Backend {
            backend: "sqlite",
            source,
        }
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}
