//! The state store across real processes: a counter storm, SIGKILLs during
//! transaction storms, and a watcher in another process.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;

use serde_json::Value;
use smalltalk::state::{ChangeKind, StateStore};
use smalltalk::storage::VersionedStore;
use smalltalk::storage::versioned::KeyPrefix;
use smalltalk_storage::contract::{PgBackend, SqliteBackend};
use tokio::io::{AsyncBufReadExt, BufReader};

const WORKER: &str = env!("CARGO_BIN_EXE_state-worker");

async fn open_state(url: &str) -> (StateStore, Arc<dyn smalltalk::Store>) {
    let store = smalltalk::open(url).await.unwrap();
    let state = StateStore::new(Arc::clone(&store) as Arc<dyn VersionedStore>);
    (state, store)
}

/// 4 processes x 8 tasks, each `update` adding 1: the totals are exact.
async fn counter_storm(url: &str) {
    let (processes, tasks, increments) = (4, 8, 25_u64);
    // Migrate once before the storm, so the processes do not race on it.
    let (state, store) = open_state(url).await;
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(
            tokio::process::Command::new(WORKER)
                .args(["count", url, &tasks.to_string(), &increments.to_string()])
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
    let per_key = processes * tasks / 2 * increments;
    for key in ["storm:0", "storm:1"] {
        let entry = state.get(key).await.unwrap().expect("counted");
        assert_eq!(entry.value, Value::from(per_key), "{key}");
        assert_eq!(entry.version, per_key, "one version per increment");
    }
    let head = state.revision().await.unwrap().revision;
    assert_eq!(head, per_key * 2, "one revision per increment, no gap");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_counter_storm_is_exact() {
    let backend = SqliteBackend::fresh().await.unwrap();
    counter_storm(&format!("sqlite://{}", backend.path().display())).await;
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_counter_storm_is_exact() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    counter_storm(&backend.store_url()).await;
}

/// Kills a transaction storm with SIGKILL 20 times, two writers at once on
/// the same 8 keys; then every revision wrote all 8 keys with one value,
/// and every acknowledged revision is there with its value.
async fn kill_during_txn_storms(url: &str) -> usize {
    use std::os::unix::process::ExitStatusExt;
    let (state, store) = open_state(url).await;
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    let mut seed: u64 = 0x7a11;
    for cycle in 0..20 {
        let mut readers = Vec::new();
        for worker in ["a", "b"] {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let kill_after = 1 + (seed >> 33) % 30;
            let mut child = tokio::process::Command::new(WORKER)
                .args(["txns", url, worker])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            // Both workers run and are read at once, each killed after its
            // own number of acknowledgements.
            readers.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                while let Some(line) = lines.next_line().await.unwrap() {
                    let mut parts = line.split_whitespace();
                    if parts.next() == Some("ack") {
                        let revision: u64 = parts.next().unwrap().parse().unwrap();
                        let seq = parts.next().unwrap().to_owned();
                        acks.push((revision, format!("{worker}:{seq}")));
                        if acks.len() as u64 == kill_after {
                            child.start_kill().unwrap();
                        }
                    }
                }
                let output = child.wait_with_output().await.unwrap();
                (worker, output, acks)
            }));
        }
        for reader in readers {
            let (worker, output, acks) = reader.await.unwrap();
            assert_eq!(
                output.status.signal(),
                Some(9),
                "cycle {cycle}: {worker} was to die of SIGKILL: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            acknowledged.extend(acks);
        }
    }
    // Every revision is whole: the 8 keys, one value.
    let mut revisions: BTreeMap<u64, Vec<(String, Value)>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store
            .read_revisions(&KeyPrefix::parse("txn:").unwrap(), after, 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.revision;
        for version in page {
            let value: Value = serde_json::from_slice(&version.value.unwrap()).unwrap();
            revisions
                .entry(version.revision)
                .or_default()
                .push((version.key.to_string(), value));
        }
    }
    for (revision, writes) in &revisions {
        assert_eq!(
            writes.len(),
            8,
            "revision {revision} is partial: {writes:?}"
        );
        assert!(
            writes.iter().all(|(_, value)| *value == writes[0].1),
            "revision {revision} mixes writes: {writes:?}"
        );
    }
    // No acknowledged revision is lost.
    let by_revision: HashMap<u64, &Vec<(String, Value)>> = revisions
        .iter()
        .map(|(revision, writes)| (*revision, writes))
        .collect();
    for (revision, value) in &acknowledged {
        let writes = by_revision
            .get(revision)
            .unwrap_or_else(|| panic!("acknowledged revision {revision} is lost"));
        assert_eq!(writes[0].1, Value::from(value.as_str()));
    }
    // Revisions are gap-free, and the 8 keys agree now.
    let head = state.revision().await.unwrap().revision;
    assert_eq!(revisions.len() as u64, head);
    let latest: Vec<Value> =
        futures_util::future::join_all((0..8).map(|key| state.get(format!("txn:{key}"))))
            .await
            .into_iter()
            .map(|entry| entry.unwrap().unwrap().value)
            .collect();
    assert!(latest.iter().all(|value| *value == latest[0]), "{latest:?}");
    store.close().await.unwrap();
    acknowledged.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_during_txn_storms_leaves_no_partial_transaction() {
    let backend = SqliteBackend::fresh().await.unwrap();
    let url = format!("sqlite://{}", backend.path().display());
    let acknowledged = kill_during_txn_storms(&url).await;
    let integrity = smalltalk_e2e::sqlite_integrity(backend.path());
    eprintln!("sqlite: 20 SIGKILL cycles, {acknowledged} acknowledged transactions");
    assert_eq!(integrity, "ok");
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_during_txn_storms_leaves_no_partial_transaction() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let acknowledged = kill_during_txn_storms(&backend.store_url()).await;
    eprintln!("postgres: 20 SIGKILL cycles, {acknowledged} acknowledged transactions");
}

/// A watcher in another process sees every revision under its prefix once,
/// in order, whole; after compaction, a watch from below the point gets
/// `compacted`, never a silent skip.
async fn watcher_in_another_process(url: &str) {
    let (state, store) = open_state(url).await;
    let mut child = tokio::process::Command::new(WORKER)
        .args(["watch", url, "w:", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The watcher is live (caught up, quiet) before anything is written:
    // what follows reaches it as it happens, not as a catch-up.
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("the watcher reports progress")
            .unwrap()
            .expect("the watcher is alive");
        if line.starts_with("progress") {
            break;
        }
    }
    let mut expected: Vec<(u64, String)> = Vec::new();
    for round in 0..60_u64 {
        let outcome = match round % 3 {
            // Two keys in one revision.
            0 => state
                .txn()
                .put(format!("w:{round}:a"), Value::from(round))
                .put(format!("w:{round}:b"), Value::from(round))
                .commit()
                .await
                .unwrap(),
            // Outside the prefix: not seen.
            1 => state
                .txn()
                .put(format!("other:{round}"), Value::from(round))
                .commit()
                .await
                .unwrap(),
            _ => state
                .txn()
                .put(format!("w:{round}"), Value::from(round))
                .commit()
                .await
                .unwrap(),
        };
        match round % 3 {
            0 => {
                expected.push((outcome.revision, format!("w:{round}:a")));
                expected.push((outcome.revision, format!("w:{round}:b")));
            }
            1 => {}
            _ => expected.push((outcome.revision, format!("w:{round}"))),
        }
    }
    state.delete("w:2").await.unwrap();
    let head = state.revision().await.unwrap().revision;
    expected.push((head, "w:2".into()));
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut deleted = false;
    while seen.len() < expected.len() {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("the watcher keeps up")
            .unwrap()
            .expect("the watcher is alive");
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts[0] == "rev" {
            seen.push((parts[1].parse().unwrap(), parts[2].to_owned()));
            deleted |= parts[3] == format!("{:?}", ChangeKind::Delete);
        }
    }
    assert_eq!(seen, expected, "every revision once, in order, whole");
    assert!(deleted, "the delete came as a delete");
    child.start_kill().unwrap();
    let _ = child.wait().await;

    state.compact_to(head).await.unwrap();
    let output = tokio::process::Command::new(WORKER)
        .args(["watch", url, "w:", "1"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), format!("compacted {head}"));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watcher_in_another_process_sees_every_revision() {
    let backend = SqliteBackend::fresh().await.unwrap();
    watcher_in_another_process(&format!("sqlite://{}", backend.path().display())).await;
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_watcher_in_another_process_sees_every_revision() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    watcher_in_another_process(&backend.store_url()).await;
}
