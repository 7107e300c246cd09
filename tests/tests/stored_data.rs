//! Data written by an earlier release stays readable: the fixtures under
//! `tests/fixtures/` (written by `write-fixture` with release 0.1.0) are
//! opened with the current code, migrated where needed, and read back
//! whole. Every later change to the schema or the stored format must keep
//! these green.

use smalltalk_e2e::fixture;
use smalltalk_storage::contract::PgBackend;

const SQLITE_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/release-0.1.0.db");
const PG_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/release-0.1.0.pg.sql");
/// The schema name inside the PostgreSQL dump.
const PG_FIXTURE_SCHEMA: &str = "st_fixture_release_0_1_0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_release_0_1_0_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("old.db");
    std::fs::copy(SQLITE_FIXTURE, &copy).unwrap();
    let store = smalltalk::open(&format!("sqlite://{}", copy.display()))
        .await
        .unwrap();
    fixture::check(store.as_ref(), &fixture::content())
        .await
        .unwrap();
    store.close().await.unwrap();
    // Migrated in place: it opens again with this release.
    let store = smalltalk::open(&format!("sqlite://{}", copy.display()))
        .await
        .unwrap();
    fixture::check(store.as_ref(), &fixture::content())
        .await
        .unwrap();
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_of_release_0_1_0_reads_back_whole() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let dump = std::fs::read_to_string(PG_FIXTURE)
        .unwrap()
        .replace(PG_FIXTURE_SCHEMA, backend.schema());
    backend.execute_script(&dump).await.unwrap();
    let store = smalltalk::open(&backend.store_url()).await.unwrap();
    fixture::check(store.as_ref(), &fixture::content())
        .await
        .unwrap();
}
