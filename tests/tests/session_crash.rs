//! Crash safety and multi-process writers, with real processes and real
//! signals.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;

use smalltalk::{CreateOptions, SessionManager};
use smalltalk_storage::contract::{PgBackend, SqliteBackend};
use tokio::io::{AsyncBufReadExt, BufReader};

const WORKER: &str = env!("CARGO_BIN_EXE_session-worker");

async fn new_session(url: &str) -> String {
    let sessions = SessionManager::new(smalltalk::open(url).await.unwrap());
    sessions
        .create(CreateOptions::default())
        .await
        .unwrap()
        .id
        .to_string()
}

/// Messages in the session, with how many times each occurs.
async fn stored(url: &str, id: &str) -> HashMap<String, usize> {
    let sessions = SessionManager::new(smalltalk::open(url).await.unwrap());
    let session = sessions
        .restore(smalltalk::SessionId::parse(id).unwrap())
        .await
        .unwrap();
    let mut counts = HashMap::new();
    for message in session.messages {
        *counts.entry(message.content).or_insert(0) += 1;
    }
    counts
}

/// Kills an appending child with SIGKILL after a varying number of
/// acknowledgements, 20 times, then checks every acknowledged message is
/// stored exactly once. Returns (lost, duplicated, acknowledged).
async fn kill_while_appending(url: &str) -> (usize, usize, usize) {
    let id = new_session(url).await;
    let mut acknowledged = HashSet::new();
    let mut seed: u64 = 0x5eed;
    for cycle in 0..20 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = 1 + (seed >> 33) % 40;
        let mut child = tokio::process::Command::new(WORKER)
            .args(["append", url, &id, &format!("c{cycle}"), "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(message) = line.strip_prefix("ack ") {
                acknowledged.insert(message.to_owned());
                seen += 1;
                if seen == kill_after {
                    // SIGKILL mid-stream: the child is in its next write.
                    child.start_kill().unwrap();
                }
            }
        }
        // Acks printed before death were read above, up to EOF.
        let status = child.wait().await.unwrap();
        assert!(
            !status.success(),
            "cycle {cycle}: the worker was to be killed, it exited {status}"
        );
    }
    let counts = stored(url, &id).await;
    let lost = acknowledged
        .iter()
        .filter(|message| !counts.contains_key(*message))
        .count();
    let duplicated = counts.values().filter(|count| **count > 1).count();
    (lost, duplicated, acknowledged.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_loses_no_acknowledged_message() {
    let backend = SqliteBackend::fresh().await.unwrap();
    let url = format!("sqlite://{}", backend.path().display());
    let (lost, duplicated, acknowledged) = kill_while_appending(&url).await;
    let integrity = smalltalk_e2e::sqlite_integrity(backend.path());
    let corrupt = usize::from(integrity != "ok");
    eprintln!(
        "sqlite: 20 SIGKILLs, {acknowledged} acknowledged, lost={lost} duplicated={duplicated} corrupt={corrupt}"
    );
    assert_eq!(
        (lost, duplicated, corrupt),
        (0, 0, 0),
        "integrity_check: {integrity}"
    );
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_loses_no_acknowledged_message() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let (lost, duplicated, acknowledged) = kill_while_appending(&backend.store_url()).await;
    eprintln!(
        "postgres: 20 SIGKILLs, {acknowledged} acknowledged, lost={lost} duplicated={duplicated}"
    );
    assert_eq!((lost, duplicated), (0, 0));
}

/// Four processes append through their own SessionManagers: every message
/// exactly once.
async fn four_processes_append(url: &str) {
    let id = new_session(url).await;
    let mut children = Vec::new();
    for worker in 0..4 {
        children.push(
            tokio::process::Command::new(WORKER)
                .args(["append", url, &id, &format!("w{worker}"), "50"])
                .output(),
        );
    }
    for child in children {
        let output = child.await.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let counts = stored(url, &id).await;
    assert_eq!(counts.len(), 200);
    assert!(
        counts.values().all(|count| *count == 1),
        "a message was stored twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_four_session_processes_on_one_file() {
    let backend = SqliteBackend::fresh().await.unwrap();
    four_processes_append(&format!("sqlite://{}", backend.path().display())).await;
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_four_session_processes_on_one_database() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    four_processes_append(&backend.store_url()).await;
}
