//! The [`GroupManager`]: groups, their rounds, and their persistence.

mod round;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use async_trait::async_trait;
use serde_json::{Map, Value};
use smalltalk_storage::{AppendOutcome, Expected, SessionStore};
use smalltalk_types::{
    AgentFailureSink, AgentId, Announcement, Clock, ConversationId, EventId, EventPriority,
    EventSink, Message, Role, Session, SessionId, SessionState, SystemClock, Topic,
};
use tokio::sync::{OwnedMutexGuard, broadcast, watch};

pub use stats::GroupStats;

use crate::llm::LlmClient;
use crate::record::RECORD_FORMAT;
use crate::selection::LlmSelector;
use crate::{
    Agent, AgentError, Error, GroupEvent, GroupEvents, GroupHooks, GroupRecord, GroupSpec,
    GroupsConfig, HistoryView, LlmAgent, Participant, RECORD_KEY, Result, RoundOutcome, Selection,
    Strategy, Task, TaskStatus,
};

/// Topic announced when a group is created.
pub const GROUP_CREATED: &str = "group:created";
/// Topic announced when a round starts.
pub const GROUP_ROUND_STARTED: &str = "group:round-started";
/// Topic announced when a speaker is chosen.
pub const GROUP_SPEAKER_SELECTED: &str = "group:speaker-selected";
/// Topic announced when a turn commits its message.
pub const GROUP_MESSAGE: &str = "group:message";
/// Topic announced when an agent fails its turn.
pub const GROUP_AGENT_FAILED: &str = "group:agent-failed";
/// Topic announced when a round ends.
pub const GROUP_ROUND_ENDED: &str = "group:round-ended";

/// Summarizes what falls out of an agent's window, for
/// [`HistoryView::Summary`].
#[async_trait]
pub trait Summarizer: Send + Sync + std::fmt::Debug + 'static {
    /// A summary of `earlier` (oldest first) for `agent` in `group`.
    async fn summarize(
        &self,
        group: ConversationId,
        agent: &AgentId,
        earlier: &[Message],
    ) -> std::result::Result<String, AgentError>;
}

/// An event that starts a round in the groups whose triggers match its
/// topic (FR-015); see [`GroupManager::handle_event`].
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The event's id: one round per event, however often it is delivered.
    pub event_id: EventId,
    /// Its topic.
    pub topic: Topic,
    /// Its payload, shown to the agents.
    pub payload: Value,
}

/// A group as it stands: its record and where its history is.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    /// The group.
    pub id: ConversationId,
    /// Its session (same UUID), holding its messages.
    pub session_id: SessionId,
    /// The session header's version, which every turn moves.
    pub version: u64,
    /// Messages in the history.
    pub message_count: u64,
    /// Everything else.
    pub record: GroupRecord,
}

/// [`Error::NotParticipant`] unless `agent` is in the group.
fn check_participant(id: ConversationId, record: &GroupRecord, agent: &AgentId) -> Result<()> {
    match record.spec.participant(agent) {
        Some(_) => Ok(()),
        None => Err(Error::NotParticipant {
            group_id: id,
            agent_id: agent.clone(),
        }),
    }
}

/// The session that holds group `id`'s messages and record.
pub fn session_of(id: ConversationId) -> SessionId {
    SessionId::from_uuid(id.as_uuid()).expect("a conversation id is a UUID v4, as session ids are")
}

/// Builds a [`GroupManager`]; see [`GroupManager::builder`].
#[derive(Debug)]
pub struct GroupManagerBuilder {
    store: Arc<dyn SessionStore>,
    config: GroupsConfig,
    clock: Arc<dyn Clock>,
    agents: Vec<Arc<dyn Agent>>,
    events: Option<Arc<dyn EventSink>>,
    failures: Option<Arc<dyn AgentFailureSink>>,
    selector: Option<LlmClient>,
    summarizer: Option<Arc<dyn Summarizer>>,
    endpoints: HashMap<String, LlmClient>,
}

impl GroupManagerBuilder {
    /// The configuration (validated by [`build`](Self::build)).
    pub fn config(mut self, config: GroupsConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock (tests pass a `ManualClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Registers an agent, for groups to name as a participant.
    pub fn agent(mut self, agent: Arc<dyn Agent>) -> Self {
        self.agents.push(agent);
        self
    }

    /// Where turn events are announced (the event bus, in the `Runtime`).
    pub fn events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.events = Some(sink);
        self
    }

    /// Where agent failures go once a group's retries gave up (the health
    /// monitor, in the `Runtime`).
    pub fn failures(mut self, sink: Arc<dyn AgentFailureSink>) -> Self {
        self.failures = Some(sink);
        self
    }

    /// The LLM that `llm-based` groups ask who speaks next.
    pub fn selector_llm(mut self, client: LlmClient) -> Self {
        self.selector = Some(client);
        self
    }

    /// What summarizes history for [`HistoryView::Summary`] views.
    pub fn summarizer(mut self, summarizer: Arc<dyn Summarizer>) -> Self {
        self.summarizer = Some(summarizer);
        self
    }

    /// An LLM endpoint that participants described by configuration
    /// ([`Participant::llm`](crate::Participant::llm)) name: `name` is
    /// what their profiles say ([`DEFAULT_ENDPOINT`](crate::DEFAULT_ENDPOINT)
    /// unless they name another).
    pub fn llm_endpoint(mut self, name: impl Into<String>, client: LlmClient) -> Self {
        self.endpoints.insert(name.into(), client);
        self
    }

    /// The manager.
    pub fn build(self) -> Result<GroupManager> {
        self.config.validate()?;
        let agents = self
            .agents
            .into_iter()
            .map(|agent| (agent.id().clone(), agent))
            .collect();
        let selector = self.selector.map(|client| LlmSelector {
            client,
            attempts: self.config.selection_attempts,
        });
        Ok(GroupManager {
            inner: Arc::new(Inner {
                store: self.store,
                config: self.config,
                clock: self.clock,
                agents: RwLock::new(agents),
                events: self.events,
                failures: self.failures,
                selector,
                summarizer: self.summarizer,
                endpoints: self.endpoints,
                live: Mutex::new(HashMap::new()),
                stats: stats::Counters::default(),
                closed: AtomicBool::new(false),
            }),
        })
    }
}

struct Inner {
    store: Arc<dyn SessionStore>,
    config: GroupsConfig,
    clock: Arc<dyn Clock>,
    agents: RwLock<HashMap<AgentId, Arc<dyn Agent>>>,
    endpoints: HashMap<String, LlmClient>,
    events: Option<Arc<dyn EventSink>>,
    failures: Option<Arc<dyn AgentFailureSink>>,
    selector: Option<LlmSelector>,
    summarizer: Option<Arc<dyn Summarizer>>,
    live: Mutex<HashMap<ConversationId, Arc<Live>>>,
    stats: stats::Counters,
    closed: AtomicBool,
}

/// A group open on this manager.
struct Live {
    id: ConversationId,
    state: Arc<tokio::sync::Mutex<State>>,
    snapshot: Mutex<Arc<GroupInfo>>,
    /// Made on the first subscription: a channel's buffer is allocated
    /// up front, and most groups have no subscriber.
    events: OnceLock<broadcast::Sender<GroupEvent>>,
    stop: watch::Sender<u64>,
    hooks: RwLock<GroupHooks>,
}

impl Live {
    /// Sends `event` to the group's subscribers, if it has any.
    fn publish(&self, event: GroupEvent) {
        if let Some(sender) = self.events.get() {
            let _ = sender.send(event);
        }
    }
}

/// A group's state, behind its lock.
struct State {
    /// The session header: the record goes into its metadata.
    header: Session,
    record: GroupRecord,
    version: u64,
    history: Vec<Message>,
    /// Set while a commit is under way: if its future is dropped (the
    /// caller cancelled), memory may hold what storage does not, and the
    /// next user reads the group again.
    dirty: bool,
}

impl State {
    fn info(&self, id: ConversationId) -> GroupInfo {
        GroupInfo {
            id,
            session_id: self.header.id,
            version: self.version,
            message_count: self.history.len() as u64,
            record: self.record.clone(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Group conversations: 2 to 10 agents taking turns on one history, with
/// speakers chosen by a pipeline that never livelocks, rounds ended by
/// composable conditions, and every turn saved at its boundary, so another
/// process resumes the group where this one stopped. Cheap to clone.
///
/// A group's messages are its session's messages (the session has the
/// group's UUID, [`session_of`]); its record (participants, rules,
/// counters, workflow, shared context) is in that session's header. A turn
/// commits its message and the record in one storage transaction
/// ([`SessionStore::save_and_append`]) under compare-and-swap on the
/// header's version: two runtimes never both commit a turn of one group,
/// the loser gets [`Error::Conflict`] and stored nothing.
#[derive(Clone)]
pub struct GroupManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GroupManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupManager")
            .field("active_groups", &lock(&self.inner.live).len())
            .field("agents", &read(&self.inner.agents).len())
            .finish_non_exhaustive()
    }
}

impl GroupManager {
    /// Starts building a manager over `store`.
    pub fn builder(store: Arc<dyn SessionStore>) -> GroupManagerBuilder {
        GroupManagerBuilder {
            store,
            config: GroupsConfig::default(),
            clock: Arc::new(SystemClock),
            agents: Vec::new(),
            events: None,
            failures: None,
            selector: None,
            summarizer: None,
            endpoints: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GroupsConfig {
        &self.inner.config
    }

    /// Registers an agent (replacing one with the same id).
    pub fn register_agent(&self, agent: Arc<dyn Agent>) {
        write(&self.inner.agents).insert(agent.id().clone(), agent);
    }

    /// The registered agent `id`.
    pub fn agent(&self, id: &AgentId) -> Option<Arc<dyn Agent>> {
        read(&self.inner.agents).get(id).cloned()
    }

    /// The names of the LLM endpoints participants may name.
    pub fn llm_endpoints(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.inner.endpoints.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Who speaks for `participant`: the LLM agent its profile describes,
    /// or the agent registered under its id.
    pub(crate) fn speaker(&self, participant: &Participant) -> Result<Arc<dyn Agent>, String> {
        let Some(profile) = &participant.llm else {
            return self.agent(&participant.agent_id).ok_or_else(|| {
                format!(
                    "agent {} is not registered with this manager",
                    participant.agent_id
                )
            });
        };
        let endpoint = profile.endpoint_name();
        let client = self.inner.endpoints.get(endpoint).ok_or_else(|| {
            format!("no LLM endpoint named {endpoint:?} is configured on this manager")
        })?;
        // Streamed, so subscribers see the answer as it is written.
        let mut agent = LlmAgent::new(participant.agent_id.clone(), client.clone())
            .system_prompt(profile.system_prompt.clone())
            .stream(true);
        if let Some(model) = &profile.model {
            agent = agent.model(model.clone());
        }
        if let Some(max_tokens) = profile.max_tokens {
            agent = agent.max_tokens(max_tokens);
        }
        Ok(Arc::new(agent))
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn check_spec(&self, spec: &GroupSpec) -> Result<()> {
        spec.validate()?;
        let agents = read(&self.inner.agents);
        for participant in &spec.participants {
            match &participant.llm {
                Some(profile) => {
                    let endpoint = profile.endpoint_name();
                    if !self.inner.endpoints.contains_key(endpoint) {
                        return Err(Error::UnknownEndpoint {
                            agent_id: participant.agent_id.clone(),
                            endpoint: endpoint.to_owned(),
                        });
                    }
                }
                None if !agents.contains_key(&participant.agent_id) => {
                    return Err(Error::UnknownAgent {
                        agent_id: participant.agent_id.clone(),
                    });
                }
                None => {}
            }
        }
        drop(agents);
        if spec.strategy == Strategy::LlmBased && self.inner.selector.is_none() {
            return Err(Error::InvalidGroup {
                reason:
                    "llm-based selection needs an LLM client (GroupManagerBuilder::selector_llm)"
                        .into(),
            });
        }
        let summarizes = std::iter::once(spec.view)
            .chain(
                spec.participants
                    .iter()
                    .filter_map(|participant| participant.view),
            )
            .any(|view| matches!(view, HistoryView::Summary(_)));
        if summarizes && self.inner.summarizer.is_none() {
            return Err(Error::InvalidGroup {
                reason: "a summary view needs a summarizer (GroupManagerBuilder::summarizer)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Creates a group with a new id.
    pub async fn create_group(&self, spec: GroupSpec) -> Result<GroupInfo> {
        self.create_group_with_id(ConversationId::new(), spec).await
    }

    /// Creates group `id`; [`Error::AlreadyExists`] if it exists.
    #[tracing::instrument(name = "group.create", skip_all, fields(group_id = %id), err)]
    pub async fn create_group_with_id(
        &self,
        id: ConversationId,
        spec: GroupSpec,
    ) -> Result<GroupInfo> {
        self.check_open()?;
        self.check_spec(&spec)?;
        self.check_capacity(id)?;
        let now = self.inner.clock.now();
        let record = GroupRecord::new(spec);
        let mut header = Session::new(session_of(id), now, self.inner.config.session_ttl);
        header.metadata.insert("kind".into(), Value::from("group"));
        header
            .metadata
            .insert(RECORD_KEY.into(), encode_record(&record)?);
        let outcome = self
            .inner
            .store
            .save_and_append(&header, Expected::Absent, &[])
            .await
            .map_err(|error| match error {
                smalltalk_storage::Error::AlreadyExists { .. } => {
                    Error::AlreadyExists { group_id: id }
                }
                other => Error::Storage(other),
            })?;
        let state = State {
            header,
            record,
            version: outcome.version,
            history: Vec::new(),
            dirty: false,
        };
        let info = state.info(id);
        self.insert_live(id, state)?;
        self.announce_simple(GROUP_CREATED, id, serde_json::json!({"groupId": id}))
            .await;
        Ok(info)
    }

    fn check_capacity(&self, id: ConversationId) -> Result<()> {
        let live = lock(&self.inner.live);
        if !live.contains_key(&id) && live.len() >= self.inner.config.max_active_groups {
            return Err(Error::AtCapacity {
                limit: self.inner.config.max_active_groups,
            });
        }
        Ok(())
    }

    fn insert_live(&self, id: ConversationId, state: State) -> Result<Arc<Live>> {
        let mut live = lock(&self.inner.live);
        if let Some(existing) = live.get(&id) {
            return Ok(Arc::clone(existing));
        }
        if live.len() >= self.inner.config.max_active_groups {
            return Err(Error::AtCapacity {
                limit: self.inner.config.max_active_groups,
            });
        }
        let group = Arc::new(Live {
            id,
            snapshot: Mutex::new(Arc::new(state.info(id))),
            state: Arc::new(tokio::sync::Mutex::new(state)),
            events: OnceLock::new(),
            stop: watch::channel(0).0,
            hooks: RwLock::new(GroupHooks::default()),
        });
        live.insert(id, Arc::clone(&group));
        metrics::gauge!("smalltalk_groups_active").set(live.len() as f64);
        Ok(group)
    }

    /// Reads group `id` from storage.
    async fn load_state(&self, id: ConversationId) -> Result<State> {
        let mut session = self.stored(id).await?;
        let record = decode_record(id, &session)?;
        let now = self.inner.clock.now();
        if !matches!(session.state, SessionState::Active | SessionState::Idle)
            || session.is_expired_at(now)
        {
            return Err(Error::SessionClosed { group_id: id });
        }
        let history = std::mem::take(&mut session.messages);
        Ok(State {
            version: session.version,
            header: session,
            record,
            history,
            dirty: false,
        })
    }

    /// The open group `id`, opening it from storage if needed.
    async fn live(&self, id: ConversationId) -> Result<Arc<Live>> {
        self.check_open()?;
        if let Some(group) = lock(&self.inner.live).get(&id) {
            return Ok(Arc::clone(group));
        }
        self.check_capacity(id)?;
        let state = self.load_state(id).await?;
        self.insert_live(id, state)
    }

    /// Opens group `id` on this manager (after a restart, on another
    /// node): its record and history are read from storage. A round the
    /// previous process left unfinished is finished with
    /// [`resume`](Self::resume).
    pub async fn open_group(&self, id: ConversationId) -> Result<GroupInfo> {
        let group = self.live(id).await?;
        let info = lock(&group.snapshot).as_ref().clone();
        Ok(info)
    }

    /// Group `id` as it stands (as of its last commit on this manager).
    pub async fn group(&self, id: ConversationId) -> Result<GroupInfo> {
        self.open_group(id).await
    }

    /// Group `id`'s history (its session's messages).
    ///
    /// During a round this does not wait for it: it reads what is
    /// committed from storage.
    pub async fn history(&self, id: ConversationId) -> Result<Vec<Message>> {
        let group = self.live(id).await?;
        if let Ok(state) = group.state.try_lock() {
            return Ok(state.history.clone());
        }
        Ok(self.stored(id).await?.messages)
    }

    /// Group `id` and its history as stored: the last commit of any
    /// process sharing the storage, read without opening the group here
    /// (no capacity used, nothing cached). [`Error::SessionClosed`] once
    /// its session is expired or invalidated.
    pub async fn read_group(&self, id: ConversationId) -> Result<(GroupInfo, Vec<Message>)> {
        let mut session = self.stored(id).await?;
        let record = decode_record(id, &session)?;
        if !matches!(session.state, SessionState::Active | SessionState::Idle)
            || session.is_expired_at(self.inner.clock.now())
        {
            return Err(Error::SessionClosed { group_id: id });
        }
        let history = std::mem::take(&mut session.messages);
        let info = GroupInfo {
            id,
            session_id: session.id,
            version: session.version,
            message_count: history.len() as u64,
            record,
        };
        Ok((info, history))
    }

    /// Group `id`'s session as stored, its messages included.
    async fn stored(&self, id: ConversationId) -> Result<Session> {
        self.inner
            .store
            .get_session(session_of(id))
            .await
            .map_err(Error::Storage)?
            .ok_or(Error::NotFound { group_id: id })
    }

    /// Sets group `id`'s hooks (custom selector, candidate filter). Hooks
    /// are code, not saved: set them again after opening the group in a
    /// new process.
    pub async fn set_hooks(&self, id: ConversationId, hooks: GroupHooks) -> Result<()> {
        let group = self.live(id).await?;
        *write(&group.hooks) = hooks;
        Ok(())
    }

    /// Subscribes to group `id`'s events, from now on.
    pub async fn subscribe(&self, id: ConversationId) -> Result<GroupEvents> {
        let group = self.live(id).await?;
        let buffer = self.inner.config.event_buffer;
        let sender = group.events.get_or_init(|| broadcast::channel(buffer).0);
        Ok(GroupEvents::new(sender.subscribe()))
    }

    /// Stops the round under way in group `id`: the turn being taken is
    /// cancelled (its answer is not stored) and the round ends with
    /// [`RoundEnd::Stopped`](crate::RoundEnd::Stopped). Rounds started
    /// later are not affected. `false` if the group is not open here.
    pub fn stop(&self, id: ConversationId) -> bool {
        let Some(group) = lock(&self.inner.live).get(&id).cloned() else {
            return false;
        };
        group.stop.send_modify(|generation| *generation += 1);
        true
    }

    /// Closes group `id` on this manager without ending it: it stays in
    /// storage, to be opened again. Its subscriptions end. Waits for a
    /// round under way. `false` if it was not open.
    pub async fn release(&self, id: ConversationId) -> bool {
        let group = lock(&self.inner.live).get(&id).cloned();
        let Some(group) = group else {
            return false;
        };
        let _state = group.state.lock().await;
        self.evict(&group);
        true
    }

    /// Closes group `id` on this manager, like [`release`](Self::release),
    /// but only if nothing uses it now: no call under way, no round, no
    /// subscriber. Never waits; `false` if it stays open (or was not).
    /// What a server calls after each request, so that the last request
    /// out releases the group.
    pub fn release_idle(&self, id: ConversationId) -> bool {
        let mut live = lock(&self.inner.live);
        let Some(group) = live.get(&id) else {
            return false;
        };
        let subscribed = group
            .events
            .get()
            .is_some_and(|sender| sender.receiver_count() > 0);
        if Arc::strong_count(group) > 1 || subscribed || group.state.try_lock().is_err() {
            return false;
        }
        live.remove(&id);
        metrics::gauge!("smalltalk_groups_active").set(live.len() as f64);
        true
    }

    /// The groups open on this manager.
    pub fn open_groups(&self) -> usize {
        lock(&self.inner.live).len()
    }

    /// Drops group `id` from this manager (it is read again on next use).
    fn forget(&self, id: ConversationId) {
        let mut live = lock(&self.inner.live);
        live.remove(&id);
        metrics::gauge!("smalltalk_groups_active").set(live.len() as f64);
    }

    fn evict(&self, group: &Arc<Live>) {
        let mut live = lock(&self.inner.live);
        if live
            .get(&group.id)
            .is_some_and(|current| Arc::ptr_eq(current, group))
        {
            live.remove(&group.id);
        }
        metrics::gauge!("smalltalk_groups_active").set(live.len() as f64);
    }

    /// Ends group `id`: it takes no more rounds ([`Error::Finished`]), and
    /// is released. Its history stays, for as long as its session does.
    pub async fn end_group(&self, id: ConversationId, reason: &str) -> Result<GroupInfo> {
        let (group, mut state) = self.exclusive(id, true).await?;
        let info = self
            .change(&group, &mut state, |record| {
                record.finished = Some(if reason.is_empty() {
                    "ended".into()
                } else {
                    reason.into()
                });
                Ok(())
            })
            .await?;
        drop(state);
        self.evict(&group);
        Ok(info)
    }

    /// Adds a participant (registered with the manager). A group never
    /// has more than 10: [`Error::ParticipantCount`].
    pub async fn add_participant(
        &self,
        id: ConversationId,
        participant: Participant,
    ) -> Result<GroupInfo> {
        self.mutate(id, false, |record| {
            if record.spec.participant(&participant.agent_id).is_some() {
                return Err(Error::DuplicateParticipant {
                    agent_id: participant.agent_id.clone(),
                });
            }
            let mut spec = record.spec.clone();
            spec.participants.push(participant);
            self.check_spec(&spec)?;
            record.spec = spec;
            Ok(())
        })
        .await
    }

    /// Removes a participant. A group never has fewer than 2:
    /// [`Error::ParticipantCount`]. Transition rules naming it lose those
    /// entries.
    pub async fn remove_participant(
        &self,
        id: ConversationId,
        agent: &AgentId,
    ) -> Result<GroupInfo> {
        let agent = agent.clone();
        self.mutate(id, false, move |record| {
            let before = record.spec.participants.len();
            record
                .spec
                .participants
                .retain(|participant| participant.agent_id != agent);
            if record.spec.participants.len() == before {
                return Err(Error::NotParticipant {
                    group_id: id,
                    agent_id: agent.clone(),
                });
            }
            if let Some(transitions) = &mut record.spec.transitions {
                let graph = match transitions {
                    crate::Transitions::Allowed(graph) | crate::Transitions::Disallowed(graph) => {
                        graph
                    }
                };
                graph.remove(&agent);
                for targets in graph.values_mut() {
                    targets.remove(&agent);
                }
            }
            record.cooldowns.remove(&agent);
            // Its unfinished tasks wait for someone else.
            for task in &mut record.workflow.tasks {
                if task.assignee.as_ref() == Some(&agent)
                    && !matches!(task.status, TaskStatus::Completed | TaskStatus::Failed)
                {
                    task.assignee = None;
                }
            }
            if record.last_speaker.as_ref() == Some(&agent) {
                record.consecutive = 0;
            }
            record.spec.validate()
        })
        .await
    }

    /// Merges `patch` into group `id`'s shared context (RFC 7396: `null`
    /// removes a key). The patch must be a JSON object.
    pub async fn update_shared_context(
        &self,
        id: ConversationId,
        patch: Value,
    ) -> Result<GroupInfo> {
        if !patch.is_object() {
            return Err(Error::InvalidInput {
                reason: "a shared-context patch must be a JSON object".into(),
            });
        }
        smalltalk_types::format::check_depth("shared context patch", &patch)?;
        self.mutate(id, false, move |record| {
            merge_context(&mut record.shared_context, &patch);
            check_context(&record.shared_context).map_err(|reason| Error::InvalidInput { reason })
        })
        .await
    }

    /// Sets group `id`'s current topic (`None` clears it).
    pub async fn set_topic(&self, id: ConversationId, topic: Option<String>) -> Result<GroupInfo> {
        if topic
            .as_ref()
            .is_some_and(|topic| topic.len() > crate::spec::MAX_TEXT_LEN)
        {
            return Err(Error::InvalidInput {
                reason: format!("a topic has at most {} bytes", crate::spec::MAX_TEXT_LEN),
            });
        }
        self.mutate(id, false, move |record| {
            record.topic = topic;
            Ok(())
        })
        .await
    }

    /// Adds a task to group `id`'s workflow. Its assignee, if any, must be
    /// a participant ([`Error::NotParticipant`]).
    pub async fn add_task(&self, id: ConversationId, task: Task) -> Result<GroupInfo> {
        self.mutate(id, false, move |record| {
            if let Some(assignee) = &task.assignee {
                check_participant(id, record, assignee)?;
            }
            record.workflow.add(task)
        })
        .await
    }

    /// Assigns task `task` of group `id`'s workflow to a participant, or
    /// to no one.
    pub async fn assign_task(
        &self,
        id: ConversationId,
        task: &str,
        assignee: Option<AgentId>,
    ) -> Result<GroupInfo> {
        let task = task.to_owned();
        self.mutate(id, false, move |record| {
            if let Some(assignee) = &assignee {
                check_participant(id, record, assignee)?;
            }
            record.workflow.assign(&task, assignee)
        })
        .await
    }

    /// Moves a task of group `id`'s workflow to `status`.
    pub async fn set_task_status(
        &self,
        id: ConversationId,
        task: &str,
        status: TaskStatus,
    ) -> Result<GroupInfo> {
        let task = task.to_owned();
        self.mutate(id, false, move |record| {
            record.workflow.set_status(&task, status)
        })
        .await
    }

    /// Reads the group again if another writer committed since this
    /// manager last did (one cheap read of the header's version), so a
    /// round or a change starts from what is stored.
    async fn refresh(&self, group: &Live, state: &mut State) -> Result<()> {
        let stored = self
            .inner
            .store
            .get_session_summary(state.header.id)
            .await
            .map_err(Error::Storage)?;
        match stored {
            Some(summary) if summary.version == state.version && !state.dirty => Ok(()),
            Some(_) => {
                let fresh = match self.load_state(group.id).await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        self.forget(group.id);
                        return Err(error);
                    }
                };
                *lock(&group.snapshot) = Arc::new(fresh.info(group.id));
                *state = fresh;
                Ok(())
            }
            None => {
                self.forget(group.id);
                Err(Error::NotFound { group_id: group.id })
            }
        }
    }

    /// Changes the record outside a round and commits it; waits for a
    /// round under way (or, with `wait` false, refuses during one).
    async fn mutate(
        &self,
        id: ConversationId,
        wait: bool,
        change: impl FnOnce(&mut GroupRecord) -> Result<()>,
    ) -> Result<GroupInfo> {
        let (group, mut state) = self.exclusive(id, wait).await?;
        self.change(&group, &mut state, change).await
    }

    /// Group `id`, open on this manager and locked: waiting for a round
    /// under way when `wait`, else [`Error::RoundInProgress`]. It is read
    /// again if another writer committed since this manager last did; one
    /// released while the call waited is opened again.
    async fn exclusive(
        &self,
        id: ConversationId,
        wait: bool,
    ) -> Result<(Arc<Live>, OwnedMutexGuard<State>)> {
        for _ in 0..3 {
            let group = self.live(id).await?;
            let lock = Arc::clone(&group.state);
            let mut state = if wait {
                lock.lock_owned().await
            } else {
                lock.try_lock_owned()
                    .map_err(|_| Error::RoundInProgress { group_id: id })?
            };
            if !self.is_current(&group) {
                // Released (or closed) while this call waited.
                self.check_open()?;
                continue;
            }
            self.refresh(&group, &mut state).await?;
            return Ok((group, state));
        }
        Err(Error::RoundInProgress { group_id: id })
    }

    /// Whether `group` is still the one open under its id.
    fn is_current(&self, group: &Arc<Live>) -> bool {
        lock(&self.inner.live)
            .get(&group.id)
            .is_some_and(|current| Arc::ptr_eq(current, group))
    }

    /// Applies `change` to the record and commits it.
    async fn change(
        &self,
        group: &Live,
        state: &mut State,
        change: impl FnOnce(&mut GroupRecord) -> Result<()>,
    ) -> Result<GroupInfo> {
        let mut record = state.record.clone();
        change(&mut record)?;
        state.record = record;
        // On failure the commit read the group again: memory is what is
        // stored, whether or not this change landed.
        self.commit(group, state, Vec::new()).await?;
        Ok(state.info(group.id))
    }

    /// Writes the record and `messages` at the turn boundary: one storage
    /// transaction, under compare-and-swap on the header's version. On a
    /// lost race the state is read again from storage and
    /// [`Error::Conflict`] returned: nothing of this turn was stored.
    async fn commit(
        &self,
        group: &Live,
        state: &mut State,
        messages: Vec<Message>,
    ) -> Result<AppendOutcome> {
        state.dirty = true;
        let now = self.inner.clock.now();
        state.header.updated_at = now;
        state.header.expires_at = now.saturating_add(self.inner.config.session_ttl);
        state
            .header
            .metadata
            .insert(RECORD_KEY.into(), encode_record(&state.record)?);
        let written = self
            .inner
            .store
            .save_and_append(&state.header, Expected::Version(state.version), &messages)
            .await;
        match written {
            Ok(outcome) => {
                state.dirty = false;
                state.version = outcome.version;
                self.inner.stats.stored(messages.len());
                state.history.extend(messages);
                *lock(&group.snapshot) = Arc::new(state.info(group.id));
                Ok(outcome)
            }
            Err(error) => {
                let conflict = matches!(
                    error,
                    smalltalk_storage::Error::Conflict { .. }
                        | smalltalk_storage::Error::NotFound { .. }
                );
                // Whatever happened, what is stored is the truth now.
                match self.load_state(group.id).await {
                    Ok(fresh) => {
                        *lock(&group.snapshot) = Arc::new(fresh.info(group.id));
                        *state = fresh;
                    }
                    Err(reload) => {
                        tracing::warn!(group_id = %group.id, "group could not be read again after a failed commit: {reload}");
                        self.forget(group.id);
                        if conflict {
                            return Err(reload);
                        }
                    }
                }
                if conflict {
                    self.inner.stats.conflict();
                    Err(Error::Conflict { group_id: group.id })
                } else {
                    Err(Error::Storage(error))
                }
            }
        }
    }

    /// Runs one round answering `text` from the user: turns until the
    /// group's termination condition holds (or a turn limit, a stop, no
    /// eligible speaker). The user message and every turn are saved as
    /// they happen.
    pub async fn handle_message(&self, id: ConversationId, text: &str) -> Result<RoundOutcome> {
        let message = Message::new(Role::User, text, self.inner.clock.now());
        self.handle_user_message(id, message).await
    }

    /// [`handle_message`](Self::handle_message) with a message built by
    /// the caller (its id, metadata, timestamp).
    pub async fn handle_user_message(
        &self,
        id: ConversationId,
        message: Message,
    ) -> Result<RoundOutcome> {
        self.check_message(&message)?;
        let (group, mut state) = self.exclusive(id, false).await?;
        self.run_round(&group, &mut state, message, None).await
    }

    /// What [`handle_message`](Self::handle_message) would refuse of
    /// `text` before starting a round ([`Error::InvalidInput`]: empty, or
    /// over [`GroupsConfig::max_message_bytes`](crate::GroupsConfig)).
    pub fn check_user_message(&self, text: &str) -> Result<()> {
        self.check_message(&Message::new(Role::User, text, self.inner.clock.now()))
    }

    fn check_message(&self, message: &Message) -> Result<()> {
        if message.content.trim().is_empty() {
            return Err(Error::InvalidInput {
                reason: "a message must not be empty".into(),
            });
        }
        if message.content.len() > self.inner.config.max_message_bytes {
            return Err(Error::InvalidInput {
                reason: format!(
                    "a message has at most {} bytes",
                    self.inner.config.max_message_bytes
                ),
            });
        }
        message.validate_depth()?;
        Ok(())
    }

    /// Finishes the round group `id` has in progress (one a stopped
    /// process left, or one that failed on a lost commit race).
    pub async fn resume(&self, id: ConversationId) -> Result<RoundOutcome> {
        let (group, mut state) = self.exclusive(id, false).await?;
        if state.record.round.is_none() {
            return Err(Error::NoRoundInProgress { group_id: id });
        }
        let generation = *group.stop.borrow();
        self.run_turns(&group, &mut state, generation, Vec::new())
            .await
    }

    /// The open groups whose triggers match `topic`.
    pub fn triggered_by(&self, topic: &Topic) -> Vec<ConversationId> {
        let live: Vec<Arc<Live>> = lock(&self.inner.live).values().cloned().collect();
        live.into_iter()
            .filter(|group| {
                lock(&group.snapshot)
                    .record
                    .spec
                    .triggers
                    .iter()
                    .any(|pattern| pattern.matches(topic))
            })
            .map(|group| group.id)
            .collect()
    }

    /// Runs a round in group `id` for an event (FR-015): the agents see a
    /// system message naming its topic and payload. Waits for a round
    /// under way. One round per event id: `None` when this event started
    /// one already.
    pub async fn handle_event(
        &self,
        id: ConversationId,
        trigger: &Trigger,
    ) -> Result<Option<RoundOutcome>> {
        let (group, mut state) = self.exclusive(id, true).await?;
        if state.record.triggers_seen.contains(&trigger.event_id) {
            return Ok(None);
        }
        let mut message = Message::new(
            Role::System,
            format!("Event {}: {}", trigger.topic, trigger.payload),
            self.inner.clock.now(),
        );
        message.metadata.insert(
            "trigger".into(),
            serde_json::json!({"eventId": trigger.event_id, "topic": trigger.topic.as_str()}),
        );
        self.check_message(&message)?;
        self.run_round(&group, &mut state, message, Some(trigger.event_id))
            .await
            .map(Some)
    }

    /// Who would speak next in group `id`, without taking a turn (the LLM
    /// is asked, for an `llm-based` group). `None` when no one may. A dry
    /// run: it is not counted in [`stats`](Self::stats).
    pub async fn select_speaker(&self, id: ConversationId) -> Result<Option<Selection>> {
        let (group, state) = self.exclusive(id, false).await?;
        let turn = state
            .record
            .round
            .as_ref()
            .map_or(1, |round| round.turns + 1);
        Ok(self.select(&group, &state, &Default::default(), turn).await)
    }

    /// Counts since the manager was built.
    pub fn stats(&self) -> GroupStats {
        self.inner
            .stats
            .snapshot(lock(&self.inner.live).len() as u64)
    }

    /// Stops every round under way, releases every group and refuses
    /// further calls ([`Error::Closed`]). Idempotent.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let groups: Vec<Arc<Live>> = lock(&self.inner.live).values().cloned().collect();
        for group in &groups {
            group.stop.send_modify(|generation| *generation += 1);
        }
        for group in groups {
            let _state = group.state.lock().await;
            self.evict(&group);
        }
    }

    async fn announce_simple(&self, topic: &'static str, id: ConversationId, payload: Value) {
        let Some(sink) = &self.inner.events else {
            return;
        };
        let Ok(topic) = Topic::parse(topic) else {
            return;
        };
        sink.announce(Announcement {
            topic,
            priority: EventPriority::Normal,
            session_id: Some(session_of(id)),
            conversation_id: Some(id),
            payload,
            timestamp: self.inner.clock.now(),
        })
        .await;
    }
}

fn encode_record(record: &GroupRecord) -> Result<Value> {
    serde_json::to_value(record)
        .map_err(|error| Error::Domain(smalltalk_types::Error::Encoding(error)))
}

fn decode_record(id: ConversationId, session: &Session) -> Result<GroupRecord> {
    let undecodable = |reason: String| Error::Undecodable {
        group_id: id,
        reason,
    };
    // A session that is not a group: there is no such group.
    let value = session
        .metadata
        .get(RECORD_KEY)
        .ok_or(Error::NotFound { group_id: id })?;
    let format = value
        .get("formatVersion")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if format > u64::from(RECORD_FORMAT) {
        return Err(Error::Domain(
            smalltalk_types::Error::UnsupportedFormatVersion {
                found: u32::try_from(format).unwrap_or(u32::MAX),
                supported: RECORD_FORMAT,
            },
        ));
    }
    serde_json::from_value(value.clone()).map_err(|error| undecodable(error.to_string()))
}

/// The most bytes a group's shared context takes (as JSON): it is saved
/// at every turn and shown to every agent.
pub const MAX_CONTEXT_BYTES: usize = 256 * 1024;

/// Checks a shared context fits in its record: at most
/// [`MAX_CONTEXT_BYTES`], and nesting that leaves room for the two levels
/// the record puts around it in the session's metadata.
pub(crate) fn check_context(context: &Map<String, Value>) -> std::result::Result<(), String> {
    let bytes = serde_json::to_vec(context).map_or(usize::MAX, |json| json.len());
    if bytes > MAX_CONTEXT_BYTES {
        return Err(format!(
            "the shared context would take {bytes} bytes, more than {MAX_CONTEXT_BYTES}"
        ));
    }
    let wrapped = serde_json::json!({"record": {"sharedContext": context}});
    smalltalk_types::format::check_depth("shared context", &wrapped)
        .map_err(|error| error.to_string())
}

/// RFC 7396 merge of `patch` into an object.
fn merge_context(context: &mut Map<String, Value>, patch: &Value) {
    let mut document = Value::Object(std::mem::take(context));
    json_patch::merge(&mut document, patch);
    if let Value::Object(merged) = document {
        *context = merged;
    }
}
