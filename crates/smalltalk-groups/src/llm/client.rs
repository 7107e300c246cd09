//! The chat-completions client: timeouts, retries that honour
//! `Retry-After`, a circuit breaker, streaming, usage accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::json;
use tokio::time::Instant;

use super::breaker::CircuitBreaker;
use super::types::{Assembler, ChatChunk, ChatRequest, ChatResponse, Usage};
use super::{BreakerState, LlmConfig};

/// The most of an error body kept in [`Error::Status`].
const MAX_ERROR_BODY: usize = 512;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is out of range; nothing was sent.
    #[error("invalid LLM configuration")]
    Config(#[source] smalltalk_types::Error),
    /// The call took longer than its timeout.
    #[error("the LLM call timed out after {after:?}")]
    Timeout {
        /// The limit that passed.
        after: Duration,
    },
    /// The server kept answering 429; or asked to wait longer than
    /// [`LlmConfig::max_retry_after`].
    #[error("rate limited by the LLM endpoint (retry after {retry_after:?})")]
    RateLimited {
        /// What the server asked for, when it said.
        retry_after: Option<Duration>,
    },
    /// The server answered with an error status (after the retries, for a
    /// 5xx).
    #[error("the LLM endpoint answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body. Not in the message: an endpoint's error
        /// body can echo credentials (a masked API key), and the message
        /// reaches logs and HTTP answers.
        body: String,
    },
    /// The circuit breaker is open: the endpoint failed repeatedly, and
    /// calls are refused until it is probed again.
    #[error("the LLM endpoint's circuit breaker is open (retry in {retry_in:?})")]
    CircuitOpen {
        /// Until the next probe.
        retry_in: Duration,
    },
    /// The connection failed or broke.
    #[error("could not reach the LLM endpoint")]
    Transport(#[source] reqwest::Error),
    /// The answer was not a chat completion.
    #[error("the LLM endpoint's answer could not be read: {reason}")]
    Decode {
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// Whether a later call might succeed (a timeout, a rate limit, a 5xx,
    /// an open breaker, a connection failure); a 4xx or an unreadable
    /// answer will not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::RateLimited { .. }
            | Error::CircuitOpen { .. }
            | Error::Transport(_) => true,
            Error::Status { status, .. } => *status >= 500,
            Error::Config(_) | Error::Decode { .. } => false,
        }
    }
}

/// What a client has done since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LlmStats {
    /// Calls made (each counted once, whatever its retries).
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Requests sent again after a 429, a 5xx or a connection failure.
    pub retries: u64,
    /// Calls refused by the open breaker.
    pub rejected: u64,
    /// Tokens used over every call that reported usage.
    pub usage: Usage,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    total_tokens: AtomicU64,
}

/// An OpenAI-compatible chat-completions client. Cheap to clone: clones
/// share the connection pool, the breaker and the counters.
///
/// Every call has a timeout; 429s and 5xx answers are retried with
/// backoff, waiting what `Retry-After` says when the server says; after
/// [`BreakerConfig::failure_threshold`](super::BreakerConfig) consecutive
/// failed calls the breaker opens and calls fail at once with
/// [`Error::CircuitOpen`].
#[derive(Debug, Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    config: Arc<LlmConfig>,
    endpoint: Arc<str>,
    breaker: Arc<CircuitBreaker>,
    counters: Arc<Counters>,
}

/// Where a streamed answer's text goes as it arrives.
pub type DeltaSink<'a> = &'a mut (dyn FnMut(&str) + Send);

impl LlmClient {
    /// A client for `config` (validated here).
    pub fn new(config: LlmConfig) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(Error::Transport)?;
        Ok(Self {
            http,
            endpoint: config.endpoint().into(),
            breaker: Arc::new(CircuitBreaker::new(config.breaker)),
            config: Arc::new(config),
            counters: Arc::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Where the breaker stands.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Calls, failures, retries and tokens so far.
    pub fn stats(&self) -> LlmStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        LlmStats {
            calls: load(&counters.calls),
            failures: load(&counters.failures),
            retries: load(&counters.retries),
            rejected: load(&counters.rejected),
            usage: Usage {
                prompt_tokens: load(&counters.prompt_tokens),
                completion_tokens: load(&counters.completion_tokens),
                total_tokens: load(&counters.total_tokens),
            },
        }
    }

    /// Sends `request` and waits for the whole answer.
    #[tracing::instrument(level = "debug", name = "llm.chat", skip_all, fields(model), err)]
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, Error> {
        self.call(request, None).await
    }

    /// Sends `request` with `stream: true`; `on_delta` receives the text as
    /// it arrives, and the assembled answer is returned. A request is sent
    /// again after a 429 or a 5xx only before any text arrived.
    #[tracing::instrument(
        level = "debug",
        name = "llm.chat_stream",
        skip_all,
        fields(model),
        err
    )]
    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
        on_delta: DeltaSink<'_>,
    ) -> Result<ChatResponse, Error> {
        self.call(request, Some(on_delta)).await
    }

    async fn call(
        &self,
        request: &ChatRequest,
        mut on_delta: Option<DeltaSink<'_>>,
    ) -> Result<ChatResponse, Error> {
        let mut body = request.clone();
        if body.model.is_empty() {
            body.model.clone_from(&self.config.model);
        }
        tracing::Span::current().record("model", body.model.as_str());
        body.stream = on_delta.is_some();
        if body.stream && self.config.stream_usage && body.stream_options.is_none() {
            body.stream_options = Some(json!({"include_usage": true}));
        }
        if !body.stream {
            body.stream_options = None;
        }
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let probing = match self.breaker.admit() {
            Ok(probing) => probing,
            Err(retry_in) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("smalltalk_llm_calls_total", "outcome" => "rejected")
                    .increment(1);
                return Err(Error::CircuitOpen { retry_in });
            }
        };
        let started = Instant::now();
        // A cancelled probe (its future dropped) gives the probe back; any
        // other cancelled call leaves the breaker alone.
        let mut probe = ProbeGuard {
            breaker: &self.breaker,
            settled: !probing,
        };
        let outcome = self.with_retries(&body, &mut on_delta).await;
        probe.settled = true;
        metrics::histogram!("smalltalk_llm_call_seconds").record(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(response) => {
                self.breaker.succeeded();
                metrics::counter!("smalltalk_llm_calls_total", "outcome" => "ok").increment(1);
                if let Some(usage) = response.usage {
                    self.record_usage(usage);
                }
            }
            Err(error) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("smalltalk_llm_calls_total", "outcome" => "error").increment(1);
                // A 4xx says nothing about the endpoint's health; an
                // unreadable answer does.
                if error.is_transient() || matches!(error, Error::Decode { .. }) {
                    if self.breaker.failed() {
                        tracing::warn!(endpoint = %self.endpoint, "LLM circuit breaker opened: {error}");
                    }
                } else {
                    self.breaker.succeeded();
                }
            }
        }
        outcome
    }

    fn record_usage(&self, usage: Usage) {
        let counters = &self.counters;
        counters
            .prompt_tokens
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        counters
            .completion_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
        counters
            .total_tokens
            .fetch_add(usage.total(), Ordering::Relaxed);
        metrics::counter!("smalltalk_llm_tokens_total", "kind" => "prompt")
            .increment(usage.prompt_tokens);
        metrics::counter!("smalltalk_llm_tokens_total", "kind" => "completion")
            .increment(usage.completion_tokens);
    }

    async fn with_retries(
        &self,
        body: &ChatRequest,
        on_delta: &mut Option<DeltaSink<'_>>,
    ) -> Result<ChatResponse, Error> {
        let mut attempt = 0;
        let deadline = Instant::now() + self.config.deadline;
        loop {
            let mut streamed_any = false;
            // Each attempt has its timeout, cut short by the call's deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            let (limit, after) = if left < self.config.timeout {
                (left, self.config.deadline)
            } else {
                (self.config.timeout, self.config.timeout)
            };
            let outcome =
                match tokio::time::timeout(limit, self.once(body, on_delta, &mut streamed_any))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Attempt::Final(Error::Timeout { after })),
                };
            let (error, wait) = match outcome {
                Ok(response) => return Ok(response),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Retry { error, wait }) => (error, wait),
            };
            if streamed_any || attempt >= self.config.max_retries {
                return Err(error);
            }
            let delay = match wait {
                Some(wait) if wait > self.config.max_retry_after => {
                    return Err(Error::RateLimited {
                        retry_after: Some(wait),
                    });
                }
                Some(wait) => wait,
                None => self.config.backoff.delay(attempt),
            };
            if Instant::now() + delay >= deadline {
                // No time left for another attempt: the last error stands.
                return Err(error);
            }
            tracing::debug!(attempt, ?delay, "LLM call failed, retrying: {error}");
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    }

    async fn once(
        &self,
        body: &ChatRequest,
        on_delta: &mut Option<DeltaSink<'_>>,
        streamed_any: &mut bool,
    ) -> Result<ChatResponse, Attempt> {
        let mut builder = self.http.post(&*self.endpoint).json(body);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let response = builder.send().await.map_err(|error| {
            if error.is_connect() || error.is_request() {
                Attempt::Retry {
                    error: Error::Transport(error),
                    wait: None,
                }
            } else {
                Attempt::Final(Error::Transport(error))
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            // The start of the body is enough to say what went wrong.
            let text = match read_capped(response, MAX_ERROR_BODY * 4).await {
                Ok(Ok(bytes) | Err(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(_) => String::new(),
            };
            let body = truncate(&text);
            return Err(match status {
                StatusCode::TOO_MANY_REQUESTS => Attempt::Retry {
                    error: Error::RateLimited { retry_after },
                    wait: retry_after,
                },
                status if status.is_server_error() => Attempt::Retry {
                    error: Error::Status {
                        status: status.as_u16(),
                        body,
                    },
                    wait: retry_after,
                },
                status => Attempt::Final(Error::Status {
                    status: status.as_u16(),
                    body,
                }),
            });
        }
        match on_delta {
            None => {
                let cap = self.config.max_response_bytes;
                let bytes = read_capped(response, cap)
                    .await
                    .map_err(|error| Attempt::Retry {
                        error: Error::Transport(error),
                        wait: None,
                    })?
                    .map_err(|_| {
                        Attempt::Final(Error::Decode {
                            reason: format!("the answer is larger than {cap} bytes"),
                        })
                    })?;
                serde_json::from_slice::<ChatResponse>(&bytes).map_err(|error| {
                    Attempt::Final(Error::Decode {
                        reason: format!(
                            "{error} in {}",
                            truncate(&String::from_utf8_lossy(&bytes))
                        ),
                    })
                })
            }
            Some(on_delta) => self.read_stream(response, on_delta, streamed_any).await,
        }
    }

    async fn read_stream(
        &self,
        response: reqwest::Response,
        on_delta: &mut DeltaSink<'_>,
        streamed_any: &mut bool,
    ) -> Result<ChatResponse, Attempt> {
        // The cap is counted on the bytes as they arrive, so an event that
        // never ends (one endless `data:` line) is cut at the cap too.
        let cap = self.config.max_response_bytes;
        let mut read = 0usize;
        let mut events = response
            .bytes_stream()
            .map(move |chunk| {
                let chunk = chunk.map_err(StreamError::Http)?;
                read = read.saturating_add(chunk.len());
                if read > cap {
                    Err(StreamError::TooLarge)
                } else {
                    Ok(chunk)
                }
            })
            .eventsource();
        let mut assembler = Assembler::default();
        loop {
            let next = tokio::time::timeout(self.config.idle_timeout, events.next())
                .await
                .map_err(|_| {
                    Attempt::Final(Error::Timeout {
                        after: self.config.idle_timeout,
                    })
                })?;
            let event = match next {
                // The stream ended without `[DONE]`: keep what came (some
                // servers omit it) if it was anything.
                None if *streamed_any => return Ok(assembler.finish()),
                None => {
                    return Err(Attempt::Final(Error::Decode {
                        reason: "the stream ended before any chunk".into(),
                    }));
                }
                Some(Err(EventStreamError::Transport(StreamError::TooLarge))) => {
                    return Err(Attempt::Final(Error::Decode {
                        reason: format!("the streamed answer grew past {cap} bytes"),
                    }));
                }
                Some(Err(error)) => {
                    return Err(Attempt::Final(Error::Decode {
                        reason: format!("broken event stream: {error}"),
                    }));
                }
                Some(Ok(event)) => event,
            };
            let data = event.data.trim();
            if data == "[DONE]" {
                return Ok(assembler.finish());
            }
            if data.is_empty() {
                continue;
            }
            let chunk: ChatChunk = serde_json::from_str(data).map_err(|error| {
                Attempt::Final(Error::Decode {
                    reason: format!("{error} in chunk {}", truncate(data)),
                })
            })?;
            *streamed_any = true;
            let delta = assembler
                .push(chunk)
                .map_err(|reason| Attempt::Final(Error::Decode { reason }))?;
            if !delta.is_empty() {
                on_delta(&delta);
            }
        }
    }
}

/// Why the bytes of a streamed answer stopped.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Http(reqwest::Error),
    #[error("the answer is too large")]
    TooLarge,
}

/// How one attempt failed.
enum Attempt {
    /// Worth sending again, after `wait` if the server said.
    Retry {
        error: Error,
        wait: Option<Duration>,
    },
    /// Not worth sending again.
    Final(Error),
}

struct ProbeGuard<'a> {
    breaker: &'a CircuitBreaker,
    settled: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.abandoned();
        }
    }
}

/// The body of `response`, up to `cap` bytes: `Err` holding the first
/// `cap` bytes when it is longer (the rest is not read).
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Result<Vec<u8>, Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            body.extend_from_slice(&chunk[..cap - body.len()]);
            return Ok(Err(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

/// `Retry-After` as seconds (integer or decimal) or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_ERROR_BODY {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a past date");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn error_bodies_are_cut_on_a_char_boundary() {
        let long = "é".repeat(600);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_ERROR_BODY + 3);
        assert!(cut.ends_with("..."));
    }
}
