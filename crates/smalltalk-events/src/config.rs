//! Configuration of an [`EventBus`](crate::EventBus).

use std::time::Duration;

use smalltalk_types::Error as DomainError;

use crate::{ReplayPolicies, Result};

/// Shortest retention accepted (FR-014).
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// Longest retention accepted (FR-014).
pub const MAX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// When a subscriber's acknowledged position reaches the log's cursor
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AckPersistence {
    /// After every acknowledgement, before the next event is handled: a
    /// subscriber killed at any point gets back exactly the events it had
    /// not acknowledged. Costs one small write per event per subscriber.
    #[default]
    EveryAck,
    /// At most this often (and when the subscription ends). Far fewer
    /// writes; after a crash, events acknowledged in the last interval are
    /// delivered again (the processed-id registry drops them only within
    /// one process).
    Interval(Duration),
}

/// How an [`EventBus`](crate::EventBus) behaves. Every field has a
/// documented default; [`validate`](Self::validate) checks the ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBusConfig {
    /// Who publishes, when [`PublishOptions::publisher`](crate::PublishOptions::publisher)
    /// is not set. Default `"smalltalk"`.
    pub publisher: String,
    /// How long events are kept (FR-014). Default 24 h; 1 h to 30 days.
    pub retention: Duration,
    /// How often the retention task purges. Default 5 minutes; 1 s to 24 h.
    pub purge_interval: Duration,
    /// Largest payload accepted, in bytes of JSON. Default 1 MiB; 1 to
    /// [`MAX_COUNT`].
    pub max_payload_bytes: usize,
    /// Events queued per subscriber between the publisher and the handler.
    /// A full queue never blocks the publisher: the subscriber catches up
    /// from the log. Default 1,024; 1 to [`MAX_COUNT`].
    pub queue_capacity: usize,
    /// Most events a subscriber may hold unacknowledged (handlers that
    /// answer [`Outcome::InProgress`](crate::Outcome::InProgress)). At the
    /// cap the subscriber stalls: it takes no new events until some are
    /// acknowledged, and says so in its stats and at WARN. Default 1,000; 1
    /// to [`MAX_COUNT`].
    pub max_ack_pending: usize,
    /// Most deliveries of one event to one subscriber (the first included).
    /// After the last nak, panic or timeout the event is dropped for that
    /// subscriber, logged at ERROR and counted as dead-lettered. Default 5; 1
    /// to 1,000.
    pub max_deliver: u32,
    /// How long a handler may work on one event, or an in-progress event may
    /// stay unacknowledged, before it is delivered again.
    /// [`Delivery::in_progress`](crate::Delivery::in_progress) restarts the
    /// clock. Default 30 s; 1 ms to 24 h.
    pub ack_wait: Duration,
    /// Pause before redelivering after a nak without a delay, a panic or a
    /// timeout. Default 0 (at once).
    pub redelivery_delay: Duration,
    /// Event ids remembered per subscriber to drop redeliveries (FR-011a).
    /// Default 10,000; 1 to [`MAX_COUNT`].
    pub processed_capacity: usize,
    /// When acknowledgements reach the log. Default
    /// [`AckPersistence::EveryAck`].
    pub ack_persistence: AckPersistence,
    /// A delivery later than this after its publication is logged at WARN
    /// and counted in `smalltalk_event_latency_violations_total` (FR-013). Default 10 ms; 1 us to
    /// 1 h.
    pub latency_budget: Duration,
    /// Most events one durable commit takes (group commit). Default 1,024; 1
    /// to [`MAX_COUNT`].
    pub max_batch: usize,
    /// How often a bus checks the log for events other processes appended,
    /// when the backend cannot notify it (SQLite). PostgreSQL notifies at
    /// once. Default 1 s.
    pub poll_interval: Duration,
    /// The in-memory log keeps at most this many events (oldest dropped
    /// first), besides the retention time. Default 100,000.
    pub memory_log_capacity: usize,
    /// How long `subscribe` waits for the log (its stored cursor) before
    /// failing with [`Error::Timeout`](crate::Error::Timeout), and `stats`
    /// for the log's sizes before answering without them. Default 10 s;
    /// 1 ms to 1 h.
    pub storage_timeout: Duration,
    /// Replay policies per subscriber, and the default.
    pub policies: ReplayPolicies,
}

impl Default for EventBusConfig {
    fn default() -> Self {
        Self {
            publisher: "smalltalk".into(),
            retention: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(300),
            max_payload_bytes: 1 << 20,
            queue_capacity: 1024,
            max_ack_pending: 1000,
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            redelivery_delay: Duration::ZERO,
            processed_capacity: 10_000,
            ack_persistence: AckPersistence::EveryAck,
            latency_budget: Duration::from_millis(10),
            max_batch: 1024,
            poll_interval: Duration::from_secs(1),
            memory_log_capacity: 100_000,
            storage_timeout: Duration::from_secs(10),
            policies: ReplayPolicies::default(),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> crate::Error {
    DomainError::InvalidConfig {
        field,
        reason: reason.into(),
    }
    .into()
}

/// The largest count a capacity or batch size may be: queues and limits
/// become semaphores and allocations, which must stay far from overflow.
pub const MAX_COUNT: usize = 1 << 24;

fn at_least_one(field: &'static str, value: usize) -> Result<()> {
    if value == 0 || value > MAX_COUNT {
        return Err(invalid(
            field,
            format!("must be between 1 and {MAX_COUNT}, got {value}"),
        ));
    }
    Ok(())
}

fn within(field: &'static str, value: Duration, min: Duration, max: Duration) -> Result<()> {
    if value < min || value > max {
        return Err(invalid(
            field,
            format!("must be between {min:?} and {max:?}, got {value:?}"),
        ));
    }
    Ok(())
}

impl EventBusConfig {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.publisher.is_empty() {
            return Err(invalid("publisher", "must not be empty"));
        }
        within("retention", self.retention, MIN_RETENTION, MAX_RETENTION)?;
        within(
            "purge_interval",
            self.purge_interval,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        at_least_one("max_payload_bytes", self.max_payload_bytes)?;
        at_least_one("queue_capacity", self.queue_capacity)?;
        at_least_one("max_ack_pending", self.max_ack_pending)?;
        if !(1..=1000).contains(&self.max_deliver) {
            return Err(invalid("max_deliver", "must be between 1 and 1000"));
        }
        within(
            "ack_wait",
            self.ack_wait,
            Duration::from_millis(1),
            Duration::from_secs(24 * 3600),
        )?;
        within(
            "redelivery_delay",
            self.redelivery_delay,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        at_least_one("processed_capacity", self.processed_capacity)?;
        if let AckPersistence::Interval(every) = self.ack_persistence {
            within(
                "ack_persistence",
                every,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            )?;
        }
        within(
            "latency_budget",
            self.latency_budget,
            Duration::from_micros(1),
            Duration::from_secs(3600),
        )?;
        at_least_one("max_batch", self.max_batch)?;
        within(
            "poll_interval",
            self.poll_interval,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )?;
        at_least_one("memory_log_capacity", self.memory_log_capacity)?;
        within(
            "storage_timeout",
            self.storage_timeout,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )?;
        self.policies.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_are_checked() {
        EventBusConfig::default().validate().unwrap();
        let cases: Vec<(&str, EventBusConfig)> = vec![
            (
                "retention",
                EventBusConfig {
                    retention: Duration::from_secs(60),
                    ..Default::default()
                },
            ),
            (
                "retention",
                EventBusConfig {
                    retention: MAX_RETENTION + Duration::from_secs(1),
                    ..Default::default()
                },
            ),
            (
                "queue_capacity",
                EventBusConfig {
                    queue_capacity: 0,
                    ..Default::default()
                },
            ),
            (
                "max_deliver",
                EventBusConfig {
                    max_deliver: 0,
                    ..Default::default()
                },
            ),
            (
                "ack_wait",
                EventBusConfig {
                    ack_wait: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "processed_capacity",
                EventBusConfig {
                    processed_capacity: 0,
                    ..Default::default()
                },
            ),
            (
                "ack_persistence",
                EventBusConfig {
                    ack_persistence: AckPersistence::Interval(Duration::ZERO),
                    ..Default::default()
                },
            ),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(crate::Error::Invalid(DomainError::InvalidConfig { field: named, .. })) => {
                    assert_eq!(named, field)
                }
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
