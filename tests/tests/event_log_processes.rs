//! The event log across real processes on PostgreSQL: an append in one
//! process wakes a waiter in another (LISTEN/NOTIFY).

use std::time::Duration;

use smalltalk::Timestamp;
use smalltalk_storage::contract::{Backend, PgBackend, test_clock};

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_in_another_process_wakes_a_waiter_here() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let store = backend.open(test_clock()).await;
    let mut latencies = Vec::new();
    for round in 1..=5_u64 {
        // The waiter is waiting before the other process even starts.
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                let position = store
                    .wait_for_events(round - 1, Duration::from_secs(3600))
                    .await;
                (position, Timestamp::now())
            })
        };
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-worker"))
            .args([backend.store_url().as_str(), "1"])
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (position, woken_at) = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("the notification must arrive")
            .unwrap();
        assert_eq!(position.unwrap(), round);
        let stdout = String::from_utf8(output.stdout).unwrap();
        let appended_at: i64 = stdout.split_whitespace().nth(2).unwrap().parse().unwrap();
        latencies.push(woken_at.as_micros() - appended_at);
    }
    latencies.sort_unstable();
    eprintln!("cross-process wake-up after the append returned (us): {latencies:?}");
}
