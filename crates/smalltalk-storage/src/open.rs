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
/// - `sqlite://PATH` (`sqlite:///abs/path.db`, `sqlite://relative.db`, from
///   the working directory), options `synchronous=normal|full`,
///   `busy_timeout_ms=N`; feature `sqlite`;
/// - `postgres://user@host:port/db` (or `postgresql://`), options
///   `schema=NAME` (created if absent), `max_connections=N` plus everything
///   the driver accepts; feature `postgres`.
///
/// Paths and option names and values are percent-decoded (`%20` is a
/// space; a part that is not UTF-8 once decoded is `InvalidUrl`).
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

/// Splits `a=1&b=2` into pairs, percent-decoded (`+` is a space in
/// values, as in forms).
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').ok_or_else(|| Error::InvalidUrl {
                reason: format!("option `{pair}` has no value"),
            })?;
            Ok((decoded(name)?, decoded(&value.replace('+', " "))?))
        })
        .collect()
}

/// Percent-decodes one part of a URL; it must be UTF-8 afterwards.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn decoded(part: &str) -> Result<String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| Error::InvalidUrl {
            reason: "a percent-encoded part is not UTF-8".into(),
        })
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(rest: &str, options: OpenOptions) -> Result<Arc<dyn Store>> {
    use crate::sqlite::{SqliteOptions, SqliteStore, Synchronous};

    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    // `sqlite://relative/path` and `sqlite:///absolute/path`, with `%20`
    // and the like decoded.
    let path = decoded(path)?;
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
        match (name.as_str(), value.to_ascii_lowercase().as_str()) {
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
    Ok(Arc::new(SqliteStore::open_with(&path, sqlite).await?))
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
