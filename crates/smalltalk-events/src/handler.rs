//! What subscribers implement, and what they are handed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{Event, SubscriberId, TopicPattern};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a handler says about one delivery (the JetStream vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: the event counts as processed and the subscriber's cursor
    /// may move past it.
    Ack,
    /// Not handled: deliver it again, after `delay` (or the configured
    /// [`redelivery_delay`](crate::EventBusConfig::redelivery_delay)), until
    /// the redelivery limit.
    Nak {
        /// How long to wait first.
        delay: Option<Duration>,
    },
    /// Still being worked on elsewhere: the subscriber moves on to the next
    /// event and this one stays unacknowledged until its [`AckHandle`]
    /// answers (or [`ack_wait`](crate::EventBusConfig::ack_wait) passes
    /// without word, and it is delivered again).
    InProgress,
}

impl Outcome {
    /// A nak to redeliver after the configured delay.
    pub const fn nak() -> Self {
        Outcome::Nak { delay: None }
    }

    /// A nak to redeliver after `delay`.
    pub const fn nak_after(delay: Duration) -> Self {
        Outcome::Nak { delay: Some(delay) }
    }
}

/// Milliseconds since the bus started, shared between a delivery and its
/// subscriber so that [`Delivery::in_progress`] pushes the deadline back.
#[derive(Debug)]
pub(crate) struct Touch {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Touch {
    /// Untouched: the clock is read only when a handler does not finish at
    /// once (see `touch`), which most never need.
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When a deadline of `wait` after the last touch falls.
    pub(crate) fn deadline(&self, wait: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + wait
    }
}

/// An answer about an in-progress event, sent from an [`AckHandle`].
#[derive(Debug)]
pub(crate) struct AckMessage {
    pub(crate) position: u64,
    pub(crate) answer: Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Ack,
    Nak(Option<Duration>),
    InProgress,
}

/// Answers for one delivered event after its handler returned
/// [`Outcome::InProgress`]. Cheap to clone; only the first `ack` or `nak`
/// counts, and answers for an event already settled are ignored.
#[derive(Debug, Clone)]
pub struct AckHandle {
    position: u64,
    touch: Arc<Touch>,
    answers: mpsc::UnboundedSender<AckMessage>,
}

impl AckHandle {
    pub(crate) fn new(
        position: u64,
        touch: Arc<Touch>,
        answers: mpsc::UnboundedSender<AckMessage>,
    ) -> Self {
        Self {
            position,
            touch,
            answers,
        }
    }

    fn send(&self, answer: Answer) {
        // The subscription may have ended; then the event stays
        // unacknowledged and is replayed per policy.
        let _ = self.answers.send(AckMessage {
            position: self.position,
            answer,
        });
    }

    /// The event was handled.
    pub fn ack(&self) {
        self.send(Answer::Ack);
    }

    /// The event was not handled: deliver it again after `delay` (or the
    /// configured redelivery delay).
    pub fn nak(&self, delay: Option<Duration>) {
        self.send(Answer::Nak(delay));
    }

    /// Still working: restart the [`ack_wait`](crate::EventBusConfig::ack_wait)
    /// clock.
    pub fn in_progress(&self) {
        self.touch.touch();
        self.send(Answer::InProgress);
    }
}

/// One event handed to a handler.
#[derive(Debug)]
pub struct Delivery {
    pub(crate) event: Arc<Event>,
    pub(crate) attempt: u32,
    pub(crate) replayed: bool,
    pub(crate) handle: AckHandle,
}

impl Delivery {
    /// The event (with its log position set).
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The event, shared.
    pub fn shared_event(&self) -> Arc<Event> {
        Arc::clone(&self.event)
    }

    /// The event's position in the log.
    pub fn position(&self) -> u64 {
        self.handle.position
    }

    /// 1 for the first delivery, then 2, 3... up to
    /// [`max_deliver`](crate::EventBusConfig::max_deliver).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the event comes from a replay (on re-subscribe, or asked
    /// for with [`EventBus::replay`](crate::EventBus::replay)) rather than
    /// live.
    pub fn is_replay(&self) -> bool {
        self.replayed
    }

    /// Still working: restart the [`ack_wait`](crate::EventBusConfig::ack_wait)
    /// clock, so a long handler is not taken for a stuck one.
    pub fn in_progress(&self) {
        self.handle.touch.touch();
    }

    /// The handle to answer with later, for a handler that returns
    /// [`Outcome::InProgress`].
    pub fn ack_handle(&self) -> AckHandle {
        self.handle.clone()
    }
}

/// Events a subscriber may have missed because retention purged them
/// before it read them: positions `from..=to`. Sent before the replay that
/// follows (FR-016c: reported, never silently skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNotice {
    /// The subscriber.
    pub subscriber: SubscriberId,
    /// The subscription's pattern.
    pub pattern: TopicPattern,
    /// First position possibly missed.
    pub from: u64,
    /// Last position possibly missed.
    pub to: u64,
}

/// Handles the events of one subscription.
///
/// Any `Fn(Delivery) -> impl Future<Output = Outcome>` closure is a
/// handler. A handler runs on its subscription's own task: a slow one
/// delays only its own subscription, and a panic counts as a nak.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one delivery.
    async fn handle(&self, delivery: Delivery) -> Outcome;

    /// Told that events were purged before this subscriber read them. The
    /// bus has already logged it at ERROR and counted it in
    /// `smalltalk_event_replay_gaps_total`. Default: nothing more.
    async fn on_gap(&self, gap: GapNotice) {
        let _ = gap;
    }
}

#[async_trait]
impl<F, Fut> EventHandler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    async fn handle(&self, delivery: Delivery) -> Outcome {
        (self)(delivery).await
    }
}
