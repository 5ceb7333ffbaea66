//! What every clone of the service shares: the core's engine, which decides, and the hooks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::request::Parts;
use http_body_util::Full;
use tollgate::engine::Refusal;
use tollgate::live::EngineSource;
use tollgate::{Decision, Store};

use crate::keys::Identified;

/// Builds a custom refusal from the decision and the default response (status, rate-limit
/// headers and JSON body already set): return it as is, changed, or replaced.
pub type RefusalHook = Arc<dyn Fn(&Decision, Response<Bytes>) -> Response<Bytes> + Send + Sync>;

/// A boxed future of an asynchronous identify hook.
pub type IdentifyFuture = Pin<Box<dyn Future<Output = Identified> + Send>>;

/// How a request's identity, tier or custom key is found before the checks.
#[derive(Clone)]
pub(crate) enum Identify {
    Sync(Arc<dyn Fn(&Parts) -> Identified + Send + Sync>),
    Async(Arc<dyn Fn(&Parts) -> IdentifyFuture + Send + Sync>),
}

pub(crate) struct Config<St: Store> {
    /// Fixed, or a live engine's current one.
    pub(crate) engine: EngineSource<St>,
    pub(crate) refusal: Option<RefusalHook>,
    pub(crate) identify: Option<Identify>,
}

impl<St: Store> Clone for Config<St> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone(), refusal: self.refusal.clone(), identify: self.identify.clone() }
    }
}

impl<St: Store> Config<St> {
    /// The engine's refusal as a response, through the hook when it refused a decision. Out of
    /// the allow path.
    #[inline(never)]
    pub(crate) fn respond(&self, refusal: &Refusal) -> Response<Full<Bytes>> {
        respond(refusal, self.refusal.as_ref())
    }
}

/// The engine's refusal as a response, through `hook` when it refused a decision.
pub(crate) fn respond(refusal: &Refusal, hook: Option<&RefusalHook>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Bytes::new());
    *response.body_mut() = refusal.render_into(response.headers_mut());
    *response.status_mut() = refusal.status();
    if let (Some(hook), Some(decision)) = (hook, refusal.decision()) {
        response = hook(decision, response);
    }
    response.map(Full::new)
}
