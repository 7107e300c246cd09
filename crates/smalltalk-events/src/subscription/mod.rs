//! A subscription: its shared state, the handle the caller keeps, and the
//! task that feeds its handler.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::future::Future;

use futures_util::FutureExt;
use lru::LruCache;
use smalltalk_storage::{Cursor, EventFilter, UndecodableEvent};
use smalltalk_types::{
    Backoff, Event, EventId, EventReplayPolicy, StorageKey, SubscriberId, TopicPattern,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::AckPersistence;
use crate::bus::Shared;
use crate::handler::{AckHandle, AckMessage, Answer, Touch};
use crate::log::report_undecodable;
use crate::stats::{SubCounters, SubscriptionStats, bump, read};
use crate::{Delivery, EventHandler, Outcome, ReplayOptions, ReplayReport, Result};

/// Called with the span of each handler run whose event carries a W3C
/// `traceparent` in its metadata, and the event: where a tracer makes the
/// span part of the publisher's trace (the server sets one when it exports
/// OTLP). Set once per process with [`on_handler_span`].
pub type HandlerSpanHook = fn(&tracing::Span, &smalltalk_types::Event);

static HANDLER_SPAN_HOOK: std::sync::OnceLock<HandlerSpanHook> = std::sync::OnceLock::new();

/// Sets the process's [`HandlerSpanHook`]; `false` if one was set already.
pub fn on_handler_span(hook: HandlerSpanHook) -> bool {
    HANDLER_SPAN_HOOK.set(hook).is_ok()
}

/// Events read from the log per query while replaying or catching up (the
/// SQLite store reads up to 1,000 inline, without a thread handoff).
const READ_BATCH: usize = 1000;

/// Pauses between retries of a failing log: 10 ms, doubling up to 5 s.
const RETRY_PAUSES: Backoff = Backoff::new(
    std::time::Duration::from_millis(10),
    2.0,
    std::time::Duration::from_secs(5),
);

mod cursor_key;
mod replay;

pub(crate) use cursor_key::{cursor_key, legacy_cursor_key};

/// The ids a subscriber has processed, kept across re-subscriptions in
/// one process (FR-011a).
pub(crate) type Processed = Arc<Mutex<LruCache<EventId, ()>>>;

pub(crate) fn new_processed() -> Processed {
    Arc::new(Mutex::new(LruCache::unbounded()))
}

/// What the bus and the subscription's task share.
#[derive(Debug)]
pub(crate) struct SubShared {
    pub(crate) serial: u64,
    pub(crate) subscriber: SubscriberId,
    pub(crate) pattern: TopicPattern,
    pub(crate) key: StorageKey,
    /// The pattern and the subscription's filters.
    pub(crate) filter: EventFilter,
    queue: mpsc::Sender<Arc<Event>>,
    /// Set when an event did not fit in the queue: the task reads the log
    /// from its last position before taking more from the queue.
    lagging: AtomicBool,
    wake: Notify,
    stopped: AtomicBool,
    stop: Notify,
    commands: mpsc::UnboundedSender<Command>,
    pub(crate) counters: SubCounters,
    /// Woken whenever the task changes the counters (see
    /// [`Subscription::wait_until`]).
    changed: Notify,
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) enum Command {
    Replay(ReplayOptions, oneshot::Sender<Result<ReplayReport>>),
}

impl SubShared {
    /// Whether `event` passes the subscription's filters besides the
    /// pattern (already matched by the dispatcher).
    pub(crate) fn accepts(&self, event: &Event) -> bool {
        self.filter
            .priority
            .is_none_or(|priority| event.priority == priority)
            && self
                .filter
                .session_id
                .is_none_or(|id| event.session_id == Some(id))
            && self
                .filter
                .conversation_id
                .is_none_or(|id| event.conversation_id == Some(id))
    }

    /// Queues `event` without ever waiting.
    pub(crate) fn offer(&self, event: &Arc<Event>) {
        match self.queue.try_send(Arc::clone(event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.counters.queue_overflows);
                if !self.lagging.load(Ordering::SeqCst) {
                    tracing::debug!(subscriber = %self.subscriber, pattern = %self.pattern,
                        "queue full; the subscriber will catch up from the log");
                }
                self.look_back();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Makes the task read the log after its last position before taking
    /// more from its queue.
    pub(crate) fn look_back(&self) {
        self.lagging.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Asks the task to stop after the handler it is running.
    pub(crate) fn request_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }

    pub(crate) fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Wakes [`Subscription::wait_until`] callers to look at the counters.
    fn changed(&self) {
        self.changed.notify_waiters();
    }

    pub(crate) fn stats(&self) -> SubscriptionStats {
        let counters = &self.counters;
        SubscriptionStats {
            subscriber: self.subscriber.clone(),
            pattern: self.pattern.clone(),
            deliveries: read(&counters.deliveries),
            acked: read(&counters.acked),
            naked: read(&counters.naked),
            redelivered: read(&counters.redelivered),
            panics: read(&counters.panics),
            timeouts: read(&counters.timeouts),
            dead_lettered: read(&counters.dead_lettered),
            duplicates_dropped: read(&counters.duplicates_dropped),
            queue_overflows: read(&counters.queue_overflows),
            gaps: read(&counters.gaps),
            pending: read(&counters.pending),
            queued: (self.queue.max_capacity() - self.queue.capacity()) as u64,
            stalled: counters.stalled.load(Ordering::Relaxed),
            cursor: read(&counters.cursor),
        }
    }

    /// Takes the task's join handle, to wait for it to end.
    pub(crate) fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// An active subscription. Dropping it unsubscribes (without waiting for
/// the handler that may be running); [`unsubscribe`](Self::unsubscribe)
/// waits.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) shared: Arc<SubShared>,
    pub(crate) bus: std::sync::Weak<Shared>,
}

impl Subscription {
    /// The subscriber.
    pub fn subscriber(&self) -> &SubscriberId {
        &self.shared.subscriber
    }

    /// The pattern.
    pub fn pattern(&self) -> &TopicPattern {
        &self.shared.pattern
    }

    /// Its counts and state.
    pub fn stats(&self) -> SubscriptionStats {
        self.shared.stats()
    }

    /// Waits until `condition` holds for its [`stats`](Self::stats), up to
    /// `timeout`; `true` if it did. Woken each time the subscription's task
    /// changes its counts (a delivery answered, naked, panicked or timed
    /// out, an event settled or given up, the stall flag, the saved
    /// cursor), never by polling: for tests, and for callers that drain a
    /// subscription before going on. `queued` and `queue_overflows` change
    /// on the publisher's side and wake nothing.
    pub async fn wait_until(
        &self,
        mut condition: impl FnMut(&SubscriptionStats) -> bool,
        timeout: std::time::Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a change right after the look
            // still wakes us.
            notified.as_mut().enable();
            if condition(&self.shared.stats()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.shared.stats());
            }
        }
    }

    /// Unsubscribes and waits for the running handler (if any) to return
    /// and the acknowledged position to be saved. Events delivered but not
    /// acknowledged stay in the log for the next subscription.
    #[tracing::instrument(level = "debug", name = "bus.unsubscribe", skip_all, fields(subscriber = %self.shared.subscriber, pattern = %self.shared.pattern))]
    pub async fn unsubscribe(self) {
        self.detach();
        if let Some(task) = self.shared.take_task() {
            let _ = task.await;
        }
    }

    fn detach(&self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.registry.remove(self.shared.serial);
        }
        self.shared.request_stop();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.detach();
    }
}

/// How a subscription starts: from where, and what it replays.
pub(crate) struct Start {
    /// The cursor stored for this subscription, if it had one.
    pub(crate) cursor: Option<Cursor>,
    /// The bus's newest dispatched position when it registered.
    pub(crate) registered_at: u64,
    pub(crate) policy: EventReplayPolicy,
}

struct Pending {
    event: Arc<Event>,
    attempt: u32,
    touch: Arc<Touch>,
    /// Set after a nak: when to deliver again.
    redeliver_at: Option<Instant>,
}

enum Ran {
    Outcome(Outcome),
    Panicked,
    TimedOut,
}

/// The subscription's task.
pub(crate) struct Worker {
    bus: Arc<Shared>,
    sub: Arc<SubShared>,
    handler: Arc<dyn EventHandler>,
    queue: mpsc::Receiver<Arc<Event>>,
    commands: mpsc::UnboundedReceiver<Command>,
    answers_tx: mpsc::UnboundedSender<AckMessage>,
    answers: mpsc::UnboundedReceiver<AckMessage>,
    processed: Processed,
    /// The newest position taken from the queue or the log.
    last_seen: u64,
    pending: BTreeMap<u64, Pending>,
    /// The cursor last saved.
    persisted: Cursor,
    /// Past the replay on subscribe: handling what is published now.
    live: bool,
    persisted_at: Instant,
}

/// What a new subscription needs besides the bus.
pub(crate) struct NewSubscription {
    pub(crate) serial: u64,
    pub(crate) subscriber: SubscriberId,
    pub(crate) pattern: TopicPattern,
    pub(crate) filter: EventFilter,
    pub(crate) queue_capacity: usize,
}

/// Builds the shared half and the (not yet started) task.
pub(crate) fn create(
    bus: &Arc<Shared>,
    new: NewSubscription,
    handler: Arc<dyn EventHandler>,
    processed: Processed,
) -> (Arc<SubShared>, impl FnOnce(&Start) -> Worker) {
    let (queue_tx, queue) = mpsc::channel(new.queue_capacity);
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (answers_tx, answers) = mpsc::unbounded_channel();
    let key = cursor_key(&new.subscriber, &new.pattern);
    let shared = Arc::new(SubShared {
        serial: new.serial,
        subscriber: new.subscriber,
        pattern: new.pattern,
        key,
        filter: new.filter,
        queue: queue_tx,
        lagging: AtomicBool::new(false),
        wake: Notify::new(),
        stopped: AtomicBool::new(false),
        stop: Notify::new(),
        changed: Notify::new(),
        commands: commands_tx,
        counters: SubCounters::default(),
        task: Mutex::new(None),
    });
    let bus = Arc::clone(bus);
    let sub = Arc::clone(&shared);
    let build = move |start: &Start| Worker {
        bus,
        sub,
        handler,
        queue,
        commands,
        answers_tx,
        answers,
        processed,
        last_seen: start.registered_at,
        pending: BTreeMap::new(),
        persisted: start.cursor.unwrap_or(Cursor::at(start.registered_at)),
        live: false,
        persisted_at: Instant::now(),
    };
    (shared, build)
}

impl Worker {
    fn stopped(&self) -> bool {
        self.sub.stopped.load(Ordering::SeqCst)
    }

    /// Runs the subscription until it is stopped or the bus goes away.
    pub(crate) async fn run(mut self, start: Start) {
        if let Some(cursor) = start.cursor {
            self.last_seen = cursor.position;
            let mut failures = 0;
            loop {
                match self.replay_missed(&start).await {
                    Ok(()) => break,
                    // Nothing live is handled before the replay is done:
                    // the cursor must not pass what it has not delivered.
                    Err(error) => {
                        tracing::error!(subscriber = %self.sub.subscriber, pattern = %self.sub.pattern,
                            %error, "replay on subscribe failed; retrying");
                        if !self.pause(&mut failures).await {
                            break;
                        }
                    }
                }
            }
            if self.stopped() {
                // Interrupted: keep the position of what was delivered.
                self.persist(true).await;
                return;
            }
            self.last_seen = self.last_seen.max(start.registered_at);
        }
        self.live = true;
        self.persist(true).await;
        loop {
            if self.stopped() {
                break;
            }
            while let Ok(message) = self.answers.try_recv() {
                self.answer(message).await;
            }
            self.redeliver_due().await;
            if self.sub.lagging.swap(false, Ordering::SeqCst) {
                self.catch_up().await;
            }
            let stalled = self.update_stall();
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                () = self.sub.stop.notified() => break,
                Some(message) = self.answers.recv() => self.answer(message).await,
                () = sleep_until_opt(deadline), if deadline.is_some() => {}
                Some(command) = self.commands.recv() => self.command(command).await,
                () = self.sub.wake.notified() => {}
                event = self.queue.recv(), if !stalled => match event {
                    Some(event) => self.take(event).await,
                    None => break,
                },
            }
        }
        self.persist(true).await;
    }

    /// The acknowledged floor: everything up to it is settled.
    fn floor(&self) -> u64 {
        match self.pending.keys().next() {
            Some(first) => first - 1,
            None => self.last_seen,
        }
    }

    /// Saves the floor per the configured persistence (`force`: now).
    async fn persist(&mut self, force: bool) {
        let floor = self.floor();
        self.sub.counters.cursor.store(floor, Ordering::Relaxed);
        self.sub.changed();
        if floor <= self.persisted.position {
            return;
        }
        let due = match self.bus.config.ack_persistence {
            AckPersistence::EveryAck => true,
            AckPersistence::Interval(every) => force || self.persisted_at.elapsed() >= every,
        };
        if due {
            self.save_cursor(floor, 0).await;
        }
    }

    /// Before the handler sees `position`: the stored cursor must say the
    /// subscriber was there at least until it, so a crash from here on
    /// means redelivery whatever the replay policy (FR-016c). With acks
    /// saved before every handler this rides on that write; otherwise one
    /// write covers everything the log holds now. The handler does not see
    /// the event until the mark is stored: a failing log is retried with
    /// backoff. `false` if the subscription stopped first.
    async fn note_live(&mut self, position: u64) -> bool {
        let mut failures = 0;
        while position > self.persisted.live_until {
            if self.save_cursor(self.floor(), position).await {
                break;
            }
            if !self.pause(&mut failures).await {
                return false;
            }
        }
        true
    }

    /// Saves the cursor at `floor`, live until at least `live_at_least`
    /// and, once the replay on subscribe is done, the bus's newest position
    /// now (the subscriber is there: what is in the log was not published
    /// while it was away). During the replay the mark covers only what was
    /// handed over, so a crash then leaves the rest to the policy.
    /// `false` if the log refused the write (kept in memory and written
    /// with the next save; a crash before then means redelivery of acked
    /// events, never loss).
    async fn save_cursor(&mut self, floor: u64, live_at_least: u64) -> bool {
        let head = if self.live { self.bus.dispatched() } else { 0 };
        let cursor = Cursor {
            position: floor.max(self.persisted.position),
            live_until: head
                .max(live_at_least)
                .max(self.persisted.live_until)
                .max(floor),
        };
        match self.bus.backing.set_cursor(&self.sub.key, cursor).await {
            Ok(()) => {
                self.persisted = cursor;
                self.persisted_at = Instant::now();
                true
            }
            Err(error) => {
                tracing::warn!(subscriber = %self.sub.subscriber, %error,
                    "could not save the subscriber's position; will retry");
                false
            }
        }
    }

    /// Publishes the pending count and the stall state that follows.
    fn pending_changed(&self) {
        self.sub
            .counters
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
        self.update_stall();
        self.sub.changed();
    }

    fn update_stall(&self) -> bool {
        let stalled = self.pending.len() >= self.bus.config.max_ack_pending;
        let was = self.sub.counters.stalled.swap(stalled, Ordering::Relaxed);
        if stalled && !was {
            tracing::warn!(subscriber = %self.sub.subscriber, pattern = %self.sub.pattern,
                pending = self.pending.len(),
                "subscriber stalled: at max_ack_pending, taking no new events until some are acknowledged");
        } else if was && !stalled {
            tracing::info!(subscriber = %self.sub.subscriber, pattern = %self.sub.pattern,
                "subscriber no longer stalled");
        }
        stalled
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ack_wait = self.bus.config.ack_wait;
        self.pending
            .values()
            .map(|pending| {
                pending
                    .redeliver_at
                    .unwrap_or_else(|| pending.touch.deadline(ack_wait))
            })
            .min()
    }

    /// An event from the queue.
    async fn take(&mut self, event: Arc<Event>) {
        let position = event.position.unwrap_or(0);
        if self.sub.lagging.swap(false, Ordering::SeqCst) && !self.catch_up().await {
            // Events were dropped somewhere after `last_seen`, perhaps
            // after this one: everything the log has is read first (this
            // one included), then what the queue still holds of it is
            // skipped. Stopped before that: this one waits for the next
            // subscription.
            return;
        }
        if position <= self.last_seen {
            return;
        }
        self.deliver(event, false).await;
    }

    /// Delivers one event (new to this subscription) until it is acked,
    /// in progress, or given up.
    async fn deliver(&mut self, event: Arc<Event>, replayed: bool) {
        let position = event.position.unwrap_or(0);
        // Imported history is for explicit replays only: passed over like
        // an event of another topic (the cursor moves with the next ack, or
        // at the stop; passing over again after a crash costs nothing).
        if event.is_imported() {
            self.last_seen = self.last_seen.max(position);
            return;
        }
        if self.is_processed(event.id) {
            bump(&self.sub.counters.duplicates_dropped);
            self.last_seen = self.last_seen.max(position);
            self.persist(false).await;
            return;
        }
        if !replayed {
            self.record_latency(&event);
        }
        self.wait_for_room().await;
        if self.stopped() {
            return;
        }
        if !self.note_live(position).await {
            return;
        }
        // Only a settled (or in-progress) event moves the position: one
        // abandoned by a stop is the next subscription's first.
        if self.attempt(event, 1, replayed).await {
            self.last_seen = self.last_seen.max(position);
        }
        self.persist(false).await;
    }

    fn is_processed(&self, id: EventId) -> bool {
        self.processed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&id)
    }

    fn mark_processed(&self, id: EventId) {
        let mut processed = self
            .processed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        processed.put(id, ());
        while processed.len() > self.bus.config.processed_capacity {
            processed.pop_lru();
        }
    }

    fn record_latency(&self, event: &Event) {
        let now = self.bus.clock.now();
        let latency = now.duration_since(event.timestamp);
        let budget = self.bus.config.latency_budget;
        let now_ms = self.bus.epoch.elapsed().as_millis() as u64;
        if self.bus.counters.record_latency(latency, budget, now_ms) {
            tracing::warn!(subscriber = %self.sub.subscriber, topic = %event.topic,
                latency_ms = latency.as_secs_f64() * 1e3, budget_ms = budget.as_secs_f64() * 1e3,
                "event delivered over the latency budget (further warnings this second suppressed)");
        }
    }

    /// While at `max_ack_pending` (for example during a replay), waits for
    /// answers or redelivery deadlines.
    async fn wait_for_room(&mut self) {
        while self.update_stall() && !self.stopped() {
            let deadline = self.next_deadline();
            tokio::select! {
                () = self.sub.stop.notified() => {
                    // Keep the stop request for the main loop.
                    self.sub.stop.notify_one();
                    return;
                }
                Some(message) = self.answers.recv() => self.answer_pending(message),
                () = sleep_until_opt(deadline) => {}
            }
            self.redeliver_due().await;
        }
    }

    /// Runs the handler (again) from `attempt` until an outcome settles it
    /// or leaves it in progress (`true`), or the subscription stops between
    /// deliveries (`false`: left unacknowledged).
    async fn attempt(&mut self, event: Arc<Event>, mut attempt: u32, replayed: bool) -> bool {
        let position = event.position.unwrap_or(0);
        loop {
            let touch = Arc::new(Touch::new(self.bus.epoch));
            let delivery = Delivery {
                event: Arc::clone(&event),
                attempt,
                replayed,
                handle: AckHandle::new(position, Arc::clone(&touch), self.answers_tx.clone()),
            };
            bump(&self.sub.counters.deliveries);
            if attempt > 1 {
                bump(&self.sub.counters.redelivered);
            }
            let delay = match self.run_handler(delivery, &touch).await {
                Ran::Outcome(Outcome::Ack) => {
                    self.settle(&event);
                    return true;
                }
                Ran::Outcome(Outcome::InProgress) => {
                    // `ack_wait` for the answer counts from now.
                    touch.touch();
                    self.pending.insert(
                        position,
                        Pending {
                            event,
                            attempt,
                            touch,
                            redeliver_at: None,
                        },
                    );
                    self.pending_changed();
                    return true;
                }
                Ran::Outcome(Outcome::Nak { delay }) => {
                    bump(&self.sub.counters.naked);
                    delay
                }
                Ran::Panicked => {
                    bump(&self.sub.counters.panics);
                    tracing::error!(subscriber = %self.sub.subscriber, topic = %event.topic,
                        position, attempt, "handler panicked; counted as a nak");
                    None
                }
                Ran::TimedOut => {
                    bump(&self.sub.counters.timeouts);
                    tracing::warn!(subscriber = %self.sub.subscriber, topic = %event.topic,
                        position, attempt, "handler passed ack_wait; delivering again");
                    None
                }
            };
            // A nak, a panic or a timeout was counted.
            self.sub.changed();
            if attempt >= self.bus.config.max_deliver {
                self.dead_letter(&event, attempt);
                return true;
            }
            let delay = delay.unwrap_or(self.bus.config.redelivery_delay);
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.sub.stop.notified() => {
                        // Left unacknowledged: the next subscription gets it.
                        self.sub.stop.notify_one();
                        return false;
                    }
                }
            }
            if self.stopped() {
                return false;
            }
            attempt += 1;
        }
    }

    async fn run_handler(&self, delivery: Delivery, touch: &Touch) -> Ran {
        let ack_wait = self.bus.config.ack_wait;
        // The handler's span: at debug, or at info for an event carrying
        // its publisher's W3C trace context (metadata `traceparent`), which
        // it records and hands to the hook (a tracer makes the span part of
        // that trace). Built only when the level is on.
        let traceparent = delivery
            .event
            .metadata
            .get("traceparent")
            .and_then(serde_json::Value::as_str);
        let span = match traceparent {
            Some(traceparent) => tracing::info_span!(
                "bus.handle",
                subscriber = %self.sub.subscriber,
                topic = delivery.event.topic.as_str(),
                position = ?delivery.event.position,
                attempt = delivery.attempt,
                traceparent,
            ),
            None => tracing::debug_span!(
                "bus.handle",
                subscriber = %self.sub.subscriber,
                topic = delivery.event.topic.as_str(),
                position = ?delivery.event.position,
                attempt = delivery.attempt,
            ),
        };
        if traceparent.is_some() && !span.is_disabled() {
            if let Some(hook) = HANDLER_SPAN_HOOK.get() {
                hook(&span, &delivery.event);
            }
        }
        let handling = AssertUnwindSafe(tracing::Instrument::instrument(
            self.handler.handle(delivery),
            span,
        ))
        .catch_unwind();
        tokio::pin!(handling);
        // Most handlers finish at once: no timer for them.
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(handling.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(result) = first {
            return match result {
                Ok(outcome) => Ran::Outcome(outcome),
                Err(_) => Ran::Panicked,
            };
        }
        // Still working: `ack_wait` counts from now.
        touch.touch();
        loop {
            let deadline = touch.deadline(ack_wait);
            tokio::select! {
                result = &mut handling => {
                    return match result {
                        Ok(outcome) => Ran::Outcome(outcome),
                        Err(_) => Ran::Panicked,
                    };
                }
                () = tokio::time::sleep_until(deadline) => {
                    if touch.deadline(ack_wait) <= Instant::now() {
                        return Ran::TimedOut;
                    }
                }
            }
        }
    }

    fn settle(&self, event: &Event) {
        self.mark_processed(event.id);
        bump(&self.sub.counters.acked);
        self.bus.counters.count_delivered(event.priority);
    }

    /// A row of the log that does not decode, met in order: dead-lettered
    /// (ERROR, counted) and settled, so it never comes back and never holds
    /// back what follows.
    async fn pass_over(&mut self, row: &UndecodableEvent) {
        if row.position <= self.last_seen {
            return;
        }
        report_undecodable(row, &self.sub.subscriber);
        bump(&self.sub.counters.dead_lettered);
        self.last_seen = row.position;
        self.persist(false).await;
    }

    fn dead_letter(&self, event: &Event, attempts: u32) {
        bump(&self.sub.counters.dead_lettered);
        self.sub.changed();
        tracing::error!(subscriber = %self.sub.subscriber, pattern = %self.sub.pattern,
            topic = %event.topic, position = event.position, event_id = %event.id, attempts,
            "giving up on an event after max_deliver deliveries (dead-lettered)");
    }

    /// An answer from an [`AckHandle`]; redelivers at once if due.
    async fn answer(&mut self, message: AckMessage) {
        self.answer_pending(message);
        self.redeliver_due().await;
        self.persist(false).await;
    }

    /// Applies an answer to a pending event without delivering anything.
    fn answer_pending(&mut self, message: AckMessage) {
        let Some(pending) = self.pending.get_mut(&message.position) else {
            return;
        };
        match message.answer {
            Answer::InProgress => {}
            Answer::Ack => {
                if let Some(pending) = self.pending.remove(&message.position) {
                    self.settle(&pending.event);
                }
            }
            Answer::Nak(delay) => {
                bump(&self.sub.counters.naked);
                let delay = delay.unwrap_or(self.bus.config.redelivery_delay);
                pending.redeliver_at = Some(Instant::now() + delay);
            }
        }
        self.pending_changed();
    }

    /// Pending events whose time has come: naked ones past their delay,
    /// silent ones past `ack_wait`. Removes and returns them, counting
    /// timeouts and dead-lettering those out of deliveries.
    fn take_due(&mut self) -> Vec<Pending> {
        let now = Instant::now();
        let ack_wait = self.bus.config.ack_wait;
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| {
                pending
                    .redeliver_at
                    .unwrap_or_else(|| pending.touch.deadline(ack_wait))
                    <= now
            })
            .map(|(position, _)| *position)
            .collect();
        let mut ready = Vec::new();
        for position in due {
            let Some(pending) = self.pending.remove(&position) else {
                continue;
            };
            if pending.redeliver_at.is_none() {
                bump(&self.sub.counters.timeouts);
            }
            if pending.attempt >= self.bus.config.max_deliver {
                self.dead_letter(&pending.event, pending.attempt);
            } else {
                ready.push(pending);
            }
        }
        self.pending_changed();
        ready
    }

    async fn redeliver_due(&mut self) {
        for pending in self.take_due() {
            self.attempt(pending.event, pending.attempt + 1, false)
                .await;
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Replay(options, reply) => {
                let result = self.replay(options).await;
                let _ = reply.send(result);
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
