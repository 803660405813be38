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
mod sessions;
pub mod wire;

#[cfg(test)]
mod tests;

pub use calls::{CallError, EXTERNAL, Handle, Replies, ReplyStream};
pub use external::{
    Ack, Blocking, ClientBuilder, ClientConfig, ClientError, ClientView, ExternalClient, ExternalHandle, block_on,
};
pub use recovery::RecoveryError;
pub use replicated::{Applied, HandlerError, Method, Replicated, StateError};
pub use service::{Authorize, ExternalCaller, Service, StartError};

thread_local! {
    /// The identity of the external client whose request the member's session hands to the
    /// application now (see [`Service::authorize`]).
    static EXTERNAL_IDENTITY: std::cell::RefCell<Option<std::rc::Rc<str>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `identity` as the external caller's (restored after).
pub(crate) fn with_external_identity<R>(identity: Option<std::rc::Rc<str>>, f: impl FnOnce() -> R) -> R {
    let before = EXTERNAL_IDENTITY.with(|c| c.replace(identity));
    let r = f();
    EXTERNAL_IDENTITY.with(|c| *c.borrow_mut() = before);
    r
}

/// The identity of the external caller being handed to the application, if any.
pub(crate) fn external_identity() -> Option<std::rc::Rc<str>> {
    EXTERNAL_IDENTITY.with(|c| c.borrow().clone())
}
pub use wire::RemoteKind;

pub use crate::context::{CallContext, context};

/// The bytes of an external client's session prefix in an ordered call's body.
pub(crate) const SESSION_PREFIX_LEN: usize = sessions::PREFIX_LEN;

/// Writes an external client's session prefix (see `sessions`) into `out`.
pub(crate) fn write_session_prefix(out: &mut [u8], client: u64, seq: u64, answered_below: u64, retry: bool) {
    sessions::Prefix { client, seq, answered_below, retry }.write(out);
}

/// Support for the code `#[replicated]` generates; not a stable API.
#[doc(hidden)]
pub mod support {
    pub use rkyv;

    /// Reads `bytes` as a shard's state frame and the clients' record in it, for the fuzzer;
    /// returns whether they read (`fuzz/fuzz_targets/state.rs`).
    #[doc(hidden)]
    pub fn fuzz_state_frame(bytes: &[u8]) -> bool {
        super::persistence::unframe_state(bytes).is_ok()
    }

    /// What the Python classes `#[replicated]` generates use (feature `python`).
    #[cfg(feature = "python")]
    pub mod python {
        pub use pyo3;
        use pyo3::prelude::*;

        use crate::rpc::{ClientError as Error, ExternalClient};

        pyo3::create_exception!(
            derecho,
            ClientError,
            pyo3::exceptions::PyException,
            "A call into the group failed; its args are the message and the kind of failure \
             (\"unreachable\", \"unknown\", \"timed out\", or the member's: \"type mismatch\", \
             \"too large\", ...)."
        );

        /// A client error as the Python exception.
        pub fn client_error(e: Error) -> PyErr {
            let kind = match &e {
                Error::Remote { kind, .. } => kind.to_string(),
                Error::Unreachable { .. } => "unreachable".into(),
                Error::NoSuchShard(_) => "no such shard".into(),
                Error::Unavailable { .. } => "unavailable".into(),
                Error::BadReply(_) => "bad reply".into(),
                Error::Arguments(_) => "bad arguments".into(),
                Error::Unknown { .. } => "unknown".into(),
                Error::TimedOut { .. } => "timed out".into(),
                _ => "error".into(),
            };
            ClientError::new_err((e.to_string(), kind))
        }

        /// A client of `group` that has fetched the view, each call bounded by `timeout` s; with
        /// mutual TLS when `ca`, `cert` and `key` (PEM files) are given.
        ///
        /// # Errors
        ///
        /// `ClientError` when no contact answers; `ValueError` for a bad timeout, or TLS files
        /// that are incomplete or cannot be read (the message names the file).
        pub fn connect(
            py: Python<'_>,
            group: &str,
            contacts: Vec<String>,
            timeout: f64,
            tls: (Option<String>, Option<String>, Option<String>),
        ) -> PyResult<ExternalClient> {
            let bad = |m: String| pyo3::exceptions::PyValueError::new_err(m);
            if !(timeout.is_finite() && timeout > 0.0) {
                return Err(bad(format!("timeout {timeout} is not a positive number of seconds")));
            }
            let mut builder =
                ExternalClient::builder(group, contacts).timeout(std::time::Duration::from_secs_f64(timeout));
            match tls {
                (None, None, None) => {}
                (Some(ca), Some(cert), Some(key)) => {
                    let path = std::path::Path::new;
                    let identity =
                        derecho_runtime::tls::TlsIdentity::from_pem_files(path(&ca), path(&cert), path(&key))
                            .map_err(|e| bad(e.to_string()))?;
                    builder = builder.tls(identity);
                }
                _ => return Err(bad("TLS needs all three of ca, cert and key".into())),
            }
            let client = builder.build();
            py.detach(|| client.blocking().refresh_view()).map_err(client_error)?;
            Ok(client)
        }

        /// The members of the client's last view with their addresses.
        pub fn members(client: &ExternalClient) -> Vec<(u32, String)> {
            client.view().map(|v| v.members.iter().map(|(n, a)| (n.0, a.clone())).collect()).unwrap_or_default()
        }

        /// The shards of the client's last view with their members.
        pub fn shards(client: &ExternalClient) -> Vec<((u16, u16), Vec<u32>)> {
            client
                .view()
                .map(|v| {
                    v.shards.iter().map(|(s, m)| ((s.subgroup.0, s.shard.0), m.iter().map(|n| n.0).collect())).collect()
                })
                .unwrap_or_default()
        }

        /// Adds `ClientError` to a Python module (the classes are added by the module's author).
        ///
        /// # Errors
        ///
        /// As PyO3's `add`.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add("ClientError", m.py().get_type::<ClientError>())
        }
    }
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

    /// An empty buffer to archive a reply into: one the service gave back (`recycle`) if
    /// there is one. A reply is archived for every call; reusing a few buffers keeps that off
    /// the allocator and in warm memory.
    pub fn reply_buffer() -> AlignedVec {
        REPLY_BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_default()
    }

    /// The writer a reply is archived with: an [`AlignedVec`] that skips empty writes. rkyv
    /// pads before each value by writing zeros, nearly always none for a reply; an empty write
    /// still called the C library's `memset`, whose cost on these machines was out of all
    /// proportion (a stall seen in profiles of every ordered call).
    #[derive(Debug)]
    pub struct ReplyWriter(pub AlignedVec);

    impl rkyv::ser::Positional for ReplyWriter {
        #[inline]
        fn pos(&self) -> usize {
            self.0.len()
        }
    }

    impl<E> rkyv::ser::Writer<E> for ReplyWriter {
        #[inline]
        fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
            if !bytes.is_empty() {
                self.0.extend_from_slice(bytes);
            }
            Ok(())
        }
    }

    /// Gives a reply's buffer back once its bytes were sent (kept only if small, and only a few).
    pub(crate) fn recycle(mut buffer: AlignedVec) {
        if buffer.capacity() > REPLY_BUFFER_MAX {
            return;
        }
        buffer.clear();
        REPLY_BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < REPLY_BUFFERS_KEPT {
                b.push(buffer);
            }
        });
    }

    /// Buffers kept for replies, per thread.
    const REPLY_BUFFERS_KEPT: usize = 8;
    /// The largest buffer kept (a larger reply's buffer goes back to the allocator).
    const REPLY_BUFFER_MAX: usize = 64 << 10;

    thread_local! {
        static REPLY_BUFFERS: std::cell::RefCell<Vec<AlignedVec>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reply_buffers_come_back_empty_and_only_small_ones_a_few_at_a_time() {
            let mut b = reply_buffer();
            b.extend_from_slice(&[7; 100]);
            let capacity = b.capacity();
            recycle(b);
            let again = reply_buffer();
            assert_eq!((again.len(), again.capacity()), (0, capacity), "the same buffer, emptied");
            let mut big = AlignedVec::<16>::with_capacity(REPLY_BUFFER_MAX + 1);
            big.push(1);
            recycle(big);
            assert_eq!(reply_buffer().capacity(), 0, "a large buffer is not kept");
            for _ in 0..REPLY_BUFFERS_KEPT + 3 {
                recycle(AlignedVec::with_capacity(16));
            }
            assert_eq!(REPLY_BUFFERS.with(|b| b.borrow().len()), REPLY_BUFFERS_KEPT);
        }

        #[test]
        fn a_reply_archived_with_the_reply_writer_reads_back() {
            use rkyv::ser::{Positional, Writer};
            let mut w = ReplyWriter(reply_buffer());
            Writer::<rkyv::rancor::Error>::write(&mut w, &[]).unwrap();
            assert_eq!(w.pos(), 0);
            let w = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&(7u64, String::from("seven")), w).unwrap();
            let back = rkyv::access::<rkyv::Archived<(u64, String)>, rkyv::rancor::Error>(&w.0).unwrap();
            assert_eq!((back.0.to_native(), back.1.as_str()), (7, "seven"));
        }
    }
}
