//! [`RedisStore`]: the [`Store`] on Redis or Redis Cluster.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script, Value};
use tollgate::stats::{BreakerState, StoreHealth, StoreState};
use tollgate::{Algorithm, Check, Clock, Key, LimitSpec, Quota, Snapshot, Store, StoreError};

use crate::breaker::Breaker;
use crate::error::{Error, redact};
use crate::keys::{CheckKeys, check_keys, limit_segment, valid_prefix};
use crate::near_cache::{DEFAULT_NEAR_CACHE_MAX_KEYS, NearCache, NearCacheStats};
use crate::script::{CHECK, Call, GCRA, GCRA_BATCH, Mode, Reply, WINDOW, decode, validate};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tollgate";
/// The default per-decision timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// The default start-up connection timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default number of consecutive failures that opens the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// The default time the circuit breaker stays open before probing Redis again.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// The default time to live of a distributed lease whose holder stopped heartbeating.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// With a test clock, state keys live at least this long in Redis: Redis expires keys on its own
/// clock, which does not follow a manual one.
const TEST_CLOCK_TTL_FLOOR_MS: u64 = 3_600_000;

/// A rate-limit store in Redis (one node or a Redis Cluster), shared by every instance that uses
/// the same Redis and prefix. Cheap to clone (clones share the connection).
///
/// Each decision is one `EVALSHA` of one Lua script that checks every limit of the batch
/// atomically and all-or-nothing (see the crate docs for Redis Cluster). Decisions time out after
/// [`RedisStoreBuilder::timeout`]; a circuit breaker then fails fast while Redis is down, and the
/// policy's failure mode decides what such errors mean.
///
/// Refusals are remembered for their retry-after and answered by the instance itself, without a
/// round trip (the near cache, on by default: see [`RedisStoreBuilder::near_cache`]).
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
    clock: Option<Arc<dyn Clock>>,
    /// Per clock: a store made by [`RedisStore::with_clock`] gets a cache of its own, since the
    /// cache's instants are read on the store's clock.
    near: Option<Arc<NearCache>>,
}

pub(crate) struct Inner {
    conn: Connection,
    pub(crate) prefix: String,
    timeout: Duration,
    breaker: Breaker,
    url: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) instance: u64,
    pub(crate) lease_seq: std::sync::atomic::AtomicU64,
    /// The near cache's bound, or `None` when it is off.
    near_max_keys: Option<usize>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("cluster", &matches!(self.inner.conn, Connection::Cluster(_)))
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("breaker_open", &self.inner.breaker.is_open())
            .field("test_clock", &self.clock.is_some())
            .field("near_cache_max_keys", &self.near.as_ref().map(|n| n.max_keys()))
            .finish_non_exhaustive()
    }
}

/// One long-lived multiplexed connection, reconnecting by itself.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A limit registered with a [`RedisStore`]: the names of its keys.
#[derive(Clone, Debug)]
pub struct RedisLimit {
    segment: Box<[u8]>,
    pub(crate) algorithm: Algorithm,
}

impl RedisLimit {
    /// The algorithm of this limit.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// Where to connect.
#[derive(Clone, Debug)]
enum Topology {
    Single(String),
    Cluster(Vec<String>),
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`] and [`RedisStore::cluster`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    topology: Topology,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    lease_ttl: Duration,
    near_cache: bool,
    near_cache_max_keys: usize,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = match &self.topology {
            Topology::Single(u) => vec![redact(u)],
            Topology::Cluster(us) => us.iter().map(|u| redact(u)).collect(),
        };
        f.debug_struct("RedisStoreBuilder")
            .field("urls", &urls)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("lease_ttl", &self.lease_ttl)
            .field("near_cache", &self.near_cache)
            .field("near_cache_max_keys", &self.near_cache_max_keys)
            .field("test_clock", &self.clock.is_some())
            .finish()
    }
}

impl RedisStoreBuilder {
    fn new(topology: Topology) -> Self {
        Self {
            topology,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            lease_ttl: DEFAULT_LEASE_TTL,
            near_cache: true,
            near_cache_max_keys: DEFAULT_NEAR_CACHE_MAX_KEYS,
            clock: None,
        }
    }

    /// The namespace of every key (default [`DEFAULT_PREFIX`]); it may not contain `{` or `}`.
    /// Instances that must share limits use the same prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one decision may take, round trips included (default [`DEFAULT_TIMEOUT`]); then
    /// it fails with [`StoreError::Timeout`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take, at start-up and on each reconnection attempt (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The circuit breaker: after `failures` consecutive failed decisions, fail at once with
    /// [`StoreError::Unavailable`] for `cooldown`, then let one decision probe Redis; its success
    /// closes the breaker. Defaults: [`DEFAULT_BREAKER_THRESHOLD`], [`DEFAULT_BREAKER_COOLDOWN`].
    #[must_use]
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// How long a distributed lease outlives its holder's last heartbeat (default
    /// [`DEFAULT_LEASE_TTL`]); holders heartbeat every third of it.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Whether refusals are answered by the instance itself until their retry-after passes,
    /// without a round trip to Redis (default `true`). Only refusals that hold for every later
    /// check they answer are remembered (penalty blocks, and refusals of cost-1 checks in batches
    /// where no limit delays); admissions always come from Redis. See the [`near_cache`](crate::near_cache)
    /// module for the rule and its exactness. Turn it off to have every check ask Redis (e.g.
    /// when keys are reset behind the store's back, by deleting them in Redis).
    #[must_use]
    pub fn near_cache(mut self, enabled: bool) -> Self {
        self.near_cache = enabled;
        self
    }

    /// The most refusals the near cache remembers at once (default
    /// [`DEFAULT_NEAR_CACHE_MAX_KEYS`]); a refusal that finds it full of live ones goes unremembered.
    #[must_use]
    pub fn near_cache_max_keys(mut self, max_keys: usize) -> Self {
        self.near_cache_max_keys = max_keys;
        self
    }

    /// **For tests only**: reads time from `clock` (e.g. a [`tollgate::ManualClock`]) instead of
    /// the Redis server's `TIME`, passing it to the scripts, so tests can step time. Keys then
    /// expire at the earliest after an hour (Redis expires them on its own clock). Never use it in
    /// production: instances' clocks differ, and the shared limits would be wrong.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Connects, checks that Redis answers, and loads the scripts.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] on a bad option; [`Error::Connect`], naming the URL, when Redis cannot
    /// be reached within the connect timeout.
    pub async fn build(self) -> Result<RedisStore, Error> {
        if !valid_prefix(&self.prefix) {
            return Err(Error::Config {
                field: "prefix",
                value: format!("{:?}", self.prefix),
                reason: "must not contain `{` or `}` (they would change the Redis Cluster hash tag)",
            });
        }
        if self.timeout.is_zero() {
            return Err(Error::Config { field: "timeout", value: "0s".into(), reason: "must be longer than zero" });
        }
        if self.near_cache && self.near_cache_max_keys == 0 {
            return Err(Error::Config {
                field: "near_cache_max_keys",
                value: "0".into(),
                reason: "must be at least 1 (turn the near cache off with `near_cache(false)`)",
            });
        }
        if self.lease_ttl < Duration::from_millis(30) {
            return Err(Error::Config {
                field: "lease_ttl",
                value: format!("{:?}", self.lease_ttl),
                reason: "must be at least 30ms (holders heartbeat every third of it)",
            });
        }
        let url = match &self.topology {
            Topology::Single(u) => redact(u),
            Topology::Cluster(us) => us.iter().map(|u| redact(u)).collect::<Vec<_>>().join(","),
        };
        let connect_error =
            |source: Box<dyn std::error::Error + Send + Sync>| Error::Connect { url: url.clone(), source };
        let connecting = async {
            let conn = match &self.topology {
                Topology::Single(u) => {
                    let client = redis::Client::open(u.as_str())?;
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_number_of_retries(2)
                        .set_min_delay(Duration::from_millis(10))
                        .set_max_delay(Duration::from_millis(200));
                    Connection::Single(ConnectionManager::new_with_config(client, config).await?)
                }
                Topology::Cluster(us) => {
                    let client = ClusterClient::builder(us.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .retries(2)
                        .min_retry_wait(10)
                        .max_retry_wait(200)
                        .build()?;
                    Connection::Cluster(client.get_async_connection().await?)
                }
            };
            let pong: String = match conn.clone() {
                Connection::Single(mut c) => redis::cmd("PING").query_async(&mut c).await?,
                Connection::Cluster(mut c) => redis::cmd("PING").query_async(&mut c).await?,
            };
            if pong != "PONG" {
                return Err(RedisError::from((redis::ErrorKind::Client, "unexpected PING reply", pong)));
            }
            // Every decision script, so that no first check of a kind pays a NOSCRIPT round trip.
            for script in [&*CHECK, &*GCRA, &*GCRA_BATCH, &*WINDOW] {
                let loaded: String = match conn.clone() {
                    Connection::Single(mut c) => script.load_async(&mut c).await?,
                    Connection::Cluster(mut c) => script.load_async(&mut c).await?,
                };
                drop(loaded);
            }
            Ok(conn)
        };
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connect_error(Box::new(e))),
            Err(_) => {
                return Err(connect_error(format!("no answer within {:?}", self.connect_timeout).into()));
            }
        };
        tracing::debug!(%url, "tollgate-redis: connected");
        let near_max_keys = self.near_cache.then_some(self.near_cache_max_keys);
        Ok(RedisStore {
            near: near_max_keys.map(|n| Arc::new(NearCache::new(n))),
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                timeout: self.timeout,
                breaker: Breaker::new(self.breaker_threshold, self.breaker_cooldown),
                url,
                lease_ttl: self.lease_ttl,
                instance: instance_id(),
                lease_seq: std::sync::atomic::AtomicU64::new(0),
                near_max_keys,
            }),
            clock: self.clock,
        })
    }
}

/// A random id for this store instance (names its leases), from `std`'s randomly seeded hasher.
fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

impl RedisStore {
    /// A builder for one Redis node, e.g. `redis://127.0.0.1:6379/0` (`rediss://` needs a TLS
    /// feature of the `redis` crate).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Topology::Single(url.into()))
    }

    /// A builder for a Redis Cluster, from one or more of its nodes' URLs.
    pub fn cluster<I, S>(urls: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder::new(Topology::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    /// Connects to one Redis node with the default options.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::build`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).build().await
    }

    /// **For tests only** (see [`RedisStoreBuilder::clock`]): this store, sharing its connection,
    /// reading time from `clock`.
    #[must_use]
    pub fn with_clock(&self, clock: impl Clock) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            clock: Some(Arc::new(clock)),
            near: self.inner.near_max_keys.map(|n| Arc::new(NearCache::new(n))),
        }
    }

    /// What the near cache did so far (refusals answered without a round trip, remembered, not
    /// remembered for want of room), or `None` when it is off. Clones share one cache.
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|n| n.stats())
    }

    /// Whether the circuit breaker is open (Redis is considered down; decisions fail fast).
    pub fn is_breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The URL this store connects to, password redacted.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    fn now_arg(&self) -> String {
        self.clock.as_ref().map(|c| c.now().to_string()).unwrap_or_default()
    }

    /// Now on the near cache's clock: the test clock when there is one, else the local monotonic
    /// clock (never compared with Redis's `TIME`; see the `near_cache` module docs).
    fn local_now(&self, near: &NearCache) -> u64 {
        self.clock.as_ref().map_or_else(|| near.monotonic_now(), |c| c.now())
    }

    fn ttl_floor_ms(&self) -> u64 {
        if self.clock.is_some() { TEST_CLOCK_TTL_FLOOR_MS } else { 0 }
    }

    /// Runs `f` under the circuit breaker and the per-decision timeout.
    pub(crate) async fn guarded<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let pass = self.inner.breaker.enter().map_err(|open| {
            StoreError::Unavailable(format!(
                "circuit breaker open after {} consecutive failures of Redis at {}; next probe in {:?}",
                open.failures, self.inner.url, open.retry_in
            ))
        })?;
        let result = match tokio::time::timeout(self.inner.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.inner.timeout)),
        };
        self.inner.breaker.record(pass, result.is_ok());
        result
    }

    /// Runs one script call.
    pub(crate) async fn invoke(&self, script: &Script, call: &Call) -> Result<Value, StoreError> {
        let inv = call.invocation(script);
        let r = match &self.inner.conn {
            Connection::Single(c) => inv.invoke_async(&mut c.clone()).await,
            Connection::Cluster(c) => inv.invoke_async(&mut c.clone()).await,
        };
        r.map_err(|e| store_error(e, &self.inner.url))
    }

    async fn run(&self, call: &Call, count: usize) -> Result<Reply, StoreError> {
        decode(&self.invoke(call.script(), call).await?, count)
    }

    async fn check_batch(&self, checks: &[Check<'_, RedisLimit>], out: &mut [Snapshot]) -> Result<bool, StoreError> {
        if checks.len() != out.len() {
            return Err(StoreError::Protocol(format!("{} checks but {} snapshots", checks.len(), out.len())));
        }
        if checks.is_empty() {
            return Ok(true);
        }
        for c in checks {
            validate(c.limit.algorithm, &c.quota)?;
        }
        let keys: Vec<CheckKeys> =
            checks.iter().map(|c| check_keys(&self.inner.prefix, &c.limit.segment, c.key)).collect();
        let sent = match &self.near {
            Some(near) => {
                let now = self.local_now(near);
                if near.answer(now, checks, &keys, out) {
                    return Ok(false);
                }
                now
            }
            None => 0,
        };
        let now = self.now_arg();
        let groups = self.groups(&keys);
        let result = self
            .guarded(async {
                if let [only] = groups.as_slice() {
                    let reply =
                        self.run(&self.call(Mode::Check, &now, checks, &keys, only, None), checks.len()).await?;
                    out.copy_from_slice(&reply.snapshots);
                    return Ok(reply.all);
                }
                self.check_across_slots(&now, checks, &keys, &groups, out).await
            })
            .await;
        if let (Some(near), Ok(false)) = (&self.near, &result) {
            near.remember(sent, self.local_now(near), self.clock.is_none(), checks, &keys, out);
        }
        result
    }

    /// Checks grouped by hash slot: one group on a single node; one per hash tag in a cluster.
    fn groups(&self, keys: &[CheckKeys]) -> Vec<Vec<usize>> {
        if let Connection::Single(_) = self.inner.conn {
            return vec![(0..keys.len()).collect()];
        }
        let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match groups.iter_mut().find(|(tag, _)| *tag == k.tag) {
                Some((_, g)) => g.push(i),
                None => groups.push((k.tag, vec![i])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    fn call(
        &self,
        mode: Mode,
        now: &str,
        checks: &[Check<'_, RedisLimit>],
        keys: &[CheckKeys],
        group: &[usize],
        committed: Option<&[Snapshot]>,
    ) -> Call {
        let mut call = Call::new(mode, now, self.ttl_floor_ms(), group.len());
        for (j, &i) in group.iter().enumerate() {
            let last = committed.map_or(checks[i].max_wait, |s| s[j].wait);
            call.push(&checks[i], &keys[i], last);
        }
        call
    }

    /// The two-phase check of a batch whose keys lie in several cluster slots. Phase 1 peeks every
    /// slot (no writes), each finding when the request could go: any refusal ends the decision
    /// with nothing consumed. Phase 2 commits every slot at the latest of those times (a limit
    /// with no room by then refuses); if one refuses (or lost a race since phase 1) the others
    /// are refunded. So no quota is
    /// ever exceeded, and a refused batch consumes nothing once the refunds land; until then, for
    /// one round trip, concurrent checks may see that capacity as taken (they err on refusing).
    async fn check_across_slots(
        &self,
        now: &str,
        checks: &[Check<'_, RedisLimit>],
        keys: &[CheckKeys],
        groups: &[Vec<usize>],
        out: &mut [Snapshot],
    ) -> Result<bool, StoreError> {
        let peeks: Vec<Call> = groups.iter().map(|g| self.call(Mode::Peek, now, checks, keys, g, None)).collect();
        let replies = join_all(peeks.iter().zip(groups).map(|(c, g)| self.run(c, g.len()))).await;
        let mut all = true;
        for (reply, g) in replies.into_iter().zip(groups) {
            let reply = reply?;
            all &= reply.all;
            for (s, &i) in reply.snapshots.iter().zip(g) {
                out[i] = *s;
            }
        }
        if !all {
            return Ok(false);
        }
        // Every slot counts the request at the time it goes: the latest any slot found, from
        // its own clock reading (a cluster's nodes each read their own TIME).
        let go = Snapshot { wait: out.iter().map(|s| s.wait).max().unwrap_or_default(), ..Snapshot::EMPTY };
        let commits: Vec<Call> =
            groups.iter().map(|g| self.call(Mode::Commit, now, checks, keys, g, Some(&vec![go; g.len()]))).collect();
        let replies = join_all(commits.iter().zip(groups).map(|(c, g)| self.run(c, g.len()))).await;
        let mut failure = None;
        let mut taken = Vec::new();
        for (reply, g) in replies.into_iter().zip(groups) {
            match reply {
                Ok(reply) => {
                    for (s, &i) in reply.snapshots.iter().zip(g) {
                        out[i] = *s;
                    }
                    if reply.all {
                        taken.push((g, reply));
                    } else {
                        all = false;
                    }
                }
                Err(e) => {
                    all = false;
                    failure = Some(e);
                }
            }
        }
        if all {
            return Ok(true);
        }
        let refunds: Vec<Call> = taken
            .iter()
            .map(|(g, reply)| self.call(Mode::Refund, &reply.now, checks, keys, g, Some(&reply.snapshots)))
            .collect();
        for r in join_all(refunds.iter().zip(&taken).map(|(c, (g, _))| self.run(c, g.len()))).await {
            if let Err(e) = r {
                // The capacity comes back as the state refills or its window passes.
                tracing::warn!(error = %e, "tollgate-redis: could not refund a partially committed batch");
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }

    async fn block_key(&self, limit: &RedisLimit, key: Key<'_>, duration: Duration) -> Result<(), StoreError> {
        let keys = check_keys(&self.inner.prefix, &limit.segment, key);
        let sent = self.near.as_ref().map(|near| self.local_now(near));
        let call = Call::block(&self.now_arg(), self.ttl_floor_ms(), &keys, duration);
        self.guarded(async {
            self.run(&call, 0).await?;
            Ok(())
        })
        .await?;
        if let (Some(near), Some(sent)) = (&self.near, sent) {
            // The script keeps whole seconds and nanoseconds of blocks up to a century.
            let duration = duration.min(Duration::from_secs(100 * 365 * 86_400));
            near.remember_block(sent, self.local_now(near), self.clock.is_none(), &keys, duration);
        }
        Ok(())
    }

    /// Deletes the block key of `key` on `limit` (an operator lifting a penalty), and forgets
    /// what the near cache remembers of the key, so that Redis decides its next check.
    async fn unblock_key(&self, limit: &RedisLimit, key: Key<'_>) -> Result<(), StoreError> {
        let keys = check_keys(&self.inner.prefix, &limit.segment, key);
        self.guarded(async {
            let mut del = redis::cmd("DEL");
            del.arg(&keys.block[..]);
            let deleted: Result<i64, RedisError> = match &self.inner.conn {
                Connection::Single(c) => del.query_async(&mut c.clone()).await,
                Connection::Cluster(c) => del.query_async(&mut c.clone()).await,
            };
            deleted.map(drop).map_err(|e| store_error(e, &self.inner.url))
        })
        .await?;
        if let Some(near) = &self.near {
            near.forget(&keys.state);
        }
        Ok(())
    }
}

/// Maps a client error to a [`StoreError`] naming the URL.
fn store_error(e: RedisError, url: &str) -> StoreError {
    if e.is_timeout() {
        StoreError::Unavailable(format!("Redis at {url} timed out: {e}"))
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_cluster_error() {
        StoreError::Unavailable(format!("Redis at {url}: {e}"))
    } else if matches!(e.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::Parse) {
        StoreError::Protocol(format!("Redis at {url}: {e}"))
    } else {
        StoreError::Other(Box::new(e))
    }
}

impl Store for RedisStore {
    type Limit = RedisLimit;

    fn register(&self, spec: &LimitSpec) -> Result<RedisLimit, StoreError> {
        if crate::script::algorithm_code(spec.algorithm) == "?" {
            return Err(StoreError::Other(Box::new(Error::Config {
                field: "algorithm",
                value: spec.algorithm.name().to_owned(),
                reason: "not implemented by the Redis store",
            })));
        }
        Ok(RedisLimit { segment: limit_segment(spec), algorithm: spec.algorithm })
    }

    fn supports(&self, algorithm: Algorithm, quota: &Quota) -> Result<(), StoreError> {
        validate(algorithm, quota)
    }

    /// `unavailable` while the circuit breaker is open (decisions fail fast and the policies'
    /// failure modes decide), else `ok`; with the breaker's state, the URL, and the near
    /// cache's counts when it is on (`near_cache_hits`: refusals answered without a round trip).
    fn health(&self) -> StoreHealth {
        let open = self.inner.breaker.is_open();
        let topology = if matches!(self.inner.conn, Connection::Cluster(_)) { "cluster" } else { "single node" };
        let mut health = StoreHealth::ok("redis").breaker(if open { BreakerState::Open } else { BreakerState::Closed });
        health = if open {
            health.state(StoreState::Unavailable).detail(format!(
                "{} ({topology}): circuit breaker open, failing fast until a probe succeeds",
                self.inner.url
            ))
        } else {
            health.detail(format!("{} ({topology})", self.inner.url))
        };
        if let Some(near) = self.near_cache_stats() {
            health = health
                .counter("near_cache_hits", near.hits)
                .counter("near_cache_entries", u64::try_from(near.entries).unwrap_or(u64::MAX))
                .counter("near_cache_not_stored_full", near.not_stored_full);
        }
        health
    }

    fn check<'a>(
        &'a self,
        checks: &'a [Check<'a, RedisLimit>],
        out: &'a mut [Snapshot],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a {
        self.check_batch(checks, out)
    }

    fn block<'a>(
        &'a self,
        limit: &'a RedisLimit,
        key: Key<'a>,
        duration: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.block_key(limit, key, duration)
    }

    fn unblock<'a>(
        &'a self,
        limit: &'a RedisLimit,
        key: Key<'a>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.unblock_key(limit, key)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::{RedisServer, redis_available};
    use tollgate::{ManualClock, Quota};

    /// `build()` loads every decision script, so no first check of a kind pays a NOSCRIPT round
    /// trip.
    #[tokio::test]
    async fn build_loads_every_decision_script() {
        if !redis_available() {
            return;
        }
        let server = RedisServer::start();
        let _store = RedisStore::connect(server.url()).await.unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let hashes = [CHECK.get_hash(), GCRA.get_hash(), GCRA_BATCH.get_hash(), WINDOW.get_hash()];
        let exists: Vec<u8> = redis::cmd("SCRIPT").arg("EXISTS").arg(&hashes[..]).query_async(&mut con).await.unwrap();
        assert_eq!(exists, [1, 1, 1, 1]);
    }

    /// The refund of the cross-slot path gives back exactly what a commit took: afterwards the
    /// limit answers as one that never saw the commit (immediate and delayed commits alike).
    #[tokio::test]
    async fn refund_undoes_a_commit() {
        if !redis_available() {
            return;
        }
        let server = RedisServer::start();
        let base = RedisStore::connect(server.url()).await.unwrap();
        let q: Quota = "4/s".parse().unwrap();
        let key = Key::Text("k");
        let algorithms = [Algorithm::Gcra, Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::SlidingLog];
        for algorithm in algorithms {
            for (prefill, max_wait) in [(1, Duration::ZERO), (4, Duration::from_secs(2))] {
                let clock = ManualClock::at(1_700_000_000_000_000_000);
                let store = base.with_clock(clock.clone());
                let case = format!("{}-{prefill}", algorithm.name());
                let spec = |n: &str| LimitSpec { name: n.into(), policy: format!("refund-{case}"), algorithm };
                let (a, b) = (store.register(&spec("a")).unwrap(), store.register(&spec("b")).unwrap());
                let check = |limit, cost, max_wait| Check { limit, key, quota: q, cost, max_wait };
                let mut out = [Snapshot::EMPTY];
                for _ in 0..prefill {
                    assert!(store.check(&[check(&a, 1, Duration::ZERO)], &mut out).await.unwrap());
                    assert!(store.check(&[check(&b, 1, Duration::ZERO)], &mut out).await.unwrap());
                }
                clock.advance(Duration::from_millis(3));
                let checks = [check(&a, 2, max_wait)];
                let keys = [check_keys(&store.inner.prefix, &a.segment, key)];
                let now = store.now_arg();
                // As the cross-slot path does: peek for the time it goes, commit at that time.
                let peek = store.run(&store.call(Mode::Peek, &now, &checks, &keys, &[0], None), 1).await.unwrap();
                let go = Some(peek.snapshots.as_slice());
                let commit = store.run(&store.call(Mode::Commit, &now, &checks, &keys, &[0], go), 1).await.unwrap();
                assert!(commit.all, "{case}: {:?}", commit.snapshots);
                assert_eq!(commit.snapshots[0].wait.is_zero(), max_wait.is_zero(), "{case}");
                let refund = store.call(Mode::Refund, &commit.now, &checks, &keys, &[0], Some(&commit.snapshots));
                store.run(&refund, 1).await.unwrap();
                clock.advance(Duration::from_millis(7));
                let (mut sa, mut sb) = ([Snapshot::EMPTY], [Snapshot::EMPTY]);
                let pa = store.check(&[check(&a, 1, Duration::from_secs(2))], &mut sa).await.unwrap();
                let pb = store.check(&[check(&b, 1, Duration::from_secs(2))], &mut sb).await.unwrap();
                assert_eq!((pa, sa), (pb, sb), "{case}: refunded (left) vs never committed (right)");
            }
        }
    }
}
