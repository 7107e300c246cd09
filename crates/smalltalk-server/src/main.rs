//! `smalltalk`: the SmallTalk-rs server and CLI.
//!
//! ```text
//! smalltalk serve [--insecure]                 the HTTP service (see docs/server.md)
//! smalltalk demo [--storage URL]               the main job: a conversation survives a restart
//! smalltalk sessions list|show ID|export ID    sessions in STORAGE_URL
//! smalltalk events tail [--from N] [--follow]  the event log
//! smalltalk state get|put|history|watch         versioned state
//! smalltalk import DIR [--dry-run]             the TypeScript original's sessions
//! smalltalk doctor                             checks storage, schema and file modes
//! ```
//!
//! `sessions`, `events` and `state` open the storage (`STORAGE_URL`), or
//! with `--server URL` (`SMALLTALK_SERVER`, token `SMALLTALK_TOKEN`) speak
//! to a running server.
//!
//! `--json` prints one JSON document per line.
//!
//! Configuration comes from environment variables and an optional TOML
//! file (`--config`); see docs/configuration.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cli;
mod demo;
mod remote;
mod state_cli;
use smalltalk_server::{ServeOptions, ServerConfig};

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
    /// Speak to the server at this URL (`http://host:port`) instead of
    /// opening the storage (`sessions`, `events`, `state`). Default:
    /// `SMALLTALK_SERVER`.
    #[arg(long, global = true)]
    server: Option<String>,
    /// The server's bearer token, with `--server` (it shows in `ps`:
    /// prefer `SMALLTALK_TOKEN`, which is read when this is absent).
    #[arg(long, global = true)]
    token: Option<String>,
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
    /// Writes a session (header, history, agent states) as JSON; with
    /// `--all`, every session into a directory, with a progress bar.
    Export {
        /// The session id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every session, one `<id>.json` each in `--output` (a directory).
        #[arg(long, requires = "output")]
        all: bool,
        /// The file (or with `--all` the directory) to write (default:
        /// stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// A key's value, now or at a revision.
    Get {
        /// The key.
        key: String,
        /// Read at this revision.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Writes a key's value (JSON; `-` reads it from stdin).
    Put {
        /// The key.
        key: String,
        /// The value, as JSON (a string is "quoted").
        value: String,
        /// Only if the key's last change is this revision.
        #[arg(long, conflicts_with = "if_absent")]
        if_revision: Option<u64>,
        /// Only if the key has no value.
        #[arg(long)]
        if_absent: bool,
    },
    /// A key's versions, newest first.
    History {
        /// The key.
        key: String,
        /// At most this many (1 to 1,000).
        #[arg(long, default_value_t = 100)]
        depth: u32,
        /// Older than this revision.
        #[arg(long)]
        before: Option<u64>,
    },
    /// Each revision's changes under a prefix, until interrupted.
    Watch {
        /// Keys starting with this (default: every key).
        #[arg(long, default_value = "")]
        prefix: String,
        /// From this revision (default: the next one).
        #[arg(long)]
        from: Option<u64>,
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
    /// Imports the TypeScript original's sessions, key-value entries and
    /// event logs into the storage (`STORAGE_URL`); running it again
    /// imports nothing twice.
    Import {
        /// The original's data directory (holding `sessions/sessions/`,
        /// `sessions/kv/` and `events/`, or the adapter's base holding
        /// `sessions/` and `kv/`), its PostgreSQL database
        /// (`postgres://...`) or its Redis (`redis://host:port/db`).
        source: String,
        /// Report what would be imported, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Versioned state in the storage (`STORAGE_URL`) or on `--server`.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Checks the storage URL, that storage opens with its schema
    /// migrated, and an SQLite file's mode; exit 1 if a check fails.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve`: its configuration and telemetry before the async runtime
    // (the OTLP exporter's HTTP client is a blocking one on a thread of
    // its own).
    let mut telemetry = None;
    let serving = match &cli.command {
        Command::Serve { .. } => {
            let loaded = ServerConfig::load(cli.config.as_deref())
                .map_err(anyhow::Error::from)
                .and_then(|config| {
                    let installed = smalltalk_server::telemetry::init(&config)?;
                    Ok((config, installed))
                });
            match loaded {
                Ok((config, installed)) => {
                    telemetry = Some(installed);
                    Some(config)
                }
                Err(error) => {
                    eprintln!("smalltalk: {error:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let code = run_all(cli, serving);
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    code
}

fn run_all(cli: Cli, serving: Option<ServerConfig>) -> ExitCode {
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
    match runtime.block_on(run(cli, serving)) {
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

async fn run(cli: Cli, serving: Option<ServerConfig>) -> anyhow::Result<()> {
    let Cli {
        config,
        json,
        server,
        token,
        command,
    } = cli;
    match command {
        Command::Serve { insecure } => {
            // The signal handlers go in before anything else happens.
            if server.is_some() || token.is_some() {
                anyhow::bail!(
                    "serve takes its settings from the environment and --config (SMALLTALK_TOKEN, SMALLTALK_BIND...): --server and --token are for the commands that speak to a server"
                );
            }
            let stop = smalltalk_server::terminated();
            let config = match serving {
                Some(config) => config,
                None => ServerConfig::load(config.as_deref())?,
            };
            Ok(smalltalk_server::serve(config, ServeOptions { insecure }, stop).await?)
        }
        Command::Sessions { command } => {
            let target = target(config.as_deref(), server.as_deref(), token.clone())?;
            match command {
                SessionsCommand::List { state, limit } => {
                    cli::sessions_list(&target, state.as_deref(), limit, json).await
                }
                SessionsCommand::Show { id } => cli::sessions_show(&target, &id, None, json).await,
                SessionsCommand::Export {
                    all: true, output, ..
                } => {
                    let dir = output.context("--all needs --output DIR")?;
                    cli::sessions_export_all(&target, &dir, json).await
                }
                SessionsCommand::Export { id, output, .. } => {
                    let id = id.context("the session id")?;
                    cli::sessions_show(&target, &id, Some(output.as_deref()), json).await
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
            let target = target(config.as_deref(), server.as_deref(), token.clone())?;
            cli::events_tail(&target, from, topic.as_deref(), follow, json).await
        }
        Command::Import { source, dry_run } => {
            let config = ServerConfig::load(config.as_deref())?;
            let retention = std::time::Duration::from_secs(config.event_retention_hours * 3600);
            cli::import(&config.storage_url, &source, dry_run, retention, json).await
        }
        Command::State { command } => {
            let target = target(config.as_deref(), server.as_deref(), token.clone())?;
            match command {
                StateCommand::Get { key, revision } => {
                    state_cli::get(&target, &key, revision, json).await
                }
                StateCommand::Put {
                    key,
                    value,
                    if_revision,
                    if_absent,
                } => {
                    let condition = match (if_revision, if_absent) {
                        (Some(revision), _) => state_cli::Condition::Revision(revision),
                        (None, true) => state_cli::Condition::Absent,
                        (None, false) => state_cli::Condition::None,
                    };
                    state_cli::put(&target, &key, &value, condition, json).await
                }
                StateCommand::History { key, depth, before } => {
                    state_cli::history(&target, &key, depth, before, json).await
                }
                StateCommand::Watch { prefix, from } => {
                    state_cli::watch(&target, &prefix, from, json).await
                }
            }
        }
        Command::Doctor => {
            let url = ServerConfig::load(config.as_deref())?.storage_url;
            cli::doctor(&url, json).await
        }
        Command::Demo { storage, restore } => match restore {
            Some(id) => demo::restore(&storage, &id).await,
            None => demo::run(&storage).await,
        },
    }
}

/// The running server (`--server`) or the storage (`STORAGE_URL`).
fn target(
    config: Option<&std::path::Path>,
    server: Option<&str>,
    token: Option<String>,
) -> anyhow::Result<cli::Target> {
    let from_env = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    let server = server
        .map(str::to_owned)
        .or_else(|| from_env("SMALLTALK_SERVER"));
    Ok(match server {
        Some(server) => cli::Target::Server(remote::Remote::new(
            &server,
            token.or_else(|| from_env("SMALLTALK_TOKEN")),
        )?),
        None => cli::Target::Storage(ServerConfig::load(config)?.storage_url),
    })
}
