//! Project automation. `cargo xtask ci` is the one test command.
//!
//! - `ci`: fmt check, clippy (`-D warnings`, all targets and features),
//!   rustdoc (`-D warnings`), every workspace test including doc tests and
//!   the contract suites, then a table of contract suites per backend (ran
//!   or skipped, and why).
//! - `contract`: only the contract suites, with the table.
//! - `bench`: the criterion benchmarks (`cargo bench -p smalltalk-benches`).
//! - `report [--json] [--quick] [--only storage|sessions|events|health|state|groups|server|import]`: the
//!   success-criteria report (release build).
//!
//! PostgreSQL is used when `SMALLTALK_TEST_POSTGRES_URL` is set or
//! 127.0.0.1:5432 answers; with `SMALLTALK_REQUIRE_POSTGRES=1` an
//! unreachable server fails the run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const BACKENDS: [&str; 3] = ["memory", "sqlite", "postgres"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("contract") => contract(),
        Some("previous-release") => {
            let (binary, commit) = previous_release().map_err(anyhow::Error::msg)?;
            println!("{} {commit}", binary.display());
            Ok(())
        }
        Some("bench") => run(Command::new("cargo")
            .args(["bench", "-p", "smalltalk-benches"])
            .args(&args[1..])),
        Some("report") => {
            // The server binary too: a SERVER row measures its SIGTERM.
            run(Command::new("cargo").args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "smalltalk-server",
                "--bin",
                "smalltalk",
            ]))?;
            report(&args[1..])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | contract | previous-release | bench | report [--json] [--quick] [--only GROUP]>"
            );
            std::process::exit(2);
        }
    }
}

fn report(args: &[String]) -> Result<()> {
    run(Command::new("cargo")
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "smalltalk-benches",
            "--bin",
            "report",
            "--",
        ])
        .args(args))
}

fn workspace_root() -> Result<std::path::PathBuf> {
    let manifest_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest_dir
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf())
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("running {}", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(command));
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where PostgreSQL tests will run, or why not.
enum Postgres {
    Available(String),
    Unavailable(String),
}

fn detect_postgres() -> Result<Postgres> {
    let required = std::env::var("SMALLTALK_REQUIRE_POSTGRES").is_ok_and(|value| value == "1");
    let found = match std::env::var("SMALLTALK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Postgres::Available(url),
        _ => {
            let address: SocketAddr = "127.0.0.1:5432".parse()?;
            match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                Ok(_) => Postgres::Available(DEFAULT_PG_URL.to_owned()),
                Err(error) => Postgres::Unavailable(format!(
                    "no server at 127.0.0.1:5432 ({error}) and SMALLTALK_TEST_POSTGRES_URL unset"
                )),
            }
        }
    };
    if let (Postgres::Unavailable(why), true) = (&found, required) {
        bail!("SMALLTALK_REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {why}");
    }
    Ok(found)
}

fn ci() -> Result<()> {
    let started = Instant::now();
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Rustdoc's lints (broken intra-doc links) only run when docs are built.
    run(Command::new("cargo")
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    let postgres = detect_postgres()?;
    let results = run_tests(&postgres, &["test", "--workspace", "--all-features"])?;
    print_contract_table(&results, &postgres);
    let promtool = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if promtool {
        eprintln!("promtool: found; /metrics was linted");
    } else {
        eprintln!(
            "promtool: not found; the /metrics lint was skipped (SMALLTALK_REQUIRE_TOOLS=1, as .ci/run sets, makes that a failure)"
        );
    }
    let schemathesis =
        std::env::var("SMALLTALK_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let fuzzed = Command::new(&schemathesis)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if fuzzed {
        eprintln!("schemathesis: found; the HTTP API was fuzzed against /openapi.json");
    } else {
        eprintln!(
            "schemathesis: not found; the API fuzzing was skipped (SMALLTALK_SCHEMATHESIS names it; SMALLTALK_REQUIRE_TOOLS=1, as .ci/run sets, makes its absence a failure)"
        );
    }
    let redis: SocketAddr = "127.0.0.1:6379".parse()?;
    if std::env::var("SMALLTALK_TEST_REDIS_URL").is_ok_and(|url| !url.is_empty())
        || TcpStream::connect_timeout(&redis, Duration::from_secs(1)).is_ok()
    {
        eprintln!("redis: found; the import from the original's Redis ran");
    } else {
        eprintln!(
            "redis: not found; the import from the original's Redis was skipped (SMALLTALK_REQUIRE_REDIS=1, as .ci/run sets, makes that a failure)"
        );
    }
    eprintln!("cargo xtask ci: all green in {:.0?}", started.elapsed());
    Ok(())
}

fn contract() -> Result<()> {
    let postgres = detect_postgres()?;
    let results = run_tests(
        &postgres,
        &[
            "test",
            "-p",
            "smalltalk-storage",
            "--all-features",
            "--test",
            "contract",
        ],
    )?;
    print_contract_table(&results, &postgres);
    Ok(())
}

/// Passed and failed test counts per `(backend, suite)`.
type Tally = BTreeMap<(String, String), (usize, usize)>;

/// The files holding the storage migrations: the newest commit that
/// added a migration to either is the newest schema release.
const MIGRATION_FILES: &[&str] = &[
    "crates/smalltalk-storage/src/postgres/migrations.rs",
    "crates/smalltalk-storage/src/sqlite/migrations.rs",
];

/// The `smalltalk` binary of the commit before the newest migration (the
/// previous schema release), for the blue-green test: built from `git
/// archive` in a target directory of its own under
/// `target/previous-release` (a shared one would mix the two trees'
/// artifacts, whose hashes do not depend on where a tree lives). `Err`
/// says why there is none.
fn previous_release() -> Result<(std::path::PathBuf, String), String> {
    let git = |args: &[&str]| -> Result<String, String> {
        let output = Command::new("git")
            .args(args)
            .output()
            .map_err(|error| format!("git: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    if git(&["rev-parse", "--is-shallow-repository"])? == "true" {
        return Err(
            "this clone is shallow: the commit before the newest migration is not in it".into(),
        );
    }
    // The migrations a commit holds: its `Migration {` entries.
    let count = |commit: &str| -> usize {
        MIGRATION_FILES
            .iter()
            .map(|path| {
                git(&["show", &format!("{commit}:{path}")])
                    .map_or(0, |text| text.matches("Migration {").count())
            })
            .sum()
    };
    let mut args = vec!["log", "--format=%H", "--"];
    args.extend(MIGRATION_FILES);
    let newest = git(&args)?
        .lines()
        .find(|commit| count(commit) > count(&format!("{commit}^")))
        .map(str::to_owned)
        .ok_or("no commit adds a migration")?;
    let previous = git(&["rev-parse", &format!("{newest}^")])?;
    let home = std::path::Path::new("target/previous-release");
    let binary = home.join(format!("smalltalk-{}", &previous[..12]));
    if binary.exists() {
        return Ok((binary, previous));
    }
    let source = home.join("src");
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&source).map_err(|error| error.to_string())?;
    // `tar -m`: the files get the current time, so the shared target
    // directory rebuilds what changed since the last previous release.
    let mut archive = Command::new("git")
        .args(["archive", &previous])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("git archive: {error}"))?;
    let unpacked = Command::new("tar")
        .args(["-x", "-m", "-C"])
        .arg(&source)
        .stdin(archive.stdout.take().ok_or("git archive: no output")?)
        .status()
        .map_err(|error| format!("tar: {error}"))?;
    let archived = archive.wait().map_err(|error| error.to_string())?;
    if !archived.success() || !unpacked.success() {
        return Err(format!(
            "unpacking {previous} failed (git archive {archived}, tar {unpacked})"
        ));
    }
    let target = std::fs::canonicalize(home)
        .map_err(|error| error.to_string())?
        .join("target");
    let mut build = Command::new("cargo");
    build
        .args([
            "build",
            "--locked",
            "-p",
            "smalltalk-server",
            "--bin",
            "smalltalk",
        ])
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", &target);
    run(&mut build).map_err(|error| format!("building {previous}: {error:#}"))?;
    std::fs::copy(target.join("debug/smalltalk"), &binary).map_err(|error| error.to_string())?;
    let _ = std::fs::remove_dir_all(&source);
    Ok((binary, previous))
}

/// Runs `cargo <args>` with the PostgreSQL URL exported, streaming output
/// and tallying contract tests (`<backend>::<suite>::<case>`).
fn run_tests(postgres: &Postgres, args: &[&str]) -> Result<Tally> {
    let mut command = Command::new("cargo");
    command.args(args).stdout(Stdio::piped());
    let required = std::env::var("SMALLTALK_REQUIRE_TOOLS").is_ok_and(|value| value == "1");
    let whole = args.contains(&"--workspace");
    let previous = if whole {
        previous_release()
    } else {
        Err(String::new())
    };
    match previous {
        Ok((binary, commit)) => {
            eprintln!(
                "previous release: {} (built from {commit}, the commit before the newest migration)",
                binary.display()
            );
            command
                .env(
                    "SMALLTALK_PREVIOUS_RELEASE",
                    std::fs::canonicalize(&binary)?,
                )
                .env("SMALLTALK_PREVIOUS_RELEASE_COMMIT", commit);
        }
        _ if !whole => {}
        Err(why) if required => {
            bail!("SMALLTALK_REQUIRE_TOOLS=1 but the previous release cannot be built: {why}")
        }
        Err(why) => eprintln!("previous release: none ({why}); the blue-green test is skipped"),
    }
    match postgres {
        Postgres::Available(url) => {
            // PostgreSQL tests are `#[ignore = "needs PostgreSQL ..."]`, so
            // a plain `cargo test` without a server shows them as skipped;
            // with one they run here.
            command
                .args(["--", "--include-ignored"])
                .env("SMALLTALK_TEST_POSTGRES_URL", url);
        }
        Postgres::Unavailable(_) => {
            command.env_remove("SMALLTALK_TEST_POSTGRES_URL");
        }
    }
    eprintln!("$ {}", describe(&command));
    let mut child = command.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut tally = Tally::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((backend, suite, passed)) = contract_result(&line) {
            let entry = tally
                .entry((backend.to_owned(), suite.to_owned()))
                .or_default();
            if passed {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(tally)
}

/// Parses `test <backend>::<suite>::<case> ... ok|FAILED` lines (an
/// `ignored` case, skipped, is not counted).
fn contract_result(line: &str) -> Option<(&str, &str, bool)> {
    let (name, outcome) = line.strip_prefix("test ")?.split_once(" ... ")?;
    let mut parts = name.split("::");
    let (backend, suite, _case) = (parts.next()?, parts.next()?, parts.next()?);
    // Exactly three parts: a unit test such as `sqlite::pool::tests::x` is
    // not a contract case.
    let contract = parts.next().is_none()
        && BACKENDS.contains(&backend)
        && suite != "tests"
        && !outcome.starts_with("ignored");
    contract.then_some((backend, suite, outcome.starts_with("ok")))
}

fn print_contract_table(tally: &Tally, postgres: &Postgres) {
    println!();
    println!("contract suites per backend");
    println!("{:<10} {:<10} {:<8} detail", "backend", "suite", "status");
    let suites: Vec<&String> = {
        let mut suites: Vec<&String> = tally.keys().map(|(_, suite)| suite).collect();
        suites.sort();
        suites.dedup();
        suites
    };
    for backend in BACKENDS {
        for suite in &suites {
            let key = (backend.to_owned(), (*suite).clone());
            let (status, detail) = match (tally.get(&key), backend, postgres) {
                (_, "postgres", Postgres::Unavailable(why)) => ("skipped", why.clone()),
                (Some((passed, 0)), _, _) => ("ran", format!("{passed} passed")),
                (Some((passed, failed)), _, _) => {
                    ("FAILED", format!("{passed} passed, {failed} failed"))
                }
                (None, _, _) => ("missing", "no tests found for this backend".to_owned()),
            };
            println!("{backend:<10} {suite:<10} {status:<8} {detail}");
        }
    }
    if let Postgres::Available(url) = postgres {
        println!("postgres: {}", redact(url));
    }
}

/// Hides a password in a URL.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_lines_are_recognised() {
        assert_eq!(
            contract_result("test sqlite::sessions::stats ... ok"),
            Some(("sqlite", "sessions", true))
        );
        assert_eq!(
            contract_result("test postgres::kv::ttl ... FAILED"),
            Some(("postgres", "kv", false))
        );
        assert_eq!(contract_result("test sqlite::tests::x ... ok"), None);
        assert_eq!(contract_result("test sqlite::pool::tests::x ... ok"), None);
        assert_eq!(
            contract_result("test postgres::kv::ttl ... ignored, needs PostgreSQL"),
            None
        );
        assert_eq!(contract_result("test other::a::b ... ok"), None);
        assert_eq!(contract_result("running 3 tests"), None);
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
