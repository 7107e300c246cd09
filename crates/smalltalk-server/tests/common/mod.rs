//! What the HTTP tests share: a server on an ephemeral port of 127.0.0.1.

use smalltalk_server::{AppState, ServerConfig, router};

/// Starts a server for `config`; returns its state and base URL. It runs
/// until the test's runtime ends.
pub(crate) async fn start(config: ServerConfig) -> (AppState, String) {
    let app = AppState::start(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let service = router(app.clone());
    tokio::spawn(async move {
        axum::serve(listener, service).await.unwrap();
    });
    (app, base)
}

/// The defaults, in memory.
#[allow(dead_code)]
pub(crate) fn memory() -> ServerConfig {
    ServerConfig {
        storage_url: "memory://".into(),
        ..ServerConfig::default()
    }
}
