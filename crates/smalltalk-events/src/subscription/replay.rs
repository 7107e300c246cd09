//! What a subscription reads back from the log: the catch-up after its
//! queue overflowed, the replay on subscribe (unsettled events, then what
//! its policy selects), explicit replays, and gap notices.

use std::collections::VecDeque;
use std::sync::Arc;

use smalltalk_storage::EventFilter;
use smalltalk_types::{Event, EventPriority, ReplayMode};

use super::{READ_BATCH, RETRY_PAUSES, Ran, Start, Worker};
use crate::handler::{AckHandle, Touch};
use crate::log::{Entry, report_undecodable};
use crate::stats::bump;
use crate::{Delivery, GapNotice, Outcome, ReplayOptions, ReplayReport, Result};

impl Worker {
    /// Reads from the log what the queue could not hold: every event after
    /// `last_seen` up to the newest. The lagging flag is cleared before the
    /// read, and an event is in the log before it is offered to the queue,
    /// so a drop is either read here or flagged again. A failing log is
    /// retried with backoff: nothing after the gap is handled before it is
    /// filled. `false` if the subscription stopped first.
    pub(super) async fn catch_up(&mut self) -> bool {
        let filter = self.sub.filter.clone();
        let mut failures = 0;
        loop {
            if self.stopped() {
                return false;
            }
            let read = match self.check_gap(self.last_seen, None).await {
                Ok(_) => {
                    self.bus
                        .backing
                        .read(self.last_seen, &filter, READ_BATCH)
                        .await
                }
                Err(error) => Err(error),
            };
            let batch = match read {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(subscriber = %self.sub.subscriber, %error,
                        "could not read the log to catch up; retrying");
                    if !self.pause(&mut failures).await {
                        return false;
                    }
                    continue;
                }
            };
            failures = 0;
            let full = batch.len() == READ_BATCH;
            for entry in batch {
                match entry {
                    Entry::Event(event) => self.deliver(event, false).await,
                    Entry::Undecodable(row) => self.pass_over(&row).await,
                }
                if self.stopped() {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }

    /// Waits out the pause after `failures` failures in a row (then counts
    /// one more), unless the subscription is stopped first (`false`).
    pub(super) async fn pause(&self, failures: &mut u32) -> bool {
        let pause = RETRY_PAUSES.delay(*failures);
        *failures = failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(pause) => !self.stopped(),
            () = self.sub.stop.notified() => {
                // Keep the stop request for the main loop.
                self.sub.stop.notify_one();
                false
            }
        }
    }

    /// Sends a gap notice if the log no longer holds positions right after
    /// `after`, and moves past them. `window_start`: only a gap for events
    /// published after it matters.
    pub(super) async fn check_gap(
        &mut self,
        after: u64,
        window_start: Option<smalltalk_types::Timestamp>,
    ) -> Result<()> {
        let bounds = self.bus.backing.bounds(self.bus.dispatched()).await?;
        let first_retained = bounds.first.unwrap_or(bounds.last + 1);
        if first_retained <= after + 1 {
            return Ok(());
        }
        if let Some(start) = window_start {
            // Whatever was purged was older than the retention cutoff.
            let cutoff = self
                .bus
                .clock
                .now()
                .saturating_sub(self.bus.config.retention);
            if start >= cutoff {
                return Ok(());
            }
        }
        let gap = GapNotice {
            subscriber: self.sub.subscriber.clone(),
            pattern: self.sub.pattern.clone(),
            from: after + 1,
            to: first_retained - 1,
        };
        self.report_gap(&gap).await;
        self.last_seen = self.last_seen.max(gap.to);
        Ok(())
    }

    pub(super) async fn report_gap(&self, gap: &GapNotice) {
        tracing::error!(subscriber = %gap.subscriber, pattern = %gap.pattern, from = gap.from,
            to = gap.to, "events were purged before this subscriber read them (replay gap)");
        bump(&self.sub.counters.gaps);
        bump(&self.bus.counters.gaps_detected);
        metrics::counter!("smalltalk_event_replay_gaps_total").increment(1);
        self.handler.on_gap(gap.clone()).await;
        self.sub.changed();
    }

    /// On subscribe: what was missed since `last_seen` (the stored cursor,
    /// or how far an interrupted attempt got), per the policy.
    pub(super) async fn replay_missed(&mut self, start: &Start) -> Result<()> {
        // First what was published while the subscriber was there and is
        // not settled (delivered but not acknowledged when it went away):
        // always again, whatever the policy.
        let live_until = start
            .cursor
            .map_or(0, |cursor| cursor.live_until)
            .min(start.registered_at);
        if self.last_seen < live_until {
            self.check_gap(self.last_seen, None).await?;
            let filter = self.sub.filter.clone();
            let mut after = self.last_seen;
            'unsettled: loop {
                let batch = self.bus.backing.read(after, &filter, READ_BATCH).await?;
                let full = batch.len() == READ_BATCH;
                for entry in batch {
                    let position = entry.position();
                    if position > live_until {
                        break 'unsettled;
                    }
                    after = position;
                    match entry {
                        Entry::Event(event) => self.deliver(event, true).await,
                        Entry::Undecodable(row) => self.pass_over(&row).await,
                    }
                    if self.stopped() {
                        return Ok(());
                    }
                }
                if !full {
                    break;
                }
            }
            // Nothing else up to there was for this subscription.
            self.last_seen = self.last_seen.max(live_until);
        }
        // Then what was published while it was away, per its policy.
        let policy = &start.policy;
        let cursor = self.last_seen.max(live_until);
        if policy.mode == ReplayMode::None || cursor >= start.registered_at {
            return Ok(());
        }
        let mut filter = self.sub.filter.clone();
        if policy.mode == ReplayMode::CriticalOnly {
            if filter.priority == Some(EventPriority::Normal) {
                return Ok(());
            }
            filter.priority = Some(EventPriority::Critical);
        }
        let window_start = policy
            .time_window
            .map(|window| self.bus.clock.now().saturating_sub(window));
        filter.since = window_start;
        self.check_gap(cursor, window_start).await?;
        let mut after = cursor;
        let mut kept: VecDeque<Arc<Event>> = VecDeque::new();
        let keep_at_most = policy
            .max_events
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        'read: loop {
            let batch = self.bus.backing.read(after, &filter, READ_BATCH).await?;
            let full = batch.len() == READ_BATCH;
            for entry in batch {
                let position = entry.position();
                if position > start.registered_at {
                    break 'read;
                }
                after = position;
                let event = match entry {
                    Entry::Event(event) => event,
                    Entry::Undecodable(row) => {
                        // Counted, never kept: not one of the newest `n`.
                        if keep_at_most.is_none() {
                            self.pass_over(&row).await;
                        } else {
                            report_undecodable(&row, &self.sub.subscriber);
                            bump(&self.sub.counters.dead_lettered);
                        }
                        continue;
                    }
                };
                // Imported history is for explicit replays: it takes no
                // place among the newest `n`.
                if event.is_imported() {
                    continue;
                }
                match keep_at_most {
                    // Keep only the newest `n`: deliver at the end.
                    Some(n) => {
                        if kept.len() == n {
                            kept.pop_front();
                        }
                        kept.push_back(event);
                    }
                    None => {
                        self.deliver_per_policy(event).await;
                        if self.stopped() {
                            return Ok(());
                        }
                    }
                }
            }
            if !full {
                break;
            }
        }
        for event in kept {
            self.deliver_per_policy(event).await;
            if self.stopped() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Delivers one event the replay policy selected: what it skipped
    /// before it is settled (the policy passed on it), so a crash from here
    /// does not bring it back.
    pub(super) async fn deliver_per_policy(&mut self, event: Arc<Event>) {
        let position = event.position.unwrap_or(0);
        self.last_seen = self.last_seen.max(position.saturating_sub(1));
        self.deliver(event, true).await;
    }

    /// An explicit replay: delivers matching past events again, whether
    /// processed or not, without moving the cursor.
    pub(super) async fn replay(&mut self, options: ReplayOptions) -> Result<ReplayReport> {
        let mut filter = self.sub.filter.clone();
        if let Some(priority) = options.priority {
            if filter.priority.is_some_and(|own| own != priority) {
                return Ok(ReplayReport::default());
            }
            filter.priority = Some(priority);
        }
        filter.since = options.since;
        filter.until = options.until;
        let mut report = ReplayReport::default();
        let bounds = self.bus.backing.bounds(self.bus.dispatched()).await?;
        if let Some(gap) = self.explicit_gap(bounds, options.since).await? {
            self.report_gap(&gap).await;
            report.gaps.push(gap);
        }
        let limit = options.limit.unwrap_or(usize::MAX);
        let upto = self.last_seen;
        let mut after = 0;
        'read: while (report.delivered as usize) < limit {
            let batch = self.bus.backing.read(after, &filter, READ_BATCH).await?;
            let full = batch.len() == READ_BATCH;
            for entry in batch {
                let position = entry.position();
                if position > upto || report.delivered as usize >= limit {
                    break 'read;
                }
                after = position;
                let event = match entry {
                    Entry::Event(event) => event,
                    Entry::Undecodable(row) => {
                        report_undecodable(&row, &self.sub.subscriber);
                        bump(&self.sub.counters.dead_lettered);
                        report.failed += 1;
                        continue;
                    }
                };
                if (options.skip_imported && event.is_imported())
                    || (!options.topics.is_empty()
                        && !options
                            .topics
                            .iter()
                            .any(|topic| topic.matches(&event.topic)))
                {
                    continue;
                }
                if !self.replay_one(event).await {
                    report.failed += 1;
                }
                report.delivered += 1;
            }
            if !full {
                break;
            }
        }
        Ok(report)
    }

    /// The purged range an explicit replay from `since` would have
    /// covered, if any.
    pub(super) async fn explicit_gap(
        &self,
        bounds: smalltalk_storage::LogBounds,
        since: Option<smalltalk_types::Timestamp>,
    ) -> Result<Option<GapNotice>> {
        let first_retained = bounds.first.unwrap_or(bounds.last + 1);
        if first_retained <= 1 {
            return Ok(None);
        }
        if let Some(since) = since {
            let oldest = self
                .bus
                .backing
                .read(first_retained - 1, &EventFilter::default(), 1)
                .await?;
            let oldest_time = match oldest.first() {
                Some(Entry::Event(event)) => Some(event.timestamp),
                // Its time is unknown: assume the purge reached the window.
                _ => None,
            };
            if oldest_time.is_some_and(|time| time <= since) {
                return Ok(None);
            }
        }
        Ok(Some(GapNotice {
            subscriber: self.sub.subscriber.clone(),
            pattern: self.sub.pattern.clone(),
            from: 1,
            to: first_retained - 1,
        }))
    }

    /// Delivers a replayed event until the handler acks (in progress
    /// counts as accepted; `true`), or naks or panics past the limit
    /// (`false`).
    pub(super) async fn replay_one(&mut self, event: Arc<Event>) -> bool {
        let position = event.position.unwrap_or(0);
        for attempt in 1..=self.bus.config.max_deliver {
            let touch = Arc::new(Touch::new(self.bus.epoch));
            let delivery = Delivery {
                event: Arc::clone(&event),
                attempt,
                replayed: true,
                handle: AckHandle::new(position, Arc::clone(&touch), self.answers_tx.clone()),
            };
            bump(&self.sub.counters.deliveries);
            match self.run_handler(delivery, &touch).await {
                // Not marked processed: a deliberate replay is not a
                // redelivery, and the registry is for those.
                Ran::Outcome(Outcome::Ack | Outcome::InProgress) => {
                    bump(&self.sub.counters.acked);
                    self.sub.changed();
                    return true;
                }
                Ran::Outcome(Outcome::Nak { .. }) => bump(&self.sub.counters.naked),
                Ran::Panicked => bump(&self.sub.counters.panics),
                Ran::TimedOut => bump(&self.sub.counters.timeouts),
            }
            self.sub.changed();
        }
        self.dead_letter(&event, self.bus.config.max_deliver);
        false
    }
}
