//! The quick start: a conversation written to SQLite, read back, and still
//! there the next time you run it.
//!
//! ```text
//! cargo run -p smalltalk --example quickstart            # ./smalltalk-data/quickstart.db
//! cargo run -p smalltalk --example quickstart -- URL     # any storage URL
//! ```

use std::time::Duration;

use anyhow::Context;
use smalltalk::{
    AgentId, AgentState, AppendGuard, Expected, Message, Role, Session, SessionFilter, SessionId,
    Timestamp,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite://smalltalk-data/quickstart.db".to_owned());
    let store = smalltalk::open(&url)
        .await
        .with_context(|| format!("opening {url}"))?;
    println!("storage: {url} ({} backend)", store.backend());

    let earlier = store.list_sessions(&SessionFilter::default()).await?;
    println!("sessions from earlier runs: {}", earlier.len());
    for summary in earlier.iter().rev().take(3) {
        println!(
            "  {}  {} messages, created {}",
            summary.id, summary.message_count, summary.created_at
        );
    }

    let now = Timestamp::now();
    let mut session = Session::new(SessionId::new(), now, Duration::from_secs(7 * 24 * 3600));
    let researcher = AgentId::parse("researcher")?;
    session
        .agent_states
        .insert(researcher.clone(), AgentState::new(researcher.clone(), now));
    session
        .metadata
        .insert("topic".into(), "quick start".into());
    let version = store.save_session(&session, Expected::Absent).await?;
    println!("created session {} (version {version})", session.id);

    let turns = [
        Message::new(Role::User, "What should we build first?", now),
        Message::new(
            Role::Assistant,
            "Sessions that survive a restart.",
            Timestamp::now(),
        )
        .with_agent(researcher),
    ];
    let appended = store
        .append_messages(session.id, &turns, AppendGuard::at_version(version))
        .await?;
    println!(
        "appended {} messages (version {})",
        turns.len(),
        appended.version
    );

    let restored = store
        .get_session(session.id)
        .await?
        .context("the session was just saved")?;
    println!("read back {} messages:", restored.messages.len());
    for message in &restored.messages {
        let who = message
            .agent_id
            .as_ref()
            .map_or("user", |agent| agent.as_str());
        println!("  [{who}] {}", message.content);
    }
    let stats = store.stats().await?;
    println!(
        "store holds {} sessions, {} messages, {} bytes of records{}",
        stats.sessions,
        stats.messages,
        stats.bytes,
        stats
            .on_disk_bytes
            .map(|bytes| format!(", {bytes} bytes on disk"))
            .unwrap_or_default()
    );
    store.close().await?;
    println!("run me again: the session above will be listed from storage");
    Ok(())
}
