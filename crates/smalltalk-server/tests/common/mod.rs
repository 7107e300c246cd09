//! What the HTTP tests share: a server on an ephemeral port of 127.0.0.1.

use smalltalk_server::{AppState, ServerConfig, router};

/// Starts a server for `config`; returns its state and base URL. It runs
/// until the test's runtime ends.
#[allow(dead_code)]
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

/// Starts `binary serve` with `vars` (and nothing else of this process's
/// environment but `PATH`); returns it and its base URL.
#[allow(dead_code)]
pub(crate) async fn serve_binary(
    binary: &str,
    vars: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SMALLTALK_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in vars {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the server starts within 30 s")
        .unwrap();
    let Some(line) = line else {
        let mut said = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = stderr.read_to_string(&mut said).await;
        }
        panic!("{binary} serve did not start: {said}");
    };
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    // Its logs are read and dropped, so a chatty child never blocks on a
    // full pipe.
    if let Some(mut stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        });
    }
    (child, base)
}

/// Sends `SIG<name>` to `child`.
#[allow(dead_code)]
pub(crate) fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `binary` with `args`, `STORAGE_URL` set to `storage_url` and no
/// other environment; its exit code, stdout and stderr.
#[allow(dead_code)]
pub(crate) fn run_cli(
    binary: &str,
    args: &[&str],
    storage_url: &str,
) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env("STORAGE_URL", storage_url)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The counts of an import's JSON report: imported, skipped, duplicate,
/// failed.
#[allow(dead_code)]
pub(crate) fn import_counts(report: &serde_json::Value) -> [u64; 4] {
    ["imported", "skipped", "duplicate", "failed"]
        .map(|count| report[count].as_u64().unwrap_or(u64::MAX))
}
