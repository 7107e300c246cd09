//! A subscription: its shared state, the handle the caller keeps, and the
//! task that feeds its handler.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::future::Future;

use futures_util::FutureExt;
use lru::LruCache;
use smalltalk_storage::{Cursor, EventFilter, UndecodableEvent};
use smalltalk_types::{
    Event, EventId, EventPriority, EventReplayPolicy, ReplayMode, StorageKey, SubscriberId,
    TopicPattern,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::AckPersistence;
use crate::bus::Shared;
use crate::handler::{AckHandle, AckMessage, Answer, Touch};
use crate::log::{Entry, report_undecodable};
use crate::stats::{SubCounters, SubscriptionStats, bump, read};
use crate::{Delivery, EventHandler, GapNotice, Outcome, ReplayOptions, ReplayReport, Result};

/// Events read from the log per query while replaying or catching up (the
/// SQLite store reads up to 1,000 inline, without a thread handoff).
const READ_BATCH: usize = 1000;

/// The ids a subscriber has processed, kept across re-subscriptions in
/// one process (FR-011a).
pub(crate) type Processed = Arc<Mutex<LruCache<EventId, ()>>>;

pub(crate) fn new_processed() -> Processed {
    Arc::new(Mutex::new(LruCache::unbounded()))
}

/// The durable cursor name of a (subscriber, pattern) pair:
/// `c2.<length of the subscriber id>.<subscriber>:<pattern>`, with the
/// pattern's separators written `.` and its wildcards `:s` (`*`) and `:g`
/// (`>`), which no topic segment holds. The length makes the name
/// unambiguous whatever the subscriber id ends with. A name that would be
/// longer than a storage key may be becomes `c2x.<FNV-1a 64 of the name>.`
/// followed by as much of the name as fits.
pub(crate) fn cursor_key(subscriber: &SubscriberId, pattern: &TopicPattern) -> StorageKey {
    let prefix = format!("c2.{}.{}", subscriber.as_str().len(), subscriber.as_str());
    let full = encoded_name(&prefix, pattern);
    if full.len() <= StorageKey::MAX_LEN {
        return StorageKey::parse(&full).expect("a subscriber id and a pattern make a valid key");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in full.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut short = format!("c2x.{hash:016x}.");
    let room = StorageKey::MAX_LEN - short.len();
    // The name is ASCII: any byte boundary is a char boundary.
    short.push_str(&full[..room]);
    StorageKey::parse(&short).expect("a hashed cursor name is a valid key")
}

/// The name release 0.1.0 gave the pair (`subscriber:pattern`), to carry
/// its cursor over; `None` where that name was ambiguous (a subscriber id
/// ending in `:` could collide with a wildcard pattern of another).
pub(crate) fn legacy_cursor_key(
    subscriber: &SubscriberId,
    pattern: &TopicPattern,
) -> Option<StorageKey> {
    if subscriber.as_str().ends_with(':') {
        return None;
    }
    StorageKey::parse(&encoded_name(subscriber.as_str(), pattern)).ok()
}

fn encoded_name(prefix: &str, pattern: &TopicPattern) -> String {
    let mut key = String::with_capacity(prefix.len() + pattern.as_str().len() + 8);
    key.push_str(prefix);
    key.push(':');
    for (index, element) in pattern.as_str().split([':', '.']).enumerate() {
        if index > 0 {
            key.push('.');
        }
        match element {
            "*" => key.push_str(":s"),
            ">" => key.push_str(":g"),
            segment => key.push_str(segment),
        }
    }
    key
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
    /// changes its counts (a delivery answered, an event settled or given
    /// up, the stall flag, the saved cursor), never by polling: for tests,
    /// and for callers that drain a subscription before going on.
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
            let mut backoff = Backoff::new();
            loop {
                match self.replay_missed(&start).await {
                    Ok(()) => break,
                    // Nothing live is handled before the replay is done:
                    // the cursor must not pass what it has not delivered.
                    Err(error) => {
                        tracing::error!(subscriber = %self.sub.subscriber, pattern = %self.sub.pattern,
                            %error, "replay on subscribe failed; retrying");
                        if !self.pause(&mut backoff).await {
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
        let mut backoff = Backoff::new();
        while position > self.persisted.live_until {
            if self.save_cursor(self.floor(), position).await {
                break;
            }
            if !self.pause(&mut backoff).await {
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

    /// Reads from the log what the queue could not hold: every event after
    /// `last_seen` up to the newest. The lagging flag is cleared before the
    /// read, and an event is in the log before it is offered to the queue,
    /// so a drop is either read here or flagged again. A failing log is
    /// retried with backoff: nothing after the gap is handled before it is
    /// filled. `false` if the subscription stopped first.
    async fn catch_up(&mut self) -> bool {
        let filter = self.sub.filter.clone();
        let mut backoff = Backoff::new();
        loop {
            if self.stopped() {
                return false;
            }
            let read = match self.check_gap(self.last_seen, None).await {
                Ok(_) => {
                    self.bus
                        .backing
                        .read(self.last_seen, &filter, READ_BATCH)
                        .await
                }
                Err(error) => Err(error),
            };
            let batch = match read {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(subscriber = %self.sub.subscriber, %error,
                        "could not read the log to catch up; retrying");
                    if !self.pause(&mut backoff).await {
                        return false;
                    }
                    continue;
                }
            };
            backoff = Backoff::new();
            let full = batch.len() == READ_BATCH;
            for entry in batch {
                match entry {
                    Entry::Event(event) => self.deliver(event, false).await,
                    Entry::Undecodable(row) => self.pass_over(&row).await,
                }
                if self.stopped() {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }

    /// Waits out `backoff` (then doubles it), unless the subscription is
    /// stopped first (`false`).
    async fn pause(&self, backoff: &mut Backoff) -> bool {
        tokio::select! {
            () = tokio::time::sleep(backoff.next()) => !self.stopped(),
            () = self.sub.stop.notified() => {
                // Keep the stop request for the main loop.
                self.sub.stop.notify_one();
                false
            }
        }
    }

    /// Sends a gap notice if the log no longer holds positions right after
    /// `after`, and moves past them. `window_start`: only a gap for events
    /// published after it matters.
    async fn check_gap(
        &mut self,
        after: u64,
        window_start: Option<smalltalk_types::Timestamp>,
    ) -> Result<()> {
        let bounds = self.bus.backing.bounds(self.bus.dispatched()).await?;
        let first_retained = bounds.first.unwrap_or(bounds.last + 1);
        if first_retained <= after + 1 {
            return Ok(());
        }
        if let Some(start) = window_start {
            // Whatever was purged was older than the retention cutoff.
            let cutoff = self
                .bus
                .clock
                .now()
                .saturating_sub(self.bus.config.retention);
            if start >= cutoff {
                return Ok(());
            }
        }
        let gap = GapNotice {
            subscriber: self.sub.subscriber.clone(),
            pattern: self.sub.pattern.clone(),
            from: after + 1,
            to: first_retained - 1,
        };
        self.report_gap(&gap).await;
        self.last_seen = self.last_seen.max(gap.to);
        Ok(())
    }

    async fn report_gap(&self, gap: &GapNotice) {
        tracing::error!(subscriber = %gap.subscriber, pattern = %gap.pattern, from = gap.from,
            to = gap.to, "events were purged before this subscriber read them (replay gap)");
        bump(&self.sub.counters.gaps);
        bump(&self.bus.counters.gaps_detected);
        metrics::counter!("event_replay_gap_detected").increment(1);
        self.handler.on_gap(gap.clone()).await;
        self.sub.changed();
    }

    /// On subscribe: what was missed since `last_seen` (the stored cursor,
    /// or how far an interrupted attempt got), per the policy.
    async fn replay_missed(&mut self, start: &Start) -> Result<()> {
        // First what was published while the subscriber was there and is
        // not settled (delivered but not acknowledged when it went away):
        // always again, whatever the policy.
        let live_until = start
            .cursor
            .map_or(0, |cursor| cursor.live_until)
            .min(start.registered_at);
        if self.last_seen < live_until {
            self.check_gap(self.last_seen, None).await?;
            let filter = self.sub.filter.clone();
            let mut after = self.last_seen;
            'unsettled: loop {
                let batch = self.bus.backing.read(after, &filter, READ_BATCH).await?;
                let full = batch.len() == READ_BATCH;
                for entry in batch {
                    let position = entry.position();
                    if position > live_until {
                        break 'unsettled;
                    }
                    after = position;
                    match entry {
                        Entry::Event(event) => self.deliver(event, true).await,
                        Entry::Undecodable(row) => self.pass_over(&row).await,
                    }
                    if self.stopped() {
                        return Ok(());
                    }
                }
                if !full {
                    break;
                }
            }
            // Nothing else up to there was for this subscription.
            self.last_seen = self.last_seen.max(live_until);
        }
        // Then what was published while it was away, per its policy.
        let policy = &start.policy;
        let cursor = self.last_seen.max(live_until);
        if policy.mode == ReplayMode::None || cursor >= start.registered_at {
            return Ok(());
        }
        let mut filter = self.sub.filter.clone();
        if policy.mode == ReplayMode::CriticalOnly {
            if filter.priority == Some(EventPriority::Normal) {
                return Ok(());
            }
            filter.priority = Some(EventPriority::Critical);
        }
        let window_start = policy
            .time_window
            .map(|window| self.bus.clock.now().saturating_sub(window));
        filter.since = window_start;
        self.check_gap(cursor, window_start).await?;
        let mut after = cursor;
        let mut kept: VecDeque<Arc<Event>> = VecDeque::new();
        let keep_at_most = policy
            .max_events
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        'read: loop {
            let batch = self.bus.backing.read(after, &filter, READ_BATCH).await?;
            let full = batch.len() == READ_BATCH;
            for entry in batch {
                let position = entry.position();
                if position > start.registered_at {
                    break 'read;
                }
                after = position;
                let event = match entry {
                    Entry::Event(event) => event,
                    Entry::Undecodable(row) => {
                        // Counted, never kept: not one of the newest `n`.
                        if keep_at_most.is_none() {
                            self.pass_over(&row).await;
                        } else {
                            report_undecodable(&row, &self.sub.subscriber);
                            bump(&self.sub.counters.dead_lettered);
                        }
                        continue;
                    }
                };
                match keep_at_most {
                    // Keep only the newest `n`: deliver at the end.
                    Some(n) => {
                        if kept.len() == n {
                            kept.pop_front();
                        }
                        kept.push_back(event);
                    }
                    None => {
                        self.deliver_per_policy(event).await;
                        if self.stopped() {
                            return Ok(());
                        }
                    }
                }
            }
            if !full {
                break;
            }
        }
        for event in kept {
            self.deliver_per_policy(event).await;
            if self.stopped() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Delivers one event the replay policy selected: what it skipped
    /// before it is settled (the policy passed on it), so a crash from here
    /// does not bring it back.
    async fn deliver_per_policy(&mut self, event: Arc<Event>) {
        let position = event.position.unwrap_or(0);
        self.last_seen = self.last_seen.max(position.saturating_sub(1));
        self.deliver(event, true).await;
    }

    /// Delivers one event (new to this subscription) until it is acked,
    /// in progress, or given up.
    async fn deliver(&mut self, event: Arc<Event>, replayed: bool) {
        let position = event.position.unwrap_or(0);
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
        let handling = AssertUnwindSafe(self.handler.handle(delivery)).catch_unwind();
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

    /// An explicit replay: delivers matching past events again, whether
    /// processed or not, without moving the cursor.
    async fn replay(&mut self, options: ReplayOptions) -> Result<ReplayReport> {
        let mut filter = self.sub.filter.clone();
        if let Some(priority) = options.priority {
            if filter.priority.is_some_and(|own| own != priority) {
                return Ok(ReplayReport::default());
            }
            filter.priority = Some(priority);
        }
        filter.since = options.since;
        filter.until = options.until;
        let mut report = ReplayReport::default();
        let bounds = self.bus.backing.bounds(self.bus.dispatched()).await?;
        if let Some(gap) = self.explicit_gap(bounds, options.since).await? {
            self.report_gap(&gap).await;
            report.gaps.push(gap);
        }
        let limit = options.limit.unwrap_or(usize::MAX);
        let upto = self.last_seen;
        let mut after = 0;
        'read: while (report.delivered as usize) < limit {
            let batch = self.bus.backing.read(after, &filter, READ_BATCH).await?;
            let full = batch.len() == READ_BATCH;
            for entry in batch {
                let position = entry.position();
                if position > upto || report.delivered as usize >= limit {
                    break 'read;
                }
                after = position;
                let event = match entry {
                    Entry::Event(event) => event,
                    Entry::Undecodable(row) => {
                        report_undecodable(&row, &self.sub.subscriber);
                        bump(&self.sub.counters.dead_lettered);
                        report.failed += 1;
                        continue;
                    }
                };
                if !options.topics.is_empty()
                    && !options
                        .topics
                        .iter()
                        .any(|topic| topic.matches(&event.topic))
                {
                    continue;
                }
                if !self.replay_one(event).await {
                    report.failed += 1;
                }
                report.delivered += 1;
            }
            if !full {
                break;
            }
        }
        Ok(report)
    }

    /// The purged range an explicit replay from `since` would have
    /// covered, if any.
    async fn explicit_gap(
        &self,
        bounds: smalltalk_storage::LogBounds,
        since: Option<smalltalk_types::Timestamp>,
    ) -> Result<Option<GapNotice>> {
        let first_retained = bounds.first.unwrap_or(bounds.last + 1);
        if first_retained <= 1 {
            return Ok(None);
        }
        if let Some(since) = since {
            let oldest = self
                .bus
                .backing
                .read(first_retained - 1, &EventFilter::default(), 1)
                .await?;
            let oldest_time = match oldest.first() {
                Some(Entry::Event(event)) => Some(event.timestamp),
                // Its time is unknown: assume the purge reached the window.
                _ => None,
            };
            if oldest_time.is_some_and(|time| time <= since) {
                return Ok(None);
            }
        }
        Ok(Some(GapNotice {
            subscriber: self.sub.subscriber.clone(),
            pattern: self.sub.pattern.clone(),
            from: 1,
            to: first_retained - 1,
        }))
    }

    /// Delivers a replayed event until the handler acks (in progress
    /// counts as accepted; `true`), or naks or panics past the limit
    /// (`false`).
    async fn replay_one(&mut self, event: Arc<Event>) -> bool {
        let position = event.position.unwrap_or(0);
        for attempt in 1..=self.bus.config.max_deliver {
            let touch = Arc::new(Touch::new(self.bus.epoch));
            let delivery = Delivery {
                event: Arc::clone(&event),
                attempt,
                replayed: true,
                handle: AckHandle::new(position, Arc::clone(&touch), self.answers_tx.clone()),
            };
            bump(&self.sub.counters.deliveries);
            match self.run_handler(delivery, &touch).await {
                // Not marked processed: a deliberate replay is not a
                // redelivery, and the registry is for those.
                Ran::Outcome(Outcome::Ack | Outcome::InProgress) => {
                    bump(&self.sub.counters.acked);
                    self.sub.changed();
                    return true;
                }
                Ran::Outcome(Outcome::Nak { .. }) => bump(&self.sub.counters.naked),
                Ran::Panicked => bump(&self.sub.counters.panics),
                Ran::TimedOut => bump(&self.sub.counters.timeouts),
            }
            self.sub.changed();
        }
        self.dead_letter(&event, self.bus.config.max_deliver);
        false
    }
}

/// Retry pauses: 10 ms, doubling up to 5 s.
struct Backoff(std::time::Duration);

impl Backoff {
    fn new() -> Self {
        Self(std::time::Duration::from_millis(10))
    }

    fn next(&mut self) -> std::time::Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(std::time::Duration::from_secs(5));
        now
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_keys_are_distinct_per_pattern_and_valid() {
        let subscriber = SubscriberId::parse("agent-1").unwrap();
        let key = |pattern: &str| {
            cursor_key(&subscriber, &TopicPattern::parse(pattern).unwrap()).to_string()
        };
        assert_eq!(key("task:*"), "c2.7.agent-1:task.:s");
        assert_eq!(key("task.>"), "c2.7.agent-1:task.:g");
        assert_eq!(key("*"), "c2.7.agent-1::s");
        // Separators are interchangeable in patterns, so in keys too.
        assert_eq!(key("a:b"), key("a.b"));
        assert_ne!(key("a.*"), key("a.s"));
        let long = format!("{}.>", "x".repeat(250));
        let long_subscriber = SubscriberId::parse(&"s".repeat(128)).unwrap();
        cursor_key(&long_subscriber, &TopicPattern::parse(&long).unwrap());
        // The longest of both, all wildcards: hashed to fit, still distinct.
        let stars = TopicPattern::parse(&["*"; 128].join(".")).unwrap();
        let mut fewer = ["*"; 127].join(".");
        fewer.push_str(".>");
        let fewer = TopicPattern::parse(&fewer).unwrap();
        let (a, b) = (
            cursor_key(&long_subscriber, &stars),
            cursor_key(&long_subscriber, &fewer),
        );
        assert!(a.as_str().len() <= StorageKey::MAX_LEN);
        assert!(a.as_str().starts_with("c2x."));
        assert_ne!(a, b);
    }

    /// A subscriber id ending in `:` and a wildcard pattern no longer
    /// share a cursor with another pair (`a:` + `s` against `a` + `*`).
    #[test]
    fn cursor_keys_never_collide() {
        let pair = |subscriber: &str, pattern: &str| {
            cursor_key(
                &SubscriberId::parse(subscriber).unwrap(),
                &TopicPattern::parse(pattern).unwrap(),
            )
        };
        assert_ne!(pair("a:", "s"), pair("a", "*"));
        assert_ne!(pair("a:", "s.x"), pair("a", "*.x"));
        assert_ne!(pair("a:", "g"), pair("a", ">"));
        // The old names collided: such a pair carries no old cursor over.
        let legacy = |subscriber: &str, pattern: &str| {
            legacy_cursor_key(
                &SubscriberId::parse(subscriber).unwrap(),
                &TopicPattern::parse(pattern).unwrap(),
            )
        };
        assert_eq!(legacy("a:", "s"), None);
        assert_eq!(
            legacy("a", "*").unwrap().as_str(),
            "a::s",
            "release 0.1.0's name"
        );
    }
}
