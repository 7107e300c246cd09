//! Every documented configuration range is checked: an out-of-range value
//! is refused with a typed error naming the field, and never panics or
//! stalls (the cases that used to: zero or endless flush intervals, a
//! recovery multiplier of 1e300, `ack_wait` of `Duration::MAX`, capacities
//! of `usize::MAX`, `maxEvents: 0` given per subscription, an alert that
//! could never fire).

use std::sync::Arc;
use std::time::Duration;

use smalltalk::events::{AckPersistence, EventBus, EventBusConfig, SubscribeOptions};
use smalltalk::health::{AgentHealthMonitor, HealthConfig};
use smalltalk::session::{Durability, SaveRetryPolicy, SessionConfig, SessionManager};
use smalltalk::storage::MemoryStore;
use smalltalk::types::{Backoff, EventReplayPolicy, RecoveryStrategy};

fn refused_field(error: &dyn std::error::Error) -> String {
    error.to_string()
}

#[test]
fn session_configs_out_of_range_are_refused() {
    let base = SessionConfig::default;
    let cases: Vec<(&str, SessionConfig)> = vec![
        (
            "flush_interval",
            SessionConfig {
                durability: Durability::Async {
                    flush_interval: Duration::ZERO,
                },
                ..base()
            },
        ),
        (
            "flush_interval",
            SessionConfig {
                durability: Durability::Async {
                    flush_interval: Duration::MAX,
                },
                ..base()
            },
        ),
        (
            "alert_after",
            SessionConfig {
                save_retry: SaveRetryPolicy {
                    alert_after: 0,
                    ..Default::default()
                },
                ..base()
            },
        ),
        (
            "retry_every",
            SessionConfig {
                save_retry: SaveRetryPolicy {
                    retry_every: Duration::MAX,
                    ..Default::default()
                },
                ..base()
            },
        ),
        (
            "conflict_timeout",
            SessionConfig {
                conflict_timeout: Duration::ZERO,
                ..base()
            },
        ),
        (
            "conflict_timeout",
            SessionConfig {
                conflict_timeout: Duration::MAX,
                ..base()
            },
        ),
        (
            "conflict_backoff",
            SessionConfig {
                conflict_backoff: Backoff::new(
                    Duration::from_millis(1),
                    1e300,
                    Duration::from_secs(1),
                ),
                ..base()
            },
        ),
        (
            "conflict_backoff",
            SessionConfig {
                conflict_backoff: Backoff::new(Duration::MAX, 2.0, Duration::MAX),
                ..base()
            },
        ),
    ];
    for (field, config) in cases {
        let built = SessionManager::builder(Arc::new(MemoryStore::new()))
            .config(config)
            .build();
        let error = built.expect_err(field);
        assert!(refused_field(&error).contains(field), "{field}: {error}");
    }
}

#[tokio::test]
async fn event_bus_configs_out_of_range_are_refused() {
    let base = EventBusConfig::default;
    let cases: Vec<(&str, EventBusConfig)> = vec![
        (
            "ack_wait",
            EventBusConfig {
                ack_wait: Duration::MAX,
                ..base()
            },
        ),
        (
            "queue_capacity",
            EventBusConfig {
                queue_capacity: usize::MAX,
                ..base()
            },
        ),
        (
            "max_batch",
            EventBusConfig {
                max_batch: usize::MAX,
                ..base()
            },
        ),
        (
            "max_ack_pending",
            EventBusConfig {
                max_ack_pending: usize::MAX,
                ..base()
            },
        ),
        (
            "latency_budget",
            EventBusConfig {
                latency_budget: Duration::MAX,
                ..base()
            },
        ),
        (
            "max_deliver",
            EventBusConfig {
                max_deliver: u32::MAX,
                ..base()
            },
        ),
        (
            "ack_persistence",
            EventBusConfig {
                ack_persistence: AckPersistence::Interval(Duration::MAX),
                ..base()
            },
        ),
    ];
    for (field, config) in cases {
        let built = EventBus::builder().config(config).build().await;
        let error = built.expect_err(field);
        assert!(refused_field(&error).contains(field), "{field}: {error}");
    }
    // A policy given per subscription is checked like a configured one.
    let bus = EventBus::builder().build().await.unwrap();
    let zero = SubscribeOptions::default().policy(EventReplayPolicy {
        max_events: Some(0),
        ..Default::default()
    });
    let refused = bus
        .subscribe("a.*", "s", |_| async { smalltalk::Outcome::Ack }, zero)
        .await;
    let error = refused.expect_err("maxEvents 0");
    assert!(refused_field(&error).contains("maxEvents"), "{error}");
}

#[test]
fn health_configs_and_strategies_out_of_range_are_refused() {
    let base = HealthConfig::default;
    let cases: Vec<(&str, HealthConfig)> = vec![
        (
            "heartbeat_interval",
            HealthConfig {
                heartbeat_interval: Duration::MAX,
                ..base()
            },
        ),
        (
            "activity_timeout",
            HealthConfig {
                activity_timeout: Duration::ZERO,
                ..base()
            },
        ),
        (
            "max_missed",
            HealthConfig {
                max_missed: u32::MAX,
                ..base()
            },
        ),
        (
            "probe_timeout",
            HealthConfig {
                probe_timeout: Duration::MAX,
                ..base()
            },
        ),
    ];
    for (field, config) in cases {
        let built = AgentHealthMonitor::builder().config(config).build();
        let error = built.expect_err(field);
        assert!(refused_field(&error).contains(field), "{field}: {error}");
    }
    let base = RecoveryStrategy::default;
    let strategies: Vec<(&str, RecoveryStrategy)> = vec![
        (
            "backoffMultiplier",
            RecoveryStrategy {
                backoff_multiplier: 1e300,
                ..base()
            },
        ),
        (
            "backoffMultiplier",
            RecoveryStrategy {
                backoff_multiplier: f64::NAN,
                ..base()
            },
        ),
        (
            "initialBackoffMs",
            RecoveryStrategy {
                initial_backoff: Duration::MAX,
                ..base()
            },
        ),
        (
            "maxRetries",
            RecoveryStrategy {
                max_retries: 0,
                ..base()
            },
        ),
        (
            "maxRetries",
            RecoveryStrategy {
                max_retries: u32::MAX,
                ..base()
            },
        ),
        (
            "timeoutMs",
            RecoveryStrategy {
                timeout: Duration::MAX,
                ..base()
            },
        ),
    ];
    for (field, strategy) in strategies {
        let error = strategy.validate().expect_err(field);
        assert!(refused_field(&error).contains(field), "{field}: {error}");
    }
}
