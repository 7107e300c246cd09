//! Criterion benchmarks of the storage backends: save, get and append with
//! 1 KB, 10 KB and 500 KB sessions (shapes in `smalltalk_benches`).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smalltalk_benches::{
    SIZES, backends, create, messages, session_with_history, session_with_state,
};
use smalltalk_storage::{AppendGuard, Expected};

fn storage(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stores = runtime.block_on(backends());
    for bench_store in &stores {
        let store = Arc::clone(&bench_store.store);
        let mut group = c.benchmark_group(format!("storage/{}", bench_store.name));
        for (label, bytes) in SIZES {
            group.throughput(Throughput::Bytes(bytes as u64));
            let session = session_with_state(bytes);
            let mut version = runtime.block_on(create(store.as_ref(), &session));
            group.bench_function(BenchmarkId::new("save", label), |b| {
                b.to_async(&runtime).iter(|| {
                    let (store, session) = (Arc::clone(&store), session.clone());
                    let expected = version;
                    version += 1;
                    async move {
                        store
                            .save_session(&session, Expected::Version(expected))
                            .await
                            .expect("save")
                    }
                });
            });
            let session = session_with_history(bytes);
            runtime.block_on(create(store.as_ref(), &session));
            group.bench_function(BenchmarkId::new("get", label), |b| {
                b.to_async(&runtime).iter(|| {
                    let store = Arc::clone(&store);
                    async move {
                        store
                            .get_session(session.id)
                            .await
                            .expect("get")
                            .expect("present")
                    }
                });
            });
        }
        group.throughput(Throughput::Bytes(1024));
        let session = session_with_history(100 * 1024);
        runtime.block_on(create(store.as_ref(), &session));
        let message = messages(1, 1024).remove(0);
        group.bench_function("append", |b| {
            b.to_async(&runtime).iter(|| {
                let (store, message) = (Arc::clone(&store), message.clone());
                async move {
                    store
                        .append_messages(session.id, &[message], AppendGuard::NONE)
                        .await
                        .expect("append")
                }
            });
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = storage
}
criterion_main!(benches);
