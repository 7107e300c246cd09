//! Detection: sweeps ask the agents that are due, and answers are judged
//! against the agent (generation) that was asked.

use super::*;

impl AgentHealthMonitor {
    /// One pass over every agent: heartbeats and probes that are due, sent
    /// concurrently with timeouts; then detection and, for agents that
    /// failed, their recovery (started on tasks of their own).
    #[tracing::instrument(level = "debug", name = "monitor.sweep", skip_all)]
    pub async fn sweep(&self) {
        if self.is_closed() {
            return;
        }
        let now = self.inner.clock.now();
        let config = &self.inner.config;
        // Sweeps come every `tick`; a timer firing a hair early must not
        // push a heartbeat to the next one (a whole tick late).
        let slack = sweep_tick(config) / 2;
        let due_after =
            |interval: Duration, at: Timestamp| now.duration_since(at) + slack >= interval;
        let due: Vec<Ask> = lock(&self.inner.agents)
            .iter_mut()
            .filter(|(_, entry)| {
                matches!(
                    entry.status.state,
                    HealthState::Active | HealthState::Degraded | HealthState::Disconnected
                )
            })
            .filter_map(|(id, entry)| {
                let beat = entry
                    .heartbeat_sent_at
                    .is_none_or(|at| due_after(config.heartbeat_interval, at));
                let probe = entry.status.state != HealthState::Disconnected
                    && entry
                        .probed_at
                        .is_none_or(|at| due_after(config.probe_interval, at));
                if beat {
                    entry.heartbeat_sent_at = Some(now);
                }
                if probe {
                    entry.probed_at = Some(now);
                }
                (beat || probe).then(|| Ask {
                    agent_id: id.clone(),
                    generation: entry.generation,
                    agent: Arc::clone(&entry.agent),
                    beat,
                    probe,
                })
            })
            .collect();
        let (heartbeat_timeout, probe_timeout) = (config.activity_timeout, config.probe_timeout);
        let mut asking: FuturesUnordered<BoxFuture<'static, Answer>> = due
            .into_iter()
            .map(
                |Ask {
                     agent_id,
                     generation,
                     agent,
                     beat,
                     probe,
                 }| {
                    async move {
                        let heartbeat = if beat {
                            let started = tokio::time::Instant::now();
                            let answer =
                                within(heartbeat_timeout, agent.heartbeat(), "heartbeat").await;
                            Some((answer, started.elapsed()))
                        } else {
                            None
                        };
                        let probe = if probe {
                            Some(within(probe_timeout, agent.probe(), "probe").await)
                        } else {
                            None
                        };
                        Answer {
                            agent_id,
                            generation,
                            heartbeat,
                            probe,
                        }
                    }
                    .boxed()
                },
            )
            .collect();
        // Answers ready at once (nearly all) are judged in this sweep; slow
        // ones on a task of their own, so one hung agent never holds up the
        // sweep, and with it every other agent's detection.
        let mut ready = Vec::new();
        std::future::poll_fn(|cx| {
            while let std::task::Poll::Ready(Some(answer)) = asking.poll_next_unpin(cx) {
                ready.push(answer);
            }
            std::task::Poll::Ready(())
        })
        .await;
        self.apply(ready, now).await;
        if !asking.is_empty() {
            let monitor = self.clone();
            tokio::spawn(async move {
                while let Some(answer) = asking.next().await {
                    let now = monitor.inner.clock.now();
                    monitor.apply(vec![answer], now).await;
                }
            });
        }
        // Silence: no sign of life for `max_missed` intervals, whatever
        // answers are still pending (a hung agent's heartbeat may take its
        // whole timeout to fail). Then phases without progress, also for
        // agents not asked this time.
        let silence = config.silence_limit();
        // The oldest sign of life of those still fine, for the sweep task's
        // next wake-up (one pass for both).
        let mut oldest_fine: Option<Timestamp> = None;
        let stalled: Vec<Failure> = lock(&self.inner.agents)
            .iter()
            .filter(|(_, entry)| entry.watched())
            .filter_map(|(id, entry)| {
                let sign_of_life = entry.sign_of_life();
                let silent = now.duration_since(sign_of_life);
                if silent < silence {
                    oldest_fine =
                        Some(oldest_fine.map_or(sign_of_life, |oldest| oldest.min(sign_of_life)));
                } else {
                    return Some(Failure {
                        agent_id: id.clone(),
                        reason: format!(
                            "no sign of life for {silent:?} ({} heartbeats unanswered)",
                            config.max_missed
                        ),
                        abnormal: true,
                    });
                }
                let deadline = config.deadline(&entry.status.phase)?;
                (now.duration_since(entry.progress_at) > deadline).then(|| Failure {
                    agent_id: id.clone(),
                    reason: format!(
                        "no progress in phase {:?} for over {deadline:?}",
                        entry.status.phase
                    ),
                    abnormal: true,
                })
            })
            .collect();
        *lock(&self.inner.next_silence) = oldest_fine.map(|oldest| oldest.saturating_add(silence));
        for failure in stalled {
            self.fail(failure).await;
        }
        self.check_degradation(now).await;
    }

    /// Judges answers (under one lock) and acts on the verdicts.
    pub(super) async fn apply(&self, answers: Vec<Answer>, now: Timestamp) {
        if answers.is_empty() || self.is_closed() {
            return;
        }
        let verdicts: Vec<Verdict> = {
            let mut agents = lock(&self.inner.agents);
            answers
                .into_iter()
                .map(|answer| self.judge(&mut agents, answer, now))
                .collect()
        };
        for verdict in verdicts {
            match verdict {
                Verdict::Failed(failure) => self.fail(failure).await,
                Verdict::Back(agent_id) => {
                    self.transition(&agent_id, HealthState::Active, "answering again")
                        .await;
                }
                Verdict::Fine => {}
            }
        }
    }

    /// Applies one agent's answers (the registry locked once for all of a
    /// sweep's); says what to act on.
    pub(super) fn judge(
        &self,
        agents: &mut HashMap<AgentId, Entry>,
        answer: Answer,
        now: Timestamp,
    ) -> Verdict {
        let counters = &self.inner.counters;
        let Some(entry) = agents.get_mut(&answer.agent_id) else {
            return Verdict::Fine;
        };
        if entry.generation != answer.generation {
            // Asked of the agent as it was before a restart: counted, not
            // judged against the one there now.
            if let Some((heartbeat, _)) = &answer.heartbeat {
                counters.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                if heartbeat.is_err() {
                    counters.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Verdict::Fine;
        }
        let mut failure = None;
        if let Some((heartbeat, took)) = answer.heartbeat {
            counters.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            match heartbeat {
                Ok(beat) => {
                    counters
                        .heartbeat_micros
                        .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                    if beat.phase != entry.status.phase || beat.progress != entry.status.progress {
                        entry.progress_at = now;
                    }
                    entry.status.phase = beat.phase;
                    entry.status.progress = beat.progress;
                    entry.status.last_heartbeat = Some(now);
                    entry.status.missed_beats = 0;
                    if entry.status.state == HealthState::Disconnected {
                        // Came back by itself (alert-only, or under threshold).
                        entry.failures = 0;
                        return Verdict::Back(answer.agent_id);
                    }
                }
                Err(AgentError::Stopped) => {
                    counters.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                    failure = Some(Failure {
                        agent_id: answer.agent_id.clone(),
                        reason: "the agent stopped".into(),
                        abnormal: false,
                    });
                }
                Err(AgentError::Failed(reason)) => {
                    counters.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                    entry.status.missed_beats += 1;
                    if entry.status.missed_beats >= self.inner.config.max_missed
                        && entry.status.state != HealthState::Disconnected
                    {
                        failure = Some(Failure {
                            agent_id: answer.agent_id.clone(),
                            reason: format!(
                                "missed {} heartbeats ({reason})",
                                entry.status.missed_beats
                            ),
                            abnormal: true,
                        });
                    }
                }
            }
        }
        if failure.is_none() {
            if let Some(Err(error)) = answer.probe {
                failure = Some(Failure {
                    agent_id: answer.agent_id.clone(),
                    reason: format!(
                        "liveness probe failed ({error}): answering heartbeats but not work"
                    ),
                    abnormal: true,
                });
            }
        }
        failure.map_or(Verdict::Fine, Verdict::Failed)
    }
}

/// What a sweep makes of one agent's answers.
pub(super) enum Verdict {
    Fine,
    /// It failed.
    Failed(Failure),
    /// It was disconnected and answers again.
    Back(AgentId),
}

/// `call`'s answer, or a failure after `limit`. Most answers are ready at
/// the first poll: no timer for them (at 10,000 agents that is most of the
/// monitor's cost).
pub(super) async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = std::result::Result<T, AgentError>>,
    what: &str,
) -> std::result::Result<T, AgentError> {
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(answer) = first {
        return answer;
    }
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer,
        Err(_) => Err(AgentError::Failed(format!("{what} timed out"))),
    }
}
