//! Graceful degradation (FR-010a): counting failures, switching in and
//! out of degraded operation.

use super::*;

impl AgentHealthMonitor {
    /// Counts a failure; enters degradation past the threshold.
    pub(super) async fn count_failure(&self, now: Timestamp) {
        let config = &self.inner.config.degradation;
        let enter = {
            let mut degradation = lock(&self.inner.degradation);
            degradation.failures.push_back(now);
            while degradation
                .failures
                .front()
                .is_some_and(|at| now.duration_since(*at) > config.window)
            {
                degradation.failures.pop_front();
            }
            let enter =
                !degradation.degraded && degradation.failures.len() > config.failures as usize;
            if enter {
                degradation.degraded = true;
                degradation.calm_since = None;
                degradation.retried_at = Some(now);
            }
            enter.then_some(degradation.failures.len())
        };
        if let Some(failures) = enter {
            self.switch_degradation(
                true,
                format!(
                    "graceful degradation: {failures} agent failures within {:?}; new sessions paused, capacity halved",
                    config.window
                ),
            )
            .await;
        }
    }

    /// While degraded: retries failed agents every `retry_interval`, and
    /// leaves once few enough are failed for long enough.
    pub(super) async fn check_degradation(&self, now: Timestamp) {
        let config = &self.inner.config.degradation;
        let (failed, retry) = {
            let agents = lock(&self.inner.agents);
            let failed: Vec<(AgentId, RecoveryStrategy)> = agents
                .iter()
                .filter(|(_, entry)| entry.status.state == HealthState::Failed)
                .map(|(id, entry)| (id.clone(), entry.strategy.clone()))
                .collect();
            let mut degradation = lock(&self.inner.degradation);
            if !degradation.degraded {
                return;
            }
            let retry = degradation
                .retried_at
                .is_none_or(|at| now.duration_since(at) >= config.retry_interval);
            if retry {
                degradation.retried_at = Some(now);
            }
            (failed, retry)
        };
        let exit = {
            let mut degradation = lock(&self.inner.degradation);
            if failed.len() < config.exit_below_failed {
                let since = *degradation.calm_since.get_or_insert(now);
                let exit = now.duration_since(since) >= config.exit_after;
                if exit {
                    degradation.degraded = false;
                    degradation.calm_since = None;
                    degradation.failures.clear();
                }
                exit
            } else {
                degradation.calm_since = None;
                false
            }
        };
        if exit {
            self.switch_degradation(
                false,
                format!(
                    "graceful degradation over: fewer than {} agents failed for {:?}",
                    config.exit_below_failed, config.exit_after
                ),
            )
            .await;
            return;
        }
        if retry {
            for (agent_id, strategy) in failed {
                if strategy.kind == RecoveryKind::Alert
                    || strategy.restart_type == RestartType::Temporary
                {
                    continue;
                }
                if let Some(entry) = lock(&self.inner.agents).get_mut(&agent_id) {
                    // A fresh chance: the periodic retry is not a crash loop.
                    entry.restarts.clear();
                    entry.status.state = HealthState::Disconnected;
                }
                let monitor = self.clone();
                tokio::spawn(async move { monitor.recover(agent_id, strategy).await });
            }
        }
    }

    pub(super) async fn switch_degradation(&self, degraded: bool, message: String) {
        if let Some(control) = &self.inner.control {
            control.set_degraded(degraded);
        }
        tracing::warn!(degraded, "{message}");
        self.inner
            .alerts
            .raise(Alert {
                severity: if degraded {
                    AlertSeverity::Critical
                } else {
                    AlertSeverity::Info
                },
                source: "health".into(),
                message,
                context: serde_json::Map::new(),
                timestamp: self.inner.clock.now(),
            })
            .await;
        if let Some(events) = &self.inner.events {
            events
                .announce(Announcement {
                    topic: Topic::parse(DEGRADATION_CHANGED).expect("valid topic"),
                    priority: EventPriority::Critical,
                    session_id: None,
                    conversation_id: None,
                    payload: json!({ "degraded": degraded }),
                    timestamp: self.inner.clock.now(),
                })
                .await;
        }
        self.inner.changes.send_modify(|count| *count += 1);
    }
}

/// Topic announced when another part reports an agent failure.
pub const FAILURE_REPORTED: &str = "health:agent-failure-reported";

/// Failures seen elsewhere (a group whose agent kept failing its turn):
/// logged, announced as [`FAILURE_REPORTED`], counted in
/// [`HealthStats::reported_failures`](crate::HealthStats), and counted
/// toward graceful degradation only when the report says so.
#[async_trait::async_trait]
impl smalltalk_types::AgentFailureSink for AgentHealthMonitor {
    async fn agent_failed(&self, report: smalltalk_types::AgentFailureReport) {
        if self.is_closed() {
            return;
        }
        tracing::warn!(
            agent_id = %report.agent_id,
            source = %report.source,
            attempts = report.attempts,
            "agent failure reported: {}",
            report.error
        );
        self.inner
            .reported_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(events) = &self.inner.events {
            events
                .announce(Announcement {
                    topic: Topic::parse(FAILURE_REPORTED).expect("valid topic"),
                    priority: EventPriority::Critical,
                    session_id: None,
                    conversation_id: None,
                    payload: json!({
                        "agentId": report.agent_id,
                        "source": report.source,
                        "attempts": report.attempts,
                        "countsTowardDegradation": report.counts_toward_degradation,
                    }),
                    timestamp: report.timestamp,
                })
                .await;
        }
        if report.counts_toward_degradation {
            self.count_failure(self.inner.clock.now()).await;
        }
    }
}
