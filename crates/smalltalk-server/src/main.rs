//! `smalltalk`: the SmallTalk-rs server and CLI.
//!
//! ```text
//! smalltalk serve [--insecure]                 the HTTP service (see docs/server.md)
//! smalltalk demo [--storage URL]               the main job: a conversation survives a restart
//! smalltalk sessions list|show ID|export ID    sessions in STORAGE_URL
//! smalltalk events tail [--from N] [--follow]  the event log
//! smalltalk doctor                             checks storage, schema and file modes
//! ```
//!
//! `--json` prints one JSON document per line.
//!
//! Configuration comes from environment variables and an optional TOML
//! file (`--config`); see docs/configuration.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
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
    /// Output as JSON (one document per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// Lists sessions, oldest first.
    List {
        /// Only sessions in this state (active, idle, expired, invalidated).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Shows a session and its history.
    Show {
        /// The session id.
        id: String,
    },
    /// Writes a session (header, history, agent states) as JSON.
    Export {
        /// The session id.
        id: String,
        /// The file to write (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Prints the log after a position (default: its last 20 events).
    Tail {
        /// Events after this position.
        #[arg(long)]
        from: Option<u64>,
        /// Only topics matching this pattern.
        #[arg(long)]
        topic: Option<String>,
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
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
    /// Sessions in the storage (`STORAGE_URL`).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// The event log in the storage (`STORAGE_URL`).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Checks the storage URL, that storage opens with its schema
    /// migrated, and an SQLite file's mode; exit 1 if a check fails.
    Doctor,
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
        // A reader that stopped reading (`| head`): not a failure.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
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
        Command::Sessions { command } => {
            let url = ServerConfig::load(cli.config.as_deref())?.storage_url;
            match command {
                SessionsCommand::List { state, limit } => {
                    cli::sessions_list(&url, state.as_deref(), limit, cli.json).await
                }
                SessionsCommand::Show { id } => cli::sessions_show(&url, &id, None, cli.json).await,
                SessionsCommand::Export { id, output } => {
                    cli::sessions_show(&url, &id, Some(output.as_deref()), cli.json).await
                }
            }
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    from,
                    topic,
                    follow,
                },
        } => {
            let url = ServerConfig::load(cli.config.as_deref())?.storage_url;
            cli::events_tail(&url, from, topic.as_deref(), follow, cli.json).await
        }
        Command::Doctor => {
            let url = ServerConfig::load(cli.config.as_deref())?.storage_url;
            cli::doctor(&url, cli.json).await
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
