//! Clients that go away mid-request: 1,000 requests dropped at random
//! points (before, during and after the server's work, some halfway
//! through sending their body). Every write is then whole or absent: a
//! two-key transaction has both keys or neither, no message is stored
//! twice, and every Idempotency-Key whose request went away is settled
//! (a retry gets the first answer or runs once), never stuck in flight.

use std::collections::HashSet;
use std::time::Duration;

use common::start;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use smalltalk_server::ServerConfig;

mod common;

/// A small deterministic generator (xorshift64*), seeded and printed so a
/// failure can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const REQUESTS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A transaction putting `pair:<n>:a` and `pair:<n>:b`.
    Pair,
    /// A message `m<n>` appended to the shared session.
    Message,
    /// A transaction whose body stops halfway: it can never run.
    HalfBody,
}

fn kind(n: u64) -> Kind {
    match n % 3 {
        0 => Kind::Pair,
        1 => Kind::Message,
        _ => Kind::HalfBody,
    }
}

fn pair_txn(n: u64) -> Value {
    json!({"success": [
        {"op": "put", "key": format!("pair:{n}:a"), "value": n},
        {"op": "put", "key": format!("pair:{n}:b"), "value": n}
    ]})
}

fn message(n: u64) -> Value {
    json!({"role": "user", "content": format!("m{n}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_dropped_at_random_leave_no_half_write() {
    let seed = std::env::var("SMALLTALK_CANCEL_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64 | 1)
        });
    eprintln!("seed {seed} (SMALLTALK_CANCEL_SEED replays it)");
    let mut random = Random(seed);
    let dir = tempfile::tempdir().unwrap();
    let (app, base) = start(ServerConfig {
        storage_url: format!("sqlite://{}", dir.path().join("cancel.db").display()),
        ..ServerConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let session: Value = client
        .post(format!("{base}/v1/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["id"].as_str().unwrap().to_owned();

    // Up to 50 at a time, each given 0 to 30 ms before it is dropped.
    let mut running = tokio::task::JoinSet::new();
    let mut dropped = 0_u64;
    for n in 0..REQUESTS {
        let patience = Duration::from_micros(random.next() % 30_000);
        let request = match kind(n) {
            Kind::Pair => client
                .post(format!("{base}/v1/state-txn"))
                .header("idempotency-key", format!("pair-{n}"))
                .json(&pair_txn(n)),
            Kind::Message => client
                .post(format!("{base}/v1/sessions/{session}/messages"))
                .header("idempotency-key", format!("message-{n}"))
                .json(&message(n)),
            Kind::HalfBody => {
                let body = serde_json::to_vec(&pair_txn(n)).unwrap();
                let half = body[..body.len() / 2].to_vec();
                let stalled =
                    futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) })
                        .chain(futures_util::stream::pending());
                client
                    .post(format!("{base}/v1/state-txn"))
                    .header("content-type", "application/json")
                    .header("content-length", body.len())
                    .body(reqwest::Body::wrap_stream(stalled))
            }
        };
        running.spawn(async move {
            tokio::time::timeout(patience, request.send())
                .await
                .is_err()
        });
        if running.len() >= 50 {
            dropped += u64::from(running.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(outcome) = running.join_next().await {
        dropped += u64::from(outcome.unwrap());
    }
    assert!(dropped > 0, "some requests were dropped");
    // Writes whose clients left run to their end.
    assert!(app.wait_for_requests(Duration::from_secs(60)).await);

    let get = |path: String| {
        let client = client.clone();
        async move {
            let response = client.get(path).send().await.unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (mut whole, mut absent) = (0, 0);
    for n in (0..REQUESTS).filter(|n| matches!(kind(*n), Kind::Pair | Kind::HalfBody)) {
        let (a, first) = get(format!("{base}/v1/state/pair:{n}:a")).await;
        let (b, second) = get(format!("{base}/v1/state/pair:{n}:b")).await;
        match (a, b) {
            (StatusCode::OK, StatusCode::OK) => {
                assert_eq!(kind(n), Kind::Pair, "a half-sent body never runs");
                assert_eq!(
                    (first["value"].clone(), second["value"].clone()),
                    (json!(n), json!(n))
                );
                assert_eq!(first["revision"], second["revision"], "one transaction");
                whole += 1;
            }
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND) => absent += 1,
            other => panic!("pair {n} is half written: {other:?}"),
        }
    }
    eprintln!("{dropped} of {REQUESTS} dropped; pairs whole {whole}, absent {absent}");

    // Every key is settled: a retry replays the first answer, or runs the
    // request once if it never ran.
    let mut replayed = 0;
    for n in (0..REQUESTS).filter(|n| kind(*n) != Kind::HalfBody) {
        let (url, key, body) = match kind(n) {
            Kind::Pair => (
                format!("{base}/v1/state-txn"),
                format!("pair-{n}"),
                pair_txn(n),
            ),
            _ => (
                format!("{base}/v1/sessions/{session}/messages"),
                format!("message-{n}"),
                message(n),
            ),
        };
        let retry = client
            .post(url)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            retry.status().is_success(),
            "request {n}'s key is settled, not {}",
            retry.status()
        );
        if retry.headers().contains_key("idempotency-replayed") {
            replayed += 1;
        }
    }
    assert!(replayed > 0, "some first attempts had landed");
    // After the retries every message is there exactly once.
    let (_, stored) = get(format!("{base}/v1/sessions/{session}/messages?limit=1000")).await;
    let contents: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let distinct: HashSet<&str> = contents.iter().copied().collect();
    assert_eq!(distinct.len(), contents.len(), "no message stored twice");
    let expected: HashSet<String> = (0..REQUESTS)
        .filter(|n| kind(*n) == Kind::Message)
        .map(|n| format!("m{n}"))
        .collect();
    assert_eq!(
        distinct,
        expected.iter().map(String::as_str).collect::<HashSet<_>>()
    );
    app.shutdown().await.unwrap();
}
