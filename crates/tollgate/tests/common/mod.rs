//! What the core's integration tests share.

use std::future::{Future, ready};
use std::time::Duration;

use tollgate::{Check, LimitSpec, Snapshot, Store, StoreError};

/// A store that always fails: the one fault a real store cannot produce on demand here.
#[derive(Clone, Debug)]
pub(crate) struct Down;

impl Store for Down {
    type Limit = ();
    fn register(&self, _: &LimitSpec) -> Result<(), StoreError> {
        Ok(())
    }
    fn check<'a>(
        &'a self,
        _: &'a [Check<'a, ()>],
        _: &'a mut [Snapshot],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a {
        ready(Err(StoreError::Unavailable("connection refused".into())))
    }
    fn block<'a>(
        &'a self,
        _: &'a (),
        _: tollgate::Key<'a>,
        _: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        ready(Err(StoreError::Unavailable("connection refused".into())))
    }
}
