//! Versioned state over HTTP: revisions as ETags, `If-Match` (412 when
//! stale), `If-None-Match: *`, reads at a revision, history and diffs.

use reqwest::StatusCode;
use serde_json::{Value, json};
mod common;

async fn start() -> (smalltalk_server::AppState, String) {
    common::start(common::memory()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_guard_writes_and_history_and_diffs_read_back() {
    let (app, base) = start().await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/state/plan:lisbon");

    let created = client
        .put(&url)
        .header("if-none-match", "*")
        .json(&json!({"days": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let first_tag = created.headers()["etag"].to_str().unwrap().to_owned();
    let first: Value = created.json().await.unwrap();
    assert_eq!(first_tag, format!("\"{}\"", first["revision"]));
    let again = client
        .put(&url)
        .header("if-none-match", "*")
        .json(&json!({"days": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::PRECONDITION_FAILED);

    let updated = client
        .put(&url)
        .header("if-match", &first_tag)
        .json(&json!({"days": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    let second: Value = updated.json().await.unwrap();
    // The first revision is stale now.
    let stale = client
        .put(&url)
        .header("if-match", &first_tag)
        .json(&json!({"days": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()["content-type"], "application/problem+json");
    let problem: Value = stale.json().await.unwrap();
    assert_eq!(problem["code"], "stale_revision");

    // Lists, `*` and weak tags, as RFC 9110 has them.
    let second_tag = format!("\"{}\"", second["revision"]);
    for (if_match, status) in [
        (format!("{first_tag}, {second_tag}"), StatusCode::OK),
        ("*".to_owned(), StatusCode::OK),
        (format!("W/{second_tag}"), StatusCode::PRECONDITION_FAILED),
        (first_tag.clone(), StatusCode::PRECONDITION_FAILED),
    ] {
        let response = client
            .put(&url)
            .header("if-match", &if_match)
            .json(&json!({"days": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "If-Match: {if_match}");
    }
    let both = client
        .put(&url)
        .header("if-match", "*")
        .header("if-none-match", "*")
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);
    let absent = client
        .put(format!("{base}/v1/state/not:there"))
        .header("if-match", "*")
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(absent.status(), StatusCode::PRECONDITION_FAILED);
    let now: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(now["value"], json!({"days": 3}));
    let then: Value = client
        .get(format!("{url}?revision={}", first["revision"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(then["value"], json!({"days": 2}));
    let history: Value = client
        .get(format!("{url}/history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["changes"].as_array().unwrap().len(), 4);
    let patch: Value = client
        .get(format!(
            "{url}/diff?from={}&to={}",
            first["revision"], second["revision"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        patch,
        json!([{"op": "replace", "path": "/days", "value": 3}])
    );

    for (request, status) in [
        (
            client.get(format!("{base}/v1/state/nothing:here")),
            StatusCode::NOT_FOUND,
        ),
        (
            client.get(format!("{base}/v1/state/bad%20key")),
            StatusCode::BAD_REQUEST,
        ),
        (
            client.get(format!("{url}?revision=999999")),
            StatusCode::BAD_REQUEST,
        ),
        (
            client
                .put(&url)
                .header("if-match", "yesterday")
                .json(&json!(1)),
            StatusCode::BAD_REQUEST,
        ),
        (
            client
                .put(&url)
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            client
                .put(&url)
                .header("content-type", "application/json")
                .body(format!("\"{}\"", "x".repeat(3 * 1024 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let deleted = client.delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    app.shutdown().await.unwrap();
}

/// The SSE messages of `response`: (event, id, data).
fn sse(
    response: reqwest::Response,
) -> impl futures_util::Stream<Item = (String, String, Value)> + Unpin {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    Box::pin(response.bytes_stream().eventsource().map(|event| {
        let event = event.unwrap();
        let data = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        (event.event, event.id, data)
    }))
}

async fn next_change(
    stream: &mut (impl futures_util::Stream<Item = (String, String, Value)> + Unpin),
) -> (String, String, Value) {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
            .await
            .expect("a watch event within 30 s")
            .expect("the stream goes on");
        if message.0 != "progress" {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_last_event_id_missing_no_revision() {
    let (app, base) = start().await;
    let client = reqwest::Client::new();
    let watch = client
        .get(format!("{base}/v1/state-watch?prefix=plan:&from=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), StatusCode::OK);
    let mut stream = sse(watch);
    for n in 0..3 {
        let put = client
            .put(format!("{base}/v1/state/plan:{n}"))
            .json(&json!({"n": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::OK);
    }
    client
        .put(format!("{base}/v1/state/other:x"))
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut last_id = String::new();
    while seen.len() < 2 {
        let (event, id, data) = next_change(&mut stream).await;
        assert_eq!(event, "changes");
        assert_eq!(id, data["revision"].to_string());
        seen.push(data["changes"][0]["key"].as_str().unwrap().to_owned());
        last_id = id;
    }
    drop(stream);
    client
        .put(format!("{base}/v1/state/plan:3"))
        .json(&json!({"n": 3}))
        .send()
        .await
        .unwrap();
    let watch = client
        .get(format!("{base}/v1/state-watch?prefix=plan:"))
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let mut stream = sse(watch);
    while seen.len() < 4 {
        let (event, _, data) = next_change(&mut stream).await;
        assert_eq!(event, "changes");
        seen.push(data["changes"][0]["key"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        ["plan:0", "plan:1", "plan:2", "plan:3"],
        "each revision once, in order"
    );
    let reserved = client
        .get(format!("{base}/v1/state-watch?prefix=smalltalk."))
        .send()
        .await
        .unwrap();
    assert_eq!(reserved.status(), StatusCode::BAD_REQUEST);
    app.close_streams();
    let (event, _, _) = next_change(&mut stream).await;
    assert_eq!(event, "shutdown");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_commits_whole_or_answers_409_with_the_failure_branch() {
    let (app, base) = start().await;
    let client = reqwest::Client::new();
    let txn = |body: Value| {
        client
            .post(format!("{base}/v1/state-txn"))
            .json(&body)
            .send()
    };
    let created = txn(json!({
        "compare": [{"key": "acct:a", "absent": true}, {"key": "acct:b", "absent": true}],
        "success": [
            {"op": "put", "key": "acct:a", "value": 100},
            {"op": "put", "key": "acct:b", "value": 0}
        ]
    }))
    .await
    .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["succeeded"], true);
    let revision = created["results"][0]["entry"]["revision"].as_u64().unwrap();
    // A transfer conditioned on a stale revision: 409, the failure branch
    // ran (a read), nothing was written.
    let moved = txn(json!({
        "compare": [{"key": "acct:a", "revision": revision}],
        "success": [
            {"op": "put", "key": "acct:a", "value": 70},
            {"op": "put", "key": "acct:b", "value": 30}
        ]
    }))
    .await
    .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    let conflict = txn(json!({
        "compare": [{"key": "acct:a", "revision": revision}],
        "success": [{"op": "put", "key": "acct:a", "value": 0}],
        "failure": [{"op": "get", "key": "acct:a"}]
    }))
    .await
    .unwrap();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    assert_eq!(
        conflict.headers()["content-type"],
        "application/problem+json"
    );
    let conflict: Value = conflict.json().await.unwrap();
    assert_eq!(conflict["code"], "txn_compare_failed");
    assert_eq!(conflict["results"][0]["entry"]["value"], 70);
    let a: Value = client
        .get(format!("{base}/v1/state/acct:a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["value"], 70, "the losing transaction wrote nothing");
    for bad in [
        json!({}),
        json!({"compare": [{"key": "acct:a"}], "success": [{"op": "get", "key": "acct:a"}]}),
        json!({"success": [{"op": "put", "key": "smalltalk.idempotency:x", "value": 1}]}),
        json!({"success": [{"op": "rename", "key": "acct:a"}]}),
    ] {
        let response = txn(bad.clone()).await.unwrap();
        assert!(
            response.status().is_client_error(),
            "{bad}: {}",
            response.status()
        );
    }
    app.shutdown().await.unwrap();
}
