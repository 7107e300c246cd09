//! The server's configuration: defaults, then an optional TOML file, then
//! environment variables (each documented in `docs/configuration.md`).
//! A bad value stops startup with a [`ConfigError`] naming the variable
//! and the allowed range.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use smalltalk::groups::llm::{ApiKey, LlmConfig};
use smalltalk::session::Durability;
use smalltalk::{HealthConfig, SessionConfig};

/// The environment variables read, with the configuration key each sets.
pub const VARIABLES: &[(&str, &str)] = &[
    ("STORAGE_URL", "storage_url"),
    ("SMALLTALK_BIND", "bind"),
    ("SMALLTALK_TOKEN", "token"),
    ("EVENT_RETENTION_HOURS", "event_retention_hours"),
    ("SESSION_EXPIRATION_DAYS", "session_expiration_days"),
    ("MAX_CONCURRENT_SESSIONS", "max_concurrent_sessions"),
    ("HEARTBEAT_INTERVAL_MS", "heartbeat_interval_ms"),
    ("LIVENESS_PROBE_TIMEOUT_MS", "liveness_probe_timeout_ms"),
    ("LOG_FORMAT", "log_format"),
    ("SMALLTALK_LLM_URL", "llm_url"),
    ("SMALLTALK_LLM_MODEL", "llm_model"),
    ("SMALLTALK_LLM_API_KEY", "llm_api_key"),
    ("SMALLTALK_REQUEST_TIMEOUT_MS", "request_timeout_ms"),
    ("SMALLTALK_MAX_BODY_BYTES", "max_body_bytes"),
    ("SMALLTALK_DRAIN_TIMEOUT_MS", "drain_timeout_ms"),
    ("SMALLTALK_SHUTDOWN_DELAY_MS", "shutdown_delay_ms"),
    ("SMALLTALK_SESSION_DURABILITY", "session_durability"),
    ("SMALLTALK_FLUSH_INTERVAL_MS", "flush_interval_ms"),
    ("SMALLTALK_SSE_BUFFER", "sse_buffer"),
    ("SMALLTALK_SSE_STALL_MS", "sse_stall_ms"),
    ("SMALLTALK_MAX_STREAMS", "max_streams"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint"),
    ("OTEL_SERVICE_NAME", "otel_service_name"),
];

/// Variables taken as text exactly as given (never read as numbers or
/// lists): secrets, URLs, names.
const TEXT: &[&str] = &[
    "storage_url",
    "token",
    "llm_url",
    "llm_model",
    "llm_api_key",
    "log_format",
    "session_durability",
    "otlp_endpoint",
    "otel_service_name",
];

/// The default storage: an SQLite file under the working directory.
pub const DEFAULT_STORAGE_URL: &str = "sqlite://./smalltalk-data/smalltalk.db";

/// A secret (the bearer token, an API key): never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// When a session write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionDurability {
    /// In storage before the answer.
    Sync,
    /// Acknowledged from memory, flushed every `flush_interval_ms` and at
    /// shutdown; lost if the process is killed before.
    Async,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the server reads at startup. Field names are the TOML keys;
/// [`VARIABLES`] maps the environment variables onto them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where everything is stored (`sqlite://PATH`, `postgres://...`,
    /// `memory://`). Default [`DEFAULT_STORAGE_URL`].
    pub storage_url: String,
    /// The address to listen on. Default `127.0.0.1:7700` (loopback).
    pub bind: SocketAddr,
    /// The bearer token every request must carry; none by default (then
    /// requests are not authenticated, and a non-loopback bind is refused
    /// without `--insecure`).
    pub token: Option<Secret>,
    /// How long events stay in the log, in hours: 1 to 8,760. Default 24.
    pub event_retention_hours: u64,
    /// How long a new session lives, in days: 1 to 30. Default 7.
    pub session_expiration_days: u64,
    /// The most sessions active on this node: 1 to 1,000,000. Default 100.
    pub max_concurrent_sessions: usize,
    /// How often each agent is asked for a heartbeat, in ms: 10 to
    /// 3,600,000. Default 2,000.
    pub heartbeat_interval_ms: u64,
    /// How long a liveness probe may take, in ms: 10 to 3,600,000. Default
    /// 5,000.
    pub liveness_probe_timeout_ms: u64,
    /// `text` or `json`. Default `text`. (The level comes from `RUST_LOG`,
    /// default `info`.)
    pub log_format: LogFormat,
    /// The OpenAI-compatible endpoint for LLM agents and LLM speaker
    /// selection; none by default.
    pub llm_url: Option<String>,
    /// The model asked for. Default `gpt-4o-mini` when `llm_url` is set.
    pub llm_model: Option<String>,
    /// The endpoint's API key.
    pub llm_api_key: Option<Secret>,
    /// The longest a request may take, in ms (streams excepted): 100 to
    /// 600,000. Default 30,000.
    pub request_timeout_ms: u64,
    /// The largest request body, in bytes: 1,024 to 64 MiB. Default 2 MiB.
    pub max_body_bytes: usize,
    /// How long in-flight requests may drain at shutdown, in ms: 0 to
    /// 300,000. Default 30,000.
    pub drain_timeout_ms: u64,
    /// How long `/ready` answers 503 before the listener stops accepting
    /// at shutdown, in ms, so load balancers take the node out first: 0 to
    /// 60,000. Default 0.
    pub shutdown_delay_ms: u64,
    /// `sync` (default) or `async` session writes.
    pub session_durability: SessionDurability,
    /// How often `async` writes are flushed, in ms: 1,000 to 60,000.
    /// Default 30,000.
    pub flush_interval_ms: u64,
    /// Events waiting for one SSE client: 16 to 65,536. Default 1,024.
    pub sse_buffer: usize,
    /// How long an SSE client may leave its full buffer untouched before
    /// it is sent `lagged` and closed (it resumes with `Last-Event-ID`), in
    /// ms: 100 to 600,000. Default 10,000.
    pub sse_stall_ms: u64,
    /// The most SSE streams open on this node: 1 to 100,000 (default 256);
    /// one more is 503 with `Retry-After`.
    pub max_streams: usize,
    /// Where spans go, as OTLP over HTTP (protobuf): the collector's base
    /// URL (`http://127.0.0.1:4318`; `/v1/traces` is added unless the path
    /// names it). None by default: no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` spans carry. Default `smalltalk`.
    pub otel_service_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            storage_url: DEFAULT_STORAGE_URL.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 7700)),
            token: None,
            event_retention_hours: 24,
            session_expiration_days: 7,
            max_concurrent_sessions: 100,
            heartbeat_interval_ms: 2_000,
            liveness_probe_timeout_ms: 5_000,
            log_format: LogFormat::Text,
            llm_url: None,
            llm_model: None,
            llm_api_key: None,
            request_timeout_ms: 30_000,
            max_body_bytes: 2 * 1024 * 1024,
            drain_timeout_ms: 30_000,
            shutdown_delay_ms: 0,
            session_durability: SessionDurability::Sync,
            flush_interval_ms: 30_000,
            sse_buffer: 1024,
            sse_stall_ms: 10_000,
            max_streams: 256,
            otlp_endpoint: None,
            otel_service_name: "smalltalk".into(),
        }
    }
}

/// A configuration value that stops startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct ConfigError {
    /// The variable (or TOML key, or file) at fault.
    pub source_name: String,
    /// What is wrong, and what is allowed.
    pub reason: String,
}

impl ConfigError {
    fn new(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }
}

/// The environment variable that sets configuration key `key`.
pub fn variable_of(key: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .find(|(_, field)| *field == key)
        .map(|(variable, _)| *variable)
}

impl ServerConfig {
    /// Defaults, then `file` (TOML) if given, then the process's
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for (variable, _) in VARIABLES {
            if let Some(value) = std::env::var_os(variable) {
                let value = value
                    .into_string()
                    .map_err(|_| ConfigError::new(*variable, "is not valid UTF-8"))?;
                vars.push((*variable, value));
            }
        }
        let vars: Vec<(&str, &str)> = vars
            .iter()
            .map(|(variable, value)| (*variable, value.as_str()))
            .collect();
        Self::load_with(file, &vars)
    }

    /// [`load`](Self::load) with these variables instead of the process's.
    pub fn load_with(file: Option<&Path>, vars: &[(&str, &str)]) -> Result<Self, ConfigError> {
        let mut figment = Self::base(file)?;
        for (variable, value) in vars {
            let Some((_, key)) = VARIABLES.iter().find(|(name, _)| name == variable) else {
                return Err(ConfigError::new(*variable, "is not a setting"));
            };
            let value: figment::value::Value = if TEXT.contains(key) {
                let text = value.trim();
                if *key == "log_format" || *key == "session_durability" {
                    text.to_ascii_lowercase().into()
                } else {
                    text.to_owned().into()
                }
            } else {
                // Numbers and addresses, parsed as figment parses a variable.
                value.trim().parse().unwrap_or_else(|never| match never {})
            };
            figment = figment.merge(Serialized::default(key, value));
        }
        Self::extract(figment)
    }

    fn base(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::new(
                    file.display().to_string(),
                    "no such configuration file",
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        Ok(figment)
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: ServerConfig = figment.extract().map_err(|error| {
            let key = error.path.last().cloned().unwrap_or_default();
            let name = variable_of(&key).map_or_else(
                || {
                    if key.is_empty() {
                        "configuration".into()
                    } else {
                        key.clone()
                    }
                },
                |variable| format!("{variable} ({key})"),
            );
            ConfigError::new(name, describe(&error.kind))
        })?;
        config.storage_url = config.storage_url.trim().to_owned();
        config.validate()?;
        Ok(config)
    }

    /// Checks every range; the error names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let named = |key: &str| {
            variable_of(key)
                .map_or_else(|| key.to_owned(), |variable| format!("{variable} ({key})"))
        };
        let range = |key: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    named(key),
                    format!("must be between {low} and {high} (got {value})"),
                ))
            }
        };
        let url = self.storage_url.trim();
        if !["sqlite://", "postgres://", "postgresql://", "memory://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(ConfigError::new(
                named("storage_url"),
                format!("must be sqlite://PATH, postgres://... or memory:// (got {url:?})"),
            ));
        }
        // The bus's own bounds (1 hour to 30 days), so a value the bus
        // would refuse is refused here, naming the variable.
        range(
            "event_retention_hours",
            self.event_retention_hours,
            smalltalk::events::MIN_RETENTION.as_secs() / 3600,
            smalltalk::events::MAX_RETENTION.as_secs() / 3600,
        )?;
        range(
            "session_expiration_days",
            self.session_expiration_days,
            1,
            30,
        )?;
        range(
            "max_concurrent_sessions",
            self.max_concurrent_sessions as u64,
            1,
            1_000_000,
        )?;
        range(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            10,
            3_600_000,
        )?;
        range(
            "liveness_probe_timeout_ms",
            self.liveness_probe_timeout_ms,
            10,
            3_600_000,
        )?;
        range("request_timeout_ms", self.request_timeout_ms, 100, 600_000)?;
        range(
            "max_body_bytes",
            self.max_body_bytes as u64,
            1024,
            64 * 1024 * 1024,
        )?;
        range("drain_timeout_ms", self.drain_timeout_ms, 0, 300_000)?;
        range("shutdown_delay_ms", self.shutdown_delay_ms, 0, 60_000)?;
        range("flush_interval_ms", self.flush_interval_ms, 1_000, 60_000)?;
        range("sse_buffer", self.sse_buffer as u64, 16, 65_536)?;
        range("sse_stall_ms", self.sse_stall_ms, 100, 600_000)?;
        range("max_streams", self.max_streams as u64, 1, 100_000)?;
        if let Some(token) = &self.token {
            let token = token.expose();
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::new(
                    named("token"),
                    "must be at least 16 characters, with no spaces or control characters",
                ));
            }
        }
        if let Some(llm) = self.llm()? {
            llm.validate()
                .map_err(|error| ConfigError::new(named("llm_url"), error.to_string()))?;
        }
        if let Some(endpoint) = self.otlp_endpoint() {
            let valid = endpoint.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.chars().any(char::is_whitespace)
            });
            if !valid {
                return Err(ConfigError::new(
                    named("otlp_endpoint"),
                    format!("must be an http:// or https:// URL (got {endpoint:?})"),
                ));
            }
        }
        let name = &self.otel_service_name;
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(ConfigError::new(
                named("otel_service_name"),
                "must be 1 to 255 printable characters",
            ));
        }
        Ok(())
    }

    /// The OTLP endpoint, if one is set (an empty value sets none).
    fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
    }

    /// The OTLP traces URL, when spans are exported.
    pub fn otlp_traces_url(&self) -> Option<String> {
        let endpoint = self.otlp_endpoint()?.trim_end_matches('/');
        Some(if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{endpoint}/v1/traces")
        })
    }

    /// The LLM endpoint, when one is configured.
    pub fn llm(&self) -> Result<Option<LlmConfig>, ConfigError> {
        let Some(url) = self.llm_url.as_deref().filter(|url| !url.trim().is_empty()) else {
            if self.llm_model.is_some() || self.llm_api_key.is_some() {
                return Err(ConfigError::new(
                    "SMALLTALK_LLM_URL (llm_url)",
                    "must be set when SMALLTALK_LLM_MODEL or SMALLTALK_LLM_API_KEY is",
                ));
            }
            return Ok(None);
        };
        let model = self
            .llm_model
            .clone()
            .unwrap_or_else(|| smalltalk::groups::llm::DEFAULT_MODEL.into());
        let mut config = LlmConfig::new(url.trim(), model);
        config.api_key = self
            .llm_api_key
            .as_ref()
            .map(|key| ApiKey::new(key.expose()));
        Ok(Some(config))
    }

    /// The session manager's configuration.
    pub fn sessions(&self) -> SessionConfig {
        SessionConfig {
            default_ttl: Duration::from_secs(self.session_expiration_days * 24 * 3600),
            max_active_sessions: self.max_concurrent_sessions,
            durability: match self.session_durability {
                SessionDurability::Sync => Durability::Sync,
                SessionDurability::Async => Durability::Async {
                    flush_interval: Duration::from_millis(self.flush_interval_ms),
                },
            },
            ..SessionConfig::default()
        }
    }

    /// The health monitor's configuration.
    pub fn health(&self) -> HealthConfig {
        HealthConfig {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            probe_timeout: Duration::from_millis(self.liveness_probe_timeout_ms),
            ..HealthConfig::default()
        }
    }

    /// The event bus's configuration.
    pub fn events(&self) -> smalltalk::events::EventBusConfig {
        smalltalk::events::EventBusConfig {
            retention: Duration::from_secs(self.event_retention_hours * 3600),
            ..smalltalk::events::EventBusConfig::default()
        }
    }
}

/// A figment error in words an operator reads.
fn describe(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(found, expected) => format!("expected {expected}, found {found}"),
        Kind::InvalidValue(found, expected) => format!("expected {expected}, found {found}"),
        Kind::UnknownVariant(found, allowed) => {
            format!("{found:?} is not one of: {}", allowed.join(", "))
        }
        Kind::UnknownField(found, _) => format!("unknown setting {found:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_names_map() {
        let config = ServerConfig::load_with(None, &[]).unwrap();
        assert_eq!(config, ServerConfig::default());
        assert_eq!(config.bind.to_string(), "127.0.0.1:7700");
        assert_eq!(variable_of("bind"), Some("SMALLTALK_BIND"));
        for (variable, key) in VARIABLES {
            assert_eq!(variable_of(key), Some(*variable));
        }
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_range() {
        let cases = [
            ("HEARTBEAT_INTERVAL_MS", "5", "between 10 and 3600000"),
            ("HEARTBEAT_INTERVAL_MS", "soon", "HEARTBEAT_INTERVAL_MS"),
            ("SMALLTALK_BIND", "nowhere", "SMALLTALK_BIND"),
            ("LOG_FORMAT", "xml", "text, json"),
            ("STORAGE_URL", "mysql://x", "sqlite://PATH"),
            ("SESSION_EXPIRATION_DAYS", "0", "between 1 and 30"),
            // Past the bus's 30 days: refused here, not by the bus at start.
            ("EVENT_RETENTION_HOURS", "721", "between 1 and 720"),
            ("SMALLTALK_TOKEN", "short", "at least 16"),
            ("SMALLTALK_LLM_MODEL", "gpt", "SMALLTALK_LLM_URL"),
        ];
        for (variable, value, expected) in cases {
            let error = ServerConfig::load_with(None, &[(variable, value)]).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(variable), "{variable}={value}: {text}");
            assert!(text.contains(expected), "{variable}={value}: {text}");
        }
    }

    #[test]
    fn secrets_and_names_are_taken_as_text() {
        let config = ServerConfig::load_with(
            None,
            &[
                ("SMALLTALK_TOKEN", "12345678901234567890"),
                ("LOG_FORMAT", "JSON"),
                ("STORAGE_URL", "  memory://  "),
                ("SMALLTALK_SESSION_DURABILITY", "Async"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.token.as_ref().unwrap().expose(),
            "12345678901234567890"
        );
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.storage_url, "memory://");
        assert!(matches!(
            config.sessions().durability,
            Durability::Async { flush_interval } if flush_interval == Duration::from_secs(30)
        ));
    }

    #[test]
    fn the_file_comes_under_the_environment_and_secrets_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smalltalk.toml");
        std::fs::write(
            &file,
            "bind = \"127.0.0.1:9999\"\nmax_concurrent_sessions = 5\ntoken = \"0123456789abcdef-secret\"\n",
        )
        .unwrap();
        let config =
            ServerConfig::load_with(Some(&file), &[("MAX_CONCURRENT_SESSIONS", "7")]).unwrap();
        assert_eq!(config.bind.port(), 9999);
        assert_eq!(config.max_concurrent_sessions, 7, "the variable wins");
        assert!(!format!("{config:?}").contains("secret"));
        std::fs::write(&file, "bnid = \"x\"\n").unwrap();
        let error = ServerConfig::load_with(Some(&file), &[]).unwrap_err();
        assert!(error.to_string().contains("bnid"), "{error}");
        let missing = ServerConfig::load_with(Some(&dir.path().join("none.toml")), &[]);
        assert!(missing.unwrap_err().to_string().contains("no such"));
    }
}
