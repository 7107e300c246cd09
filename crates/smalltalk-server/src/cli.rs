//! The operator commands that open storage directly (`STORAGE_URL`):
//! `sessions list|show|export`, `events tail`, `doctor`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use smalltalk::storage::{EventFilter, LogEntry, SessionCursor, SessionFilter};
use smalltalk::types::TopicPattern;
use smalltalk::{SessionId, SessionState};

/// Prints `value` as JSON, or `text` for people.
fn print(json_output: bool, value: &Value, text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json_output {
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{text}")?;
    }
    Ok(())
}

/// `sessions list`: every session (or those in `state`), oldest first.
pub(crate) async fn sessions_list(
    url: &str,
    state: Option<&str>,
    limit: Option<u32>,
    json_output: bool,
) -> anyhow::Result<()> {
    let store = smalltalk::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let state = state
        .map(|raw| {
            SessionState::ALL
                .into_iter()
                .find(|state| state.as_str() == raw)
                .with_context(|| {
                    format!("--state must be active, idle, expired or invalidated (got {raw:?})")
                })
        })
        .transpose()?;
    let mut after = None;
    let mut left = limit.map_or(u64::MAX, u64::from);
    while left > 0 {
        let page = store
            .list_sessions(&SessionFilter {
                state,
                after,
                limit: Some(left.min(500) as u32),
                ..SessionFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(SessionCursor::after(last));
        left = left.saturating_sub(page.len() as u64);
        for summary in &page {
            print(
                json_output,
                &serde_json::to_value(summary)?,
                &format!(
                    "{}  {:<11}  {:>6} messages  created {}  expires {}",
                    summary.id,
                    summary.state.as_str(),
                    summary.message_count,
                    summary.created_at,
                    summary.expires_at
                ),
            )?;
        }
    }
    store.close().await?;
    Ok(())
}

/// `sessions show ID` (the header and the history) and `sessions export
/// ID` (the whole session as JSON, to stdout or a file).
pub(crate) async fn sessions_show(
    url: &str,
    id: &str,
    export: Option<Option<&std::path::Path>>,
    json_output: bool,
) -> anyhow::Result<()> {
    let id = SessionId::parse(id).context("the session id (a UUID v4)")?;
    let store = smalltalk::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let session = store
        .get_session(id)
        .await?
        .with_context(|| format!("no session {id} in {url}"))?;
    store.close().await?;
    if let Some(target) = export {
        let document = serde_json::to_string_pretty(&session)?;
        match target {
            Some(path) => {
                std::fs::write(path, document + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("exported session {id} to {}", path.display());
            }
            None => println!("{document}"),
        }
        return Ok(());
    }
    if json_output {
        println!("{}", serde_json::to_string(&session)?);
        return Ok(());
    }
    println!(
        "session {id}: {} (version {}), created {}, expires {}, {} messages, {} agent states",
        session.state.as_str(),
        session.version,
        session.created_at,
        session.expires_at,
        session.messages.len(),
        session.agent_states.len()
    );
    for (sequence, message) in session.messages.iter().enumerate() {
        let who = message.agent_id.as_ref().map_or_else(
            || format!("{:?}", message.role).to_lowercase(),
            ToString::to_string,
        );
        println!("{sequence:>5} [{who}] {}", message.content);
    }
    Ok(())
}

/// `events tail`: the log after `from` (default: its last 20 events), and
/// with `follow` new events as they come, until interrupted.
pub(crate) async fn events_tail(
    url: &str,
    from: Option<u64>,
    topic: Option<&str>,
    follow: bool,
    json_output: bool,
) -> anyhow::Result<()> {
    let store = smalltalk::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let mut filter = EventFilter::default();
    if let Some(topic) = topic {
        filter
            .patterns
            .push(TopicPattern::parse(topic).context("--topic")?);
    }
    let bounds = store.log_bounds().await?;
    let mut after = from.unwrap_or_else(|| bounds.last.saturating_sub(20));
    if after > bounds.last {
        bail!(
            "--from {after} is beyond the log's newest position ({})",
            bounds.last
        );
    }
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let head = store.log_bounds().await?.last;
        let entries = store.read_log(after, &filter, 500).await?;
        let short = entries.len() < 500;
        for entry in entries {
            after = entry.position();
            match entry {
                LogEntry::Event(event) => {
                    let payload = event.payload.to_value().unwrap_or(Value::Null);
                    print(
                        json_output,
                        &json!({"position": after, "id": event.id.to_string(), "topic": event.topic.as_str(),
                            "timestamp": event.timestamp.to_string(), "payload": payload}),
                        &format!(
                            "{after:>8}  {}  {:<32} {payload}",
                            event.timestamp,
                            event.topic.as_str()
                        ),
                    )?;
                }
                LogEntry::Undecodable(row) => {
                    eprintln!("{:>8}  (undecodable: {})", row.position, row.error);
                }
            }
        }
        if short {
            after = after.max(head);
            if !follow {
                break;
            }
            tokio::select! {
                waited = store.wait_for_events(after, Duration::from_secs(1)) => { waited?; }
                _ = &mut stop => break,
            }
        }
    }
    store.close().await?;
    Ok(())
}

/// `doctor`: checks the storage URL, that storage opens and answers (its
/// schema migrated to this release), and an SQLite file's mode. Exit 1 if
/// any check fails.
pub(crate) async fn doctor(url: &str, json_output: bool) -> anyhow::Result<()> {
    let mut checks: Vec<(&str, Result<String, String>)> = Vec::new();
    let scheme_ok = ["sqlite://", "postgres://", "postgresql://", "memory://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    checks.push((
        "storage url",
        if scheme_ok {
            Ok(smalltalk_server::redact_url(url))
        } else {
            Err(format!(
                "{url:?} is not sqlite://, postgres:// or memory://"
            ))
        },
    ));
    if scheme_ok {
        match tokio::time::timeout(Duration::from_secs(10), smalltalk::open(url)).await {
            Ok(Ok(store)) => {
                checks.push(("opens, schema migrated", Ok("ok".into())));
                let answer = store.health_check().await;
                checks.push((
                    "answers",
                    answer
                        .map(|()| "ok".into())
                        .map_err(|error| error.to_string()),
                ));
                let _ = store.close().await;
            }
            Ok(Err(error)) => checks.push(("opens, schema migrated", Err(format!("{error:#}")))),
            Err(_) => checks.push((
                "opens, schema migrated",
                Err("no answer within 10 s".into()),
            )),
        }
    }
    #[cfg(unix)]
    if let Some(path) = url.strip_prefix("sqlite://") {
        use std::os::unix::fs::PermissionsExt;
        let path = path.split('?').next().unwrap_or(path);
        let mode = std::fs::metadata(path).map(|meta| meta.permissions().mode() & 0o777);
        checks.push((
            "file mode",
            match mode {
                Ok(mode) if mode & 0o077 == 0 => Ok(format!("{mode:o}")),
                Ok(mode) => Err(format!("{mode:o}: readable by others (want 600)")),
                Err(error) => Err(error.to_string()),
            },
        ));
    }
    let failed = checks.iter().any(|(_, result)| result.is_err());
    for (name, result) in &checks {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail.as_str()),
            Err(detail) => (false, detail.as_str()),
        };
        print(
            json_output,
            &json!({"check": name, "ok": ok, "detail": detail}),
            &format!("{} {name}: {detail}", if ok { "ok  " } else { "FAIL" }),
        )?;
    }
    if failed {
        bail!("some checks failed");
    }
    Ok(())
}
