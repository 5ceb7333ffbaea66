//! The lease of an upgraded WebSocket connection, handed from the engine's upgrade check to the
//! socket.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::{MessageGate, MessageLimits};
use crate::concurrency::ConnectionLease;
use crate::key::OwnedKey;

/// A WebSocket connection's concurrency lease, taken by the [engine](crate::engine) when it
/// admits an upgrade request, with the route's message limits and the client's key (what the
/// lease and the per-key message limits count by). An adapter puts it where the upgrade handler
/// finds it (the request's extensions); the handler moves the lease into the upgraded socket so
/// that it lives as long as the socket. If the handler never takes it, it is released when the
/// response is finished ([`ResponsePlan::apply`](crate::engine::ResponsePlan::apply)).
#[derive(Clone)]
pub struct UpgradeLease {
    slot: Arc<Mutex<Option<ConnectionLease>>>,
    messages: Arc<MessageLimits>,
    key: OwnedKey,
}

impl fmt::Debug for UpgradeLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeLease").field("messages", &self.messages).field("key", &self.key).finish_non_exhaustive()
    }
}

impl UpgradeLease {
    pub(crate) fn new(lease: ConnectionLease, messages: Arc<MessageLimits>, key: OwnedKey) -> Self {
        Self { slot: Arc::new(Mutex::new(Some(lease))), messages, key }
    }

    /// The client's key: what the connection's lease and the per-key message limits count by.
    pub fn key(&self) -> &OwnedKey {
        &self.key
    }

    /// A message gate for the connection: the route's limits, its per-key limits counted under
    /// [`UpgradeLease::key`].
    pub fn gate(&self) -> MessageGate {
        MessageGate::new(Arc::clone(&self.messages)).with_key(self.key.clone())
    }

    /// Takes the lease (once; later calls get `None`).
    pub fn take(&self) -> Option<ConnectionLease> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The route's message limits.
    pub fn message_limits(&self) -> &Arc<MessageLimits> {
        &self.messages
    }

    /// Releases the lease if no one took it; whether there was one.
    pub(crate) fn release_untaken(&self) -> bool {
        self.take().is_some()
    }
}
