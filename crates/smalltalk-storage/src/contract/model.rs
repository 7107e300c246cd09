//! Model-based property test: random operation sequences run on a backend
//! and on [`MemoryStore`] must give the same observable
//! result at every step.
//!
//! Cases default to 32 per backend; `SMALLTALK_MODEL_CASES` overrides.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use smalltalk_types::{
    Clock, Event, EventPriority, Message, Role, Session, SessionId, SessionState, SessionSummary,
    StorageKey, Timestamp, TopicPattern,
};

use super::{Backend, test_clock};
use crate::{
    AppendGuard, AppendOutcome, Error, EventFilter, EventLogStats, Expected, LogBounds,
    MemoryStore, SessionFilter, Store,
};

const SLOTS: usize = 3;
const KEYS: usize = 3;

/// One operation on the store.
#[derive(Debug, Clone)]
enum Op {
    Save {
        slot: usize,
        expected: ExpectedOp,
        state: SessionState,
        messages: usize,
        ttl: u64,
    },
    SaveBatch {
        entries: Vec<(usize, ExpectedOp)>,
    },
    Append {
        slot: usize,
        count: usize,
        expected: Option<u64>,
        open: bool,
    },
    Summary {
        slot: usize,
    },
    Get {
        slot: usize,
    },
    Has {
        slot: usize,
    },
    Delete {
        slot: usize,
    },
    DeleteBatch {
        slots: Vec<usize>,
    },
    List {
        state: Option<SessionState>,
        after: Option<i64>,
        expired_at: Option<i64>,
        limit: Option<u32>,
        offset: u64,
    },
    DeleteHistory {
        slot: usize,
    },
    Counts,
    DeleteExpired {
        at: i64,
    },
    Set {
        key: usize,
        value: Vec<u8>,
        ttl: Option<u64>,
    },
    KvGet {
        key: usize,
    },
    KvHas {
        key: usize,
    },
    KvDelete {
        key: usize,
    },
    Advance {
        seconds: u64,
    },
    Purge,
    ClearOlderThan {
        seconds_ago: u64,
    },
    Stats,
    AppendEvents {
        count: usize,
        topic: usize,
        critical: bool,
        expected_last: Option<u64>,
    },
    ReadEvents {
        after: u64,
        pattern: Option<usize>,
        critical_only: bool,
        limit: usize,
    },
    Bounds,
    SetCursor {
        key: usize,
        position: u64,
        ahead: u64,
    },
    GetCursor {
        key: usize,
    },
    DeleteCursor {
        key: usize,
    },
    PurgeEvents {
        seconds_ago: u64,
    },
    EventStats,
}

/// Topics events are published on, and patterns to read them with.
const TOPICS: [&str; 4] = [
    "task:completed",
    "task.step.done",
    "agent:heartbeat",
    "agent.failed",
];
const PATTERNS: [&str; 4] = ["task.>", "agent:*", "task:completed", ">"];

#[derive(Debug, Clone, Copy)]
enum ExpectedOp {
    Absent,
    Version(u64),
    Any,
}

impl From<ExpectedOp> for Expected {
    fn from(op: ExpectedOp) -> Self {
        match op {
            ExpectedOp::Absent => Expected::Absent,
            ExpectedOp::Version(version) => Expected::Version(version),
            ExpectedOp::Any => Expected::Any,
        }
    }
}

fn expected_op() -> impl Strategy<Value = ExpectedOp> {
    prop_oneof![
        Just(ExpectedOp::Absent),
        (0..5_u64).prop_map(ExpectedOp::Version),
        Just(ExpectedOp::Any)
    ]
}

fn state() -> impl Strategy<Value = SessionState> {
    prop::sample::select(SessionState::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let key = 0..KEYS;
    prop_oneof![
        4 => (slot.clone(), expected_op(), state(), 0..4_usize, 1..50_u64)
            .prop_map(|(slot, expected, state, messages, ttl)| Op::Save { slot, expected, state, messages, ttl }),
        1 => prop::collection::vec((slot.clone(), expected_op()), 1..4).prop_map(|entries| Op::SaveBatch { entries }),
        3 => (slot.clone(), 0..3_usize, prop::option::of(0..5_u64), any::<bool>())
            .prop_map(|(slot, count, expected, open)| Op::Append { slot, count, expected, open }),
        1 => slot.clone().prop_map(|slot| Op::Summary { slot }),
        2 => slot.clone().prop_map(|slot| Op::Get { slot }),
        1 => slot.clone().prop_map(|slot| Op::Has { slot }),
        1 => slot.clone().prop_map(|slot| Op::Delete { slot }),
        1 => prop::collection::vec(slot.clone(), 0..4).prop_map(|slots| Op::DeleteBatch { slots }),
        2 => (prop::option::of(state()), prop::option::of(0..3_i64), prop::option::of(0..60_i64), prop::option::of(0..4_u32), 0..4_u64)
            .prop_map(|(state, after, expired_at, limit, offset)| Op::List { state, after, expired_at, limit, offset }),
        1 => slot.clone().prop_map(|slot| Op::DeleteHistory { slot }),
        1 => Just(Op::Counts),
        1 => (0..60_i64).prop_map(|at| Op::DeleteExpired { at }),
        3 => (key.clone(), prop::collection::vec(any::<u8>(), 0..16), prop::option::of(0..20_u64))
            .prop_map(|(key, value, ttl)| Op::Set { key, value, ttl }),
        2 => key.clone().prop_map(|key| Op::KvGet { key }),
        1 => key.clone().prop_map(|key| Op::KvHas { key }),
        1 => key.prop_map(|key| Op::KvDelete { key }),
        2 => (1..15_u64).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Purge),
        1 => (0..20_u64).prop_map(|seconds_ago| Op::ClearOlderThan { seconds_ago }),
        1 => Just(Op::Stats),
        3 => (0..3_usize, 0..TOPICS.len(), any::<bool>(), prop::option::of(0..8_u64))
            .prop_map(|(count, topic, critical, expected_last)| Op::AppendEvents { count, topic, critical, expected_last }),
        2 => (0..8_u64, prop::option::of(0..PATTERNS.len()), any::<bool>(), 1..6_usize)
            .prop_map(|(after, pattern, critical_only, limit)| Op::ReadEvents { after, pattern, critical_only, limit }),
        1 => Just(Op::Bounds),
        1 => (0..KEYS, 0..10_u64, 0..5_u64)
            .prop_map(|(key, position, ahead)| Op::SetCursor { key, position, ahead }),
        1 => (0..KEYS).prop_map(|key| Op::GetCursor { key }),
        1 => (0..KEYS).prop_map(|key| Op::DeleteCursor { key }),
        1 => (0..30_u64).prop_map(|seconds_ago| Op::PurgeEvents { seconds_ago }),
        1 => Just(Op::EventStats),
    ]
}

/// What an operation returned, in a form comparable across backends.
#[derive(Debug, PartialEq)]
enum Outcome {
    Unit,
    Version(u64),
    Versions(Vec<u64>),
    Session(Option<Session>),
    Bool(bool),
    Append(AppendOutcome),
    List(Vec<SessionSummary>),
    Summary(Option<SessionSummary>),
    Counts(BTreeMap<SessionState, u64>),
    Count(u64),
    Value(Option<Vec<u8>>),
    Stats {
        sessions: u64,
        messages: u64,
        kv_entries: u64,
    },
    Positions(Vec<u64>),
    Events(Vec<Event>),
    Bounds(LogBounds),
    Cursor(Option<crate::Cursor>),
    EventStats(EventLogStats),
    Err(String),
}

fn error_name(error: &Error) -> String {
    match error {
        Error::NotFound { .. } => "NotFound".into(),
        Error::AlreadyExists { .. } => "AlreadyExists".into(),
        Error::Conflict {
            expected, found, ..
        } => format!("Conflict({expected}->{found})"),
        other => format!("unexpected: {other}"),
    }
}

fn outcome<T>(result: crate::Result<T>, map: impl FnOnce(T) -> Outcome) -> Outcome {
    match result {
        Ok(value) => map(value),
        Err(error) => Outcome::Err(error_name(&error)),
    }
}

/// Case-wide fixed inputs: slot ids and keys.
struct Fixture {
    ids: Vec<SessionId>,
    keys: Vec<StorageKey>,
    base: Timestamp,
}

fn at(fixture: &Fixture, seconds: i64) -> Timestamp {
    Timestamp::from_micros(fixture.base.as_micros() + seconds * 1_000_000)
}

/// Concrete inputs for one op, built once and given to both stores.
fn session_for(
    fixture: &Fixture,
    slot: usize,
    state: SessionState,
    messages: usize,
    ttl: u64,
) -> Session {
    let created = at(fixture, slot as i64);
    let mut session = Session::new(fixture.ids[slot], created, Duration::from_secs(ttl));
    session.state = state;
    session.messages = (0..messages)
        .map(|index| Message::new(Role::User, format!("s{index}"), created))
        .collect();
    session
}

async fn apply(
    store: &dyn Store,
    fixture: &Fixture,
    op: &Op,
    inputs: &Inputs,
    clock: &dyn Clock,
) -> Outcome {
    match op {
        Op::Save { expected, .. } => outcome(
            store
                .save_session(&inputs.sessions[0], (*expected).into())
                .await,
            Outcome::Version,
        ),
        Op::SaveBatch { entries } => {
            let batch: Vec<(Session, Expected)> = entries
                .iter()
                .zip(&inputs.sessions)
                .map(|((_, expected), session)| (session.clone(), (*expected).into()))
                .collect();
            outcome(store.save_sessions(&batch).await, Outcome::Versions)
        }
        Op::Append {
            slot,
            expected,
            open,
            ..
        } => {
            let guard = AppendGuard {
                version: *expected,
                open_at: open.then(|| clock.now()),
                not_invalidated: false,
            };
            outcome(
                store
                    .append_messages(fixture.ids[*slot], &inputs.messages, guard)
                    .await,
                Outcome::Append,
            )
        }
        Op::Summary { slot } => outcome(
            store.get_session_summary(fixture.ids[*slot]).await,
            Outcome::Summary,
        ),
        Op::Get { slot } => outcome(
            store.get_session(fixture.ids[*slot]).await,
            Outcome::Session,
        ),
        Op::Has { slot } => outcome(store.has_session(fixture.ids[*slot]).await, Outcome::Bool),
        Op::Delete { slot } => outcome(
            store.delete_session(fixture.ids[*slot]).await,
            Outcome::Bool,
        ),
        Op::DeleteBatch { slots } => {
            let ids: Vec<SessionId> = slots.iter().map(|slot| fixture.ids[*slot]).collect();
            outcome(store.delete_sessions(&ids).await, Outcome::Count)
        }
        Op::DeleteHistory { slot } => outcome(
            store.delete_history(fixture.ids[*slot]).await,
            Outcome::Count,
        ),
        Op::List {
            state,
            after,
            expired_at,
            limit,
            offset,
        } => {
            let filter = SessionFilter {
                state: *state,
                created_after: after.map(|seconds| at(fixture, seconds)),
                expired_at: expired_at.map(|seconds| at(fixture, seconds)),
                limit: *limit,
                offset: *offset,
                after: None,
            };
            outcome(store.list_sessions(&filter).await, Outcome::List)
        }
        Op::Counts => outcome(store.count_sessions_by_state().await, Outcome::Counts),
        Op::DeleteExpired { at: seconds } => outcome(
            store.delete_expired_sessions(at(fixture, *seconds)).await,
            Outcome::Count,
        ),
        Op::Set { key, value, ttl } => outcome(
            store
                .set(&fixture.keys[*key], value, ttl.map(Duration::from_secs))
                .await,
            |()| Outcome::Unit,
        ),
        Op::KvGet { key } => outcome(store.get(&fixture.keys[*key]).await, Outcome::Value),
        Op::KvHas { key } => outcome(store.has(&fixture.keys[*key]).await, Outcome::Bool),
        Op::KvDelete { key } => outcome(store.delete(&fixture.keys[*key]).await, Outcome::Bool),
        Op::Advance { .. } => Outcome::Unit,
        Op::Purge => outcome(store.purge_expired().await, Outcome::Count),
        Op::ClearOlderThan { seconds_ago } => outcome(
            store
                .clear_older_than(
                    clock
                        .now()
                        .saturating_sub(Duration::from_secs(*seconds_ago)),
                )
                .await,
            Outcome::Count,
        ),
        Op::Stats => outcome(store.stats().await, |stats| Outcome::Stats {
            sessions: stats.sessions,
            messages: stats.messages,
            kv_entries: stats.kv_entries,
        }),
        Op::AppendEvents { expected_last, .. } => {
            let appended = match expected_last {
                Some(expected) => store.append_events_at(&inputs.events, *expected).await,
                None => store.append_events(&inputs.events).await,
            };
            outcome(appended, Outcome::Positions)
        }
        Op::ReadEvents {
            after,
            pattern,
            critical_only,
            limit,
        } => {
            let filter = EventFilter {
                patterns: pattern
                    .map(|index| TopicPattern::parse(PATTERNS[index]).expect("valid"))
                    .into_iter()
                    .collect(),
                priority: critical_only.then_some(EventPriority::Critical),
                ..Default::default()
            };
            outcome(
                store.read_events(*after, &filter, *limit).await,
                Outcome::Events,
            )
        }
        Op::Bounds => outcome(store.log_bounds().await, Outcome::Bounds),
        Op::SetCursor {
            key,
            position,
            ahead,
        } => outcome(
            store
                .set_cursor(
                    &fixture.keys[*key],
                    crate::Cursor {
                        position: *position,
                        live_until: position + ahead,
                    },
                )
                .await,
            |()| Outcome::Unit,
        ),
        Op::GetCursor { key } => outcome(store.cursor(&fixture.keys[*key]).await, Outcome::Cursor),
        Op::DeleteCursor { key } => outcome(
            store.delete_cursor(&fixture.keys[*key]).await,
            Outcome::Bool,
        ),
        Op::PurgeEvents { seconds_ago } => outcome(
            store
                .purge_events_before(
                    clock
                        .now()
                        .saturating_sub(Duration::from_secs(*seconds_ago)),
                )
                .await,
            Outcome::Count,
        ),
        Op::EventStats => outcome(store.event_log_stats().await, Outcome::EventStats),
    }
}

/// Inputs with random parts (message ids), made once per op.
struct Inputs {
    sessions: Vec<Session>,
    messages: Vec<Message>,
    events: Vec<Event>,
}

fn inputs_for(fixture: &Fixture, op: &Op, clock: &dyn Clock) -> Inputs {
    let mut inputs = Inputs {
        sessions: Vec::new(),
        messages: Vec::new(),
        events: Vec::new(),
    };
    match op {
        Op::Save {
            slot,
            state,
            messages,
            ttl,
            ..
        } => {
            inputs
                .sessions
                .push(session_for(fixture, *slot, *state, *messages, *ttl));
        }
        Op::SaveBatch { entries } => {
            for (slot, _) in entries {
                inputs
                    .sessions
                    .push(session_for(fixture, *slot, SessionState::Active, 1, 30));
            }
        }
        Op::AppendEvents {
            count,
            topic,
            critical,
            ..
        } => {
            let priority = if *critical {
                EventPriority::Critical
            } else {
                EventPriority::Normal
            };
            let mut events = Vec::with_capacity(*count);
            for index in 0..*count {
                let mut event =
                    super::events::event(TOPICS[(topic + index) % TOPICS.len()], 0, priority);
                event.timestamp = clock.now();
                events.push(event);
            }
            inputs.events = events;
        }
        Op::Append { count, .. } => {
            inputs.messages = (0..*count)
                .map(|index| Message::new(Role::Assistant, format!("a{index}"), clock.now()))
                .collect();
        }
        _ => {}
    }
    inputs
}

/// Where failing cases are kept (relative to the crate running the suite:
/// cargo runs tests from the package's directory).
const REGRESSIONS: &str = "proptest-regressions/model.txt";

/// Runs the property for the backend made by `fresh` (one fresh location
/// per case). Skips if `fresh` returns `None`.
pub fn check<F, Fut, B>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<B>>,
    B: Backend,
{
    let strategy = prop::collection::vec(op(), 1..40);
    super::run_model(&fresh, REGRESSIONS, &strategy, |runtime, ops| {
        runtime.block_on(async {
            let backend = fresh().await.expect("backend became unavailable");
            let clock = test_clock();
            let subject = backend.open(clock.clone()).await;
            let model = MemoryStore::with_clock(clock.clone());
            let fixture = Fixture {
                ids: (0..SLOTS).map(|_| SessionId::new()).collect(),
                keys: (0..KEYS)
                    .map(|index| StorageKey::parse(&format!("key-{index}")).expect("valid"))
                    .collect(),
                base: clock.now(),
            };
            for (step, op) in ops.iter().enumerate() {
                if let Op::Advance { seconds } = op {
                    clock.advance(Duration::from_secs(*seconds));
                }
                let inputs = inputs_for(&fixture, op, clock.as_ref());
                let expected = apply(&model, &fixture, op, &inputs, clock.as_ref()).await;
                let actual = apply(subject.as_ref(), &fixture, op, &inputs, clock.as_ref()).await;
                if expected != actual {
                    subject.close().await.ok();
                    return Err(TestCaseError::fail(format!(
                        "step {step} {op:?}: model gave {expected:?}, backend gave {actual:?}"
                    )));
                }
            }
            subject.close().await.ok();
            Ok(())
        })
    });
}
