//! A runtime process for the end-to-end scenarios:
//! `scenario-host URL HOST AGENT_BIN DELAY_MS ROUNDS create|standby`.
//!
//! It runs a [`Runtime`] on the store at URL (sessions, the bus, health,
//! state and groups all on it) with three agents, `alpha`, `beta` and
//! `gamma`, each a `scenario-agent` child process the health monitor
//! supervises (restarted with its saved state when it dies). A turn asks
//! its agent over the bus (`work.HOST.NAME`) and waits for its answer
//! (`reply.HOST.NAME`); the agent's new state is saved with the monitor.
//!
//! - `create`: creates a round-robin group of the three, one turn each a
//!   round, started again by every `task:completed` event (which `gamma`
//!   publishes after its turn); prints `group ID`, then runs round 1.
//! - `standby`: waits for `resume ID` on stdin, then opens that group and
//!   finishes the round a dead runtime left, from its last turn boundary.
//!
//! Either way it prints `pid NAME PID` per agent spawned, `asking NAME
//! ROUND TURN` when a turn asks, `answered NAME ROUND TURN pid=PID
//! redelivered=BOOL` when its answer comes, `ack TEXT` per committed
//! message, `refused ERROR` when a round of its own fails (a turn it
//! finished after another runtime moved the group on), and `done` once
//! round ROUNDS is over; then it exits.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Value, json};
use smalltalk::events::{Delivery, EventBus, Outcome, PublishOptions, SubscribeOptions};
use smalltalk::groups::{
    Agent, AgentError, AgentReply, AgentRequest, FailurePolicy, GroupEvent, GroupSpec, Participant,
    Termination,
};
use smalltalk::health::{AgentHealthMonitor, HealthConfig, ProcessAgent, ProcessCommand};
use smalltalk::types::{AgentState, RecoveryStrategy, TopicPattern};
use smalltalk::{AgentId, ConversationId, Runtime, Timestamp};
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

const AGENTS: [&str; 3] = ["alpha", "beta", "gamma"];

/// One line on stdout, flushed: the test acts on it.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Answers waited for, by request id.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A group agent whose work is done by a process of its own, over the bus.
#[derive(Debug)]
struct BusAgent {
    id: AgentId,
    host: String,
    bus: Arc<OnceLock<EventBus>>,
    waiting: Waiting,
    health: Arc<OnceLock<AgentHealthMonitor>>,
}

#[async_trait]
impl Agent for BusAgent {
    fn id(&self) -> &AgentId {
        &self.id
    }

    async fn respond(&self, request: AgentRequest) -> Result<AgentReply, AgentError> {
        let bus = self
            .bus
            .get()
            .ok_or_else(|| AgentError::failed("no bus yet"))?;
        let id = format!(
            "{}-{}-{}-{}",
            request.group_id,
            request.round,
            request.turn,
            smalltalk::SessionId::new()
        );
        let (sender, answer) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id.clone(), sender);
        let work = json!({"request": id, "round": request.round, "turn": request.turn});
        let topic = format!("work.{}.{}", self.host, self.id);
        if let Err(error) = bus
            .publish(topic.as_str(), work, PublishOptions::default())
            .await
        {
            self.waiting.lock().unwrap().remove(&id);
            return Err(AgentError::failed(error.to_string()));
        }
        // Once the request is in the log: a test that stops this process
        // here stops it between two transactions.
        say(&format!(
            "asking {} {} {}",
            self.id, request.round, request.turn
        ));
        let reply = answer
            .await
            .map_err(|_| AgentError::failed("the reply channel closed"))?;
        say(&format!(
            "answered {} {} {} pid={} redelivered={}",
            self.id, request.round, request.turn, reply["pid"], reply["redelivered"]
        ));
        // Its state, saved for its next life.
        if let Some(health) = self.health.get() {
            let mut state = AgentState::new(self.id.clone(), Timestamp::now());
            state
                .context
                .insert("answers".into(), reply["state"]["answers"].clone());
            health
                .save_state(&state)
                .await
                .map_err(|error| AgentError::failed(error.to_string()))?;
        }
        Ok(AgentReply::text(reply["text"].as_str().unwrap_or_default()))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, host, agent_bin, delay, rounds, mode] = args.as_slice() else {
        bail!("usage: scenario-host URL HOST AGENT_BIN DELAY_MS ROUNDS create|standby");
    };
    let rounds: u64 = rounds.parse().context("ROUNDS")?;
    let bus_cell = Arc::new(OnceLock::new());
    let health_cell = Arc::new(OnceLock::new());
    let waiting: Waiting = Waiting::default();
    let health = HealthConfig {
        heartbeat_interval: Duration::from_millis(100),
        activity_timeout: Duration::from_millis(500),
        max_missed: 4,
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(400),
        restoration_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let events = smalltalk::EventBusConfig {
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let mut builder = Runtime::builder(url.as_str()).health(health).events(events);
    for name in AGENTS {
        builder = builder.agent(Arc::new(BusAgent {
            id: AgentId::parse(name)?,
            host: host.clone(),
            bus: Arc::clone(&bus_cell),
            waiting: Arc::clone(&waiting),
            health: Arc::clone(&health_cell),
        }));
    }
    let runtime = builder.build().await?;
    let bus = runtime.events().clone();
    let _ = bus_cell.set(bus.clone());
    let _ = health_cell.set(runtime.health().clone());
    let answers = Arc::clone(&waiting);
    let _replies = bus
        .subscribe(
            format!("reply.{host}.*").as_str(),
            format!("{host}-replies").as_str(),
            move |delivery: Delivery| {
                let answers = Arc::clone(&answers);
                async move {
                    if let Ok(reply) = delivery.event().payload.to_value() {
                        let id = reply["request"].as_str().unwrap_or_default().to_owned();
                        // An answer no turn waits for (a turn of another
                        // life, or of a runtime gone) is dropped.
                        if let Some(sender) = answers.lock().unwrap().remove(&id) {
                            let _ = sender.send(reply);
                        }
                    }
                    Outcome::Ack
                }
            },
            SubscribeOptions::default(),
        )
        .await?;
    // The agents' processes, supervised.
    let strategy = RecoveryStrategy {
        initial_backoff: Duration::from_millis(10),
        max_restarts: 20,
        ..Default::default()
    };
    let mut children = Vec::new();
    for name in AGENTS {
        let command = ProcessCommand {
            program: agent_bin.into(),
            args: vec![
                url.clone(),
                name.into(),
                host.clone(),
                delay.clone(),
                rounds.to_string(),
            ],
        };
        // A first life starts from nothing; later ones get their saved
        // state from the monitor.
        let agent = Arc::new(ProcessAgent::spawn(command, None).await?);
        say(&format!("pid {name} {}", agent.pid().await.unwrap_or(0)));
        runtime
            .health()
            .register(name, agent.clone(), strategy.clone(), None)?;
        children.push(agent);
    }
    let groups = runtime.groups().clone();

    let id = match mode.as_str() {
        "create" => {
            let participants = AGENTS
                .iter()
                .map(|name| Ok(Participant::new(AgentId::parse(name)?, "speaker")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let spec = GroupSpec::new(participants)
                .termination(Termination::MaxTurns(3))
                .failure(FailurePolicy {
                    timeout: Duration::from_secs(20),
                    ..FailurePolicy::default()
                })
                .triggers(vec![TopicPattern::parse("task:completed")?]);
            let group = groups.create_group(spec).await?;
            say(&format!("group {}", group.id));
            group.id
        }
        "standby" => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let line = lines.next_line().await?.context("no resume command")?;
            let id = line
                .strip_prefix("resume ")
                .context("expected `resume ID`")?;
            ConversationId::parse(id)?
        }
        other => bail!("mode must be create or standby, not {other}"),
    };
    let info = groups.open_group(id).await?;
    let mut stream = groups.subscribe(id).await?;
    let (finished_tx, finished) = oneshot::channel();
    let printer = tokio::spawn(async move {
        let mut finished_tx = Some(finished_tx);
        while let Some(event) = stream.next().await {
            match event {
                Ok(GroupEvent::RoundStarted { message, .. }) => {
                    say(&format!("user {}", message.content));
                }
                Ok(GroupEvent::Message { message, .. }) => say(&format!("ack {}", message.content)),
                Ok(GroupEvent::Terminated { round, .. }) if round >= rounds => {
                    if let Some(done) = finished_tx.take() {
                        let _ = done.send(());
                    }
                }
                Ok(_) => {}
                Err(skipped) => say(&format!("lagged {skipped}")),
            }
        }
    });
    let outcome = match (mode.as_str(), &info.record.round) {
        ("create", _) => groups.handle_message(id, "start").await.map(|_| ()),
        (_, Some(round)) => {
            say(&format!("resumed {}", round.number));
            groups.resume(id).await.map(|_| ())
        }
        (_, None) => Ok(()),
    };
    if let Err(error) = outcome {
        say(&format!("refused {error}"));
    }
    let _ = finished.await;
    say("done");
    printer.abort();
    runtime.shutdown().await?;
    // The agents' processes go with their handles.
    drop(children);
    Ok(())
}
