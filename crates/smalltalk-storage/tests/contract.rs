//! The storage contract suite, stamped for every backend.

use smalltalk_storage::storage_contract;

storage_contract!(memory, smalltalk_storage::contract::MemoryBackend::fresh);
storage_contract!(sqlite, smalltalk_storage::contract::SqliteBackend::fresh);
#[cfg(feature = "postgres")]
storage_contract!(
    postgres,
    smalltalk_storage::contract::PgBackend::fresh,
    #[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
);
