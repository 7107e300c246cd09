//! Running a round: selection, asking agents, failure handling, and the
//! commit at every turn boundary.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::{Value, json};
use smalltalk_types::{
    AgentFailureReport, AgentId, Announcement, EventId, EventPriority, Message, Role, Topic,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    GROUP_AGENT_FAILED, GROUP_MESSAGE, GROUP_ROUND_ENDED, GROUP_ROUND_STARTED,
    GROUP_SPEAKER_SELECTED, GroupManager, Live, State, merge_context, read, session_of,
};
use crate::record::RoundState;
use crate::selection::{self, LlmOutcome, SelectionContext, panic_message};
use crate::termination::Progress;
use crate::{
    AfterRetries, AgentError, AgentReply, AgentRequest, Error, GroupEvent, HistoryView,
    Participant, Result, RoundEnd, RoundOutcome, Selection, SelectionSource, Strategy, TurnSummary,
};

/// How a wait ended.
enum Interrupt<T> {
    Done(T),
    Stopped,
    Deadline,
}

/// Runs `work` until it finishes, the round is stopped (the stop
/// generation moves past `generation`) or `deadline` passes; the work is
/// dropped (cancelled) in the last two cases.
async fn interruptible<T>(
    stop: &mut watch::Receiver<u64>,
    generation: u64,
    deadline: Option<Instant>,
    work: impl Future<Output = T>,
) -> Interrupt<T> {
    if *stop.borrow_and_update() != generation {
        return Interrupt::Stopped;
    }
    tokio::pin!(work);
    let sleep = async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            value = &mut work => return Interrupt::Done(value),
            changed = stop.changed(), if watching => match changed {
                Ok(()) if *stop.borrow_and_update() != generation => return Interrupt::Stopped,
                Ok(()) => {}
                Err(_) => watching = false,
            },
            () = &mut sleep => return Interrupt::Deadline,
        }
    }
}

/// How asking the speaker ended.
enum Asked {
    Reply(AgentReply),
    Failed { error: AgentError, attempts: u32 },
    Stopped,
    Deadline,
}

/// The text of an error and its sources, on one line.
pub(super) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl GroupManager {
    /// Starts a round with `message` and runs it.
    pub(super) async fn run_round(
        &self,
        group: &Arc<Live>,
        state: &mut State,
        message: Message,
        trigger: Option<EventId>,
    ) -> Result<RoundOutcome> {
        let id = group.id;
        if let Some(reason) = &state.record.finished {
            return Err(Error::Finished {
                group_id: id,
                reason: reason.clone(),
            });
        }
        if state.record.round.is_some() {
            return Err(Error::RoundInProgress { group_id: id });
        }
        // The group's own budget (rounds, tokens) may be spent already.
        let progress = Progress {
            rounds_completed: state.record.rounds_completed,
            tokens: state.record.tokens,
            ..Progress::default()
        };
        let mut held = Vec::new();
        if state.record.spec.termination.check(&progress, &mut held) {
            let reason = held.join(", ");
            state.record.finished = Some(reason.clone());
            self.commit(group, state, Vec::new()).await?;
            return Err(Error::Finished {
                group_id: id,
                reason,
            });
        }
        let generation = *group.stop.borrow();
        let number = state.record.rounds_completed + 1;
        state.record.round = Some(RoundState {
            number,
            started_at: self.inner.clock.now(),
            turns: 0,
            messages: 1,
            tokens: 0,
        });
        state.record.messages += 1;
        if let Some(event) = trigger {
            state.record.remember_trigger(event);
        }
        self.commit(group, state, vec![message.clone()]).await?;
        self.inner.stats.round_started();
        self.emit(
            group,
            GroupEvent::RoundStarted {
                group_id: id,
                round: number,
                message,
            },
        )
        .await;
        self.run_turns(group, state, generation, Vec::new()).await
    }

    /// Takes turns until the round ends.
    pub(super) async fn run_turns(
        &self,
        group: &Arc<Live>,
        state: &mut State,
        generation: u64,
        mut turns: Vec<TurnSummary>,
    ) -> Result<RoundOutcome> {
        let id = group.id;
        let mut stop = group.stop.subscribe();
        loop {
            let round = state
                .record
                .round
                .clone()
                .ok_or(Error::NoRoundInProgress { group_id: id })?;
            let timeout = state.record.spec.termination.deadline();
            let deadline = timeout.map(|limit| {
                let elapsed = self.inner.clock.now().duration_since(round.started_at);
                Instant::now() + limit.saturating_sub(elapsed)
            });
            let timed_out = || RoundEnd::Condition {
                held: vec![crate::Termination::Timeout(timeout.unwrap_or_default()).to_string()],
            };
            if *stop.borrow_and_update() != generation {
                return self.end_stopped(group, state, &round, turns).await;
            }
            if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                return self.end_round(group, state, timed_out(), turns).await;
            }
            let limit = state.record.spec.throttle.max_turns_per_round;
            if round.turns >= u64::from(limit) {
                return self
                    .end_round(group, state, RoundEnd::TurnLimit { limit }, turns)
                    .await;
            }
            let turn = round.turns + 1;
            let span =
                tracing::info_span!("group.turn", group_id = %id, round = round.number, turn);
            let mut excluded = BTreeSet::new();
            let mut failures: Vec<(AgentId, String)> = Vec::new();
            let (selection, reply) = loop {
                let selected = interruptible(
                    &mut stop,
                    generation,
                    deadline,
                    self.select(group, state, &excluded, turn)
                        .instrument(span.clone()),
                )
                .await;
                let selection = match selected {
                    Interrupt::Done(Some(selection)) => {
                        // Counted here, not in `select`: a dry run
                        // (`select_speaker`) is not a selection.
                        self.inner.stats.selected(&selection);
                        metrics::histogram!("smalltalk_group_selection_seconds", "strategy" => selection.strategy.as_str())
                            .record(selection.latency.as_secs_f64());
                        selection
                    }
                    Interrupt::Done(None) if !failures.is_empty() => {
                        let reason = format!("every eligible agent failed in turn {turn}");
                        self.end_round(group, state, RoundEnd::Failed { reason }, turns)
                            .await?;
                        return Err(Error::AllAgentsFailed { failures });
                    }
                    Interrupt::Done(None) => {
                        let progress = Progress {
                            no_eligible_speaker: true,
                            ..self.progress(state, &round, None)
                        };
                        let mut held = Vec::new();
                        let end = if state.record.spec.termination.check(&progress, &mut held) {
                            RoundEnd::Condition { held }
                        } else {
                            RoundEnd::NoEligibleSpeaker
                        };
                        return self.end_round(group, state, end, turns).await;
                    }
                    Interrupt::Stopped => {
                        return self.end_stopped(group, state, &round, turns).await;
                    }
                    Interrupt::Deadline => {
                        return self.end_round(group, state, timed_out(), turns).await;
                    }
                };
                self.emit(
                    group,
                    GroupEvent::SpeakerSelected {
                        group_id: id,
                        round: round.number,
                        turn,
                        selection: selection.clone(),
                    },
                )
                .await;
                let asked = self
                    .ask(
                        group, state, &selection, &round, turn, &mut stop, generation, deadline,
                    )
                    .instrument(span.clone())
                    .await;
                match asked {
                    Asked::Reply(reply) => break (selection, reply),
                    Asked::Stopped => {
                        return self.end_stopped(group, state, &round, turns).await;
                    }
                    Asked::Deadline => {
                        return self.end_round(group, state, timed_out(), turns).await;
                    }
                    Asked::Failed { error, attempts } => {
                        let agent = selection.agent_id.clone();
                        if attempts == 0 {
                            self.emit(
                                group,
                                GroupEvent::AgentFailed {
                                    group_id: id,
                                    round: round.number,
                                    turn,
                                    agent_id: agent.clone(),
                                    error: describe(&error),
                                    attempts,
                                    gave_up: true,
                                },
                            )
                            .await;
                        }
                        self.report_failure(id, &agent, &error, attempts).await;
                        failures.push((agent.clone(), describe(&error)));
                        match state.record.spec.failure.then {
                            AfterRetries::Skip => {
                                excluded.insert(agent);
                            }
                            AfterRetries::FailTurn => {
                                let reason = format!("agent {agent} failed: {}", describe(&error));
                                self.end_round(group, state, RoundEnd::Failed { reason }, turns)
                                    .await?;
                                return Err(Error::AgentFailed {
                                    agent_id: agent,
                                    attempts,
                                    source: error,
                                });
                            }
                        }
                    }
                }
            };
            let summary = self
                .commit_turn(group, state, &round, turn, selection, reply, failures)
                .instrument(span)
                .await?;
            let ended = summary.1;
            turns.push(summary.0);
            if let Some(end) = ended {
                return Ok(self.finish(group, state, round.number, end, turns).await);
            }
        }
    }

    fn progress<'a>(
        &self,
        state: &State,
        round: &RoundState,
        last_text: Option<&'a str>,
    ) -> Progress<'a> {
        Progress {
            round_messages: round.messages,
            round_turns: round.turns,
            rounds_completed: state.record.rounds_completed,
            tokens: state.record.tokens,
            elapsed: self.inner.clock.now().duration_since(round.started_at),
            last_text,
            stopped: false,
            no_eligible_speaker: false,
        }
    }

    /// Stores the speaker's answer with the record, in one commit; the
    /// round ends in the same commit when its condition holds.
    #[allow(clippy::too_many_arguments)]
    async fn commit_turn(
        &self,
        group: &Arc<Live>,
        state: &mut State,
        round: &RoundState,
        turn: u64,
        selection: Selection,
        reply: AgentReply,
        failures: Vec<(AgentId, String)>,
    ) -> Result<(TurnSummary, Option<RoundEnd>)> {
        let id = group.id;
        let agent = selection.agent_id.clone();
        let now = self.inner.clock.now();
        let tokens = reply.usage.map_or(0, |usage| usage.total());
        let mut message =
            Message::new(Role::Assistant, reply.content, now).with_agent(agent.clone());
        message.metadata = reply.metadata;
        message.metadata.insert("round".into(), json!(round.number));
        message.metadata.insert("turn".into(), json!(turn));
        if let Some(usage) = reply.usage {
            message.metadata.insert("usage".into(), json!(usage));
        }
        if !reply.tool_calls.is_empty() {
            message
                .metadata
                .insert("toolCalls".into(), json!(reply.tool_calls));
        }
        if let Some(patch) = &reply.context_patch {
            merge_context(&mut state.record.shared_context, patch);
        }
        state.record.count_turn(&agent, tokens);
        let current = state.record.round.clone().unwrap_or_else(|| round.clone());
        let progress = self.progress(state, &current, Some(&message.content));
        let mut held = Vec::new();
        let limit = state.record.spec.throttle.max_turns_per_round;
        let end = if state.record.spec.termination.check(&progress, &mut held) {
            Some(RoundEnd::Condition { held })
        } else if current.turns >= u64::from(limit) {
            Some(RoundEnd::TurnLimit { limit })
        } else {
            None
        };
        if let Some(end) = &end {
            state.record.end_round(end.clone(), now);
        }
        let outcome = self.commit(group, state, vec![message.clone()]).await?;
        self.inner.stats.turn();
        // No group label: groups come and go, a series per group would grow
        // without bound.
        metrics::counter!("smalltalk_group_turns_total").increment(1);
        let summary = TurnSummary {
            turn,
            message_id: message.id,
            sequence: outcome.first_sequence,
            failed: failures.into_iter().map(|(agent, _)| agent).collect(),
            selection,
        };
        self.emit(
            group,
            GroupEvent::Message {
                group_id: id,
                round: round.number,
                turn,
                sequence: outcome.first_sequence,
                message,
            },
        )
        .await;
        Ok((summary, end))
    }

    /// Ends a stopped round: [`RoundEnd::Condition`] when the group's
    /// condition holds with the stop counted (`ExternalStop`, alone or in
    /// a composition), [`RoundEnd::Stopped`] otherwise. A stop ends the
    /// round either way.
    async fn end_stopped(
        &self,
        group: &Arc<Live>,
        state: &mut State,
        round: &RoundState,
        turns: Vec<TurnSummary>,
    ) -> Result<RoundOutcome> {
        let progress = Progress {
            stopped: true,
            ..self.progress(state, round, None)
        };
        let mut held = Vec::new();
        let end = if state.record.spec.termination.check(&progress, &mut held) {
            RoundEnd::Condition { held }
        } else {
            RoundEnd::Stopped
        };
        self.end_round(group, state, end, turns).await
    }

    /// Ends the round without a turn, and stores that.
    async fn end_round(
        &self,
        group: &Arc<Live>,
        state: &mut State,
        end: RoundEnd,
        turns: Vec<TurnSummary>,
    ) -> Result<RoundOutcome> {
        let number = state.record.round.as_ref().map_or(0, |round| round.number);
        state.record.end_round(end.clone(), self.inner.clock.now());
        self.commit(group, state, Vec::new()).await?;
        Ok(self.finish(group, state, number, end, turns).await)
    }

    async fn finish(
        &self,
        group: &Arc<Live>,
        state: &State,
        round: u64,
        end: RoundEnd,
        turns: Vec<TurnSummary>,
    ) -> RoundOutcome {
        self.emit(
            group,
            GroupEvent::Terminated {
                group_id: group.id,
                round,
                end: end.clone(),
            },
        )
        .await;
        RoundOutcome {
            group_id: group.id,
            round,
            turns,
            end,
            message_count: state.history.len() as u64,
        }
    }

    /// Asks the speaker, with the group's retries, timeout and stop.
    #[allow(clippy::too_many_arguments)]
    async fn ask(
        &self,
        group: &Live,
        state: &State,
        selection: &Selection,
        round: &RoundState,
        turn: u64,
        stop: &mut watch::Receiver<u64>,
        generation: u64,
        deadline: Option<Instant>,
    ) -> Asked {
        let agent_id = &selection.agent_id;
        let Some(speaker) = state.record.spec.participant(agent_id).cloned() else {
            return Asked::Failed {
                error: AgentError::failed(format!("agent {agent_id} left the group")),
                attempts: 0,
            };
        };
        let agent = match self.speaker(&speaker) {
            Ok(agent) => agent,
            Err(reason) => {
                return Asked::Failed {
                    error: AgentError::failed(reason),
                    attempts: 0,
                };
            }
        };
        let (history, summary) = match self.view(group, state, &speaker).await {
            Ok(view) => view,
            Err(error) => return Asked::Failed { error, attempts: 0 },
        };
        let policy = state.record.spec.failure;
        let mut last = AgentError::failed("not asked");
        for attempt in 0..=policy.retries {
            if attempt > 0 {
                let pause = tokio::time::sleep(policy.backoff.delay(attempt - 1));
                match interruptible(stop, generation, deadline, pause).await {
                    Interrupt::Done(()) => {}
                    Interrupt::Stopped => return Asked::Stopped,
                    Interrupt::Deadline => return Asked::Deadline,
                }
            }
            let (sender, mut deltas) = mpsc::unbounded_channel();
            let request = AgentRequest {
                group_id: group.id,
                round: round.number,
                turn,
                speaker: speaker.clone(),
                participants: state.record.spec.participants.clone(),
                history: history.clone(),
                summary: summary.clone(),
                topic: state.record.topic.clone(),
                shared_context: state.record.shared_context.clone(),
                deltas: Some(sender),
            };
            let emit_delta = |text: String| {
                group.publish(GroupEvent::Delta {
                    group_id: group.id,
                    round: round.number,
                    turn,
                    agent_id: agent_id.clone(),
                    text,
                });
            };
            let work = async {
                // A panicking agent fails its attempt; it does not take the
                // round (or the caller's task) down with it.
                let answer = async {
                    AssertUnwindSafe(agent.respond(request))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| {
                            Err(AgentError::failed(format!(
                                "the agent panicked: {}",
                                panic_message(panic.as_ref())
                            )))
                        })
                };
                let call = tokio::time::timeout(policy.timeout, answer);
                tokio::pin!(call);
                loop {
                    tokio::select! {
                        biased;
                        Some(text) = deltas.recv() => emit_delta(text),
                        result = &mut call => {
                            while let Ok(text) = deltas.try_recv() {
                                emit_delta(text);
                            }
                            return result;
                        }
                    }
                }
            };
            match interruptible(stop, generation, deadline, work).await {
                Interrupt::Done(Ok(Ok(reply))) => {
                    match self.check_reply(&reply, &state.record.shared_context) {
                        Ok(()) => return Asked::Reply(reply),
                        Err(reason) => last = AgentError::Failed(reason),
                    }
                }
                Interrupt::Done(Ok(Err(error))) => last = error,
                Interrupt::Done(Err(_)) => {
                    last = AgentError::failed(format!("no answer within {:?}", policy.timeout));
                }
                Interrupt::Stopped => return Asked::Stopped,
                Interrupt::Deadline => return Asked::Deadline,
            }
            tracing::warn!(group_id = %group.id, agent_id = %agent_id, attempt = attempt + 1, "agent failed its turn: {}", describe(&last));
            self.emit(
                group,
                GroupEvent::AgentFailed {
                    group_id: group.id,
                    round: round.number,
                    turn,
                    agent_id: agent_id.clone(),
                    error: describe(&last),
                    attempts: attempt + 1,
                    gave_up: attempt == policy.retries,
                },
            )
            .await;
        }
        Asked::Failed {
            error: last,
            attempts: policy.retries + 1,
        }
    }

    fn check_reply(
        &self,
        reply: &AgentReply,
        context: &serde_json::Map<String, Value>,
    ) -> std::result::Result<(), String> {
        if reply.content.trim().is_empty() && reply.tool_calls.is_empty() {
            return Err("the agent answered nothing".into());
        }
        // What is stored: the text, and the tool calls and metadata that
        // go into the message's metadata.
        let limit = self.inner.config.max_message_bytes;
        let size = reply
            .content
            .len()
            .saturating_add(encoded_len(&reply.tool_calls))
            .saturating_add(encoded_len(&reply.metadata));
        if size > limit {
            return Err(format!(
                "the answer (text, tool calls and metadata) is larger than {limit} bytes"
            ));
        }
        if let Some(patch) = &reply.context_patch {
            if !patch.is_object() {
                return Err("a context patch must be a JSON object".into());
            }
        }
        let mut probe = Message::new(Role::Assistant, "", self.inner.clock.now());
        probe.metadata = reply.metadata.clone();
        probe.validate_depth().map_err(|error| error.to_string())?;
        if let Some(patch) = &reply.context_patch {
            smalltalk_types::format::check_depth("context patch", patch)
                .map_err(|error| error.to_string())?;
            let mut merged = context.clone();
            merge_context(&mut merged, patch);
            super::check_context(&merged)?;
        }
        Ok(())
    }

    /// The speaker's view of the history.
    async fn view(
        &self,
        group: &Live,
        state: &State,
        speaker: &Participant,
    ) -> std::result::Result<(Vec<Message>, Option<String>), AgentError> {
        let view = speaker.view.unwrap_or(state.record.spec.view);
        let history = &state.history;
        let Some(keep) = view.keep() else {
            return Ok((history.clone(), None));
        };
        let split = history.len().saturating_sub(keep);
        let recent = history[split..].to_vec();
        if !matches!(view, HistoryView::Summary(_)) || split == 0 {
            return Ok((recent, None));
        }
        let Some(summarizer) = &self.inner.summarizer else {
            return Err(AgentError::failed("a summary view needs a summarizer"));
        };
        let timeout = state.record.spec.failure.timeout;
        let summarize = async {
            AssertUnwindSafe(summarizer.summarize(group.id, &speaker.agent_id, &history[..split]))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(AgentError::failed(format!(
                        "the summarizer panicked: {}",
                        panic_message(panic.as_ref())
                    )))
                })
        };
        let summary = tokio::time::timeout(timeout, summarize)
            .await
            .map_err(|_| {
                AgentError::failed(format!("the summarizer did not answer within {timeout:?}"))
            })??;
        Ok((recent, Some(summary)))
    }

    /// Runs the selection pipeline; `None` when no one may speak.
    pub(super) async fn select(
        &self,
        group: &Live,
        state: &State,
        excluded: &BTreeSet<AgentId>,
        turn: u64,
    ) -> Option<Selection> {
        let started = Instant::now();
        let record = &state.record;
        let recent_from = state
            .history
            .len()
            .saturating_sub(self.inner.config.selection_window);
        let context = SelectionContext {
            group_id: group.id,
            round: record
                .round
                .as_ref()
                .map_or(record.rounds_completed + 1, |round| round.number),
            turn,
            participants: &record.spec.participants,
            last_speaker: record.last_speaker.as_ref(),
            recent: &state.history[recent_from..],
            topic: record.topic.as_deref(),
            shared_context: &record.shared_context,
        };
        let hooks = read(&group.hooks).clone();
        let eligible = selection::eligible(record, &hooks, &context, excluded);
        if eligible.is_empty() {
            return None;
        }
        let strategy = record.spec.strategy;
        let make =
            |participant: &Participant, confidence: f64, reason: String, attempts, source| {
                Selection {
                    agent_id: participant.agent_id.clone(),
                    confidence,
                    reason,
                    latency: started.elapsed(),
                    attempts,
                    strategy,
                    source,
                }
            };
        let participants = &record.spec.participants;
        let last = record.last_speaker.as_ref();
        let after = || last.map_or_else(|| "the start".to_owned(), ToString::to_string);
        let custom = hooks.selector.as_ref().and_then(|selector| {
            let pick = selection::guarded("custom selector", group.id, || selector(&context), None)?;
            let found = eligible.iter().find(|participant| participant.agent_id == pick);
            if found.is_none() {
                tracing::warn!(group_id = %group.id, agent_id = %pick, "the custom selector named an agent that may not speak now; the strategy chooses");
            }
            found.copied()
        });
        let selection = if let Some(participant) = custom {
            make(
                participant,
                1.0,
                "chosen by the custom selector".into(),
                0,
                SelectionSource::Custom,
            )
        } else {
            match strategy {
                Strategy::RoundRobin => {
                    let participant = selection::round_robin(participants, last, &eligible)?;
                    make(
                        participant,
                        1.0,
                        format!("round-robin after {}", after()),
                        0,
                        SelectionSource::Strategy,
                    )
                }
                Strategy::Priority => {
                    let participant = selection::by_priority(&eligible, &record.last_spoke)?;
                    make(
                        participant,
                        1.0,
                        format!(
                            "highest priority ({}) among the eligible, least recent on ties",
                            participant.priority
                        ),
                        0,
                        SelectionSource::Strategy,
                    )
                }
                Strategy::LlmBased => {
                    let limit = self.inner.config.selection_timeout;
                    let outcome = match &self.inner.selector {
                        Some(selector) => {
                            tokio::time::timeout(limit, selector.select(&context, &eligible))
                                .await
                                .unwrap_or_else(|_| LlmOutcome::GaveUp {
                                    attempts: 0,
                                    last_error: format!(
                                        "the selector did not answer within {limit:?}"
                                    ),
                                })
                        }
                        None => LlmOutcome::GaveUp {
                            attempts: 0,
                            last_error: "no LLM selector is configured".into(),
                        },
                    };
                    match outcome {
                        LlmOutcome::Picked { pick, attempts } => {
                            let participant = eligible
                                .iter()
                                .find(|participant| participant.agent_id == pick.agent_id)
                                .copied()?;
                            let reason = if pick.reasoning.is_empty() {
                                "chosen by the LLM".to_owned()
                            } else {
                                pick.reasoning
                            };
                            make(
                                participant,
                                pick.confidence,
                                reason,
                                attempts,
                                SelectionSource::Strategy,
                            )
                        }
                        LlmOutcome::GaveUp {
                            attempts,
                            last_error,
                        } => {
                            let participant =
                                selection::round_robin(participants, last, &eligible)?;
                            make(
                                participant,
                                0.0,
                                format!(
                                    "round-robin fallback after {attempts} LLM attempts: {last_error}"
                                ),
                                attempts,
                                SelectionSource::Fallback,
                            )
                        }
                    }
                }
            }
        };
        Some(selection)
    }

    async fn report_failure(
        &self,
        group_id: smalltalk_types::ConversationId,
        agent: &AgentId,
        error: &AgentError,
        attempts: u32,
    ) {
        self.inner.stats.failure();
        metrics::counter!("smalltalk_group_agent_failures_total").increment(1);
        if let Some(sink) = &self.inner.failures {
            sink.agent_failed(AgentFailureReport {
                agent_id: agent.clone(),
                source: format!("group:{group_id}"),
                error: describe(error),
                attempts,
                counts_toward_degradation: self.inner.config.failures_count_toward_degradation,
                timestamp: self.inner.clock.now(),
            })
            .await;
        }
    }

    /// Sends `event` to the group's subscribers and announces it (ids, not
    /// content) on the event sink.
    pub(super) async fn emit(&self, group: &Live, event: GroupEvent) {
        let announcement = self
            .inner
            .events
            .as_ref()
            .and_then(|_| announcement_of(&event));
        group.publish(event);
        if let (Some(sink), Some((topic, priority, payload))) = (&self.inner.events, announcement) {
            let Ok(topic) = Topic::parse(topic) else {
                return;
            };
            sink.announce(Announcement {
                topic,
                priority,
                session_id: Some(session_of(group.id)),
                conversation_id: Some(group.id),
                payload,
                timestamp: self.inner.clock.now(),
            })
            .await;
        }
    }
}

/// What is announced for an event: ids and counts, never content.
fn announcement_of(event: &GroupEvent) -> Option<(&'static str, EventPriority, Value)> {
    Some(match event {
        GroupEvent::RoundStarted {
            group_id,
            round,
            message,
        } => (
            GROUP_ROUND_STARTED,
            EventPriority::Normal,
            json!({"groupId": group_id, "round": round, "messageId": message.id}),
        ),
        GroupEvent::SpeakerSelected {
            group_id,
            round,
            turn,
            selection,
        } => (
            GROUP_SPEAKER_SELECTED,
            EventPriority::Normal,
            json!({
                "groupId": group_id, "round": round, "turn": turn,
                "agentId": selection.agent_id, "strategy": selection.strategy,
                "source": selection.source, "confidence": selection.confidence,
                "attempts": selection.attempts,
                "latencyUs": u64::try_from(selection.latency.as_micros()).unwrap_or(u64::MAX),
            }),
        ),
        GroupEvent::Message {
            group_id,
            round,
            turn,
            sequence,
            message,
        } => (
            GROUP_MESSAGE,
            EventPriority::Normal,
            json!({
                "groupId": group_id, "round": round, "turn": turn, "sequence": sequence,
                "messageId": message.id, "agentId": message.agent_id,
            }),
        ),
        GroupEvent::AgentFailed {
            group_id,
            round,
            turn,
            agent_id,
            attempts,
            gave_up,
            ..
        } => (
            GROUP_AGENT_FAILED,
            EventPriority::Critical,
            json!({
                "groupId": group_id, "round": round, "turn": turn, "agentId": agent_id,
                "attempts": attempts, "gaveUp": gave_up,
            }),
        ),
        GroupEvent::Terminated {
            group_id,
            round,
            end,
        } => (
            GROUP_ROUND_ENDED,
            EventPriority::Normal,
            json!({"groupId": group_id, "round": round, "end": end}),
        ),
        GroupEvent::Delta { .. } => return None,
    })
}

/// The length of `value` as JSON, counted without building it.
fn encoded_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}
