//! A session process for restart tests:
//!
//! - `session-worker create STORAGE_URL`: creates a session with 100
//!   messages from three agents, their states and metadata; prints
//!   `id <uuid>` and `hash <hex>`, then exits.
//! - `session-worker restore STORAGE_URL ID`: restores it; prints
//!   `messages <n>` and `hash <hex>`.

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
        _ => bail!("usage: session-worker create URL | restore URL ID"),
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
