//! The operator commands: `sessions list|show|export`, `events tail`
//! (on the storage at `STORAGE_URL`, or on a running server with
//! `--server`) and `doctor`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use smalltalk::storage::{EventFilter, LogEntry, SessionCursor, SessionFilter};
use smalltalk::types::TopicPattern;
use smalltalk::{SessionId, SessionState};

use crate::remote::Remote;

/// Where a command's data is.
pub(crate) enum Target {
    /// The storage at this URL, opened directly.
    Storage(String),
    /// A running server (`--server`).
    Server(Remote),
}

/// Prints `value` as JSON, or `text` for people.
pub(crate) fn print(json_output: bool, value: &Value, text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json_output {
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{text}")?;
    }
    Ok(())
}

/// The store at `url`, an error naming it otherwise.
pub(crate) async fn open(url: &str) -> anyhow::Result<std::sync::Arc<dyn smalltalk::Store>> {
    smalltalk::open(url)
        .await
        .with_context(|| format!("opening {url}"))
}

fn parse_state(state: Option<&str>) -> anyhow::Result<Option<SessionState>> {
    state
        .map(|raw| {
            SessionState::ALL
                .into_iter()
                .find(|state| state.as_str() == raw)
                .with_context(|| {
                    format!("--state must be active, idle, expired or invalidated (got {raw:?})")
                })
        })
        .transpose()
}

/// Calls `each` with every session summary (as the API shows it), oldest
/// first, at most `limit`.
async fn each_session(
    target: &Target,
    state: Option<&str>,
    limit: Option<u64>,
    mut each: impl FnMut(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let state = parse_state(state)?;
    let mut left = limit.unwrap_or(u64::MAX);
    match target {
        Target::Storage(url) => {
            let store = open(url).await?;
            let mut after = None;
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
                    each(&serde_json::to_value(summary)?)?;
                }
            }
            store.close().await?;
        }
        Target::Server(remote) => {
            let mut cursor: Option<String> = None;
            while left > 0 {
                let page = remote
                    .get(remote.url(
                        &["v1", "sessions"],
                        &[
                            ("state", state.map(|state| state.as_str().to_owned())),
                            ("limit", Some(left.min(1000).to_string())),
                            ("cursor", cursor.clone()),
                        ],
                    ))
                    .await?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                left = left.saturating_sub(items.len() as u64);
                for summary in &items {
                    each(summary)?;
                }
                match page["nextCursor"].as_str() {
                    Some(next) if !items.is_empty() => cursor = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

/// `sessions list`: every session (or those in `state`), oldest first.
pub(crate) async fn sessions_list(
    target: &Target,
    state: Option<&str>,
    limit: Option<u32>,
    json_output: bool,
) -> anyhow::Result<()> {
    each_session(target, state, limit.map(u64::from), |summary| {
        print(
            json_output,
            summary,
            &format!(
                "{}  {:<11}  {:>6} messages  created {}  expires {}",
                summary["id"].as_str().unwrap_or_default(),
                summary["state"].as_str().unwrap_or_default(),
                summary["messageCount"],
                summary["createdAt"].as_str().unwrap_or_default(),
                summary["expiresAt"].as_str().unwrap_or_default()
            ),
        )
    })
    .await
}

/// A whole session: from the storage as stored, from a server as its API
/// shows it (`GET /v1/sessions/{id}`).
async fn whole_session(target: &Target, id: &str) -> anyhow::Result<Value> {
    let id = SessionId::parse(id).context("the session id (a UUID v4)")?;
    match target {
        Target::Storage(url) => {
            let store = open(url).await?;
            let session = store.get_session(id).await;
            store.close().await?;
            let session = session?.with_context(|| format!("no session {id} in {url}"))?;
            Ok(serde_json::to_value(session)?)
        }
        Target::Server(remote) => {
            remote
                .get(remote.url(&["v1", "sessions", &id.to_string()], &[]))
                .await
        }
    }
}

/// `sessions show ID` (the header and the history) and `sessions export
/// ID` (the whole session as JSON, to stdout or a file).
pub(crate) async fn sessions_show(
    target: &Target,
    id: &str,
    export: Option<Option<&std::path::Path>>,
    json_output: bool,
) -> anyhow::Result<()> {
    let session = whole_session(target, id).await?;
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
        return print(true, &session, "");
    }
    let empty = Vec::new();
    let messages = session["messages"].as_array().unwrap_or(&empty);
    let agents = session["agentStates"]
        .as_object()
        .map(|states| states.len())
        .or_else(|| session["agentIds"].as_array().map(Vec::len))
        .unwrap_or(0);
    println!(
        "session {id}: {} (version {}), created {}, expires {}, {} messages, {agents} agent states",
        session["state"].as_str().unwrap_or_default(),
        session["version"],
        session["createdAt"].as_str().unwrap_or_default(),
        session["expiresAt"].as_str().unwrap_or_default(),
        messages.len(),
    );
    for (sequence, message) in messages.iter().enumerate() {
        let who = message["agentId"]
            .as_str()
            .or(message["role"].as_str())
            .unwrap_or("?");
        println!(
            "{sequence:>5} [{who}] {}",
            message["content"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `sessions export --all --output DIR`: every session as `<id>.json`,
/// with a progress bar on a terminal.
pub(crate) async fn sessions_export_all(
    target: &Target,
    dir: &std::path::Path,
    json_output: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ids = Vec::new();
    each_session(target, None, None, |summary| {
        ids.push(summary["id"].as_str().unwrap_or_default().to_owned());
        Ok(())
    })
    .await?;
    let bar = indicatif::ProgressBar::new(ids.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting {pos}/{len} sessions [{bar:30}] {per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    for id in &ids {
        let session = whole_session(target, id).await?;
        let path = dir.join(format!("{id}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&session)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    print(
        json_output,
        &json!({"exported": ids.len(), "directory": dir.display().to_string()}),
        &format!("exported {} sessions to {}", ids.len(), dir.display()),
    )
}

fn event_text(event: &Value) -> String {
    format!(
        "{:>8}  {}  {:<32} {}",
        event["position"],
        event["timestamp"].as_str().unwrap_or_default(),
        event["topic"].as_str().unwrap_or_default(),
        event["payload"]
    )
}

/// `events tail`: the log after `from` (default: its last 20 events), and
/// with `follow` new events as they come, until interrupted.
pub(crate) async fn events_tail(
    target: &Target,
    from: Option<u64>,
    topic: Option<&str>,
    follow: bool,
    json_output: bool,
) -> anyhow::Result<()> {
    let show = |event: &Value| print(json_output, event, &event_text(event));
    match target {
        Target::Storage(url) => events_tail_storage(url, from, topic, follow, &show).await,
        Target::Server(remote) => events_tail_server(remote, from, topic, follow, &show).await,
    }
}

async fn events_tail_server(
    remote: &Remote,
    from: Option<u64>,
    topic: Option<&str>,
    follow: bool,
    show: &dyn Fn(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let topic = topic.map(str::to_owned);
    let mut after = match from {
        Some(from) => from,
        None => {
            // The newest position, from the server's own answer.
            let page = remote
                .get(remote.url(&["v1", "events"], &[("limit", Some("1".into()))]))
                .await?;
            page["headPosition"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(20)
        }
    };
    loop {
        let page = remote
            .get(remote.url(
                &["v1", "events"],
                &[
                    ("after", Some(after.to_string())),
                    ("topic", topic.clone()),
                    ("limit", Some("500".into())),
                ],
            ))
            .await?;
        for event in page["items"].as_array().into_iter().flatten() {
            show(event)?;
        }
        let last = page["lastPosition"].as_u64().unwrap_or(after);
        // Undecodable events are left out of `items`: the page's end says
        // how far the log was read, not its length.
        if last <= after || last >= page["headPosition"].as_u64().unwrap_or(last) {
            after = last;
            break;
        }
        after = last;
    }
    if !follow {
        return Ok(());
    }
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    // A client that fell behind is told `lagged` and closed: it opens the
    // stream again after the last event it printed, missing nothing.
    loop {
        let mut stream = remote
            .stream(remote.url(
                &["v1", "events", "stream"],
                &[("after", Some(after.to_string())), ("topic", topic.clone())],
            ))
            .await?;
        loop {
            let sent = tokio::select! {
                sent = futures_util::StreamExt::next(&mut stream) => sent,
                _ = &mut stop => return Ok(()),
            };
            let Some(sent) = sent else {
                bail!("the server closed the stream");
            };
            let sent = sent?;
            match sent.event.as_str() {
                "event" => {
                    after = sent.data["position"].as_u64().unwrap_or(after);
                    show(&sent.data)?;
                }
                "lagged" => break,
                "shutdown" => bail!("the server is shutting down"),
                other => eprintln!("({other}: {})", sent.data),
            }
        }
    }
}

async fn events_tail_storage(
    url: &str,
    from: Option<u64>,
    topic: Option<&str>,
    follow: bool,
    show: &dyn Fn(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let store = open(url).await?;
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
                    show(
                        &json!({"position": after, "id": event.id.to_string(), "topic": event.topic.as_str(),
                        "timestamp": event.timestamp.to_string(), "payload": payload}),
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

/// `import SOURCE [--dry-run]`: the original's records (its data
/// directory, its PostgreSQL tables or its Redis keys) into the storage at
/// `url`, with a progress bar on a terminal; the report at the end. A dry
/// run into an SQLite file that is not there yet reads against an empty
/// store rather than create it.
pub(crate) async fn import(
    url: &str,
    source: &str,
    dry_run: bool,
    event_retention: Duration,
    json_output: bool,
) -> anyhow::Result<()> {
    use smalltalk_server::import::{self, ImportOptions, Source};
    let source = Source::parse(source)?;
    // Dry: a target that holds no store yet is read as an empty one, not
    // created.
    let store = if dry_run && !holds_a_store(url).await {
        open("memory://").await?
    } else {
        open(url).await?
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} importing {msg} {pos}/{len} [{bar:30}] {per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    let options = ImportOptions {
        dry_run,
        event_retention,
    };
    let report = import::import(store.as_ref(), &source, &options, &mut |progress| {
        bar.set_message(progress.kind);
        bar.set_length(progress.total);
        bar.set_position(progress.done);
    })
    .await;
    bar.finish_and_clear();
    store.close().await?;
    let report = report?;
    if json_output {
        print(true, &serde_json::to_value(&report)?, "")?;
        return import_status(&report);
    }
    println!(
        "{}{} imported, {} skipped, {} duplicate, {} failed",
        if dry_run { "dry run: " } else { "" },
        report.imported,
        report.skipped,
        report.duplicate,
        report.failed
    );
    for (kind, counts) in &report.by_kind {
        println!(
            "  {kind}: {} imported, {} skipped, {} duplicate, {} failed",
            counts.imported, counts.skipped, counts.duplicate, counts.failed
        );
    }
    let lines = |label: &str, items: Vec<String>| {
        let total = items.len();
        for item in items.into_iter().take(MAX_LISTED) {
            println!("{label} {item}");
        }
        if total > MAX_LISTED {
            println!(
                "{label} ... and {} more (--json lists every one)",
                total - MAX_LISTED
            );
        }
    };
    let described = |items: &[smalltalk_server::import::Failure]| {
        items
            .iter()
            .map(|item| format!("{}: {}", item.what, item.reason))
            .collect::<Vec<_>>()
    };
    lines("failed ", described(&report.failures));
    lines("skipped", described(&report.skips));
    lines(
        "renamed",
        report
            .renamed
            .iter()
            .map(|renamed| format!("{} -> {}", renamed.original, renamed.ours))
            .collect(),
    );
    lines("warning", described(&report.warnings));
    import_status(&report)
}

/// Lines of each list the text report prints (`--json` has them all).
const MAX_LISTED: usize = 20;

/// Exit status 2 when records failed (the rest was imported): scripts can
/// tell a partial import from a whole one.
fn import_status(report: &smalltalk_server::import::ImportReport) -> anyhow::Result<()> {
    if report.failed > 0 {
        std::process::exit(2);
    }
    Ok(())
}

/// Whether `url` names a store that exists already (an SQLite file, a
/// PostgreSQL schema holding our tables). Unsure (a server that does not
/// answer): `true`, and opening it says why.
async fn holds_a_store(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        let decoded = percent_decode(path);
        return std::path::Path::new(&decoded).exists();
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| match pair.strip_prefix("schema=") {
                Some(name) => {
                    schema = Some(percent_decode(name));
                    false
                }
                None => !pair.starts_with("max_connections="),
            })
            .collect();
        let plain = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let table = match schema {
            Some(schema) => format!("\"{}\".smalltalk_schema", schema.replace('"', "\"\"")),
            None => "smalltalk_schema".to_owned(),
        };
        use sqlx::Connection;
        let Ok(mut connection) = sqlx::PgConnection::connect(&plain).await else {
            return true;
        };
        let found = sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&mut connection)
            .await
            .unwrap_or(true);
        let _ = connection.close().await;
        return found;
    }
    // memory:// is always new.
    false
}

/// `text` with `%XX` escapes decoded (as storage URLs are).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
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
