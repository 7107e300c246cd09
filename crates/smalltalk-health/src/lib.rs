//! The SmallTalk-rs agent health monitor: heartbeats, progress-aware
//! liveness, liveness probes and supervisor-style recovery with state
//! restore (SPEC §2, FR-006 to FR-010).
//!
//! Agents implement [`MonitoredAgent`] (heartbeat, probe, restart) and are
//! registered with a [`RecoveryStrategy`](smalltalk_types::RecoveryStrategy):
//! `restart` (the same agent, with its saved state), `replace` (an
//! [`AgentFactory`] builds a backup that takes over with the saved state) or
//! `alert` (operators only). One sweep task watches every agent.
//!
//! - A heartbeat carries the agent's phase (idle, LLM call, tool call,
//!   custom) and a progress counter. `max_missed` unanswered heartbeats, or
//!   a phase whose counter stops moving past that phase's deadline, make the
//!   agent `disconnected`: a 60-second LLM call that keeps streaming is
//!   healthy; a stream that stopped is not.
//! - A probe is a real small work request: an agent that answers
//!   heartbeats but not probes is a zombie.
//! - [`AgentHealthMonitor::record_activity`] counts as a heartbeat.
//! - States `active -> disconnected -> recovering -> active | failed`; every
//!   transition goes out through the [`EventSink`](smalltalk_types::EventSink)
//!   port as [`HEALTH_CHANGED`], and alerts through the
//!   [`AlertSink`](smalltalk_types::AlertSink) port.
//! - Recovery retries with exponential backoff up to `max_retries`, within a
//!   restart intensity (at most `max_restarts` in `restart_period`, as in
//!   OTP supervisors), then marks the agent `failed` and alerts.
//! - [`ProcessAgent`] runs an agent as a child process speaking a small
//!   JSON-lines [protocol](process): a SIGKILLed, SIGSTOPped or zombie
//!   child is detected like any other failure and respawned with its saved
//!   state.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use smalltalk_health::{AgentError, AgentHealthMonitor, Heartbeat, MonitoredAgent};
//! use smalltalk_types::{AgentState, HealthState, RecoveryStrategy};
//!
//! #[derive(Debug)]
//! struct Echo;
//!
//! #[async_trait]
//! impl MonitoredAgent for Echo {
//!     async fn heartbeat(&self) -> Result<Heartbeat, AgentError> {
//!         Ok(Heartbeat::idle(0))
//!     }
//!     async fn probe(&self) -> Result<(), AgentError> {
//!         Ok(())
//!     }
//!     async fn restart(&self, _state: Option<AgentState>) -> Result<(), AgentError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let monitor = AgentHealthMonitor::builder().build()?;
//! monitor.register("echo", Arc::new(Echo), RecoveryStrategy::default(), None)?;
//! monitor.sweep().await;
//! assert_eq!(monitor.status("echo")?.state, HealthState::Active);
//! # Ok(())
//! # }
//! ```

mod agent;
mod config;
mod cpu;
mod error;
mod monitor;
pub mod process;

pub use agent::{AgentError, AgentFactory, Heartbeat, MonitoredAgent};
pub use config::{DegradationConfig, HealthConfig, MAX_DURATION, PhaseDeadlines};
pub use cpu::process_cpu_time;
pub use error::{Error, Result};
pub use monitor::{
    AgentHealthMonitor, AgentHealthMonitorBuilder, DEGRADATION_CHANGED, FAILURE_REPORTED,
    HEALTH_CHANGED, HealthStats,
};
pub use process::{ProcessAgent, ProcessCommand};
