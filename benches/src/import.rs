//! Import measurements for the report (the IMPORT rows): the TypeScript
//! original's data directory of `sessions` sessions, each of 100 messages
//! (50 turns of a user message and one agent answer, about 200 bytes
//! each), imported by `smalltalk_server::import` into a fresh store;
//! sessions per second, from the first file read to the last ledger
//! record.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use smalltalk_server::import::{ImportOptions, Source, import};
use smalltalk_storage::Store;

/// Writes `sessions` session files of 100 messages each under
/// `dir/sessions/sessions/`.
pub fn write_sessions(dir: &Path, sessions: usize) -> std::io::Result<()> {
    let folder = dir.join("sessions").join("sessions");
    std::fs::create_dir_all(&folder)?;
    for index in 0..sessions {
        let id = format!("00000000-0000-4000-8000-{index:012x}");
        let turns: Vec<serde_json::Value> = (0..50)
            .map(|turn| {
                json!({
                    "sequence": turn + 1,
                    "timestamp": "2025-03-01T10:00:00.000Z",
                    "userMessage": format!("question {turn} {}", "q".repeat(180)),
                    "agentResponses": [{"agentId": "researcher", "response": format!("answer {turn} {}", "a".repeat(180))}]
                })
            })
            .collect();
        let session = json!({
            "id": id,
            "createdAt": "2025-03-01T09:00:00.000Z",
            "updatedAt": "2025-03-01T11:00:00.000Z",
            "expiresAt": "2099-03-08T09:00:00.000Z",
            "state": "active",
            "agentIds": ["researcher"],
            "agentStates": {"researcher": {"config": {}, "context": {"notes": "n"}, "messageHistory": []}},
            "conversationHistory": turns,
            "sharedContext": {},
            "metadata": {},
            "version": 1
        });
        std::fs::write(folder.join(format!("{id}.json")), session.to_string())?;
    }
    Ok(())
}

/// Imports the data directory `dir` into `store`; sessions per second.
pub async fn sessions_per_sec(store: Arc<dyn Store>, dir: &Path, sessions: usize) -> f64 {
    let source = Source::parse(dir.to_str().expect("a UTF-8 path")).expect("a directory");
    let started = Instant::now();
    let report = import(
        store.as_ref(),
        &source,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .expect("import");
    let elapsed = started.elapsed();
    assert_eq!(report.imported as usize, sessions, "{:?}", report.failures);
    sessions as f64 / elapsed.as_secs_f64()
}
