//! One original session into the store, from whichever source read it.

use smalltalk::storage::{Expected, ImportEntry};

use super::mapping::{IMPORTED_FROM, Mapped, map_session};
use super::original::OriginalSession;
use super::{Context, ImportReport, Outcome, ledger_id};

/// The ledger kind of imported sessions.
pub const SESSION: &str = "session";

/// Parses `json` (one session as the original wrote it, read from `what`)
/// and imports it; a record that cannot be is reported.
pub(crate) async fn import_json(
    context: &Context<'_>,
    what: &str,
    json: &[u8],
    report: &mut ImportReport,
) {
    match serde_json::from_slice::<OriginalSession>(json) {
        Ok(original) => import_session(context, what, original, report).await,
        Err(error) => report.fail(
            SESSION,
            what,
            format!("not a session of the original: {error}"),
        ),
    }
}

/// Imports `original` (read from `what`); a record that cannot be is
/// reported.
pub(crate) async fn import_session(
    context: &Context<'_>,
    what: &str,
    original: OriginalSession,
    report: &mut ImportReport,
) {
    match import_one(context, original, report).await {
        Ok(Some(outcome)) => report.count(SESSION, outcome),
        Ok(None) => {}
        Err(reason) => report.fail(SESSION, what, reason),
    }
}

/// `None` when it was left out on purpose (and reported).
async fn import_one(
    context: &Context<'_>,
    original: OriginalSession,
    report: &mut ImportReport,
) -> Result<Option<Outcome>, String> {
    let original_id = original.id.clone();
    let mapped = match map_session(original, &context.source) {
        Mapped::Skipped {
            original_id,
            reason,
        } => {
            report.skip(SESSION, original_id, reason);
            return Ok(None);
        }
        Mapped::Session(mapped) => mapped,
    };
    let mut session = mapped.session;
    session
        .validate_depth()
        .map_err(|error| error.to_string())?;
    let key = ledger_id(&original_id);
    // The ledger says what was brought in: a session deleted since (by its
    // expiry, by a user) is not brought back.
    if context
        .store
        .imported(SESSION, &key)
        .await
        .map_err(|error| error.to_string())?
        .is_some()
    {
        return Ok(Some(Outcome::Duplicate));
    }
    // The same original twice in one source (two files, two rows).
    if !context.first_time(SESSION, &key) {
        return Ok(Some(Outcome::Duplicate));
    }
    if let Some(from) = &mapped.renamed_from {
        report.rename(from.clone(), session.id.to_string());
    }
    for (from, ours) in &mapped.renamed_agents {
        report.rename(format!("{original_id} agent {from}"), ours.to_string());
    }
    for warning in &mapped.warnings {
        report.warn(format!("session {original_id}"), warning.clone());
    }
    // The session first, then the ledger: a crash between leaves the
    // session, which the next run finds under the same id (ids are the
    // original's, or derived from it) and records.
    let messages = std::mem::take(&mut session.messages);
    let outcome = if context.dry_run {
        match context
            .store
            .get_session_header(session.id)
            .await
            .map_err(|error| error.to_string())?
        {
            None => return Ok(Some(Outcome::Imported)),
            Some(stored) => already_here(&stored, &original_id)?,
        }
    } else {
        match context
            .store
            .save_and_append(&session, Expected::Absent, &messages)
            .await
        {
            Ok(_) => Outcome::Imported,
            Err(smalltalk::StorageError::AlreadyExists { .. }) => {
                let stored = context
                    .store
                    .get_session_header(session.id)
                    .await
                    .map_err(|error| error.to_string())?
                    .ok_or_else(|| {
                        format!("session {} was deleted as it was imported", session.id)
                    })?;
                already_here(&stored, &original_id)?
            }
            Err(error) => return Err(error.to_string()),
        }
    };
    if context.dry_run {
        return Ok(Some(outcome));
    }
    context
        .store
        .record_import(&ImportEntry {
            kind: SESSION.into(),
            original_id: key,
            target_id: session.id.to_string(),
            source: context.source.clone(),
            imported_at: context.now,
        })
        .await
        .map_err(|error| error.to_string())?;
    Ok(Some(outcome))
}

/// A session already stored under the id an original gets: this one
/// imported before (a duplicate), or another (a failure).
fn already_here(stored: &smalltalk::Session, original_id: &str) -> Result<Outcome, String> {
    let ours = stored
        .metadata
        .get(IMPORTED_FROM)
        .and_then(|from| from.get("id"))
        == Some(&serde_json::Value::from(original_id));
    if ours {
        Ok(Outcome::Duplicate)
    } else {
        Err(format!(
            "session {} is already here, and is not this one imported",
            stored.id
        ))
    }
}
