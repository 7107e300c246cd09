//! The manager's counters.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Selection, SelectionSource, Strategy};

/// What a [`GroupManager`](crate::GroupManager) has done since it was built.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct GroupStats {
    /// Groups open on this manager.
    pub active_groups: u64,
    /// Rounds started.
    pub rounds: u64,
    /// Turns committed (one agent message each).
    pub turns: u64,
    /// Messages stored in groups' histories: the user messages and events
    /// that started rounds, and the agents' answers.
    pub messages: u64,
    /// Agents whose retries were spent in a turn.
    pub agent_failures: u64,
    /// Commits lost to another writer.
    pub conflicts: u64,
    /// Speaker selections, by the group's strategy.
    pub selections_by_strategy: BTreeMap<Strategy, u64>,
    /// Selections decided by the custom selector.
    pub custom_selections: u64,
    /// Selections that fell back to round-robin after the LLM.
    pub fallbacks: u64,
    /// The mean time a selection took.
    pub average_selection_latency: Duration,
    /// The share of selections the strategy (or the custom selector)
    /// decided, without a fallback: 1 when there were none.
    pub selection_success_rate: f64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    rounds: AtomicU64,
    turns: AtomicU64,
    messages: AtomicU64,
    failures: AtomicU64,
    conflicts: AtomicU64,
    custom: AtomicU64,
    fallbacks: AtomicU64,
    latency_micros: AtomicU64,
    by_strategy: Mutex<BTreeMap<Strategy, u64>>,
}

impl Counters {
    pub(super) fn round_started(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn turn(&self) {
        self.turns.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stored(&self, messages: usize) {
        self.messages.fetch_add(messages as u64, Ordering::Relaxed);
    }

    pub(super) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn selected(&self, selection: &Selection) {
        *self
            .by_strategy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(selection.strategy)
            .or_default() += 1;
        match selection.source {
            SelectionSource::Custom => {
                self.custom.fetch_add(1, Ordering::Relaxed);
            }
            SelectionSource::Fallback => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            SelectionSource::Strategy => {}
        }
        self.latency_micros.fetch_add(
            u64::try_from(selection.latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(super) fn snapshot(&self, active_groups: u64) -> GroupStats {
        let by_strategy = self
            .by_strategy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let selections: u64 = by_strategy.values().sum();
        let fallbacks = self.fallbacks.load(Ordering::Relaxed);
        GroupStats {
            active_groups,
            rounds: self.rounds.load(Ordering::Relaxed),
            turns: self.turns.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            agent_failures: self.failures.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            custom_selections: self.custom.load(Ordering::Relaxed),
            fallbacks,
            average_selection_latency: Duration::from_micros(
                self.latency_micros
                    .load(Ordering::Relaxed)
                    .checked_div(selections)
                    .unwrap_or(0),
            ),
            selection_success_rate: if selections == 0 {
                1.0
            } else {
                (selections - fallbacks) as f64 / selections as f64
            },
            selections_by_strategy: by_strategy,
        }
    }
}
