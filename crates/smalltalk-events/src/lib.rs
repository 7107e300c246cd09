//! The SmallTalk-rs event bus: wildcard publish/subscribe over a totally
//! ordered log, with replay policies and at-least-once, idempotent
//! delivery (SPEC §3, FR-011 to FR-016c).
//!
//! - **Publish** an event on a [topic](smalltalk_types::topic) such as
//!   `task:completed`; it gets a UUID, a timestamp and a position in the log.
//!   In durable mode ([`EventBusBuilder::log`]) it is appended to a memory,
//!   SQLite or PostgreSQL [`EventLog`](smalltalk_storage::EventLog) first,
//!   with concurrent publishes grouped into one commit.
//! - **Subscribe** a [`SubscriberId`](smalltalk_types::SubscriberId) to a
//!   pattern (`agent:*`, `task.>`) with an [`EventHandler`]. Each
//!   subscription has its own bounded queue and task: a slow, failing or
//!   panicking handler never blocks the publisher or anyone else. When its
//!   queue is full the subscription catches up from the log instead.
//! - **Acknowledge**: a handler answers [`Outcome::Ack`], [`Outcome::Nak`]
//!   (deliver again, optionally after a delay) or [`Outcome::InProgress`]
//!   (answer later through an [`AckHandle`]). Deliveries are limited
//!   ([`EventBusConfig::max_deliver`]), and so are unacknowledged events per
//!   subscriber ([`EventBusConfig::max_ack_pending`], a stall visible in
//!   stats and logs).
//! - **At least once, handled once**: each (subscriber, pattern) has a
//!   durable cursor that moves only over acknowledged events, and a
//!   processed-id registry (LRU, 10,000 by default) drops redeliveries.
//! - **Replay**: a subscriber that comes back gets what it missed per its
//!   policy (none, full, critical-only by default; with a maximum count and
//!   a time window), set in code or a [YAML file](policy); and
//!   [`EventBus::replay`] redelivers on demand. If retention purged part of
//!   what a replay needed, the subscriber gets a [`GapNotice`], the bus logs
//!   an ERROR and counts `smalltalk_event_replay_gaps_total`.
//! - **Across processes**: buses sharing a PostgreSQL log deliver each
//!   other's events (LISTEN/NOTIFY); over SQLite they poll every
//!   [`EventBusConfig::poll_interval`].
//!
//! Metrics (through the `metrics` facade): `smalltalk_events_published_total` (events
//! published), `smalltalk_event_propagation_seconds` (histogram),
//! `smalltalk_event_latency_violations_total`, `smalltalk_event_replay_gaps_total`.
//!
//! # Example
//!
//! ```
//! use smalltalk_events::{Delivery, EventBus, Outcome, PublishOptions, SubscribeOptions};
//! use tokio::sync::mpsc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In memory here; `EventBus::durable(store)` appends to a SQLite or
//! // PostgreSQL log first.
//! let bus = EventBus::in_memory().await?;
//! let (seen_tx, mut seen) = mpsc::unbounded_channel();
//! let _subscription = bus
//!     .subscribe("task.*", "planner", move |delivery: Delivery| {
//!         let seen_tx = seen_tx.clone();
//!         async move {
//!             seen_tx.send(delivery.event().topic.to_string()).unwrap();
//!             Outcome::Ack
//!         }
//!     }, SubscribeOptions::default())
//!     .await?;
//! bus.publish("task:completed", serde_json::json!({"task": 7}), PublishOptions::default().critical()).await?;
//! bus.publish("agent:heartbeat", serde_json::json!({}), PublishOptions::default()).await?;
//! assert_eq!(seen.recv().await.as_deref(), Some("task:completed"));
//! # Ok(())
//! # }
//! ```

mod bus;
mod config;
mod dispatch;
mod error;
mod handler;
mod log;
mod options;
pub mod policy;
mod stats;
mod subscription;

pub use bus::{EventBus, EventBusBuilder};
pub use config::{AckPersistence, EventBusConfig, MAX_COUNT, MAX_RETENTION, MIN_RETENTION};
pub use error::{Error, Result};
pub use handler::{AckHandle, Delivery, EventHandler, GapNotice, Outcome};
pub use options::{
    Draft, PublishOptions, Published, ReplayOptions, ReplayReport, SubscribeOptions,
};
pub use policy::ReplayPolicies;
pub use stats::{BusStats, LatencyStats, SubscriptionStats};
pub use subscription::{HandlerSpanHook, Subscription, on_handler_span};
