//! A session process for restart tests:
//!
//! - `session-worker create STORAGE_URL`: creates a session with 100
//!   messages from three agents, their states and metadata; prints
//!   `id <uuid>` and `hash <hex>`, then exits.
//! - `session-worker restore STORAGE_URL ID`: restores it; prints
//!   `messages <n>` and `hash <hex>`.
//! - `session-worker append STORAGE_URL ID TAG COUNT`: appends COUNT
//!   messages `TAG:i` one call at a time (COUNT 0: forever), printing
//!   `ack TAG:i` after each call returns, so a test knows what was
//!   acknowledged when it kills the process.

use anyhow::{Context, bail};
use smalltalk::{
    AgentId, AgentState, CreateOptions, Message, Role, SessionId, SessionManager, Timestamp,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, url] if command == "create" => create(url).await,
        [command, url, id] if command == "restore" => restore(url, id).await,
        [command, url, id, tag, count] if command == "append" => append(url, id, tag, count).await,
        _ => bail!("usage: session-worker create URL | restore URL ID | append URL ID TAG COUNT"),
    }
}

async fn create(url: &str) -> anyhow::Result<()> {
    let sessions = SessionManager::new(smalltalk::open(url).await?);
    let mut metadata = serde_json::Map::new();
    metadata.insert("purpose".into(), "restart test ✓".into());
    let session = sessions
        .create(CreateOptions {
            metadata,
            ..Default::default()
        })
        .await?;
    let agents: Vec<AgentId> = ["planner", "critic", "writer"]
        .iter()
        .map(|name| AgentId::parse(name))
        .collect::<Result<_, _>>()?;
    for index in 0..100 {
        let agent = &agents[index % agents.len()];
        let message = Message::new(
            Role::Assistant,
            format!("turn {index} by {agent}: {}", "·".repeat(index)),
            Timestamp::now(),
        )
        .with_agent(agent.clone());
        sessions.add_message(session.id, message).await?;
    }
    for agent in &agents {
        let mut state = AgentState::new(agent.clone(), Timestamp::now());
        state.config = serde_json::json!({"model": "test", "temperature": 0.3});
        state
            .context
            .insert("last".into(), format!("{agent} done").into());
        sessions.update_agent_state(session.id, state).await?;
    }
    let written = sessions.restore(session.id).await?;
    println!("id {}", session.id);
    println!("hash {:016x}", written.content_hash());
    Ok(())
}

async fn restore(url: &str, id: &str) -> anyhow::Result<()> {
    let sessions = SessionManager::new(smalltalk::open(url).await?);
    let session = sessions
        .restore(SessionId::parse(id).context("ID")?)
        .await?;
    println!("messages {}", session.messages.len());
    println!("hash {:016x}", session.content_hash());
    Ok(())
}

async fn append(url: &str, id: &str, tag: &str, count: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let sessions = SessionManager::new(smalltalk::open(url).await?);
    let id = SessionId::parse(id).context("ID")?;
    let count: u64 = count.parse().context("COUNT")?;
    let mut stdout = std::io::stdout().lock();
    let mut index = 0;
    while count == 0 || index < count {
        let content = format!("{tag}:{index}");
        sessions
            .add_message(
                id,
                Message::new(Role::User, content.clone(), Timestamp::now()),
            )
            .await?;
        writeln!(stdout, "ack {content}")?;
        stdout.flush()?;
        index += 1;
    }
    Ok(())
}
