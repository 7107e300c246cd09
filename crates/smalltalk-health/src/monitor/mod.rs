//! The [`AgentHealthMonitor`].

mod degradation;
pub use degradation::FAILURE_REPORTED;
mod detection;
mod recovery;

use recovery::Failure;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use smalltalk_storage::KeyValueStore;
use smalltalk_types::{
    AgentHealthStatus, AgentId, AgentPhase, AgentState, AgentStateSource, Alert, AlertSeverity,
    AlertSink, Announcement, BackgroundTask, Clock, DegradationControl, EventPriority, EventSink,
    HealthState, LogAlertSink, MissedEventReplayer, RecoveryKind, RecoveryStrategy, RestartType,
    SessionId, StorageKey, SystemClock, Timestamp, Topic, TryIntoId,
};
use tokio::sync::watch;

use crate::{AgentError, AgentFactory, Error, HealthConfig, Heartbeat, MonitoredAgent, Result};

/// The topic every state transition is announced on.
pub const HEALTH_CHANGED: &str = "agent:health-changed";
/// The topic entering and leaving graceful degradation is announced on.
pub const DEGRADATION_CHANGED: &str = "health:degradation-changed";

/// System-wide degradation state (FR-010a).
#[derive(Debug, Default)]
struct Degradation {
    /// Failure detections within the window.
    failures: VecDeque<Timestamp>,
    degraded: bool,
    /// Since when fewer than `exit_below_failed` agents are failed.
    calm_since: Option<Timestamp>,
    retried_at: Option<Timestamp>,
}

/// One registered agent.
struct Entry {
    agent: Arc<dyn MonitoredAgent>,
    strategy: RecoveryStrategy,
    factory: Option<Arc<dyn AgentFactory>>,
    status: AgentHealthStatus,
    heartbeat_sent_at: Option<Timestamp>,
    probed_at: Option<Timestamp>,
    /// When the phase or progress counter last changed.
    progress_at: Timestamp,
    /// Detections since it was last active.
    failures: u32,
    /// Restart times within the strategy's period (restart intensity).
    restarts: VecDeque<Timestamp>,
    /// Bumped when the agent is restarted or replaced: an answer from the
    /// agent as it was before is not judged against the one now.
    generation: u64,
    /// The session it serves, where its state lives.
    session: Option<SessionId>,
}

impl Entry {
    /// The last sign of life: a good heartbeat, recorded activity, or
    /// progress within a declared phase.
    fn sign_of_life(&self) -> Timestamp {
        let mut last = self.progress_at;
        for seen in [self.status.last_heartbeat, self.status.last_activity]
            .into_iter()
            .flatten()
        {
            last = last.max(seen);
        }
        last
    }

    /// Watched for silence: active or degraded.
    fn watched(&self) -> bool {
        matches!(
            self.status.state,
            HealthState::Active | HealthState::Degraded
        )
    }
}

/// Counts for [`HealthStats`].
#[derive(Debug, Default)]
struct Counters {
    heartbeats_sent: AtomicU64,
    heartbeats_failed: AtomicU64,
    heartbeat_micros: AtomicU64,
    recovery_attempts: AtomicU64,
    recovery_successes: AtomicU64,
}

/// Counts and states across agents.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HealthStats {
    /// Agents per state.
    pub agents: HashMap<HealthState, usize>,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeats not answered in time (or answered with an error).
    pub heartbeats_failed: u64,
    /// Mean time an answered heartbeat took.
    pub average_heartbeat_latency: Duration,
    /// Recovery attempts started.
    pub recovery_attempts: u64,
    /// Recoveries that brought the agent back.
    pub recovery_successes: u64,
    /// Whether the system is in graceful degradation.
    pub degraded: bool,
    /// Agent failures reported by other parts (groups) through
    /// [`smalltalk_types::AgentFailureSink`].
    pub reported_failures: u64,
    /// CPU time this process has used (user + system, from the OS; `None`
    /// off Linux). The monitor's own share is what it adds: measure it
    /// over an interval, as the SC-010 report row does.
    pub process_cpu_time: Option<Duration>,
}

struct Inner {
    config: HealthConfig,
    clock: Arc<dyn Clock>,
    agents: Mutex<HashMap<AgentId, Entry>>,
    states: Option<Arc<dyn KeyValueStore>>,
    agent_states: Option<Arc<dyn AgentStateSource>>,
    events: Option<Arc<dyn EventSink>>,
    alerts: Arc<dyn AlertSink>,
    replayer: Option<Arc<dyn MissedEventReplayer>>,
    control: Option<Arc<dyn DegradationControl>>,
    degradation: Mutex<Degradation>,
    counters: Counters,
    /// Bumped on every transition, for waiters.
    changes: watch::Sender<u64>,
    /// When the first agent that was fine at the last sweep reaches its
    /// silence limit.
    next_silence: Mutex<Option<Timestamp>>,
    /// Source of [`Entry::generation`]s.
    generations: AtomicU64,
    /// Set by [`AgentHealthMonitor::close`].
    closed: std::sync::atomic::AtomicBool,
    /// Failures reported through [`smalltalk_types::AgentFailureSink`].
    reported_failures: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHealthMonitor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AgentHealthMonitor`].
#[derive(Default)]
pub struct AgentHealthMonitorBuilder {
    config: HealthConfig,
    clock: Option<Arc<dyn Clock>>,
    states: Option<Arc<dyn KeyValueStore>>,
    agent_states: Option<Arc<dyn AgentStateSource>>,
    events: Option<Arc<dyn EventSink>>,
    alerts: Option<Arc<dyn AlertSink>>,
    replayer: Option<Arc<dyn MissedEventReplayer>>,
    control: Option<Arc<dyn DegradationControl>>,
}

impl AgentHealthMonitorBuilder {
    /// Where the state of an agent that serves a session lives: that
    /// session (the session manager implements the port), so a restarted
    /// agent gets the state the session kept, within its limits. Agents are
    /// tied to their session with
    /// [`AgentHealthMonitor::attach_session`].
    pub fn agent_states(mut self, source: Arc<dyn AgentStateSource>) -> Self {
        self.agent_states = Some(source);
        self
    }

    /// The configuration (default: [`HealthConfig::default`]).
    pub fn config(mut self, config: HealthConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock deadlines are measured with (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Where the saved states of agents that serve no session live (a
    /// monitor used without sessions); recovery restores from it.
    pub fn states(mut self, states: Arc<dyn KeyValueStore>) -> Self {
        self.states = Some(states);
        self
    }

    /// Where state transitions are announced ([`HEALTH_CHANGED`]).
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// Where alerts go (default: the log).
    pub fn alerts(mut self, alerts: Arc<dyn AlertSink>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// What replays missed events to a recovered agent before it counts as
    /// ready (the umbrella connects the event bus). Over half of them
    /// failing leaves the agent `degraded` (FR-009a).
    pub fn replayer(mut self, replayer: Arc<dyn MissedEventReplayer>) -> Self {
        self.replayer = Some(replayer);
        self
    }

    /// What honours graceful degradation (the session manager: new
    /// sessions paused, capacity halved).
    pub fn degradation_control(mut self, control: Arc<dyn DegradationControl>) -> Self {
        self.control = Some(control);
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<AgentHealthMonitor> {
        self.config.validate()?;
        Ok(AgentHealthMonitor {
            inner: Arc::new(Inner {
                config: self.config,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                agents: Mutex::default(),
                states: self.states,
                agent_states: self.agent_states,
                events: self.events,
                alerts: self.alerts.unwrap_or_else(|| Arc::new(LogAlertSink)),
                replayer: self.replayer,
                control: self.control,
                degradation: Mutex::default(),
                counters: Counters::default(),
                changes: watch::channel(0).0,
                next_silence: Mutex::new(None),
                generations: AtomicU64::new(0),
                closed: std::sync::atomic::AtomicBool::new(false),
                reported_failures: AtomicU64::new(0),
            }),
        })
    }
}

/// Watches agents and heals them (SPEC §2, FR-006 to FR-010).
///
/// One [`sweep`](Self::sweep) asks every agent that is due for a heartbeat
/// and a probe, all concurrently and each with a timeout, then judges:
/// `max_missed` missed heartbeats, a phase without progress past its
/// deadline, or a failed probe make the agent `disconnected`, and its
/// recovery strategy runs on a task of its own. [`spawn`](Self::spawn)
/// runs sweeps in the background: one task for all agents.
#[derive(Debug, Clone)]
pub struct AgentHealthMonitor {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn state_key(agent_id: &AgentId) -> StorageKey {
    StorageKey::parse(&format!("health.agent-state.{agent_id}"))
        .expect("an agent id makes a valid storage key")
}

/// What a sweep asks of one agent.
struct Ask {
    agent_id: AgentId,
    generation: u64,
    agent: Arc<dyn MonitoredAgent>,
    beat: bool,
    probe: bool,
}

/// What one sweep learned about one agent.
struct Answer {
    agent_id: AgentId,
    /// The [`Entry::generation`] of the agent asked.
    generation: u64,
    heartbeat: Option<(Result<Heartbeat, AgentError>, Duration)>,
    probe: Option<Result<(), AgentError>>,
}

impl AgentHealthMonitor {
    /// A builder.
    pub fn builder() -> AgentHealthMonitorBuilder {
        AgentHealthMonitorBuilder::default()
    }

    /// The configuration in force.
    pub fn config(&self) -> &HealthConfig {
        &self.inner.config
    }

    /// Starts watching `agent` as `agent_id` with `strategy`. `factory`
    /// builds the backup for [`RecoveryKind::Replace`].
    ///
    /// Errors: [`Error::Invalid`] for a bad id or strategy,
    /// [`Error::AlreadyRegistered`], [`Error::MissingFactory`].
    pub fn register(
        &self,
        agent_id: impl TryIntoId<AgentId>,
        agent: Arc<dyn MonitoredAgent>,
        strategy: RecoveryStrategy,
        factory: Option<Arc<dyn AgentFactory>>,
    ) -> Result<()> {
        let agent_id = agent_id.try_into_id()?;
        strategy.validate()?;
        if strategy.kind == RecoveryKind::Replace && factory.is_none() {
            return Err(Error::MissingFactory { agent_id });
        }
        let now = self.inner.clock.now();
        let mut agents = lock(&self.inner.agents);
        if agents.contains_key(&agent_id) {
            return Err(Error::AlreadyRegistered { agent_id });
        }
        agents.insert(
            agent_id.clone(),
            Entry {
                agent,
                strategy,
                factory,
                status: AgentHealthStatus {
                    agent_id,
                    state: HealthState::Active,
                    last_heartbeat: Some(now),
                    last_activity: None,
                    missed_beats: 0,
                    recovery_attempts: 0,
                    phase: AgentPhase::Idle,
                    progress: 0,
                    last_error: None,
                },
                heartbeat_sent_at: None,
                probed_at: Some(now),
                progress_at: now,
                failures: 0,
                restarts: VecDeque::new(),
                // Monitor-wide, so an answer from an agent unregistered
                // and registered again under the same id is not judged
                // against the new one.
                generation: self.inner.generations.fetch_add(1, Ordering::Relaxed),
                session: None,
            },
        );
        Ok(())
    }

    /// Stops watching an agent. [`Error::UnknownAgent`] if it was not.
    pub fn unregister(&self, agent_id: impl TryIntoId<AgentId>) -> Result<()> {
        let agent_id = agent_id.try_into_id()?;
        match lock(&self.inner.agents).remove(&agent_id) {
            Some(_) => Ok(()),
            None => Err(Error::UnknownAgent { agent_id }),
        }
    }

    /// Natural activity (a message handled, a task done): counts as a
    /// heartbeat (FR-006), and as progress.
    pub fn record_activity(&self, agent_id: impl TryIntoId<AgentId>) -> Result<()> {
        let agent_id = agent_id.try_into_id()?;
        let now = self.inner.clock.now();
        let mut agents = lock(&self.inner.agents);
        let entry = agents
            .get_mut(&agent_id)
            .ok_or(Error::UnknownAgent { agent_id })?;
        entry.status.last_activity = Some(now);
        entry.status.last_heartbeat = Some(now);
        entry.status.missed_beats = 0;
        entry.progress_at = now;
        Ok(())
    }

    /// Saves `state` as its agent's latest, restored on recovery. Needs a
    /// store ([`AgentHealthMonitorBuilder::states`]); without one this is
    /// a no-op.
    #[tracing::instrument(level = "debug", name = "monitor.save_state", skip_all, fields(agent_id = %state.agent_id))]
    pub async fn save_state(&self, state: &AgentState) -> Result<()> {
        if let (Some(source), Some(session)) =
            (&self.inner.agent_states, self.session_of(&state.agent_id))
        {
            return source
                .store_agent_state(session, state.clone())
                .await
                .map_err(|source| Error::AgentState {
                    agent_id: state.agent_id.clone(),
                    source,
                });
        }
        let Some(states) = &self.inner.states else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(state).map_err(smalltalk_types::Error::Encoding)?;
        states
            .set(&state_key(&state.agent_id), &bytes, None)
            .await?;
        Ok(())
    }

    async fn load_state(&self, agent_id: &AgentId) -> Result<Option<AgentState>> {
        if let (Some(source), Some(session)) = (&self.inner.agent_states, self.session_of(agent_id))
        {
            return source
                .load_agent_state(session, agent_id)
                .await
                .map_err(|source| Error::AgentState {
                    agent_id: agent_id.clone(),
                    source,
                });
        }
        let Some(states) = &self.inner.states else {
            return Ok(None);
        };
        let Some(bytes) = states.get(&state_key(agent_id)).await? else {
            return Ok(None);
        };
        let state = serde_json::from_slice(&bytes).map_err(smalltalk_types::Error::Encoding)?;
        Ok(Some(state))
    }

    /// Ties `agent_id` to the session it serves: with an
    /// [`agent_states`](AgentHealthMonitorBuilder::agent_states) source, its
    /// state is saved in and restored from that session.
    /// [`Error::UnknownAgent`] if not registered.
    pub fn attach_session(
        &self,
        agent_id: impl TryIntoId<AgentId>,
        session: SessionId,
    ) -> Result<()> {
        let agent_id = agent_id.try_into_id()?;
        let mut agents = lock(&self.inner.agents);
        let entry = agents
            .get_mut(&agent_id)
            .ok_or(Error::UnknownAgent { agent_id })?;
        entry.session = Some(session);
        Ok(())
    }

    fn session_of(&self, agent_id: &AgentId) -> Option<SessionId> {
        lock(&self.inner.agents)
            .get(agent_id)
            .and_then(|entry| entry.session)
    }

    /// One agent's status. [`Error::UnknownAgent`] if not registered.
    pub fn status(&self, agent_id: impl TryIntoId<AgentId>) -> Result<AgentHealthStatus> {
        let agent_id = agent_id.try_into_id()?;
        lock(&self.inner.agents)
            .get(&agent_id)
            .map(|entry| entry.status.clone())
            .ok_or(Error::UnknownAgent { agent_id })
    }

    /// Every agent's status, by id.
    pub fn statuses(&self) -> Vec<AgentHealthStatus> {
        let mut all: Vec<_> = lock(&self.inner.agents)
            .values()
            .map(|entry| entry.status.clone())
            .collect();
        all.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        all
    }

    /// Counts and states.
    pub fn stats(&self) -> HealthStats {
        let mut agents = HashMap::new();
        for entry in lock(&self.inner.agents).values() {
            *agents.entry(entry.status.state).or_insert(0) += 1;
        }
        let counters = &self.inner.counters;
        let sent = counters.heartbeats_sent.load(Ordering::Relaxed);
        let failed = counters.heartbeats_failed.load(Ordering::Relaxed);
        let answered = sent.saturating_sub(failed).max(1);
        HealthStats {
            agents,
            heartbeats_sent: sent,
            heartbeats_failed: failed,
            average_heartbeat_latency: Duration::from_micros(
                counters.heartbeat_micros.load(Ordering::Relaxed) / answered,
            ),
            recovery_attempts: counters.recovery_attempts.load(Ordering::Relaxed),
            recovery_successes: counters.recovery_successes.load(Ordering::Relaxed),
            degraded: self.is_degraded(),
            reported_failures: self.inner.reported_failures.load(Ordering::Relaxed),
            process_cpu_time: crate::process_cpu_time(),
        }
    }

    /// Whether the system is in graceful degradation (FR-010a).
    pub fn is_degraded(&self) -> bool {
        lock(&self.inner.degradation).degraded
    }

    /// Waits until `agent_id` is in `state`, up to `timeout`; `true` if it
    /// got there.
    #[tracing::instrument(level = "debug", name = "monitor.wait_for_state", skip_all, fields(state = ?state))]
    pub async fn wait_for_state(
        &self,
        agent_id: impl TryIntoId<AgentId>,
        state: HealthState,
        timeout: Duration,
    ) -> Result<bool> {
        let id = agent_id.try_into_id()?;
        let mut changes = self.inner.changes.subscribe();
        let reached = || -> Result<bool> {
            lock(&self.inner.agents)
                .get(&id)
                .map(|entry| entry.status.state == state)
                .ok_or_else(|| Error::UnknownAgent {
                    agent_id: id.clone(),
                })
        };
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if reached()? {
                    return Ok(true);
                }
                if changes.changed().await.is_err() {
                    return Ok(false);
                }
            }
        })
        .await;
        waited.unwrap_or(Ok(false))
    }

    /// Waits until the monitor is (`true`) or is not (`false`) in degraded
    /// operation, up to `timeout`; `true` if it got there. Woken by each
    /// switch (after the session manager was told), never polled.
    #[tracing::instrument(level = "debug", name = "monitor.wait_for_degraded", skip_all)]
    pub async fn wait_for_degraded(&self, degraded: bool, timeout: Duration) -> bool {
        let mut changes = self.inner.changes.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if self.is_degraded() == degraded {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        waited.unwrap_or(false)
    }

    /// Runs sweeps every quarter of the shorter of the heartbeat and probe
    /// intervals, and the moment an agent's silence passes its limit, on
    /// one task, until the returned task is dropped (at once) or shut down
    /// (after the sweep under way), or the monitor is dropped.
    pub fn spawn(&self) -> BackgroundTask {
        let weak = Arc::downgrade(&self.inner);
        let tick = sweep_tick(&self.inner.config);
        let mut task = BackgroundTask::new("health sweeps");
        task.spawn(|mut stop| async move {
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut silence_deadline: Option<Duration> = None;
            loop {
                // Every tick, and also the moment an agent's silence passes
                // its limit (SC-003: detection within interval x missed,
                // not a tick later).
                let wait = silence_deadline.unwrap_or(Duration::MAX);
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = tokio::time::sleep(wait), if silence_deadline.is_some() => {}
                    () = stop.stopped() => return,
                }
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let monitor = AgentHealthMonitor { inner };
                monitor.sweep().await;
                silence_deadline = monitor.until_next_silence();
            }
        });
        task
    }

    /// Stops watching: sweeps, late answers and recoveries under way (at
    /// their next step) do nothing more, so nothing reaches the store, the
    /// bus or the agents after the caller closes those. Idempotent.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// How long until the first watched agent's silence reaches its limit,
    /// as the last sweep saw it.
    fn until_next_silence(&self) -> Option<Duration> {
        let next = (*lock(&self.inner.next_silence))?;
        Some(next.duration_since(self.inner.clock.now()))
    }
}

/// How often [`AgentHealthMonitor::spawn`] sweeps: a quarter of the
/// shorter interval.
fn sweep_tick(config: &HealthConfig) -> Duration {
    (config.heartbeat_interval.min(config.probe_interval) / 4).max(Duration::from_millis(1))
}

/// The `smalltalk_agent_health_status` gauge's value per state.
fn state_value(state: HealthState) -> f64 {
    match state {
        HealthState::Active => 1.0,
        HealthState::Degraded => 0.5,
        HealthState::Recovering => 0.25,
        HealthState::Disconnected => 0.0,
        HealthState::Failed => -1.0,
    }
}
