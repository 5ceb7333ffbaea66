//! A body's bytes charged while it streams: the [`BodyCharge`] of a request admitted before its
//! body's length was known.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
    use std::net::SocketAddr;

    use http::Request;

    use crate::engine::{Engine, Limits};
    use crate::request::HttpView;
    use crate::{KeyKind, Limit, Policy};

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
