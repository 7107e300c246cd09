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
//! logged at DEBUG); a line over [`MAX_LINE_BYTES`] is dropped with a WARN
//! (the request it answered fails at its timeout). Requests are written by
//! a task of the child's own: a stopped child that does not read its input
//! blocks only that task, never a caller (at most [`MAX_QUEUED_REQUESTS`]
//! wait, then requests fail at once), and never a restart. Stderr is passed through. A child that exits fails
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

/// The longest line read from a child (1 MiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Requests waiting to be written to a child that is not reading them.
pub const MAX_QUEUED_REQUESTS: usize = 64;

/// How long [`ProcessAgent::handle`] waits for a reply by default.
pub const DEFAULT_HANDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One running child.
#[derive(Debug)]
struct Running {
    child: Child,
    /// Lines for the writer task.
    requests: tokio::sync::mpsc::Sender<Vec<u8>>,
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
    handle_timeout: std::time::Duration,
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
            handle_timeout: DEFAULT_HANDLE_TIMEOUT,
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

    /// Sets how long [`handle`](Self::handle) waits for a reply (default
    /// [`DEFAULT_HANDLE_TIMEOUT`]).
    pub fn with_handle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.handle_timeout = timeout;
        self
    }

    /// Sends a message to handle and returns the reply, or fails after
    /// the handle timeout.
    pub async fn handle(&self, message: Value) -> Result<Value, AgentError> {
        let request = self.request(json!({"op": "handle", "message": message}));
        let answer = tokio::time::timeout(self.handle_timeout, request)
            .await
            .map_err(|_| {
                AgentError::Failed(format!("no reply within {:?}", self.handle_timeout))
            })??;
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
            // Held only to queue the line: the writing happens on the
            // child's writer task.
            let running = self.running.lock().await;
            let running = running
                .as_ref()
                .ok_or_else(|| AgentError::Failed("not running".into()))?;
            lock(&running.pending).insert(id, reply);
            if let Err(error) = running.requests.try_send(line) {
                lock(&running.pending).remove(&id);
                return Err(AgentError::Failed(match error {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => {
                        "the process is not reading its input".into()
                    }
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                        "the process went away".to_owned()
                    }
                }));
            }
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
        let (requests, queued) = tokio::sync::mpsc::channel(MAX_QUEUED_REQUESTS);
        tokio::spawn(write_requests(stdin, queued));
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            loop {
                let line = match read_line_bounded(&mut reader, MAX_LINE_BYTES).await {
                    Ok(Some(Line::Text(line))) => line,
                    Ok(Some(Line::TooLong)) => {
                        tracing::warn!(
                            max = MAX_LINE_BYTES,
                            "dropping a line from the agent process over the length limit"
                        );
                        continue;
                    }
                    Ok(None) | Err(_) => break,
                };
                let Ok(answer) = serde_json::from_slice::<Value>(&line) else {
                    tracing::debug!(bytes = line.len(), "ignoring a line that is not JSON");
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
            requests,
            pending,
        })
    }
}

/// Writes queued request lines to the child until it goes away.
async fn write_requests(mut stdin: ChildStdin, mut queued: tokio::sync::mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = queued.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

/// One line read by [`read_line_bounded`].
enum Line {
    /// Its bytes, without the newline.
    Text(Vec<u8>),
    /// Over the limit: skipped up to its newline.
    TooLong,
}

/// Reads up to the next newline, keeping at most `max` bytes; `None` at the
/// end of input.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long {
                Some(Line::TooLong)
            } else {
                (!line.is_empty()).then_some(Line::Text(line))
            });
        }
        let (chunk, done) = match available.iter().position(|byte| *byte == b'\n') {
            Some(end) => (&available[..end], end + 1),
            None => (available, available.len()),
        };
        let found_newline = done > chunk.len();
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(done);
        if found_newline {
            return Ok(Some(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            }));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_over_the_limit_are_skipped_whole() {
        let input = b"short\n0123456789abcdef\nnext\nlast".to_vec();
        let mut reader = BufReader::with_capacity(4, input.as_slice());
        let mut seen = Vec::new();
        while let Some(line) = read_line_bounded(&mut reader, 8).await.unwrap() {
            seen.push(match line {
                Line::Text(text) => String::from_utf8(text).unwrap(),
                Line::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(seen, ["short", "<too long>", "next", "last"]);
    }
}
