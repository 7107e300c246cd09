//! The request and response types of the OpenAI chat-completions API, as
//! far as agents need them: messages, tool definitions and calls, usage,
//! and streamed deltas. Unknown fields in answers are ignored, so servers
//! that add their own (llama.cpp's `timings`, vLLM's `prompt_logprobs`)
//! work unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who wrote a [`ChatMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions.
    System,
    /// The user (or, in a group, the other participants).
    User,
    /// The model.
    Assistant,
    /// A tool's output, answering a tool call.
    Tool,
}

/// One message of a chat-completions conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// The text; `None` for an assistant message that only calls tools.
    #[serde(default)]
    pub content: Option<String>,
    /// The author's name, for several users in one conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tools an assistant message calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    fn text(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(content.into()),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::text(ChatRole::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::text(ChatRole::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::text(ChatRole::Assistant, content)
    }

    /// A tool's output for the call `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(tool_call_id.into()),
            ..Self::text(ChatRole::Tool, content)
        }
    }

    /// The same message, attributed to `name`.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDefinition,
}

impl Tool {
    /// A function tool with a JSON Schema for its arguments.
    pub fn function(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
    ) -> Self {
        Self {
            kind: "function".into(),
            function: FunctionDefinition {
                name: name.into(),
                description: Some(description.into()),
                parameters: Some(parameters),
            },
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// A call of a tool, as the model asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, to answer it with a [`ChatRole::Tool`] message.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

/// The function a [`ToolCall`] calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, as the JSON text the model wrote (possibly invalid).
    pub arguments: String,
}

/// Asks for JSON output (`{"type": "json_object"}`), where the server
/// supports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// `json_object` or `text`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A chat-completions request. `model` and `stream` are set by the
/// [`LlmClient`](super::LlmClient) when left empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model; empty means the client's configured model.
    #[serde(default)]
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// `auto`, `none`, `required`, or a named function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The longest answer, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// JSON output, where supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Set by the client: whether the answer is streamed.
    #[serde(default)]
    pub stream: bool,
    /// Set by the client when streaming: asks for usage in the last chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    /// Anything else the server accepts (`top_p`, `seed`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// A request for `messages` on the client's model.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }
}

/// Tokens a call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens read.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens written.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both.
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Every token used: `total_tokens`, or the prompt's and the
    /// completion's when a server leaves the total out (or short).
    pub fn total(&self) -> u64 {
        self.total_tokens
            .max(self.prompt_tokens.saturating_add(self.completion_tokens))
    }

    /// The sum of two usages.
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(other.total_tokens),
        }
    }
}

/// One answer of a [`ChatResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its index.
    #[serde(default)]
    pub index: u32,
    /// The message.
    pub message: ChatMessage,
    /// `stop`, `length`, `tool_calls` ...
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A chat-completions answer (streamed answers are assembled into one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The server's id for the completion.
    #[serde(default)]
    pub id: String,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The answers (one unless `n` was asked for).
    pub choices: Vec<Choice>,
    /// Tokens used, when the server reports them.
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl ChatResponse {
    /// The first answer's text (empty when it only calls tools).
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .and_then(|choice| choice.message.content.as_deref())
            .unwrap_or_default()
    }

    /// The first answer's tool calls.
    pub fn tool_calls(&self) -> &[ToolCall] {
        self.choices
            .first()
            .map_or(&[], |choice| choice.message.tool_calls.as_slice())
    }
}

/// One server-sent chunk of a streamed answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ChatChunk {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) model: String,
    #[serde(default)]
    pub(crate) choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub(crate) usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ChunkChoice {
    #[serde(default)]
    pub(crate) index: u32,
    #[serde(default)]
    pub(crate) delta: ChunkDelta,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct ChunkDelta {
    #[serde(default)]
    pub(crate) content: Option<String>,
    #[serde(default)]
    pub(crate) tool_calls: Vec<ToolCallDelta>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ToolCallDelta {
    #[serde(default)]
    pub(crate) index: usize,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct FunctionDelta {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) arguments: Option<String>,
}

/// The most tool calls one streamed answer may make.
pub(crate) const MAX_TOOL_CALLS: usize = 128;

/// Assembles streamed chunks into one [`ChatResponse`].
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    id: String,
    model: String,
    content: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Assembler {
    /// Folds in one chunk; returns its text delta (empty when none), or
    /// why the chunk cannot be part of an answer.
    pub(crate) fn push(&mut self, chunk: ChatChunk) -> Result<String, String> {
        if self.id.is_empty() {
            self.id = chunk.id;
        }
        if self.model.is_empty() {
            self.model = chunk.model;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let mut delta = String::new();
        for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
            if let Some(text) = choice.delta.content {
                delta.push_str(&text);
            }
            for call in choice.delta.tool_calls {
                // Tool calls arrive in order: an index past the next one
                // (a hostile 4e9) is not a call, and must not allocate.
                if call.index > self.tool_calls.len() || call.index >= MAX_TOOL_CALLS {
                    return Err(format!(
                        "tool call index {} out of order (at most {MAX_TOOL_CALLS} calls, in order)",
                        call.index
                    ));
                }
                if call.index == self.tool_calls.len() {
                    self.tool_calls.push(ToolCall {
                        id: String::new(),
                        kind: function_kind(),
                        function: FunctionCall {
                            name: String::new(),
                            arguments: String::new(),
                        },
                    });
                }
                let slot = &mut self.tool_calls[call.index];
                if let Some(id) = call.id {
                    slot.id = id;
                }
                if let Some(function) = call.function {
                    slot.function
                        .name
                        .push_str(&function.name.unwrap_or_default());
                    slot.function
                        .arguments
                        .push_str(&function.arguments.unwrap_or_default());
                }
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        self.content.push_str(&delta);
        Ok(delta)
    }

    pub(crate) fn finish(self) -> ChatResponse {
        let only_tools = self.content.is_empty() && !self.tool_calls.is_empty();
        ChatResponse {
            id: self.id,
            model: self.model,
            choices: vec![Choice {
                index: 0,
                message: ChatMessage {
                    role: ChatRole::Assistant,
                    content: (!only_tools).then_some(self.content),
                    name: None,
                    tool_calls: self.tool_calls,
                    tool_call_id: None,
                },
                finish_reason: self.finish_reason,
            }],
            usage: self.usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_serialize_as_the_api_expects() {
        let mut request = ChatRequest::new(vec![
            ChatMessage::system("be brief"),
            ChatMessage::user("hi").with_name("alice"),
        ]);
        request.tools.push(Tool::function(
            "lookup",
            "finds things",
            json!({"type": "object"}),
        ));
        request.extra.insert("seed".into(), json!(7));
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json["messages"][1],
            json!({"role": "user", "content": "hi", "name": "alice"})
        );
        assert_eq!(json["tools"][0]["type"], "function");
        assert_eq!(json["seed"], 7);
        assert!(json.get("temperature").is_none());
    }

    #[test]
    fn streamed_chunks_assemble_text_tools_and_usage() {
        let mut assembler = Assembler::default();
        let chunks = [
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1", "function": {"name": "look", "arguments": "{\"q\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "up", "arguments": "1}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        ];
        let deltas: Vec<String> = chunks
            .into_iter()
            .map(|chunk| {
                assembler
                    .push(serde_json::from_value(chunk).unwrap())
                    .unwrap()
            })
            .collect();
        assert_eq!(deltas, ["Hel", "lo", "", "", ""]);
        let response = assembler.finish();
        assert_eq!(response.id, "c1");
        assert_eq!(response.text(), "Hello");
        assert_eq!(response.tool_calls()[0].function.name, "lookup");
        assert_eq!(response.tool_calls()[0].function.arguments, "{\"q\":1}");
        assert_eq!(response.usage.unwrap().total_tokens, 5);
        assert_eq!(
            response.choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );
    }

    #[test]
    fn a_tool_call_index_out_of_order_is_refused_without_allocating() {
        for index in [1_u64, 4_000_000_000] {
            let mut assembler = Assembler::default();
            let chunk =
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index}]}}]});
            let refused = assembler.push(serde_json::from_value(chunk).unwrap());
            assert!(refused.unwrap_err().contains("out of order"), "{index}");
        }
    }
}
