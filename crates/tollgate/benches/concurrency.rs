//! Concurrency leases, taken and given back, against tokio's `Semaphore` (what
//! `tower::limit::ConcurrencyLimit` is built on), case by case in one run.
//!
//! Run with: `cargo bench -p tollgate --bench concurrency`
//!
//! Every case takes a place and gives it back at once, under a cap never reached: the allow path.
//! `adaptive` also records the request's latency (a clock read and three atomic additions; a
//! measuring window closes every 100 ms).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::concurrency::Outcome;
use tollgate::{AdaptiveLimit, ConcurrencyLimiter, Key};

fn leases(c: &mut Criterion) {
    let mut group = c.benchmark_group("lease");

    let semaphore = Arc::new(tokio::sync::Semaphore::new(1_000));
    group.bench_function("tokio_semaphore", |b| {
        b.iter(|| drop(black_box(Arc::clone(&semaphore).try_acquire_owned().unwrap())));
    });

    let global = ConcurrencyLimiter::new("global").global(1_000);
    group.bench_function("global", |b| b.iter(|| drop(black_box(global.try_acquire(Key::Global).unwrap()))));

    let per_key = ConcurrencyLimiter::new("per_key").per_key(4);
    let mut i = 0u64;
    group.bench_function("per_key_among_1000", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000;
            drop(black_box(per_key.try_acquire(Key::Int(i)).unwrap()));
        });
    });

    for (name, limit) in [
        ("adaptive_gradient", AdaptiveLimit::gradient().bounds(1_000, 1_000).build().unwrap()),
        ("adaptive_aimd", AdaptiveLimit::aimd(std::time::Duration::from_secs(1)).bounds(1_000, 1_000).build().unwrap()),
    ] {
        let adaptive = ConcurrencyLimiter::new(name).adaptive(limit);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut lease = adaptive.try_acquire(Key::Global).unwrap();
                lease.record(Outcome::Succeeded);
                drop(black_box(lease));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, leases);
criterion_main!(benches);
