//! `smalltalk import DIR`: the TypeScript original's data directory, with
//! fixtures written here from the formats the original writes (plain and
//! gzipped session files) and hand-made broken ones (wrong types, a
//! truncated gzip, a traversal id), into SQLite through the real binary.
//! Run twice, it imports nothing twice; dry, it writes nothing.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_smalltalk");

fn run(args: &[&str], url: &str) -> (Option<i32>, String, String) {
    common::run_cli(BINARY, args, url)
}

fn session(id: &str, state: &str, turns: usize, padding: usize) -> Value {
    let history: Vec<Value> = (0..turns)
        .map(|n| {
            json!({
                "sequence": n + 1,
                "timestamp": format!("2025-03-01T10:{:02}:00.000Z", n % 60),
                "userMessage": format!("question {n}"),
                "agentResponses": [
                    {"agentId": "researcher", "response": format!("answer {n} {}", "x".repeat(padding)),
                     "timestamp": format!("2025-03-01T10:{:02}:30.000Z", n % 60)}
                ]
            })
        })
        .collect();
    json!({
        "id": id,
        "createdAt": "2025-03-01T09:00:00.000Z",
        "updatedAt": "2025-03-01T11:00:00.000Z",
        "expiresAt": "2099-03-08T09:00:00.000Z",
        "state": state,
        "agentIds": ["researcher"],
        "agentStates": {"researcher": {"config": {"model": "gpt-4o"}, "context": {"notes": "n"}, "messageHistory": []}},
        "conversationHistory": history,
        "sharedContext": {"topic": "t"},
        "metadata": {"team": "a"},
        "version": 3
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn the_originals_directory_imports_once_with_every_bad_record_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sessions = data.join("sessions").join("sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    let kept = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
    write(
        &sessions,
        &format!("{kept}.json"),
        session(kept, "active", 2, 0).to_string().as_bytes(),
    );
    write(
        &sessions,
        "legacy-42.json",
        session("legacy-42", "paused", 1, 0).to_string().as_bytes(),
    );
    // Over 102,400 bytes: the original gzips it.
    let big = "6f1c3c1e-9d0b-4a57-8f3e-2a8e1c0b7d55";
    let big_json = session(big, "closed", 40, 4_000).to_string();
    assert!(big_json.len() > 102_400);
    write(
        &sessions,
        &format!("{big}.json.gz"),
        &gzip(big_json.as_bytes()),
    );
    // A stale plain copy beside it (the original crashed between writing
    // the gzip and removing it): the gzip is the session.
    write(
        &sessions,
        &format!("{big}.json"),
        session(big, "closed", 1, 0).to_string().as_bytes(),
    );
    write(
        &sessions,
        "gone.json",
        session(
            "9a7b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
            "invalidated_pending_cleanup",
            1,
            0,
        )
        .to_string()
        .as_bytes(),
    );
    write(
        &sessions,
        "traversal.json",
        session("../../etc/passwd", "active", 1, 0)
            .to_string()
            .as_bytes(),
    );
    let mut wrong = session("c0ffee00-0000-4000-8000-000000000000", "active", 1, 0);
    wrong["state"] = json!(5);
    write(&sessions, "wrong-types.json", wrong.to_string().as_bytes());
    let truncated = gzip(
        session("d00dfeed-0000-4000-8000-000000000000", "active", 5, 0)
            .to_string()
            .as_bytes(),
    );
    write(
        &sessions,
        "truncated.json.gz",
        &truncated[..truncated.len() / 2],
    );

    // Dry: the report, and nothing written.
    let dry_url = format!("sqlite://{}", dir.path().join("dry.db").display());
    let (code, out, error) = run(
        &["import", data.to_str().unwrap(), "--dry-run", "--json"],
        &dry_url,
    );
    // Some records fail (they are reported): exit status 2.
    assert_eq!(code, Some(2), "{error}");
    assert!(
        !dir.path().join("dry.db").exists(),
        "a dry run creates no database"
    );
    let dry: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (dry["dryRun"].clone(), dry["imported"].clone()),
        (json!(true), json!(4))
    );
    let (code, listed, _) = run(&["sessions", "list", "--json"], &dry_url);
    assert_eq!(code, Some(0));
    assert!(
        listed.trim().is_empty(),
        "a dry run writes nothing: {listed}"
    );

    let url = format!("sqlite://{}", dir.path().join("ours.db").display());
    let (code, out, error) = run(&["import", data.to_str().unwrap(), "--json"], &url);
    assert_eq!(code, Some(2), "{error}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(common::import_counts(&report), [4, 1, 0, 2], "{report}");
    let failed: Vec<&str> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|failure| failure["what"].as_str().unwrap())
        .collect();
    assert!(
        failed.iter().any(|what| what.ends_with("wrong-types.json")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|what| what.ends_with("truncated.json.gz")),
        "{failed:?}"
    );
    let renamed: Vec<&str> = report["renamed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|renamed| renamed["original"].as_str().unwrap())
        .collect();
    assert_eq!(renamed, ["legacy-42", "../../etc/passwd"]);

    // Field by field.
    let (_, shown, _) = run(&["sessions", "show", kept, "--json"], &url);
    let stored: Value = serde_json::from_str(shown.trim()).unwrap();
    let transcript: Vec<(&str, &str)> = stored["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        transcript,
        [
            ("user", "question 0"),
            ("assistant", "answer 0 "),
            ("user", "question 1"),
            ("assistant", "answer 1 "),
        ]
    );
    assert_eq!(stored["state"], "active");
    assert_eq!(stored["metadata"]["sharedContext"], json!({"topic": "t"}));
    assert_eq!(stored["metadata"]["importedFrom"]["version"], 3);
    assert_eq!(
        stored["agentStates"]["researcher"]["config"],
        json!({"model": "gpt-4o"})
    );
    let (_, shown, _) = run(&["sessions", "show", big, "--json"], &url);
    let stored: Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(
        (
            stored["state"].as_str(),
            stored["messages"].as_array().unwrap().len()
        ),
        (Some("expired"), 80)
    );

    // Again: nothing twice.
    let (code, out, _) = run(&["import", data.to_str().unwrap(), "--json"], &url);
    assert_eq!(code, Some(2), "the same two files fail again");
    let again: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (again["imported"].clone(), again["duplicate"].clone()),
        (json!(0), json!(4)),
        "{again}"
    );
    let (code, listed, _) = run(&["sessions", "list", "--json"], &url);
    assert_eq!((code, listed.lines().count()), (Some(0), 4));

    // A session deleted since (its expiry, a user) is not brought back.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = smalltalk_storage::open(&url).await.unwrap();
        let id = smalltalk::SessionId::parse(kept).unwrap();
        assert!(store.delete_session(id).await.unwrap());
        store.close().await.unwrap();
    });
    let (_, out, _) = run(&["import", data.to_str().unwrap(), "--json"], &url);
    let third: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (third["imported"].clone(), third["duplicate"].clone()),
        (json!(0), json!(4)),
        "{third}"
    );
    let (code, _, _) = run(&["sessions", "show", kept], &url);
    assert_eq!(code, Some(1), "still deleted");

    // Not a data directory: a clear error.
    let (code, _, error) = run(
        &["import", dir.path().join("nowhere").to_str().unwrap()],
        &url,
    );
    assert_eq!(code, Some(1));
    assert!(error.contains("is not a directory"), "{error}");
    // A directory holding none of the original's records: as clear.
    let (code, _, error) = run(&["import", dir.path().to_str().unwrap()], &url);
    assert_eq!(code, Some(1));
    assert!(
        error.contains("holds none of the original's records"),
        "{error}"
    );
    // Not a source at all.
    let (code, _, error) = run(&["import", "ftp://example/data"], &url);
    assert_eq!(code, Some(1));
    assert!(error.contains("is not a source"), "{error}");
}
