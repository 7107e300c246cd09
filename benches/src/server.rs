//! Server measurements for the report (the SERVER rows), over loopback
//! with a real client:
//!
//! - `get_session_10_messages`: `GET /v1/sessions/{id}` of a session of 10
//!   messages;
//! - `post_message`: `POST /v1/sessions/{id}/messages` (sync durability);
//! - `sse_publish_to_client`: from `POST /v1/events` returning to the
//!   event arriving on an open SSE stream;
//! - `requests_per_sec_64_connections`: `GET /health` from 64 concurrent
//!   connections, beside a trivial axum handler in the same run;
//! - `sigterm_to_exit_1000_async_sessions`: the `smalltalk` binary with
//!   1,000 sessions of unflushed (async) writes and an SSE client open,
//!   from SIGTERM to its exit, every message then found in storage.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use smalltalk_server::{AppState, ServerConfig, router};

use crate::Samples;

/// A server over `storage_url` on an ephemeral loopback port.
pub async fn start(storage_url: String) -> (AppState, String) {
    let config = ServerConfig {
        storage_url,
        max_concurrent_sessions: 100_000,
        ..ServerConfig::default()
    };
    let app = AppState::start(&config).await.expect("server state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let service = router(app.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, service).await;
    });
    (app, base)
}

/// A session with 10 messages; its id.
pub async fn session_with_messages(
    client: &reqwest::Client,
    base: &str,
    messages: usize,
) -> String {
    let session: Value = client
        .post(format!("{base}/v1/sessions"))
        .json(&json!({}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = session["id"].as_str().expect("id").to_owned();
    for index in 0..messages {
        client
            .post(format!("{base}/v1/sessions/{id}/messages"))
            .json(&json!({"role": "user", "content": format!("message {index}: {}", "x".repeat(200))}))
            .send()
            .await
            .expect("append");
    }
    id
}

/// `GET` of a session, measured.
pub async fn measure_get(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    warmup: usize,
    count: usize,
) -> Samples {
    let url = format!("{base}/v1/sessions/{id}");
    Samples::collect(warmup, count, || async {
        let response = client.get(&url).send().await.expect("get");
        assert!(response.status().is_success());
        response.bytes().await.expect("body");
    })
    .await
}

/// `POST` of a message, measured.
pub async fn measure_post(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    warmup: usize,
    count: usize,
) -> Samples {
    let url = format!("{base}/v1/sessions/{id}/messages");
    Samples::collect(warmup, count, || async {
        let response = client
            .post(&url)
            .json(&json!({"role": "user", "content": "a message of a few words"}))
            .send()
            .await
            .expect("post");
        assert!(response.status().is_success());
        response.bytes().await.expect("body");
    })
    .await
}

/// From publishing over HTTP to the event arriving on an open SSE stream.
pub async fn measure_sse(
    client: &reqwest::Client,
    base: &str,
    warmup: usize,
    count: usize,
) -> Samples {
    use eventsource_stream::Eventsource;
    let response = client
        .get(format!("{base}/v1/events/stream?topic=bench:sse"))
        .send()
        .await
        .expect("stream");
    let mut stream = Box::pin(response.bytes_stream().eventsource());
    let mut samples = Vec::with_capacity(count);
    for round in 0..warmup + count {
        let started = Instant::now();
        client
            .post(format!("{base}/v1/events"))
            .json(&json!({"topic": "bench:sse", "payload": {"round": round}}))
            .send()
            .await
            .expect("publish");
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .expect("a well-formed event");
            if event.event == "event" {
                break;
            }
        }
        if round >= warmup {
            samples.push(started.elapsed());
        }
    }
    Samples::from_durations(samples)
}

/// Requests per second of `GET url` from `connections` concurrent clients
/// for `duration`.
pub async fn requests_per_sec(url: String, connections: usize, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client");
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let response = client.get(&url).send().await.expect("get");
                    response.bytes().await.expect("body");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    total as f64 / duration.as_secs_f64()
}

/// A trivial axum handler on its own port, for comparison.
pub async fn trivial_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

/// What one SIGTERM measurement saw.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// From the signal to the process's exit.
    pub took: Duration,
    /// Messages found in storage by a new process afterwards.
    pub persisted: u64,
}

/// `smalltalk serve` (the binary at `binary`) on SQLite with async
/// durability (the flush a minute away) and an SSE client open: `sessions`
/// sessions of one acknowledged-but-unflushed message each, then SIGTERM;
/// the time to exit, and what a new process finds stored.
pub async fn sigterm_to_exit(binary: &std::path::Path, sessions: usize) -> anyhow::Result<Stopped> {
    use anyhow::{Context, bail};
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("stop.db").display());
    let mut child = tokio::process::Command::new(binary)
        .arg("serve")
        .env_clear()
        .env("STORAGE_URL", &url)
        .env("SMALLTALK_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .env("SMALLTALK_SESSION_DURABILITY", "async")
        .env("SMALLTALK_FLUSH_INTERVAL_MS", "60000")
        .env("MAX_CONCURRENT_SESSIONS", (sessions * 2).to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = lines
        .next_line()
        .await?
        .context("the server said nothing")?;
    let base = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    let client = reqwest::Client::new();
    for n in 0..sessions {
        let session: Value = client
            .post(format!("{base}/v1/sessions"))
            .json(&json!({}))
            .send()
            .await?
            .json()
            .await?;
        let id = session["id"].as_str().context("a session id")?;
        let answer: Value = client
            .post(format!("{base}/v1/sessions/{id}/messages"))
            .json(&json!({"role": "user", "content": format!("message {n}")}))
            .send()
            .await?
            .json()
            .await?;
        if answer["stored"] != false {
            bail!("the message was stored before the answer: durability is not async");
        }
    }
    let stream = client
        .get(format!("{base}/v1/events/stream"))
        .send()
        .await?;
    let mut events = stream.bytes_stream();
    let pid = child.id().context("running")?.to_string();
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("no exit within 60 s of SIGTERM")??;
    let took = started.elapsed();
    // The stream got its end.
    while events.next().await.is_some() {}
    if !exit.success() {
        bail!("exit status {exit} after SIGTERM");
    }
    let store = smalltalk_storage::open(&url).await?;
    let mut persisted = 0;
    let mut after = None;
    loop {
        let page = store
            .list_sessions(&smalltalk_storage::SessionFilter {
                after,
                limit: Some(500),
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(smalltalk_storage::SessionCursor::after(last));
        persisted += page
            .iter()
            .map(|summary| summary.message_count)
            .sum::<u64>();
    }
    store.close().await?;
    Ok(Stopped { took, persisted })
}
