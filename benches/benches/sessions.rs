//! Criterion benchmarks of the session manager on every backend: restore of
//! a 100-message / 500 KB session (SC-007), saving a 10 KB agent state
//! (SC-009), appending a message, and creating with 10,000 sessions present
//! (SC-020). Shapes as in `smalltalk_benches::sessions`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use smalltalk_benches::sessions::manager;
use smalltalk_benches::{BACKENDS, filler, fresh_store, messages};
use smalltalk_session::CreateOptions;
use smalltalk_types::{AgentId, AgentState, Timestamp};

fn sessions(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for name in BACKENDS {
        let Some(bench_store) = runtime.block_on(fresh_store(name)) else {
            continue;
        };
        let sessions = manager(bench_store.store.clone(), 10_000_000);
        let mut group = c.benchmark_group(format!("sessions/{name}"));

        let session = runtime.block_on(async {
            let session = sessions
                .create(CreateOptions::default())
                .await
                .expect("create");
            sessions
                .add_messages(session.id, &messages(100, 5 * 1024))
                .await
                .expect("append");
            session
        });
        group.bench_function("restore_100msg_500kb", |b| {
            b.to_async(&runtime)
                .iter(|| async { sessions.restore(session.id).await.expect("restore") });
        });

        let mut state =
            AgentState::new(AgentId::parse("agent-1").expect("valid"), Timestamp::now());
        state
            .context
            .insert("notes".into(), filler(10 * 1024).into());
        group.bench_function("save_agent_state_10kb", |b| {
            b.to_async(&runtime).iter(|| async {
                sessions
                    .update_agent_state(session.id, state.clone())
                    .await
                    .expect("state")
            });
        });

        let message = messages(1, 1024).remove(0);
        group.bench_function("add_message_1kb", |b| {
            b.to_async(&runtime).iter(|| async {
                sessions
                    .add_message(session.id, message.clone())
                    .await
                    .expect("append")
            });
        });

        runtime.block_on(async {
            for _ in 0..10_000 {
                sessions
                    .create(CreateOptions::default())
                    .await
                    .expect("create");
            }
        });
        group.bench_function("create_with_10000_sessions", |b| {
            b.to_async(&runtime).iter(|| async {
                sessions
                    .create(CreateOptions::default())
                    .await
                    .expect("create")
            });
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = sessions
}
criterion_main!(benches);
