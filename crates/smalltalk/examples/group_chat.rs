//! A group conversation: Researcher, Writer and Reviewer answer "What are
//! the key challenges in AI alignment?".
//!
//! With `SMALLTALK_LLM_URL` set (an OpenAI-compatible endpoint: OpenAI,
//! llama.cpp's `llama-server`, vLLM, Ollama's `/v1`), the three are LLM
//! agents and the LLM chooses who speaks next; `SMALLTALK_LLM_MODEL` and
//! `SMALLTALK_LLM_API_KEY` are read too. Without it, scripted agents
//! answer, in round-robin order, and the example says so.
//!
//! The speaker's words stream as they are written; after the round the
//! transcript is read back from storage (`./smalltalk-data/group_chat.db`),
//! where every turn was saved with the group's record as it happened.
//!
//! ```text
//! cargo run -p smalltalk --example group_chat
//! SMALLTALK_LLM_URL=http://127.0.0.1:8080/v1 cargo run -p smalltalk --example group_chat
//! ```

use std::io::Write;
use std::sync::Arc;

use futures_util::StreamExt;
use smalltalk::groups::llm::{LlmClient, LlmConfig};
use smalltalk::groups::{GroupEvent, RoundEnd};
use smalltalk::{
    Agent, AgentId, GroupSpec, LlmAgent, Participant, Runtime, ScriptedAgent, Strategy, Termination,
};

const QUESTION: &str = "What are the key challenges in AI alignment?";

const TEAM: [(&str, &str, &str); 3] = [
    (
        "researcher",
        "Researcher",
        "Finds the relevant facts, open problems and sources.",
    ),
    (
        "writer",
        "Writer",
        "Turns the research into a clear, structured answer.",
    ),
    (
        "reviewer",
        "Reviewer",
        "Checks the answer for errors and gaps; says TERMINATE when it is good.",
    ),
];

const SCRIPT: [&str; 3] = [
    "Key challenges: specifying what we want (outer alignment), making sure the learned \
     system pursues it (inner alignment), scalable oversight of systems smarter than their \
     evaluators, robustness under distribution shift, and interpretability.",
    "Draft: AI alignment is hard for three reasons. We cannot fully specify our goals; \
     training may produce systems that pursue proxies of them; and as systems grow more \
     capable, checking their work gets harder. Interpretability and robust evaluation help.",
    "Review: accurate and well structured. Add that deceptive behaviour can hide \
     misalignment during evaluation. TERMINATE",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    std::fs::create_dir_all("smalltalk-data")?;
    let llm = LlmConfig::from_env();
    let mut builder = Runtime::builder("sqlite://smalltalk-data/group_chat.db");
    let strategy = match llm {
        Some(config) => {
            println!("LLM agents at {} (model {})", config.base_url, config.model);
            let client = LlmClient::new(config)?;
            for (name, role, description) in TEAM {
                let agent = LlmAgent::new(AgentId::parse(name)?, client.clone())
                    .system_prompt(format!("You are the {role}. {description} Be concise."));
                builder = builder.agent(Arc::new(agent) as Arc<dyn Agent>);
            }
            builder = builder.selector_llm(client);
            Strategy::LlmBased
        }
        None => {
            println!(
                "SMALLTALK_LLM_URL is not set: scripted agents answer (for a demo, not a model), in round-robin order."
            );
            for ((name, _, _), text) in TEAM.iter().zip(SCRIPT) {
                let agent = ScriptedAgent::new(AgentId::parse(name)?).then_reply(text);
                builder = builder.agent(Arc::new(agent) as Arc<dyn Agent>);
            }
            Strategy::RoundRobin
        }
    };
    let runtime = builder.build().await?;
    let groups = runtime.groups();
    let participants = TEAM
        .iter()
        .map(|(name, role, description)| {
            Ok(Participant::new(AgentId::parse(name)?, *role).description(*description))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = GroupSpec::new(participants)
        .strategy(strategy)
        .termination(Termination::text_mention("TERMINATE").or(Termination::MaxTurns(4)))
        .topic("AI alignment");
    let group = groups.create_group(spec).await?;
    println!("group {} (session {})\n", group.id, group.session_id);
    println!("user: {QUESTION}");

    let mut events = groups.subscribe(group.id).await?;
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(GroupEvent::SpeakerSelected { selection, .. }) => {
                    print!(
                        "\n{} [{}, {}]: ",
                        selection.agent_id, selection.strategy, selection.reason
                    );
                }
                Ok(GroupEvent::Delta { text, .. }) => print!("{text}"),
                Ok(GroupEvent::AgentFailed {
                    agent_id, error, ..
                }) => {
                    print!("\n({agent_id} failed: {error})");
                }
                Ok(GroupEvent::Terminated { end, .. }) => {
                    println!("\n\nround ended: {end}");
                    break;
                }
                Ok(_) => {}
                Err(skipped) => print!("\n({skipped} events skipped)"),
            }
            let _ = std::io::stdout().flush();
        }
    });
    let round = groups.handle_message(group.id, QUESTION).await?;
    printer.await?;
    if let RoundEnd::Condition { held } = &round.end {
        println!("because: {}", held.join(", "));
    }
    let history = groups.history(group.id).await?;
    println!("\nstored transcript ({} messages):", history.len());
    for message in &history {
        let author = message
            .agent_id
            .as_ref()
            .map_or("user", |agent| agent.as_str());
        let mut excerpt: String = message.content.chars().take(72).collect();
        if excerpt.len() < message.content.len() {
            excerpt.push_str("...");
        }
        println!("  {author}: {excerpt}");
    }
    let stats = groups.stats();
    println!(
        "\n{} turns, selection success rate {:.0}%, mean selection latency {:?}",
        stats.turns,
        stats.selection_success_rate * 100.0,
        stats.average_selection_latency
    );
    runtime.shutdown().await?;
    Ok(())
}
