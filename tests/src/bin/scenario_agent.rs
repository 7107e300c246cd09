//! An agent in a process of its own, for the end-to-end scenarios:
//! `scenario-agent URL NAME HOST DELAY_MS ROUNDS`.
//!
//! - On stdin/stdout it speaks the health monitor's JSON-lines protocol
//!   (`smalltalk_health::process`): heartbeats, probes, and `restore` with
//!   its saved state (`context.answers`: how many answers it gave in all
//!   its lives). It exits when stdin closes (its host is gone).
//! - Its work comes over the event bus, on the store at URL: requests on
//!   `work.HOST.NAME` (a durable subscription with full replay, so what
//!   was published while it was dead is delivered when it is back), each
//!   answered after DELAY_MS on `reply.HOST.NAME` with
//!   `NAME rROUND tTURN #ANSWERS @HOST` and its new state.
//! - Each answer is recorded once in the shared versioned state
//!   (`team:progress`, a list of `NAME rROUND tTURN`), whatever the
//!   restarts.
//! - The agent `gamma` ends a round: after its answer it publishes
//!   `task:completed` (no routing named), which starts the group's next
//!   round, until round ROUNDS.
//!
//! On stderr: `NAME: speaking ROUND TURN` when a request arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use smalltalk::events::{Delivery, EventBus, Outcome, PublishOptions, SubscribeOptions};
use smalltalk::state::StateStore;
use smalltalk::storage::{EventLog, VersionedStore};
use smalltalk::types::{EventReplayPolicy, ReplayMode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The shared state key every answer is recorded under.
const PROGRESS: &str = "team:progress";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, name, host, delay, rounds] = args.as_slice() else {
        bail!("usage: scenario-agent URL NAME HOST DELAY_MS ROUNDS");
    };
    let delay = Duration::from_millis(delay.parse().context("DELAY_MS")?);
    let rounds: u64 = rounds.parse().context("ROUNDS")?;
    let store = smalltalk::open(url).await?;
    let config = smalltalk::EventBusConfig {
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let bus = EventBus::builder()
        .config(config)
        .log(Arc::clone(&store) as Arc<dyn EventLog>)
        .build()
        .await?;
    let state =
        StateStore::new(Arc::clone(&store) as Arc<dyn VersionedStore>).as_author(name.as_str())?;
    let answers = Arc::new(AtomicU64::new(0));

    // The health protocol first: `restore` gives the saved count before
    // any work is taken.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });
    let mut subscription = None;
    while let Some(line) = lines.next_line().await? {
        let Ok(request) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let id = request["id"].clone();
        let answer = match request["op"].as_str() {
            Some("heartbeat") => json!({"id": id, "ok": true, "phase": "idle",
                "progress": answers.load(Ordering::Relaxed)}),
            Some("restore") => {
                let saved = request["state"]["context"]["answers"].as_u64().unwrap_or(0);
                answers.store(saved, Ordering::Relaxed);
                if subscription.is_none() {
                    subscription = Some(
                        work(
                            &bus,
                            &state,
                            name,
                            host,
                            delay,
                            rounds,
                            Arc::clone(&answers),
                        )
                        .await?,
                    );
                }
                json!({"id": id, "ok": true})
            }
            _ => json!({"id": id, "ok": true, "reply": null}),
        };
        if out_tx.send(format!("{answer}\n")).is_err() {
            break;
        }
    }
    // The host is gone.
    drop(subscription);
    bus.close().await;
    Ok(())
}

/// Subscribes to this agent's requests and answers each.
async fn work(
    bus: &EventBus,
    state: &StateStore,
    name: &str,
    host: &str,
    delay: Duration,
    rounds: u64,
    answers: Arc<AtomicU64>,
) -> anyhow::Result<smalltalk::events::Subscription> {
    let replies = bus.clone();
    let state = state.clone();
    let me = name.to_owned();
    let host_name = host.to_owned();
    let reply_topic = format!("reply.{host}.{name}");
    let options = SubscribeOptions::default().policy(EventReplayPolicy {
        mode: ReplayMode::Full,
        ..EventReplayPolicy::default()
    });
    let subscription = bus
        .subscribe(
            format!("work.{host}.{name}").as_str(),
            format!("{host}-{name}").as_str(),
            move |delivery: Delivery| {
                let (bus, state, me, host, topic, answers) = (
                    replies.clone(),
                    state.clone(),
                    me.clone(),
                    host_name.clone(),
                    reply_topic.clone(),
                    Arc::clone(&answers),
                );
                async move {
                    let Ok(request) = delivery.event().payload.to_value() else {
                        return Outcome::Ack;
                    };
                    let (round, turn) = (
                        request["round"].as_u64().unwrap_or(0),
                        request["turn"].as_u64().unwrap_or(0),
                    );
                    eprintln!("{me}: speaking {round} {turn}");
                    tokio::time::sleep(delay).await;
                    let spoken = format!("{me} r{round} t{turn}");
                    // Recorded once, whatever the restarts: a redelivered
                    // request finds its line there.
                    let recorded = state
                        .try_update(PROGRESS, |current| {
                            let mut list = current
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default();
                            if list.iter().any(|line| line == spoken.as_str()) {
                                return Err(Skip::Already);
                            }
                            list.push(Value::from(spoken.as_str()));
                            Ok(Value::Array(list))
                        })
                        .await;
                    if let Err(Skip::Failed(error)) = recorded {
                        eprintln!("{me}: recording failed, to be redelivered: {error}");
                        return Outcome::nak();
                    }
                    let count = answers.fetch_add(1, Ordering::Relaxed) + 1;
                    let reply = json!({
                        "request": request["request"],
                        "text": format!("{spoken} #{count} @{host}"),
                        "pid": std::process::id(),
                        "state": {"answers": count},
                        "redelivered": delivery.attempt() > 1 || delivery.is_replay(),
                    });
                    if bus
                        .publish(topic.as_str(), reply, PublishOptions::default())
                        .await
                        .is_err()
                    {
                        return Outcome::nak();
                    }
                    if me == "gamma" && round < rounds {
                        let done = json!({"round": round, "by": me});
                        if bus
                            .publish("task:completed", done, PublishOptions::default())
                            .await
                            .is_err()
                        {
                            return Outcome::nak();
                        }
                    }
                    Outcome::Ack
                }
            },
            options,
        )
        .await?;
    Ok(subscription)
}

/// Why an answer's line was not recorded.
#[derive(Debug)]
enum Skip {
    /// It is there already (a redelivered request).
    Already,
    /// The state store failed.
    Failed(smalltalk::state::Error),
}

impl From<smalltalk::state::Error> for Skip {
    fn from(error: smalltalk::state::Error) -> Self {
        Skip::Failed(error)
    }
}
