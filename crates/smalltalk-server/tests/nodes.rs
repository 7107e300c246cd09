//! Several `smalltalk serve` processes on one database, as operators run
//! them: two nodes of one release on PostgreSQL (a write on one is read on
//! the other, an event published on one reaches an SSE client of the
//! other, one killed with SIGKILL leaves the other serving, an invalidate
//! racing unflushed writes), and two releases on one database (blue-green:
//! the binary of the commit before the newest migration, which `cargo
//! xtask ci` builds, serving a database the newest release migrated).

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use smalltalk_storage::contract::PgBackend;

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_smalltalk");

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn new_session(base: &str) -> String {
    let (status, session) = post(base, "/v1/sessions", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    session["id"].as_str().unwrap().to_owned()
}

async fn say(base: &str, id: &str, text: &str) -> StatusCode {
    post(
        base,
        &format!("/v1/sessions/{id}/messages"),
        json!({"role": "user", "content": text}),
    )
    .await
    .0
}

async fn contents(base: &str, id: &str) -> Vec<String> {
    let (status, messages) = get(base, &format!("/v1/sessions/{id}/messages")).await;
    assert_eq!(status, StatusCode::OK, "{messages}");
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

/// The previous release's binary, or `None` (said) when `cargo xtask ci`
/// did not build one; required under `SMALLTALK_REQUIRE_TOOLS=1`.
fn previous_release() -> Option<String> {
    match std::env::var("SMALLTALK_PREVIOUS_RELEASE") {
        Ok(path) => Some(path),
        Err(_) => {
            assert!(
                std::env::var("SMALLTALK_REQUIRE_TOOLS").is_ok_and(|value| value != "1")
                    || std::env::var("SMALLTALK_REQUIRE_TOOLS").is_err(),
                "SMALLTALK_REQUIRE_TOOLS=1 but SMALLTALK_PREVIOUS_RELEASE is not set (cargo xtask ci builds it)"
            );
            eprintln!(
                "skipped: no previous release binary (cargo xtask ci builds it as SMALLTALK_PREVIOUS_RELEASE)"
            );
            None
        }
    }
}

/// Release N+1 (this tree) migrates `url`; release N (the commit before
/// the newest migration) serves it beside N+1, each reading what the
/// other wrote; a schema marked unusable by N stops N at startup, naming
/// why.
async fn blue_green(url: &str, raise_floor: impl std::future::Future<Output = ()>) {
    let Some(previous) = previous_release() else {
        return;
    };
    let vars = [
        ("STORAGE_URL", url),
        ("SMALLTALK_SESSION_DURABILITY", "sync"),
    ];
    let (mut newer, newer_base) = common::serve_binary(BINARY, &vars).await;
    let (mut older, older_base) = common::serve_binary(&previous, &vars).await;
    let id = new_session(&newer_base).await;
    assert_eq!(say(&newer_base, &id, "from N+1").await, StatusCode::CREATED);
    assert_eq!(contents(&older_base, &id).await, ["from N+1"]);
    assert_eq!(say(&older_base, &id, "from N").await, StatusCode::CREATED);
    assert_eq!(contents(&newer_base, &id).await, ["from N+1", "from N"]);
    let older_session = new_session(&older_base).await;
    assert_eq!(
        get(&newer_base, &format!("/v1/sessions/{older_session}"))
            .await
            .0,
        StatusCode::OK
    );
    for child in [&older, &newer] {
        common::signal(child, "TERM");
    }
    assert!(older.wait().await.unwrap().success());
    assert!(newer.wait().await.unwrap().success());
    // A later release marks the schema unusable by N: N refuses to start.
    raise_floor.await;
    let refused = tokio::process::Command::new(&previous)
        .arg("serve")
        .env_clear()
        .env("STORAGE_URL", url)
        .env("SMALLTALK_BIND", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("needs a release that knows schema version"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_serves_a_sqlite_database_the_newest_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let url = format!("sqlite://{}", path.display());
    blue_green(&url, async {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "UPDATE smalltalk_schema SET value = '1000' WHERE name = 'readable_from';
             PRAGMA user_version = 1000;",
        )
        .unwrap();
    })
    .await;
}

#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_serves_a_postgres_database_the_newest_migrated() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let url = backend.store_url();
    blue_green(&url, async {
        for sql in [
            "INSERT INTO smalltalk_migrations (version) VALUES (1000)",
            "UPDATE smalltalk_schema SET value = '1000' WHERE name = 'readable_from'",
        ] {
            backend.execute(sql).await.unwrap();
        }
    })
    .await;
}

/// Two nodes of one release on one PostgreSQL database: a session written
/// through A is read through B, an event published on A reaches an SSE
/// client of B, and when A is killed (SIGKILL) B keeps serving.
#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_postgres_database_and_survive_each_other() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let url = backend.store_url();
    let vars = [
        ("STORAGE_URL", url.as_str()),
        ("SMALLTALK_SESSION_DURABILITY", "sync"),
    ];
    let (mut node_a, a) = common::serve_binary(BINARY, &vars).await;
    let (mut node_b, b) = common::serve_binary(BINARY, &vars).await;

    let id = new_session(&a).await;
    assert_eq!(say(&a, &id, "written on A").await, StatusCode::CREATED);
    assert_eq!(contents(&b, &id).await, ["written on A"]);
    assert_eq!(say(&b, &id, "written on B").await, StatusCode::CREATED);
    assert_eq!(contents(&a, &id).await, ["written on A", "written on B"]);

    // An SSE client of B sees what A publishes.
    let (_, head) = get(&b, "/v1/events?limit=1").await;
    let after = head["headPosition"].as_u64().unwrap();
    let response = reqwest::Client::new()
        .get(format!("{b}/v1/events/stream?after={after}&topic=nodes:*"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream().eventsource();
    let (status, published) = post(
        &a,
        "/v1/events",
        json!({"topic": "nodes:ping", "payload": {"from": "A"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{published}");
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = stream.next().await.unwrap().unwrap();
            if event.event == "event" {
                break event;
            }
        }
    })
    .await
    .expect("B's client sees A's event within 30 s");
    let seen: Value = serde_json::from_str(&seen.data).unwrap();
    assert_eq!(seen["payload"], json!({"from": "A"}));
    assert_eq!(seen["position"], published["position"]);
    assert_eq!(seen["id"].to_string(), published["id"].to_string());

    // A dies without a word; B goes on.
    common::signal(&node_a, "KILL");
    let _ = node_a.wait().await;
    assert_eq!(contents(&b, &id).await, ["written on A", "written on B"]);
    assert_eq!(say(&b, &id, "after A died").await, StatusCode::CREATED);
    let other = new_session(&b).await;
    assert_eq!(say(&b, &other, "still serving").await, StatusCode::CREATED);
    let (status, ready) = get(&b, "/ready").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    common::signal(&node_b, "TERM");
    assert!(node_b.wait().await.unwrap().success());
}

/// With async durability a node acknowledges a write from memory and
/// stores it at its next flush. What that promises on a shared database:
/// another node does not see the write until then, and an invalidate on
/// another node wins: the flush is refused, the invalidated session stays
/// invalidated with no history, and the writes are dropped (logged), not
/// resurrected.
#[ignore = "needs PostgreSQL: `cargo xtask ci` runs it when a server is reachable"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_on_one_node_wins_over_writes_another_has_not_flushed() {
    let Some(backend) = PgBackend::fresh().await else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let url = backend.store_url();
    let (mut node_a, a) = common::serve_binary(
        BINARY,
        &[
            ("STORAGE_URL", url.as_str()),
            ("SMALLTALK_SESSION_DURABILITY", "async"),
            ("SMALLTALK_FLUSH_INTERVAL_MS", "60000"),
        ],
    )
    .await;
    let (mut node_b, b) = common::serve_binary(
        BINARY,
        &[
            ("STORAGE_URL", url.as_str()),
            ("SMALLTALK_SESSION_DURABILITY", "sync"),
        ],
    )
    .await;
    let id = new_session(&b).await;
    assert_eq!(say(&b, &id, "stored").await, StatusCode::CREATED);
    for n in 0..5 {
        let (status, ack) = post(
            &a,
            &format!("/v1/sessions/{id}/messages"),
            json!({"role": "user", "content": format!("buffered {n}")}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(ack["stored"], false, "acknowledged from memory");
    }
    assert_eq!(contents(&b, &id).await, ["stored"], "not flushed yet");
    let (status, _) = post(&b, &format!("/v1/sessions/{id}/invalidate"), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A stops: its flush meets the invalidation.
    common::signal(&node_a, "TERM");
    let exit = node_a.wait().await.unwrap();
    let (status, _) = get(&b, &format!("/v1/sessions/{id}")).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(
        backend
            .scalar(&format!(
                "SELECT COUNT(*) FROM messages WHERE session_id = '{id}'"
            ))
            .await
            .unwrap(),
        0,
        "nothing of the session's history is left or came back"
    );
    assert!(
        exit.success(),
        "dropping writes to an invalidated session is not a persistence failure: {exit}"
    );
    common::signal(&node_b, "TERM");
    assert!(node_b.wait().await.unwrap().success());
}
