//! External clients (PROTOCOLS §6): processes outside the group that call into its replicas
//! through the members' listeners, over connections they keep open.
//!
//! The client itself is the `derecho-client` crate ([`ExternalClient`]): it needs no executor
//! and no member runtime. This module adds the typed side: an [`ExternalHandle`] names a
//! replicated type and a shard, and the `TExternal` type `#[replicated]` generates wraps one.
//! The members' side (sessions on the listener, relaying ordered calls, the exactly-once record
//! of each client's calls) lives in the driver and the service.

use std::marker::PhantomData;

pub use derecho_client::{
    Ack, Blocking, Client as ExternalClient, ClientBuilder, ClientConfig, ClientError, ClientView, block_on,
};
use rkyv::util::AlignedVec;

use super::Replicated;
use crate::protocol::{NodeId, ShardRef, Version};

/// Calls into the replicas of type `T` in one shard, from outside the group; the client
/// `#[replicated]` generates for external use wraps one. `Send + Sync` and cheap to clone.
pub struct ExternalHandle<T> {
    client: ExternalClient,
    shard: ShardRef,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ExternalHandle<T> {
    fn clone(&self) -> Self {
        Self { client: self.client.clone(), shard: self.shard, _type: PhantomData }
    }
}

impl<T> std::fmt::Debug for ExternalHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalHandle").field("shard", &self.shard).finish()
    }
}

impl<T: Replicated> ExternalHandle<T> {
    /// A handle on `shard` through `client`.
    pub fn new(client: ExternalClient, shard: ShardRef) -> Self {
        Self { client, shard, _type: PhantomData }
    }

    /// The client.
    pub fn client(&self) -> &ExternalClient {
        &self.client
    }

    /// The shard.
    pub fn shard(&self) -> ShardRef {
        self.shard
    }

    /// Ordered call `method` (its index in `T`'s method table) with archived arguments,
    /// relayed by a member of the shard and applied once however often it is sent again; the
    /// member checks that it hosts `T` (the same method table: [`Replicated::FINGERPRINT`]).
    /// Returns the version it was applied at and the reply.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; [`ClientError::Remote`] with [`crate::rpc::RemoteKind::TypeMismatch`]
    /// if the member hosts another type or version.
    pub async fn ordered_raw(&self, method: u32, args: &[u8]) -> Result<(Version, AlignedVec), ClientError> {
        self.client.ordered_raw(self.shard, method, T::FINGERPRINT, args).await
    }

    /// Query `method` at member `to` (`None`: any member of the shard), checked as
    /// [`ExternalHandle::ordered_raw`].
    ///
    /// # Errors
    ///
    /// As [`ExternalHandle::ordered_raw`].
    pub async fn query_raw(&self, to: Option<NodeId>, method: u32, args: &[u8]) -> Result<AlignedVec, ClientError> {
        self.client.query_raw(self.shard, to, method, T::FINGERPRINT, args).await
    }
}
