//! The event bus across real processes: a subscriber SIGKILLed while
//! handling loses and repeats nothing; buses in two processes sharing a
//! database deliver each other's events.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smalltalk::{Delivery, EventBus, Outcome, PublishOptions, SubscribeOptions, Timestamp};
use smalltalk_storage::contract::{PgBackend, SqliteBackend};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

const WORKER: &str = env!("CARGO_BIN_EXE_bus-worker");
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

struct Subscriber {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    /// Lines read before `ready` (a replay may start first).
    early: std::collections::VecDeque<String>,
}

impl Subscriber {
    async fn start(url: &str) -> Self {
        let mut child = tokio::process::Command::new(WORKER)
            .args(["subscribe", url, "crash-test", "job.>"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut subscriber = Self {
            child,
            stdin,
            lines,
            early: Default::default(),
        };
        loop {
            let line = subscriber.read().await.expect("the subscriber ended early");
            if line == "ready" {
                break;
            }
            subscriber.early.push_back(line);
        }
        subscriber
    }

    async fn line(&mut self) -> Option<String> {
        match self.early.pop_front() {
            Some(line) => Some(line),
            None => self.read().await,
        }
    }

    async fn read(&mut self) -> Option<String> {
        tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
            .await
            .expect("the subscriber process went quiet")
            .unwrap()
    }

    async fn answer(&mut self, word: &str) {
        self.stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }
}

/// What the subscriber reported across all its lives.
#[derive(Default)]
struct Ledger {
    /// Event indices in the order their handling finished.
    handled: Vec<u64>,
    /// Topic of each position seen.
    topics: HashMap<u64, String>,
    /// Indices of normal events handed to the handler at least once.
    delivered_normal: std::collections::BTreeSet<u64>,
}

impl Ledger {
    /// Reads one line; returns the event's index if it is a `handling`
    /// line.
    fn note(&mut self, line: &str) -> Option<u64> {
        let mut words = line.split(' ');
        match words.next()? {
            "handling" => {
                let position: u64 = words.next()?.parse().ok()?;
                let topic = words.next()?.to_owned();
                let index: u64 = words.next()?.parse().ok()?;
                if topic == "job.normal" {
                    self.delivered_normal.insert(index);
                }
                self.topics.insert(position, topic);
                Some(index)
            }
            "handled" => {
                let position: u64 = words.next()?.parse().ok()?;
                let index: u64 = words.next()?.parse().ok()?;
                if self.topics.contains_key(&position) {
                    self.handled.push(index);
                }
                None
            }
            _ => None,
        }
    }
}

/// 20 cycles: critical and normal events are published while the
/// subscriber is down and while it runs; it is SIGKILLed in the middle of
/// handling a varying one. Under the default policy (critical-only) every
/// critical event, and every normal event it was ever handed, must be
/// handled exactly once: a normal event delivered but not acknowledged
/// when it died is delivered again whatever the policy. Returns (events
/// that had to be handled, lost, duplicated, out of order).
async fn kill_while_handling(url: &str) -> (usize, usize, usize, usize) {
    let store = smalltalk::open(url).await.unwrap();
    let bus = EventBus::durable(store.clone()).await.unwrap();
    let mut next_index = 0u64;
    let mut publish = async |critical: bool| {
        let (topic, options) = if critical {
            ("job.critical", PublishOptions::default().critical())
        } else {
            ("job.normal", PublishOptions::default())
        };
        bus.publish(topic, serde_json::json!({ "index": next_index }), options)
            .await
            .unwrap();
        next_index += 1;
        next_index - 1
    };
    let mut published = Vec::new();
    let mut ledger = Ledger::default();
    // Its first subscription starts the durable cursor.
    drop(Subscriber::start(url).await);
    let mut seed: u64 = 0xb05;
    for cycle in 0..20u64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // This cycle's events: 3 critical and 1 normal while it is down,
        // then 2 critical and 1 normal while it runs. It is killed while
        // handling one that is sure to be delivered (not the normal one
        // published while it was down, which the policy may skip).
        let first = cycle * 7;
        let target = first + [0, 1, 2, 4, 5, 6][((seed >> 33) % 6) as usize];
        // Missed while down.
        for _ in 0..3 {
            published.push(publish(true).await);
        }
        publish(false).await;
        let mut subscriber = Subscriber::start(url).await;
        // Published while it runs.
        for _ in 0..2 {
            published.push(publish(true).await);
        }
        publish(false).await;
        loop {
            let line = subscriber.line().await.expect("the subscriber ended early");
            if let Some(index) = ledger.note(&line) {
                if index >= target {
                    // SIGKILL while the handler is in the middle of it.
                    subscriber.child.start_kill().unwrap();
                    break;
                }
                subscriber.answer("go").await;
            }
        }
        while let Some(line) = subscriber.line().await {
            ledger.note(&line);
        }
        let status = subscriber.child.wait().await.unwrap();
        assert!(!status.success(), "cycle {cycle}: exited {status}");
    }
    // A last life finishes everything.
    let mut subscriber = Subscriber::start(url).await;
    let wanted = |ledger: &Ledger| -> std::collections::BTreeSet<u64> {
        published
            .iter()
            .chain(&ledger.delivered_normal)
            .copied()
            .collect()
    };
    while !wanted(&ledger)
        .iter()
        .all(|index| ledger.handled.contains(index))
    {
        let line = subscriber.line().await.expect("the subscriber ended early");
        if ledger.note(&line).is_some() {
            subscriber.answer("go").await;
        }
    }
    let wanted = wanted(&ledger);
    assert!(
        ledger.delivered_normal.len() >= 10,
        "the test hands normal events to the subscriber: {:?}",
        ledger.delivered_normal
    );
    // Idle now (no handler is reading stdin): stop it.
    subscriber.child.start_kill().unwrap();
    let _ = subscriber.child.wait().await;
    let lost = wanted
        .iter()
        .filter(|index| !ledger.handled.contains(index))
        .count();
    let mut once = std::collections::BTreeSet::new();
    let duplicated = ledger
        .handled
        .iter()
        .filter(|index| !once.insert(**index))
        .count();
    let out_of_order = ledger
        .handled
        .windows(2)
        .filter(|pair| pair[0] >= pair[1])
        .count();
    bus.close().await;
    store.close().await.unwrap();
    (wanted.len(), lost, duplicated, out_of_order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_subscriber_killed_while_handling_misses_and_repeats_nothing() {
    let backend = SqliteBackend::fresh().await.unwrap();
    let url = format!("sqlite://{}", backend.path().display());
    let (published, lost, duplicated, out_of_order) = kill_while_handling(&url).await;
    eprintln!(
        "sqlite: 20 SIGKILLs while handling, {published} events to handle (critical, and normal ones delivered), lost={lost} duplicated={duplicated} out_of_order={out_of_order}"
    );
    assert_eq!((lost, duplicated, out_of_order), (0, 0, 0));
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_subscriber_killed_while_handling_misses_and_repeats_nothing() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let (published, lost, duplicated, out_of_order) =
        kill_while_handling(&backend.store_url()).await;
    eprintln!(
        "postgres: 20 SIGKILLs while handling, {published} events to handle (critical, and normal ones delivered), lost={lost} duplicated={duplicated} out_of_order={out_of_order}"
    );
    assert_eq!((lost, duplicated, out_of_order), (0, 0, 0));
}

/// Another process publishes, one event every 5 ms; a bus here delivers.
/// Returns the publication-to-handler latencies, in order of position.
async fn delivered_from_another_process(url: &str, count: usize) -> Vec<Duration> {
    let store = smalltalk::open(url).await.unwrap();
    let bus = EventBus::builder()
        .config(smalltalk::EventBusConfig {
            poll_interval: Duration::from_millis(10),
            ..Default::default()
        })
        .log(store.clone())
        .build()
        .await
        .unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done) = tokio::sync::watch::channel(0usize);
    let handler = {
        let received = received.clone();
        move |delivery: Delivery| {
            let now = Timestamp::now();
            let event = delivery.event();
            let mut received = received.lock().unwrap();
            received.push((
                event.payload.to_value().unwrap()["index"].as_u64().unwrap(),
                now.duration_since(event.timestamp),
            ));
            done_tx.send_replace(received.len());
            async { Outcome::Ack }
        }
    };
    let _subscription = bus
        .subscribe("remote.*", "listener", handler, SubscribeOptions::default())
        .await
        .unwrap();
    let output = tokio::process::Command::new(WORKER)
        .args(["publish", url, &count.to_string(), "remote.event", "5"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut done = done;
    tokio::time::timeout(LINE_TIMEOUT, done.wait_for(|n| *n >= count))
        .await
        .expect("every event delivered")
        .unwrap();
    let received = received.lock().unwrap().clone();
    let indices: Vec<u64> = received.iter().map(|(index, _)| *index).collect();
    assert_eq!(indices, (0..count as u64).collect::<Vec<_>>());
    bus.close().await;
    received.into_iter().map(|(_, latency)| latency).collect()
}

fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.95).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    )
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_published_in_one_process_reach_another() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let latencies = delivered_from_another_process(&backend.store_url(), 200).await;
    eprintln!(
        "postgres, another process -> handler (LISTEN/NOTIFY): {}",
        summary(latencies)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_events_published_in_one_process_reach_another() {
    let backend = SqliteBackend::fresh().await.unwrap();
    let url = format!("sqlite://{}", backend.path().display());
    let latencies = delivered_from_another_process(&url, 200).await;
    eprintln!(
        "sqlite, another process -> handler (10 ms polling): {}",
        summary(latencies)
    );
}
