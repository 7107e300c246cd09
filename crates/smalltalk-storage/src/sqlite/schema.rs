//! The SQLite schema and its embedded migrations.

use rusqlite::{Connection, OptionalExtension};

use super::sqlite_error;
use crate::Result;
use crate::compat;

pub(super) use super::migrations::MIGRATIONS;

/// Brings the schema up to date, atomically. Several processes opening the
/// same file at once are serialized by the write lock.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sqlite_error)?;
    let outcome = (|| {
        let current: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite_error)?;
        let current = usize::try_from(current).unwrap_or(0);
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
            compat::TABLE
        ))
        .map_err(sqlite_error)?;
        if current > MIGRATIONS.len() {
            let floor: Option<String> = conn
                .query_row(
                    &format!(
                        "SELECT value FROM {} WHERE name = 'readable_from'",
                        compat::TABLE
                    ),
                    [],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sqlite_error)?;
            // Used as it is: nothing to migrate, nothing to record.
            return compat::check_newer(
                current as u64,
                MIGRATIONS.len() as u64,
                floor.and_then(|value| value.parse().ok()),
            );
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
            conn.execute_batch(migration.sql).map_err(sqlite_error)?;
            tracing::info!(
                backend = "sqlite",
                schema_version = index + 1,
                "applied migration"
            );
        }
        conn.execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len()))
            .map_err(sqlite_error)?;
        // Recorded by the release that migrated; an open with nothing to
        // migrate only fills in what is missing.
        let on_conflict = if current < MIGRATIONS.len() {
            "DO UPDATE SET value = excluded.value"
        } else {
            "DO NOTHING"
        };
        let mut record = conn
            .prepare(&format!(
                "INSERT INTO {} (name, value) VALUES (?1, ?2) ON CONFLICT (name) {on_conflict}",
                compat::TABLE
            ))
            .map_err(sqlite_error)?;
        for (name, value) in [
            ("readable_from", compat::floor(MIGRATIONS).to_string()),
            ("migrated_by", env!("CARGO_PKG_VERSION").to_owned()),
        ] {
            record.execute((name, value)).map_err(sqlite_error)?;
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => conn.execute_batch("COMMIT").map_err(sqlite_error),
        Err(error) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}
