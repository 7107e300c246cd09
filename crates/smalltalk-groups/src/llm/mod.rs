//! An OpenAI-compatible chat-completions client, built on reqwest with
//! rustls (no system TLS library).
//!
//! - [`LlmConfig`]: base URL, model and API key (from
//!   `SMALLTALK_LLM_URL`, `SMALLTALK_LLM_MODEL`, `SMALLTALK_LLM_API_KEY`
//!   with [`LlmConfig::from_env`]), timeouts, retries, the breaker.
//! - [`LlmClient::chat`] and [`LlmClient::chat_stream`] (server-sent
//!   events; text deltas go to a callback as they arrive).
//! - Tool definitions and tool calls pass through [`ChatRequest`] and
//!   [`ChatResponse`]; token usage is summed in [`LlmClient::stats`] and
//!   the `smalltalk_llm_tokens_total{kind}` counter.

mod breaker;
mod client;
mod config;
mod types;

pub use breaker::{BreakerConfig, BreakerState};
pub use client::{DeltaSink, Error, LlmClient, LlmStats};
pub use config::{ApiKey, DEFAULT_MODEL, ENV_API_KEY, ENV_MODEL, ENV_URL, LlmConfig};
pub use types::{
    ChatMessage, ChatRequest, ChatResponse, ChatRole, Choice, FunctionCall, FunctionDefinition,
    ResponseFormat, Tool, ToolCall, Usage,
};
