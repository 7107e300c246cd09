//! Configuration of a [`SessionManager`](crate::SessionManager).

use std::time::Duration;

use smalltalk_types::{Backoff, Error as DomainError};

use crate::Result;

/// How a [`SessionManager`](crate::SessionManager) behaves. Every field has
/// a documented default; [`validate`](Self::validate) checks the ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// How long a new session lives (FR-004). Default 7 days; 1 hour to 30
    /// days.
    pub default_ttl: Duration,
    /// Most sessions in this manager's active pool (FR-035). Default 100; at
    /// least 1. Creating more fails with
    /// [`Error::CapacityExceeded`](crate::Error::CapacityExceeded).
    pub max_active_sessions: usize,
    /// How long an update keeps re-applying its change on fresh data after
    /// version conflicts before giving up with
    /// [`Error::Conflict`](crate::Error::Conflict) (FR-005: the retry
    /// budget is a deadline, not a count). Only other header changes
    /// conflict: appends never do. Default 5 s; 1 ms to 10 minutes.
    pub conflict_timeout: Duration,
    /// Pause before re-applying an update after a conflict. Default 100 ms,
    /// doubling, at most 1 s; never past `conflict_timeout`.
    pub conflict_backoff: Backoff,
    /// Limits on preserved agent state (FR-009a).
    pub agent_state: AgentStateLimits,
    /// A session in the active pool with no activity (message, update) for
    /// this long becomes `idle` at the next maintenance run and leaves the
    /// pool, freeing capacity. Default 30 minutes; `None` never idles.
    pub idle_after: Option<Duration>,
    /// How often [`spawn_maintenance`](crate::SessionManager::spawn_maintenance)
    /// runs (idle sweep and cleanup). Default 60 s; 1 s to 24 h.
    pub maintenance_interval: Duration,
    /// When writes reach storage (FR-002). Default [`Durability::Sync`].
    pub durability: Durability,
    /// What cleanup does with a session past its expiry (FR-004). Default
    /// [`TtlStrategy::Delete`].
    pub ttl_strategy: TtlStrategy,
    /// How failed background flushes are retried and reported (FR-002a/b).
    pub save_retry: SaveRetryPolicy,
    /// `async` durability: most bytes of messages held acknowledged but not
    /// yet stored; past it appends are refused with
    /// [`Error::Backpressure`](crate::Error::Backpressure) (transient) and
    /// nothing acknowledged is dropped. Default 256 MiB; 1 KiB to 64 GiB.
    pub max_pending_bytes: usize,
}

/// What cleanup does with a session past its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TtlStrategy {
    /// Delete it with its history.
    #[default]
    Delete,
    /// Keep only its latest state: the history is deleted, the session
    /// (agent states, metadata) stays, marked `expired`, readable with
    /// [`get`](crate::SessionManager::get) until deleted explicitly.
    KeepLatest,
}

/// When writes reach storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Every write is in storage before the call returns.
    #[default]
    Sync,
    /// Appends and updates are acknowledged from memory and written to
    /// storage in the background every `flush_interval` (1 to 60 s; FR-002
    /// default 30 s), and by [`flush`](crate::SessionManager::flush) and
    /// [`close`](crate::SessionManager::close). A failed flush is retried
    /// (see [`SaveRetryPolicy`]) and reported on the next write to that
    /// session. Writes not yet flushed are lost if the process dies.
    Async {
        /// Period of the background flush.
        flush_interval: Duration,
    },
}

impl Durability {
    /// The FR-002 default background flush period.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

    /// `Async` with the default flush period (30 s).
    pub const fn asynchronous() -> Self {
        Durability::Async {
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
        }
    }
}

/// How a failed background flush is retried and reported (FR-002a/b). The
/// session's writes stay in memory until they are stored; nothing
/// acknowledged is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRetryPolicy {
    /// Waits before the first retries. Default 1 s, 5 s, 30 s.
    pub backoff: Vec<Duration>,
    /// Wait between retries after the backoff steps. Default 60 s.
    pub retry_every: Duration,
    /// Consecutive failures before an alert. Default 3.
    pub alert_after: u32,
    /// Continuous failure before one CRITICAL alert (re-armed once a
    /// flush succeeds). Default 5 minutes.
    pub critical_after: Duration,
}

impl Default for SaveRetryPolicy {
    fn default() -> Self {
        Self {
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            retry_every: Duration::from_secs(60),
            alert_after: 3,
            critical_after: Duration::from_secs(300),
        }
    }
}

impl SaveRetryPolicy {
    /// The wait after the `failures`-th consecutive failure (from 1).
    pub fn wait_after(&self, failures: u32) -> Duration {
        let step = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff.get(step).copied().unwrap_or(self.retry_every)
    }
}

/// Limits on one agent's preserved state (FR-009a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentStateLimits {
    /// Turns of the agent's own history kept (the newest). Default 10; at
    /// least 1.
    pub max_turns: usize,
    /// Largest encoded state, in bytes. Default 10 MB; at least 1 KB. Over
    /// it the oldest turns are dropped, then the fields marked trimmable;
    /// a state still over it even gzip-compressed is refused with
    /// [`Error::AgentStateTooLarge`](crate::Error::AgentStateTooLarge).
    pub max_bytes: usize,
}

impl Default for AgentStateLimits {
    fn default() -> Self {
        Self {
            max_turns: 10,
            max_bytes: 10 * 1024 * 1024,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(7 * 24 * 3600),
            max_active_sessions: 100,
            conflict_timeout: Duration::from_secs(5),
            conflict_backoff: Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(1)),
            agent_state: AgentStateLimits::default(),
            idle_after: Some(Duration::from_secs(30 * 60)),
            maintenance_interval: Duration::from_secs(60),
            durability: Durability::Sync,
            ttl_strategy: TtlStrategy::Delete,
            save_retry: SaveRetryPolicy::default(),
            max_pending_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Shortest session lifetime accepted.
pub const MIN_TTL: Duration = Duration::from_secs(3600);
/// Longest session lifetime accepted.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn invalid(field: &'static str, reason: impl Into<String>) -> crate::Error {
    DomainError::InvalidConfig {
        field,
        reason: reason.into(),
    }
    .into()
}

/// Checks a session lifetime is within [`MIN_TTL`]..=[`MAX_TTL`].
pub(crate) fn check_ttl(field: &'static str, ttl: Duration) -> Result<()> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(invalid(
            field,
            format!("must be between 1 hour and 30 days, got {ttl:?}"),
        ));
    }
    Ok(())
}

impl SessionConfig {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_ttl("default_ttl", self.default_ttl)?;
        if self.max_active_sessions == 0 {
            return Err(invalid("max_active_sessions", "must be at least 1"));
        }
        if self.agent_state.max_turns == 0 {
            return Err(invalid("agent_state.max_turns", "must be at least 1"));
        }
        if self.agent_state.max_bytes < 1024 {
            return Err(invalid("agent_state.max_bytes", "must be at least 1024"));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(600)).contains(&self.conflict_timeout) {
            return Err(invalid(
                "conflict_timeout",
                format!(
                    "must be between 1 ms and 10 minutes, got {:?}",
                    self.conflict_timeout
                ),
            ));
        }
        self.conflict_backoff.validate("conflict_backoff")?;
        if self.idle_after.is_some_and(|idle| idle.is_zero()) {
            return Err(invalid("idle_after", "must be positive (or None)"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600))
            .contains(&self.maintenance_interval)
        {
            return Err(invalid(
                "maintenance_interval",
                "must be between 1 second and 24 hours",
            ));
        }
        if !(1024..=64 * 1024 * 1024 * 1024).contains(&(self.max_pending_bytes as u64)) {
            return Err(invalid(
                "max_pending_bytes",
                "must be between 1 KiB and 64 GiB",
            ));
        }
        if let Durability::Async { flush_interval } = self.durability {
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&flush_interval) {
                return Err(invalid(
                    "durability.flush_interval",
                    format!("must be between 1 and 60 seconds, got {flush_interval:?}"),
                ));
            }
        }
        self.save_retry.validate()
    }
}

impl SaveRetryPolicy {
    /// Checks the ranges: each backoff step and `retry_every` 1 ms to 1 h,
    /// at most 16 steps, `alert_after` 1 to 1,000, `critical_after` 1 s
    /// to 24 h.
    pub fn validate(&self) -> Result<()> {
        let step = Duration::from_millis(1)..=Duration::from_secs(3600);
        if self.backoff.len() > 16 || self.backoff.iter().any(|wait| !step.contains(wait)) {
            return Err(invalid(
                "save_retry.backoff",
                "at most 16 steps, each between 1 ms and 1 hour",
            ));
        }
        if !step.contains(&self.retry_every) {
            return Err(invalid(
                "save_retry.retry_every",
                "must be between 1 ms and 1 hour",
            ));
        }
        if !(1..=1000).contains(&self.alert_after) {
            return Err(invalid(
                "save_retry.alert_after",
                "must be between 1 and 1000 (0 would never alert)",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&self.critical_after)
        {
            return Err(invalid(
                "save_retry.critical_after",
                "must be between 1 second and 24 hours",
            ));
        }
        Ok(())
    }
}
