//! The store conformance suite (feature `testing`): every [`Store`] must give the same decisions
//! as [`MemoryStore`] for the same quotas, keys, costs and clock steps, and meet the explicit
//! expectations below. Run it from a store's tests:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tollgate::{MemoryStore, testing};
//! testing::conformance(|clock| MemoryStore::builder().clock(clock).build()).await;
//! # });
//! ```
//!
//! The factory is called once per scenario with a fresh [`ManualClock`] (starting at a non-zero
//! time); the store must read time from it. Policy and limit names are unique per scenario, so a
//! shared server needs no flushing between them. Clock steps are whole milliseconds and every
//! quota's emission interval is a whole number of microseconds, so a store with microsecond
//! resolution can match exactly.

use std::time::Duration;

use crate::algorithm::{Algorithm, Snapshot};
use crate::clock::{Clock, ManualClock};
use crate::key::Key;
use crate::quota::Quota;
use crate::store::{Check, LimitSpec, MemoryStore, Store};

const ALGORITHMS: [Algorithm; 4] =
    [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::SlidingLog, Algorithm::FixedWindow];

fn quota(text: &str) -> Quota {
    match text.parse() {
        Ok(q) => q,
        Err(e) => panic!("conformance quota {text}: {e}"),
    }
}

/// A clock far from zero, as a real one would be.
const START: u64 = 1_700_000_000_123_000_000;

struct Pair<S: Store> {
    store: S,
    reference: MemoryStore,
    clock: ManualClock,
    scenario: String,
}

impl<S: Store> Pair<S> {
    fn new(make: &mut impl FnMut(ManualClock) -> S, scenario: String) -> Self {
        let clock = ManualClock::at(START);
        let store = make(clock.clone());
        let reference = MemoryStore::builder().clock(clock.clone()).build();
        Self { store, reference, clock, scenario }
    }

    fn register(&self, name: &str, algorithm: Algorithm) -> (S::Limit, <MemoryStore as Store>::Limit) {
        let spec = LimitSpec { name: name.to_owned(), policy: self.scenario.clone(), algorithm };
        let a = self.store.register(&spec).unwrap_or_else(|e| panic!("{}: register: {e}", self.scenario));
        let b = self.reference.register(&spec).unwrap_or_else(|e| panic!("{}: register: {e}", self.scenario));
        (a, b)
    }

    /// Checks a batch on both stores; asserts they agree and returns the store's standing.
    async fn check(
        &self,
        limits: &[&(S::Limit, <MemoryStore as Store>::Limit)],
        items: &[(Key<'_>, Quota, u32, Duration)],
        step: &str,
    ) -> (bool, Vec<Snapshot>) {
        let checks: Vec<Check<'_, S::Limit>> = limits
            .iter()
            .zip(items)
            .map(|(l, &(key, quota, cost, max_wait))| Check { limit: &l.0, key, quota, cost, max_wait })
            .collect();
        let refs: Vec<Check<'_, _>> = limits
            .iter()
            .zip(items)
            .map(|(l, &(key, quota, cost, max_wait))| Check { limit: &l.1, key, quota, cost, max_wait })
            .collect();
        let mut out = vec![Snapshot::EMPTY; checks.len()];
        let mut expected = vec![Snapshot::EMPTY; checks.len()];
        let all = match self.store.check(&checks, &mut out).await {
            Ok(all) => all,
            Err(e) => panic!("{} / {step}: the store failed: {e}", self.scenario),
        };
        let want = self.reference.check_now(&refs, &mut expected);
        assert_eq!(
            (all, &out),
            (want, &expected),
            "{} / {step} at +{}ms: the store (left) disagrees with the in-memory reference (right)",
            self.scenario,
            (self.clock.now() - START) / 1_000_000
        );
        (all, out)
    }

    async fn block(&self, limit: &(S::Limit, <MemoryStore as Store>::Limit), key: Key<'_>, d: Duration) {
        if let Err(e) = self.store.block(&limit.0, key, d).await {
            panic!("{}: block: {e}", self.scenario);
        }
        if let Err(e) = self.reference.block(&limit.1, key, d).await {
            panic!("{}: reference block: {e}", self.scenario);
        }
    }

    async fn unblock(&self, limit: &(S::Limit, <MemoryStore as Store>::Limit), key: Key<'_>) {
        if let Err(e) = self.store.unblock(&limit.0, key).await {
            panic!("{}: unblock: {e}", self.scenario);
        }
        if let Err(e) = self.reference.unblock(&limit.1, key).await {
            panic!("{}: reference unblock: {e}", self.scenario);
        }
    }

    fn advance_ms(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }
}

/// A small deterministic generator, so every run replays the same sequence.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Runs every scenario against stores made by `make`. Panics, naming the scenario and step, at
/// the first disagreement.
pub async fn conformance<S: Store>(mut make: impl FnMut(ManualClock) -> S) {
    let run = START / 1_000_000 % 1_000_000 + u64::from(std::process::id());
    for algorithm in ALGORITHMS {
        burst_then_refuse(&mut make, algorithm, run).await;
        random_sequence(&mut make, algorithm, run).await;
        all_or_nothing(&mut make, algorithm, run).await;
        delays_across_limits(&mut make, algorithm, run).await;
        penalty_block(&mut make, algorithm, run).await;
        hostile_keys(&mut make, algorithm, run).await;
    }
}

async fn burst_then_refuse<S: Store>(make: &mut impl FnMut(ManualClock) -> S, algorithm: Algorithm, run: u64) {
    let p = Pair::new(make, format!("conf-{run}-burst-{}", algorithm.name()));
    let l = p.register("per_key", algorithm);
    let q = quota("5/s");
    let key = Key::Text("client-a");
    for i in 0..5 {
        let (all, _) = p.check(&[&l], &[(key, q, 1, Duration::ZERO)], &format!("request {i}")).await;
        assert!(all, "{}: request {i} of the burst must pass", p.scenario);
    }
    let (all, out) = p.check(&[&l], &[(key, q, 1, Duration::ZERO)], "request 5").await;
    assert!(!all, "{}: the sixth request must be refused", p.scenario);
    assert!(!out[0].retry_after.is_zero(), "{}: a refusal carries a retry-after", p.scenario);
    assert_eq!(out[0].remaining, 0, "{}", p.scenario);
    p.advance_ms(u64::try_from(out[0].retry_after.as_millis()).unwrap_or(0) + 1);
    let (all, _) = p.check(&[&l], &[(key, q, 1, Duration::ZERO)], "after retry-after").await;
    assert!(all, "{}: a request after retry-after passes", p.scenario);
    let (all, _) = p.check(&[&l], &[(Key::Text("client-b"), q, 1, Duration::ZERO)], "other key").await;
    assert!(all, "{}: another key has its own quota", p.scenario);
}

async fn random_sequence<S: Store>(make: &mut impl FnMut(ManualClock) -> S, algorithm: Algorithm, run: u64) {
    let p = Pair::new(make, format!("conf-{run}-random-{}", algorithm.name()));
    let l = p.register("per_key", algorithm);
    let quotas = [quota("4/2s burst 6"), quota("10/s"), quota("100/10s burst 20")];
    let keys = [Key::Int(1), Key::Ip([10, 0, 0, 1].into()), Key::Bytes(b"k\xff")];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for step in 0..300 {
        p.advance_ms(rng.next(4) * rng.next(120));
        let k = rng.next(3) as usize;
        let q = quotas[k];
        let cost = 1 + rng.next(3) as u32;
        let max_wait = if rng.next(4) == 0 { Duration::from_millis(700) } else { Duration::ZERO };
        p.check(&[&l], &[(keys[k], q, cost, max_wait)], &format!("step {step}")).await;
    }
}

async fn all_or_nothing<S: Store>(make: &mut impl FnMut(ManualClock) -> S, algorithm: Algorithm, run: u64) {
    let p = Pair::new(make, format!("conf-{run}-aon-{}", algorithm.name()));
    let tight = p.register("tight", algorithm);
    let loose = p.register("loose", algorithm);
    let (qt, ql) = (quota("2/min"), quota("10/min"));
    let key = Key::Text("user:7");
    let batch = [(key, qt, 1, Duration::ZERO), (Key::Global, ql, 1, Duration::ZERO)];
    for i in 0..2 {
        let (all, _) = p.check(&[&tight, &loose], &batch, &format!("pass {i}")).await;
        assert!(all, "{}", p.scenario);
    }
    for i in 0..3 {
        let (all, out) = p.check(&[&tight, &loose], &batch, &format!("refused {i}")).await;
        assert!(!all && !out[0].allowed, "{}: the tight limit refuses", p.scenario);
    }
    // The refused checks took nothing from the loose limit: 8 of 10 remain.
    let (_, out) = p.check(&[&loose], &[(Key::Global, ql, 1, Duration::ZERO)], "loose alone").await;
    assert_eq!(out[0].remaining, 7, "{}: refused batches must not consume the loose limit", p.scenario);
}

/// Several limits of one client key, some that delay and one that rejects: the store must find
/// the same time for the request to go as the reference, and count it there in every limit.
/// (One client key: in a Redis Cluster every limit of a batch is then in one slot.)
async fn delays_across_limits<S: Store>(make: &mut impl FnMut(ManualClock) -> S, algorithm: Algorithm, run: u64) {
    let p = Pair::new(make, format!("conf-{run}-delays-{}", algorithm.name()));
    let tested = p.register("tested", algorithm);
    let rejecting = p.register("rejecting", Algorithm::Gcra);
    let log = p.register("log", Algorithm::SlidingLog);
    let (qa, qb, qc) = (quota("3/s"), quota("10/s burst 2"), quota("5/2s"));
    let keys = [Key::Text("client-a"), Key::Int(42)];
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let (mut delayed, mut refused) = (0, 0);
    for step in 0..300 {
        p.advance_ms(rng.next(3) * rng.next(150));
        let key = keys[rng.next(2) as usize];
        let cost = 1 + rng.next(2) as u32;
        let wait_a = Duration::from_millis(rng.next(3) * 400);
        let batch = [(key, qa, cost, wait_a), (key, qb, 1, Duration::ZERO), (key, qc, 1, Duration::from_millis(900))];
        let (all, out) = p.check(&[&tested, &rejecting, &log], &batch, &format!("step {step}")).await;
        delayed += usize::from(all && !out[0].wait.is_zero());
        refused += usize::from(!all);
    }
    assert!(delayed > 10 && refused > 10, "{}: {delayed} delayed, {refused} refused", p.scenario);
}

async fn penalty_block<S: Store>(make: &mut impl FnMut(ManualClock) -> S, algorithm: Algorithm, run: u64) {
    let p = Pair::new(make, format!("conf-{run}-penalty-{}", algorithm.name()));
    let l = p.register("per_key", algorithm);
    let q = quota("100/s");
    p.block(&l, Key::Int(9), Duration::from_secs(2)).await;
    let (all, out) = p.check(&[&l], &[(Key::Int(9), q, 1, Duration::ZERO)], "blocked").await;
    assert!(!all && out[0].blocked, "{}: a blocked key is refused with `blocked`", p.scenario);
    assert_eq!(out[0].retry_after, Duration::from_secs(2), "{}", p.scenario);
    let (all, _) = p.check(&[&l], &[(Key::Int(10), q, 1, Duration::ZERO)], "other key").await;
    assert!(all, "{}: blocks are per key", p.scenario);
    p.block(&l, Key::Int(9), Duration::from_millis(500)).await; // shorter: the longer block stays
    p.advance_ms(1_999);
    let (all, _) = p.check(&[&l], &[(Key::Int(9), q, 1, Duration::ZERO)], "still blocked").await;
    assert!(!all, "{}", p.scenario);
    p.advance_ms(1);
    let (all, _) = p.check(&[&l], &[(Key::Int(9), q, 1, Duration::ZERO)], "block over").await;
    assert!(all, "{}: the block ends on time", p.scenario);
    // An operator lifts a block (Store::unblock): the key's next check is its quota's alone.
    p.block(&l, Key::Int(11), Duration::from_secs(600)).await;
    let (all, _) = p.check(&[&l], &[(Key::Int(11), q, 1, Duration::ZERO)], "blocked for 10 min").await;
    assert!(!all, "{}", p.scenario);
    p.unblock(&l, Key::Int(11)).await;
    let (all, _) = p.check(&[&l], &[(Key::Int(11), q, 1, Duration::ZERO)], "block lifted").await;
    assert!(all, "{}: a lifted block refuses no more", p.scenario);
    p.unblock(&l, Key::Int(12)).await;
    let (all, _) = p.check(&[&l], &[(Key::Int(12), q, 1, Duration::ZERO)], "nothing to lift").await;
    assert!(all, "{}: lifting no block changes nothing", p.scenario);
}

async fn hostile_keys<S: Store>(make: &mut impl FnMut(ManualClock) -> S, algorithm: Algorithm, run: u64) {
    let p = Pair::new(make, format!("conf-{run}-keys-{}", algorithm.name()));
    let l = p.register("per_key", algorithm);
    let q = quota("1/min");
    let long = "x".repeat(10_000);
    let keys = [
        Key::Text("a}b{c"),
        Key::Bytes(b"a}b{c"),
        Key::Text("{tag}:\r\n*"),
        Key::Bytes(b"\xff\xfe\x00"),
        Key::Text(""),
        Key::Text(&long),
        Key::Int(0),
        Key::Text("0"),
        Key::Global,
    ];
    for (i, k) in keys.iter().enumerate() {
        let (all, _) = p.check(&[&l], &[(*k, q, 1, Duration::ZERO)], &format!("key {i} first")).await;
        assert!(all, "{}: key {i} is distinct from every other key", p.scenario);
    }
    for (i, k) in keys.iter().enumerate() {
        let (all, _) = p.check(&[&l], &[(*k, q, 1, Duration::ZERO)], &format!("key {i} second")).await;
        assert!(!all, "{}: key {i} was counted", p.scenario);
    }
}
