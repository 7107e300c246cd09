//! Binding, serving, and the shutdown sequence.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{AppState, ServerConfig, router};

/// How `serve` runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// Allow a non-loopback address without a token.
    pub insecure: bool,
}

/// Serves `config` until `stop` completes (the binary passes SIGTERM or
/// SIGINT), then: `/ready` turns 503, the listener stops accepting,
/// in-flight requests drain for up to `drain_timeout_ms`, every session is
/// persisted and storage closed. An error (for example persistence that
/// failed) is returned after every step ran; the binary exits 1 on it.
pub async fn serve(
    config: ServerConfig,
    options: ServeOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !config.bind.ip().is_loopback() && config.token.is_none() && !options.insecure {
        bail!(
            "refusing to listen on {} without SMALLTALK_TOKEN: anyone who reaches it could read and change every session. Set SMALLTALK_TOKEN, or pass --insecure",
            config.bind
        );
    }
    if config.token.is_none() {
        tracing::warn!(
            "SMALLTALK_TOKEN is not set: requests are not authenticated (listening on {} only)",
            config.bind
        );
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {} (SMALLTALK_BIND)", config.bind))?;
    let address = listener.local_addr()?;
    let app = AppState::start(&config).await.with_context(|| {
        format!(
            "cannot open storage at {} (STORAGE_URL)",
            redact(&config.storage_url)
        )
    })?;
    tracing::info!(%address, storage = %redact(&config.storage_url), "smalltalk listening");
    // A line on stdout, for scripts and tests that start the binary.
    println!("listening on http://{address}");

    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let draining = app.clone();
    let graceful = async move {
        let _ = stopped.await;
        draining.drain();
    };
    let server = tokio::spawn(
        axum::serve(listener, router(app.clone()))
            .with_graceful_shutdown(graceful)
            .into_future(),
    );
    stop.await;
    tracing::info!("shutting down: draining requests");
    app.drain();
    let _ = stopping.send(());
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let mut server = server;
    match tokio::time::timeout(drain, &mut server).await {
        Ok(served) => {
            if let Ok(Err(error)) = served {
                tracing::warn!("the server stopped with an error: {error}");
            }
        }
        Err(_) => {
            tracing::warn!(
                ?drain,
                "requests still running after the drain; closing them"
            );
            server.abort();
        }
    }
    tracing::info!("persisting sessions and closing storage");
    app.shutdown().await.context("persisting at shutdown")?;
    tracing::info!("stopped");
    Ok(())
}

/// A storage URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn terminated() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!("cannot listen for SIGTERM: {error}");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
    }
}
