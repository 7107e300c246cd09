//! The group manager above storage: rounds, selection, throttling,
//! termination, failures, views, events, persistence and the
//! single-writer guarantee, on memory, SQLite and (when reachable)
//! PostgreSQL. LLM paths are tested against a real HTTP server in the
//! workspace's `tests` crate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use smalltalk_groups::{
    AfterRetries, Agent, Error, FailurePolicy, GroupEvent, GroupHooks, GroupManager, GroupSpec,
    GroupsConfig, HistoryView, Participant, RoundEnd, ScriptedAgent, SelectionSource, Step,
    Strategy, Summarizer, Task, TaskStatus, Termination, Throttle, Transitions, Trigger,
};
use smalltalk_storage::contract::{Backend, MemoryBackend, PgBackend, SqliteBackend, test_clock};
use smalltalk_storage::{SessionStore, Store};
use smalltalk_types::{
    AgentFailureReport, AgentFailureSink, AgentId, EventId, Message, RecordingEventSink, Role,
    Topic,
};

fn id(name: &str) -> AgentId {
    AgentId::parse(name).unwrap()
}

fn trio() -> Vec<Participant> {
    vec![
        Participant::new(id("researcher"), "research").description("finds facts"),
        Participant::new(id("writer"), "writing").description("drafts"),
        Participant::new(id("reviewer"), "review").description("checks"),
    ]
}

fn scripted(names: &[&str]) -> Vec<Arc<dyn Agent>> {
    names
        .iter()
        .map(|name| Arc::new(ScriptedAgent::new(id(name))) as Arc<dyn Agent>)
        .collect()
}

fn manager_with(store: Arc<dyn Store>, agents: Vec<Arc<dyn Agent>>) -> GroupManager {
    let mut builder = GroupManager::builder(store);
    for agent in agents {
        builder = builder.agent(agent);
    }
    builder.build().unwrap()
}

fn manager(agents: Vec<Arc<dyn Agent>>) -> GroupManager {
    manager_with(Arc::new(smalltalk_storage::MemoryStore::new()), agents)
}

fn speakers(outcome: &smalltalk_groups::RoundOutcome) -> Vec<String> {
    outcome
        .turns
        .iter()
        .map(|turn| turn.selection.agent_id.to_string())
        .collect()
}

/// A store that can be opened again, as a new process would.
enum Bed {
    Memory(Arc<dyn Store>),
    Sqlite(SqliteBackend),
    Postgres(PgBackend),
}

impl Bed {
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Bed::Memory(store) => Arc::clone(store),
            Bed::Sqlite(backend) => backend.open(test_clock()).await,
            Bed::Postgres(backend) => backend.open(test_clock()).await,
        }
    }
}

async fn beds() -> Vec<(&'static str, Bed)> {
    let memory = MemoryBackend::fresh()
        .await
        .unwrap()
        .open(test_clock())
        .await;
    let mut beds = vec![
        ("memory", Bed::Memory(memory)),
        ("sqlite", Bed::Sqlite(SqliteBackend::fresh().await.unwrap())),
    ];
    if let Some(postgres) = PgBackend::fresh().await {
        beds.push(("postgres", Bed::Postgres(postgres)));
    }
    beds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_resumes_where_the_old_one_stopped() {
    for (name, bed) in beds().await {
        eprintln!("{name}");
        let store = bed.open().await;
        let groups = manager_with(
            Arc::clone(&store),
            scripted(&["researcher", "writer", "reviewer"]),
        );
        let spec = GroupSpec::new(trio()).termination(Termination::MaxTurns(2));
        let group = groups.create_group(spec).await.unwrap();
        let first = groups
            .handle_message(group.id, "first question")
            .await
            .unwrap();
        assert_eq!(speakers(&first), ["researcher", "writer"]);
        let before = groups.group(group.id).await.unwrap();
        drop(groups);
        if !matches!(bed, Bed::Memory(_)) {
            store.close().await.unwrap();
        }

        let store = bed.open().await;
        let groups = manager_with(
            Arc::clone(&store),
            scripted(&["researcher", "writer", "reviewer"]),
        );
        let reopened = groups.open_group(group.id).await.unwrap();
        assert_eq!(
            reopened.record, before.record,
            "{name}: every counter survives"
        );
        assert_eq!(reopened.version, before.version);
        let second = groups
            .handle_message(group.id, "second question")
            .await
            .unwrap();
        assert_eq!(
            speakers(&second),
            ["reviewer", "researcher"],
            "{name}: round-robin goes on after the last speaker"
        );
        assert_eq!(second.round, 2);
        let history = groups.history(group.id).await.unwrap();
        let texts: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            texts,
            [
                "first question",
                "researcher: turn 1 of round 1",
                "writer: turn 2 of round 1",
                "second question",
                "reviewer: turn 1 of round 2",
                "researcher: turn 2 of round 2",
            ],
            "{name}"
        );
        let stored = store
            .get_session(smalltalk_groups::session_of(group.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.messages, history,
            "{name}: the history is the session's"
        );
        let record = groups.group(group.id).await.unwrap().record;
        assert_eq!(
            (record.turns, record.messages, record.rounds_completed),
            (4, 6, 2)
        );
        store.close().await.unwrap();
    }
}

fn slow_trio() -> Vec<Arc<dyn Agent>> {
    ["researcher", "writer", "reviewer"]
        .iter()
        .map(|agent| {
            Arc::new(ScriptedAgent::new(id(agent)).then(Step::Delay(
                Duration::from_millis(50),
                Box::new(Step::Reply(format!("{agent} (slow)"))),
            ))) as Arc<dyn Agent>
        })
        .collect()
}

/// Leaves a round in progress in storage: its first speaker is asked and
/// never answers, and the round is dropped mid-turn.
async fn round_left_in_progress(store: Arc<dyn Store>) -> smalltalk_types::ConversationId {
    let hanging: Vec<Arc<dyn Agent>> = ["researcher", "writer", "reviewer"]
        .iter()
        .map(|agent| Arc::new(ScriptedAgent::new(id(agent)).then(Step::Hang)) as Arc<dyn Agent>)
        .collect();
    let groups = manager_with(store, hanging);
    let group = groups
        .create_group(GroupSpec::new(trio()).termination(Termination::MaxTurns(1)))
        .await
        .unwrap();
    let mut events = groups.subscribe(group.id).await.unwrap();
    let running = {
        let groups = groups.clone();
        tokio::spawn(async move { groups.handle_message(group.id, "question").await })
    };
    while let Some(Ok(event)) = events.next().await {
        if matches!(event, GroupEvent::SpeakerSelected { .. }) {
            break;
        }
    }
    running.abort();
    let _ = running.await;
    group.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_never_both_commit_a_turn() {
    for (name, bed) in beds().await {
        eprintln!("{name}");
        let store = bed.open().await;
        let other_store = bed.open().await;
        // Both resume the same unfinished round at the same version: the
        // record's compare-and-swap lets exactly one commit the turn.
        let group = round_left_in_progress(Arc::clone(&store)).await;
        let a = manager_with(Arc::clone(&store), slow_trio());
        let b = manager_with(Arc::clone(&other_store), slow_trio());
        a.open_group(group).await.unwrap();
        b.open_group(group).await.unwrap();
        let (left, right) = tokio::join!(a.resume(group), b.resume(group));
        let results = [left, right];
        let won = results.iter().filter(|result| result.is_ok()).count();
        let lost = results
            .iter()
            .filter(|result| matches!(result, Err(Error::Conflict { .. })))
            .count();
        assert_eq!((won, lost), (1, 1), "{name}: {results:?}");
        let fresh = manager_with(Arc::clone(&store), scripted(&["researcher"]));
        let stored = fresh.history(group).await.unwrap();
        let texts: Vec<&str> = stored.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            texts,
            ["question", "researcher (slow)"],
            "{name}: one answer stored"
        );
        assert_eq!(a.history(group).await.unwrap(), stored);
        assert_eq!(
            b.history(group).await.unwrap(),
            stored,
            "{name}: the loser read what won"
        );
        fresh.release(group).await;

        // Two rounds started at once: one runs, the other is refused
        // (a conflict, or the round the first one started), storing nothing.
        let (left, right) = tokio::join!(
            a.handle_message(group, "from a"),
            b.handle_message(group, "from b")
        );
        let results = [left, right];
        assert_eq!(
            results.iter().filter(|result| result.is_ok()).count(),
            1,
            "{name}: {results:?}"
        );
        assert!(
            results.iter().any(|result| matches!(
                result,
                Err(Error::Conflict { .. } | Error::RoundInProgress { .. })
            )),
            "{name}: {results:?}"
        );
        let stored = fresh.history(group).await.unwrap();
        assert_eq!(stored.len(), 4, "{name}: {stored:?}");
        // The loser goes on from what was stored.
        let next = b.handle_message(group, "again from b").await.unwrap();
        assert_eq!(next.round, 3);
        store.close().await.unwrap();
        other_store.close().await.unwrap();
    }
}

#[tokio::test]
async fn an_unfinished_round_is_resumed_not_repeated() {
    let store: Arc<dyn Store> = Arc::new(smalltalk_storage::MemoryStore::new());
    let hanging: Vec<Arc<dyn Agent>> = vec![
        Arc::new(ScriptedAgent::new(id("researcher")).then_reply("facts")),
        Arc::new(ScriptedAgent::new(id("writer")).then(Step::Hang)),
        Arc::new(ScriptedAgent::new(id("reviewer"))),
    ];
    let groups = manager_with(Arc::clone(&store), hanging);
    let group = groups
        .create_group(GroupSpec::new(trio()).termination(Termination::MaxTurns(3)))
        .await
        .unwrap();
    let mut events = groups.subscribe(group.id).await.unwrap();
    let running = {
        let groups = groups.clone();
        tokio::spawn(async move { groups.handle_message(group.id, "go").await })
    };
    // Wait until the writer is asked, then kill the round mid-turn.
    loop {
        if let Some(Ok(GroupEvent::SpeakerSelected { selection, .. })) = events.next().await {
            if selection.agent_id.as_str() == "writer" {
                break;
            }
        }
    }
    running.abort();
    let _ = running.await;
    drop(groups);

    let groups = manager_with(
        Arc::clone(&store),
        scripted(&["researcher", "writer", "reviewer"]),
    );
    let open = groups.open_group(group.id).await.unwrap();
    assert_eq!(open.record.round.as_ref().unwrap().turns, 1);
    let refused = groups.handle_message(group.id, "another").await;
    assert!(
        matches!(refused, Err(Error::RoundInProgress { .. })),
        "{refused:?}"
    );
    let resumed = groups.resume(group.id).await.unwrap();
    assert_eq!(speakers(&resumed), ["writer", "reviewer"]);
    let texts: Vec<String> = groups
        .history(group.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(
        texts,
        [
            "go",
            "facts",
            "writer: turn 2 of round 1",
            "reviewer: turn 3 of round 1"
        ]
    );
    let again = groups.resume(group.id).await;
    assert!(
        matches!(again, Err(Error::NoRoundInProgress { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn throttling_caps_consecutive_turns_and_rounds() {
    let groups = manager(scripted(&["researcher", "writer", "reviewer"]));
    let spec = GroupSpec::new(trio())
        .termination(Termination::MaxTurns(100))
        .throttle(Throttle {
            max_consecutive: 3,
            cooldown_turns: 1,
            max_turns_per_round: 8,
        });
    let group = groups.create_group(spec).await.unwrap();
    // A selector that always wants the researcher.
    groups
        .set_hooks(
            group.id,
            GroupHooks::default().selector(|_| Some(id("researcher"))),
        )
        .await
        .unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(
        speakers(&outcome),
        [
            "researcher",
            "researcher",
            "researcher",
            "writer",
            "researcher",
            "researcher",
            "researcher",
            "writer"
        ]
    );
    assert_eq!(outcome.end, RoundEnd::TurnLimit { limit: 8 });
    let sources: Vec<SelectionSource> = outcome.turns.iter().map(|t| t.selection.source).collect();
    assert_eq!(sources[0], SelectionSource::Custom);
    assert_eq!(
        sources[3],
        SelectionSource::Strategy,
        "the throttled pick falls to the strategy"
    );
    let stats = groups.stats();
    assert_eq!((stats.rounds, stats.turns, stats.messages), (1, 8, 9));
    assert_eq!(stats.custom_selections, 6);
    assert_eq!(
        stats.selections_by_strategy.get(&Strategy::RoundRobin),
        Some(&8)
    );
    assert_eq!(stats.selection_success_rate, 1.0);
}

#[tokio::test]
async fn priority_prefers_the_highest_then_the_least_recent() {
    let groups = manager(scripted(&["researcher", "writer", "reviewer"]));
    let mut participants = trio();
    participants[1].priority = 5;
    participants[2].priority = 5;
    let spec = GroupSpec::new(participants)
        .strategy(Strategy::Priority)
        .termination(Termination::MaxTurns(4));
    let group = groups.create_group(spec).await.unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(
        speakers(&outcome),
        ["writer", "reviewer", "writer", "reviewer"]
    );
    assert!(outcome.turns[0].selection.reason.contains("priority"));
}

#[tokio::test]
async fn no_eligible_speaker_ends_the_round_instead_of_looping() {
    let groups = manager(scripted(&["researcher", "writer"]));
    let pair = trio().into_iter().take(2).collect::<Vec<_>>();
    let spec = GroupSpec::new(pair.clone())
        .termination(Termination::MaxTurns(10))
        // After the researcher, only the researcher; but it may not repeat.
        .transitions(Transitions::Allowed(
            [
                (id("researcher"), [id("writer")].into()),
                (id("writer"), [id("writer")].into()),
            ]
            .into(),
        ))
        .throttle(Throttle {
            max_consecutive: 1,
            ..Throttle::default()
        });
    let group = groups.create_group(spec).await.unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(speakers(&outcome), ["researcher", "writer"]);
    assert_eq!(outcome.end, RoundEnd::NoEligibleSpeaker);
    // Named in the condition, it reads as the condition.
    let spec = GroupSpec::new(pair)
        .termination(Termination::NoEligibleSpeaker.or(Termination::MaxTurns(10)))
        .transitions(Transitions::no_repeats([&id("researcher"), &id("writer")]))
        .throttle(Throttle::default());
    let group = groups.create_group(spec).await.unwrap();
    groups
        .set_hooks(
            group.id,
            GroupHooks::default().filter(|context, _| context.turn == 1),
        )
        .await
        .unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(outcome.turns.len(), 1);
    assert_eq!(
        outcome.end,
        RoundEnd::Condition {
            held: vec!["no eligible speaker".into()]
        }
    );
}

#[tokio::test]
async fn termination_conditions_end_rounds_and_groups() {
    let agents: Vec<Arc<dyn Agent>> = vec![
        Arc::new(
            ScriptedAgent::new(id("researcher"))
                .then(Step::ReplyWithUsage("a".into(), 40))
                .then(Step::ReplyWithUsage("b".into(), 40)),
        ),
        Arc::new(
            ScriptedAgent::new(id("writer"))
                .then(Step::ReplyWithUsage("all DONE here".into(), 40))
                .then(Step::ReplyWithUsage("c".into(), 40)),
        ),
        Arc::new(ScriptedAgent::new(id("reviewer"))),
    ];
    let groups = manager(agents);
    let spec = GroupSpec::new(trio()).termination(
        Termination::text_mention("DONE")
            .or(Termination::MaxTurns(3))
            .or(Termination::TokenBudget(100)),
    );
    let group = groups.create_group(spec).await.unwrap();
    let first = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(speakers(&first), ["researcher", "writer"]);
    assert_eq!(
        first.end,
        RoundEnd::Condition {
            held: vec!["mentions \"DONE\"".into()]
        }
    );
    let second = groups.handle_message(group.id, "more").await.unwrap();
    assert_eq!(speakers(&second), ["reviewer", "researcher"]);
    assert_eq!(
        second.end,
        RoundEnd::Condition {
            held: vec!["at most 100 tokens".into()]
        },
        "120 tokens used"
    );
    let finished = groups.handle_message(group.id, "even more").await;
    assert!(
        matches!(&finished, Err(Error::Finished { reason, .. }) if reason.contains("100 tokens")),
        "{finished:?}"
    );

    let groups = manager(scripted(&["researcher", "writer", "reviewer"]));
    let spec =
        GroupSpec::new(trio()).termination(Termination::MaxTurns(1).or(Termination::MaxRounds(2)));
    let group = groups.create_group(spec).await.unwrap();
    groups.handle_message(group.id, "1").await.unwrap();
    groups.handle_message(group.id, "2").await.unwrap();
    let third = groups.handle_message(group.id, "3").await;
    assert!(matches!(third, Err(Error::Finished { .. })), "{third:?}");
    let record = groups.group(group.id).await.unwrap().record;
    assert_eq!(record.rounds_completed, 2);
    assert!(record.finished.unwrap().contains("max 2 rounds"));
}

#[tokio::test]
async fn a_timeout_and_an_external_stop_cut_the_turn_under_way() {
    let agents: Vec<Arc<dyn Agent>> = vec![
        Arc::new(
            ScriptedAgent::new(id("researcher"))
                .then_reply("fast")
                .then(Step::Hang),
        ),
        Arc::new(ScriptedAgent::new(id("writer")).then(Step::Hang)),
        Arc::new(ScriptedAgent::new(id("reviewer"))),
        Arc::new(ScriptedAgent::new(id("editor")).then(Step::Hang)),
    ];
    let groups = manager(agents);
    let spec = GroupSpec::new(trio())
        .termination(Termination::MaxTurns(3).or(Termination::Timeout(Duration::from_millis(200))));
    let group = groups.create_group(spec).await.unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(speakers(&outcome), ["researcher"]);
    assert_eq!(
        outcome.end,
        RoundEnd::Condition {
            held: vec!["timeout 200ms".into()]
        }
    );
    assert_eq!(
        groups.history(group.id).await.unwrap().len(),
        2,
        "the cut turn stored nothing"
    );

    let spec = GroupSpec::new(trio()).termination(Termination::MaxTurns(3));
    let group = groups.create_group(spec).await.unwrap();
    let mut events = groups.subscribe(group.id).await.unwrap();
    let running = {
        let groups = groups.clone();
        tokio::spawn(async move { groups.handle_message(group.id, "go").await })
    };
    // The researcher hangs now: stop once it is asked.
    while let Some(Ok(event)) = events.next().await {
        if matches!(event, GroupEvent::SpeakerSelected { .. }) {
            break;
        }
    }
    assert!(groups.stop(group.id));
    let outcome = running.await.unwrap().unwrap();
    assert_eq!(outcome.end, RoundEnd::Stopped);
    assert!(outcome.turns.is_empty());
    assert_eq!(groups.history(group.id).await.unwrap().len(), 1);
    // The next round is not stopped.
    let next = groups.handle_message(group.id, "again").await.unwrap();
    assert_eq!(speakers(&next), ["researcher", "writer", "reviewer"]);

    // Named in the condition, the stop is what held.
    let spec = GroupSpec::new(vec![
        Participant::new(id("editor"), "editing"),
        Participant::new(id("reviewer"), "review"),
    ])
    .termination(Termination::MaxTurns(3).or(Termination::ExternalStop));
    let group = groups.create_group(spec).await.unwrap();
    let mut events = groups.subscribe(group.id).await.unwrap();
    let running = {
        let groups = groups.clone();
        tokio::spawn(async move { groups.handle_message(group.id, "go").await })
    };
    while let Some(Ok(event)) = events.next().await {
        if matches!(event, GroupEvent::SpeakerSelected { .. }) {
            break;
        }
    }
    assert!(groups.stop(group.id));
    let outcome = running.await.unwrap().unwrap();
    assert_eq!(
        outcome.end,
        RoundEnd::Condition {
            held: vec!["external stop".into()]
        }
    );
}

#[tokio::test]
async fn a_failing_agent_is_skipped_and_reported_and_all_failing_is_an_error() {
    #[derive(Debug, Default)]
    struct Reports(Mutex<Vec<AgentFailureReport>>);
    #[async_trait::async_trait]
    impl AgentFailureSink for Reports {
        async fn agent_failed(&self, report: AgentFailureReport) {
            self.0.lock().unwrap().push(report);
        }
    }
    let reports = Arc::new(Reports::default());
    let writer = Arc::new(
        ScriptedAgent::new(id("writer"))
            .then_fail("model overloaded")
            .then_fail("model overloaded again"),
    );
    let store: Arc<dyn Store> = Arc::new(smalltalk_storage::MemoryStore::new());
    let groups = GroupManager::builder(store)
        .agent(Arc::new(ScriptedAgent::new(id("researcher"))))
        .agent(writer.clone())
        .agent(Arc::new(ScriptedAgent::new(id("reviewer"))))
        .failures(reports.clone())
        .build()
        .unwrap();
    let fast_retry = FailurePolicy {
        retries: 1,
        backoff: smalltalk_types::Backoff::constant(Duration::from_millis(1)),
        ..FailurePolicy::default()
    };
    let spec = GroupSpec::new(trio())
        .termination(Termination::MaxTurns(3))
        .failure(fast_retry);
    let group = groups.create_group(spec).await.unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(speakers(&outcome), ["researcher", "reviewer", "researcher"]);
    assert_eq!(
        outcome.turns[1].failed,
        [id("writer")],
        "the writer failed turn 2"
    );
    assert_eq!(writer.calls(), 2, "asked once and retried once");
    let reports = reports.0.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "reported once, after the retries gave up");
    assert_eq!(reports[0].attempts, 2);
    assert!(reports[0].error.contains("again"));
    assert!(!reports[0].counts_toward_degradation, "off by default");

    // Everyone fails: a typed error, the round ended and stored.
    let failing: Vec<Arc<dyn Agent>> = ["researcher", "writer", "reviewer"]
        .iter()
        .map(|name| {
            Arc::new(
                ScriptedAgent::new(id(name))
                    .then_fail("down")
                    .then_fail("down"),
            ) as Arc<dyn Agent>
        })
        .collect();
    let groups = manager(failing);
    let spec = GroupSpec::new(trio()).failure(fast_retry);
    let group = groups.create_group(spec).await.unwrap();
    let failed = groups.handle_message(group.id, "go").await;
    match failed {
        Err(Error::AllAgentsFailed { failures }) => assert_eq!(failures.len(), 3),
        other => panic!("{other:?}"),
    }
    let record = groups.group(group.id).await.unwrap().record;
    assert!(record.round.is_none());
    assert!(matches!(
        record.last_round.unwrap().end,
        RoundEnd::Failed { .. }
    ));
    // They recovered: the group goes on.
    let next = groups.handle_message(group.id, "again").await.unwrap();
    assert_eq!(next.turns.len(), 3);

    // Failing the turn is a policy too.
    let groups = manager(vec![
        Arc::new(ScriptedAgent::new(id("researcher")).then_fail("boom")) as Arc<dyn Agent>,
        Arc::new(ScriptedAgent::new(id("writer"))),
    ]);
    let spec = GroupSpec::new(trio().into_iter().take(2).collect()).failure(FailurePolicy {
        retries: 0,
        then: AfterRetries::FailTurn,
        ..FailurePolicy::default()
    });
    let group = groups.create_group(spec).await.unwrap();
    let failed = groups.handle_message(group.id, "go").await;
    assert!(
        matches!(&failed, Err(Error::AgentFailed { agent_id, attempts: 1, .. }) if agent_id.as_str() == "researcher"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_panicking_agent_or_hook_fails_only_itself() {
    #[derive(Debug)]
    struct Panics(AgentId);
    #[async_trait::async_trait]
    impl Agent for Panics {
        fn id(&self) -> &AgentId {
            &self.0
        }
        async fn respond(
            &self,
            _: smalltalk_groups::AgentRequest,
        ) -> Result<smalltalk_groups::AgentReply, smalltalk_groups::AgentError> {
            panic!("index out of bounds in the agent");
        }
    }
    let mut agents = scripted(&["researcher", "reviewer"]);
    agents.push(Arc::new(Panics(id("writer"))));
    let groups = manager(agents);
    let spec = GroupSpec::new(trio())
        .termination(Termination::MaxTurns(2))
        .failure(FailurePolicy {
            retries: 0,
            ..FailurePolicy::default()
        });
    let group = groups.create_group(spec).await.unwrap();
    let mut events = groups.subscribe(group.id).await.unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(speakers(&outcome), ["researcher", "reviewer"]);
    assert_eq!(outcome.turns[1].failed, [id("writer")]);
    let mut failure = None;
    while let Some(Ok(event)) = events.next().await {
        match event {
            GroupEvent::AgentFailed { error, .. } => failure = Some(error),
            GroupEvent::Terminated { .. } => break,
            _ => {}
        }
    }
    let failure = failure.expect("the panic is an agent failure");
    assert!(
        failure.contains("panicked: index out of bounds in the agent"),
        "{failure}"
    );

    // A hook that panics stands aside: the strategy chooses, and a filter
    // that panics lets no one through, so the round ends.
    groups
        .set_hooks(
            group.id,
            GroupHooks::default().selector(|_| panic!("selector bug")),
        )
        .await
        .unwrap();
    let outcome = groups.handle_message(group.id, "again").await.unwrap();
    assert_eq!(outcome.turns.len(), 2);
    groups
        .set_hooks(
            group.id,
            GroupHooks::default().filter(|_, _| panic!("filter bug")),
        )
        .await
        .unwrap();
    let outcome = groups.handle_message(group.id, "once more").await.unwrap();
    assert_eq!(outcome.end, RoundEnd::NoEligibleSpeaker);
}

#[tokio::test]
async fn an_agent_that_never_answers_times_out() {
    let groups = manager(vec![
        Arc::new(ScriptedAgent::new(id("researcher")).then(Step::Hang)) as Arc<dyn Agent>,
        Arc::new(ScriptedAgent::new(id("writer"))),
    ]);
    let spec = GroupSpec::new(trio().into_iter().take(2).collect())
        .termination(Termination::MaxTurns(1))
        .failure(FailurePolicy {
            timeout: Duration::from_millis(50),
            retries: 0,
            ..FailurePolicy::default()
        });
    let group = groups.create_group(spec).await.unwrap();
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(speakers(&outcome), ["writer"]);
    assert_eq!(outcome.turns[0].failed, [id("researcher")]);
}

#[tokio::test]
async fn each_agent_sees_its_own_window_or_a_summary() {
    #[derive(Debug)]
    struct Counting;
    #[async_trait::async_trait]
    impl Summarizer for Counting {
        async fn summarize(
            &self,
            _group: smalltalk_types::ConversationId,
            _agent: &AgentId,
            earlier: &[Message],
        ) -> Result<String, smalltalk_groups::AgentError> {
            Ok(format!("{} earlier messages", earlier.len()))
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = |name: &'static str| {
        let seen = Arc::clone(&seen);
        Arc::new(ScriptedAgent::new(id(name)).responder(move |request| {
            seen.lock()
                .unwrap()
                .push((name, request.history.len(), request.summary.clone()));
            format!("{name} speaks")
        })) as Arc<dyn Agent>
    };
    let store: Arc<dyn Store> = Arc::new(smalltalk_storage::MemoryStore::new());
    let groups = GroupManager::builder(store)
        .agent(recorder("researcher"))
        .agent(recorder("writer"))
        .summarizer(Arc::new(Counting))
        .build()
        .unwrap();
    let mut pair: Vec<Participant> = trio().into_iter().take(2).collect();
    pair[1] = pair[1].clone().view(HistoryView::Summary(2));
    let spec = GroupSpec::new(pair)
        .view(HistoryView::Window(1))
        .termination(Termination::MaxTurns(4));
    let group = groups.create_group(spec).await.unwrap();
    groups.handle_message(group.id, "go").await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("researcher", 1, None),
            ("writer", 2, None),
            ("researcher", 1, None),
            ("writer", 2, Some("2 earlier messages".into())),
        ]
    );
}

#[tokio::test]
async fn turn_events_stream_in_order_and_announce_ids_only() {
    let sink = Arc::new(RecordingEventSink::default());
    let store: Arc<dyn Store> = Arc::new(smalltalk_storage::MemoryStore::new());
    let groups = GroupManager::builder(store)
        .agent(Arc::new(
            ScriptedAgent::new(id("researcher")).then_reply("secret findings here"),
        ))
        .agent(Arc::new(ScriptedAgent::new(id("writer"))))
        .events(sink.clone())
        .build()
        .unwrap();
    let spec = GroupSpec::new(trio().into_iter().take(2).collect());
    let group = groups.create_group(spec).await.unwrap();
    let mut events = groups.subscribe(group.id).await.unwrap();
    groups.handle_message(group.id, "go").await.unwrap();
    let mut names = Vec::new();
    let mut streamed = String::new();
    while let Some(Ok(event)) = events.next().await {
        if let GroupEvent::Delta { text, turn: 1, .. } = &event {
            streamed.push_str(text);
        }
        names.push(event.name());
        if matches!(event, GroupEvent::Terminated { .. }) {
            break;
        }
    }
    names.dedup();
    assert_eq!(
        names,
        [
            "round-started",
            "speaker-selected",
            "delta",
            "message",
            "speaker-selected",
            "delta",
            "message",
            "terminated"
        ]
    );
    assert_eq!(streamed, "secret findings here");
    let topics = sink.topics();
    assert_eq!(
        topics,
        [
            "group:created",
            "group:round-started",
            "group:speaker-selected",
            "group:message",
            "group:speaker-selected",
            "group:message",
            "group:round-ended"
        ]
    );
    for announcement in sink.announcements() {
        assert_eq!(announcement.conversation_id, Some(group.id));
        assert!(
            !announcement.payload.to_string().contains("secret"),
            "ids, not content"
        );
    }
}

#[tokio::test]
async fn shared_context_topic_and_workflow_are_saved_with_the_group() {
    let groups = manager(vec![
        Arc::new(
            ScriptedAgent::new(id("researcher")).then(Step::ReplyWithPatch(
                "found".into(),
                json!({"sources": 3, "draft": null}),
            )),
        ) as Arc<dyn Agent>,
        Arc::new(ScriptedAgent::new(id("writer"))),
    ]);
    let spec = GroupSpec::new(trio().into_iter().take(2).collect())
        .termination(Termination::MaxTurns(1))
        .topic("alignment");
    let group = groups.create_group(spec).await.unwrap();
    groups
        .update_shared_context(group.id, json!({"goal": "report", "draft": "v0"}))
        .await
        .unwrap();
    let refused = groups.update_shared_context(group.id, json!([1])).await;
    assert!(matches!(refused, Err(Error::InvalidInput { .. })));
    groups.handle_message(group.id, "go").await.unwrap();
    groups
        .add_task(
            group.id,
            Task::new("research", "find sources").assign(id("researcher")),
        )
        .await
        .unwrap();
    groups
        .add_task(group.id, Task::new("draft", "write").after("research"))
        .await
        .unwrap();
    let blocked = groups
        .set_task_status(group.id, "draft", TaskStatus::Completed)
        .await;
    assert!(
        matches!(blocked, Err(Error::Workflow { .. })),
        "{blocked:?}"
    );
    groups
        .set_task_status(group.id, "research", TaskStatus::Completed)
        .await
        .unwrap();
    let stranger = groups
        .add_task(group.id, Task::new("x", "y").assign(id("mallory")))
        .await;
    assert!(matches!(stranger, Err(Error::NotParticipant { .. })));
    let twice = groups
        .add_task(
            group.id,
            Task::new("twice", "y").after("research").after("research"),
        )
        .await;
    assert!(
        matches!(&twice, Err(Error::Workflow { reason }) if reason.contains("twice")),
        "{twice:?}"
    );
    let stranger = groups
        .assign_task(group.id, "draft", Some(id("mallory")))
        .await;
    assert!(matches!(stranger, Err(Error::NotParticipant { .. })));
    groups
        .assign_task(group.id, "draft", Some(id("writer")))
        .await
        .unwrap();
    // A participant who leaves hands back its unfinished tasks.
    groups.register_agent(Arc::new(ScriptedAgent::new(id("reviewer"))));
    groups
        .add_participant(group.id, Participant::new(id("reviewer"), "review"))
        .await
        .unwrap();
    groups
        .add_task(
            group.id,
            Task::new("review", "check").assign(id("reviewer")),
        )
        .await
        .unwrap();
    let after = groups
        .remove_participant(group.id, &id("reviewer"))
        .await
        .unwrap();
    assert_eq!(after.record.workflow.task("review").unwrap().assignee, None);
    groups
        .set_topic(group.id, Some("safety".into()))
        .await
        .unwrap();
    let record = groups.group(group.id).await.unwrap().record;
    assert_eq!(
        serde_json::Value::Object(record.shared_context),
        json!({"goal": "report", "sources": 3}),
        "merge-updated, the agent's patch included"
    );
    assert_eq!(record.topic.as_deref(), Some("safety"));
    assert_eq!(
        record.workflow.task("research").unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(record.workflow.ready().count(), 2);
    assert_eq!(
        record.workflow.task("draft").unwrap().assignee,
        Some(id("writer"))
    );
    assert_eq!(
        record.workflow.task("research").unwrap().assignee,
        Some(id("researcher")),
        "finished tasks keep their assignee"
    );
}

#[tokio::test]
async fn events_start_one_round_per_event() {
    let groups = manager(scripted(&["researcher", "writer"]));
    let spec = GroupSpec::new(trio().into_iter().take(2).collect())
        .termination(Termination::MaxTurns(1))
        .triggers(vec![
            smalltalk_types::TopicPattern::parse("task:*").unwrap(),
        ]);
    let group = groups.create_group(spec).await.unwrap();
    let other = groups
        .create_group(GroupSpec::new(trio().into_iter().take(2).collect()))
        .await
        .unwrap();
    let topic = Topic::parse("task:completed").unwrap();
    assert_eq!(groups.triggered_by(&topic), [group.id]);
    assert!(
        groups
            .triggered_by(&Topic::parse("agent:joined").unwrap())
            .is_empty()
    );
    let _ = other;
    let trigger = Trigger {
        event_id: EventId::new(),
        topic,
        payload: json!({"task": "research"}),
    };
    let outcome = groups
        .handle_event(group.id, &trigger)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.turns.len(), 1);
    assert!(
        groups
            .handle_event(group.id, &trigger)
            .await
            .unwrap()
            .is_none(),
        "delivered twice, one round"
    );
    let history = groups.history(group.id).await.unwrap();
    assert_eq!(history[0].role, Role::System);
    assert!(history[0].content.contains("task:completed"));
    assert_eq!(history.len(), 2);
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let names = [
        "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10",
    ];
    let groups = manager(scripted(&names));
    let participant = |name: &str| Participant::new(id(name), "role");
    let count = |n: usize| {
        names[..n]
            .iter()
            .map(|name| participant(name))
            .collect::<Vec<_>>()
    };
    for n in [0, 1, 11] {
        let refused = groups.create_group(GroupSpec::new(count(n))).await;
        assert!(
            matches!(refused, Err(Error::ParticipantCount { count, min: 2, max: 10 }) if count == n),
            "{n}: {refused:?}"
        );
    }
    let refused = groups
        .create_group(GroupSpec::new(vec![participant("a0"), participant("a0")]))
        .await;
    assert!(
        matches!(refused, Err(Error::DuplicateParticipant { .. })),
        "{refused:?}"
    );
    let refused = groups
        .create_group(GroupSpec::new(vec![
            participant("a0"),
            participant("stranger"),
        ]))
        .await;
    assert!(
        matches!(&refused, Err(Error::UnknownAgent { agent_id }) if agent_id.as_str() == "stranger")
    );
    let refused = groups
        .create_group(
            GroupSpec::new(count(2)).transitions(Transitions::no_repeats([
                &id("a0"),
                &id("a1"),
                &id("a5"),
            ])),
        )
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidGroup { reason }) if reason.contains("a5")),
        "{refused:?}"
    );
    let refused = groups
        .create_group(GroupSpec::new(count(2)).view(HistoryView::Window(0)))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidGroup { .. })),
        "{refused:?}"
    );
    let refused = groups
        .create_group(GroupSpec::new(count(2)).view(HistoryView::Summary(3)))
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidGroup { reason }) if reason.contains("summarizer"))
    );
    let refused = groups
        .create_group(GroupSpec::new(count(2)).strategy(Strategy::LlmBased))
        .await;
    assert!(matches!(&refused, Err(Error::InvalidGroup { reason }) if reason.contains("LLM")));
    let refused = groups
        .create_group(GroupSpec::new(count(2)).termination(Termination::MaxTurns(0)))
        .await;
    assert!(matches!(refused, Err(Error::InvalidGroup { .. })));
    for (max_consecutive, cooldown_turns, named) in
        [(0, 1, "max_consecutive"), (3, 0, "cooldown_turns")]
    {
        let throttle = Throttle {
            max_consecutive,
            cooldown_turns,
            ..Throttle::default()
        };
        let refused = groups
            .create_group(GroupSpec::new(count(2)).throttle(throttle))
            .await;
        assert!(
            matches!(&refused, Err(Error::InvalidGroup { reason }) if reason.contains(named)),
            "{refused:?}"
        );
    }
    assert_eq!(groups.stats().active_groups, 0, "nothing was created");

    let group = groups.create_group(GroupSpec::new(count(2))).await.unwrap();
    for text in ["", "   "] {
        let refused = groups.handle_message(group.id, text).await;
        assert!(
            matches!(refused, Err(Error::InvalidInput { .. })),
            "{text:?}"
        );
    }
    let huge = "x".repeat(groups.config().max_message_bytes + 1);
    assert!(matches!(
        groups.handle_message(group.id, &huge).await,
        Err(Error::InvalidInput { .. })
    ));
    let refused = groups.remove_participant(group.id, &id("a0")).await;
    assert!(
        matches!(refused, Err(Error::ParticipantCount { count: 1, .. })),
        "{refused:?}"
    );
    let refused = groups.add_participant(group.id, participant("a1")).await;
    assert!(matches!(refused, Err(Error::DuplicateParticipant { .. })));
    let refused = groups.remove_participant(group.id, &id("a7")).await;
    assert!(matches!(refused, Err(Error::NotParticipant { .. })));
    for name in &names[2..10] {
        groups
            .add_participant(group.id, participant(name))
            .await
            .unwrap();
    }
    let refused = groups.add_participant(group.id, participant("a10")).await;
    assert!(
        matches!(refused, Err(Error::ParticipantCount { count: 11, .. })),
        "{refused:?}"
    );
    assert_eq!(
        groups
            .group(group.id)
            .await
            .unwrap()
            .record
            .spec
            .participants
            .len(),
        10
    );
    assert!(groups.history(group.id).await.unwrap().is_empty());
    let unknown = groups
        .open_group(smalltalk_types::ConversationId::new())
        .await;
    assert!(matches!(unknown, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn the_active_group_limit_is_the_groups_own() {
    let store: Arc<dyn Store> = Arc::new(smalltalk_storage::MemoryStore::new());
    let groups = GroupManager::builder(Arc::clone(&store) as Arc<dyn SessionStore>)
        .agent(Arc::new(ScriptedAgent::new(id("researcher"))))
        .agent(Arc::new(ScriptedAgent::new(id("writer"))))
        .config(GroupsConfig {
            max_active_groups: 1,
            ..GroupsConfig::default()
        })
        .build()
        .unwrap();
    let spec = || GroupSpec::new(trio().into_iter().take(2).collect());
    let first = groups.create_group(spec()).await.unwrap();
    let refused = groups.create_group(spec()).await;
    assert!(
        matches!(refused, Err(Error::AtCapacity { limit: 1 })),
        "{refused:?}"
    );
    assert!(groups.release(first.id).await);
    let second = groups.create_group(spec()).await.unwrap();
    let refused = groups.open_group(first.id).await;
    assert!(matches!(refused, Err(Error::AtCapacity { .. })));
    groups.end_group(second.id, "done").await.unwrap();
    groups.open_group(first.id).await.unwrap();
    let ended = groups.handle_message(second.id, "hello?").await;
    assert!(matches!(ended, Err(Error::AtCapacity { .. })));
    groups.release(first.id).await;
    let ended = groups.handle_message(second.id, "hello?").await;
    assert!(
        matches!(&ended, Err(Error::Finished { reason, .. }) if reason == "done"),
        "{ended:?}"
    );
    let stats = groups.stats();
    assert_eq!(stats.active_groups, 1);
    assert_eq!(stats.selection_success_rate, 1.0);
}

#[tokio::test]
async fn an_invalidated_session_closes_its_group() {
    let store: Arc<dyn Store> = Arc::new(smalltalk_storage::MemoryStore::new());
    let groups = manager_with(Arc::clone(&store), scripted(&["researcher", "writer"]));
    let group = groups
        .create_group(GroupSpec::new(trio().into_iter().take(2).collect()))
        .await
        .unwrap();
    let session_id = smalltalk_groups::session_of(group.id);
    let mut header = store.get_session_header(session_id).await.unwrap().unwrap();
    header.state = smalltalk_types::SessionState::Invalidated;
    store
        .save_session(
            &header,
            smalltalk_storage::Expected::Version(header.version),
        )
        .await
        .unwrap();
    let refused = groups.handle_message(group.id, "go").await;
    assert!(
        matches!(refused, Err(Error::SessionClosed { .. })),
        "{refused:?}"
    );
    assert_eq!(
        store
            .get_session(session_id)
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        0,
        "nothing was appended to the invalidated session"
    );
}

#[tokio::test]
async fn a_shared_context_too_deep_or_too_large_is_refused_before_it_is_stored() {
    let deep = (0..62).fold(json!(1), |inner, _| json!({ "x": inner }));
    let groups = manager(vec![
        Arc::new(
            ScriptedAgent::new(id("researcher")).then(Step::ReplyWithPatch(
                "deep".into(),
                json!({ "d": deep.clone() }),
            )),
        ) as Arc<dyn Agent>,
        Arc::new(ScriptedAgent::new(id("writer"))),
    ]);
    let spec = GroupSpec::new(trio().into_iter().take(2).collect())
        .termination(Termination::MaxTurns(1))
        .failure(FailurePolicy {
            retries: 0,
            ..FailurePolicy::default()
        });
    let group = groups.create_group(spec).await.unwrap();
    let too_deep = groups
        .update_shared_context(group.id, json!({ "d": deep }))
        .await;
    assert!(
        matches!(too_deep, Err(Error::InvalidInput { .. })),
        "{too_deep:?}"
    );
    let big = "x".repeat(smalltalk_groups::MAX_CONTEXT_BYTES);
    let too_big = groups
        .update_shared_context(group.id, json!({ "big": big }))
        .await;
    assert!(
        matches!(too_big, Err(Error::InvalidInput { .. })),
        "{too_big:?}"
    );
    // An agent's patch past the limit is a failed attempt: another speaks.
    let outcome = groups.handle_message(group.id, "go").await.unwrap();
    assert_eq!(speakers(&outcome), ["writer"]);
    assert_eq!(outcome.turns[0].failed, [id("researcher")]);
    assert!(
        groups
            .group(group.id)
            .await
            .unwrap()
            .record
            .shared_context
            .is_empty()
    );
}
