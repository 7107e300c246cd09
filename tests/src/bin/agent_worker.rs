//! A child-process agent for health tests, speaking the JSON-lines protocol
//! of `smalltalk_health::process`. `handle` replies with what it remembers
//! from its restored state (`context.memory`) and how many messages it
//! handled in this life; the message `{"become": "zombie"}` makes it stop
//! answering probes and work while it keeps answering heartbeats.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut memory = Value::Null;
    let mut handled = 0u64;
    let mut zombie = false;
    while let Some(line) = lines.next_line().await? {
        let Ok(request) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let id = request["id"].clone();
        let answer = match request["op"].as_str() {
            Some("heartbeat") => {
                Some(json!({"id": id, "ok": true, "phase": "idle", "progress": handled}))
            }
            Some("probe") if !zombie => Some(json!({"id": id, "ok": true})),
            Some("restore") => {
                memory = request["state"]["context"]["memory"].clone();
                Some(json!({"id": id, "ok": true}))
            }
            Some("handle") if !zombie => {
                if request["message"]["become"] == "zombie" {
                    zombie = true;
                    Some(json!({"id": id, "ok": true, "reply": "zombie now"}))
                } else {
                    handled += 1;
                    Some(json!({"id": id, "ok": true, "reply": {
                        "memory": memory, "handled": handled, "pid": std::process::id(),
                    }}))
                }
            }
            // A zombie: silent on work.
            _ => None,
        };
        if let Some(answer) = answer {
            out.write_all(format!("{answer}\n").as_bytes()).await?;
            out.flush().await?;
        }
    }
    Ok(())
}
