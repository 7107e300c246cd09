//! The [`EventBus`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smalltalk_storage::{EventFilter, EventLog};
use smalltalk_types::{
    Clock, Event, EventId, FORMAT_VERSION, Payload, StorageKey, SubscriberId, SystemClock, Topic,
    TopicPattern, TryIntoId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::dispatch::Dispatch;
use crate::log::{Backing, Entry, MemoryLog, report_undecodable};
use crate::stats::{BusCounters, BusStats, bump};
use crate::subscription::{self, Command, NewSubscription, Processed, Start};
mod ports;
mod registry;
mod tasks;

pub(crate) use registry::Registry;
use tasks::{Commit, commit_loop, purge, purge_loop, tail_loop};

use crate::{
    Draft, Error, EventBusConfig, EventHandler, PublishOptions, Published, ReplayOptions,
    ReplayReport, Result, SubscribeOptions, Subscription,
};

/// Processed-id registries kept for (subscriber, pattern) pairs with no
/// subscription now, at most (the least recently used go first).
pub(crate) const MAX_IDLE_REGISTRIES: usize = 256;

/// The fan-out state and its locks. `state` (a plain mutex) is held only
/// to fan out or to look, never across an await: `subscribe` and `stats`
/// take it and never wait on storage. A durable bus also has `order`, held
/// by whoever appends to the log or reads it to dispatch, across that I/O,
/// so positions are dispatched in order, once.
#[derive(Debug)]
struct DispatchLock {
    state: Mutex<Dispatch>,
    order: Option<tokio::sync::Mutex<()>>,
}

impl DispatchLock {
    fn new(start: u64, durable: bool) -> Self {
        Self {
            state: Mutex::new(Dispatch::new(start)),
            order: durable.then(|| tokio::sync::Mutex::new(())),
        }
    }

    /// Runs `f` with the state locked (briefly: `f` does no I/O).
    fn with<R>(&self, f: impl FnOnce(&mut Dispatch) -> R) -> R {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The durable bus's ordering lock, held across log appends and reads.
    async fn order(&self) -> tokio::sync::MutexGuard<'_, ()> {
        match &self.order {
            Some(order) => order.lock().await,
            None => unreachable!("only durable buses append to or read the log to dispatch"),
        }
    }
}

/// What the bus's handle, its tasks and its subscriptions share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EventBusConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) backing: Backing,
    pub(crate) registry: Registry,
    pub(crate) counters: BusCounters,
    pub(crate) epoch: Instant,
    dispatch: DispatchLock,
    /// A copy of the dispatched position, readable without the lock.
    dispatched: AtomicU64,
    processed: Mutex<lru::LruCache<StorageKey, Processed>>,
    next_serial: AtomicU64,
}

impl Shared {
    pub(crate) fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    fn fan_out(&self, dispatch: &mut Dispatch, events: &[Arc<Event>]) {
        dispatch.fan_out(&self.registry, events, true);
        self.dispatched
            .store(dispatch.dispatched, Ordering::Release);
    }

    /// Dispatches what other processes appended after the dispatched
    /// position and before `before` (exclusive; `None`: up to the newest).
    /// The caller holds the ordering lock; the state lock is taken only to
    /// fan out, never across the read.
    async fn dispatch_from_log(&self, before: Option<u64>) -> Result<()> {
        let everything = EventFilter::default();
        loop {
            let dispatched = self.dispatch.with(|dispatch| dispatch.dispatched);
            if before.is_some_and(|before| dispatched + 1 >= before) {
                return Ok(());
            }
            let batch = self
                .backing
                .read(dispatched, &everything, self.config.max_batch)
                .await?;
            let full = batch.len() == self.config.max_batch;
            let reached_before = self
                .dispatch
                .with(|dispatch| self.fan_out_entries(dispatch, batch, before));
            if !full || reached_before {
                return Ok(());
            }
        }
    }

    /// Fans out what was read from the log, in order, passing over rows
    /// that do not decode; `true` if it stopped at `before`.
    fn fan_out_entries(
        &self,
        dispatch: &mut Dispatch,
        batch: Vec<Entry>,
        before: Option<u64>,
    ) -> bool {
        let first = batch.first().map_or(0, Entry::position);
        if first > dispatch.dispatched + 1 && before.is_none_or(|before| first < before) {
            // Retention purged events this bus never dispatched: go on
            // after them, and make every subscription look back, so each
            // reports the gap to its handler.
            tracing::error!(
                dispatched = dispatch.dispatched,
                first,
                "events were purged before this bus dispatched them"
            );
            dispatch.dispatched = first - 1;
            for subscription in self.registry.snapshot() {
                subscription.look_back();
            }
        }
        let mut run: Vec<Arc<Event>> = Vec::with_capacity(batch.len());
        let mut reached_before = false;
        for entry in batch {
            if before.is_some_and(|before| entry.position() >= before) {
                reached_before = true;
                break;
            }
            match entry {
                Entry::Event(event) => run.push(event),
                Entry::Undecodable(row) => {
                    // What came before it goes out first; then it is passed
                    // over, so it never holds back what follows.
                    self.fan_out(dispatch, &run);
                    run.clear();
                    if row.position == dispatch.dispatched + 1 {
                        report_undecodable(&row, &"the bus's dispatcher");
                        bump(&self.counters.undecodable);
                        dispatch.dispatched = row.position;
                    }
                }
            }
        }
        self.fan_out(dispatch, &run);
        reached_before
    }

    /// The processed-id registry of a (subscriber, pattern): kept across
    /// re-subscribes in this process. Registries no subscription holds any
    /// more are dropped, least recently used first, past
    /// [`MAX_IDLE_REGISTRIES`], so subscribers coming and going for months
    /// keep bounded memory.
    fn processed_for(&self, key: &StorageKey) -> Processed {
        let mut processed = self
            .processed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let registry = match processed.get(key) {
            Some(registry) => Arc::clone(registry),
            None => {
                let registry = subscription::new_processed();
                processed.put(key.clone(), Arc::clone(&registry));
                registry
            }
        };
        // Held by the map alone: no subscription uses it.
        let idle: Vec<StorageKey> = processed
            .iter()
            .rev()
            .filter(|(_, registry)| Arc::strong_count(registry) == 1)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle
            .iter()
            .take(idle.len().saturating_sub(MAX_IDLE_REGISTRIES))
        {
            processed.pop(key);
        }
        registry
    }

    /// Processed-id registries kept now (for stats).
    fn processed_registries(&self) -> usize {
        self.processed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// Builds an [`EventBus`].
#[derive(Debug, Default)]
pub struct EventBusBuilder {
    config: EventBusConfig,
    clock: Option<Arc<dyn Clock>>,
    log: Option<Arc<dyn EventLog>>,
}

impl EventBusBuilder {
    /// The configuration (default: [`EventBusConfig::default`]).
    pub fn config(mut self, config: EventBusConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock that stamps events and drives retention (default: the
    /// system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Durable mode: every event is appended to `log` before it is
    /// delivered (group-committed), replay reads it, and other processes
    /// sharing the log see the events. Without a log the bus runs in
    /// memory.
    pub fn log(mut self, log: Arc<dyn EventLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// Validates the configuration and starts the bus's tasks (the
    /// retention purge; in durable mode the committer and the log tailer).
    /// Must run inside a Tokio runtime.
    pub async fn build(self) -> Result<EventBus> {
        self.config.validate()?;
        let (backing, start) = match self.log {
            Some(log) => {
                let last = log.log_bounds().await?.last;
                (Backing::Durable(log), last)
            }
            None => (
                Backing::Memory(MemoryLog::new(self.config.memory_log_capacity)),
                0,
            ),
        };
        let dispatch = DispatchLock::new(start, backing.is_durable());
        let shared = Arc::new(Shared {
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            backing,
            registry: Registry::default(),
            counters: BusCounters::default(),
            epoch: Instant::now(),
            dispatch,
            dispatched: AtomicU64::new(start),
            processed: Mutex::new(lru::LruCache::unbounded()),
            next_serial: AtomicU64::new(1),
            config: self.config,
        });
        let (shutdown, _) = watch::channel(false);
        let committer = if shared.backing.is_durable() {
            let (sender, receiver) = mpsc::channel(shared.config.max_batch.max(64));
            tokio::spawn(commit_loop(
                Arc::clone(&shared),
                receiver,
                shutdown.subscribe(),
            ));
            tokio::spawn(tail_loop(Arc::downgrade(&shared), shutdown.subscribe()));
            Some(sender)
        } else {
            None
        };
        tokio::spawn(purge_loop(Arc::downgrade(&shared), shutdown.subscribe()));
        Ok(EventBus {
            inner: Arc::new(Handle {
                shared,
                closed: std::sync::atomic::AtomicBool::new(false),
                committer,
                shutdown,
            }),
        })
    }
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    closed: std::sync::atomic::AtomicBool,
    committer: Option<mpsc::Sender<Commit>>,
    shutdown: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for subscription in self.shared.registry.snapshot() {
            subscription.request_stop();
        }
    }
}

/// Publish/subscribe over an ordered log, with replay and at-least-once,
/// idempotent delivery. Cheap to clone; the bus stops when the last clone
/// is dropped or [`close`](Self::close)d.
///
/// See the [crate docs](crate) for the model and an example.
#[derive(Debug, Clone)]
pub struct EventBus {
    inner: Arc<Handle>,
}

impl EventBus {
    /// A builder, to set the configuration, clock and log.
    pub fn builder() -> EventBusBuilder {
        EventBusBuilder::default()
    }

    /// A bus in memory with the default configuration.
    pub async fn in_memory() -> Result<Self> {
        Self::builder().build().await
    }

    /// A durable bus over `log` with the default configuration.
    pub async fn durable(log: Arc<dyn EventLog>) -> Result<Self> {
        Self::builder().log(log).build().await
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Whether events are appended to a durable log before delivery.
    pub fn is_durable(&self) -> bool {
        self.shared().backing.is_durable()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EventBusConfig {
        &self.shared().config
    }

    /// Builds an event (not yet positioned) and its payload size.
    fn prepare(&self, draft: Draft) -> Result<(Event, usize)> {
        let shared = self.shared();
        let size = draft.payload.len();
        if size > shared.config.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size,
                max: shared.config.max_payload_bytes,
            });
        }
        let options = draft.options;
        if options
            .metadata
            .contains_key(smalltalk_types::event::IMPORTED_FROM)
        {
            return Err(Error::ReservedMetadata {
                key: smalltalk_types::event::IMPORTED_FROM,
            });
        }
        let event = Event {
            id: options.id.unwrap_or_default(),
            event_type: options
                .event_type
                .unwrap_or_else(|| draft.topic.as_str().to_owned()),
            topic: draft.topic,
            publisher: options
                .publisher
                .unwrap_or_else(|| shared.config.publisher.clone()),
            timestamp: shared.clock.now(),
            priority: options.priority,
            session_id: options.session_id,
            conversation_id: options.conversation_id,
            payload: draft.payload,
            metadata: options.metadata,
            position: None,
            format_version: FORMAT_VERSION,
        };
        // Whatever is published can be read back: no value deeper than the
        // decoder reads.
        event.validate_depth()?;
        Ok((event, size))
    }

    /// Publishes one event on `topic` and returns its id once it is in the
    /// log (durable mode: committed) and handed to the matching
    /// subscriptions. Never waits for handlers.
    ///
    /// Errors: [`Error::Invalid`] for a malformed topic, or a payload or
    /// metadata nested deeper than
    /// [`MAX_JSON_DEPTH`](smalltalk_types::format::MAX_JSON_DEPTH) levels
    /// (`TooDeep`), [`Error::PayloadTooLarge`], [`Error::Storage`] if the
    /// log failed (nothing was delivered).
    #[tracing::instrument(level = "debug", name = "bus.publish", skip_all)]
    pub async fn publish(
        &self,
        topic: impl TryIntoId<Topic>,
        payload: impl Into<Payload>,
        options: PublishOptions,
    ) -> Result<EventId> {
        let draft = Draft::new(topic, payload)?.options(options);
        let published = self.publish_drafts(vec![draft], None).await?;
        Ok(published[0].id)
    }

    /// Publishes events together, in order, atomically: all are in the log
    /// or none.
    #[tracing::instrument(level = "debug", name = "bus.publish_batch", skip_all, fields(count = drafts.len()))]
    pub async fn publish_batch(&self, drafts: Vec<Draft>) -> Result<Vec<Published>> {
        self.publish_drafts(drafts, None).await
    }

    /// Publishes only if the log's newest position is `expected_last` (0:
    /// empty), else [`Error::PositionConflict`] and nothing is published:
    /// optimistic concurrency for publishers that must not interleave.
    #[tracing::instrument(level = "debug", name = "bus.publish_if", skip_all, fields(expected_last = expected_last))]
    pub async fn publish_if(&self, expected_last: u64, draft: Draft) -> Result<Published> {
        let published = self
            .publish_drafts(vec![draft], Some(expected_last))
            .await?;
        Ok(published[0])
    }

    async fn publish_drafts(
        &self,
        drafts: Vec<Draft>,
        expected_last: Option<u64>,
    ) -> Result<Vec<Published>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = Vec::with_capacity(drafts.len());
        let mut payload_bytes = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let (event, size) = self.prepare(draft)?;
            events.push(event);
            payload_bytes.push(size);
        }
        let ids: Vec<EventId> = events.iter().map(|event| event.id).collect();
        let positions = match &self.inner.committer {
            Some(committer) => {
                let (reply, answer) = oneshot::channel();
                committer
                    .send(Commit {
                        events,
                        expected_last,
                        reply,
                    })
                    .await
                    .map_err(|_| Error::Closed)?;
                answer.await.map_err(|_| Error::Closed)??
            }
            None => {
                self.publish_in_memory(events, &payload_bytes, expected_last)
                    .await?
            }
        };
        Ok(ids
            .into_iter()
            .zip(positions)
            .map(|(id, position)| Published { id, position })
            .collect())
    }

    async fn publish_in_memory(
        &self,
        events: Vec<Event>,
        payload_bytes: &[usize],
        expected_last: Option<u64>,
    ) -> Result<Vec<u64>> {
        let shared = self.shared();
        let Backing::Memory(log) = &shared.backing else {
            unreachable!("a bus without a committer is in memory");
        };
        shared.dispatch.with(|dispatch| {
            if let Some(expected) = expected_last {
                if dispatch.dispatched != expected {
                    return Err(Error::PositionConflict {
                        expected,
                        found: dispatch.dispatched,
                    });
                }
            }
            let first = dispatch.dispatched + 1;
            let events = positioned(events, first);
            log.push(&events, payload_bytes);
            count_published(shared, &events);
            shared.fan_out(dispatch, &events);
            Ok((first..first + events.len() as u64).collect())
        })
    }

    /// Subscribes `subscriber` to topics matching `pattern` (see the
    /// [grammar](smalltalk_types::topic)); `handler` receives each event on
    /// the subscription's own task.
    ///
    /// The (subscriber, pattern) pair is a durable cursor: if it has one
    /// from before, what it missed since its last acknowledgement is
    /// delivered first, per its [replay policy](crate::policy). A first
    /// subscription starts with the events published after it.
    ///
    /// Errors: [`Error::Invalid`] for a malformed pattern or subscriber id,
    /// [`Error::AlreadySubscribed`], [`Error::Storage`].
    #[tracing::instrument(
        level = "debug",
        name = "bus.subscribe",
        skip_all,
        fields(pattern, subscriber)
    )]
    pub async fn subscribe<H: EventHandler>(
        &self,
        pattern: impl TryIntoId<TopicPattern>,
        subscriber: impl TryIntoId<SubscriberId>,
        handler: H,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let pattern: TopicPattern = pattern.try_into_id()?;
        let subscriber: SubscriberId = subscriber.try_into_id()?;
        let span = tracing::Span::current();
        span.record("pattern", tracing::field::display(&pattern));
        span.record("subscriber", tracing::field::display(&subscriber));
        let shared = self.shared();
        let key = subscription::cursor_key(&subscriber, &pattern);
        let already = || Error::AlreadySubscribed {
            subscriber: subscriber.clone(),
            pattern: pattern.clone(),
        };
        if shared.registry.has_key(&key) {
            return Err(already());
        }
        // Every wait on the log below shares one deadline.
        let deadline = Instant::now() + shared.config.storage_timeout;
        let timed_out = || Error::Timeout {
            operation: "subscribe",
            after: shared.config.storage_timeout,
        };
        let stored = async {
            match shared.backing.cursor(&key).await? {
                Some(cursor) => Ok(Some(cursor)),
                // A cursor stored by release 0.1.0 under its older name
                // moves to the new one.
                None => match subscription::legacy_cursor_key(&subscriber, &pattern) {
                    Some(legacy) => match shared.backing.cursor(&legacy).await? {
                        Some(cursor) => {
                            shared.backing.set_cursor(&key, cursor).await?;
                            shared.backing.delete_cursor(&legacy).await?;
                            Ok(Some(cursor))
                        }
                        None => Ok(None),
                    },
                    None => Ok::<_, Error>(None),
                },
            }
        };
        let cursor = tokio::time::timeout_at(deadline, stored)
            .await
            .map_err(|_| timed_out())??;
        let policy = options
            .policy
            .clone()
            .unwrap_or_else(|| shared.config.policies.for_subscriber(&subscriber).clone());
        crate::policy::check(&policy)?;
        let filter = EventFilter {
            patterns: vec![pattern.clone()],
            priority: options.priority,
            session_id: options.session_id,
            conversation_id: options.conversation_id,
            since: None,
            until: None,
        };
        let new = NewSubscription {
            serial: shared.next_serial.fetch_add(1, Ordering::Relaxed),
            subscriber: subscriber.clone(),
            pattern: pattern.clone(),
            filter,
            queue_capacity: shared.config.queue_capacity,
        };
        let (sub, build) =
            subscription::create(shared, new, Arc::new(handler), shared.processed_for(&key));
        let registered_at = shared
            .dispatch
            .with(|dispatch| {
                if shared.registry.has_key(&key) {
                    return None;
                }
                shared.registry.insert(Arc::clone(&sub));
                Some(dispatch.dispatched)
            })
            .ok_or_else(already)?;
        if cursor.is_none() {
            // From now on a restart replays what this subscriber missed.
            let saved = tokio::time::timeout_at(
                deadline,
                shared
                    .backing
                    .set_cursor(&key, smalltalk_storage::Cursor::at(registered_at)),
            )
            .await
            .map_err(|_| timed_out())
            .and_then(|saved| saved);
            if let Err(error) = saved {
                shared.registry.remove(sub.serial);
                return Err(error);
            }
        }
        let start = Start {
            cursor,
            registered_at,
            policy,
        };
        let task = tokio::spawn(build(&start).run(start));
        *sub.task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        tracing::debug!(%subscriber, %pattern, ?cursor, registered_at, "subscribed");
        Ok(Subscription {
            shared: sub,
            bus: Arc::downgrade(shared),
        })
    }

    /// Ends every subscription of `subscriber` and waits for their running
    /// handlers; returns how many there were.
    /// [`Error::UnknownSubscriber`] if it had none.
    #[tracing::instrument(
        level = "debug",
        name = "bus.unsubscribe_all",
        skip_all,
        fields(subscriber)
    )]
    pub async fn unsubscribe_all(&self, subscriber: impl TryIntoId<SubscriberId>) -> Result<usize> {
        let subscriber: SubscriberId = subscriber.try_into_id()?;
        tracing::Span::current().record("subscriber", tracing::field::display(&subscriber));
        let removed = self.shared().registry.remove_subscriber(&subscriber);
        if removed.is_empty() {
            return Err(Error::UnknownSubscriber { subscriber });
        }
        for subscription in &removed {
            subscription.request_stop();
        }
        for subscription in &removed {
            if let Some(task) = subscription.take_task() {
                let _ = task.await;
            }
        }
        Ok(removed.len())
    }

    /// Delivers past events again to every active subscription of
    /// `subscriber`, oldest first, each within its own pattern and filters
    /// and `options`; handlers see [`Delivery::is_replay`](crate::Delivery::is_replay).
    /// Events are delivered whether processed before or not; the cursor
    /// does not move. If retention purged events the replay would have
    /// covered, the report and the handler get a gap notice (and it is
    /// logged and counted).
    ///
    /// [`Error::UnknownSubscriber`] if it has no active subscription.
    #[tracing::instrument(level = "debug", name = "bus.replay", skip_all, fields(subscriber))]
    pub async fn replay(
        &self,
        subscriber: impl TryIntoId<SubscriberId>,
        options: ReplayOptions,
    ) -> Result<ReplayReport> {
        let subscriber: SubscriberId = subscriber.try_into_id()?;
        tracing::Span::current().record("subscriber", tracing::field::display(&subscriber));
        let subscriptions = self.shared().registry.of_subscriber(&subscriber);
        if subscriptions.is_empty() {
            return Err(Error::UnknownSubscriber { subscriber });
        }
        let mut report = ReplayReport::default();
        for subscription in subscriptions {
            let (reply, answer) = oneshot::channel();
            if !subscription.send(Command::Replay(options.clone(), reply)) {
                continue;
            }
            let Ok(part) = answer.await else {
                continue;
            };
            let part = part?;
            report.delivered += part.delivered;
            report.failed += part.failed;
            report.gaps.extend(part.gaps);
        }
        Ok(report)
    }

    /// Deletes events older than the retention period now; returns how
    /// many. The bus also does this every
    /// [`purge_interval`](EventBusConfig::purge_interval).
    #[tracing::instrument(level = "debug", name = "bus.purge_expired", skip_all)]
    pub async fn purge_expired(&self) -> Result<u64> {
        purge(self.shared()).await
    }

    /// The newest position handed to subscriptions.
    pub fn position(&self) -> u64 {
        self.shared().dispatched()
    }

    /// Counts, latency and per-subscription state.
    #[tracing::instrument(level = "debug", name = "bus.stats", skip_all)]
    pub async fn stats(&self) -> Result<BusStats> {
        let shared = self.shared();
        // The log's sizes, if it answers in time: the rest is this
        // process's own and always there.
        let log = match tokio::time::timeout(shared.config.storage_timeout, shared.backing.stats())
            .await
        {
            Ok(Ok(sizes)) => Some(sizes),
            Ok(Err(error)) => {
                tracing::warn!(%error, "the event log's sizes could not be read; stats without them");
                None
            }
            Err(_) => {
                tracing::warn!(timeout = ?shared.config.storage_timeout,
                    "the event log did not answer in time; stats without its sizes");
                None
            }
        };
        let (topics, cached_topics) = shared
            .dispatch
            .with(|dispatch| (dispatch.topics(), dispatch.cached_topics()));
        let subscriptions = shared.registry.snapshot();
        let subscribers: BTreeSet<_> = subscriptions
            .iter()
            .map(|subscription| subscription.subscriber.clone())
            .collect();
        let read = crate::stats::read;
        let counters = &shared.counters;
        Ok(BusStats {
            published: read(&counters.published),
            published_critical: read(&counters.published_critical),
            delivered: read(&counters.delivered),
            delivered_critical: read(&counters.delivered_critical),
            subscriptions: subscriptions.len(),
            subscribers: subscribers.len(),
            topics,
            cached_topics,
            processed_registries: shared.processed_registries(),
            latency_violations: read(&counters.latency_violations),
            gaps_detected: read(&counters.gaps_detected),
            undecodable_events: read(&counters.undecodable),
            latency: counters.latency(),
            log_events: log.map(|(events, _)| events),
            log_bytes: log.map(|(_, bytes)| bytes),
            subscriptions_detail: subscriptions
                .iter()
                .map(|subscription| subscription.stats())
                .collect(),
        })
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Stops every subscription (waiting for running handlers and saving
    /// positions) and the bus's tasks. Publishing afterwards fails with
    /// [`Error::Closed`].
    #[tracing::instrument(level = "debug", name = "bus.close", skip_all)]
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let _ = self.inner.shutdown.send(true);
        let subscriptions = self.shared().registry.snapshot();
        for subscription in &subscriptions {
            self.shared().registry.remove(subscription.serial);
            subscription.request_stop();
        }
        for subscription in subscriptions {
            if let Some(task) = subscription.take_task() {
                let _ = task.await;
            }
        }
    }
}

/// Wraps events with their positions, from `first`.
fn positioned(events: Vec<Event>, first: u64) -> Vec<Arc<Event>> {
    events
        .into_iter()
        .zip(first..)
        .map(|(mut event, position)| {
            event.position = Some(position);
            Arc::new(event)
        })
        .collect()
}

fn count_published(shared: &Shared, events: &[Arc<Event>]) {
    let critical = events
        .iter()
        .filter(|event| event.priority == smalltalk_types::EventPriority::Critical)
        .count() as u64;
    shared
        .counters
        .count_published(events.len() as u64, critical);
}
