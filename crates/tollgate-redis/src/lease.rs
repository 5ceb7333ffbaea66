//! Distributed concurrency leases: [`LeaseStore`] on Redis.
//!
//! A lease is an id in two sorted sets (the key's and the limiter's), scored by its expiry. Its
//! holder heartbeats it every third of [`RedisStoreBuilder::lease_ttl`] from a background task;
//! dropping the [`ConnectionLease`] stops the heartbeat and removes the id. If the holder's process
//! dies, the heartbeat stops and the lease expires after the TTL, so the place comes back on its
//! own. Both sets of a limiter share one hash tag (the limiter's name), so one script counts the
//! per-key and global caps atomically, also in a cluster; that puts a limiter's leases in one slot.
//!
//! An acquire that does not hand its lease to the caller (its future dropped, the store's timeout,
//! an error) sends a release of its id after the acquire, on the same connection, so a grant
//! Redis made anyway is taken back at once. A lease Redis forgot (a restart without persistence,
//! a failover to a replica that missed it, heartbeats that failed for a whole TTL while the
//! circuit breaker was open) is added back by its next heartbeat, since its holder still holds the
//! place; the holder is warned in the log. The caps may then be exceeded until places free up:
//! the count stays true. A release leaves its id in a third set for a TTL, so that a heartbeat
//! that reaches Redis after the release does not add the lease back.
//!
//! [`RedisStoreBuilder::lease_ttl`]: crate::RedisStoreBuilder::lease_ttl

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use tollgate::{ConcurrencyDenied, ConcurrencyScope, ConnectionLease, Key, LeaseRelease, LeaseStore, StoreError};

use crate::keys::{fnv1a64, name};
use crate::script::{Call, LEASE};
use crate::store::RedisStore;

/// The two sets a lease lives in, and the limiter's set of lately released ids.
#[derive(Clone, Debug)]
struct LeaseKeys {
    per_key: Vec<u8>,
    global: Vec<u8>,
    released: Vec<u8>,
}

fn lease_keys(prefix: &str, limiter: &str, key: Key<'_>) -> LeaseKeys {
    let tag = fnv1a64(limiter.as_bytes());
    let segment = format!("{}:{limiter}", limiter.len()).into_bytes();
    let mut encoded = Vec::with_capacity(24);
    key.encode(&mut encoded);
    let mut k = b"k".to_vec();
    k.extend_from_slice(&encoded);
    LeaseKeys {
        per_key: name(prefix, tag, b'l', &segment, &k),
        global: name(prefix, tag, b'l', &segment, b"g"),
        released: name(prefix, tag, b'l', &segment, b"r"),
    }
}

fn lease_call(op: &str, keys: &LeaseKeys, id: &str, ttl: Duration, per_key: Option<u32>, global: Option<u32>) -> Call {
    let cap = |c: Option<u32>| c.map_or_else(|| "-1".to_owned(), |c| c.to_string());
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    Call {
        keys: vec![keys.per_key.clone(), keys.global.clone(), keys.released.clone()],
        args: vec![
            op.as_bytes().to_vec(),
            id.as_bytes().to_vec(),
            ttl_ms.to_string().into_bytes(),
            cap(per_key).into_bytes(),
            cap(global).into_bytes(),
        ],
    }
}

fn bad_reply(v: &Value) -> StoreError {
    StoreError::Protocol(format!("unexpected reply from the tollgate lease script: {v:?}"))
}

impl RedisStore {
    async fn lease_op(&self, call: &Call) -> Result<Value, StoreError> {
        self.guarded(self.invoke(&LEASE, call)).await
    }

    async fn acquire_lease(
        &self,
        limiter: &str,
        key: Key<'_>,
        per_key: Option<u32>,
        global: Option<u32>,
    ) -> Result<Result<ConnectionLease, ConcurrencyDenied>, StoreError> {
        let keys = lease_keys(&self.inner.prefix, limiter, key);
        let seq = self.inner.lease_seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}:{seq}", self.inner.instance);
        let ttl = self.inner.lease_ttl;
        let call = lease_call("a", &keys, &id, ttl, per_key, global);
        let reply = self
            .guarded(async {
                // Armed while the acquire is in flight (the breaker let it through): if the store's
                // timeout or the caller drops this future, Redis may still run the acquire.
                let mut pending = Pending { store: self, keys: &keys, id: &id, armed: true };
                let reply = self.invoke(&LEASE, &call).await;
                pending.armed = false;
                reply
            })
            .await?;
        let Value::Array(items) = &reply else { return Err(bad_reply(&reply)) };
        match items.as_slice() {
            [Value::Int(1)] => {}
            [Value::Int(0), scope, Value::Int(cap)] => {
                let scope = match scope {
                    Value::BulkString(s) if s == b"g" => ConcurrencyScope::Global,
                    Value::BulkString(s) if s == b"k" => ConcurrencyScope::PerKey,
                    _ => return Err(bad_reply(&reply)),
                };
                let limit = u32::try_from(*cap).map_err(|_| bad_reply(&reply))?;
                return Ok(Err(ConcurrencyDenied::new(limiter, scope, limit)));
            }
            _ => return Err(bad_reply(&reply)),
        }
        let heartbeat = tokio::spawn(heartbeat(self.clone(), keys.clone(), id.clone(), ttl, per_key));
        Ok(Ok(ConnectionLease::from_release(RedisLease {
            store: self.clone(),
            keys,
            id,
            heartbeat: heartbeat.abort_handle(),
        })))
    }
}

/// Keeps a lease alive until aborted (on release), adding it back when Redis lost it (`per_key`:
/// the per-key cap it was acquired with, which says whether it is in the key's set).
async fn heartbeat(store: RedisStore, keys: LeaseKeys, id: String, ttl: Duration, per_key: Option<u32>) {
    let mut every = tokio::time::interval((ttl / 3).max(Duration::from_millis(10)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    let beat = lease_call("h", &keys, &id, ttl, per_key, None);
    loop {
        every.tick().await;
        match store.lease_op(&beat).await {
            Ok(Value::Array(items)) if matches!(items.as_slice(), [Value::Int(2)]) => tracing::warn!(
                lease = %id,
                "tollgate-redis: Redis had lost a lease still held (restart, failover or expiry); it counts again"
            ),
            // Released while this heartbeat was on its way.
            Ok(Value::Array(items)) if matches!(items.as_slice(), [Value::Int(0)]) => return,
            Ok(_) => {}
            Err(e) => tracing::warn!(lease = %id, error = %e, "tollgate-redis: lease heartbeat failed"),
        }
    }
}

/// An acquire in flight: unless disarmed (Redis answered), dropping it sends a release of its id,
/// which Redis runs after the acquire (same connection) and which removes nothing if the acquire
/// added nothing.
struct Pending<'a> {
    store: &'a RedisStore,
    keys: &'a LeaseKeys,
    id: &'a str,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            release_later(self.store.clone(), self.keys.clone(), self.id.to_owned());
        }
    }
}

/// Removes the lease `id` on the runtime, without blocking. Without a runtime (it is shutting
/// down) the lease expires after its TTL instead.
fn release_later(store: RedisStore, keys: LeaseKeys, id: String) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let call = lease_call("r", &keys, &id, store.inner.lease_ttl, None, None);
            if let Err(e) = store.lease_op(&call).await {
                tracing::warn!(lease = %id, error = %e, "tollgate-redis: lease release failed; it expires on its own");
            }
        });
    }
}

/// Gives a Redis lease back.
struct RedisLease {
    store: RedisStore,
    keys: LeaseKeys,
    id: String,
    heartbeat: tokio::task::AbortHandle,
}

impl LeaseRelease for RedisLease {
    fn release(self: Box<Self>) {
        self.heartbeat.abort();
        let Self { store, keys, id, .. } = *self;
        release_later(store, keys, id);
    }
}

impl LeaseStore for RedisStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        key: Key<'a>,
        per_key: Option<u32>,
        global: Option<u32>,
    ) -> impl Future<Output = Result<Result<ConnectionLease, ConcurrencyDenied>, StoreError>> + Send + 'a {
        self.acquire_lease(name, key, per_key, global)
    }
}
