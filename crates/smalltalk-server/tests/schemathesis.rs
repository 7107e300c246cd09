//! schemathesis (a PyPI package) against `/openapi.json`: thousands of
//! generated requests, valid and not, to every route but the SSE streams.
//! No answer may be a 5xx, and every answer must conform to the document
//! (status codes, content types, bodies).
//!
//! The tool is `$SMALLTALK_SCHEMATHESIS`, else `schemathesis` on `PATH`;
//! `.ci/run` installs it into a virtualenv. Without it the test is skipped
//! and says so, unless `SMALLTALK_REQUIRE_TOOLS=1` (as `.ci/run` sets).

use common::{memory, start};
use smalltalk_e2e::mock_llm::MockLlm;
use smalltalk_server::ServerConfig;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_answer_off_the_schema() {
    let required = std::env::var("SMALLTALK_REQUIRE_TOOLS").is_ok_and(|value| value == "1");
    let tool = std::env::var("SMALLTALK_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let found = std::process::Command::new(&tool)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            !required,
            "SMALLTALK_REQUIRE_TOOLS=1 but {tool:?} cannot run (set SMALLTALK_SCHEMATHESIS)"
        );
        eprintln!("skipped: schemathesis is not installed (set SMALLTALK_SCHEMATHESIS)");
        return;
    }
    // Groups run rounds against a real OpenAI-compatible server.
    let llm = MockLlm::start().await.unwrap();
    let (_app, base) = start(ServerConfig {
        llm_url: Some(llm.base_url()),
        ..memory()
    })
    .await;
    let workdir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(&tool)
        .current_dir(workdir.path())
        .env("NO_COLOR", "1")
        .args([
            "run",
            &format!("{base}/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            // SSE streams never end by themselves.
            "--exclude-path-regex",
            "/stream$|^/v1/state-watch$",
            "--max-examples",
            "30",
            "--workers",
            "2",
            "--request-timeout",
            "20",
        ])
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    eprintln!(
        "{}",
        report
            .lines()
            .filter(|line| line.contains("generated") || line.contains("Tested"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
