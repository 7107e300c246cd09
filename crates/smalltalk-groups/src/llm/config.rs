//! The LLM client's configuration.

use std::fmt;
use std::time::Duration;

use smalltalk_types::Backoff;

use super::BreakerConfig;

/// The environment variable holding the endpoint's base URL.
pub const ENV_URL: &str = "SMALLTALK_LLM_URL";
/// The environment variable holding the model's name.
pub const ENV_MODEL: &str = "SMALLTALK_LLM_MODEL";
/// The environment variable holding the API key.
pub const ENV_API_KEY: &str = "SMALLTALK_LLM_API_KEY";
/// The model used when [`ENV_MODEL`] is unset.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// An API key: sent as a bearer token, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where the OpenAI-compatible endpoint is and how calls to it behave.
///
/// Local servers work through the base URL: llama.cpp's `llama-server`
/// (`http://127.0.0.1:8080/v1`), vLLM (`http://127.0.0.1:8000/v1`) and
/// Ollama's OpenAI API (`http://127.0.0.1:11434/v1`); the client posts to
/// `<base_url>/chat/completions`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// The API's base URL, for example `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model asked for when a request names none.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<ApiKey>,
    /// The longest a call may take, retries excluded: from sending the
    /// request to the last byte of the answer (streamed or not). Default
    /// 120 s.
    pub timeout: Duration,
    /// The longest a call may take in all, its retries and the waits
    /// between them included. Default 300 s.
    pub deadline: Duration,
    /// The largest answer read: a bigger one (or a stream that grows past
    /// it) fails the call with [`Error::Decode`](super::Error::Decode).
    /// Default 16 MiB.
    pub max_response_bytes: usize,
    /// The longest a connection may take to open. Default 5 s.
    pub connect_timeout: Duration,
    /// The longest a streamed answer may go without a chunk. Default 30 s.
    pub idle_timeout: Duration,
    /// Retries after a 429, a 5xx or a connection failure (not after a
    /// timeout, nor once a streamed answer has started). Default 3.
    pub max_retries: u32,
    /// The delay between retries when the server sends no `Retry-After`.
    /// Default 250 ms doubling to 8 s.
    pub backoff: Backoff,
    /// The longest `Retry-After` honoured; a server asking for more fails
    /// the call at once with [`Error::RateLimited`](super::Error::RateLimited).
    /// Default 60 s.
    pub max_retry_after: Duration,
    /// The circuit breaker around the endpoint.
    pub breaker: BreakerConfig,
    /// Whether streamed requests ask for usage in the last chunk
    /// (`stream_options.include_usage`). Default `true`.
    pub stream_usage: bool,
}

impl LlmConfig {
    /// The defaults for the endpoint at `base_url` and `model`.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            deadline: Duration::from_secs(300),
            max_response_bytes: 16 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_retries: 3,
            backoff: Backoff::new(Duration::from_millis(250), 2.0, Duration::from_secs(8)),
            max_retry_after: Duration::from_secs(60),
            breaker: BreakerConfig::default(),
            stream_usage: true,
        }
    }

    /// The configuration in [`ENV_URL`], [`ENV_MODEL`] (default
    /// [`DEFAULT_MODEL`]) and [`ENV_API_KEY`]; `None` when [`ENV_URL`] is
    /// unset or empty.
    pub fn from_env() -> Option<Self> {
        let url = std::env::var(ENV_URL)
            .ok()
            .filter(|url| !url.trim().is_empty())?;
        let model = std::env::var(ENV_MODEL)
            .ok()
            .filter(|model| !model.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_MODEL.into());
        let mut config = Self::new(url.trim(), model.trim());
        config.api_key = std::env::var(ENV_API_KEY)
            .ok()
            .filter(|key| !key.is_empty())
            .map(ApiKey::new);
        Some(config)
    }

    /// The same configuration with an API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), smalltalk_types::Error> {
        let invalid = |field: &'static str, reason: &str| smalltalk_types::Error::InvalidConfig {
            field,
            reason: reason.into(),
        };
        let url = self.base_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "llm.base_url",
                "must be an http:// or https:// URL",
            ));
        }
        reqwest::Url::parse(url).map_err(|error| invalid("llm.base_url", &error.to_string()))?;
        if self.model.trim().is_empty() {
            return Err(invalid("llm.model", "must not be empty"));
        }
        for (field, value) in [
            ("llm.timeout", self.timeout),
            ("llm.deadline", self.deadline),
            ("llm.connect_timeout", self.connect_timeout),
            ("llm.idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(invalid(field, "must be between 1 ms and 1 hour"));
            }
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_response_bytes) {
            return Err(invalid(
                "llm.max_response_bytes",
                "must be between 1 KiB and 1 GiB",
            ));
        }
        if self.max_retries > 20 {
            return Err(invalid("llm.max_retries", "must be at most 20"));
        }
        self.backoff.validate("llm.backoff")?;
        if self.max_retry_after > Duration::from_secs(3600) {
            return Err(invalid("llm.max_retry_after", "must be at most 1 hour"));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(invalid(
                "llm.breaker.failure_threshold",
                "must be at least 1",
            ));
        }
        if self.breaker.open_for < Duration::from_millis(1)
            || self.breaker.open_for > Duration::from_secs(3600)
        {
            return Err(invalid(
                "llm.breaker.open_for",
                "must be between 1 ms and 1 hour",
            ));
        }
        Ok(())
    }

    /// `<base_url>/chat/completions`.
    pub fn endpoint(&self) -> String {
        format!(
            "{}/chat/completions",
            self.base_url.trim().trim_end_matches('/')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let good = LlmConfig::new("http://127.0.0.1:8080/v1/", "m");
        good.validate().unwrap();
        assert_eq!(good.endpoint(), "http://127.0.0.1:8080/v1/chat/completions");
        type Breaker = fn(&mut LlmConfig);
        let cases: [(Breaker, &str); 4] = [
            (|c| c.base_url = "ftp://x".into(), "llm.base_url"),
            (|c| c.model = " ".into(), "llm.model"),
            (|c| c.timeout = Duration::ZERO, "llm.timeout"),
            (
                |c| c.breaker.failure_threshold = 0,
                "llm.breaker.failure_threshold",
            ),
        ];
        for (break_it, field) in cases {
            let mut config = good.clone();
            break_it(&mut config);
            match config.validate() {
                Err(smalltalk_types::Error::InvalidConfig { field: named, .. }) => {
                    assert_eq!(named, field)
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_key_is_never_printed() {
        let config = LlmConfig::new("http://x", "m").with_api_key("sk-secret");
        assert!(!format!("{config:?}").contains("sk-secret"));
        assert_eq!(config.api_key.unwrap().expose(), "sk-secret");
    }
}
