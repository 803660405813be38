//! What a replicated type provides ([`Replicated`], written by `#[replicated]`): its method
//! table, how its methods are applied and queried, its state for new replicas; and the
//! type-erased replica the service holds.

use std::any::Any;
use std::task::Poll;

use rkyv::util::AlignedVec;

use crate::context::{CallContext, with_context};

/// One method of a replicated type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// Its name in the source.
    pub name: &'static str,
    /// An ordered operation (`&mut self`); otherwise a query (`&self`).
    pub ordered: bool,
    /// An `async fn`: it runs on the shard's worker, one call at a time, in order.
    pub is_async: bool,
}

/// What a handler gives back: its reply now, or a future of it (an `async fn`).
pub enum Applied<'a> {
    /// The archived reply.
    Now(Result<AlignedVec, HandlerError>),
    /// An async handler under way; it borrows the replica until it completes.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Result<AlignedVec, HandlerError>> + 'a>>),
}

impl Applied<'_> {
    /// The reply of a synchronous handler; `None` for an async one still under way.
    pub fn now(self) -> Option<Result<AlignedVec, HandlerError>> {
        match self {
            Applied::Now(r) => Some(r),
            Applied::Later(_) => None,
        }
    }
}

impl std::fmt::Debug for Applied<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Now(r) => write!(f, "Applied::Now({:?})", r.as_ref().map(|v| v.len())),
            Applied::Later(_) => f.write_str("Applied::Later"),
        }
    }
}

/// Why a handler could not run a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// No method with that index, or not of that kind (ordered or query).
    #[error("no {kind} method {method} in {ty}")]
    NoSuchMethod {
        /// The type.
        ty: &'static str,
        /// The index.
        method: u32,
        /// "ordered" or "query".
        kind: &'static str,
    },
    /// The arguments did not validate as the method's archived arguments.
    #[error("arguments of {method} do not validate: {reason}")]
    BadArguments {
        /// The method's name.
        method: &'static str,
        /// What rkyv found.
        reason: String,
    },
    /// The reply could not be archived.
    #[error("the reply of {method} could not be archived: {reason}")]
    Reply {
        /// The method's name.
        method: &'static str,
        /// What rkyv said.
        reason: String,
    },
    /// This member holds no replica of the shard (it left the shard, or its state has not
    /// arrived).
    #[error("this member holds no replica of {shard}")]
    NoReplica {
        /// The shard.
        shard: crate::protocol::ShardRef,
    },
    /// An ordered call delivered in an unordered shard: without a total order, replicas would
    /// apply calls in different orders, so none is applied.
    #[error("{shard} is unordered: ordered calls are not applied there")]
    Unordered {
        /// The shard.
        shard: crate::protocol::ShardRef,
    },
    /// A method its table calls synchronous answered later (a type implemented by hand whose
    /// table lies).
    #[error("method {method} is marked synchronous but answered asynchronously")]
    NotSynchronous {
        /// The method's index.
        method: u32,
    },
}

impl HandlerError {
    /// The kind of error a caller is told ([`super::wire::RemoteKind`]).
    pub fn kind(&self) -> super::wire::RemoteKind {
        use super::wire::RemoteKind;
        match self {
            Self::NoSuchMethod { .. } => RemoteKind::NoSuchMethod,
            Self::BadArguments { .. } => RemoteKind::BadArguments,
            Self::Reply { .. } => RemoteKind::BadReply,
            Self::NoReplica { .. } => RemoteKind::NoReplica,
            Self::Unordered { .. } => RemoteKind::Unordered,
            Self::NotSynchronous { .. } => RemoteKind::NotSynchronous,
        }
    }
}

/// A replicated type: what `#[replicated]` generates for it.
///
/// Ordered handlers must be deterministic: every replica applies the same calls in the same
/// order and must reach the same state, from the replica, the arguments and the call's
/// [`crate::rpc::CallContext`] alone. A persisting service ([`crate::rpc::Service::persist_to`])
/// replays its log through the same handlers at a total restart; calls are not made while it
/// does ([`crate::rpc::CallError::Replaying`]). An ordered call a handler spawned was delivered
/// and logged itself, so it is replayed once, on its own; a handler that awaits a call's reply
/// cannot be replayed (the reply is not in the log), and recovery refuses such a log
/// ([`crate::rpc::RecoveryError::Replay`]) rather than rebuild a different replica.
pub trait Replicated: Sized + 'static {
    /// The typed client of one shard (`#[replicated]` generates `TClient`), made from a handle:
    /// [`Service::client`](super::Service::client).
    type Client: From<super::Handle<Self>>;
    /// The type's name.
    const NAME: &'static str;
    /// Its methods; a method's index in this table is its id on the wire.
    const METHODS: &'static [Method];

    /// Applies ordered method `method` to this replica: the archived reply, or for an `async`
    /// method a future of it (which owns a copy of `args`). Errors ([`HandlerError`]): no such
    /// ordered method, arguments that do not validate.
    fn apply<'a>(&'a mut self, method: u32, args: &[u8]) -> Applied<'a>;

    /// Runs query `method`, as [`Replicated::apply`].
    fn query<'a>(&'a self, method: u32, args: &[u8]) -> Applied<'a>;

    /// A fingerprint of [`Replicated::METHODS`] with each method's argument and reply types:
    /// members (and external clients) that disagree on it disagree on what a method id means,
    /// and are refused (`#[replicated]` computes it from the source).
    const FINGERPRINT: u64;

    /// This replica's state, for a member that joins its shard.
    ///
    /// # Errors
    ///
    /// The state could not be archived.
    fn snapshot(&self) -> Result<Vec<u8>, StateError>;

    /// A replica from a snapshot.
    ///
    /// # Errors
    ///
    /// The bytes are not a snapshot of this type.
    fn restore(state: &[u8]) -> Result<Self, StateError>;
}

/// Why a replica's state could not be archived, or read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Fewer bytes than the state's header.
    #[error("{ty}: a state of {len} bytes, shorter than its header")]
    Short {
        /// The type.
        ty: &'static str,
        /// The bytes given.
        len: usize,
    },
    /// rkyv could not archive the replica, or the bytes are not an archived replica.
    #[error("{ty}: {reason}")]
    Archive {
        /// The type.
        ty: &'static str,
        /// What rkyv said.
        reason: String,
    },
}

/// A replica behind a type-erased pointer.
pub(super) trait Hosted: Any {
    fn apply<'a>(&'a mut self, method: u32, args: &[u8]) -> Applied<'a>;
    fn query<'a>(&'a self, method: u32, args: &[u8]) -> Applied<'a>;
    fn is_async(&self, method: u32) -> bool;
    fn snapshot(&self) -> Result<Vec<u8>, StateError>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Replicated> Hosted for T {
    fn apply<'a>(&'a mut self, method: u32, args: &[u8]) -> Applied<'a> {
        Replicated::apply(self, method, args)
    }
    fn query<'a>(&'a self, method: u32, args: &[u8]) -> Applied<'a> {
        Replicated::query(self, method, args)
    }
    fn is_async(&self, method: u32) -> bool {
        T::METHODS.get(method as usize).is_some_and(|m| m.is_async)
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Replicated::snapshot(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Runs a handler on a shard's worker. A handler that panics there takes the replica it holds
/// with it: this replica could no longer follow the others, and the worker's task would swallow
/// the panic, so the process stops (a handler's panic is a programmer error).
pub(super) fn abort_on_panic<R>(f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("a replicated handler panicked on a shard's worker; its replica is lost: stopping");
            std::process::abort();
        }
    }
}

/// Sets the handler's [`CallContext`] around every poll of an async handler, so that
/// [`context`] answers correctly after an await.
pub(super) struct InContext<F> {
    pub(super) context: CallContext,
    pub(super) future: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for InContext<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let c = self.context.clone();
        abort_on_panic(|| with_context(c, || std::pin::Pin::new(&mut self.future).poll(cx)))
    }
}
