//! The `smalltalk` binary as operators run it: a real process, configured
//! by environment variables, stopped with a real SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_smalltalk");

/// Starts `smalltalk serve` with `vars`; returns it and its base URL.
async fn serve(vars: &[(&str, &str)]) -> (tokio::process::Child, String) {
    common::serve_binary(BINARY, vars).await
}

fn terminate(child: &tokio::process::Child) {
    common::signal(child, "TERM");
}

/// 1,000 sessions written with async durability (acknowledged from
/// memory, the flush 60 s away): SIGTERM must persist every one before the
/// process exits 0, and a new process reads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_persists_every_async_session_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data/server.db").display());
    let vars = [
        ("STORAGE_URL", url.as_str()),
        ("SMALLTALK_SESSION_DURABILITY", "async"),
        ("SMALLTALK_FLUSH_INTERVAL_MS", "60000"),
        ("MAX_CONCURRENT_SESSIONS", "2000"),
    ];
    let (child, base) = serve(&vars).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for index in 0..1000 {
        let session: Value = client
            .post(format!("{base}/v1/sessions"))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["id"].as_str().unwrap().to_owned();
        for turn in 0..2 {
            let appended: Value = client
                .post(format!("{base}/v1/sessions/{id}/messages"))
                .json(&json!({"role": "user", "content": format!("hello {index}.{turn}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(appended["stored"], false, "async: acknowledged from memory");
        }
        ids.push(id);
    }
    // An SSE client stays open through the shutdown.
    let stream = client
        .get(format!("{base}/v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let signalled = std::time::Instant::now();
    terminate(&child);
    let body = tokio::time::timeout(Duration::from_secs(60), stream.text())
        .await
        .expect("the stream ends at shutdown")
        .unwrap();
    assert!(
        body.contains("event: shutdown"),
        "the stream ends with its terminal event: {body:?}"
    );
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("exits within 60 s of SIGTERM")
        .unwrap();
    eprintln!(
        "SIGTERM to exit with 1,000 async sessions: {:?}",
        signalled.elapsed()
    );
    assert!(
        output.status.success(),
        "exit {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    // A new process reads every session, every message.
    let (child, base) = serve(&[("STORAGE_URL", &url)]).await;
    for (index, id) in ids.iter().enumerate() {
        let session: Value = client
            .get(format!("{base}/v1/sessions/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let contents: Vec<&str> = session["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("session {index}: {session}"))
            .iter()
            .map(|message| message["content"].as_str().unwrap())
            .collect();
        assert_eq!(
            contents,
            [format!("hello {index}.0"), format!("hello {index}.1")],
            "session {index}"
        );
    }
    terminate(&child);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_stops_startup_naming_the_variable() {
    for (vars, expected) in [
        (
            vec![("HEARTBEAT_INTERVAL_MS", "5")],
            "HEARTBEAT_INTERVAL_MS (heartbeat_interval_ms): must be between 10 and 3600000",
        ),
        (vec![("LOG_FORMAT", "xml")], "LOG_FORMAT"),
        (
            vec![
                ("SMALLTALK_BIND", "0.0.0.0:0"),
                ("STORAGE_URL", "memory://"),
            ],
            "without SMALLTALK_TOKEN",
        ),
    ] {
        let mut command = std::process::Command::new(BINARY);
        command.arg("serve").env_clear();
        for (key, value) in &vars {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{vars:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{vars:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_server_warns_that_requests_are_not_authenticated() {
    // Its own spawn: `serve` drains the logs this test reads.
    let mut child = tokio::process::Command::new(BINARY)
        .arg("serve")
        .env_clear()
        .env("STORAGE_URL", "memory://")
        .env("SMALLTALK_BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the server starts within 30 s")
        .unwrap();
    assert!(first.is_some_and(|line| line.starts_with("listening on ")));
    terminate(&child);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("requests are not authenticated"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_survives_its_restart_every_time_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    for run in 0..2 {
        let output = tokio::process::Command::new(BINARY)
            .arg("demo")
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "run {run}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("the planner is active again"), "{stdout}");
        assert!(
            stdout.contains("identical: the conversation survived the restart"),
            "{stdout}"
        );
        assert!(
            stdout.contains("[restore pid"),
            "a second process restored it: {stdout}"
        );
    }
    assert!(dir.path().join("smalltalk-data/demo.db").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_show_export_tail_and_check_the_storage() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::process::Command::new(BINARY)
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(demo.status.success());
    let run = |args: &[&str]| {
        let output = std::process::Command::new(BINARY)
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("STORAGE_URL", "sqlite://./smalltalk-data/demo.db")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, listed, _) = run(&["sessions", "list", "--json"]);
    assert_eq!(code, Some(0));
    let sessions: Vec<Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["messageCount"], 4);
    let id = sessions[0]["id"].as_str().unwrap();
    let (code, shown, _) = run(&["sessions", "show", id]);
    assert_eq!(code, Some(0));
    assert!(
        shown.contains("[planner] Added. Trams 28 and 15"),
        "{shown}"
    );
    let (code, _, _) = run(&["sessions", "export", id, "--output", "export.json"]);
    assert_eq!(code, Some(0));
    let exported: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("export.json")).unwrap())
            .unwrap();
    assert_eq!(exported["id"], id);
    assert_eq!(exported["messages"].as_array().unwrap().len(), 4);
    let (code, tail, _) = run(&[
        "events", "tail", "--from", "0", "--topic", "agent:*", "--json",
    ]);
    assert_eq!(code, Some(0));
    let healed = tail
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .any(|event| {
            event["payload"]["to"] == "active" && event["payload"]["from"] == "recovering"
        });
    assert!(healed, "the demo's healing is in the log: {tail}");
    let (code, report, _) = run(&["doctor"]);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("file mode: 600"), "{report}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let db = dir.path().join("smalltalk-data/demo.db");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, report, _) = run(&["doctor"]);
        assert_eq!(code, Some(1));
        assert!(report.contains("FAIL file mode: 644"), "{report}");
    }
    let (code, _, error) = run(&["sessions", "show", "not-a-uuid"]);
    assert_eq!(code, Some(1));
    assert!(error.contains("UUID"), "{error}");
}

/// The CLI on a running server (`--server`, with its token) and on the
/// same storage opened directly: `state put|get|history|watch`,
/// `sessions list|show|export --all`, `events tail`; both print the same
/// documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_to_a_running_server_or_to_the_storage() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let token = "cli-test-token-0123456789";
    let (mut server, base) = serve(&[("STORAGE_URL", &url), ("SMALLTALK_TOKEN", token)]).await;
    let run = |args: &[&str], remote: bool| {
        let mut command = std::process::Command::new(BINARY);
        command
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("STORAGE_URL", &url);
        if remote {
            command
                .env("SMALLTALK_SERVER", &base)
                .env("SMALLTALK_TOKEN", token);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let json_lines = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    // A watcher on each side, from the first revision.
    let watch = |remote: bool| {
        let mut command = tokio::process::Command::new(BINARY);
        command
            .args([
                "state", "watch", "--prefix", "team:", "--from", "1", "--json",
            ])
            .env_clear()
            .env("STORAGE_URL", &url)
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if remote {
            command
                .env("SMALLTALK_SERVER", &base)
                .env("SMALLTALK_TOKEN", token);
        }
        command.spawn().unwrap()
    };
    let watchers = [watch(true), watch(false)];

    let (code, put, error) = run(
        &["state", "put", "team:plan", r#"{"step":1}"#, "--json"],
        true,
    );
    assert_eq!(code, Some(0), "{error}");
    assert_eq!(json_lines(&put)[0]["revision"], 1);
    let (code, _, _) = run(
        &[
            "state",
            "put",
            "team:plan",
            r#"{"step":2}"#,
            "--if-revision",
            "1",
        ],
        false,
    );
    assert_eq!(code, Some(0));
    // A stale revision is refused on both sides.
    let (code, _, error) = run(
        &[
            "state",
            "put",
            "team:plan",
            r#"{"step":3}"#,
            "--if-revision",
            "1",
        ],
        true,
    );
    assert_eq!(code, Some(1));
    assert!(error.contains("412 stale_revision"), "{error}");
    let (code, _, _) = run(
        &["state", "put", "team:plan", "{}", "--if-revision", "1"],
        false,
    );
    assert_eq!(code, Some(1));
    let (code, _, error) = run(&["state", "put", "team:plan", "not json"], true);
    assert_eq!(code, Some(1));
    assert!(error.contains("must be JSON"), "{error}");
    // Both read the same document.
    let (_, remote, _) = run(&["state", "get", "team:plan", "--json"], true);
    let (_, local, _) = run(&["state", "get", "team:plan", "--json"], false);
    assert_eq!(json_lines(&remote), json_lines(&local));
    assert_eq!(json_lines(&remote)[0]["value"], json!({"step": 2}));
    let (_, at_one, _) = run(&["state", "get", "team:plan", "--revision", "1"], true);
    assert!(
        at_one.contains(r#"team:plan = {"step":1}  (revision 1"#),
        "{at_one}"
    );
    let (_, history, _) = run(&["state", "history", "team:plan", "--json"], true);
    let (_, local_history, _) = run(&["state", "history", "team:plan", "--json"], false);
    assert_eq!(json_lines(&history), json_lines(&local_history));
    assert_eq!(
        json_lines(&history)[0]["changes"].as_array().unwrap().len(),
        2
    );
    let (code, _, error) = run(&["state", "get", "team:none"], true);
    assert_eq!(code, Some(1));
    assert!(error.contains("404 key_not_found"), "{error}");

    // Each watcher saw both revisions, in order, once.
    for mut watcher in watchers {
        let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
        let mut revisions = Vec::new();
        while revisions.len() < 2 {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("the watcher reports within 30 s")
                .unwrap()
                .expect("a revision");
            revisions.push(serde_json::from_str::<Value>(&line).unwrap()["revision"].clone());
        }
        assert_eq!(revisions, [json!(1), json!(2)]);
        watcher.kill().await.unwrap();
    }

    // Sessions and events through the server.
    let client = reqwest::Client::new();
    let session: Value = client
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["id"].as_str().unwrap();
    client
        .post(format!("{base}/v1/sessions/{id}/messages"))
        .bearer_auth(token)
        .json(&json!({"role": "user", "content": "through the server"}))
        .send()
        .await
        .unwrap();
    let (code, listed, error) = run(&["sessions", "list", "--json"], true);
    assert_eq!(code, Some(0), "{error}");
    assert_eq!(json_lines(&listed)[0]["id"], id);
    let (_, shown, _) = run(&["sessions", "show", id], true);
    assert!(shown.contains("[user] through the server"), "{shown}");
    let (code, exported, error) = run(
        &["sessions", "export", "--all", "--output", "all", "--json"],
        true,
    );
    assert_eq!(code, Some(0), "{error}");
    assert_eq!(json_lines(&exported)[0]["exported"], 1);
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("all").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(file["messages"][0]["content"], "through the server");
    let (_, tail, _) = run(
        &[
            "events",
            "tail",
            "--from",
            "0",
            "--topic",
            "session:*",
            "--json",
        ],
        true,
    );
    let topics: Vec<Value> = json_lines(&tail)
        .into_iter()
        .map(|event| event["topic"].clone())
        .collect();
    assert_eq!(
        topics,
        [json!("session:created"), json!("session:message-added")]
    );
    // Without the token the server refuses, and the CLI says so.
    let output = std::process::Command::new(BINARY)
        .args(["sessions", "list", "--server", &base])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("401 unauthorized"));
    terminate(&server);
    assert!(server.wait().await.unwrap().success());
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` the server exports its spans as OTLP
/// over HTTP (protobuf) to a collector (here a real HTTP server on
/// 127.0.0.1 that keeps what it is sent); a request carrying a W3C
/// `traceparent` continues the caller's trace, and the event it publishes
/// carries the request span's own context. The last spans go out at
/// SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_otlp_collector_continuing_the_callers_trace() {
    use std::sync::{Arc, Mutex};
    type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Received = Arc::default();
    let collector = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(
                |axum::extract::State(received): axum::extract::State<Received>,
                 headers: axum::http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    let kind = headers
                        .get("content-type")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    received.lock().unwrap().push((kind, body.to_vec()));
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let (mut server, base) = serve(&[
        ("STORAGE_URL", "memory://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "smalltalk-under-test"),
    ])
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let published: Value = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"topic": "traced:step", "payload": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page: Value = reqwest::get(format!("{base}/v1/events?after=0&topic=traced:*"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let carried = page["items"][0]["metadata"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(page["items"][0]["id"], published["id"]);
    assert!(
        carried.starts_with(&format!("00-{trace_id}-")),
        "the event joins the caller's trace: {carried}"
    );
    assert!(
        !carried.contains("00f067aa0ba902b7"),
        "with the request's own span as parent, not the caller's: {carried}"
    );
    terminate(&server);
    assert!(server.wait().await.unwrap().success());
    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "spans were exported");
    assert!(
        received
            .iter()
            .all(|(kind, _)| kind == "application/x-protobuf"),
        "{:?}",
        received.iter().map(|(kind, _)| kind).collect::<Vec<_>>()
    );
    let raw_trace: Vec<u8> = (0..16)
        .map(|at| u8::from_str_radix(&trace_id[2 * at..2 * at + 2], 16).unwrap())
        .collect();
    // The export, decoded: the request's span is the caller's child, and
    // the bus handler's span for the event is the request span's child.
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for (_, body) in received.iter() {
        let export = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        for resource in export.resource_spans {
            if let Some(resource) = &resource.resource {
                for attribute in &resource.attributes {
                    if attribute.key == "service.name" {
                        services.push(format!("{:?}", attribute.value));
                    }
                }
            }
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    assert!(
        services
            .iter()
            .all(|name| name.contains("smalltalk-under-test")),
        "{services:?}"
    );
    let request = spans
        .iter()
        .find(|span| span.name == "request" && span.trace_id == raw_trace)
        .expect("the request's span, in the caller's trace");
    assert_eq!(
        request.parent_span_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        "a child of the caller's span"
    );
    let handled = spans
        .iter()
        .find(|span| span.name == "bus.handle" && span.trace_id == raw_trace)
        .expect("the handler's span, in the same trace");
    assert_eq!(
        handled.parent_span_id, request.span_id,
        "a child of the request"
    );
}
