//! Why the server could not start, or stopped badly.

use std::net::SocketAddr;

use crate::ConfigError;

/// A failure to start or to stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A non-loopback address without a token (and without `insecure`).
    #[error(
        "refusing to listen on {address} without SMALLTALK_TOKEN: anyone who reaches it could read and change every session. Set SMALLTALK_TOKEN, or pass --insecure"
    )]
    Unprotected {
        /// The address asked for.
        address: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {address} (SMALLTALK_BIND)")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The storage could not be opened (or its directory made).
    #[error("cannot open storage at {url} (STORAGE_URL)")]
    Storage {
        /// The URL, its password masked.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The LLM endpoint's settings were refused.
    #[error("invalid LLM settings (SMALLTALK_LLM_URL)")]
    Llm(#[from] smalltalk::groups::llm::Error),
    /// Persisting or closing at shutdown failed: some writes may be lost.
    #[error("persisting at shutdown failed")]
    Shutdown(#[source] smalltalk::Error),
    /// The server itself failed while serving.
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
}

/// The server's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
