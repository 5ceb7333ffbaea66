//! A circuit breaker: after `threshold` consecutive failures, calls fail at once (no network)
//! for a cool-down; then one probe goes through, and its success closes the breaker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

/// Leave to make one call; report its outcome with [`Breaker::record`]. Dropping it unreported
/// (the caller gave up) frees the probe slot without counting anything.
#[derive(Debug)]
pub(crate) struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

/// Why the breaker refused a call.
#[derive(Debug)]
pub(crate) struct Open {
    pub(crate) failures: u32,
    pub(crate) retry_in: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    pub(crate) fn enter(&self) -> Result<Pass<'_>, Open> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Pass { breaker: self, probe: false });
        }
        let now = self.now();
        let open = || Open {
            failures: self.failures.load(Ordering::Relaxed),
            retry_in: Duration::from_nanos(until.saturating_sub(now)),
        };
        if now < until {
            return Err(open());
        }
        // Cool-down over: let exactly one call through to probe.
        match self.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(Pass { breaker: self, probe: true }),
            Err(_) => Err(open()),
        }
    }

    pub(crate) fn record(&self, pass: Pass<'_>, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Release);
            if self.open_until.swap(0, Ordering::AcqRel) != 0 {
                tracing::info!("tollgate-redis: Redis answers again; circuit breaker closed");
            }
        } else {
            let failures = self.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
            if failures >= self.threshold {
                let cooldown = u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX);
                let was = self.open_until.swap(self.now().saturating_add(cooldown), Ordering::AcqRel);
                if was == 0 {
                    tracing::warn!(
                        failures,
                        cooldown = ?self.cooldown,
                        "tollgate-redis: circuit breaker opened; failing fast until a probe succeeds"
                    );
                }
            }
        }
        drop(pass); // frees the probe slot
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_on_a_good_probe() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            let p = b.enter().unwrap();
            b.record(p, false);
        }
        assert!(!b.is_open());
        let p = b.enter().unwrap();
        b.record(p, false);
        assert!(b.is_open());
        assert!(b.enter().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.enter().unwrap();
        assert!(b.enter().is_err(), "one probe at a time");
        b.record(probe, true);
        assert!(!b.is_open());
        assert!(b.enter().is_ok());
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_probe_frees_its_slot() {
        let b = Breaker::new(1, Duration::from_millis(10));
        let p = b.enter().unwrap();
        b.record(p, false);
        std::thread::sleep(Duration::from_millis(15));
        drop(b.enter().unwrap());
        let probe = b.enter().unwrap();
        b.record(probe, false);
        assert!(b.enter().is_err());
    }
}
