//! Fan-out: which subscriptions each event goes to, in log order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use smalltalk_types::Event;

use crate::subscription::SubShared;

/// Distinct topics counted in stats, at most.
const MAX_TOPICS_COUNTED: usize = 10_000;

/// Topics whose matching subscriptions are cached, at most: past it the
/// cache starts over, so a process that sees endless distinct topics keeps
/// bounded memory.
pub(crate) const MAX_CACHED_TOPICS: usize = 4_096;

/// Fan-out state, behind the bus's dispatch lock. Whoever holds the lock
/// hands events to subscriptions in position order, so every queue is in
/// log order; a subscription registers under the same lock, so it sees
/// exactly the events after the position it registered at.
#[derive(Debug, Default)]
pub(crate) struct Dispatch {
    /// The newest position handed out.
    pub(crate) dispatched: u64,
    /// The registry generation the cache was built for.
    generation: u64,
    /// Subscriptions whose pattern matches each topic seen.
    by_topic: HashMap<Box<str>, Arc<[Arc<SubShared>]>>,
    topics: HashSet<Box<str>>,
}

impl Dispatch {
    pub(crate) fn new(dispatched: u64) -> Self {
        Self {
            dispatched,
            ..Self::default()
        }
    }

    /// Distinct topics published.
    pub(crate) fn topics(&self) -> usize {
        self.topics.len()
    }

    /// Topics in the fan-out cache now.
    pub(crate) fn cached_topics(&self) -> usize {
        self.by_topic.len()
    }

    /// Hands `events` (in position order) to every subscription they
    /// match, skipping those already dispatched and stopping at a hole
    /// (events before it must go out first).
    pub(crate) fn fan_out(
        &mut self,
        registry: &crate::bus::Registry,
        events: &[Arc<Event>],
        count_topics: bool,
    ) {
        let generation = registry.generation();
        if generation != self.generation {
            self.by_topic.clear();
            self.generation = generation;
        }
        for event in events {
            let Some(position) = event.position else {
                continue;
            };
            if position <= self.dispatched {
                continue;
            }
            if position != self.dispatched + 1 {
                // Positions are contiguous: a hole means events not read
                // yet (another process's). They go out first, later, from
                // the log; nothing is handed out past them.
                tracing::debug!(
                    dispatched = self.dispatched,
                    position,
                    "not dispatching past unread events"
                );
                return;
            }
            self.dispatched = position;
            let topic = event.topic.as_str();
            if count_topics
                && self.topics.len() < MAX_TOPICS_COUNTED
                && !self.topics.contains(topic)
            {
                self.topics.insert(topic.into());
            }
            let subscribers = match self.by_topic.get(topic) {
                Some(subscribers) => Arc::clone(subscribers),
                None => {
                    let matching: Arc<[Arc<SubShared>]> = registry.matching(&event.topic).into();
                    if self.by_topic.len() >= MAX_CACHED_TOPICS {
                        self.by_topic.clear();
                    }
                    self.by_topic.insert(topic.into(), Arc::clone(&matching));
                    matching
                }
            };
            for subscription in subscribers.iter() {
                if subscription.accepts(event) {
                    subscription.offer(event);
                }
            }
        }
    }
}
