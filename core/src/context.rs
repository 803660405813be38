//! The call a replicated handler is running for (PROTOCOLS §4, §6): the caller, the shard,
//! for an ordered call its version and time, and for an external client's call over TLS the
//! client's identity. The calls layer ([`crate::rpc`]) sets it
//! around every handler it runs; versioned state ([`crate::persist::Persistent`]) reads it to
//! stamp what the handler changes. Neither depends on the other.

use std::cell::RefCell;
use std::rc::Rc;

use crate::persist::Hlc;
use crate::protocol::{NodeId, ShardRef, Version};

/// The call a handler is running for ([`context`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContext {
    /// The member that called.
    pub caller: NodeId,
    /// The shard.
    pub shard: ShardRef,
    /// Ordered calls: the version the call was delivered at, its place in the shard's order
    /// (the same at every replica). `None` for queries.
    pub version: Option<Version>,
    /// Stable queries ([`crate::rpc::Handle::stable_reads`]): every update of the shard up to this version
    /// is applied at every replica, and none after it is known to be. A versioned object that
    /// answers as of this version answers linearizably: the replica may already hold later
    /// updates, which other replicas may not have yet. `None` for other calls.
    pub stable: Option<Version>,
    /// Ordered calls: the version's time (PROTOCOLS §4): the caller's hybrid logical clock,
    /// made to go forward in the shard's order, the same at every replica. `None` for queries.
    pub time: Option<Hlc>,
    /// Queries to a service that persists ([`crate::rpc::Service::persist_to`]): the time of the shard's
    /// global persistence frontier. Every version at or before it is durable at every member,
    /// and no later version can have an earlier time, so a read as of a time at or before it is
    /// a consistent snapshot of the shard ([`crate::persist::Persistent::at_time`]). `None`
    /// otherwise, or before anything is durable everywhere.
    pub stable_time: Option<Hlc>,
    /// An external client's call over mutual TLS: the client's identity, the first DNS name of
    /// its certificate, as the member it is connected to checked it. The same at every replica
    /// of an ordered call (it travels with the call, and with it into the log), so a handler
    /// may decide by it deterministically. `None` for calls of members, and of clients without
    /// TLS.
    pub client: Option<Rc<str>>,
}

thread_local! {
    static CONTEXT: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

/// The call the handler running on this thread serves; `None` outside a handler. A
/// versioned store reads the version of the update it applies from here.
pub fn context() -> Option<CallContext> {
    CONTEXT.with(|c| c.borrow().clone())
}

pub(crate) fn with_context<R>(c: CallContext, f: impl FnOnce() -> R) -> R {
    /// Restores the previous context even if the handler panics.
    struct Restore(Option<CallContext>);
    // No borrow is held while `f` runs: a handler may read its context, or call a handler.
    impl Drop for Restore {
        fn drop(&mut self) {
            CONTEXT.with(|x| *x.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(CONTEXT.with(|x| x.replace(Some(c))));
    f()
}
