//! The main job: a conversation survives a restart.
//!
//! This process writes a conversation (messages, agent states, metadata)
//! through a `SessionManager` on SQLite and prints a hash of its content.
//! Then it starts a *new process* (itself, with `restore ID`), which opens
//! the same database, restores the session by id, prints its history and
//! the hash of what it read. Both hashes must match.
//!
//! ```text
//! cargo run -p smalltalk --example restart_recovery             # ./smalltalk-data/restart.db
//! cargo run -p smalltalk --example restart_recovery -- URL      # any storage URL
//! ```

use anyhow::{Context, bail};
use smalltalk::{
    AgentId, AgentState, CreateOptions, Message, Role, SessionId, SessionManager, Timestamp,
};

const DEFAULT_URL: &str = "sqlite://smalltalk-data/restart.db";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, id, url] if command == "restore" => restore(url, id).await,
        [] => converse(DEFAULT_URL).await,
        [url] => converse(url).await,
        _ => bail!("usage: restart_recovery [STORAGE_URL]"),
    }
}

async fn open(url: &str) -> anyhow::Result<SessionManager> {
    let store = smalltalk::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    Ok(SessionManager::new(store))
}

/// First process: hold a conversation, then hand over to a new process.
async fn converse(url: &str) -> anyhow::Result<()> {
    let sessions = open(url).await?;
    println!("[writer pid {}] storage: {url}", std::process::id());
    let mut metadata = serde_json::Map::new();
    metadata.insert("topic".into(), "weekend trip".into());
    let session = sessions
        .create(CreateOptions {
            metadata,
            ..Default::default()
        })
        .await?;
    let planner = AgentId::parse("planner")?;
    let critic = AgentId::parse("critic")?;
    let turns = [
        (None, "Plan a weekend in Lisbon for two."),
        (
            Some(&planner),
            "Day 1: Alfama and the castle; day 2: Belém and LX Factory.",
        ),
        (
            Some(&critic),
            "Add a rain plan: the tile museum is indoors.",
        ),
        (Some(&planner), "Added. Trams 28 and 15 connect everything."),
    ];
    for (author, text) in turns {
        let mut message = Message::new(
            if author.is_some() {
                Role::Assistant
            } else {
                Role::User
            },
            text,
            Timestamp::now(),
        );
        message.agent_id = author.cloned();
        sessions.add_message(session.id, message).await?;
    }
    for (agent, note) in [(&planner, "itinerary v2"), (&critic, "rain plan checked")] {
        let mut state = AgentState::new(agent.clone(), Timestamp::now());
        state.context.insert("notes".into(), note.into());
        sessions.update_agent_state(session.id, state).await?;
    }
    let written = sessions.restore(session.id).await?;
    let hash = written.content_hash();
    println!(
        "[writer] session {} saved: {} messages, {} agent states, hash {hash:016x}",
        session.id,
        written.messages.len(),
        written.agent_states.len()
    );
    drop(sessions);
    println!("[writer] store closed; a new process restores the session");

    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["restore", &session.id.to_string(), url])
        .output()
        .context("starting the restoring process")?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        bail!(
            "the restoring process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let restored_hash = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.split("hash ").nth(1).map(str::to_owned))
        .context("the restoring process printed no hash")?;
    if restored_hash.trim() != format!("{hash:016x}") {
        bail!("restored content differs: {hash:016x} written, {restored_hash} read");
    }
    println!("identical: the conversation survived the restart (data in {url})");
    Ok(())
}

/// Second process: restore by id and show what came back.
async fn restore(url: &str, id: &str) -> anyhow::Result<()> {
    let sessions = open(url).await?;
    let id = SessionId::parse(id)?;
    let session = sessions.restore(id).await?;
    println!("[reader pid {}] restored session {id}:", std::process::id());
    for message in &session.messages {
        let who = message.agent_id.as_ref().map_or("user", AgentId::as_str);
        println!("  [{who}] {}", message.content);
    }
    for (agent, state) in &session.agent_states {
        println!(
            "  state of {agent}: {}",
            serde_json::Value::Object(state.context.clone())
        );
    }
    println!("[reader] hash {:016x}", session.content_hash());
    Ok(())
}
