//! Events over HTTP: publish, read the log, and SSE streams whose ids are
//! log positions — a client that drops mid-stream resumes with
//! `Last-Event-ID` and sees every event exactly once; a client that falls
//! behind is told `lagged` and resumes the same way; shutdown ends every
//! stream with its terminal event.

use common::{memory, start};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use smalltalk::events::Draft;
use smalltalk_server::ServerConfig;

mod common;

/// One SSE message: its event name, id and data.
#[derive(Debug, Clone)]
struct Message {
    event: String,
    id: String,
    data: String,
}

/// Opens a stream; `last` is sent as `Last-Event-ID`.
async fn open(
    base: &str,
    query: &str,
    last: Option<&str>,
) -> impl futures_util::Stream<Item = Message> + Unpin + use<> {
    let mut request = reqwest::Client::new().get(format!("{base}/v1/events/stream{query}"));
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    Box::pin(response.bytes_stream().eventsource().map(|event| {
        let event = event.unwrap();
        Message {
            event: event.event,
            id: event.id,
            data: event.data,
        }
    }))
}

/// The next message, failing the test after 30 s instead of hanging.
async fn next(stream: &mut (impl futures_util::Stream<Item = Message> + Unpin)) -> Option<Message> {
    tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
        .await
        .expect("a message within 30 s")
}

async fn publish(base: &str, topic: &str, n: u64) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .json(&json!({"topic": topic, "payload": {"n": n}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_read_the_log_in_order() {
    let (app, base) = start(memory()).await;
    let mut positions = Vec::new();
    for n in 0..5 {
        let topic = if n % 2 == 0 {
            "task:created"
        } else {
            "task:done"
        };
        positions.push(publish(&base, topic, n).await["position"].as_u64().unwrap());
    }
    assert!(positions.windows(2).all(|pair| pair[1] == pair[0] + 1));
    let page: Value = reqwest::get(format!("{base}/v1/events?after=0&topic=task:created"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ns: Vec<u64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 2, 4]);
    for bad in [
        "/v1/events?topic=a::b",
        "/v1/events?limit=0",
        "/v1/events?after=-1",
    ] {
        let response = reqwest::get(format!("{base}{bad}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let bad = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .json(&json!({"topic": "no spaces allowed", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    app.shutdown().await.unwrap();
}

/// The W3C trace context of the publishing request travels in the event's
/// metadata (a malformed header is ignored; the publisher's own wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_traceparent_travels_in_the_event_metadata() {
    let (app, base) = start(memory()).await;
    let client = reqwest::Client::new();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut positions = Vec::new();
    for (header, metadata) in [
        (Some(traceparent), json!({})),
        (Some("00-not-a-trace-01"), json!({})),
        (
            Some(traceparent),
            json!({"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}),
        ),
        (None, json!({})),
    ] {
        let mut request = client
            .post(format!("{base}/v1/events"))
            .json(&json!({"topic": "traced:step", "payload": 1, "metadata": metadata}));
        if let Some(header) = header {
            request = request.header("traceparent", header);
        }
        let published: Value = request.send().await.unwrap().json().await.unwrap();
        positions.push(published["position"].as_u64().unwrap());
    }
    let page: Value = reqwest::get(format!("{base}/v1/events?after=0&topic=traced:*"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let carried: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["traceparent"].clone())
        .collect();
    assert_eq!(
        carried,
        [
            json!(traceparent),
            Value::Null,
            json!("00-11111111111111111111111111111111-2222222222222222-01"),
            Value::Null
        ]
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_resumes_with_last_event_id_losing_and_repeating_nothing() {
    let (app, base) = start(memory()).await;
    for n in 0..5 {
        publish(&base, "chat:said", n).await;
    }
    let mut seen = Vec::new();
    let mut stream = open(&base, "?after=0&topic=chat:*", None).await;
    let mut last_id = String::new();
    while seen.len() < 3 {
        let message = next(&mut stream).await.unwrap();
        assert_eq!(message.event, "event");
        let event: Value = serde_json::from_str(&message.data).unwrap();
        assert_eq!(
            event["position"].to_string(),
            message.id,
            "id: is the position"
        );
        seen.push(event["payload"]["n"].as_u64().unwrap());
        last_id = message.id;
    }
    drop(stream);
    // Published while the client is away, plus noise it does not want.
    for n in 5..10 {
        publish(&base, "chat:said", n).await;
        publish(&base, "other:thing", 100 + n).await;
    }
    let mut stream = open(&base, "?topic=chat:*", Some(&last_id)).await;
    while seen.len() < 10 {
        let message = next(&mut stream).await.unwrap();
        let event: Value = serde_json::from_str(&message.data).unwrap();
        seen.push(event["payload"]["n"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (0..10).collect::<Vec<_>>(),
        "every event once, in order"
    );
    // Live: a new event arrives on the open stream.
    publish(&base, "chat:said", 10).await;
    let message = next(&mut stream).await.unwrap();
    let event: Value = serde_json::from_str(&message.data).unwrap();
    assert_eq!(event["payload"]["n"], 10);
    for bad in ["yesterday", "999999"] {
        let refused = reqwest::Client::new()
            .get(format!("{base}/v1/events/stream"))
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
        let problem: Value = refused.json().await.unwrap();
        if bad == "999999" {
            assert_eq!(problem["code"], "position_ahead", "another log's position");
        }
    }
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_is_told_lagged_and_resumes_where_it_was() {
    let (app, base) = start(ServerConfig {
        sse_buffer: 16,
        sse_stall_ms: 300,
        ..memory()
    })
    .await;
    let mut stream = open(&base, "?after=0", None).await;
    // Far more than the buffer and the socket hold, while it reads nothing:
    // some 50 MB, past what loopback autotuning lets a socket buffer (32 MB
    // of receive buffer here), so the reader must wait on the client.
    let total = 20_000u64;
    let drafts: Vec<Draft> = (0..total)
        .map(|n| Draft::new("load:tick", json!({"n": n, "pad": "x".repeat(2_500)})).unwrap())
        .collect();
    for chunk in drafts.chunks(1000) {
        app.runtime()
            .events
            .publish_batch(chunk.to_vec())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut lagged_at = None;
    // Reads nothing for longer than the stall allows: lagged.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    while let Some(message) = next(&mut stream).await {
        match message.event.as_str() {
            "event" => {
                let event: Value = serde_json::from_str(&message.data).unwrap();
                seen.push(event["payload"]["n"].as_u64().unwrap());
            }
            "lagged" => {
                lagged_at = Some(message.data.clone());
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let lagged_at = lagged_at.expect("a client that cannot keep up is told lagged");
    assert!((seen.len() as u64) < total, "it did fall behind");
    // Resumed, it keeps up: a fast reader is not lagged by a backlog.
    let mut stream = open(&base, "", Some(&lagged_at)).await;
    while (seen.len() as u64) < total {
        let message = next(&mut stream).await.unwrap();
        if message.event == "lagged" {
            stream = open(&base, "", Some(&message.data)).await;
            continue;
        }
        let event: Value = serde_json::from_str(&message.data).unwrap();
        seen.push(event["payload"]["n"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "nothing lost or repeated"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_stream_with_its_terminal_event() {
    let (app, base) = start(memory()).await;
    publish(&base, "a:b", 1).await;
    let mut stream = open(&base, "?after=0", None).await;
    let first = next(&mut stream).await.unwrap();
    assert_eq!(first.event, "event");
    app.close_streams();
    let last = next(&mut stream).await.unwrap();
    assert_eq!(last.event, "shutdown");
    assert_eq!(last.data, first.id, "it says the last position sent");
    assert_eq!(
        last.id, first.id,
        "and carries it as its id, for the reconnect"
    );
    assert!(stream.next().await.is_none(), "and the body ends");
    app.shutdown().await.unwrap();
}
