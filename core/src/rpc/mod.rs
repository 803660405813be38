//! Replicated objects and calls into them (PROTOCOLS §6).
//!
//! A replicated type implements [`Replicated`] (the `#[replicated]` attribute writes that
//! implementation): a table of methods, each an *ordered* operation (`&mut self`, multicast in
//! the shard and applied by every member at the same point of the order) or a *query*
//! (`&self`, sent to one member and run there alone). Arguments and replies are rkyv-archived;
//! a handler reads its arguments validated, in place in the receive buffer.
//!
//! A [`Service`] hosts the replicas of a member: it is the [`Application`] of a
//! [`Group`](crate::driver::Group), creates a replica for every shard of a registered type the
//! member belongs to, applies ordered calls as they are delivered, answers queries, sends
//! replies, and moves a replica's state to members that join its shard. A [`Handle`] calls a
//! shard: ordered calls return a [`Replies`] map once every member of the shard replied (or
//! left), queries return one reply.
//!
//! # Layout
//!
//! * [`replicated`]: what a replicated type provides ([`Replicated`], [`Method`],
//!   [`HandlerError`]).
//! * [`service`]: [`Service`], the replicas of one member as its group's application.
//! * `replicas`: each shard's replica and the worker that applies calls to it in order.
//! * `calls`: [`Handle`], [`Replies`], [`ReplyStream`], [`CallError`]; calls waiting for replies.
//! * `outbox`: replies and queries batched per destination.
//! * `persistence`: each shard's log, the saved views and proposals, the stable time of reads.
//! * `recovery`: rebuilding replicas from the logs at a total restart ([`RecoveryError`]).
//! * [`wire`]: the 32-byte header of calls, queries and replies.
//! * [`ExternalClient`], [`ExternalHandle`]: queries and calls from a process outside the
//!   group, view changes followed, notifications received.
//!
//! [`Application`]: crate::driver::Application

mod calls;
mod external;
mod outbox;
mod persistence;
mod recovery;
mod replicas;
pub mod replicated;
pub mod service;
pub mod wire;

#[cfg(test)]
mod tests;

pub use calls::{CallError, EXTERNAL, Handle, Replies, ReplyStream};
pub use external::{ClientError, ExternalClient, ExternalHandle};
pub use recovery::RecoveryError;
pub use replicated::{Applied, HandlerError, Method, Replicated, StateError};
pub use service::{Service, StartError};
pub use wire::RemoteKind;

pub use crate::context::{CallContext, context};

/// Support for the code `#[replicated]` generates; not a stable API.
#[doc(hidden)]
pub mod support {
    pub use rkyv;
    use rkyv::util::AlignedVec;

    use super::HandlerError;

    /// Runs `f` on `bytes`, copied into an aligned buffer first if they are not 16-byte aligned
    /// (rkyv validates archived bytes in place and needs their alignment).
    pub fn aligned<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
        if (bytes.as_ptr() as usize).is_multiple_of(16) {
            f(bytes)
        } else {
            let mut v = AlignedVec::<16>::new();
            v.extend_from_slice(bytes);
            f(&v)
        }
    }

    /// The error for arguments that did not validate.
    pub fn bad_arguments(method: &'static str, e: impl std::fmt::Display) -> HandlerError {
        HandlerError::BadArguments { method, reason: e.to_string() }
    }

    /// The error for a state that could not be archived or read back.
    pub fn state_error(ty: &'static str, e: impl std::fmt::Display) -> super::StateError {
        super::StateError::Archive { ty, reason: e.to_string() }
    }

    /// The error for a reply that could not be archived.
    pub fn bad_reply(method: &'static str, e: impl std::fmt::Display) -> HandlerError {
        HandlerError::Reply { method, reason: e.to_string() }
    }
}
