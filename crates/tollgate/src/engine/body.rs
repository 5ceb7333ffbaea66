//! A body's bytes charged while it streams: the [`BodyCharge`] of a request admitted before its
//! body's length was known, and the [`BodyCounter`] every adapter counts a streaming body with.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::StatusCode;

use super::plan::Refusal;
use crate::decision::{Admission, Decision};
use crate::error::Error;
use crate::headers::HeaderOptions;
use crate::policy::{KeyKind, Policy, RequestKeys};
use crate::request::OwnedRequestKeys;
use crate::store::Store;

/// The body-bytes charge of a request admitted before its body's length was known — an HTTP/2
/// upload or gRPC call without `Content-Length`, say — for an adapter that counts the body while
/// it streams ([`RequestView::counts_body`](crate::request::RequestView::counts_body)). The
/// adapter charges each part of the body as the application reads it, against the route's
/// body-bytes policy under the request's keys: a body costs what it turns out to be (nothing,
/// when it has none). A part the policy refuses is the request's refusal — 429 over the budget,
/// 413 for more than the policy can ever admit at once — and the adapter cuts the body off there
/// and answers with it instead of the application's response. The parts read before it stay
/// charged, as stores have no refund. Cheap to clone.
#[derive(Clone)]
pub struct BodyCharge {
    inner: Arc<dyn Charge>,
}

/// The future of [`BodyCharge::charge`]: the wait before going on (the delay action; usually
/// zero), or the refusal.
pub type ChargeFuture = Pin<Box<dyn Future<Output = Result<Duration, Box<Refusal>>> + Send>>;

impl BodyCharge {
    /// The charge of `policy` under `keys` (what of them the policy reads, kept), refusals
    /// rendered in the `options` style.
    #[inline(never)]
    pub(crate) fn new<St: Store>(policy: &Policy<St>, keys: &RequestKeys<'_>, options: HeaderOptions) -> Self {
        let headers = policy.limits().filter_map(|limit| match limit.key_kind() {
            KeyKind::Header(name) => Some(name),
            _ => None,
        });
        let keys = keys.to_owned_keys(policy.fields(), headers);
        BodyCharge { inner: Arc::new(Charging { policy: policy.clone(), keys, options }) }
    }

    /// Charges `bytes` at once when the policy's store decides without I/O (the in-memory
    /// store): the wait before going on, or the refusal. `None`: charge them through
    /// [`BodyCharge::charge`].
    pub fn try_charge_now(&self, bytes: u64) -> Option<Result<Duration, Box<Refusal>>> {
        if bytes == 0 {
            return Some(Ok(Duration::ZERO));
        }
        self.inner.try_now(cost(bytes))
    }

    /// Charges `bytes` on any store (through its I/O).
    pub fn charge(&self, bytes: u64) -> ChargeFuture {
        if bytes == 0 {
            return Box::pin(std::future::ready(Ok(Duration::ZERO)));
        }
        Arc::clone(&self.inner).later(cost(bytes))
    }
}

impl fmt::Debug for BodyCharge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyCharge").field("policy", &self.inner.policy_name()).finish_non_exhaustive()
    }
}

/// A request body counted while it streams, part by part as the application reads it: against
/// the route's largest body ([`Admit::max_body`](super::Admit::max_body)) and, for a body whose
/// length was not known up front, charging the body-bytes limit
/// ([`Admit::body_bytes`](super::Admit::body_bytes)). What decides for each part, once for every
/// adapter: the adapter passes the length of each part it reads to [`BodyCounter::count`], and
/// reads on (its end included) only once [`BodyCounter::poll_ready`] is ready — a part's charge
/// decided by a store with I/O, the delay action's wait. A refusal cuts the body off: the adapter
/// ends the body with an error for the application and answers the refusal instead of the
/// application's response.
pub struct BodyCounter {
    max: Option<u64>,
    charge: Option<BodyCharge>,
    options: HeaderOptions,
    sleep: Sleep,
    read: u64,
    pending: Option<Pending>,
    cut_off: bool,
}

/// How an adapter waits on its runtime's timer: a future ready after the given time, e.g.
/// `|wait| Box::pin(tokio::time::sleep(wait))`. The core has no timer of its own.
pub type Sleep = fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the body finishes before it reads on.
enum Pending {
    /// The last part's charge, being decided by a store with I/O.
    Deciding(ChargeFuture),
    /// The delay action's wait after it.
    Waiting(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl BodyCounter {
    /// The counter of a body admitted with `max_body` and `charge` (the plan's
    /// [`Admit::max_body`](super::Admit::max_body) and [`Admit::body_bytes`](super::Admit::body_bytes)),
    /// its refusals rendered in the `options` style, waiting with `sleep`. `None` when there is
    /// nothing to count: the body is passed on as it is.
    #[inline]
    pub fn new(
        max_body: Option<u64>,
        charge: Option<BodyCharge>,
        options: &HeaderOptions,
        sleep: Sleep,
    ) -> Option<Self> {
        if max_body.is_none() && charge.is_none() {
            return None;
        }
        Some(Self { max: max_body, charge, options: *options, sleep, read: 0, pending: None, cut_off: false })
    }

    /// Counts the part of `len` bytes just read. `Ok`: pass it on, and read on once
    /// [`BodyCounter::poll_ready`] is. `Err`: the body is cut off here, this part with it (and
    /// not charged): 413 past the largest body, or the body-bytes limit's refusal — 429 over the
    /// budget, 413 for more than it can ever admit. Once cut off, nothing more is counted.
    pub fn count(&mut self, len: u64) -> Result<(), Box<Refusal>> {
        if self.cut_off {
            return Ok(());
        }
        self.read = self.read.saturating_add(len);
        if let Some(max) = self.max
            && self.read > max
        {
            return Err(self.cut_off(Box::new(Refusal::body_too_large(&self.options, max))));
        }
        let Some(charge) = &self.charge else { return Ok(()) };
        match charge.try_charge_now(len) {
            Some(Ok(wait)) => self.wait(wait),
            Some(Err(refusal)) => return Err(self.cut_off(refusal)),
            // Passed on now and decided before the next read, so that a part is not held back
            // for a store's round trip.
            None => self.pending = Some(Pending::Deciding(charge.charge(len))),
        }
        Ok(())
    }

    /// Reads the body's next part through the counter, as every adapter reads it: first what
    /// the last part left ([`BodyCounter::poll_ready`]: a body over its budget never ends
    /// cleanly), then the part (`read`, the body's own poll), counted by its `len`. A part the
    /// counter refuses is [`ReadError::CutOff`] in its place, and after it the body has ended
    /// (`None`, not the error again: a reader that skips errors must not spin).
    pub fn poll_read<T, E>(
        &mut self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&mut Context<'_>) -> Poll<Option<Result<T, E>>>,
        len: impl FnOnce(&T) -> u64,
    ) -> Poll<Option<Result<T, ReadError<E>>>> {
        if self.cut_off {
            return Poll::Ready(None);
        }
        if let Err(refusal) = ready!(self.poll_ready(cx)) {
            return Poll::Ready(Some(Err(ReadError::CutOff(refusal))));
        }
        let part = match ready!(read(cx)) {
            Some(Ok(part)) => part,
            Some(Err(err)) => return Poll::Ready(Some(Err(ReadError::Body(err)))),
            None => return Poll::Ready(None),
        };
        Poll::Ready(Some(match self.count(len(&part)) {
            Ok(()) => Ok(part),
            Err(refusal) => Err(ReadError::CutOff(refusal)),
        }))
    }

    /// Finishes what the last part left — its charge being decided, the delay action's wait:
    /// ready with `Ok` when the body may read on, or with the refusal that cuts it off.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Box<Refusal>>> {
        while let Some(pending) = &mut self.pending {
            match pending {
                Pending::Deciding(charge) => {
                    let answer = ready!(charge.as_mut().poll(cx));
                    self.pending = None;
                    match answer {
                        Ok(wait) => self.wait(wait),
                        Err(refusal) => return Poll::Ready(Err(self.cut_off(refusal))),
                    }
                }
                Pending::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.pending = None;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the last part left something to finish ([`BodyCounter::poll_ready`] before the
    /// body may end cleanly).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether a refusal cut the body off.
    pub fn is_cut_off(&self) -> bool {
        self.cut_off
    }

    /// The bytes read so far, the part that cut the body off included.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The route's largest body, when the body passed it: what cut it off (413), for an
    /// adapter's error that names it.
    pub fn passed_max_body(&self) -> Option<u64> {
        self.max.filter(|&max| self.read > max)
    }

    fn wait(&mut self, wait: Duration) {
        if !wait.is_zero() {
            self.pending = Some(Pending::Waiting((self.sleep)(wait)));
        }
    }

    #[cold]
    fn cut_off(&mut self, refusal: Box<Refusal>) -> Box<Refusal> {
        self.cut_off = true;
        self.pending = None;
        refusal
    }
}

/// Why a read through [`BodyCounter::poll_read`] failed.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The body's own error, passed on.
    Body(E),
    /// The counter cut the body off at this part: the adapter gives the application an error and
    /// answers this refusal instead of the application's response.
    CutOff(Box<Refusal>),
}

impl fmt::Debug for BodyCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyCounter")
            .field("max", &self.max)
            .field("charge", &self.charge)
            .field("read", &self.read)
            .field("pending", &self.pending.is_some())
            .field("cut_off", &self.cut_off)
            .finish_non_exhaustive()
    }
}

/// A part's length as a policy's cost: a part over `u32::MAX` bytes is over every limit's
/// capacity, and stays so.
fn cost(bytes: u64) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// [`Charging`] whatever its store: [`BodyCharge`] is no generic type, so that an adapter's body
/// type does not name the store.
trait Charge: Send + Sync {
    fn try_now(&self, cost: u32) -> Option<Result<Duration, Box<Refusal>>>;
    fn later(self: Arc<Self>, cost: u32) -> ChargeFuture;
    fn policy_name(&self) -> &str;
}

/// The body-bytes policy, the request's keys and the refusal style.
struct Charging<St: Store> {
    policy: Policy<St>,
    keys: OwnedRequestKeys,
    options: HeaderOptions,
}

impl<St: Store> Charge for Charging<St> {
    fn try_now(&self, cost: u32) -> Option<Result<Duration, Box<Refusal>>> {
        let answer = self.policy.try_admit_now(&self.keys.as_keys(), cost, false, |d| self.refusal(d))?;
        Some(self.verdict(answer))
    }

    fn later(self: Arc<Self>, cost: u32) -> ChargeFuture {
        Box::pin(async move {
            let answer = self.policy.admit(&self.keys.as_keys(), cost, false, |d| self.refusal(d)).await;
            self.verdict(answer)
        })
    }

    fn policy_name(&self) -> &str {
        self.policy.name()
    }
}

impl<St: Store> Charging<St> {
    fn refusal(&self, decision: Decision) -> Box<Refusal> {
        let status = decision.status();
        Box::new(Refusal::of(&self.options, decision, status))
    }

    /// The engine's answers to a body-bytes check, for one part of the body.
    fn verdict(&self, answer: Result<Admission<Box<Refusal>>, Error>) -> Result<Duration, Box<Refusal>> {
        match answer {
            Ok(Admission::Admitted(admitted)) => Ok(admitted.wait),
            Ok(Admission::Refused(refusal)) => Err(refusal),
            Err(Error::InvalidCost { capacity, .. }) => Err(Box::new(Refusal::body_too_large(&self.options, capacity))),
            Err(err) => {
                tracing::error!(error = %err, "rate limit check failed");
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                Err(Box::new(Refusal::error(&self.options, status, "rate_limit_error", None)))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use http::Request;

    use super::{BodyCounter, ReadError};
    use crate::engine::{Engine, Limits};
    use crate::request::HttpView;
    use crate::{KeyKind, Limit, OnExceed, Policy};

    fn engine() -> Engine {
        let bytes = |quota: &str| {
            Policy::builder("body_bytes")
                .limit(Limit::new("body_bytes", quota.parse().unwrap()).key(KeyKind::ip()))
                .build()
                .unwrap()
        };
        Engine::new(Limits::new()).route("/both", Limits::new().max_body(1024).body_bytes(bytes("4KiB/min"))).route(
            "/keyed",
            Limits::new().body_bytes(
                Policy::builder("per_key")
                    .limit(
                        Limit::new("per_key", "100/min".parse().unwrap())
                            .key(KeyKind::Header("x-key".parse().unwrap())),
                    )
                    .build()
                    .unwrap(),
            ),
        )
    }

    /// An HTTP/2 request without `Content-Length` from 192.0.2.1.
    fn h2(method: &str, path: &str, key: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path).version(http::Version::HTTP_2);
        if let Some(key) = key {
            builder = builder.header("x-key", key);
        }
        let mut request = builder.body(()).unwrap();
        request.extensions_mut().insert("192.0.2.1:4000".parse::<SocketAddr>().unwrap());
        request
    }

    fn status(engine: &Engine, request: &Request<()>) -> u16 {
        let view = HttpView::<_>::of(request, || None);
        match engine.check_now(engine.limits_for(&view), &view) {
            Ok(_) => 200,
            Err(refusal) => refusal.status().as_u16(),
        }
    }

    #[test]
    fn a_counted_body_of_unknown_length_is_charged_as_it_streams() {
        let engine = engine();
        let get = h2("GET", "/both", None);
        // Without an adapter that counts: the largest body for each (1 KiB of 4), as before.
        for _ in 0..4 {
            assert_eq!(status(&engine, &get), 200);
        }
        assert_eq!(status(&engine, &get), 429);

        let engine = self::engine();
        let view = HttpView::<_>::of(&get, || None).counting_body();
        let limits = engine.limits_for(&view);
        for _ in 0..10 {
            let admit = engine.check_now(limits, &view).unwrap();
            assert_eq!(admit.max_body, Some(1024));
            let charge = admit.body_bytes.expect("charged as it streams");
            // A GET reads nothing: nothing is charged.
            assert_eq!(charge.try_charge_now(0).unwrap().unwrap(), std::time::Duration::ZERO);
        }
        let upload = engine.check_now(limits, &view).unwrap().body_bytes.unwrap();
        for _ in 0..4 {
            assert!(upload.try_charge_now(1000).unwrap().is_ok());
        }
        let refusal = upload.try_charge_now(100).unwrap().unwrap_err();
        assert_eq!(refusal.status(), 429);
        assert_eq!(refusal.decision().map(|d| d.policy), Some("body_bytes"));
        assert!(upload.try_charge_now(96).unwrap().is_ok(), "the refused part was not charged");
        let too_large = upload.try_charge_now(5000).unwrap().unwrap_err();
        assert_eq!(
            (too_large.status().as_u16(), &too_large.render().1[..]),
            (413, &br#"{"error":"payload_too_large","limit":4096}"#[..])
        );
    }

    #[test]
    fn a_length_known_up_front_is_charged_up_front_even_when_counted() {
        let engine = engine();
        let mut declared = h2("POST", "/both", None);
        declared.headers_mut().insert("content-length", "1000".parse().unwrap());
        let view = HttpView::<_>::of(&declared, || None).counting_body();
        let admit = engine.check_now(engine.limits_for(&view), &view).unwrap();
        assert!(admit.body_bytes.is_none(), "charged its declared length");
        // What the body says of itself: over the largest body, refused before it streams; none,
        // nothing to charge.
        let sized = h2("POST", "/both", None);
        let view = HttpView::<_>::of(&sized, || Some(2000)).counting_body();
        assert_eq!(engine.check_now(engine.limits_for(&view), &view).unwrap_err().status(), 413);
        let view = HttpView::<_>::of(&sized, || Some(0)).counting_body();
        assert!(engine.check_now(engine.limits_for(&view), &view).unwrap().body_bytes.is_none());
    }

    #[test]
    fn the_charge_keeps_the_keys_its_policy_reads() {
        let engine = engine();
        let alice = h2("POST", "/keyed", Some("alice"));
        let view = HttpView::<_>::of(&alice, || None).counting_body();
        let charge = engine.check_now(engine.limits_for(&view), &view).unwrap().body_bytes.unwrap();
        drop(alice);
        assert!(charge.try_charge_now(100).unwrap().is_ok());
        assert_eq!(charge.try_charge_now(1).unwrap().unwrap_err().status(), 429);
        // Another key has its own budget.
        let bob = h2("POST", "/keyed", Some("bob"));
        let view = HttpView::<_>::of(&bob, || None).counting_body();
        let charge = engine.check_now(engine.limits_for(&view), &view).unwrap().body_bytes.unwrap();
        assert!(charge.try_charge_now(100).unwrap().is_ok());
    }

    /// How long the counters of this module's tests were asked to wait, in milliseconds.
    static WAITED_MS: AtomicU64 = AtomicU64::new(0);

    /// A timer that records the wait and is ready at once (the adapters pass their runtime's).
    fn sleep(wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        WAITED_MS.fetch_add(u64::try_from(wait.as_millis()).unwrap(), Ordering::SeqCst);
        Box::pin(std::future::ready(()))
    }

    #[test]
    fn the_counter_cuts_a_body_off_past_the_largest_body_and_over_the_budget() {
        let engine = engine();
        let options = *engine.header_options();
        assert!(BodyCounter::new(None, None, &options, sleep).is_none(), "nothing to count");
        let post = h2("POST", "/both", None);
        let view = HttpView::<_>::of(&post, || None).counting_body();
        let limits = engine.limits_for(&view);
        let counter = || {
            let admit = engine.check_now(limits, &view).unwrap();
            BodyCounter::new(admit.max_body, admit.body_bytes, &options, sleep).unwrap()
        };

        // Past the largest body: 413, the part that passes it not charged.
        let mut first = counter();
        assert!(first.count(600).is_ok());
        let refusal = first.count(600).unwrap_err();
        assert_eq!(
            (refusal.status().as_u16(), &refusal.render().1[..]),
            (413, &br#"{"error":"payload_too_large","limit":1024}"#[..])
        );
        assert!(first.is_cut_off());
        assert_eq!((first.read(), first.passed_max_body()), (1200, Some(1024)));
        assert!(first.count(10).is_ok(), "nothing counted once cut off");
        assert_eq!(first.read(), 1200);

        // 600 charged of 4096: three bodies of 1000 more pass, the fourth is refused at its part
        // over the budget.
        for _ in 0..3 {
            let mut counter = counter();
            assert!(counter.count(1000).is_ok());
            assert!(!counter.is_pending(), "the in-memory store decides at once");
        }
        let mut last = counter();
        assert!(last.count(400).is_ok());
        let refusal = last.count(400).unwrap_err();
        assert_eq!(refusal.status(), 429);
        assert_eq!(refusal.decision().map(|d| d.policy), Some("body_bytes"));
        assert_eq!((last.is_cut_off(), last.passed_max_body()), (true, None));
    }

    #[test]
    fn the_counter_of_a_length_charged_up_front_counts_the_largest_body_alone() {
        let engine = engine();
        let mut declared = h2("POST", "/both", None);
        declared.headers_mut().insert("content-length", "1000".parse().unwrap());
        let view = HttpView::<_>::of(&declared, || None).counting_body();
        let admit = engine.check_now(engine.limits_for(&view), &view).unwrap();
        let mut counter = BodyCounter::new(admit.max_body, admit.body_bytes, engine.header_options(), sleep).unwrap();
        // Nothing charged while it streams: 3096 of 4096 are left however much of it is read.
        assert!(counter.count(1000).is_ok());
        assert_eq!(counter.count(100).unwrap_err().status(), 413, "a body longer than it said");
        let get = h2("GET", "/both", None);
        let view = HttpView::<_>::of(&get, || None).counting_body();
        let charge = engine.check_now(engine.limits_for(&view), &view).unwrap().body_bytes.unwrap();
        assert!(charge.try_charge_now(3096).unwrap().is_ok());
    }

    fn noop_context() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    #[test]
    fn reads_through_the_counter_end_after_the_cut_off_and_pass_the_bodys_errors_on() {
        let engine = engine();
        let post = h2("POST", "/both", None);
        let view = HttpView::<_>::of(&post, || None).counting_body();
        let admit = engine.check_now(engine.limits_for(&view), &view).unwrap();
        let mut counter = BodyCounter::new(admit.max_body, admit.body_bytes, engine.header_options(), sleep).unwrap();
        let mut parts = vec![Err("reset"), Ok(600), Ok(600), Ok(1)].into_iter();
        let mut next = || counter.poll_read(&mut noop_context(), |_| Poll::Ready(parts.next()), |len| *len);
        assert!(matches!(next(), Poll::Ready(Some(Err(ReadError::Body("reset"))))));
        assert!(matches!(next(), Poll::Ready(Some(Ok(600)))));
        let Poll::Ready(Some(Err(ReadError::CutOff(refusal)))) = next() else { panic!("cut off past 1024 bytes") };
        assert_eq!(refusal.status(), 413);
        assert!(matches!(next(), Poll::Ready(None)), "ended after its error, not repeating it");
        assert_eq!(parts.len(), 1, "nothing more read");
    }

    #[tokio::test]
    async fn a_part_a_delaying_budget_admits_later_is_waited_for() {
        let delay = OnExceed::Delay { max_wait: Duration::from_secs(5) };
        let policy = Policy::builder("body_bytes")
            .limit(Limit::new("body_bytes", "10/s".parse().unwrap()).key(KeyKind::ip()).on_exceed(delay))
            .build()
            .unwrap();
        let engine = Engine::new(Limits::new().body_bytes(policy));
        let post = h2("POST", "/", None);
        let view = HttpView::<_>::of(&post, || None).counting_body();
        let admit = engine.check_now(engine.limits_for(&view), &view).unwrap();
        let mut counter = BodyCounter::new(None, admit.body_bytes, engine.header_options(), sleep).unwrap();
        assert!(counter.count(10).is_ok());
        assert!(!counter.is_pending(), "within the burst");
        assert!(counter.count(6).is_ok());
        assert!(counter.is_pending(), "the 6 bytes wait for room");
        std::future::poll_fn(|cx| counter.poll_ready(cx)).await.unwrap();
        assert!(!counter.is_pending());
        // 10 bytes a second, 10 at once: the 6 more wait about 0.6 s (less what passed since).
        let waited = WAITED_MS.load(Ordering::SeqCst);
        assert!((400..=600).contains(&waited), "{waited} ms");
    }

    #[tokio::test]
    async fn the_async_charge_decides_as_the_immediate_one() {
        let engine = engine();
        let get = h2("POST", "/both", None);
        let view = HttpView::<_>::of(&get, || None).counting_body();
        let charge = engine.check(engine.limits_for(&view), &view).await.unwrap().body_bytes.unwrap();
        assert_eq!(charge.charge(4096).await.unwrap(), std::time::Duration::ZERO);
        assert_eq!(charge.charge(1).await.unwrap_err().status(), 429);
        assert_eq!(charge.charge(0).await.unwrap(), std::time::Duration::ZERO);
    }
}
