//! A group-conversation process for restart tests:
//!
//! - `group-worker create URL`: creates a round-robin group of three
//!   agents (`alpha`, `beta`, `gamma`), four turns a round; prints
//!   `id <uuid>`.
//! - `group-worker run URL ID TAG ROUNDS DELAY_MS`: opens the group,
//!   finishes a round a killed process left (printing `resumed <round>`),
//!   then runs ROUNDS rounds (0: forever) answering `TAG:<i>`. Each agent
//!   prints `speaking <agent> <round> <turn>` when asked, then takes
//!   DELAY_MS to answer `<agent> r<round> t<turn>`; before each turn's
//!   selection the worker prints `between <round> <turn>` and pauses
//!   DELAY_MS. After each commit it prints `user <text>` or
//!   `ack <text>`, so a test knows what was committed when it kills the
//!   process mid-turn or between turns.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::StreamExt;
use smalltalk::groups::{
    Agent, AgentError, AgentReply, AgentRequest, GroupEvent, GroupHooks, GroupManager, GroupSpec,
    Participant, Termination,
};
use smalltalk::{AgentId, ConversationId};

/// The agents' ids.
const AGENTS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Turns per round.
const TURNS: u64 = 4;

/// Answers `<agent> r<round> t<turn>` after a pause, saying when it starts.
#[derive(Debug)]
struct Speaker {
    id: AgentId,
    delay: Duration,
}

#[async_trait]
impl Agent for Speaker {
    fn id(&self) -> &AgentId {
        &self.id
    }

    async fn respond(&self, request: AgentRequest) -> Result<AgentReply, AgentError> {
        say(&format!(
            "speaking {} {} {}",
            self.id, request.round, request.turn
        ));
        tokio::time::sleep(self.delay).await;
        Ok(AgentReply::text(format!(
            "{} r{} t{}",
            self.id, request.round, request.turn
        )))
    }
}

/// One line on stdout, flushed: the test reads it before it kills.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe means the test is gone; the kill follows.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

async fn manager(url: &str, delay: Duration) -> anyhow::Result<GroupManager> {
    let store = smalltalk::open(url).await?;
    let mut builder = GroupManager::builder(store);
    for name in AGENTS {
        builder = builder.agent(Arc::new(Speaker {
            id: AgentId::parse(name)?,
            delay,
        }));
    }
    Ok(builder.build()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, url] if command == "create" => create(url).await,
        [command, url, id, tag, rounds, delay] if command == "run" => {
            let id = ConversationId::parse(id).context("ID")?;
            let rounds: u64 = rounds.parse().context("ROUNDS")?;
            let delay = Duration::from_millis(delay.parse().context("DELAY_MS")?);
            run(url, id, tag, rounds, delay).await
        }
        _ => bail!("usage: group-worker create URL | run URL ID TAG ROUNDS DELAY_MS"),
    }
}

async fn create(url: &str) -> anyhow::Result<()> {
    let groups = manager(url, Duration::ZERO).await?;
    let participants = AGENTS
        .iter()
        .map(|name| Ok(Participant::new(AgentId::parse(name)?, "speaker")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = GroupSpec::new(participants).termination(Termination::MaxTurns(TURNS));
    let group = groups.create_group(spec).await?;
    say(&format!("id {}", group.id));
    groups.close().await;
    Ok(())
}

async fn run(
    url: &str,
    id: ConversationId,
    tag: &str,
    rounds: u64,
    delay: Duration,
) -> anyhow::Result<()> {
    let groups = manager(url, delay).await?;
    let info = groups.open_group(id).await?;
    groups
        .set_hooks(
            id,
            GroupHooks::default().selector(move |context| {
                say(&format!("between {} {}", context.round, context.turn));
                // Blocking on purpose: the pause sits exactly between the
                // last commit and the next selection.
                std::thread::sleep(delay);
                None
            }),
        )
        .await?;
    let mut events = groups.subscribe(id).await?;
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(GroupEvent::RoundStarted { message, .. }) => {
                    say(&format!("user {}", message.content));
                }
                Ok(GroupEvent::Message { message, .. }) => say(&format!("ack {}", message.content)),
                Ok(_) => {}
                Err(skipped) => say(&format!("lagged {skipped}")),
            }
        }
    });
    if let Some(round) = &info.record.round {
        say(&format!("resumed {}", round.number));
        groups.resume(id).await?;
    }
    let mut index = 0;
    while rounds == 0 || index < rounds {
        groups.handle_message(id, &format!("{tag}:{index}")).await?;
        index += 1;
    }
    groups.close().await;
    // The stream ends when the group is released; every event is printed.
    printer.await?;
    say("done");
    Ok(())
}
