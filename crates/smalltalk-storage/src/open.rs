//! Opening a store from a URL.

use std::sync::Arc;

use smalltalk_types::{Clock, SystemClock};

use crate::{Error, MemoryStore, Result, Store};

/// Options that apply to every backend opened by [`open_with`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The clock used for key-value TTLs.
    pub clock: Arc<dyn Clock>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
        }
    }
}

/// Opens a store from a URL with default options. See [`open_with`].
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with(url, OpenOptions::default()).await
}

/// Opens a store from a URL:
///
/// - `memory://`: a fresh in-memory store;
/// - `sqlite://PATH` (`sqlite:///abs/path.db`, `sqlite://relative.db`),
///   options `synchronous=normal|full`, `busy_timeout_ms=N`; feature `sqlite`;
/// - `postgres://user@host:port/db` (or `postgresql://`), options
///   `schema=NAME` (created if absent), `max_connections=N` plus everything
///   the driver accepts; feature `postgres`.
pub async fn open_with(url: &str, options: OpenOptions) -> Result<Arc<dyn Store>> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| Error::InvalidUrl {
        reason: "expected SCHEME://...".into(),
    })?;
    match scheme {
        "memory" => {
            if !rest.is_empty() {
                return Err(Error::InvalidUrl {
                    reason: "memory:// takes no path or options".into(),
                });
            }
            Ok(Arc::new(MemoryStore::with_clock(options.clock)))
        }
        "sqlite" => open_sqlite(rest, options).await,
        "postgres" | "postgresql" => open_postgres(url, options).await,
        other => Err(Error::InvalidUrl {
            reason: format!("unknown scheme `{other}`"),
        }),
    }
}

/// Splits `a=1&b=2` into pairs.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(&str, &str)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=').ok_or_else(|| Error::InvalidUrl {
                reason: format!("option `{pair}` has no value"),
            })
        })
        .collect()
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(rest: &str, options: OpenOptions) -> Result<Arc<dyn Store>> {
    use crate::sqlite::{SqliteOptions, SqliteStore, Synchronous};

    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(Error::InvalidUrl {
            reason: "sqlite:// needs a file path".into(),
        });
    }
    let mut sqlite = SqliteOptions {
        clock: options.clock,
        ..SqliteOptions::default()
    };
    for (name, value) in query_pairs(query)? {
        match (name, value.to_ascii_lowercase().as_str()) {
            ("synchronous", "normal") => sqlite.synchronous = Synchronous::Normal,
            ("synchronous", "full") => sqlite.synchronous = Synchronous::Full,
            ("busy_timeout_ms", millis) => {
                let millis: u64 = millis.parse().map_err(|_| Error::InvalidUrl {
                    reason: "busy_timeout_ms must be a whole number of milliseconds".into(),
                })?;
                sqlite.busy_timeout = std::time::Duration::from_millis(millis);
            }
            _ => {
                return Err(Error::InvalidUrl {
                    reason: format!("unknown sqlite option `{name}={value}`"),
                });
            }
        }
    }
    Ok(Arc::new(SqliteStore::open_with(path, sqlite).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_rest: &str, _options: OpenOptions) -> Result<Arc<dyn Store>> {
    Err(Error::BackendNotEnabled {
        scheme: "sqlite".into(),
        feature: "sqlite",
    })
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, options: OpenOptions) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(
        crate::postgres::PgStore::open_with(url, options.clock).await?,
    ))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str, _options: OpenOptions) -> Result<Arc<dyn Store>> {
    Err(Error::BackendNotEnabled {
        scheme: "postgres".into(),
        feature: "postgres",
    })
}
