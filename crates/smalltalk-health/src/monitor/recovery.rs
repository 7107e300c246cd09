//! Transitions, alerts, and recovery: restart, replace or alert, with
//! backoff, restoring the agent's state and replaying what it missed.

use super::*;

impl AgentHealthMonitor {
    /// Records a state change, announces it and wakes waiters.
    pub(super) async fn transition(&self, agent_id: &AgentId, to: HealthState, reason: &str) {
        let from = {
            let mut agents = lock(&self.inner.agents);
            let Some(entry) = agents.get_mut(agent_id) else {
                return;
            };
            let from = entry.status.state;
            if from == to {
                return;
            }
            entry.status.state = to;
            // The failure's reason, kept through recovery for operators.
            if matches!(
                to,
                HealthState::Disconnected | HealthState::Failed | HealthState::Degraded
            ) {
                entry.status.last_error = Some(reason.to_owned());
            }
            from
        };
        tracing::info!(%agent_id, ?from, ?to, reason, "agent health changed");
        metrics::gauge!("smalltalk_agent_health_status", "agent" => agent_id.to_string())
            .set(state_value(to));
        if let Some(events) = &self.inner.events {
            let announcement = Announcement {
                topic: Topic::parse(HEALTH_CHANGED).expect("valid topic"),
                priority: if to == HealthState::Failed {
                    EventPriority::Critical
                } else {
                    EventPriority::Normal
                },
                session_id: None,
                conversation_id: None,
                payload: json!({"agentId": agent_id, "from": from, "to": to, "reason": reason}),
                timestamp: self.inner.clock.now(),
            };
            events.announce(announcement).await;
        }
        self.inner.changes.send_modify(|count| *count += 1);
    }

    pub(super) async fn alert(&self, severity: AlertSeverity, agent_id: &AgentId, message: String) {
        let mut context = serde_json::Map::new();
        context.insert("agentId".into(), json!(agent_id));
        self.inner
            .alerts
            .raise(Alert {
                severity,
                source: "health".into(),
                message,
                context,
                timestamp: self.inner.clock.now(),
            })
            .await;
    }

    /// An agent failed: mark it, then run its strategy.
    pub(super) async fn fail(&self, failure: Failure) {
        let Failure {
            agent_id,
            reason,
            abnormal,
        } = failure;
        let (strategy, failures) = {
            let mut agents = lock(&self.inner.agents);
            let Some(entry) = agents.get_mut(&agent_id) else {
                return;
            };
            if matches!(
                entry.status.state,
                HealthState::Recovering | HealthState::Failed
            ) {
                return;
            }
            entry.failures += 1;
            (entry.strategy.clone(), entry.failures)
        };
        self.transition(&agent_id, HealthState::Disconnected, &reason)
            .await;
        self.count_failure(self.inner.clock.now()).await;
        if failures < strategy.failure_threshold {
            return;
        }
        let restart = match strategy.restart_type {
            RestartType::Permanent => true,
            RestartType::Transient => abnormal,
            RestartType::Temporary => false,
        };
        if strategy.kind == RecoveryKind::Alert || !restart {
            let why = if strategy.kind == RecoveryKind::Alert {
                "alert-only strategy: not restarted"
            } else {
                "not restarted (restart type)"
            };
            self.alert(
                AlertSeverity::Error,
                &agent_id,
                format!("agent {agent_id} failed: {reason}; {why}"),
            )
            .await;
            if !restart {
                self.transition(&agent_id, HealthState::Failed, &reason)
                    .await;
            }
            return;
        }
        self.alert(
            AlertSeverity::Warning,
            &agent_id,
            format!("agent {agent_id} failed: {reason}; recovering"),
        )
        .await;
        let monitor = self.clone();
        tokio::spawn(async move { monitor.recover(agent_id, strategy).await });
    }

    /// Restarts or replaces an agent, with backoff, within its restart
    /// intensity; marks it failed (and alerts) when that runs out.
    pub(super) async fn recover(&self, agent_id: AgentId, strategy: RecoveryStrategy) {
        let backoff = strategy.backoff();
        for attempt in 1..=strategy.max_retries.max(1) {
            if self.is_closed() {
                return;
            }
            let now = self.inner.clock.now();
            let allowed = {
                let mut agents = lock(&self.inner.agents);
                let Some(entry) = agents.get_mut(&agent_id) else {
                    return;
                };
                while entry
                    .restarts
                    .front()
                    .is_some_and(|at| now.duration_since(*at) > strategy.restart_period)
                {
                    entry.restarts.pop_front();
                }
                let allowed = (entry.restarts.len() as u32) < strategy.max_restarts;
                if allowed {
                    entry.restarts.push_back(now);
                    entry.status.recovery_attempts += 1;
                }
                allowed
            };
            if !allowed {
                let reason = format!(
                    "restart intensity exceeded: {} restarts within {:?}",
                    strategy.max_restarts, strategy.restart_period
                );
                self.give_up(&agent_id, &reason).await;
                return;
            }
            self.inner
                .counters
                .recovery_attempts
                .fetch_add(1, Ordering::Relaxed);
            self.transition(&agent_id, HealthState::Recovering, "recovery started")
                .await;
            let limit = strategy.timeout.min(self.inner.config.restoration_timeout);
            let outcome = tokio::time::timeout(limit, self.restore(&agent_id, &strategy)).await;
            match outcome {
                Ok(Ok(state)) => {
                    let now = self.inner.clock.now();
                    if let Some(entry) = lock(&self.inner.agents).get_mut(&agent_id) {
                        entry.generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
                        entry.status.missed_beats = 0;
                        entry.status.last_heartbeat = Some(now);
                        entry.status.phase = AgentPhase::Idle;
                        entry.progress_at = now;
                        entry.heartbeat_sent_at = None;
                        entry.probed_at = Some(now);
                        entry.failures = 0;
                    }
                    self.inner
                        .counters
                        .recovery_successes
                        .fetch_add(1, Ordering::Relaxed);
                    let reason = if state == HealthState::Degraded {
                        "recovered, but over half of the missed events failed to replay"
                    } else {
                        "recovered"
                    };
                    self.transition(&agent_id, state, reason).await;
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%agent_id, attempt, %error, "recovery attempt failed");
                    if let Some(entry) = lock(&self.inner.agents).get_mut(&agent_id) {
                        entry.status.last_error = Some(error);
                    }
                }
                Err(_) => {
                    tracing::warn!(%agent_id, attempt, ?limit, "recovery attempt timed out");
                }
            }
            tokio::time::sleep(backoff.delay(attempt - 1)).await;
        }
        let reason = format!("{} recovery attempts failed", strategy.max_retries);
        self.give_up(&agent_id, &reason).await;
    }

    /// Recovery is over for `agent_id`: `failed`, with a critical alert.
    async fn give_up(&self, agent_id: &AgentId, reason: &str) {
        self.transition(agent_id, HealthState::Failed, reason).await;
        self.alert(
            AlertSeverity::Critical,
            agent_id,
            format!("agent {agent_id} failed: {reason}"),
        )
        .await;
    }

    /// One attempt: the saved state, then restart or a replacement, then
    /// the missed events. `Degraded` if over half of those failed.
    pub(super) async fn restore(
        &self,
        agent_id: &AgentId,
        strategy: &RecoveryStrategy,
    ) -> std::result::Result<HealthState, String> {
        let state = self
            .load_state(agent_id)
            .await
            .map_err(|error| format!("loading the saved state: {error}"))?;
        let (agent, factory) = {
            let agents = lock(&self.inner.agents);
            let entry = agents.get(agent_id).ok_or("unregistered")?;
            (Arc::clone(&entry.agent), entry.factory.clone())
        };
        let down_since = lock(&self.inner.agents)
            .get(agent_id)
            .and_then(|entry| entry.status.last_heartbeat)
            .unwrap_or_else(|| self.inner.clock.now());
        match (strategy.kind, factory) {
            (RecoveryKind::Replace, Some(factory)) => {
                let backup = factory
                    .build(agent_id, state)
                    .await
                    .map_err(|error| format!("building the replacement: {error}"))?;
                if let Some(entry) = lock(&self.inner.agents).get_mut(agent_id) {
                    entry.agent = backup;
                }
            }
            _ => agent
                .restart(state)
                .await
                .map_err(|error| format!("restarting: {error}"))?,
        }
        let Some(replayer) = &self.inner.replayer else {
            return Ok(HealthState::Active);
        };
        let counts = replayer
            .replay_missed(agent_id, down_since)
            .await
            .map_err(|error| format!("replaying missed events: {error}"))?;
        let total = counts.delivered.max(counts.failed);
        Ok(if total > 0 && counts.failed * 2 > total {
            HealthState::Degraded
        } else {
            HealthState::Active
        })
    }
}

/// A detected failure.
pub(super) struct Failure {
    pub(super) agent_id: AgentId,
    pub(super) reason: String,
    /// `false` when the agent stopped normally.
    pub(super) abnormal: bool,
}
