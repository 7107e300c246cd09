//! Serves the scripted OpenAI-compatible endpoint of
//! `smalltalk_e2e::mock_llm` on its own: `mock-llm [ADDR]` (default
//! `127.0.0.1:0`) prints `ready <base url>` and serves until killed. With
//! an empty script it answers selection requests with the first eligible
//! agent and anything else with an echo.

use smalltalk_e2e::mock_llm::MockLlm;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let server = MockLlm::start_on(&addr).await?;
    println!("ready {}", server.base_url());
    std::future::pending::<()>().await;
    drop(server);
    Ok(())
}
