//! Importing the original's data directory (its FileStorageAdapter and
//! its event logs):
//! - sessions are `<base>/sessions/<id>.json`, or `<id>.json.gz` when the
//!   JSON is over 102,400 bytes; the default base is `data/sessions`, so
//!   the default path is `data/sessions/sessions/`;
//! - key-value entries are `<base>/kv/<sanitized key>.json`;
//! - event logs are `data/events/<topic with : and / as _>.log`, one JSON
//!   object per line.
//!
//! Symbolic links are not followed; files are read off the async runtime.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::original::OriginalSession;
use super::{Context, ImportError, ImportOptions, ImportReport, Progress};

/// The files of a listing, and each entry that could not be looked at
/// (with why).
type Listing = (Vec<PathBuf>, Vec<(PathBuf, String)>);

/// The most bytes one session or entry file may hold once decompressed.
pub const MAX_SESSION_BYTES: u64 = 64 * 1024 * 1024;

/// The FileStorageAdapter's base under `dir`: its `sessions/` when that
/// holds `sessions/` (the data folder), else `dir` itself.
pub fn adapter_base(dir: &Path) -> PathBuf {
    let nested = dir.join("sessions");
    if nested.join("sessions").is_dir() || nested.join("kv").is_dir() {
        nested
    } else {
        dir.to_owned()
    }
}

/// Where the session files are under `dir`: its `sessions/sessions/` (the
/// data folder) or its `sessions/` (the adapter's base).
pub fn sessions_dir(dir: &Path) -> Option<PathBuf> {
    Some(adapter_base(dir).join("sessions")).filter(|sessions| sessions.is_dir())
}

/// Where the key-value files are under `dir`: the adapter base's `kv/`.
pub fn kv_dir(dir: &Path) -> Option<PathBuf> {
    Some(adapter_base(dir).join("kv")).filter(|kv| kv.is_dir())
}

/// Where the event logs are under `dir`: its `events/`.
pub fn events_dir(dir: &Path) -> Option<PathBuf> {
    Some(dir.join("events")).filter(|events| events.is_dir())
}

/// The regular files in `dir` whose names end in `suffix`, in name order,
/// and each entry that could not be looked at (with why).
fn files_ending(dir: &Path, suffixes: &[&str]) -> std::io::Result<Listing> {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                unreadable.push((dir.to_owned(), error.to_string()));
                continue;
            }
        };
        let path = entry.path();
        let name = entry.file_name();
        let lossy = name.to_string_lossy();
        if !suffixes.iter().any(|suffix| lossy.ends_with(suffix)) {
            continue;
        }
        if name.to_str().is_none() {
            unreadable.push((path, "its name is not UTF-8".into()));
            continue;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(_) => unreadable.push((path, "not a regular file (links are not followed)".into())),
            Err(error) => unreadable.push((path, error.to_string())),
        }
    }
    files.sort();
    Ok((files, unreadable))
}

/// The session files under `dir`, in name order: one per session, the
/// `.json.gz` where both it and the `.json` are there (the original writes
/// the gzip, then removes the plain file: a crash between leaves both, and
/// it reads the gzip).
pub fn session_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let Some(sessions) = sessions_dir(dir) else {
        return Ok(Vec::new());
    };
    let (files, _) = session_files_in(&sessions)?;
    Ok(files)
}

/// The session files in `sessions` (see [`session_files`]), and the
/// entries that could not be looked at.
fn session_files_in(sessions: &Path) -> std::io::Result<Listing> {
    let (files, unreadable) = files_ending(sessions, &[".json", ".json.gz"])?;
    let mut by_stem: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for path in files {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        // The gzip wins: it comes after its `.json` in name order.
        let stem = name
            .strip_suffix(".json.gz")
            .or_else(|| name.strip_suffix(".json"))
            .unwrap_or(name);
        by_stem.insert(stem.to_owned(), path);
    }
    Ok((by_stem.into_values().collect(), unreadable))
}

/// Reads one session file (gzip when it ends in `.gz`), at most
/// [`MAX_SESSION_BYTES`] once decompressed.
pub fn read_session_file(path: &Path) -> Result<OriginalSession, String> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|error| format!("not a session of the original: {error}"))
}

/// Reads one file (gzip when it ends in `.gz`), at most
/// [`MAX_SESSION_BYTES`] once decompressed.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
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
    Ok(bytes)
}

/// Reads `path` off the async runtime.
async fn read_off_runtime(path: &Path) -> Result<Vec<u8>, String> {
    let reading = path.to_owned();
    tokio::task::spawn_blocking(move || read_file(&reading))
        .await
        .map_err(|error| error.to_string())?
}

/// Imports everything under the original's data directory `dir`: its
/// sessions, its key-value entries, then its events.
pub(crate) async fn import_directory(
    context: &Context<'_>,
    dir: &Path,
    options: &ImportOptions,
    report: &mut ImportReport,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), ImportError> {
    let sessions = sessions_dir(dir);
    let kv = kv_dir(dir);
    let events = events_dir(dir);
    if sessions.is_none() && kv.is_none() && events.is_none() {
        return Err(ImportError::Source(format!(
            "{} holds none of the original's records: no sessions/, kv/ or events/ (give its data directory, or its FileStorageAdapter base)",
            dir.display()
        )));
    }
    let listing = |error: std::io::Error, what: &Path| ImportError::Read {
        source_name: what.display().to_string(),
        reason: error.to_string(),
    };
    if let Some(sessions) = sessions {
        let (files, unreadable) =
            session_files_in(&sessions).map_err(|error| listing(error, &sessions))?;
        for (path, reason) in unreadable {
            report.fail(super::sessions::SESSION, path.display().to_string(), reason);
        }
        let total = files.len() as u64;
        for (done, path) in files.iter().enumerate() {
            let what = path.display().to_string();
            match read_off_runtime(path).await {
                Ok(bytes) => super::sessions::import_json(context, &what, &bytes, report).await,
                Err(reason) => report.fail(super::sessions::SESSION, what, reason),
            }
            progress(Progress {
                kind: super::sessions::SESSION,
                done: done as u64 + 1,
                total,
            });
        }
    }
    if let Some(kv) = kv {
        let (files, unreadable) =
            files_ending(&kv, &[".json"]).map_err(|error| listing(error, &kv))?;
        for (path, reason) in unreadable {
            report.fail(super::kv::KV, path.display().to_string(), reason);
        }
        let total = files.len() as u64;
        for (done, path) in files.iter().enumerate() {
            let what = path.display().to_string();
            let stem = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .trim_end_matches(".json")
                .to_owned();
            let entry = read_off_runtime(path).await.and_then(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|error| format!("not JSON: {error}"))
                    .and_then(|json| super::kv::parse_entry_file(&stem, json))
            });
            match entry {
                Ok(entry) => super::kv::import_entry(context, &what, entry, report).await,
                Err(reason) => report.fail(super::kv::KV, what, reason),
            }
            progress(Progress {
                kind: super::kv::KV,
                done: done as u64 + 1,
                total,
            });
        }
    }
    if let Some(events) = events {
        let (files, unreadable) =
            files_ending(&events, &[".log"]).map_err(|error| listing(error, &events))?;
        for (path, reason) in unreadable {
            report.fail(super::events::EVENT, path.display().to_string(), reason);
        }
        let cutoff = context.now.saturating_sub(options.event_retention);
        super::events::import_logs(context, files, cutoff, report, progress).await?;
    }
    Ok(())
}
