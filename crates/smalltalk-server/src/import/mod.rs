//! Coming from the TypeScript original: `smalltalk import SOURCE`.
//!
//! [`import`] brings the original's records into a [`Store`]: its
//! sessions, its key-value entries and its event logs, from one of three
//! [`Source`]s (its data directory, its PostgreSQL tables, its Redis keys).
//! [`original`] holds its records as it writes them, [`mapping`] how a
//! session becomes ours.
//!
//! - **Re-running is safe.** Sessions and key-value entries are keyed by
//!   their original ids in the store's
//!   [`ImportLedger`](smalltalk::storage::ImportLedger), recorded once the
//!   record is written (a record deleted since is not brought back); events
//!   carry their original id under
//!   [`IMPORTED_FROM`](smalltalk::types::event::IMPORTED_FROM), and the log
//!   itself says which were brought in.
//! - **Bad records** are reported with their file, row or key and why, and
//!   skipped; the rest go on. Invalid ids are never written: the record
//!   gets an id of ours, derived from the original (the same on every run),
//!   and the report lists the mapping.
//! - **Dry runs** read and check everything and write nothing.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use smalltalk_server::import::{ImportOptions, Source, import};
//!
//! let store = smalltalk::open("sqlite://smalltalk.db").await?;
//! let source = Source::parse("./data")?;
//! let report = import(store.as_ref(), &source, &ImportOptions::default(), &mut |_| {}).await?;
//! println!("{} imported, {} failed", report.imported, report.failed);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use smalltalk::Store;

pub mod directory;
pub mod events;
pub mod kv;
pub mod mapping;
pub mod original;
pub mod postgres;
pub mod redis;
pub mod sessions;

/// Where the original's records are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Its data directory (holding `sessions/sessions/` and `events/`), or
    /// its FileStorageAdapter base (holding `sessions/` and `kv/`).
    Directory(PathBuf),
    /// Its PostgreSQL database (`postgres://...`): its `sessions` and
    /// `key_value` tables.
    Postgres(String),
    /// Its Redis (`redis://host:port/db`): its `session:<id>` hashes and
    /// `kv:<key>` strings.
    Redis(String),
}

impl Source {
    /// A URL (`postgres://`, `postgresql://`, `redis://`, `rediss://`) or
    /// a directory that exists. [`ImportError::Source`] otherwise.
    pub fn parse(text: &str) -> Result<Self, ImportError> {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Source::Postgres(text.to_owned()));
        }
        if lower.starts_with("redis://") || lower.starts_with("rediss://") {
            return Ok(Source::Redis(text.to_owned()));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(ImportError::Source(format!(
                "{scheme}:// is not a source: give the original's data directory, a postgres:// or a redis:// URL"
            )));
        }
        let path = PathBuf::from(text);
        if !path.is_dir() {
            return Err(ImportError::Source(format!(
                "{text} is not a directory (the original's data directory, or its FileStorageAdapter base)"
            )));
        }
        Ok(Source::Directory(path))
    }

    /// How the report and the ledger name it (URLs without their
    /// password), cut to what the ledger holds.
    pub fn name(&self) -> String {
        let mut name = match self {
            Source::Directory(path) => path.display().to_string(),
            Source::Postgres(url) | Source::Redis(url) => crate::redact_url(url),
        };
        name.retain(|c| c != '\0');
        let limit = smalltalk::storage::MAX_IMPORT_FIELD - 3;
        if name.len() > limit {
            let mut end = limit;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
            name.push('…');
        }
        name
    }
}

/// How an import runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Read and check everything, write nothing.
    pub dry_run: bool,
    /// The event bus's retention: older events are reported and skipped
    /// (the bus would purge them at once). Default 24 hours, as the
    /// server's `EVENT_RETENTION_HOURS`.
    pub event_retention: Duration,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            event_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why an import could not run at all (a bad record is reported, not an
/// error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The source is not one: a URL of another scheme, a directory that is
    /// not there or holds none of the original's records, our own
    /// database.
    #[error("{0}")]
    Source(String),
    /// The source could not be read (unreachable, refused, unreadable).
    #[error("reading {source_name}: {reason}")]
    Read {
        /// The source.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// The target store failed where the import cannot go on without it.
    #[error("the target storage failed")]
    Store(#[from] smalltalk::StorageError),
}

/// How far an import is: `done` of `total` records of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// `session`, `kv` or `event`.
    pub kind: &'static str,
    /// Records done.
    pub done: u64,
    /// Records there are (of this kind).
    pub total: u64,
}

/// What an import did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Records brought in (or that would be).
    pub imported: u64,
    /// Records left out on purpose (`invalidated_pending_cleanup`
    /// sessions, expired entries, events older than the retention).
    pub skipped: u64,
    /// Records an earlier run brought in already.
    pub duplicate: u64,
    /// Records that could not be read or written.
    pub failed: u64,
    /// The same counts per kind (`session`, `kv`, `event`).
    pub by_kind: BTreeMap<&'static str, Counts>,
    /// Each failure: the file, row or key, and why.
    pub failures: Vec<Failure>,
    /// Each record left out: its original id and why.
    pub skips: Vec<Failure>,
    /// Original ids that were not valid here, with the ids they got.
    pub renamed: Vec<Renamed>,
    /// Parts of imported records that could not be kept as they were
    /// (the record and why): the rest of each was imported.
    pub warnings: Vec<Failure>,
}

/// Counts of one kind of record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Brought in.
    pub imported: u64,
    /// Left out on purpose.
    pub skipped: u64,
    /// Brought in before.
    pub duplicate: u64,
    /// Not readable or writable.
    pub failed: u64,
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Brought in.
    Imported,
    /// Brought in before.
    Duplicate,
}

impl ImportReport {
    fn counts(&mut self, kind: &'static str) -> &mut Counts {
        self.by_kind.entry(kind).or_default()
    }

    /// Counts `outcome` for a record of `kind`.
    pub fn count(&mut self, kind: &'static str, outcome: Outcome) {
        match outcome {
            Outcome::Imported => {
                self.imported += 1;
                self.counts(kind).imported += 1;
            }
            Outcome::Duplicate => {
                self.duplicate += 1;
                self.counts(kind).duplicate += 1;
            }
        }
    }

    /// Counts a record of `kind` left out on purpose.
    pub fn skip(&mut self, kind: &'static str, what: impl Into<String>, reason: impl Into<String>) {
        self.skipped += 1;
        self.counts(kind).skipped += 1;
        self.skips.push(Failure {
            what: what.into(),
            reason: reason.into(),
        });
    }

    /// Counts a record of `kind` that failed.
    pub fn fail(&mut self, kind: &'static str, what: impl Into<String>, reason: impl Into<String>) {
        self.failed += 1;
        self.counts(kind).failed += 1;
        self.failures.push(Failure {
            what: what.into(),
            reason: reason.into(),
        });
    }

    /// Notes a part of `what` that could not be kept as it was.
    pub fn warn(&mut self, what: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(Failure {
            what: what.into(),
            reason: reason.into(),
        });
    }

    /// Lists an original id that got another here.
    pub fn rename(&mut self, original: impl Into<String>, ours: impl Into<String>) {
        self.renamed.push(Renamed {
            original: original.into(),
            ours: ours.into(),
        });
    }
}

/// A record that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// The file, row or key (or the original id).
    pub what: String,
    /// Why.
    pub reason: String,
}

/// An original id and the one it got here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Renamed {
    /// The original's.
    pub original: String,
    /// Ours.
    pub ours: String,
}

/// What every record's import needs: the target, where from, and how.
pub(crate) struct Context<'a> {
    pub store: &'a dyn Store,
    pub source: String,
    pub dry_run: bool,
    pub now: smalltalk::Timestamp,
    /// The (kind, ledger id) pairs this run has met.
    pub seen: std::sync::Mutex<std::collections::HashSet<(&'static str, String)>>,
}

impl Context<'_> {
    /// Whether this run meets `original` of `kind` for the first time.
    pub(crate) fn first_time(&self, kind: &'static str, original: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert((kind, original.to_owned()))
    }
}

/// The ledger's id for an original id: itself, or a SHA-256 of it when it
/// is longer than the ledger holds (or holds a NUL), so every id can be
/// recorded.
pub fn ledger_id(original: &str) -> String {
    if !original.is_empty()
        && original.len() <= smalltalk::storage::MAX_IMPORT_FIELD
        && !original.contains('\0')
    {
        return original.to_owned();
    }
    format!("sha256:{}", hex_digest(original))
}

/// The SHA-256 of `text`, in lower-case hex.
pub(crate) fn hex_digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Imports everything `source` holds into `store` (see the [module
/// docs](self)); `progress` is called as records are done.
pub async fn import(
    store: &dyn Store,
    source: &Source,
    options: &ImportOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport {
        dry_run: options.dry_run,
        ..ImportReport::default()
    };
    let context = Context {
        store,
        source: source.name(),
        dry_run: options.dry_run,
        now: smalltalk::Timestamp::now(),
        seen: Default::default(),
    };
    match source {
        Source::Directory(dir) => {
            directory::import_directory(&context, dir, options, &mut report, progress).await?;
        }
        Source::Postgres(url) => {
            postgres::import_postgres(&context, url, &mut report, progress).await?;
        }
        Source::Redis(url) => {
            redis::import_redis(&context, url, &mut report, progress).await?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_can_be_spawned_on_a_multi_threaded_runtime() {
        fn send<T: Send>(_: &T) {}
        let store = smalltalk::storage::MemoryStore::new();
        let source = Source::Directory(".".into());
        let options = ImportOptions::default();
        let mut progress = |_: Progress| {};
        let future = import(&store, &source, &options, &mut progress);
        send(&future);
    }

    #[test]
    fn sources_are_told_apart_and_long_ids_still_fit_the_ledger() {
        assert!(matches!(
            Source::parse("postgres://u@h/db"),
            Ok(Source::Postgres(_))
        ));
        assert!(matches!(
            Source::parse("REDIS://h:6379/0"),
            Ok(Source::Redis(_))
        ));
        assert!(matches!(Source::parse("."), Ok(Source::Directory(_))));
        assert!(matches!(
            Source::parse("mysql://h/db"),
            Err(ImportError::Source(_))
        ));
        assert!(matches!(
            Source::parse("./not-there"),
            Err(ImportError::Source(_))
        ));
        assert_eq!(
            Source::Postgres("postgres://u:secret@h/db".into()).name(),
            "postgres://u:***@h/db"
        );
        assert_eq!(ledger_id("legacy-42"), "legacy-42");
        let long = "x".repeat(5_000);
        assert!(ledger_id(&long).starts_with("sha256:") && ledger_id(&long).len() < 100);
        assert_eq!(ledger_id(&long), ledger_id(&long));
        assert!(ledger_id("").starts_with("sha256:"));
    }
}
