//! Which releases may use a database: blue-green deployments.
//!
//! Migrations are additive: a release that knows fewer of them can go on
//! using a database a newer release migrated, as long as no migration it
//! lacks changed what it reads or writes. Each migration says, as
//! [`Migration::readable_from`], the oldest schema version a release must
//! know to use a database once it has run; the database records the
//! largest of these (`smalltalk_schema.readable_from`) with the release
//! that migrated it. A release refuses a newer database only when it is
//! older than that ([`Error::SchemaTooNew`](crate::Error::SchemaTooNew)).

use crate::{Error, Result};

/// The table recording the schema's floor and the release that wrote it
/// (`name TEXT PRIMARY KEY, value TEXT`).
pub(crate) const TABLE: &str = "smalltalk_schema";

/// One migration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its statements.
    pub(crate) sql: &'static str,
    /// The oldest schema version (number of migrations a release knows)
    /// that can still use a database once this migration has run: the
    /// previous migration's value for an additive one (a new table, index
    /// or nullable column), its own number when older releases would
    /// misread or miswrite.
    pub(crate) readable_from: u64,
}

/// The floor of a database with every one of `migrations` applied.
pub(crate) fn floor(migrations: &[Migration]) -> u64 {
    migrations
        .iter()
        .map(|migration| migration.readable_from)
        .max()
        .unwrap_or(0)
}

/// For a database at schema version `found`, newer than the `supported`
/// this release knows: `Ok` if its recorded floor lets this release use
/// it, as it is.
pub(crate) fn check_newer(found: u64, supported: u64, readable_from: Option<u64>) -> Result<()> {
    match readable_from {
        Some(floor) if floor <= supported => {
            tracing::info!(
                schema_version = found,
                supported,
                readable_from = floor,
                "the database was migrated by a newer release that this one may still use"
            );
            Ok(())
        }
        floor => Err(Error::SchemaTooNew {
            found,
            supported,
            readable_from: floor.unwrap_or(found),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_database_is_used_only_down_to_its_floor() {
        let additive = [
            Migration {
                sql: "",
                readable_from: 1,
            },
            Migration {
                sql: "",
                readable_from: 1,
            },
        ];
        assert_eq!(floor(&additive), 1);
        assert!(check_newer(2, 1, Some(1)).is_ok());
        assert!(matches!(
            check_newer(3, 1, Some(3)),
            Err(Error::SchemaTooNew {
                found: 3,
                supported: 1,
                readable_from: 3
            })
        ));
        // No floor recorded (a release before floors): refused.
        assert!(matches!(
            check_newer(7, 5, None),
            Err(Error::SchemaTooNew {
                readable_from: 7,
                ..
            })
        ));
    }
}
