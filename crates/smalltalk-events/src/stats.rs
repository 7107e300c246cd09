//! Counters and the statistics an [`EventBus`](crate::EventBus) reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use smalltalk_types::{EventPriority, SubscriberId, TopicPattern};

/// Propagation latency: from publication (the event's timestamp) to the
/// start of its handler, over live deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct LatencyStats {
    /// Deliveries measured.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

/// One subscription's state and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// The subscriber.
    pub subscriber: SubscriberId,
    /// The pattern.
    pub pattern: TopicPattern,
    /// Handler calls, first deliveries and redeliveries together.
    pub deliveries: u64,
    /// Events acknowledged (deliveries of an explicit
    /// [`replay`](crate::EventBus::replay) included).
    pub acked: u64,
    /// Naks received (from outcomes and handles).
    pub naked: u64,
    /// Deliveries after the first.
    pub redelivered: u64,
    /// Handler panics (each counted as a nak).
    pub panics: u64,
    /// Deliveries that passed `ack_wait` without an answer.
    pub timeouts: u64,
    /// Events given up after `max_deliver` deliveries.
    pub dead_lettered: u64,
    /// Redeliveries dropped by the processed-id registry.
    pub duplicates_dropped: u64,
    /// Events not queued because the queue was full (read back from the
    /// log afterwards, not lost).
    pub queue_overflows: u64,
    /// Gap notices sent.
    pub gaps: u64,
    /// Events delivered and not yet acknowledged (in progress).
    pub pending: u64,
    /// Events waiting in the queue.
    pub queued: u64,
    /// Whether it is at `max_ack_pending` and taking nothing new.
    pub stalled: bool,
    /// The last position acknowledged (everything up to it is settled).
    pub cursor: u64,
}

/// A snapshot of the whole bus.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BusStats {
    /// Events published through this bus.
    pub published: u64,
    /// Of which critical.
    pub published_critical: u64,
    /// Events acknowledged by handlers (one per subscription).
    pub delivered: u64,
    /// Of which critical.
    pub delivered_critical: u64,
    /// Active subscriptions.
    pub subscriptions: usize,
    /// Distinct subscribers among them.
    pub subscribers: usize,
    /// Distinct topics published (counted up to 10,000).
    pub topics: usize,
    /// Topics in the fan-out cache (at most 4,096: past it the cache starts
    /// over).
    pub cached_topics: usize,
    /// Processed-id registries kept: one per (subscriber, pattern) with a
    /// subscription, plus those without one, for a quick re-subscribe,
    /// trimmed to 256 (least recently used first) whenever a subscription
    /// starts.
    pub processed_registries: usize,
    /// Deliveries later than the latency budget.
    pub latency_violations: u64,
    /// Gap notices sent.
    pub gaps_detected: u64,
    /// Logged events that do not decode (written by a newer release,
    /// damaged, or edited by hand), passed over by the dispatcher with an
    /// ERROR (dead-lettered). A subscription that reads one while catching
    /// up or replaying counts it in its
    /// [`dead_lettered`](SubscriptionStats::dead_lettered).
    pub undecodable_events: u64,
    /// Publication-to-handler latency.
    pub latency: LatencyStats,
    /// Events retained in the log; `None` if the log did not answer within
    /// [`storage_timeout`](crate::EventBusConfig::storage_timeout) (or
    /// failed): stats never wait on a stalled log.
    pub log_events: Option<u64>,
    /// Bytes the retained events take (an estimate for the in-memory log);
    /// `None` as `log_events`.
    pub log_bytes: Option<u64>,
    /// Each subscription.
    pub subscriptions_detail: Vec<SubscriptionStats>,
}

/// A subscription's counters, updated by its task.
#[derive(Debug, Default)]
pub(crate) struct SubCounters {
    pub(crate) deliveries: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) naked: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) queue_overflows: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) stalled: AtomicBool,
    pub(crate) cursor: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The bus's own counters.
#[derive(Debug)]
pub(crate) struct BusCounters {
    pub(crate) published: AtomicU64,
    pub(crate) published_critical: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) delivered_critical: AtomicU64,
    pub(crate) latency_violations: AtomicU64,
    pub(crate) gaps_detected: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    last_warning_ms: AtomicU64,
}

impl Default for BusCounters {
    fn default() -> Self {
        Self {
            published: AtomicU64::new(0),
            published_critical: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_critical: AtomicU64::new(0),
            latency_violations: AtomicU64::new(0),
            gaps_detected: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            // Microseconds, 3 significant digits, up to an hour.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
            last_warning_ms: AtomicU64::new(0),
        }
    }
}

impl BusCounters {
    /// Counts `events` published, `critical` of them critical.
    pub(crate) fn count_published(&self, events: u64, critical: u64) {
        self.published.fetch_add(events, Ordering::Relaxed);
        self.published_critical
            .fetch_add(critical, Ordering::Relaxed);
        metrics::counter!("smalltalk_events_published_total").increment(events);
    }

    pub(crate) fn count_delivered(&self, priority: EventPriority) {
        bump(&self.delivered);
        if priority == EventPriority::Critical {
            bump(&self.delivered_critical);
        }
    }

    /// Records one live delivery's latency; `true` if it broke the budget
    /// and a warning may be logged now (at most one a second).
    pub(crate) fn record_latency(&self, latency: Duration, budget: Duration, now_ms: u64) -> bool {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .saturating_record(micros.max(1));
        metrics::histogram!("smalltalk_event_propagation_seconds").record(latency.as_secs_f64());
        if latency <= budget {
            return false;
        }
        bump(&self.latency_violations);
        metrics::counter!("smalltalk_event_latency_violations_total").increment(1);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        now_ms >= last + 1000
            && self
                .last_warning_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn latency(&self) -> LatencyStats {
        let histogram = self
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if histogram.is_empty() {
            return LatencyStats::default();
        }
        let micros = Duration::from_micros;
        LatencyStats {
            count: histogram.len(),
            mean: Duration::from_secs_f64(histogram.mean() / 1e6),
            p50: micros(histogram.value_at_quantile(0.50)),
            p95: micros(histogram.value_at_quantile(0.95)),
            p99: micros(histogram.value_at_quantile(0.99)),
            max: micros(histogram.max()),
        }
    }
}
