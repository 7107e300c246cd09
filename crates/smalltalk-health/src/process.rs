//! An agent that lives in a child process and speaks JSON lines.
//!
//! # Protocol
//!
//! One JSON object per line. The monitor writes requests to the child's
//! stdin, each with a fresh `id`; the child answers on stdout with the same
//! `id`, in any order:
//!
//! ```text
//! -> {"id": 1, "op": "heartbeat"}
//! <- {"id": 1, "ok": true, "phase": "llm-call", "progress": 42}
//! -> {"id": 2, "op": "probe"}
//! <- {"id": 2, "ok": true}
//! -> {"id": 3, "op": "restore", "state": {...AgentState JSON...}}   (state may be null)
//! <- {"id": 3, "ok": true}
//! -> {"id": 4, "op": "handle", "message": {...}}
//! <- {"id": 4, "ok": true, "reply": {...}}
//! <- {"id": 5, "ok": false, "error": "what went wrong"}
//! ```
//!
//! `phase` is `idle`, `llm-call`, `tool-call` or `{"custom": "name"}`.
//! Lines that are not JSON, or answer no pending request, are ignored (and
//! logged at DEBUG). Stderr is passed through. A child that exits fails
//! every pending request; a restart kills it (SIGKILL) if it is still
//! there, spawns the command again and sends `restore` with the saved
//! state before the agent counts as ready.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};
use smalltalk_types::{AgentPhase, AgentState};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use crate::{AgentError, Heartbeat, MonitoredAgent};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, AgentError>>>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One running child.
#[derive(Debug)]
struct Running {
    child: Child,
    stdin: ChildStdin,
    pending: Pending,
}

/// What to run: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCommand {
    /// The program.
    pub program: std::path::PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// A [`MonitoredAgent`] backed by a child process (see the
/// [protocol](self)).
#[derive(Debug)]
pub struct ProcessAgent {
    command: ProcessCommand,
    running: tokio::sync::Mutex<Option<Running>>,
    next_id: AtomicU64,
}

impl ProcessAgent {
    /// Starts the command and restores `state` into it.
    pub async fn spawn(
        command: ProcessCommand,
        state: Option<AgentState>,
    ) -> Result<Self, AgentError> {
        let agent = Self {
            command,
            running: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        };
        agent.restart(state).await?;
        Ok(agent)
    }

    /// The child's process id, while it runs.
    pub async fn pid(&self) -> Option<u32> {
        self.running
            .lock()
            .await
            .as_ref()
            .and_then(|running| running.child.id())
    }

    /// Sends a message to handle and returns the reply.
    pub async fn handle(&self, message: Value) -> Result<Value, AgentError> {
        let answer = self
            .request(json!({"op": "handle", "message": message}))
            .await?;
        Ok(answer.get("reply").cloned().unwrap_or(Value::Null))
    }

    /// Sends one request and waits for its answer (callers add timeouts).
    async fn request(&self, mut request: Value) -> Result<Value, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request["id"] = json!(id);
        let mut line = serde_json::to_vec(&request)
            .map_err(|error| AgentError::Failed(format!("encoding a request: {error}")))?;
        line.push(b'\n');
        let (reply, answer) = oneshot::channel();
        {
            let mut running = self.running.lock().await;
            let running = running
                .as_mut()
                .ok_or_else(|| AgentError::Failed("not running".into()))?;
            lock(&running.pending).insert(id, reply);
            if let Err(error) = running.stdin.write_all(&line).await {
                lock(&running.pending).remove(&id);
                return Err(AgentError::Failed(format!(
                    "writing to the process: {error}"
                )));
            }
            let _ = running.stdin.flush().await;
        }
        answer
            .await
            .unwrap_or_else(|_| Err(AgentError::Failed("the process went away".into())))
    }

    async fn start(&self) -> Result<Running, AgentError> {
        let mut child = Command::new(&self.command.program)
            .args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| AgentError::Failed(format!("spawning the process: {error}")))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let pending: Pending = Arc::default();
        let answers = Arc::clone(&pending);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(answer) = serde_json::from_str::<Value>(&line) else {
                    tracing::debug!(%line, "ignoring a line that is not JSON");
                    continue;
                };
                let Some(id) = answer.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let Some(reply) = lock(&answers).remove(&id) else {
                    continue;
                };
                let result = if answer.get("ok").and_then(Value::as_bool) == Some(true) {
                    Ok(answer)
                } else {
                    let error = answer
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("failed without a reason");
                    Err(AgentError::Failed(error.to_owned()))
                };
                let _ = reply.send(result);
            }
            // End of output: the process is gone; fail what waits.
            for (_, reply) in lock(&answers).drain() {
                let _ = reply.send(Err(AgentError::Failed("the process exited".into())));
            }
        });
        Ok(Running {
            child,
            stdin,
            pending,
        })
    }
}

fn phase(answer: &Value) -> AgentPhase {
    match answer.get("phase") {
        Some(Value::String(name)) => match name.as_str() {
            "llm-call" => AgentPhase::LlmCall,
            "tool-call" => AgentPhase::ToolCall,
            _ => AgentPhase::Idle,
        },
        Some(Value::Object(custom)) => custom
            .get("custom")
            .and_then(Value::as_str)
            .map_or(AgentPhase::Idle, |name| AgentPhase::Custom(name.to_owned())),
        _ => AgentPhase::Idle,
    }
}

#[async_trait]
impl MonitoredAgent for ProcessAgent {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        let answer = self.request(json!({"op": "heartbeat"})).await?;
        Ok(Heartbeat {
            phase: phase(&answer),
            progress: answer.get("progress").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    async fn probe(&self) -> Result<(), AgentError> {
        self.request(json!({"op": "probe"})).await.map(drop)
    }

    async fn restart(&self, state: Option<AgentState>) -> Result<(), AgentError> {
        {
            let mut running = self.running.lock().await;
            if let Some(mut old) = running.take() {
                // SIGKILL works on a stopped (SIGSTOP) process too.
                let _ = old.child.start_kill();
                let _ = old.child.wait().await;
            }
            *running = Some(self.start().await?);
        }
        let state = serde_json::to_value(&state)
            .map_err(|error| AgentError::Failed(format!("encoding the state: {error}")))?;
        self.request(json!({"op": "restore", "state": state}))
            .await
            .map(drop)
    }
}
