//! Criterion benchmarks of group conversations: speaker selection among
//! 10 agents by round-robin, priority (SC-013) and an LLM answering at
//! once on 127.0.0.1 (everything but the model), and a round of 10 turns
//! with the commit at every turn boundary on each backend (SC-012). Shapes
//! as in `smalltalk_benches::groups`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use smalltalk_benches::groups::{group, local_llm, manager};
use smalltalk_benches::{BACKENDS, fresh_store};
use smalltalk_e2e::mock_llm::MockLlm;
use smalltalk_groups::Strategy;
use smalltalk_storage::Store;

fn selection(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Arc<dyn Store> = Arc::new(smalltalk_storage::MemoryStore::new());
    let server = runtime.block_on(MockLlm::start()).expect("local server");
    let groups = manager(store, 10, Some(local_llm(server.base_url())));
    let mut bench = c.benchmark_group("groups/select_10_agents");
    for (name, strategy) in [
        ("round_robin", Strategy::RoundRobin),
        ("priority", Strategy::Priority),
        ("llm_overhead", Strategy::LlmBased),
    ] {
        let id = runtime.block_on(group(&groups, 10, strategy, 10));
        bench.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                groups
                    .select_speaker(id)
                    .await
                    .expect("select")
                    .expect("someone may speak")
            });
        });
    }
    bench.finish();
}

fn rounds(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for name in BACKENDS {
        let Some(bench_store) = runtime.block_on(fresh_store(name)) else {
            continue;
        };
        let groups = manager(Arc::clone(&bench_store.store), 3, None);
        let id = runtime.block_on(group(&groups, 3, Strategy::RoundRobin, 10));
        let mut bench = c.benchmark_group(format!("groups/{name}"));
        bench.bench_function("round_of_10_turns", |b| {
            b.to_async(&runtime)
                .iter(|| async { groups.handle_message(id, "go").await.expect("round") });
        });
        bench.finish();
    }
}

criterion_group!(benches, selection, rounds);
criterion_main!(benches);
