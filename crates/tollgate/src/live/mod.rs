//! Live limits: change the running configuration without a restart.
//!
//! A [`LiveEngine`] holds the [`Engine`] every adapter decides with, built from a [`Config`], and
//! replaces it whole and atomically while requests are in flight: [`LiveEngine::reload`] with a
//! new configuration, [`LiveEngine::update`] (and its shorthands: a key's tier or quota, an
//! allow- or deny-list entry) with an edit of the running one. A new configuration is validated
//! in full first — the whole new engine is built before anything is swapped — so an invalid one
//! is refused, logged, and changes nothing. Penalties are state, not configuration:
//! [`LiveEngine::lift_penalty`] lifts one in the store.
//!
//! State survives a reload: the new engine takes over the counters and penalty blocks of every
//! limit whose name, key and algorithm did not change (a changed quota applies from the next
//! decision), the places held under every concurrency limiter of the same name, and the per-key
//! message state of every WebSocket route (see [`Engine::keeping_state_of`]). A removed limit's
//! state is released once the last request the old engine admitted is done. Each reload is
//! logged with what changed ([`Changes`]) and counted
//! ([`RELOADS`](crate::observe::RELOADS)).
//!
//! Requests pay no lock for this: an adapter given a [`LiveEngine`] (through an
//! [`EngineSource`]) loads the current engine once per request, from an `arc-swap` cell
//! (a few atomic operations, no lock, no allocation).
//!
//! With the `reload` feature, [`LiveEngine::watch`] reloads a configuration file when it
//! changes and, on Unix, on `SIGHUP`.
//!
//! ```
//! use tollgate::live::LiveEngine;
//!
//! let live = LiveEngine::from_config(r#"
//!     [policies.api]
//!     limits = [{ name = "per_user", quota = "100/min", key = "identity", tiers = { pro = "1000/min" } }]
//!     [[routes]]
//!     path = "/api/{*rest}"
//!     policy = "api"
//! "#.parse()?)?;
//! // An operator moves alice to the pro tier, and blocks a network:
//! live.set_key_tier("api", "alice", Some("pro"))?;
//! live.add_denied("api", "198.51.100.0/24")?;
//! // A broken configuration is refused; the running limits stay as they were.
//! let broken = "[policies.api]\nlimits = [{ name = \"per_user\", quota = \"100/fortnight\" }]".parse::<tollgate::Config>();
//! assert!(broken.is_err());
//! let unknown_tier = live.set_key_tier("api", "bob", Some("platinum"));
//! assert!(unknown_tier.unwrap_err().to_string().contains("platinum"));
//! assert_eq!(live.config().policies["api"].key_tiers["alice"], "pro");
//! # Ok::<(), tollgate::Error>(())
//! ```

mod changes;
#[cfg(feature = "reload")]
mod watch;

pub use changes::Changes;
#[cfg(feature = "reload")]
pub use watch::{Watch, Watching};

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::concurrency::LeaseStore;
use crate::config::Config;
use crate::engine::Engine;
use crate::error::Error;
use crate::key::Key;
use crate::observe;
use crate::quota::Quota;
use crate::store::{MemoryStore, Store};

/// Builds an engine from a configuration (a [`LiveEngine`] builds one at every reload).
type Build<St> = Box<dyn Fn(&Config) -> Result<Engine<St>, Error> + Send + Sync>;

/// The engine of a configuration that can change while it serves: see the [module docs](self).
/// Cheap to clone (clones share the engine), `Send + Sync`: the application keeps one to
/// reload or edit the limits, and hands one to the adapter's layer.
pub struct LiveEngine<St: Store = MemoryStore> {
    shared: Arc<Shared<St>>,
}

struct Shared<St: Store> {
    current: ArcSwap<Engine<St>>,
    /// The running configuration. Held while a reload builds and swaps, so reloads happen one
    /// at a time and none is lost; requests never take it.
    config: Mutex<Config>,
    build: Build<St>,
    /// The bytes of the configuration file last read by a reload from a path, so that a file
    /// watch does not reload what `SIGHUP` (or a call) already did.
    last_read: Mutex<Option<Vec<u8>>>,
}

impl<St: Store> Clone for LiveEngine<St> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<St: Store> fmt::Debug for LiveEngine<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveEngine").field("engine", &self.shared.current.load()).finish_non_exhaustive()
    }
}

impl LiveEngine<MemoryStore> {
    /// The engine `config` describes, on one in-memory store kept across reloads (see
    /// [`Engine::from_config`]).
    pub fn from_config(config: Config) -> Result<Self, Error> {
        let store = config.memory_store();
        Self::from_config_with(config, store)
    }
}

impl<St: Store + Clone> LiveEngine<St> {
    /// The engine `config` describes, its policies on clones of `store` (e.g. a Redis store),
    /// kept across reloads (see [`Engine::from_config_with`]).
    pub fn from_config_with(config: Config, store: St) -> Result<Self, Error> {
        Self::new(config, move |config| Engine::from_config_with(config, &store))
    }

    /// [`LiveEngine::from_config_with`], the concurrency leases counted in `leases` (see
    /// [`Engine::from_config_with_leases`]).
    pub fn from_config_with_leases<L: LeaseStore + Clone>(config: Config, store: St, leases: L) -> Result<Self, Error> {
        Self::new(config, move |config| Engine::from_config_with_leases(config, &store, &leases))
    }
}

impl<St: Store + Clone> LiveEngine<St> {
    /// The engine `build` makes of `config`; every reload builds the new engine with `build`,
    /// e.g. to add routes of the application's own to those of the configuration. `build` must
    /// put the policies of every engine it makes on the same store (clones of it), so that a new
    /// engine can take over the state of the running one.
    ///
    /// ```
    /// use tollgate::engine::{Engine, Limits};
    /// use tollgate::live::LiveEngine;
    /// use tollgate::{ConcurrencyLimiter, MemoryStore};
    ///
    /// let store = MemoryStore::default();
    /// let live = LiveEngine::new(tollgate::Config::default(), move |config| {
    ///     let uploads = Limits::new().in_flight(ConcurrencyLimiter::new("uploads").per_key(2));
    ///     Ok(Engine::from_config_with(config, &store)?.route("/upload", uploads))
    /// })?;
    /// # let _ = live;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn new(
        config: Config,
        build: impl Fn(&Config) -> Result<Engine<St>, Error> + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        config.validate()?;
        let engine = build(&config)?;
        Ok(Self {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(engine),
                config: Mutex::new(config),
                build: Box::new(build),
                last_read: Mutex::new(None),
            }),
        })
    }

    /// The engine deciding now. A request takes it once and keeps it to its end, so it is
    /// decided by one configuration throughout.
    pub fn engine(&self) -> Arc<Engine<St>> {
        self.shared.current.load_full()
    }

    /// The running configuration (a copy).
    pub fn config(&self) -> Config {
        self.running().clone()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Config> {
        self.shared.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the running configuration with `config`, atomically: the whole new engine is
    /// built first, taking over the state of the running one (see the [module docs](self)), then
    /// swapped in; requests in flight finish on the engine they started with. An invalid
    /// configuration is refused with the error (naming the field and value), logged, and
    /// changes nothing; so is a change of `[store]`, which needs a restart. Returns what changed,
    /// which is also logged.
    pub fn reload(&self, config: Config) -> Result<Changes, Error> {
        self.reload_from(config, "api")
    }

    /// [`LiveEngine::reload`] with the configuration file at `path`: a file that cannot be read or
    /// parsed is refused as an invalid configuration is.
    pub fn reload_from_path(&self, path: impl AsRef<Path>) -> Result<Changes, Error> {
        self.reload_path(path.as_ref(), "api")
    }

    pub(crate) fn reload_path(&self, path: &Path, source: &'static str) -> Result<Changes, Error> {
        let read = std::fs::read(path)
            .map_err(|e| Error::ConfigFile { path: path.display().to_string(), source: Box::new(e) })
            .map_err(|error| refused(error, source))?;
        self.remember_read(Some(read.clone()));
        let text = String::from_utf8(read)
            .map_err(|e| Error::ConfigFile { path: path.display().to_string(), source: Box::new(e) });
        match text.and_then(|text| Config::from_text_of(path, &text)) {
            Ok(config) => self.reload_from(config, source),
            Err(error) => Err(refused(error, source)),
        }
    }

    /// The bytes of the configuration file last read by a reload from a path.
    #[cfg(feature = "reload")]
    pub(crate) fn last_read(&self) -> Option<Vec<u8>> {
        self.shared.last_read.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records `read` as the configuration file's bytes last read; `None` forgets them.
    pub(crate) fn remember_read(&self, read: Option<Vec<u8>>) {
        *self.shared.last_read.lock().unwrap_or_else(PoisonError::into_inner) = read;
    }

    /// Edits the running configuration with `edit` and reloads it (see [`LiveEngine::reload`]):
    /// the edit applies in full or, when the result is invalid, not at all. Edits are lost when a
    /// configuration file is reloaded later: write them to the file to keep them.
    ///
    /// ```
    /// use tollgate::live::LiveEngine;
    ///
    /// let live = LiveEngine::from_config(
    ///     "[policies.api]\nlimits = [{ name = \"per_ip\", quota = \"10/s\" }]\n[[routes]]\npath = \"/\"\npolicy = \"api\"".parse()?,
    /// )?;
    /// let changes = live.update(|config| {
    ///     config.policies.get_mut("api").map(|p| p.limits[0].quota = "20/s".parse().unwrap());
    /// })?;
    /// assert_eq!(changes.changed, ["api/per_ip: 10/1s -> 20/1s"]);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn update(&self, edit: impl FnOnce(&mut Config)) -> Result<Changes, Error> {
        let mut running = self.running();
        let mut config = running.clone();
        edit(&mut config);
        self.apply(&mut running, config, "api")
    }

    fn reload_from(&self, config: Config, source: &'static str) -> Result<Changes, Error> {
        let mut running = self.running();
        self.apply(&mut running, config, source)
    }

    /// Validates `config`, builds its engine on the running one's state, swaps it in, logs and
    /// counts; or refuses it, logs and counts. `running` is held throughout.
    fn apply(&self, running: &mut Config, config: Config, source: &'static str) -> Result<Changes, Error> {
        let built = config.validate().and_then(|()| {
            if config.store != running.store {
                return Err(Error::config(
                    "store",
                    "(changed)",
                    "the store cannot change while running; restart to apply it",
                ));
            }
            (self.shared.build)(&config)
        });
        let new = match built {
            Ok(new) => new,
            Err(error) => return Err(refused(error, source)),
        };
        let old = self.shared.current.load_full();
        let new = new.keeping_state_of(&old);
        let changes = Changes::between(&old, &new);
        self.shared.current.store(Arc::new(new));
        *running = config;
        drop(old);
        observe::reload(source, "applied");
        tracing::info!(
            source,
            changed = changes.changed.len(),
            added = changes.added.len(),
            removed = changes.removed.len(),
            reset = changes.reset.len(),
            unchanged = changes.unchanged,
            "tollgate reloaded its limits: {changes}"
        );
        Ok(changes)
    }

    /// Puts `key` (an identity, IP address or header value) in `tier` on every limit of
    /// `policy` that has that tier, or, with `None`, takes it out (its requests take the tier the
    /// application gives them again): the configuration's `key_tiers`, edited and reloaded
    /// ([`LiveEngine::update`]). An unknown policy or tier is an error and changes nothing.
    pub fn set_key_tier(&self, policy: &str, key: &str, tier: Option<&str>) -> Result<Changes, Error> {
        self.edit_policy(policy, |p| match tier {
            Some(tier) => {
                p.key_tiers.insert(key.to_owned(), tier.to_owned());
            }
            None => {
                p.key_tiers.remove(key);
            }
        })
    }

    /// Gives `key` its own `quota` on the limit `limit` of `policy`, or, with `None`, takes it
    /// away: the limit's `key_quotas`, edited and reloaded ([`LiveEngine::update`]).
    pub fn set_key_quota(&self, policy: &str, limit: &str, key: &str, quota: Option<Quota>) -> Result<Changes, Error> {
        let mut found = false;
        let changes = self.edit_policy(policy, |p| {
            if let Some(l) = p.limits.iter_mut().find(|l| l.name == limit) {
                found = true;
                match quota {
                    Some(q) => {
                        l.key_quotas.insert(key.to_owned(), q);
                    }
                    None => {
                        l.key_quotas.remove(key);
                    }
                }
            }
        });
        if !found && changes.is_ok() {
            // Nothing was edited: the reload was of the running configuration, and changed nothing.
            return Err(Error::config(format!("policies.{policy}.limits"), format!("{limit:?}"), "no such limit"));
        }
        changes
    }

    /// Adds `entry` (an IP address, a network such as `10.0.0.0/8`, or an identity) to the
    /// allow-list of `policy`: its requests are never limited.
    pub fn add_allowed(&self, policy: &str, entry: &str) -> Result<Changes, Error> {
        self.edit_policy(policy, |p| push_new(&mut p.allow, entry))
    }

    /// Removes `entry` from the allow-list of `policy`.
    pub fn remove_allowed(&self, policy: &str, entry: &str) -> Result<Changes, Error> {
        self.edit_policy(policy, |p| p.allow.retain(|e| e != entry))
    }

    /// Adds `entry` (an IP address, a network or an identity) to the deny-list of `policy`:
    /// its requests are refused (403).
    pub fn add_denied(&self, policy: &str, entry: &str) -> Result<Changes, Error> {
        self.edit_policy(policy, |p| push_new(&mut p.deny, entry))
    }

    /// Removes `entry` from the deny-list of `policy`.
    pub fn remove_denied(&self, policy: &str, entry: &str) -> Result<Changes, Error> {
        self.edit_policy(policy, |p| p.deny.retain(|e| e != entry))
    }

    fn edit_policy(&self, policy: &str, edit: impl FnOnce(&mut crate::config::PolicyConfig)) -> Result<Changes, Error> {
        let mut running = self.running();
        let mut config = running.clone();
        let Some(p) = config.policies.get_mut(policy) else {
            return Err(refused(Error::config("policies", format!("{policy:?}"), "no such policy"), "api"));
        };
        edit(p);
        self.apply(&mut running, config, "api")
    }

    /// Lifts the penalty block of `key` on the limit `limit` of every policy named `policy` in
    /// the running engine (see [`Policy::lift_penalty`](crate::Policy::lift_penalty)): state in
    /// the store, not configuration, so nothing is reloaded.
    ///
    /// ```
    /// use tollgate::Key;
    /// use tollgate::live::LiveEngine;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let live = LiveEngine::from_config("[policies.api]\npenalty = \"10min\"\nlimits = [{ name = \"per_ip\", quota = \"1/s\" }]\n[[routes]]\npath = \"/\"\npolicy = \"api\"".parse()?)?;
    /// live.lift_penalty("api", "per_ip", Key::Ip("192.0.2.1".parse()?)).await?;
    /// assert!(live.lift_penalty("api", "per_user", Key::Text("alice")).await.is_err(), "no such limit");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn lift_penalty(&self, policy: &str, limit: &str, key: Key<'_>) -> Result<(), Error> {
        let engine = self.engine();
        let mut policies: Vec<&crate::Policy<St>> = Vec::new();
        for (_, limits) in engine.all_limits() {
            for p in limits.policy.iter().chain(&limits.body_bytes) {
                if p.name() == policy && !policies.iter().any(|q| q.same(p)) {
                    policies.push(p);
                }
            }
        }
        if policies.is_empty() {
            return Err(Error::config("policies", format!("{policy:?}"), "no such policy in the running engine"));
        }
        for p in policies {
            p.lift_penalty(limit, key).await?;
        }
        Ok(())
    }
}

/// Adds `entry` to `list` unless it is there.
fn push_new(list: &mut Vec<String>, entry: &str) {
    if !list.iter().any(|e| e == entry) {
        list.push(entry.to_owned());
    }
}

/// A refused reload, logged and counted: the running limits stay.
#[cold]
fn refused(error: Error, source: &'static str) -> Error {
    observe::reload(source, "refused");
    tracing::error!(source, %error, "tollgate refused the new configuration; the running limits are unchanged");
    error
}

/// Where an adapter finds the engine that decides a request: a fixed [`Engine`], or the current
/// one of a [`LiveEngine`]. Every adapter's layer holds one (`From` either), and loads it once
/// per request: a fixed engine is a reference, a live one an `arc-swap` load (no lock).
///
/// ```
/// use tollgate::engine::{Engine, Limits};
/// use tollgate::live::{EngineSource, LiveEngine};
///
/// let fixed = EngineSource::from(Engine::new(Limits::new()));
/// assert!(fixed.live().is_none());
/// let live = EngineSource::from(LiveEngine::from_config(tollgate::Config::default())?);
/// let engine = live.load();
/// assert_eq!(engine.header_options(), &tollgate::HeaderOptions::default());
/// # Ok::<(), tollgate::Error>(())
/// ```
pub struct EngineSource<St: Store = MemoryStore> {
    kind: SourceKind<St>,
}

// The fixed engine inline: a layer holds one source, and its requests then read the engine with
// no pointer more than before live engines existed.
#[allow(clippy::large_enum_variant)]
enum SourceKind<St: Store> {
    Fixed(Engine<St>),
    Live(LiveEngine<St>),
}

impl<St: Store> Clone for EngineSource<St> {
    fn clone(&self) -> Self {
        let kind = match &self.kind {
            SourceKind::Fixed(engine) => SourceKind::Fixed(engine.clone()),
            SourceKind::Live(live) => SourceKind::Live(live.clone()),
        };
        Self { kind }
    }
}

impl<St: Store> fmt::Debug for EngineSource<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SourceKind::Fixed(engine) => f.debug_tuple("Fixed").field(engine).finish(),
            SourceKind::Live(live) => f.debug_tuple("Live").field(live).finish(),
        }
    }
}

impl<St: Store> From<Engine<St>> for EngineSource<St> {
    fn from(engine: Engine<St>) -> Self {
        Self { kind: SourceKind::Fixed(engine) }
    }
}

impl<St: Store> From<LiveEngine<St>> for EngineSource<St> {
    fn from(live: LiveEngine<St>) -> Self {
        Self { kind: SourceKind::Live(live) }
    }
}

impl<St: Store> EngineSource<St> {
    /// The engine for one request, on its synchronous path: hold it no longer than that (a live
    /// engine's load pins the engine in a slot of the thread's own, of which there are few).
    #[inline(always)]
    pub fn load(&self) -> CurrentEngine<'_, St> {
        match &self.kind {
            SourceKind::Fixed(engine) => CurrentEngine { kind: CurrentKind::Fixed(engine) },
            SourceKind::Live(live) => CurrentEngine { kind: CurrentKind::Pinned(live.shared.current.load()) },
        }
    }

    /// The engine for one request that awaits (a store with I/O): it may be held across awaits.
    pub fn load_owned(&self) -> CurrentEngine<'_, St> {
        match &self.kind {
            SourceKind::Fixed(engine) => CurrentEngine { kind: CurrentKind::Fixed(engine) },
            SourceKind::Live(live) => CurrentEngine { kind: CurrentKind::Owned(live.shared.current.load_full()) },
        }
    }

    /// The live engine, if the source is one.
    pub fn live(&self) -> Option<&LiveEngine<St>> {
        match &self.kind {
            SourceKind::Fixed(_) => None,
            SourceKind::Live(live) => Some(live),
        }
    }

    /// Changes a fixed engine with `edit` (an adapter's builder methods: routes, keys, headers).
    /// A live engine's come from its configuration and are not changed: the edit is skipped with
    /// a warning, as building the engine with [`LiveEngine::new`] is the way to add them.
    #[must_use]
    pub fn edit(self, edit: impl FnOnce(Engine<St>) -> Engine<St>) -> Self {
        match self.kind {
            SourceKind::Fixed(engine) => Self { kind: SourceKind::Fixed(edit(engine)) },
            SourceKind::Live(_) => {
                tracing::warn!(
                    "tollgate: a setting of a layer built on a live engine is ignored: its routes, keys and \
                     headers come from its configuration (add them in LiveEngine::new's build instead)"
                );
                self
            }
        }
    }
}

/// The engine deciding a request: see [`EngineSource::load`]. Dereferences to the [`Engine`].
pub struct CurrentEngine<'a, St: Store> {
    kind: CurrentKind<'a, St>,
}

enum CurrentKind<'a, St: Store> {
    Fixed(&'a Engine<St>),
    Pinned(arc_swap::Guard<Arc<Engine<St>>>),
    Owned(Arc<Engine<St>>),
}

impl<St: Store> Deref for CurrentEngine<'_, St> {
    type Target = Engine<St>;

    #[inline(always)]
    fn deref(&self) -> &Engine<St> {
        match &self.kind {
            CurrentKind::Fixed(engine) => engine,
            CurrentKind::Pinned(guard) => guard,
            CurrentKind::Owned(engine) => engine,
        }
    }
}

impl<St: Store> fmt::Debug for CurrentEngine<'_, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
