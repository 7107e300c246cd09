//! The group manager's configuration.

use std::time::Duration;

/// Limits and switches of a [`GroupManager`](crate::GroupManager).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsConfig {
    /// The most groups open on this manager at once (default 1,000),
    /// apart from the session manager's limit. Creating or opening one
    /// more fails with [`Error::AtCapacity`](crate::Error::AtCapacity);
    /// [`release`](crate::GroupManager::release) or
    /// [`end_group`](crate::GroupManager::end_group) makes room.
    pub max_active_groups: usize,
    /// How long a group's session lives after its last commit (default
    /// 30 days): every turn moves its expiry.
    pub session_ttl: Duration,
    /// Events a slow subscriber may fall behind before it skips (default
    /// 1,024).
    pub event_buffer: usize,
    /// Answers asked of the LLM selector per turn, 1 to 3 (default 3).
    pub selection_attempts: u32,
    /// The longest an LLM selection may take, its attempts together
    /// (default 60 s); then the deterministic fallback chooses.
    pub selection_timeout: Duration,
    /// Recent messages the selector (LLM or hooks) sees (default 10).
    pub selection_window: usize,
    /// Whether agent failures reported to the health monitor count toward
    /// graceful degradation (FR-010a). Default `false`: a flaky model
    /// should not pause new sessions.
    pub failures_count_toward_degradation: bool,
    /// The longest message a round accepts, in bytes (default 1 MiB).
    pub max_message_bytes: usize,
    /// The most rounds that events may have running or waiting at once
    /// (default 64). Past it, the `Runtime`'s trigger subscription waits
    /// before it takes the next event, so an event storm queues in the
    /// bus's log instead of spawning unbounded work.
    pub max_trigger_rounds: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            max_active_groups: 1000,
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            event_buffer: 1024,
            selection_attempts: 3,
            selection_timeout: Duration::from_secs(60),
            selection_window: 10,
            failures_count_toward_degradation: false,
            max_message_bytes: 1024 * 1024,
            max_trigger_rounds: 64,
        }
    }
}

impl GroupsConfig {
    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), smalltalk_types::Error> {
        let invalid = |field: &'static str, reason: &str| smalltalk_types::Error::InvalidConfig {
            field,
            reason: reason.into(),
        };
        if !(1..=1_000_000).contains(&self.max_active_groups) {
            return Err(invalid(
                "groups.max_active_groups",
                "must be between 1 and 1000000",
            ));
        }
        if self.session_ttl < Duration::from_secs(1)
            || self.session_ttl > Duration::from_secs(10 * 365 * 24 * 3600)
        {
            return Err(invalid(
                "groups.session_ttl",
                "must be between 1 s and 10 years",
            ));
        }
        if !(1..=1_000_000).contains(&self.event_buffer) {
            return Err(invalid(
                "groups.event_buffer",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=3).contains(&self.selection_attempts) {
            return Err(invalid("groups.selection_attempts", "must be 1, 2 or 3"));
        }
        if self.selection_timeout < Duration::from_millis(1)
            || self.selection_timeout > Duration::from_secs(3600)
        {
            return Err(invalid(
                "groups.selection_timeout",
                "must be between 1 ms and 1 hour",
            ));
        }
        if !(1..=1000).contains(&self.selection_window) {
            return Err(invalid(
                "groups.selection_window",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(invalid(
                "groups.max_message_bytes",
                "must be between 1 byte and 16 MiB",
            ));
        }
        if !(1..=100_000).contains(&self.max_trigger_rounds) {
            return Err(invalid(
                "groups.max_trigger_rounds",
                "must be between 1 and 100000",
            ));
        }
        Ok(())
    }
}
