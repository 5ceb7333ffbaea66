//! What a tracked key costs when a client picks it: 3,000 distinct long header values (8 KB
//! each; `KEY_MEMORY_VALUE=102400` for 100 KB), each tracked by a header-keyed limit, a
//! concurrency limit and a WebSocket per-key limit, must cost a few dozen bytes each, not their
//! length (issue 22, item 2). Heap bytes are counted by an instrumented global allocator, so this
//! binary holds one test; it prints the figures:
//! `cargo test --release -p tollgate --test key_memory -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::alloc::System;
use std::sync::Arc;

use http::HeaderMap;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tollgate::key::MAX_KEY_BYTES;
use tollgate::websocket::{MessageGate, MessageKind, MessageLimits, Verdict};
use tollgate::{ConcurrencyLimiter, Key, KeyKind, Limit, MemoryStore, Policy, RequestKeys};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEYS: usize = 3_000;

/// The length of each client's header value.
fn value_len() -> usize {
    std::env::var("KEY_MEMORY_VALUE").ok().and_then(|v| v.parse().ok()).unwrap_or(8 * 1024).max(16)
}

/// The `i`th client's header value, distinct from every other.
fn value(i: usize) -> String {
    let mut v = format!("{i:08}");
    v.push_str(&"k".repeat(value_len() - v.len()));
    v
}

/// Heap bytes still held after `fill` per key, the values themselves made and freed inside.
fn retained_per_key(fill: impl FnOnce()) -> f64 {
    let region = Region::new(GLOBAL);
    fill();
    let change = region.change();
    (change.bytes_allocated as f64 - change.bytes_deallocated as f64) / KEYS as f64
}

#[test]
fn a_client_chosen_key_costs_bytes_not_its_length() {
    let name = http::HeaderName::from_static("x-api-key");
    let store = MemoryStore::builder().max_keys(10_000).build();
    let policy = Policy::builder("api")
        .limit(Limit::new("per_key", "10/min".parse().unwrap()).key(KeyKind::Header(name.clone())))
        .build_with(store)
        .unwrap();
    // Warm up what is made once (the store's shards, interned names).
    let _ = policy.try_check_now(&RequestKeys::default(), 1);

    let policy_bytes = retained_per_key(|| {
        for i in 0..KEYS {
            let mut headers = HeaderMap::new();
            headers.insert(&name, value(i).parse().unwrap());
            let keys = RequestKeys { headers: Some(&headers), ..RequestKeys::default() };
            assert!(policy.try_check_now(&keys, 1).unwrap().unwrap().allowed);
        }
    });

    let limiter = ConcurrencyLimiter::new("in_flight").per_key(1);
    let mut leases = Vec::with_capacity(KEYS);
    let lease_bytes = retained_per_key(|| {
        for i in 0..KEYS {
            let v = value(i);
            leases.push(limiter.try_acquire(Key::Bytes(v.as_bytes()).bounded()).unwrap());
        }
    });
    // The same client's long value is one key: its second lease is refused.
    assert!(limiter.try_acquire(Key::Bytes(value(7).as_bytes())).is_err());

    let limits = Arc::new(MessageLimits::new().per_key_messages("100/min".parse().unwrap()));
    let mut gates = Vec::with_capacity(KEYS);
    let gate_bytes = retained_per_key(|| {
        for i in 0..KEYS {
            let v = value(i);
            let mut gate = MessageGate::new(Arc::clone(&limits)).with_key(Key::Bytes(v.as_bytes()).to_owned_key());
            assert_eq!(gate.check(MessageKind::Text, 2, Some("hi")), Verdict::Allow);
            gates.push(gate);
        }
    });

    eprintln!(
        "bytes per tracked key, {KEYS} keys of {} B: policy {policy_bytes:.0}, concurrency {lease_bytes:.0}, \
         WebSocket per-key {gate_bytes:.0} (keys over {MAX_KEY_BYTES} B are kept as a 16-byte digest)",
        value_len()
    );
    for (what, bytes) in [("policy", policy_bytes), ("concurrency", lease_bytes), ("websocket", gate_bytes)] {
        assert!(bytes < 400.0, "{what}: {bytes:.0} bytes per key");
    }
}
