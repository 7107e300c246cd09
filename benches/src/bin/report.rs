//! The success-criteria report: measures every criterion of SPEC.md that
//! has landed, on every backend available, and prints a table, or with
//! `--json` one JSON document on stdout (progress goes to stderr).
//! `--quick` takes fewer samples. See `../shared/REPORT.md` for the format.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use smalltalk_benches::{
    BACKENDS, SIZES, Samples, create, fresh_store, messages, session_with_history,
    session_with_state,
};
use smalltalk_storage::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use smalltalk_storage::{Expected, SessionStore, StoreAdmin};

/// One row of the report.
struct Row {
    id: &'static str,
    backend: &'static str,
    metric: String,
    value: f64,
    unit: &'static str,
    target: Option<f64>,
    samples: usize,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn latency_rows(
    rows: &mut Vec<Row>,
    backend: &'static str,
    name: &str,
    samples: &Samples,
    target_p95: Option<f64>,
) {
    for (stat, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0)] {
        rows.push(Row {
            id: "STORAGE",
            backend,
            metric: format!("{name}_{stat}"),
            value: ms(samples.percentile(p)),
            unit: "ms",
            target: if stat == "p95" { target_p95 } else { None },
            samples: samples.len(),
        });
    }
}

/// Our SQLite targets from SPEC.md; other backends have none.
fn target(backend: &str, metric: &str) -> Option<f64> {
    if backend != "sqlite" {
        return None;
    }
    match metric {
        "save_1kb" | "save_10kb" => Some(0.2),
        "get_500kb" => Some(1.0),
        "append" => Some(0.2),
        _ => None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // Measure from a runtime worker, where applications call from; the
    // `block_on` thread would hide costs that workers pay.
    tokio::spawn(report()).await?
}

async fn report() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json_output = args.iter().any(|arg| arg == "--json");
    let quick = args.iter().any(|arg| arg == "--quick");
    let (warmup, count) = if quick { (20, 200) } else { (100, 2000) };

    let mut rows = Vec::new();
    // SQLite with synchronous=FULL (durable across power loss).
    for (label, bytes) in SIZES.into_iter().take(2) {
        let dir = tempfile::tempdir()?;
        let options = SqliteOptions {
            synchronous: Synchronous::Full,
            ..Default::default()
        };
        let store = Arc::new(SqliteStore::open_with(dir.path().join("full.db"), options).await?);
        eprintln!("measuring save {label} on sqlite with synchronous=full ({count} samples)");
        let session = session_with_state(bytes);
        let mut version = create(store.as_ref(), &session).await;
        let samples = Samples::collect(warmup, count, || {
            let (store, session) = (Arc::clone(&store), session.clone());
            let expected = version;
            version += 1;
            async move {
                store
                    .save_session(&session, Expected::Version(expected))
                    .await
                    .expect("save");
            }
        })
        .await;
        let name = format!("save_{label}_full");
        latency_rows(&mut rows, "sqlite", &name, &samples, Some(0.3));
        store.close().await?;
    }
    // Backend by backend, each row on a fresh store: background work one
    // measurement leaves behind (WAL checkpoints, PostgreSQL's writer and
    // autovacuum) must not bill the next, on a machine with two cores.
    for name in BACKENDS {
        for (label, bytes) in SIZES {
            let Some(bench_store) = fresh_store(name).await else {
                continue;
            };
            let (store, backend) = (Arc::clone(&bench_store.store), bench_store.name);
            eprintln!("measuring save {label} on {backend} ({count} samples)");
            let session = session_with_state(bytes);
            let mut version = create(store.as_ref(), &session).await;
            let samples = Samples::collect(warmup, count, || {
                let (store, session) = (Arc::clone(&store), session.clone());
                let expected = version;
                version += 1;
                async move {
                    store
                        .save_session(&session, Expected::Version(expected))
                        .await
                        .expect("save");
                }
            })
            .await;
            let name = format!("save_{label}");
            latency_rows(&mut rows, backend, &name, &samples, target(backend, &name));
            store.close().await?;

            let Some(bench_store) = fresh_store(backend).await else {
                continue;
            };
            let store = Arc::clone(&bench_store.store);
            eprintln!("measuring get {label} on {backend} ({count} samples)");
            let session = session_with_history(bytes);
            create(store.as_ref(), &session).await;
            let samples = Samples::collect(warmup, count, || {
                let store = Arc::clone(&store);
                async move {
                    store
                        .get_session(session.id)
                        .await
                        .expect("get")
                        .expect("present");
                }
            })
            .await;
            let name = format!("get_{label}");
            latency_rows(&mut rows, backend, &name, &samples, target(backend, &name));
            store.close().await?;
        }
        let Some(bench_store) = fresh_store(name).await else {
            continue;
        };
        let (store, backend) = (Arc::clone(&bench_store.store), bench_store.name);
        eprintln!("measuring append on {backend} ({count} samples)");
        let session = session_with_history(100 * 1024);
        create(store.as_ref(), &session).await;
        let message = messages(1, 1024).remove(0);
        let samples = Samples::collect(warmup, count, || {
            let (store, message) = (Arc::clone(&store), message.clone());
            async move {
                store
                    .append_messages(session.id, &[message], None)
                    .await
                    .expect("append");
            }
        })
        .await;
        latency_rows(
            &mut rows,
            backend,
            "append",
            &samples,
            target(backend, "append"),
        );
        store.close().await?;
    }
    let rank = |backend: &str| {
        ["memory", "sqlite", "postgres"]
            .iter()
            .position(|name| *name == backend)
    };
    rows.sort_by(|a, b| (rank(a.backend), &a.metric).cmp(&(rank(b.backend), &b.metric)));

    if json_output {
        let results: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "id": row.id, "backend": row.backend, "metric": row.metric,
                    "value": (row.value * 1000.0).round() / 1000.0, "unit": row.unit,
                    "target": row.target, "samples": row.samples,
                })
            })
            .collect();
        let document = json!({
            "machine": {
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "os": std::env::consts::OS,
            },
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!(
            "{:<10} {:<9} {:<20} {:>10} {:<5} {:>8}  verdict",
            "id", "backend", "metric", "value", "unit", "target"
        );
        for row in &rows {
            let (target, verdict) = match row.target {
                Some(target) if row.value <= target => (format!("{target}"), "meets"),
                Some(target) => (format!("{target}"), "MISSES"),
                None => ("-".to_owned(), ""),
            };
            println!(
                "{:<10} {:<9} {:<20} {:>10.3} {:<5} {:>8}  {verdict}",
                row.id, row.backend, row.metric, row.value, row.unit, target
            );
        }
    }
    Ok(())
}
