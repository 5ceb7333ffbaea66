//! The in-memory store's all-or-nothing batches when a concurrent check moves a window on
//! between a batch's clock reading and its commit, with a clock that holds a thread there (as any
//! thread may be preempted): a refused batch keeps nothing and frees no room it did not take.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate::{Algorithm, Check, Clock, Key, LimitSpec, MemoryStore, Quota, Snapshot, Store};

fn q(s: &str) -> Quota {
    s.parse().unwrap()
}

thread_local! {
    static GATED: Cell<bool> = const { Cell::new(false) };
}

/// A clock whose reading on a "gated" thread returns at once the time it read, then holds that
/// thread until told to go: the thread read the clock, and was preempted before taking any lock
/// (as any thread may be). Readings never go backwards.
struct GatedClock {
    now: AtomicU64,
    reached: Mutex<Sender<()>>,
    go: Mutex<Receiver<()>>,
}

impl Clock for GatedClock {
    fn now(&self) -> u64 {
        let t = self.now.load(Ordering::SeqCst);
        if GATED.with(|g| g.replace(false)) {
            self.reached.lock().unwrap().send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
        }
        t
    }
}

/// Window boundaries are multiples of the period: t0 is 1 ms before one, t1 0.5 ms after it.
const T0: u64 = 1_700_000_000_999_000_000;
const T1: u64 = T0 + 1_500_000;

struct Race {
    clock: Arc<GatedClock>,
    store: MemoryStore,
    limit: tollgate::store::MemoryLimit,
    go: Sender<()>,
    reached: Receiver<()>,
}

fn race(algorithm: Algorithm) -> Race {
    let (reached_tx, reached) = channel();
    let (go, go_rx) = channel();
    let clock =
        Arc::new(GatedClock { now: AtomicU64::new(T0), reached: Mutex::new(reached_tx), go: Mutex::new(go_rx) });
    let store = MemoryStore::builder().clock(Arc::clone(&clock)).build();
    let spec = LimitSpec { name: "l".into(), policy: "race".into(), algorithm };
    let limit = store.register(&spec).unwrap();
    Race { clock, store, limit, go, reached }
}

fn check<'a>(
    limit: &'a tollgate::store::MemoryLimit,
    quota: Quota,
    cost: u32,
    max_wait: Duration,
) -> Check<'a, tollgate::store::MemoryLimit> {
    Check { limit, key: Key::Text("k"), quota, cost, max_wait }
}

/// Thread A reads the clock at t0 (just before a window ends) and is preempted; thread B reads
/// it at t1 (the next window) and commits `b_cost`; then A's batch (one key twice, so that its
/// second commit loses to its first after both peeks passed, the path that refunds) is refused
/// and refunded. Returns whether A's batch passed.
fn interleave(r: &Race, quota: Quota, b_cost: u32, a: [(u32, Duration); 2]) -> bool {
    std::thread::scope(|s| {
        let (store, limit) = (&r.store, &r.limit);
        let a_thread = s.spawn(move || {
            GATED.with(|g| g.set(true));
            let checks = [check(limit, quota, a[0].0, a[0].1), check(limit, quota, a[1].0, a[1].1)];
            let mut out = [Snapshot::EMPTY; 2];
            store.check_now(&checks, &mut out)
        });
        r.reached.recv().unwrap(); // A holds t0
        r.clock.now.store(T1, Ordering::SeqCst);
        let mut out = [Snapshot::EMPTY];
        assert!(r.store.check_now(&[check(&r.limit, quota, b_cost, Duration::ZERO)], &mut out), "B at t1");
        r.go.send(()).unwrap();
        a_thread.join().unwrap()
    })
}

/// Fixed window, 3/s: B took 1 in the new window; A's refused batch must leave it so (2 more
/// fit). A's commit counted in the new window (the state had moved on before A's lock), and its
/// refund finds it there.
#[test]
fn a_refused_batch_keeps_nothing_when_the_window_moved_on_before_its_commit() {
    let r = race(Algorithm::FixedWindow);
    let quota = q("3/s");
    assert!(!interleave(&r, quota, 1, [(1, Duration::ZERO), (2, Duration::ZERO)]), "A's batch is refused");
    let mut out = [Snapshot::EMPTY];
    let passed = r.store.check_now(&[check(&r.limit, quota, 2, Duration::ZERO)], &mut out);
    assert!(passed, "B's 1 + 2 = 3 fit in 3/s, but A's refused batch kept a unit: {out:?}");
}

/// Fixed and sliding window, 2/s with the delay action: B took both units of the new window; A's
/// delayed commit went to the window after, and its refund takes the unit from there, not from
/// the current window (which would admit a third request at once in a window of 2).
#[test]
fn a_refund_of_a_delayed_commit_frees_no_room_in_the_current_window() {
    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        let r = race(algorithm);
        let quota = q("2/s");
        let wait = Duration::from_secs(5);
        assert!(!interleave(&r, quota, 2, [(1, wait), (2, wait)]), "{algorithm:?}: A's batch is refused");
        let mut out = [Snapshot::EMPTY];
        let passed = r.store.check_now(&[check(&r.limit, quota, 1, Duration::ZERO)], &mut out);
        assert!(!passed, "{algorithm:?}: a third request admitted at once in a window of 2/s: {out:?}");
    }
}
