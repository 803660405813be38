//! Calling a shard: [`Handle`] (ordered calls, queries), the replies ([`Replies`],
//! [`ReplyStream`]), the errors ([`CallError`]), and the calls waiting for their replies.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use super::replicated::Replicated;
use super::service::ServiceInner;
use super::sessions::{PREFIX_LEN, Prefix, identity_block_len};
use super::wire::{FLAG_SESSION, HEADER_LEN, Header, Kind, RemoteKind};
use crate::context::context;
use crate::driver::{GroupSendError, SendToError};
use crate::protocol::{NodeId, ShardRef, Version};

/// The caller of a query from an external client (a process outside the group).
pub const EXTERNAL: NodeId = NodeId(u32::MAX);

/// Why a call failed, as a whole or for one member.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// This member is not in the shard (ordered calls come from its members).
    #[error("this member is not a member of {0}")]
    NotAMember(ShardRef),
    /// The subgroup has no registered type, or another type than the handle's.
    #[error("{0} hosts no replica of this type")]
    WrongType(ShardRef),
    /// The call could not be multicast.
    #[error(transparent)]
    Send(#[from] GroupSendError),
    /// The query or reply could not be sent.
    #[error(transparent)]
    SendTo(#[from] SendToError),
    /// This member left the view before it replied.
    #[error("{0} left the group before it replied")]
    Departed(NodeId),
    /// The member could not run the call, or refused it.
    #[error("{node} could not run the call ({kind}): {reason}")]
    Remote {
        /// The member.
        node: NodeId,
        /// Why, as a kind a program can match on.
        kind: RemoteKind,
        /// What the member said.
        reason: String,
    },
    /// The member applied the ordered call, but its reply was lost in a view change and the
    /// member no longer keeps it (it keeps the last replies to each caller, bounded in count
    /// and bytes, for two views). The other members' replies are unaffected.
    #[error("{node} applied the call but its reply was lost in a view change")]
    ReplyLost {
        /// The member.
        node: NodeId,
    },
    /// The reply did not validate as the method's reply type.
    #[error("the reply of {node} does not validate: {reason}")]
    BadReply {
        /// The member.
        node: NodeId,
        /// What rkyv found.
        reason: String,
    },
    /// The arguments could not be archived.
    #[error("the arguments could not be archived: {0}")]
    Arguments(String),
    /// No reply within the service's call timeout ([`Service::set_call_timeout`](super::Service::set_call_timeout)).
    #[error("no reply from {node} within {after:?}")]
    Timeout {
        /// The member (for a call not yet delivered: this member).
        node: NodeId,
        /// The timeout.
        after: Duration,
    },
    /// The call's multicast was dropped at a view change: this member is no longer a sender of
    /// the shard, so the call was never delivered.
    #[error("the call was not delivered: this member can no longer send in {0}")]
    NotDelivered(ShardRef),
    /// An ordered call into a shard awaited inside a handler of the same shard: its own
    /// application waits for that handler to return, so it would never complete. Spawn the
    /// call instead (it then completes after the handler returns).
    #[error("an ordered call into {0} awaited inside a handler of {0} would never complete; spawn it")]
    FromHandler(ShardRef),
    /// The service is rebuilding its replicas from its logs (a total restart), and calls are
    /// not made: an ordered call a handler made the first time was logged itself and is
    /// replayed on its own. A handler that awaits a call while it is replayed makes recovery
    /// refuse the log ([`super::RecoveryError::Replay`]).
    #[error("the service is replaying its logs: calls are not made")]
    Replaying,
    /// The service was not attached to a group, or the group closed.
    #[error("the group is closed")]
    Closed,
    /// Internal marker: a reply a [`ReplyStream`] has already returned.
    #[doc(hidden)]
    #[error("already returned")]
    Returned,
}

/// The replies to one ordered call: one entry per member of the shard when the call was
/// delivered.
#[derive(Debug)]
pub struct Replies<R> {
    /// The version the call was delivered at (its place in the shard's order).
    pub version: Version,
    /// Each member's reply, or why there is none.
    pub replies: BTreeMap<NodeId, Result<R, CallError>>,
}

impl CallError {
    /// The error `node` sent as an error reply's body ([`RemoteKind::read`]).
    pub(super) fn from_remote(node: NodeId, body: &[u8]) -> Self {
        match RemoteKind::read(body) {
            (RemoteKind::ReplyLost, _) => Self::ReplyLost { node },
            (kind, reason) => Self::Remote { node, kind, reason },
        }
    }
}

impl<R> Replies<R> {
    /// The reply of `node`.
    pub fn get(&self, node: NodeId) -> Option<&Result<R, CallError>> {
        self.replies.get(&node)
    }

    /// Every reply that arrived, or the first error.
    ///
    /// # Errors
    ///
    /// The first member's error, in node order.
    pub fn all(self) -> Result<Vec<(NodeId, R)>, CallError> {
        self.replies.into_iter().map(|(n, r)| r.map(|r| (n, r))).collect()
    }

    /// Decodes every reply with `f`.
    pub fn map<S>(self, mut f: impl FnMut(NodeId, R) -> Result<S, CallError>) -> Replies<S> {
        Replies {
            version: self.version,
            replies: self.replies.into_iter().map(|(n, r)| (n, r.and_then(|r| f(n, r)))).collect(),
        }
    }
}

pub(super) struct Pending {
    pub(super) shard: ShardRef,
    /// Ordered calls: the shard's members when the call was delivered here.
    pub(super) expected: Option<Rc<[NodeId]>>,
    /// A query's target, and the query (sent again if a view change may have lost it).
    pub(super) query: Option<(NodeId, Vec<u8>)>,
    /// Ordered calls: the version of this member's own delivery of the call.
    pub(super) version: Option<Version>,
    /// Ordered calls: the view it was multicast in, once it was.
    pub(super) sent_in: Option<crate::protocol::ViewId>,
    pub(super) replies: BTreeMap<NodeId, Result<AlignedVec, CallError>>,
    /// The call failed as a whole.
    pub(super) failed: Option<CallError>,
    pub(super) waker: Option<Waker>,
    /// When the call's timeout expires.
    pub(super) deadline: Instant,
}

impl Pending {
    pub(super) fn complete(&self) -> bool {
        if self.failed.is_some() {
            return true;
        }
        match (&self.expected, &self.query) {
            (_, Some((t, _))) => self.replies.contains_key(t),
            (Some(e), None) => e.iter().all(|n| self.replies.contains_key(n)),
            (None, None) => false,
        }
    }

    pub(super) fn wake_if_complete(&mut self) {
        if self.complete()
            && let Some(w) = self.waker.take()
        {
            w.wake();
        }
    }
}

/// Completes the calls whose timeout passed: their missing replies become
/// [`CallError::Timeout`]. One timer for all calls, not one each.
pub(super) async fn sweep(inner: Weak<ServiceInner>) {
    loop {
        let period = match inner.upgrade() {
            Some(i) if !i.stopped.get() => {
                (i.call_timeout.get() / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
            }
            _ => return,
        };
        crate::runtime::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let after = inner.call_timeout.get();
        let me = inner.me.get().unwrap_or(NodeId(u32::MAX));
        for p in inner.pending.borrow_mut().values_mut() {
            if p.deadline > now || p.complete() {
                continue;
            }
            match (&p.expected, &p.query) {
                (_, Some((t, _))) => {
                    p.replies.entry(*t).or_insert(Err(CallError::Timeout { node: *t, after }));
                }
                (Some(e), None) => {
                    for &n in e.iter() {
                        p.replies.entry(n).or_insert(Err(CallError::Timeout { node: n, after }));
                    }
                }
                (None, None) => {
                    p.failed.get_or_insert(CallError::Timeout { node: me, after });
                }
            }
            p.wake_if_complete();
        }
    }
}

impl ServiceInner {
    /// Records a reply from `from` to call `call`; wakes the caller when the call is complete.
    pub(super) fn record(&self, call: u64, from: NodeId, reply: Result<AlignedVec, CallError>) {
        let mut pending = self.pending.borrow_mut();
        let Some(p) = pending.get_mut(&call) else { return };
        let allowed = match (&p.expected, &p.query) {
            (_, Some((t, _))) => *t == from,
            (Some(e), None) => e.contains(&from),
            // Before the caller's own delivery: a member of the shard in the current view.
            (None, None) => self.shard_members.borrow().get(&p.shard).is_some_and(|m| m.contains(&from)),
        };
        if allowed {
            p.replies.entry(from).or_insert(reply);
            if Some(from) == self.me.get() {
                // A relay waits for this member's own reply only.
                if let Some(w) = p.waker.take() {
                    w.wake();
                }
            } else {
                p.wake_if_complete();
            }
        }
    }

    /// Fails every call still waiting.
    pub(super) fn fail_all(&self, e: impl Fn() -> CallError) {
        for p in self.pending.borrow_mut().values_mut() {
            p.failed.get_or_insert_with(&e);
            p.wake_if_complete();
        }
    }
}

/// Calls into the replicas of type `T` in one shard ([`Service::handle`](super::Service::handle)).
pub struct Handle<T> {
    service: Weak<ServiceInner>,
    shard: ShardRef,
    stable: bool,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone(), shard: self.shard, stable: self.stable, _type: PhantomData }
    }
}

impl<T> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("shard", &self.shard).finish()
    }
}

/// The replies to one ordered call, each as it arrives ([`Handle::ordered_each_raw`]).
pub struct ReplyStream<R> {
    inner: Rc<ServiceInner>,
    call: u64,
    decode: Box<dyn Fn(NodeId, AlignedVec) -> Result<R, CallError>>,
    done: bool,
}

impl<R> std::fmt::Debug for ReplyStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStream").field("call", &self.call).finish_non_exhaustive()
    }
}

impl<R> Drop for ReplyStream<R> {
    fn drop(&mut self) {
        self.inner.pending.borrow_mut().remove(&self.call);
    }
}

impl<R: 'static> ReplyStream<R> {
    /// The same stream, each reply decoded by `f` (the generated clients use it).
    pub fn map<S>(mut self, f: impl Fn(NodeId, R) -> Result<S, CallError> + 'static) -> ReplyStream<S> {
        let decode = std::mem::replace(&mut self.decode, Box::new(|_, _| Err(CallError::Closed)));
        let stream = ReplyStream {
            inner: self.inner.clone(),
            call: self.call,
            decode: Box::new(move |n, bytes| decode(n, bytes).and_then(|r| f(n, r))),
            done: self.done,
        };
        // The new stream owns the pending call now.
        self.call = u64::MAX;
        stream
    }

    /// The version the call was delivered at, once this member delivered it.
    pub fn version(&self) -> Option<Version> {
        self.inner.pending.borrow().get(&self.call).and_then(|p| p.version)
    }

    /// The next reply (or the reason a member gives none), in the order they arrive; `None` once
    /// every member of the shard at delivery has been accounted for. Bounded by the call timeout.
    pub async fn next(&mut self) -> Option<(NodeId, Result<R, CallError>)> {
        if self.done {
            return None;
        }
        let inner = self.inner.clone();
        let call = self.call;
        let got = poll_fn(|cx| {
            let mut pending = inner.pending.borrow_mut();
            let Some(p) = pending.get_mut(&call) else { return Poll::Ready(None) };
            if let Some(e) = p.failed.take() {
                p.replies.clear();
                p.expected = Some(Rc::new([]));
                return Poll::Ready(Some(Err(e)));
            }
            // Replies are kept in `replies` until returned; returned ones leave a marker.
            let ready = p.replies.iter().find(|(_, r)| !matches!(r, Err(CallError::Returned))).map(|(n, _)| *n);
            if let Some(n) = ready {
                let r = p.replies.insert(n, Err(CallError::Returned)).expect("present");
                return Poll::Ready(Some(Ok((n, r))));
            }
            if p.complete() {
                return Poll::Ready(None);
            }
            p.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        match got {
            None => {
                self.done = true;
                None
            }
            Some(Err(e)) => {
                self.done = true;
                let me = self.inner.me.get().unwrap_or(EXTERNAL);
                Some((me, Err(e)))
            }
            Some(Ok((n, r))) => Some((n, r.and_then(|b| (self.decode)(n, b)))),
        }
    }
}

/// Removes a pending call when its caller stops waiting (completed or dropped).
pub(super) struct PendingGuard<'a> {
    pub(super) inner: &'a ServiceInner,
    pub(super) call: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending.borrow_mut().remove(&self.call);
    }
}

impl<T: Replicated> Handle<T> {
    /// A handle on `shard` of the service `service`.
    pub(super) fn new(service: Weak<ServiceInner>, shard: ShardRef) -> Self {
        Self { service, shard, stable: false, _type: PhantomData }
    }

    /// The shard.
    pub fn shard(&self) -> ShardRef {
        self.shard
    }

    /// Waits until `version` of this handle's shard (an ordered call's [`Replies::version`]) is
    /// durable at every member of the shard: the global persistence frontier reached it.
    ///
    /// # Errors
    ///
    /// [`crate::driver::PersistWaitError`]: not in time, this member is not in the shard or
    /// stopped, the group closed (also when the service is not attached to one).
    pub async fn wait_persisted(
        &self,
        version: Version,
        within: Duration,
    ) -> Result<(), crate::driver::PersistWaitError> {
        let sender = self.service.upgrade().and_then(|s| s.sender.borrow().clone());
        let sender = sender.ok_or(crate::driver::PersistWaitError::Closed)?;
        sender.wait_persisted(self.shard, version, within).await
    }

    /// The same handle, its queries made stable: the member asked answers once everything it
    /// had delivered in the shard is delivered at every member of the shard, and the handler
    /// sees that point as [`CallContext::stable`](crate::context::CallContext::stable). A versioned object that answers as of it
    /// (like the book's key-value store) answers linearizably: every update that completed
    /// before the query is included, and nothing that another replica may still lack. It costs
    /// a round of the shard's delivery reports (a few pushes) per query.
    pub fn stable_reads(mut self) -> Self {
        self.stable = true;
        self
    }

    fn inner(&self) -> Result<Rc<ServiceInner>, CallError> {
        let inner = self.service.upgrade().ok_or(CallError::Closed)?;
        if inner.stopped.get() {
            return Err(CallError::Closed);
        }
        if inner.replaying.get() {
            // From a handler being replayed, recovery refuses the log: what the handler did
            // with the reply the first time cannot be done again.
            if context().is_some() {
                inner.replay_calls.set(inner.replay_calls.get() + 1);
            }
            return Err(CallError::Replaying);
        }
        Ok(inner)
    }

    fn new_call(&self, inner: &ServiceInner, query: Option<(NodeId, Vec<u8>)>) -> u64 {
        new_pending(inner, self.shard, query)
    }

    /// Calls ordered method `method` with archived `args`: multicast in the shard, applied by
    /// every member in the order; returns every member's archived reply once all replied (a
    /// member that left first has [`CallError::Departed`], one silent past the call timeout
    /// [`CallError::Timeout`]).
    ///
    /// # Errors
    ///
    /// [`CallError`]: this member is not in the shard or hosts no replica of `T` there, the
    /// multicast failed or was dropped at a view change, the group closed.
    pub async fn ordered_raw(&self, method: u32, args: &[u8]) -> Result<Replies<AlignedVec>, CallError> {
        if context().is_some_and(|c| c.shard == self.shard) {
            return Err(CallError::FromHandler(self.shard));
        }
        let inner = self.inner()?;
        self.check_type(&inner)?;
        ordered_call(&inner, self.shard, method, args).await
    }

    /// As [`Handle::ordered_raw`], but returns once the call is multicast, with a stream of the
    /// replies as they arrive ([`ReplyStream::next`]), each replica's on its own.
    ///
    /// # Errors
    ///
    /// As [`Handle::ordered_raw`], for the multicast.
    pub async fn ordered_each_raw(&self, method: u32, args: &[u8]) -> Result<ReplyStream<AlignedVec>, CallError> {
        if context().is_some_and(|c| c.shard == self.shard) {
            return Err(CallError::FromHandler(self.shard));
        }
        let inner = self.inner()?;
        self.check_type(&inner)?;
        let call = multicast_call(&inner, self.shard, method, args).await?;
        Ok(ReplyStream { inner: inner.clone(), call, decode: Box::new(|_, b| Ok(b)), done: false })
    }

    /// Calls query `method` on member `to`; returns its archived reply.
    ///
    /// # Errors
    ///
    /// [`CallError`]: `to` is not a member, left before replying, holds no replica of the
    /// shard or could not run the query, no reply within the call timeout, the group closed.
    pub async fn query_raw(&self, to: NodeId, method: u32, args: &[u8]) -> Result<AlignedVec, CallError> {
        let inner = self.inner()?;
        let me = inner.me.get().ok_or(CallError::Closed)?;
        self.check_type(&inner)?;
        if to == me && context().is_some_and(|c| c.shard == self.shard) {
            return Err(CallError::FromHandler(self.shard));
        }
        if to == me && !inner.replicas.borrow().contains_key(&self.shard) {
            return Err(CallError::NotAMember(self.shard));
        }
        if to != me && inner.view.borrow().as_ref().is_none_or(|v| v.rank_of(to).is_none()) {
            return Err(CallError::SendTo(SendToError::NotAMember(to)));
        }
        let kind = if self.stable { Kind::StableQuery } else { Kind::Query };
        let header =
            Header { kind, shard: self.shard, method, caller: me, call: 0, version: Version::from_u64(0), flags: 0 };
        let call = inner.next_call.get();
        let query = Header { call, ..header }.with_body(args);
        let call = self.new_call(&inner, Some((to, query.clone())));
        let guard = PendingGuard { inner: &inner, call };
        if to == me {
            let h = Header { call, ..header };
            inner.query(h, me, args);
        } else {
            inner.send(to, &query);
        }
        let mut p = wait_call(&inner, call).await;
        drop(guard);
        if let Some(e) = p.failed {
            return Err(e);
        }
        p.replies.remove(&to).expect("a complete query has its target's reply")
    }

    fn check_type(&self, inner: &ServiceInner) -> Result<(), CallError> {
        match inner.types.borrow().get(&self.shard.subgroup) {
            Some(t) if t.type_id == TypeId::of::<T>() => Ok(()),
            _ => Err(CallError::WrongType(self.shard)),
        }
    }
}

/// Registers a pending call of `shard`; returns its id.
pub(super) fn new_pending(inner: &ServiceInner, shard: ShardRef, query: Option<(NodeId, Vec<u8>)>) -> u64 {
    let call = inner.next_call.get();
    inner.next_call.set(call + 1);
    inner.pending.borrow_mut().insert(
        call,
        Pending {
            shard,
            expected: None,
            query,
            version: None,
            sent_in: None,
            replies: BTreeMap::new(),
            failed: None,
            waker: None,
            deadline: Instant::now() + inner.call_timeout.get(),
        },
    );
    call
}

/// Waits for a call to complete (the service's sweeper completes it with timeouts once its
/// deadline passes).
pub(super) async fn wait_call(inner: &ServiceInner, call: u64) -> Pending {
    poll_fn(|cx| {
        let mut pending = inner.pending.borrow_mut();
        let p = pending.get_mut(&call).expect("a pending call stays until its caller takes it");
        if p.complete() {
            return Poll::Ready(());
        }
        p.waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    inner.pending.borrow_mut().remove(&call).expect("present")
}

/// Registers an ordered call into `shard` and multicasts it; returns its id. The pending
/// record is removed if the multicast fails.
pub(super) async fn multicast_call(
    inner: &ServiceInner,
    shard: ShardRef,
    method: u32,
    args: &[u8],
) -> Result<u64, CallError> {
    multicast_with(inner, shard, method, None, None, args).await
}

/// As [`multicast_call`], for an external client's call when `prefix` is given (written before
/// the arguments with the client's `identity`, flagged in the header).
pub(super) async fn multicast_with(
    inner: &ServiceInner,
    shard: ShardRef,
    method: u32,
    prefix: Option<Prefix>,
    identity: Option<&str>,
    args: &[u8],
) -> Result<u64, CallError> {
    let me = inner.me.get().ok_or(CallError::Closed)?;
    let sender = inner.sender.borrow().clone().ok_or(CallError::Closed)?;
    let call = new_pending(inner, shard, None);
    // Removes the record if the send fails or this future is dropped before it is sent.
    let guard = PendingGuard { inner, call };
    // An ordered call carries the caller's time (in the version field, unused in a call): the
    // version it creates is stamped with it, made to go forward (PROTOCOLS §4).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let mut clock = inner.clock.get();
    let stamp = clock.tick(now);
    inner.clock.set(clock);
    let flags = if prefix.is_some() { FLAG_SESSION } else { 0 };
    let header =
        Header { kind: Kind::Ordered, shard, method, caller: me, call, version: Version::from_u64(stamp.0), flags };
    let at = HEADER_LEN + if prefix.is_some() { PREFIX_LEN + identity_block_len(identity) } else { 0 };
    sender
        .send(shard, at + args.len(), |buf| {
            header.write(buf);
            if let Some(p) = prefix {
                p.write_with(identity, &mut buf[HEADER_LEN..at]);
            }
            buf[at..].copy_from_slice(args);
        })
        .await
        .map_err(|e| match e {
            GroupSendError::Refused(crate::protocol::SendError::NotAMember(s)) => CallError::NotAMember(s),
            other => CallError::Send(other),
        })?;
    // Sent: the caller's own guard or stream owns the record from here.
    std::mem::forget(guard);
    let view = sender.view_id();
    if let Some(p) = inner.pending.borrow_mut().get_mut(&call) {
        p.sent_in = view;
    }
    Ok(call)
}

/// An ordered call into `shard` (see [`Handle::ordered_raw`]), without the type check.
pub(super) async fn ordered_call(
    inner: &ServiceInner,
    shard: ShardRef,
    method: u32,
    args: &[u8],
) -> Result<Replies<AlignedVec>, CallError> {
    let call = multicast_call(inner, shard, method, args).await?;
    let guard = PendingGuard { inner, call };
    let p = wait_call(inner, call).await;
    drop(guard);
    if let Some(e) = p.failed {
        return Err(e);
    }
    Ok(Replies { version: p.version.unwrap_or(Version::from_u64(0)), replies: p.replies })
}

/// An external client's ordered call, relayed: multicast with the client's prefix, answered
/// with the reply the shard's record of the client's calls holds for it once this member has
/// delivered it (the first reply, if it was delivered before: see `sessions`).
pub(super) async fn relay_call(
    inner: &ServiceInner,
    shard: ShardRef,
    method: u32,
    prefix: Prefix,
    identity: Option<&str>,
    args: &[u8],
) -> Result<Vec<u8>, CallError> {
    let call = multicast_with(inner, shard, method, Some(prefix), identity, args).await?;
    let guard = PendingGuard { inner, call };
    let key = (shard, prefix.client, prefix.seq);
    let answer = poll_fn(|cx| {
        if let Some(r) = inner.sessions.borrow().get(&shard).and_then(|t| t.reply(prefix.client, prefix.seq)) {
            return Poll::Ready(Ok(r.to_vec()));
        }
        if let Some(r) = inner.session_refusals.borrow_mut().remove(&key) {
            return Poll::Ready(Ok(r));
        }
        let mut pending = inner.pending.borrow_mut();
        let p = pending.get_mut(&call).expect("a pending call stays until its caller takes it");
        if let Some(e) = p.failed.take() {
            return Poll::Ready(Err(e));
        }
        // Woken by the record (the reply, a refusal) or by the call failing (swept, not
        // delivered, the member stopping).
        p.waker = Some(cx.waker().clone());
        inner.session_waiters.borrow_mut().entry(key).or_default().push(cx.waker().clone());
        Poll::Pending
    });
    // Bounded: a relay never holds its slot for good.
    let within = inner.call_timeout.get();
    let r = match crate::runtime::time::timeout(within, answer).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout { node: inner.me.get().unwrap_or(super::EXTERNAL), after: within }),
    };
    inner.session_refusals.borrow_mut().remove(&key);
    drop(guard);
    r
}
