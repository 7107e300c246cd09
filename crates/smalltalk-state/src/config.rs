//! The state store's configuration.

use std::time::Duration;

use smalltalk_storage::versioned::MAX_VALUE_BYTES;
use smalltalk_types::{AgentId, Backoff, Error as DomainError};

/// Settings for a [`StateStore`](crate::StateStore); every range is checked
/// by [`validate`](Self::validate) at build, with an error naming the field.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Versions each live key keeps below the compaction point (FR-023's
    /// "keep last N"): 1 to 10,000, default 10.
    pub keep_versions: u32,
    /// The compaction point follows revisions older than this: 1 minute to
    /// 365 days, default 24 h.
    pub retention: Duration,
    /// Also keep at most this many revisions above the compaction point
    /// (`None`, the default: by age only). At least 1.
    pub max_revisions: Option<u64>,
    /// How often maintenance compacts: 1 s to 24 h, default 5 minutes.
    pub compaction_interval: Duration,
    /// How often expired leases are revoked: 10 ms to 60 s, default 1 s.
    pub lease_check_interval: Duration,
    /// How often a watcher looks for writes it was not woken for (other
    /// processes on SQLite; a lost notification on PostgreSQL): 1 ms to
    /// 60 s, default 100 ms.
    pub sync_interval: Duration,
    /// A watcher with nothing to deliver for this long gets a progress
    /// notification: 10 ms to 1 h, default 10 s.
    pub progress_interval: Duration,
    /// The largest value accepted, as encoded JSON: 1 byte to 1.5 MiB (the
    /// storage limit), default 1.5 MiB.
    pub max_value_bytes: usize,
    /// How long an [`update`](crate::StateStore::update) (or a write going
    /// through a conflict policy) keeps retrying on newer versions: 1 ms to
    /// 10 minutes, default 10 s.
    pub update_timeout: Duration,
    /// The pause between retries, with random jitter of up to half of it.
    /// Default 1 ms doubling to 50 ms.
    pub conflict_backoff: Backoff,
    /// The author recorded on writes (see also
    /// [`StateStore::as_author`](crate::StateStore::as_author)).
    pub author: Option<AgentId>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            keep_versions: 10,
            retention: Duration::from_secs(24 * 3600),
            max_revisions: None,
            compaction_interval: Duration::from_secs(300),
            lease_check_interval: Duration::from_secs(1),
            sync_interval: Duration::from_millis(100),
            progress_interval: Duration::from_secs(10),
            max_value_bytes: MAX_VALUE_BYTES,
            update_timeout: Duration::from_secs(10),
            conflict_backoff: Backoff::new(
                Duration::from_millis(1),
                2.0,
                Duration::from_millis(50),
            ),
            author: None,
        }
    }
}

fn within(
    field: &'static str,
    value: Duration,
    low: Duration,
    high: Duration,
) -> Result<(), DomainError> {
    if value < low || value > high {
        return Err(DomainError::InvalidConfig {
            field,
            reason: format!("must be between {low:?} and {high:?}, got {value:?}"),
        });
    }
    Ok(())
}

impl StateConfig {
    /// Checks every range.
    pub fn validate(&self) -> Result<(), DomainError> {
        if !(1..=10_000).contains(&self.keep_versions) {
            return Err(DomainError::InvalidConfig {
                field: "keep_versions",
                reason: format!("must be between 1 and 10000, got {}", self.keep_versions),
            });
        }
        within(
            "retention",
            self.retention,
            Duration::from_secs(60),
            Duration::from_secs(365 * 24 * 3600),
        )?;
        if self.max_revisions == Some(0) {
            return Err(DomainError::InvalidConfig {
                field: "max_revisions",
                reason: "must be at least 1".into(),
            });
        }
        within(
            "compaction_interval",
            self.compaction_interval,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        within(
            "lease_check_interval",
            self.lease_check_interval,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        within(
            "sync_interval",
            self.sync_interval,
            Duration::from_millis(1),
            Duration::from_secs(60),
        )?;
        within(
            "progress_interval",
            self.progress_interval,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        if !(1..=MAX_VALUE_BYTES).contains(&self.max_value_bytes) {
            return Err(DomainError::InvalidConfig {
                field: "max_value_bytes",
                reason: format!(
                    "must be between 1 and {MAX_VALUE_BYTES}, got {}",
                    self.max_value_bytes
                ),
            });
        }
        within(
            "update_timeout",
            self.update_timeout,
            Duration::from_millis(1),
            Duration::from_secs(600),
        )?;
        self.conflict_backoff.validate("conflict_backoff")
    }
}
