//! Agents: what speaks in a turn. [`Agent`] is the trait; [`LlmAgent`]
//! answers through an OpenAI-compatible endpoint; [`ScriptedAgent`] answers
//! from a script, for demos and tests.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use smalltalk_types::{AgentId, ConversationId, Message, Role};
use tokio::sync::mpsc;

use crate::Participant;
use crate::llm::{self, ChatMessage, ChatRequest, LlmClient, Tool, ToolCall, Usage};

/// What an agent is asked in its turn: its own view of the conversation
/// (see [`HistoryView`](crate::HistoryView)), the group's topic and shared
/// context, and a way to stream its answer as it is written.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    /// The group.
    pub group_id: ConversationId,
    /// The round (from 1).
    pub round: u64,
    /// The turn within the round (from 1).
    pub turn: u64,
    /// Who is asked: this agent, with its role and description.
    pub speaker: Participant,
    /// Everyone in the group, the speaker included.
    pub participants: Vec<Participant>,
    /// The messages this agent sees, oldest first.
    pub history: Vec<Message>,
    /// A summary of what came before `history`, when the agent's view
    /// summarizes.
    pub summary: Option<String>,
    /// The group's current topic.
    pub topic: Option<String>,
    /// The group's shared context.
    pub shared_context: Map<String, Value>,
    pub(crate) deltas: Option<mpsc::UnboundedSender<String>>,
}

impl AgentRequest {
    /// A request outside any group (for calling an agent directly, in
    /// tests or tools).
    pub fn standalone(speaker: Participant, history: Vec<Message>) -> Self {
        Self {
            group_id: ConversationId::new(),
            round: 1,
            turn: 1,
            participants: vec![speaker.clone()],
            speaker,
            history,
            summary: None,
            topic: None,
            shared_context: Map::new(),
            deltas: None,
        }
    }

    /// Streams part of the answer into the turn's events
    /// ([`GroupEvent::Delta`](crate::GroupEvent::Delta)). The answer
    /// returned is what is stored; deltas are for watchers.
    pub fn emit_delta(&self, text: &str) {
        if let Some(deltas) = &self.deltas {
            let _ = deltas.send(text.to_owned());
        }
    }
}

/// An agent's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReply {
    /// The text, stored as the turn's message.
    pub content: String,
    /// Tokens used, counted toward [`Termination::TokenBudget`](crate::Termination::TokenBudget).
    pub usage: Option<Usage>,
    /// Tool calls the model asked for, kept in the message's metadata
    /// (`toolCalls`).
    pub tool_calls: Vec<ToolCall>,
    /// An RFC 7396 merge patch applied to the group's shared context when
    /// the turn commits (atomically with its message).
    pub context_patch: Option<Value>,
    /// Stored in the message's metadata.
    pub metadata: Map<String, Value>,
}

impl AgentReply {
    /// A reply of `content` alone.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            ..Self::default()
        }
    }
}

/// Why an agent could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The LLM call failed.
    #[error("LLM call failed")]
    Llm(#[from] llm::Error),
    /// The agent failed for its own reason.
    #[error("{0}")]
    Failed(String),
}

impl AgentError {
    /// An error with `reason`.
    pub fn failed(reason: impl Into<String>) -> Self {
        AgentError::Failed(reason.into())
    }
}

/// Something that speaks in a group: it answers with its own view of the
/// conversation.
///
/// Cancellation is Rust's: the manager drops the future of an answer it
/// no longer wants (the turn's timeout passed, the round was stopped), so
/// an implementation must leave nothing half-done when dropped at an
/// `.await`. A turn's effects on the group (its message, its context
/// patch) are applied by the manager only once the answer is complete.
#[async_trait]
pub trait Agent: Send + Sync + fmt::Debug + 'static {
    /// The agent's id, as the group's participants name it.
    fn id(&self) -> &AgentId;

    /// Answers `request`.
    async fn respond(&self, request: AgentRequest) -> Result<AgentReply, AgentError>;
}

/// An agent answering through an OpenAI-compatible chat-completions
/// endpoint ([`LlmClient`]).
///
/// Its prompt is its system prompt, then who it is in the group (role,
/// description, the other participants, the topic, the shared context),
/// then its view of the conversation: its own messages as `assistant`,
/// everyone else's as `user` prefixed with the author (`[writer] ...`).
/// Answers are streamed, so the turn's events carry the text as it is
/// written.
#[derive(Debug, Clone)]
pub struct LlmAgent {
    id: AgentId,
    client: LlmClient,
    system_prompt: String,
    model: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    tools: Vec<Tool>,
    stream: bool,
}

impl LlmAgent {
    /// An agent `id` answering through `client`.
    pub fn new(id: AgentId, client: LlmClient) -> Self {
        Self {
            id,
            client,
            system_prompt: String::new(),
            model: None,
            temperature: None,
            max_tokens: None,
            tools: Vec::new(),
            stream: true,
        }
    }

    /// Its system prompt.
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = prompt.into();
        self
    }

    /// A model other than the client's.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sampling temperature.
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// The longest answer, in tokens.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Tools the model may call; its calls come back in
    /// [`AgentReply::tool_calls`].
    pub fn tools(mut self, tools: Vec<Tool>) -> Self {
        self.tools = tools;
        self
    }

    /// Whether answers are streamed (default `true`).
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// The chat request this agent sends for `request`.
    pub fn chat_request(&self, request: &AgentRequest) -> ChatRequest {
        let mut messages = Vec::with_capacity(request.history.len() + 2);
        messages.push(ChatMessage::system(self.instructions(request)));
        if let Some(summary) = &request.summary {
            messages.push(ChatMessage::system(format!(
                "Summary of the conversation so far:\n{summary}"
            )));
        }
        for message in &request.history {
            messages.push(match (&message.agent_id, message.role) {
                (Some(author), _) if *author == self.id => {
                    ChatMessage::assistant(message.content.clone())
                }
                (Some(author), _) => ChatMessage::user(format!("[{author}] {}", message.content))
                    .with_name(author.as_str()),
                (None, Role::System) => ChatMessage::system(message.content.clone()),
                (None, _) => ChatMessage::user(format!("[user] {}", message.content)),
            });
        }
        ChatRequest {
            model: self.model.clone().unwrap_or_default(),
            messages,
            tools: self.tools.clone(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            ..ChatRequest::default()
        }
    }

    fn instructions(&self, request: &AgentRequest) -> String {
        use std::fmt::Write;
        let speaker = &request.speaker;
        let mut text = self.system_prompt.clone();
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        let _ = write!(
            text,
            "You are {} ({}) in a group conversation. {}",
            speaker.agent_id, speaker.role, speaker.description
        );
        let others: Vec<String> = request
            .participants
            .iter()
            .filter(|other| other.agent_id != speaker.agent_id)
            .map(|other| format!("{} ({})", other.agent_id, other.role))
            .collect();
        if !others.is_empty() {
            let _ = write!(text, "\nThe others: {}.", others.join(", "));
        }
        if let Some(topic) = &request.topic {
            let _ = write!(text, "\nThe current topic: {topic}.");
        }
        if !request.shared_context.is_empty() {
            let _ = write!(
                text,
                "\nShared context: {}",
                Value::Object(request.shared_context.clone())
            );
        }
        text.push_str("\nAnswer as yourself only, without a name prefix.");
        text
    }
}

#[async_trait]
impl Agent for LlmAgent {
    fn id(&self) -> &AgentId {
        &self.id
    }

    async fn respond(&self, request: AgentRequest) -> Result<AgentReply, AgentError> {
        let chat = self.chat_request(&request);
        let response = if self.stream {
            let mut forward = |delta: &str| request.emit_delta(delta);
            self.client.chat_stream(&chat, &mut forward).await?
        } else {
            self.client.chat(&chat).await?
        };
        let content = response.text().trim().to_owned();
        let tool_calls = response.tool_calls().to_vec();
        if content.is_empty() && tool_calls.is_empty() {
            return Err(AgentError::failed("the model answered nothing"));
        }
        Ok(AgentReply {
            content,
            usage: response.usage,
            tool_calls,
            ..AgentReply::default()
        })
    }
}

/// One step of a [`ScriptedAgent`]'s script.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answer this text.
    Reply(String),
    /// Answer this text, reporting these tokens used.
    ReplyWithUsage(String, u64),
    /// Answer this text and merge this patch into the shared context.
    ReplyWithPatch(String, Value),
    /// Fail with this reason.
    Fail(String),
    /// Wait, then take the step.
    Delay(Duration, Box<Step>),
    /// Never answer (until cancelled).
    Hang,
}

type Responder = dyn Fn(&AgentRequest) -> String + Send + Sync;

/// An agent that answers from a script: **for demos and tests**, not a
/// model. It takes its steps in order, then answers with its responder
/// (by default `"<id>: turn <t> of round <r>"`). Its answers are streamed
/// word by word as deltas, like a model's.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use smalltalk_groups::{Agent, AgentRequest, Participant, ScriptedAgent};
///
/// let agent = ScriptedAgent::new("writer".parse().unwrap()).then_reply("a draft").then_fail("tired");
/// let request = AgentRequest::standalone(Participant::new("writer".parse().unwrap(), "writer"), vec![]);
/// assert_eq!(agent.respond(request.clone()).await.unwrap().content, "a draft");
/// assert!(agent.respond(request.clone()).await.is_err());
/// assert_eq!(agent.respond(request).await.unwrap().content, "writer: turn 1 of round 1");
/// assert_eq!(agent.calls(), 3);
/// # }
/// ```
pub struct ScriptedAgent {
    id: AgentId,
    script: Mutex<VecDeque<Step>>,
    responder: Arc<Responder>,
    calls: AtomicU64,
}

impl fmt::Debug for ScriptedAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedAgent")
            .field("id", &self.id)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl ScriptedAgent {
    /// An agent with an empty script.
    pub fn new(id: AgentId) -> Self {
        Self {
            id,
            script: Mutex::new(VecDeque::new()),
            responder: Arc::new(|request: &AgentRequest| {
                format!(
                    "{}: turn {} of round {}",
                    request.speaker.agent_id, request.turn, request.round
                )
            }),
            calls: AtomicU64::new(0),
        }
    }

    /// Adds a step to the script.
    pub fn then(self, step: Step) -> Self {
        self.lock().push_back(step);
        self
    }

    /// Adds a reply.
    pub fn then_reply(self, text: impl Into<String>) -> Self {
        self.then(Step::Reply(text.into()))
    }

    /// Adds a failure.
    pub fn then_fail(self, reason: impl Into<String>) -> Self {
        self.then(Step::Fail(reason.into()))
    }

    /// What it answers once the script is done.
    pub fn responder(
        mut self,
        responder: impl Fn(&AgentRequest) -> String + Send + Sync + 'static,
    ) -> Self {
        self.responder = Arc::new(responder);
        self
    }

    /// How many times it was asked.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Step>> {
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(&self, step: Step, request: &AgentRequest) -> Result<AgentReply, AgentError> {
        let mut step = step;
        loop {
            match step {
                Step::Delay(delay, next) => {
                    tokio::time::sleep(delay).await;
                    step = *next;
                }
                Step::Hang => std::future::pending::<()>().await,
                Step::Fail(reason) => return Err(AgentError::Failed(reason)),
                Step::Reply(text) => return Ok(stream_words(request, AgentReply::text(text))),
                Step::ReplyWithUsage(text, tokens) => {
                    let reply = AgentReply {
                        usage: Some(Usage {
                            prompt_tokens: 0,
                            completion_tokens: tokens,
                            total_tokens: tokens,
                        }),
                        ..AgentReply::text(text)
                    };
                    return Ok(stream_words(request, reply));
                }
                Step::ReplyWithPatch(text, patch) => {
                    let reply = AgentReply {
                        context_patch: Some(patch),
                        ..AgentReply::text(text)
                    };
                    return Ok(stream_words(request, reply));
                }
            }
        }
    }
}

fn stream_words(request: &AgentRequest, reply: AgentReply) -> AgentReply {
    if request.deltas.is_some() {
        for word in reply.content.split_inclusive(' ') {
            request.emit_delta(word);
        }
    }
    reply
}

#[async_trait]
impl Agent for ScriptedAgent {
    fn id(&self) -> &AgentId {
        &self.id
    }

    async fn respond(&self, request: AgentRequest) -> Result<AgentReply, AgentError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let step = self.lock().pop_front();
        match step {
            Some(step) => self.run(step, &request).await,
            None => Ok(stream_words(
                &request,
                AgentReply::text((self.responder)(&request)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smalltalk_types::Timestamp;

    fn participant(id: &str, role: &str) -> Participant {
        Participant::new(AgentId::parse(id).unwrap(), role)
    }

    #[test]
    fn llm_agents_see_themselves_as_assistant_and_others_by_name() {
        let client = LlmClient::new(llm::LlmConfig::new("http://127.0.0.1:1/v1", "m")).unwrap();
        let writer = AgentId::parse("writer").unwrap();
        let agent = LlmAgent::new(writer.clone(), client).system_prompt("Write well.");
        let now = Timestamp::now();
        let mut request = AgentRequest::standalone(
            participant("writer", "writer"),
            vec![
                Message::new(Role::User, "topic?", now),
                Message::new(Role::Assistant, "facts", now)
                    .with_agent(AgentId::parse("researcher").unwrap()),
                Message::new(Role::Assistant, "draft", now).with_agent(writer),
            ],
        );
        request
            .participants
            .push(participant("researcher", "research"));
        request.topic = Some("alignment".into());
        let chat = agent.chat_request(&request);
        let roles: Vec<_> = chat.messages.iter().map(|m| m.role).collect();
        use crate::llm::ChatRole::*;
        assert_eq!(roles, [System, User, User, Assistant]);
        let system = chat.messages[0].content.as_deref().unwrap();
        assert!(system.starts_with("Write well."));
        assert!(system.contains("researcher (research)"));
        assert!(system.contains("alignment"));
        assert_eq!(
            chat.messages[2].content.as_deref(),
            Some("[researcher] facts")
        );
        assert_eq!(chat.messages[3].content.as_deref(), Some("draft"));
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_agents_follow_their_script_and_stream_words() {
        let agent = ScriptedAgent::new(AgentId::parse("a").unwrap())
            .then(Step::Delay(
                Duration::from_secs(5),
                Box::new(Step::ReplyWithUsage("two words".into(), 7)),
            ))
            .responder(|request| format!("round {}", request.round));
        let (sender, mut deltas) = mpsc::unbounded_channel();
        let mut request = AgentRequest::standalone(participant("a", "r"), vec![]);
        request.deltas = Some(sender);
        let reply = agent.respond(request.clone()).await.unwrap();
        assert_eq!(reply.usage.unwrap().total_tokens, 7);
        assert_eq!(deltas.recv().await.unwrap(), "two ");
        assert_eq!(deltas.recv().await.unwrap(), "words");
        assert_eq!(agent.respond(request).await.unwrap().content, "round 1");
    }
}
