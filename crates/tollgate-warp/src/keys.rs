//! What a request is counted by, beyond what the engine reads itself (the client address through
//! trusted proxies, headers, the route): values in the request's extensions, put there by
//! [`RateLimit::identify`](crate::RateLimit::identify) (or
//! [`identify_async`](crate::RateLimit::identify_async)), or by a tower layer around
//! [`RateLimitService`](crate::RateLimitService). The warp filters inside read them back with
//! `warp::ext::get::<Identity>()`. The types are the core's (`tollgate::request`), the same for
//! every adapter, re-exported here; the engine reads the request through the core's
//! [`HttpView`](tollgate::request::HttpView), as every adapter on `http` 1.x does.
//!
//! - **Client IP**: the peer's [`SocketAddr`], which [`serve`](crate::serve) puts in the
//!   extensions (read it in a filter with [`remote`]); resolved through the engine's trusted
//!   proxies.
//! - **Identity**: an [`Identity`] (the core counts anonymous clients by IP instead).
//! - **Tier**: a [`Tier`], choosing among a limit's tier quotas.
//! - **Route**: a [`RouteName`], else the engine's own patterns matched on the path.
//! - **Custom**: a [`CustomKey`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Extensions;
use tollgate::OwnedKey;
use warp::Filter;

pub use tollgate::request::{CustomKey, Identity, RouteName, Tier};

/// What an identify hook found of a request: each value set is put in the request's extensions
/// before the checks.
///
/// ```
/// use tollgate_warp::Identified;
///
/// let found = Identified::default().identity("alice").tier("pro");
/// assert_eq!(found.identity.as_ref().map(|i| &*i.0), Some("alice"));
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Identified {
    /// The authenticated identity.
    pub identity: Option<Identity>,
    /// The client's tier.
    pub tier: Option<Tier>,
    /// A key of the application's own.
    pub custom: Option<CustomKey>,
}

impl Identified {
    /// Nothing found: the request is anonymous.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// With the identity `identity`.
    #[must_use]
    pub fn identity(mut self, identity: impl Into<Arc<str>>) -> Self {
        self.identity = Some(Identity(identity.into()));
        self
    }

    /// With the tier `tier`.
    #[must_use]
    pub fn tier(mut self, tier: impl Into<Arc<str>>) -> Self {
        self.tier = Some(Tier(tier.into()));
        self
    }

    /// With the custom key `key`.
    #[must_use]
    pub fn custom(mut self, key: OwnedKey) -> Self {
        self.custom = Some(CustomKey(key));
        self
    }

    /// Puts what was found in `extensions`.
    pub(crate) fn insert_into(self, extensions: &mut Extensions) {
        if let Some(identity) = self.identity {
            extensions.insert(identity);
        }
        if let Some(tier) = self.tier {
            extensions.insert(tier);
        }
        if let Some(custom) = self.custom {
            extensions.insert(custom);
        }
    }
}

/// The peer's address, for the filters of an application served by [`serve`](crate::serve):
/// use it where a warp application served by `warp::serve` uses `warp::addr::remote()` (warp
/// fills that one from its own server loop only).
///
/// ```
/// use std::net::SocketAddr;
/// use warp::Filter;
///
/// let route = tollgate_warp::remote().map(|peer: Option<SocketAddr>| format!("{peer:?}"));
/// # let _ = route;
/// ```
pub fn remote() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Copy {
    warp::ext::optional::<SocketAddr>()
}
