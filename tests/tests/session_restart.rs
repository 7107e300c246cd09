//! A session written by one process is restored, identical, by another.

use smalltalk_storage::contract::{PgBackend, SqliteBackend};

/// Runs the worker and returns its `key value` lines.
async fn worker(args: &[&str]) -> Vec<(String, String)> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_session-worker"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "worker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            line.split_once(' ')
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
        })
        .collect()
}

fn value<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    &lines
        .iter()
        .find(|(name, _)| name == key)
        .unwrap_or_else(|| panic!("no `{key}` in {lines:?}"))
        .1
}

async fn restart_keeps_everything(url: &str) {
    let created = worker(&["create", url]).await;
    let restored = worker(&["restore", url, value(&created, "id")]).await;
    assert_eq!(value(&restored, "messages"), "100");
    assert_eq!(
        value(&restored, "hash"),
        value(&created, "hash"),
        "the restored session differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_session_survives_a_restart() {
    let backend = SqliteBackend::fresh().await.unwrap();
    restart_keeps_everything(&format!("sqlite://{}", backend.path().display())).await;
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_session_survives_a_restart() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    restart_keeps_everything(&backend.store_url()).await;
}
