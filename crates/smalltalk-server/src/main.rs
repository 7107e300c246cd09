//! `smalltalk`: the SmallTalk-rs server and CLI.
//!
//! ```text
//! smalltalk serve [--insecure]        the HTTP service (see docs/server.md)
//! smalltalk demo [--storage URL]      the main job: a conversation survives a restart
//! ```
//!
//! Configuration comes from environment variables and an optional TOML
//! file (`--config`); see docs/configuration.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
use smalltalk_server::{LogFormat, ServeOptions, ServerConfig};

/// SmallTalk-rs: conversations that survive restarts, agents that are
/// healed, events with replay.
#[derive(Debug, Parser)]
#[command(name = "smalltalk", version, about)]
struct Cli {
    /// A TOML file with settings (environment variables override it).
    #[arg(long, global = true, env = "SMALLTALK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the HTTP API until SIGTERM or SIGINT.
    Serve {
        /// Allow a non-loopback SMALLTALK_BIND without SMALLTALK_TOKEN.
        #[arg(long)]
        insecure: bool,
    },
    /// Runs a conversation with health monitoring and events on SQLite,
    /// restarts as a new process and shows the conversation survived.
    Demo {
        /// Where the demo keeps its data.
        #[arg(long, default_value = demo::DEMO_STORAGE)]
        storage: String,
        /// (Internal) restore this session and print it.
        #[arg(long, hide = true)]
        restore: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("smalltalk: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("smalltalk: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { insecure } => {
            // The signal handlers go in before anything else happens.
            let stop = smalltalk_server::terminated();
            let config = ServerConfig::load(cli.config.as_deref())?;
            init_logs(config.log_format);
            Ok(smalltalk_server::serve(config, ServeOptions { insecure }, stop).await?)
        }
        Command::Demo { storage, restore } => match restore {
            Some(id) => demo::restore(&storage, &id).await,
            None => demo::run(&storage).await,
        },
    }
}

/// Logs to stderr, at `RUST_LOG` (default `info`), as text or JSON.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
