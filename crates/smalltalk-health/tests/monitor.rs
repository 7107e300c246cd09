//! The monitor's contract with in-process agents: a manual clock drives
//! detection (each sweep is explicit), recovery runs on its own tasks and
//! is awaited through `wait_for_state`. States and counts, never wall time.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_health::{
    AgentError, AgentFactory, AgentHealthMonitor, AgentHealthMonitorBuilder, Error, HEALTH_CHANGED,
    HealthConfig, Heartbeat, MonitoredAgent, PhaseDeadlines,
};
use smalltalk_storage::MemoryStore;
use smalltalk_storage::contract::test_clock;
use smalltalk_types::{
    AgentId, AgentPhase, AgentState, AlertSeverity, HealthState, ManualClock, RecordingAlertSink,
    RecordingEventSink, RecoveryKind, RecoveryStrategy, RestartType, Timestamp,
};

/// An agent whose answers the test controls.
#[derive(Debug, Default)]
struct Fake {
    down: AtomicBool,
    zombie: AtomicBool,
    stopped: AtomicBool,
    llm: AtomicBool,
    progress: AtomicU64,
    failing_restarts: AtomicU32,
    heartbeats: AtomicU64,
    restarted_with: Mutex<Vec<Option<AgentState>>>,
}

impl Fake {
    fn restarts(&self) -> usize {
        self.restarted_with.lock().unwrap().len()
    }
}

#[async_trait]
impl MonitoredAgent for Fake {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        if self.stopped.load(Ordering::SeqCst) {
            return Err(AgentError::Stopped);
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(AgentError::Failed("connection refused".into()));
        }
        Ok(Heartbeat {
            phase: if self.llm.load(Ordering::SeqCst) {
                AgentPhase::LlmCall
            } else {
                AgentPhase::Idle
            },
            progress: self.progress.load(Ordering::SeqCst),
        })
    }

    async fn probe(&self) -> Result<(), AgentError> {
        if self.zombie.load(Ordering::SeqCst) {
            return Err(AgentError::Failed("no answer to work".into()));
        }
        Ok(())
    }

    async fn restart(&self, state: Option<AgentState>) -> Result<(), AgentError> {
        if self
            .failing_restarts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(AgentError::Failed("restart failed".into()));
        }
        self.restarted_with.lock().unwrap().push(state);
        for flag in [&self.down, &self.zombie, &self.stopped, &self.llm] {
            flag.store(false, Ordering::SeqCst);
        }
        Ok(())
    }
}

struct Fixture {
    monitor: AgentHealthMonitor,
    clock: Arc<ManualClock>,
    alerts: Arc<RecordingAlertSink>,
    events: Arc<RecordingEventSink>,
}

fn config() -> HealthConfig {
    HealthConfig {
        heartbeat_interval: Duration::from_millis(100),
        activity_timeout: Duration::from_millis(200),
        max_missed: 2,
        probe_interval: Duration::from_millis(300),
        probe_timeout: Duration::from_millis(200),
        restoration_timeout: Duration::from_secs(5),
        phase_deadlines: PhaseDeadlines {
            llm_call: Duration::from_millis(500),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn strategy(kind: RecoveryKind) -> RecoveryStrategy {
    RecoveryStrategy {
        kind,
        initial_backoff: Duration::from_millis(1),
        ..Default::default()
    }
}

fn fixture() -> Fixture {
    fixture_with(|builder| builder)
}

/// A fixture whose monitor builder `configure` adjusts last.
fn fixture_with(
    configure: impl FnOnce(AgentHealthMonitorBuilder) -> AgentHealthMonitorBuilder,
) -> Fixture {
    let clock = test_clock();
    let alerts = Arc::new(RecordingAlertSink::default());
    let events = Arc::new(RecordingEventSink::default());
    let builder = AgentHealthMonitor::builder()
        .config(config())
        .clock(clock.clone())
        .states(Arc::new(MemoryStore::new()))
        .alerts(alerts.clone())
        .events(events.clone());
    let monitor = configure(builder).build().unwrap();
    Fixture {
        monitor,
        clock,
        alerts,
        events,
    }
}

impl Fixture {
    /// Registers a controllable agent as `id` with a `kind` strategy.
    fn watch(&self, id: &str, kind: RecoveryKind) -> Arc<Fake> {
        self.watch_with(id, strategy(kind))
    }

    /// Registers a controllable agent as `id` with `strategy`.
    fn watch_with(&self, id: &str, strategy: RecoveryStrategy) -> Arc<Fake> {
        let agent = Arc::new(Fake::default());
        self.monitor
            .register(id, agent.clone(), strategy, None)
            .unwrap();
        agent
    }

    /// One heartbeat interval later, a sweep.
    async fn tick(&self) {
        self.clock.advance(Duration::from_millis(100));
        self.monitor.sweep().await;
    }

    fn state(&self, id: &str) -> HealthState {
        self.monitor.status(id).unwrap().state
    }

    async fn reaches(&self, id: &str, state: HealthState) {
        let reached = self
            .monitor
            .wait_for_state(id, state, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            reached,
            "{id} never became {state:?}: {:?}",
            self.monitor.status(id)
        );
    }
}

#[tokio::test]
async fn healthy_agents_stay_active() {
    let f = fixture();
    let agent = f.watch("a", RecoveryKind::Restart);
    for _ in 0..10 {
        f.tick().await;
    }
    assert_eq!(f.state("a"), HealthState::Active);
    assert_eq!(agent.heartbeats.load(Ordering::SeqCst), 10);
    let stats = f.monitor.stats();
    assert_eq!(stats.heartbeats_sent, 10);
    assert_eq!(stats.heartbeats_failed, 0);
    assert_eq!(stats.agents[&HealthState::Active], 1);
    assert!(f.events.announcements().is_empty());
}

#[tokio::test]
async fn missed_heartbeats_disconnect_and_restart_restores_the_saved_state() {
    let f = fixture();
    let agent = f.watch("writer", RecoveryKind::Restart);
    let mut saved = AgentState::new(AgentId::parse("writer").unwrap(), Timestamp::EPOCH);
    saved.context.insert("draft".into(), "v3".into());
    f.monitor.save_state(&saved).await.unwrap();
    agent.down.store(true, Ordering::SeqCst);
    f.tick().await;
    assert_eq!(
        f.state("writer"),
        HealthState::Active,
        "one miss is not enough"
    );
    assert_eq!(f.monitor.status("writer").unwrap().missed_beats, 1);
    f.tick().await;
    f.reaches("writer", HealthState::Active).await;
    assert_eq!(agent.restarts(), 1);
    let restored = agent.restarted_with.lock().unwrap()[0].clone().unwrap();
    assert_eq!(restored.context["draft"], "v3");
    assert_eq!(
        f.events.topics(),
        [HEALTH_CHANGED, HEALTH_CHANGED, HEALTH_CHANGED]
    );
    let to: Vec<String> = f
        .events
        .announcements()
        .iter()
        .map(|a| a.payload["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(to, ["disconnected", "recovering", "active"]);
    let stats = f.monitor.stats();
    assert_eq!((stats.recovery_attempts, stats.recovery_successes), (1, 1));
    // Healthy again: it stays so.
    f.tick().await;
    f.tick().await;
    assert_eq!(f.state("writer"), HealthState::Active);
}

#[tokio::test]
async fn activity_counts_as_a_heartbeat() {
    let f = fixture();
    let agent = f.watch("busy", RecoveryKind::Restart);
    agent.down.store(true, Ordering::SeqCst);
    f.tick().await; // missed 1
    f.monitor.record_activity("busy").unwrap();
    assert_eq!(f.monitor.status("busy").unwrap().missed_beats, 0);
    f.tick().await; // missed 1 again, not 2
    assert_eq!(f.state("busy"), HealthState::Active);
    assert!(f.monitor.status("busy").unwrap().last_activity.is_some());
}

#[tokio::test]
async fn a_long_llm_call_with_progress_is_healthy_and_a_stalled_one_is_not() {
    let f = fixture();
    let agent = f.watch("llm", RecoveryKind::Restart);
    agent.llm.store(true, Ordering::SeqCst);
    // 3 s in an LLM call whose deadline is 500 ms: progress keeps it alive.
    for _ in 0..30 {
        agent.progress.fetch_add(1, Ordering::SeqCst);
        f.tick().await;
    }
    assert_eq!(f.state("llm"), HealthState::Active);
    assert_eq!(agent.restarts(), 0);
    // The stream stops; heartbeats still answer.
    for _ in 0..5 {
        f.tick().await;
    }
    assert_eq!(
        f.state("llm"),
        HealthState::Active,
        "500 ms is not over yet"
    );
    f.tick().await;
    f.reaches("llm", HealthState::Active).await;
    assert_eq!(agent.restarts(), 1, "stalled past the deadline: restarted");
    let reason = &f.events.announcements()[0].payload["reason"];
    assert!(reason.as_str().unwrap().contains("no progress"), "{reason}");
}

#[tokio::test]
async fn a_zombie_is_found_by_the_probe_and_restarted() {
    let f = fixture();
    let agent = f.watch("zombie", RecoveryKind::Restart);
    agent.zombie.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        f.tick().await; // heartbeats answer; the probe is due at 300 ms
    }
    f.reaches("zombie", HealthState::Active).await;
    assert_eq!(agent.restarts(), 1);
    let reason = &f.events.announcements()[0].payload["reason"];
    assert!(reason.as_str().unwrap().contains("probe"), "{reason}");
}

/// What the factory was asked for, and what it built.
type Built = (AgentId, Option<AgentState>, Arc<Fake>);

#[derive(Debug, Default)]
struct Backups {
    built: Mutex<Vec<Built>>,
}

#[async_trait]
impl AgentFactory for Backups {
    async fn build(
        &self,
        agent_id: &AgentId,
        state: Option<AgentState>,
    ) -> Result<Arc<dyn MonitoredAgent>, AgentError> {
        let backup = Arc::new(Fake::default());
        self.built
            .lock()
            .unwrap()
            .push((agent_id.clone(), state, backup.clone()));
        Ok(backup)
    }
}

#[tokio::test]
async fn replace_hands_the_conversation_to_a_backup_with_the_state() {
    let f = fixture();
    let primary = Arc::new(Fake::default());
    let factory = Arc::new(Backups::default());
    f.monitor
        .register(
            "lead",
            primary.clone(),
            strategy(RecoveryKind::Replace),
            Some(factory.clone()),
        )
        .unwrap();
    let mut saved = AgentState::new(AgentId::parse("lead").unwrap(), Timestamp::EPOCH);
    saved.context.insert("plan".into(), "step 4".into());
    f.monitor.save_state(&saved).await.unwrap();
    primary.down.store(true, Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    f.reaches("lead", HealthState::Active).await;
    let backup = {
        let built = factory.built.lock().unwrap();
        assert_eq!(built.len(), 1);
        assert_eq!(built[0].1.as_ref().unwrap().context["plan"], "step 4");
        built[0].2.clone()
    };
    assert_eq!(primary.restarts(), 0, "replaced, not restarted");
    let before = primary.heartbeats.load(Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    assert_eq!(
        backup.heartbeats.load(Ordering::SeqCst),
        2,
        "the backup is watched now"
    );
    assert_eq!(primary.heartbeats.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn alert_only_never_restarts() {
    let f = fixture();
    let agent = f.watch("watched", RecoveryKind::Alert);
    agent.down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        f.tick().await;
    }
    assert_eq!(f.state("watched"), HealthState::Disconnected);
    assert_eq!(agent.restarts(), 0);
    let alerts = f.alerts.alerts();
    assert_eq!(alerts.len(), 1, "one alert per failure, not per sweep");
    assert_eq!(alerts[0].severity, AlertSeverity::Error);
    // It comes back by itself.
    agent.down.store(false, Ordering::SeqCst);
    f.tick().await;
    assert_eq!(f.state("watched"), HealthState::Active);
}

#[tokio::test]
async fn restart_intensity_exceeded_marks_the_agent_failed_and_alerts() {
    let f = fixture();
    let agent = f.watch_with(
        "flappy",
        RecoveryStrategy {
            max_restarts: 2,
            restart_period: Duration::from_secs(60),
            ..strategy(RecoveryKind::Restart)
        },
    );
    for _ in 0..2 {
        agent.down.store(true, Ordering::SeqCst);
        f.tick().await;
        f.tick().await;
        f.reaches("flappy", HealthState::Active).await;
    }
    agent.down.store(true, Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    f.reaches("flappy", HealthState::Failed).await;
    assert_eq!(agent.restarts(), 2);
    let critical = f
        .alerts
        .alerts()
        .into_iter()
        .filter(|alert| alert.severity == AlertSeverity::Critical)
        .count();
    assert_eq!(critical, 1);
    let last = f.events.announcements().pop().unwrap();
    assert_eq!(last.payload["to"], "failed");
    assert_eq!(last.priority, smalltalk_types::EventPriority::Critical);
    // A failed agent is no longer asked.
    let before = agent.heartbeats.load(Ordering::SeqCst);
    f.tick().await;
    assert_eq!(agent.heartbeats.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn failed_restarts_retry_with_backoff_then_give_up() {
    let f = fixture();
    let agent = f.watch_with(
        "broken",
        RecoveryStrategy {
            max_retries: 3,
            ..strategy(RecoveryKind::Restart)
        },
    );
    agent.failing_restarts.store(10, Ordering::SeqCst);
    agent.down.store(true, Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    f.reaches("broken", HealthState::Failed).await;
    assert_eq!(
        agent.failing_restarts.load(Ordering::SeqCst),
        7,
        "3 attempts"
    );
    assert_eq!(f.monitor.status("broken").unwrap().recovery_attempts, 3);
    let stats = f.monitor.stats();
    assert_eq!((stats.recovery_attempts, stats.recovery_successes), (3, 0));
}

#[tokio::test]
async fn restart_types_decide_who_comes_back() {
    let f = fixture();
    let restarted = |restart_type| RecoveryStrategy {
        restart_type,
        ..strategy(RecoveryKind::Restart)
    };
    let transient = f.watch_with("transient", restarted(RestartType::Transient));
    let temporary = f.watch_with("temporary", restarted(RestartType::Temporary));
    transient.stopped.store(true, Ordering::SeqCst); // a normal exit
    temporary.down.store(true, Ordering::SeqCst); // a crash
    f.tick().await;
    f.tick().await;
    assert_eq!(f.state("transient"), HealthState::Failed);
    assert_eq!(f.state("temporary"), HealthState::Failed);
    assert_eq!(transient.restarts() + temporary.restarts(), 0);
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let f = fixture();
    let agent = Arc::new(Fake::default());
    assert!(matches!(
        f.monitor.status("ghost"),
        Err(Error::UnknownAgent { .. })
    ));
    assert!(matches!(
        f.monitor.record_activity("ghost"),
        Err(Error::UnknownAgent { .. })
    ));
    assert!(matches!(
        f.monitor.unregister("ghost"),
        Err(Error::UnknownAgent { .. })
    ));
    assert!(matches!(
        f.monitor
            .register("../x", agent.clone(), RecoveryStrategy::default(), None),
        Err(Error::Invalid(_))
    ));
    f.monitor
        .register("a", agent.clone(), RecoveryStrategy::default(), None)
        .unwrap();
    assert!(matches!(
        f.monitor
            .register("a", agent.clone(), RecoveryStrategy::default(), None),
        Err(Error::AlreadyRegistered { .. })
    ));
    assert!(matches!(
        f.monitor
            .register("b", agent.clone(), strategy(RecoveryKind::Replace), None),
        Err(Error::MissingFactory { .. })
    ));
    let zero_restarts = RecoveryStrategy {
        max_restarts: 0,
        ..Default::default()
    };
    assert!(matches!(
        f.monitor.register("c", agent.clone(), zero_restarts, None),
        Err(Error::Invalid(_))
    ));
    for config in [
        HealthConfig {
            heartbeat_interval: Duration::ZERO,
            ..config()
        },
        HealthConfig {
            max_missed: 0,
            ..config()
        },
        HealthConfig {
            probe_interval: Duration::ZERO,
            ..config()
        },
    ] {
        assert!(matches!(
            AgentHealthMonitor::builder().config(config).build(),
            Err(Error::Invalid(_))
        ));
    }
    f.monitor.unregister("a").unwrap();
    assert!(f.monitor.statuses().is_empty());
}

/// Counts what it was asked to replay and answers as told.
#[derive(Debug, Default)]
struct Replayer {
    asked: Mutex<Vec<(AgentId, Timestamp)>>,
    failed: AtomicU64,
}

#[async_trait]
impl smalltalk_types::MissedEventReplayer for Replayer {
    async fn replay_missed(
        &self,
        agent_id: &AgentId,
        since: Timestamp,
    ) -> Result<smalltalk_types::ReplayCounts, smalltalk_types::BoxError> {
        self.asked.lock().unwrap().push((agent_id.clone(), since));
        Ok(smalltalk_types::ReplayCounts {
            delivered: 10,
            failed: self.failed.load(Ordering::SeqCst),
        })
    }
}

#[tokio::test]
async fn recovery_replays_what_was_missed_and_mostly_failed_replays_degrade() {
    let replayer = Arc::new(Replayer::default());
    let f = fixture_with(|builder| builder.replayer(replayer.clone()));
    let agent = f.watch("reader", RecoveryKind::Restart);
    f.tick().await;
    let last_good = f.monitor.status("reader").unwrap().last_heartbeat.unwrap();
    agent.down.store(true, Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    f.reaches("reader", HealthState::Active).await;
    assert_eq!(
        replayer.asked.lock().unwrap().clone(),
        [(AgentId::parse("reader").unwrap(), last_good)],
        "replayed from its last good heartbeat"
    );
    // Next time 6 of 10 missed events fail to replay: degraded.
    replayer.failed.store(6, Ordering::SeqCst);
    agent.down.store(true, Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    f.reaches("reader", HealthState::Degraded).await;
    assert!(
        f.monitor
            .status("reader")
            .unwrap()
            .last_error
            .unwrap()
            .contains("replay")
    );
}

/// Records what the monitor switched.
#[derive(Debug, Default)]
struct Control(Mutex<Vec<bool>>);

impl smalltalk_types::DegradationControl for Control {
    fn set_degraded(&self, degraded: bool) {
        self.0.lock().unwrap().push(degraded);
    }
}

#[tokio::test]
async fn many_failures_degrade_the_system_until_it_is_calm_again() {
    let control = Arc::new(Control::default());
    let f = fixture_with(|builder| builder.degradation_control(control.clone()));
    let mut agents = Vec::new();
    for index in 0..4 {
        let agent = f.watch(&format!("a{index}"), RecoveryKind::Alert);
        agents.push(agent);
    }
    // Three failures within 30 s: not yet.
    for agent in &agents[..3] {
        agent.down.store(true, Ordering::SeqCst);
    }
    f.tick().await;
    f.tick().await;
    assert!(!f.monitor.is_degraded());
    // A fourth: degraded, sessions told, operators alerted.
    agents[3].down.store(true, Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    assert!(f.monitor.is_degraded());
    assert!(f.monitor.stats().degraded);
    assert_eq!(control.0.lock().unwrap().clone(), [true]);
    assert!(
        f.alerts
            .alerts()
            .iter()
            .any(|alert| alert.severity == AlertSeverity::Critical
                && alert.message.contains("degradation"))
    );
    // They come back; fewer than 2 failed for 120 s: degradation ends.
    for agent in &agents {
        agent.down.store(false, Ordering::SeqCst);
    }
    f.tick().await;
    f.clock.advance(Duration::from_secs(119));
    f.tick().await;
    assert!(f.monitor.is_degraded(), "not calm for 120 s yet");
    f.clock.advance(Duration::from_secs(1));
    f.tick().await;
    assert!(!f.monitor.is_degraded());
    assert_eq!(control.0.lock().unwrap().clone(), [true, false]);
}

#[tokio::test]
async fn the_health_gauge_follows_the_state() {
    let recording = smalltalk_storage::contract::RecordingRecorder::default();
    let _guard = metrics::set_default_local_recorder(&recording);
    let f = fixture();
    let agent = f.watch_with(
        "gauged",
        RecoveryStrategy {
            restart_type: RestartType::Temporary,
            ..strategy(RecoveryKind::Restart)
        },
    );
    agent.down.store(true, Ordering::SeqCst);
    f.tick().await;
    f.tick().await;
    assert_eq!(f.state("gauged"), HealthState::Failed);
    assert_eq!(recording.value("smalltalk_agent_health_status"), -1.0);
}

/// An agent whose heartbeat never returns.
#[derive(Debug, Default)]
struct Hung;

#[async_trait]
impl MonitoredAgent for Hung {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        std::future::pending().await
    }
    async fn probe(&self) -> Result<(), AgentError> {
        Ok(())
    }
    async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_hung_agent_does_not_hold_up_the_sweep() {
    let f = fixture_with(|builder| {
        builder.config(HealthConfig {
            // A hung heartbeat is given an hour: the sweep must not wait.
            activity_timeout: Duration::from_secs(3600),
            ..config()
        })
    });
    f.monitor
        .register("hung", Arc::new(Hung), strategy(RecoveryKind::Alert), None)
        .unwrap();
    let down = f.watch("down", RecoveryKind::Alert);
    down.down.store(true, Ordering::SeqCst);
    let swept = tokio::time::timeout(Duration::from_secs(5), async {
        f.tick().await;
        f.tick().await;
    })
    .await;
    assert!(swept.is_ok(), "the sweep waited on the hung agent");
    assert_eq!(f.state("down"), HealthState::Disconnected);
}

/// An agent that answers until `hang` is set, then never again (heartbeat
/// and probe both pending for ever).
#[derive(Debug, Default)]
struct Hangs {
    hang: AtomicBool,
}

#[async_trait]
impl MonitoredAgent for Hangs {
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(Heartbeat {
            phase: AgentPhase::Idle,
            progress: 0,
        })
    }
    async fn probe(&self) -> Result<(), AgentError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
    async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
        Ok(())
    }
}

/// SC-003 with the default configuration (2 s interval, 2 missed beats,
/// 5 s timeouts): an agent that stops answering after a good beat is
/// disconnected by the first sweep once its last sign of life is 4 s old,
/// while its heartbeat is still pending, not when the timeouts run out.
#[tokio::test]
async fn a_hung_agent_is_disconnected_after_interval_times_missed() {
    let f = fixture_with(|builder| builder.config(HealthConfig::default()));
    let agent = Arc::new(Hangs::default());
    f.monitor
        .register("hangs", agent.clone(), strategy(RecoveryKind::Alert), None)
        .unwrap();
    let limit = HealthConfig::default().silence_limit();
    assert_eq!(limit, Duration::from_secs(4));
    // A good beat now, then silence.
    f.monitor.sweep().await;
    let last_good = f.monitor.status("hangs").unwrap().last_heartbeat.unwrap();
    agent.hang.store(true, Ordering::SeqCst);
    for _ in 0..7 {
        f.clock.advance(Duration::from_millis(500));
        f.monitor.sweep().await;
        assert_eq!(f.state("hangs"), HealthState::Active, "too early");
    }
    f.clock.advance(Duration::from_millis(499));
    f.monitor.sweep().await;
    assert_eq!(f.state("hangs"), HealthState::Active, "too early");
    f.clock.advance(Duration::from_millis(1));
    f.monitor.sweep().await;
    let status = f.monitor.status("hangs").unwrap();
    assert_eq!(status.state, HealthState::Disconnected);
    assert_eq!(
        smalltalk_types::Clock::now(&*f.clock).duration_since(last_good),
        limit
    );
    // Activity counts as a sign of life: another agent recording activity
    // stays active while never answering a heartbeat.
    let busy = Arc::new(Hangs::default());
    busy.hang.store(true, Ordering::SeqCst);
    f.monitor
        .register("busy", busy, strategy(RecoveryKind::Alert), None)
        .unwrap();
    for _ in 0..20 {
        f.clock.advance(Duration::from_millis(500));
        f.monitor.record_activity("busy").unwrap();
        f.monitor.sweep().await;
    }
    assert_eq!(f.state("busy"), HealthState::Active);
}

/// An agent whose heartbeat answer comes late, after it was restarted: the
/// stale answer (a failure) is not judged against the restarted agent.
#[tokio::test]
async fn a_late_answer_is_not_judged_against_the_restarted_agent() {
    #[derive(Debug, Default)]
    struct Slow {
        release: tokio::sync::Notify,
        slow: AtomicBool,
    }
    #[async_trait]
    impl MonitoredAgent for Slow {
        async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
            if self.slow.swap(false, Ordering::SeqCst) {
                self.release.notified().await;
                return Err(AgentError::Failed("late".into()));
            }
            Ok(Heartbeat {
                phase: AgentPhase::Idle,
                progress: 0,
            })
        }
        async fn probe(&self) -> Result<(), AgentError> {
            Ok(())
        }
        async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
            Ok(())
        }
    }
    let f = fixture_with(|builder| {
        builder.config(HealthConfig {
            max_missed: 1,
            activity_timeout: Duration::from_secs(3600),
            ..config()
        })
    });
    let agent = Arc::new(Slow::default());
    f.monitor
        .register("slow", agent.clone(), strategy(RecoveryKind::Restart), None)
        .unwrap();
    f.monitor.sweep().await;
    // The next heartbeat hangs; silence gets the agent restarted.
    agent.slow.store(true, Ordering::SeqCst);
    f.tick().await;
    assert_eq!(f.state("slow"), HealthState::Disconnected);
    // No sweep now: only the recovery brings it back.
    f.reaches("slow", HealthState::Active).await;
    let restarted = f.monitor.stats().recovery_successes;
    assert_eq!(restarted, 1);
    // The old heartbeat now fails: it was asked of the agent before the
    // restart, so it is not a missed beat of this one.
    let failed_before = f.monitor.stats().heartbeats_failed;
    agent.release.notify_one();
    // Nothing to await but the answer being counted.
    while f.monitor.stats().heartbeats_failed == failed_before {
        tokio::task::yield_now().await;
    }
    // A failure judged against it would be acted on by the same task right
    // after the count (a transition and a recovery, no I/O): on this
    // single-threaded runtime a few turns let that finish.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let status = f.monitor.status("slow").unwrap();
    assert_eq!(status.state, HealthState::Active);
    assert_eq!((status.missed_beats, status.recovery_attempts), (0, 1));
    assert_eq!(f.monitor.stats().recovery_attempts, 1, "restarted again");
}

/// A closed monitor acts on nothing: no sweep, no detection, no recovery.
#[tokio::test]
async fn a_closed_monitor_does_nothing_more() {
    let f = fixture();
    let agent = f.watch("closing", RecoveryKind::Restart);
    f.monitor.close();
    assert!(f.monitor.is_closed());
    agent.down.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        f.tick().await;
    }
    assert_eq!(f.state("closing"), HealthState::Active);
    assert_eq!(
        agent.heartbeats.load(Ordering::SeqCst),
        0,
        "nothing was asked"
    );
    assert_eq!(agent.restarts(), 0);
}

#[tokio::test]
async fn failures_reported_by_groups_count_toward_degradation_only_when_asked() {
    use smalltalk_types::{AgentFailureReport, AgentFailureSink};
    let events = Arc::new(RecordingEventSink::default());
    let monitor = AgentHealthMonitor::builder()
        .clock(test_clock())
        .events(events.clone())
        .build()
        .unwrap();
    let report = |counts| AgentFailureReport {
        agent_id: AgentId::parse("writer").unwrap(),
        source: "group:g".into(),
        error: "model overloaded".into(),
        attempts: 2,
        counts_toward_degradation: counts,
        timestamp: Timestamp::now(),
    };
    for _ in 0..10 {
        monitor.agent_failed(report(false)).await;
    }
    assert!(
        !monitor.is_degraded(),
        "off by default: a flaky model pauses nothing"
    );
    assert_eq!(monitor.stats().reported_failures, 10);
    assert_eq!(
        events
            .topics()
            .iter()
            .filter(|t| *t == smalltalk_health::FAILURE_REPORTED)
            .count(),
        10
    );
    for _ in 0..4 {
        monitor.agent_failed(report(true)).await;
    }
    assert!(
        monitor.is_degraded(),
        "more than 3 counted failures within 30 s"
    );
}
