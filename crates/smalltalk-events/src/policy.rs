//! Replay policies per subscriber, in code or from a YAML file (FR-016a-c).
//!
//! # File format
//!
//! ```yaml
//! # What a subscriber that comes back receives of what it missed.
//! # Every key is optional; unknown keys are refused.
//! default:                 # for subscribers not listed below
//!   mode: critical-only    # none | full | critical-only (the default)
//! subscribers:
//!   auditor:               # a subscriber id
//!     mode: full
//!   dashboard:
//!     mode: none
//!   planner:
//!     mode: full
//!     maxEvents: 500       # at most the newest 500 missed events
//!     timeWindowMs: 3600000  # only events of the last hour
//! ```
//!
//! `mode` picks which missed events are delivered again: none, all of
//! them, or only critical ones. `maxEvents` keeps the newest that many;
//! `timeWindowMs` keeps those published in that many milliseconds before
//! the subscriber came back. Both are optional and combine.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use smalltalk_types::{Error as DomainError, EventReplayPolicy, SubscriberId};

use crate::{Error, Result};

/// Replay policies: one default, and overrides by subscriber id.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayPolicies {
    /// For subscribers without an override. Default: critical-only, no
    /// limits.
    #[serde(default)]
    pub default: EventReplayPolicy,
    /// Overrides by subscriber id.
    #[serde(default)]
    pub subscribers: BTreeMap<SubscriberId, EventReplayPolicy>,
}

impl ReplayPolicies {
    /// The policy that applies to `subscriber`.
    pub fn for_subscriber(&self, subscriber: &SubscriberId) -> &EventReplayPolicy {
        self.subscribers.get(subscriber).unwrap_or(&self.default)
    }

    /// Sets `subscriber`'s policy.
    pub fn set(&mut self, subscriber: SubscriberId, policy: EventReplayPolicy) -> &mut Self {
        self.subscribers.insert(subscriber, policy);
        self
    }

    /// Parses policies in the [file format](self), then validates them.
    pub fn from_yaml_str(text: &str) -> Result<Self> {
        Self::parse(text, "<string>")
    }

    /// Reads and parses a policy file in the [file format](self).
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| Error::PolicyFile {
            origin: origin.clone(),
            source: Box::new(error),
        })?;
        Self::parse(&text, &origin)
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        // An empty file is an empty mapping: the defaults.
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let policies: Self = serde_saphyr::from_str(text).map_err(|error| Error::PolicyFile {
            origin: origin.to_owned(),
            source: Box::new(error),
        })?;
        policies.validate()?;
        Ok(policies)
    }

    /// Checks every policy's limits: `maxEvents` at least 1, a time window
    /// longer than zero.
    pub fn validate(&self) -> Result<()> {
        check(&self.default)?;
        self.subscribers.values().try_for_each(check)
    }
}

/// Checks one policy (`maxEvents` at least 1, a time window above zero).
pub(crate) fn check(policy: &EventReplayPolicy) -> Result<()> {
    if policy.max_events == Some(0) {
        return Err(DomainError::InvalidConfig {
            field: "policies.maxEvents",
            reason: "must be at least 1".into(),
        }
        .into());
    }
    if policy.time_window.is_some_and(|window| window.is_zero()) {
        return Err(DomainError::InvalidConfig {
            field: "policies.timeWindowMs",
            reason: "must be more than zero".into(),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use smalltalk_types::ReplayMode;

    use super::*;

    const FILE: &str = "
default:
  mode: critical-only
subscribers:
  auditor:
    mode: full
  dashboard:
    mode: none
  planner:
    mode: full
    maxEvents: 500
    timeWindowMs: 3600000
";

    #[test]
    fn the_documented_format_parses() {
        let policies = ReplayPolicies::from_yaml_str(FILE).unwrap();
        let id = |text| SubscriberId::parse(text).unwrap();
        assert_eq!(
            policies.for_subscriber(&id("auditor")).mode,
            ReplayMode::Full
        );
        assert_eq!(
            policies.for_subscriber(&id("dashboard")).mode,
            ReplayMode::None
        );
        let planner = policies.for_subscriber(&id("planner"));
        assert_eq!(planner.max_events, Some(500));
        assert_eq!(planner.time_window, Some(Duration::from_secs(3600)));
        assert_eq!(
            policies.for_subscriber(&id("someone-else")).mode,
            ReplayMode::CriticalOnly
        );
        assert_eq!(
            ReplayPolicies::from_yaml_str("").unwrap(),
            ReplayPolicies::default()
        );
    }

    #[test]
    fn bad_files_are_typed_errors() {
        for text in [
            "default:\n  mode: sometimes\n",
            "default:\n  mood: full\n",
            "subscribers:\n  ../etc: {mode: full}\n",
            "surprise: 1\n",
            "default: [1, 2\n",
        ] {
            assert!(
                matches!(
                    ReplayPolicies::from_yaml_str(text),
                    Err(Error::PolicyFile { .. })
                ),
                "{text:?} was accepted"
            );
        }
        assert!(matches!(
            ReplayPolicies::from_yaml_str("default:\n  maxEvents: 0\n"),
            Err(Error::Invalid(DomainError::InvalidConfig { .. }))
        ));
        assert!(matches!(
            ReplayPolicies::from_yaml_file("/nonexistent/policies.yaml"),
            Err(Error::PolicyFile { .. })
        ));
    }
}
