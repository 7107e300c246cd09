//! Coming from the TypeScript original: its records as it writes them
//! ([`original`]) and how each becomes ours ([`mapping`]). The import
//! itself (`smalltalk import SOURCE`, from the original's data directory,
//! its PostgreSQL tables or its Redis keys) is being built on these (issue
//! 14); it keys re-runs on the store's
//! [`ImportLedger`](smalltalk::storage::ImportLedger).

pub mod directory;
pub mod mapping;
pub mod original;
