//! Binding, serving, and the shutdown sequence.

use std::future::Future;
use std::time::Duration;

use crate::{AppState, Error, Result, ServerConfig, router};

/// How `serve` runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// Allow a non-loopback address without a token.
    pub insecure: bool,
}

/// Serves `config` until `stop` completes (the binary passes
/// [`terminated`]), then: `/ready` turns 503 (for `shutdown_delay_ms` the
/// listener still accepts, so load balancers see it), the listener stops
/// accepting, in-flight requests drain for up to `drain_timeout_ms`, every
/// session is persisted and storage closed. The first failure is returned
/// after every step ran; the binary exits 1 on it.
pub async fn serve(
    config: ServerConfig,
    options: ServeOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if !config.bind.ip().is_loopback() && config.token.is_none() && !options.insecure {
        return Err(Error::Unprotected {
            address: config.bind,
        });
    }
    if config.token.is_none() {
        tracing::warn!(
            "SMALLTALK_TOKEN is not set: requests are not authenticated (listening on {} only)",
            config.bind
        );
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| Error::Bind {
            address: config.bind,
            source,
        })?;
    let address = listener.local_addr().map_err(Error::Serve)?;
    let app = AppState::start(&config).await?;
    tracing::info!(%address, storage = %redact(&config.storage_url), "smalltalk listening");
    // A line on stdout, for scripts and tests that start the binary.
    println!("listening on http://{address}");

    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        axum::serve(listener, router(app.clone()))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let mut failed = None;
    tokio::select! {
        () = stop => {}
        // The server ended by itself: shut down the rest all the same.
        ended = &mut server => {
            failed = Some(match ended {
                Ok(Ok(())) => Error::Serve(std::io::Error::other("the server stopped unasked")),
                Ok(Err(error)) => Error::Serve(error),
                Err(join) => Error::Serve(std::io::Error::other(join.to_string())),
            });
        }
    }
    tracing::info!("shutting down: /ready answers 503");
    app.drain();
    let delay = Duration::from_millis(config.shutdown_delay_ms);
    if !delay.is_zero() && failed.is_none() {
        tokio::time::sleep(delay).await;
    }
    // Open streams end with their terminal event, so the graceful
    // shutdown below does not wait on them.
    app.close_streams();
    let _ = stopping.send(());
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let started = tokio::time::Instant::now();
    if failed.is_none() {
        match tokio::time::timeout(drain, &mut server).await {
            Ok(Ok(Err(error))) => tracing::warn!("the server stopped with an error: {error}"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    ?drain,
                    "connections still open after the drain; closing them"
                );
                server.abort();
            }
        }
    }
    // Handlers run on their own tasks: wait for the writes under way, in
    // what is left of the drain.
    if !app
        .wait_for_requests(drain.saturating_sub(started.elapsed()))
        .await
    {
        tracing::warn!("requests still running after the drain; persisting what is stored");
    }
    tracing::info!("persisting sessions and closing storage");
    let persisted = app.shutdown().await;
    tracing::info!("stopped");
    match (failed, persisted) {
        (_, Err(error)) | (Some(error), Ok(())) => Err(error),
        (None, Ok(())) => Ok(()),
    }
}

/// A storage URL without its password, for logs.
pub fn redact(url: &str) -> String {
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

/// Completes on SIGTERM or SIGINT. The handlers are installed when this
/// is called (not when the future is first polled), so a signal that
/// arrives while storage opens is not lost to the default action.
/// Call it inside a Tokio runtime.
pub fn terminated() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (term, interrupt) => {
                    tracing::warn!(
                        "cannot listen for signals (SIGTERM: {:?}, SIGINT: {:?}); stop with SIGKILL",
                        term.err(),
                        interrupt.err()
                    );
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
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
