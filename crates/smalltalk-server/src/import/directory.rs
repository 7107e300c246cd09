//! Importing the original's data directory (its FileStorageAdapter):
//! sessions are `<base>/sessions/<id>.json`, or `<id>.json.gz` when the
//! JSON is over 102,400 bytes; the default base is `data/sessions`, so the
//! default path is `data/sessions/sessions/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use smalltalk::storage::{Expected, ImportEntry};

use super::mapping::{Mapped, map_session};
use super::original::OriginalSession;

/// The most bytes one session file may hold once decompressed.
pub const MAX_SESSION_BYTES: u64 = 64 * 1024 * 1024;

/// The ledger kind of imported sessions.
pub const SESSION: &str = "session";

/// What an import did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Records brought in (or that would be).
    pub imported: u64,
    /// Records left out on purpose (`invalidated_pending_cleanup`).
    pub skipped: u64,
    /// Records an earlier run brought in already.
    pub duplicate: u64,
    /// Records that could not be read or written.
    pub failed: u64,
    /// Each failure: the file and why.
    pub failures: Vec<Failure>,
    /// Each record left out: its original id and why.
    pub skips: Vec<Failure>,
    /// Original ids that were not valid here, with the ids they got.
    pub renamed: Vec<Renamed>,
}

/// A record that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// The file (or the original id).
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

/// Where the session files are under `dir`: its `sessions/sessions/` (the
/// data folder) or its `sessions/` (the adapter's base).
pub fn sessions_dir(dir: &Path) -> Option<PathBuf> {
    [dir.join("sessions").join("sessions"), dir.join("sessions")]
        .into_iter()
        .find(|candidate| candidate.is_dir())
}

/// The session files under `dir`, in name order: one per session, the
/// `.json.gz` where both it and the `.json` are there (the original writes
/// the gzip, then removes the plain file: a crash between leaves both, and
/// it reads the gzip).
pub fn session_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let Some(sessions) = sessions_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut by_stem: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for entry in std::fs::read_dir(sessions)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        let (stem, gzipped) = if let Some(stem) = name.strip_suffix(".json.gz") {
            (stem.to_owned(), true)
        } else if let Some(stem) = name.strip_suffix(".json") {
            (stem.to_owned(), false)
        } else {
            continue;
        };
        // Only regular files, never a link out of the directory.
        if !std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_file()) {
            continue;
        }
        if gzipped || !by_stem.contains_key(&stem) {
            by_stem.insert(stem, path);
        }
    }
    Ok(by_stem.into_values().collect())
}

/// Reads one session file (gzip when it ends in `.gz`), at most
/// [`MAX_SESSION_BYTES`] once decompressed.
pub fn read_session_file(path: &Path) -> Result<OriginalSession, String> {
    let file = std::fs::File::open(path).map_err(|error| error.to_string())?;
    let gzipped = path.extension().is_some_and(|extension| extension == "gz");
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_SESSION_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("unreadable: {error}"))?;
    if bytes.len() as u64 > MAX_SESSION_BYTES {
        return Err(format!("larger than {MAX_SESSION_BYTES} bytes"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|error| format!("not a session of the original: {error}"))
}

/// Imports the sessions of the original's data directory `dir` into
/// `store`; `dry_run` writes nothing. `progress` is called after each
/// file with how many are done and how many there are. Re-running imports
/// nothing twice: each session is keyed by its original id in the store's
/// import ledger, recorded once the session is written (a session deleted
/// since is not brought back).
pub async fn import_sessions(
    store: &dyn smalltalk::Store,
    dir: &Path,
    dry_run: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<ImportReport> {
    let files = session_files(dir)?;
    let source = dir.display().to_string();
    let total = files.len() as u64;
    let mut report = ImportReport {
        dry_run,
        ..ImportReport::default()
    };
    for (done, path) in files.iter().enumerate() {
        let what = path.display().to_string();
        let outcome = import_one(store, path, &source, dry_run, &mut report).await;
        if let Err(reason) = outcome {
            report.failed += 1;
            report.failures.push(Failure { what, reason });
        }
        progress(done as u64 + 1, total);
    }
    Ok(report)
}

async fn import_one(
    store: &dyn smalltalk::Store,
    path: &Path,
    source: &str,
    dry_run: bool,
    report: &mut ImportReport,
) -> Result<(), String> {
    let reading = path.to_owned();
    let original = tokio::task::spawn_blocking(move || read_session_file(&reading))
        .await
        .map_err(|error| error.to_string())??;
    let original_id = original.id.clone();
    let mapped = match map_session(original, source) {
        Mapped::Skipped {
            original_id,
            reason,
        } => {
            report.skipped += 1;
            report.skips.push(Failure {
                what: original_id,
                reason: reason.into(),
            });
            return Ok(());
        }
        Mapped::Session(mapped) => mapped,
    };
    let mut session = mapped.session;
    // The ledger says what was brought in: a session deleted since (by its
    // expiry, by a user) is not brought back.
    if store
        .imported(SESSION, &original_id)
        .await
        .map_err(|error| error.to_string())?
        .is_some()
    {
        report.duplicate += 1;
        return Ok(());
    }
    let entry = ImportEntry {
        kind: SESSION.into(),
        original_id: original_id.clone(),
        target_id: session.id.to_string(),
        source: source.to_owned(),
        imported_at: smalltalk::Timestamp::now(),
    };
    if original_id.is_empty()
        || original_id.len() > smalltalk::storage::MAX_IMPORT_FIELD
        || original_id.contains('\0')
    {
        return Err(format!(
            "its id must be 1 to {} bytes with no NUL",
            smalltalk::storage::MAX_IMPORT_FIELD
        ));
    }
    session
        .validate_depth()
        .map_err(|error| error.to_string())?;
    if let Some(from) = &mapped.renamed_from {
        report.renamed.push(Renamed {
            original: from.clone(),
            ours: session.id.to_string(),
        });
    }
    if dry_run {
        report.imported += 1;
        return Ok(());
    }
    // The session first, then the ledger: a crash between leaves the
    // session, which the next run finds under the same id (ids are the
    // original's, or derived from it) and records.
    let messages = std::mem::take(&mut session.messages);
    match store
        .save_and_append(&session, Expected::Absent, &messages)
        .await
    {
        Ok(_) => report.imported += 1,
        Err(smalltalk::StorageError::AlreadyExists { .. }) => {
            let stored = store
                .get_session_header(session.id)
                .await
                .map_err(|error| error.to_string())?;
            let ours = stored.as_ref().is_some_and(|stored| {
                stored
                    .metadata
                    .get(super::mapping::IMPORTED_FROM)
                    .and_then(|from| from.get("id"))
                    == Some(&serde_json::Value::from(original_id.as_str()))
            });
            if !ours {
                return Err(format!(
                    "session {} is already here, and is not this one imported",
                    session.id
                ));
            }
            report.duplicate += 1;
        }
        Err(error) => return Err(error.to_string()),
    }
    store
        .record_import(&entry)
        .await
        .map_err(|error| error.to_string())?;
    Ok(())
}
