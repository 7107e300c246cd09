//! [`Runtime`]: one store, the session manager, the event bus and the
//! health monitor, with every port between them connected.
//!
//! ```text
//! SessionManager --announcements (EventSink)--------------> EventBus
//! AgentHealthMonitor --transitions (EventSink)-------------> EventBus
//! AgentHealthMonitor --missed events (MissedEventReplayer)-> EventBus
//! AgentHealthMonitor --degradation (DegradationControl)----> SessionManager
//! AgentHealthMonitor --agent state (AgentStateSource)------> SessionManager
//! AgentHealthMonitor --state of agents in no session-------> the store
//! SessionManager --purge on invalidate/delete (SessionContentPurger)--> StateStore
//! GroupManager --turn events (EventSink)-------------------> EventBus
//! GroupManager --agent failures (AgentFailureSink)---------> AgentHealthMonitor
//! EventBus --events matching a group's triggers------------> GroupManager
//! ```
//!
//! The state store works on the same store: a session's state namespace
//! ([`Namespace::session`](smalltalk_state::Namespace::session)) goes, history
//! included, when the session is invalidated or deleted.
//!
//! Built from a storage URL (`sqlite://...`, `postgres://...`, `memory://`)
//! or a store already open; [`Runtime::shutdown`] stops the background
//! tasks, flushes the sessions, closes the bus and then the store, in that
//! order, in one call.

use std::sync::Arc;

use smalltalk_events::{
    Delivery, EventBus, EventBusConfig, Outcome, SubscribeOptions, Subscription,
};
use smalltalk_groups::llm::LlmClient;
use smalltalk_groups::{Agent, GroupManager, GroupsConfig, Summarizer, Trigger};
use smalltalk_health::{AgentHealthMonitor, HealthConfig};
use smalltalk_session::{SessionConfig, SessionManager};
use smalltalk_state::{Policies, StateConfig, StateStore};
use smalltalk_storage::Store;
use smalltalk_types::{
    AlertSink, BackgroundTask, Clock, ConversationId, LogAlertSink, SystemClock,
};

/// Errors from building or shutting down a [`Runtime`]: which part failed,
/// with its own error as the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be opened or closed.
    #[error("storage")]
    Storage(#[source] smalltalk_storage::Error),
    /// The session manager's configuration, or its final flush.
    #[error("sessions")]
    Session(#[source] smalltalk_session::Error),
    /// The event bus's configuration or log.
    #[error("event bus")]
    Events(#[source] smalltalk_events::Error),
    /// The health monitor's configuration.
    #[error("health monitor")]
    Health(#[source] smalltalk_health::Error),
    /// The state store's configuration.
    #[error("state store")]
    State(#[source] smalltalk_state::Error),
    /// The group manager's configuration.
    #[error("group manager")]
    Groups(#[source] smalltalk_groups::Error),
}

/// Builds a [`Runtime`]; see [`Runtime::builder`].
#[derive(Debug)]
pub struct RuntimeBuilder {
    source: Source,
    sessions: SessionConfig,
    events: EventBusConfig,
    health: HealthConfig,
    state: StateConfig,
    policies: Policies,
    groups: GroupsConfig,
    agents: Vec<Arc<dyn Agent>>,
    selector_llm: Option<LlmClient>,
    summarizer: Option<Arc<dyn Summarizer>>,
    endpoints: Vec<(String, LlmClient)>,
    clock: Arc<dyn Clock>,
    alerts: Arc<dyn AlertSink>,
    background: bool,
}

#[derive(Debug)]
enum Source {
    Url(String),
    Store(Arc<dyn Store>),
}

impl RuntimeBuilder {
    /// The session manager's configuration (validated by
    /// [`build`](Self::build)).
    pub fn sessions(mut self, config: SessionConfig) -> Self {
        self.sessions = config;
        self
    }

    /// The event bus's configuration.
    pub fn events(mut self, config: EventBusConfig) -> Self {
        self.events = config;
        self
    }

    /// The health monitor's configuration.
    pub fn health(mut self, config: HealthConfig) -> Self {
        self.health = config;
        self
    }

    /// The state store's configuration.
    pub fn state(mut self, config: StateConfig) -> Self {
        self.state = config;
        self
    }

    /// The state store's conflict policies, by key prefix.
    pub fn state_policies(mut self, policies: Policies) -> Self {
        self.policies = policies;
        self
    }

    /// The group manager's configuration.
    pub fn groups(mut self, config: GroupsConfig) -> Self {
        self.groups = config;
        self
    }

    /// Registers an agent with the group manager (more can be registered
    /// later with [`GroupManager::register_agent`]).
    pub fn agent(mut self, agent: Arc<dyn Agent>) -> Self {
        self.agents.push(agent);
        self
    }

    /// The LLM that `llm-based` groups ask who speaks next.
    pub fn selector_llm(mut self, client: LlmClient) -> Self {
        self.selector_llm = Some(client);
        self
    }

    /// What summarizes history for summary views of groups.
    pub fn summarizer(mut self, summarizer: Arc<dyn Summarizer>) -> Self {
        self.summarizer = Some(summarizer);
        self
    }

    /// An LLM endpoint that group participants described by configuration
    /// name (see [`groups::LlmProfile`](crate::groups::LlmProfile));
    /// [`groups::DEFAULT_ENDPOINT`](crate::groups::DEFAULT_ENDPOINT) is
    /// the one they use when they name none.
    pub fn llm_endpoint(mut self, name: impl Into<String>, client: LlmClient) -> Self {
        self.endpoints.push((name.into(), client));
        self
    }

    /// The clock every part uses (tests pass a `ManualClock`). Default: the
    /// system clock. With a URL, the store uses it too.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where alerts go (default: an ERROR log line each).
    pub fn alerts(mut self, alerts: Arc<dyn AlertSink>) -> Self {
        self.alerts = alerts;
        self
    }

    /// Whether [`build`](Self::build) starts the background tasks (session
    /// maintenance and flushes, health sweeps). Default `true`; tests that
    /// drive sweeps and maintenance by hand turn it off.
    pub fn background(mut self, background: bool) -> Self {
        self.background = background;
        self
    }

    /// Opens the store (for a URL), builds every part and connects them.
    /// Nothing is left open on failure.
    pub async fn build(self) -> Result<Runtime, Error> {
        let store = match self.source {
            Source::Url(url) => {
                let options = smalltalk_storage::OpenOptions {
                    clock: Arc::clone(&self.clock),
                };
                smalltalk_storage::open_with(&url, options)
                    .await
                    .map_err(Error::Storage)?
            }
            Source::Store(store) => store,
        };
        let state =
            StateStore::builder(Arc::clone(&store) as Arc<dyn smalltalk_storage::VersionedStore>)
                .config(self.state)
                .policies(self.policies)
                .clock(Arc::clone(&self.clock))
                .build()
                .map_err(Error::State);
        let state = match state {
            Ok(state) => state,
            Err(error) => {
                let _ = store.close().await;
                return Err(error);
            }
        };
        let built = Self::wire(
            Arc::clone(&store),
            &state,
            self.sessions,
            self.events,
            self.health,
            Arc::clone(&self.clock),
            self.alerts,
        )
        .await;
        let (sessions, bus, monitor) = match built {
            Ok(parts) => parts,
            Err(error) => {
                let _ = store.close().await;
                return Err(error);
            }
        };
        let groups = Self::groups_over(
            Arc::clone(&store),
            &bus,
            &monitor,
            self.groups,
            self.agents,
            self.selector_llm,
            self.summarizer,
            self.endpoints,
            self.clock,
        )
        .await;
        let (groups, triggers) = match groups {
            Ok(parts) => parts,
            Err(error) => {
                monitor.close();
                bus.close().await;
                let _ = store.close().await;
                return Err(error);
            }
        };
        let background = self.background.then(|| Background {
            maintenance: sessions.spawn_maintenance(),
            sweeps: monitor.spawn(),
            state: state.spawn_maintenance(),
        });
        Ok(Runtime {
            store,
            sessions,
            bus,
            monitor,
            state,
            groups,
            triggers: Some(triggers),
            background,
        })
    }

    /// The group manager, announcing on the bus and reporting failures to
    /// the monitor, with a bus subscription that starts rounds in the
    /// groups whose triggers match an event (FR-015).
    #[allow(clippy::too_many_arguments)]
    async fn groups_over(
        store: Arc<dyn Store>,
        bus: &EventBus,
        monitor: &AgentHealthMonitor,
        config: GroupsConfig,
        agents: Vec<Arc<dyn Agent>>,
        selector_llm: Option<LlmClient>,
        summarizer: Option<Arc<dyn Summarizer>>,
        endpoints: Vec<(String, LlmClient)>,
        clock: Arc<dyn Clock>,
    ) -> Result<(GroupManager, Subscription), Error> {
        let mut builder = GroupManager::builder(store as Arc<dyn smalltalk_storage::SessionStore>)
            .config(config)
            .clock(clock)
            .events(Arc::new(bus.clone()))
            .failures(Arc::new(monitor.clone()));
        for agent in agents {
            builder = builder.agent(agent);
        }
        if let Some(client) = selector_llm {
            builder = builder.selector_llm(client);
        }
        if let Some(summarizer) = summarizer {
            builder = builder.summarizer(summarizer);
        }
        for (name, client) in endpoints {
            builder = builder.llm_endpoint(name, client);
        }
        let groups = builder.build().map_err(Error::Groups)?;
        let dispatcher = groups.clone();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            groups.config().max_trigger_rounds,
        ));
        let triggers = bus
            .subscribe(
                ">",
                GROUP_TRIGGERS,
                move |delivery: Delivery| {
                    let rounds = triggered(&dispatcher, &delivery);
                    let groups = dispatcher.clone();
                    let permits = Arc::clone(&permits);
                    async move {
                        for (group, trigger) in rounds {
                            // Waits while max_trigger_rounds are running.
                            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                                break;
                            };
                            spawn_trigger_round(groups.clone(), group, trigger, permit);
                        }
                        Outcome::Ack
                    }
                },
                SubscribeOptions::default(),
            )
            .await
            .map_err(Error::Events)?;
        Ok((groups, triggers))
    }

    async fn wire(
        store: Arc<dyn Store>,
        state: &StateStore,
        sessions: SessionConfig,
        events: EventBusConfig,
        health: HealthConfig,
        clock: Arc<dyn Clock>,
        alerts: Arc<dyn AlertSink>,
    ) -> Result<(SessionManager, EventBus, AgentHealthMonitor), Error> {
        let bus = EventBus::builder()
            .config(events)
            .clock(Arc::clone(&clock))
            .log(Arc::clone(&store) as Arc<dyn smalltalk_storage::EventLog>)
            .build()
            .await
            .map_err(Error::Events)?;
        let manager = SessionManager::builder(Arc::clone(&store))
            .config(sessions)
            .clock(Arc::clone(&clock))
            .alerts(Arc::clone(&alerts))
            .events(Arc::new(bus.clone()))
            .content_purger(Arc::new(state.clone()))
            .build()
            .map_err(Error::Session);
        let manager = match manager {
            Ok(manager) => manager,
            Err(error) => {
                bus.close().await;
                return Err(error);
            }
        };
        let monitor = AgentHealthMonitor::builder()
            .config(health)
            .clock(clock)
            .alerts(alerts)
            // Agents serving a session keep their state there (FR-009a);
            // others in the store.
            .agent_states(Arc::new(manager.clone()))
            .states(Arc::clone(&store) as Arc<dyn smalltalk_storage::KeyValueStore>)
            .events(Arc::new(bus.clone()))
            .replayer(Arc::new(bus.clone()))
            .degradation_control(Arc::new(manager.clone()))
            .build()
            .map_err(Error::Health);
        match monitor {
            Ok(monitor) => Ok((manager, bus, monitor)),
            Err(error) => {
                bus.close().await;
                Err(error)
            }
        }
    }
}

/// The background tasks a runtime started.
#[derive(Debug)]
struct Background {
    maintenance: BackgroundTask,
    sweeps: BackgroundTask,
    state: BackgroundTask,
}

/// Every capability over one store, wired together. Cheap accessors hand
/// out the parts (each is itself cheap to clone).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use smalltalk::{CreateOptions, Message, Role, Runtime, Timestamp};
///
/// let dir = tempfile::tempdir()?;
/// let runtime = Runtime::builder(format!("sqlite://{}", dir.path().join("rt.db").display()))
///     .build()
///     .await?;
/// let session = runtime.sessions().create(CreateOptions::default()).await?;
/// runtime
///     .sessions()
///     .add_message(session.id, Message::new(Role::User, "hello", Timestamp::now()))
///     .await?;
/// // The announcement went onto the bus's durable log.
/// assert!(runtime.events().stats().await?.published >= 2);
/// runtime.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Runtime {
    store: Arc<dyn Store>,
    sessions: SessionManager,
    bus: EventBus,
    monitor: AgentHealthMonitor,
    state: StateStore,
    groups: GroupManager,
    triggers: Option<Subscription>,
    background: Option<Background>,
}

/// The bus subscriber that starts rounds in groups from events.
pub const GROUP_TRIGGERS: &str = "smalltalk.group-triggers";

/// The rounds an event starts: one in every open group whose triggers
/// match its topic. `group:`, `health:` and `agent:` topics never trigger.
/// The subscription spawns each round on its own task (at most
/// [`GroupsConfig::max_trigger_rounds`] at once) and acknowledges the event
/// once they are started, not finished: a crash during a round loses that
/// trigger (at most once).
fn triggered(groups: &GroupManager, delivery: &Delivery) -> Vec<(ConversationId, Trigger)> {
    let event = delivery.event();
    // Announcements of groups and of the health monitor (which hears of
    // group failures) never trigger: a failing round could trigger itself.
    if ["group:", "health:", "agent:"]
        .iter()
        .any(|prefix| event.topic.as_str().starts_with(prefix))
    {
        return Vec::new();
    }
    let targets = groups.triggered_by(&event.topic);
    if targets.is_empty() {
        return Vec::new();
    }
    let trigger = Trigger {
        event_id: event.id,
        topic: event.topic.clone(),
        payload: event.payload.to_value().unwrap_or_default(),
    };
    targets
        .into_iter()
        .map(|group| (group, trigger.clone()))
        .collect()
}

/// Runs an event's round in `group`, holding `permit` until it ends.
fn spawn_trigger_round(
    groups: GroupManager,
    group: ConversationId,
    trigger: Trigger,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let _permit = permit;
        match groups.handle_event(group, &trigger).await {
            Ok(_) => {}
            // Shutting down: the round is not started.
            Err(smalltalk_groups::Error::Closed) => {
                tracing::debug!(group_id = %group, topic = %trigger.topic, "an event arrived as the groups closed");
            }
            Err(error) => {
                tracing::warn!(group_id = %group, topic = %trigger.topic, "an event's round failed: {error}");
            }
        }
    });
}

impl Runtime {
    /// Starts building a runtime over the store at `url` (`sqlite://path`,
    /// `postgres://...`, `memory://`).
    pub fn builder(url: impl Into<String>) -> RuntimeBuilder {
        Self::builder_with(Source::Url(url.into()))
    }

    /// Starts building a runtime over a store already open. The runtime
    /// closes it at [`shutdown`](Self::shutdown).
    pub fn builder_over(store: Arc<dyn Store>) -> RuntimeBuilder {
        Self::builder_with(Source::Store(store))
    }

    fn builder_with(source: Source) -> RuntimeBuilder {
        RuntimeBuilder {
            source,
            sessions: SessionConfig::default(),
            events: EventBusConfig::default(),
            health: HealthConfig::default(),
            state: StateConfig::default(),
            policies: Policies::default(),
            groups: GroupsConfig::default(),
            agents: Vec::new(),
            selector_llm: None,
            summarizer: None,
            endpoints: Vec::new(),
            clock: Arc::new(SystemClock),
            alerts: Arc::new(LogAlertSink),
            background: true,
        }
    }

    /// A runtime with the defaults over the store at `url`.
    pub async fn open(url: &str) -> Result<Self, Error> {
        Self::builder(url).build().await
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The session manager (announcing on the bus, paused by the monitor's
    /// degradation).
    pub fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    /// The event bus, durable on the store's log.
    pub fn events(&self) -> &EventBus {
        &self.bus
    }

    /// The health monitor (transitions on the bus, missed events replayed
    /// from it, agent state saved in the store).
    pub fn health(&self) -> &AgentHealthMonitor {
        &self.monitor
    }

    /// The state store (a session's namespace is purged with the session).
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The group manager (turn events on the bus, agent failures reported
    /// to the monitor, rounds started by events matching a group's
    /// triggers).
    pub fn groups(&self) -> &GroupManager {
        &self.groups
    }

    /// Stops the groups' rounds under way and releases them, closes the
    /// health monitor (no sweep, late answer or recovery acts
    /// any more), stops the session maintenance between runs, stores every
    /// pending session write, closes the bus (waiting for its
    /// subscriptions), then the store. The first failure is returned; every
    /// step runs regardless.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(triggers) = self.triggers.take() {
            triggers.unsubscribe().await;
        }
        self.groups.close().await;
        self.monitor.close();
        if let Some(background) = self.background.take() {
            background.sweeps.shutdown().await;
            background.state.shutdown().await;
            // Lets a flush under way finish: aborting it could leave
            // messages stored but still pending, to be stored again.
            background.maintenance.shutdown().await;
        }
        let flushed = self.sessions.close().await.map_err(Error::Session);
        self.bus.close().await;
        let closed = self.store.close().await.map_err(Error::Storage);
        flushed.and(closed)
    }
}
