//! External clients (PROTOCOLS §6): a process outside the group that fetches the view from any
//! member, sends queries to members of a shard, follows view changes and receives
//! notifications pushed by members.
//!
//! Everything travels as one-shot control messages to the members' listeners, and back to the
//! client's own listener: an external client holds no connection open and takes no part in the
//! protocol, so it can come and go freely. That costs a TCP connection per request; members
//! talk to each other over their views' transports, which is where speed matters.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::tcp::{TcpAcceptor, send_message};
use derecho_runtime::transport::{PeerId, TransportError, TransportLimits};
use derecho_runtime::{JoinHandle, spawn, time};
use rkyv::util::AlignedVec;

use super::wire::{Header, Kind, RemoteKind};
use super::{EXTERNAL, Replicated};
use crate::driver::control_tag;
use crate::protocol::wire::Control;
use crate::protocol::{NodeId, ShardRef, Version, View};

/// Why an external call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client's listener could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No member answered (every contact and every member of the last view were tried).
    #[error("no member of the group answered; tried {tried:?}")]
    Unreachable {
        /// The addresses tried.
        tried: Vec<String>,
    },
    /// The shard is not in the current view.
    #[error("{0} is not in the group's current view")]
    NoSuchShard(ShardRef),
    /// The member could not run the call, or refused it.
    #[error("the member could not run the call ({kind}): {reason}")]
    Remote {
        /// Why, as a kind a program can match on ([`RemoteKind::TypeMismatch`]: the member
        /// hosts another type, or another version of it, than the client's).
        kind: RemoteKind,
        /// What the member said.
        reason: String,
    },
    /// The reply did not validate as the method's reply type.
    #[error("the reply does not validate: {0}")]
    BadReply(String),
    /// The arguments could not be archived.
    #[error("the arguments could not be archived: {0}")]
    Arguments(String),
    /// An ordered call was taken by `member`, which did not answer: it may have been applied
    /// or not.
    #[error("{member} took the ordered call but did not answer: its outcome is unknown")]
    Unknown {
        /// The member's address.
        member: String,
    },
}

/// The error in an external call's answer (0, the kind of error, what the member said).
fn remote_error(body: &[u8]) -> ClientError {
    let (kind, reason) = RemoteKind::read(body.get(1..).unwrap_or_default());
    ClientError::Remote { kind, reason }
}

/// What became of a message sent to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// The member read it.
    Taken,
    /// It never left (no connection, a refused handshake).
    NotTaken,
    /// It may have been read (the exchange failed after it was sent).
    Maybe,
}

/// A view and every member's address.
type ViewAndAddresses = (View, Vec<(NodeId, String)>);

#[derive(Default)]
struct Mailbox {
    replies: RefCell<BTreeMap<u64, Vec<u8>>>,
    views: RefCell<VecDeque<ViewAndAddresses>>,
    notifications: RefCell<VecDeque<(String, Vec<u8>)>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Mailbox {
    fn wake(&self) {
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// A client outside the group. See the module documentation.
pub struct ExternalClient {
    name: String,
    me: PeerId,
    reply_to: String,
    contacts: Vec<SocketAddr>,
    timeout: Duration,
    mailbox: Rc<Mailbox>,
    view: RefCell<Option<ViewAndAddresses>>,
    next_call: Cell<u64>,
    _acceptor: Rc<TcpAcceptor>,
    task: RefCell<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ExternalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalClient").field("reply_to", &self.reply_to).finish_non_exhaustive()
    }
}

impl Drop for ExternalClient {
    fn drop(&mut self) {
        if let Some(t) = self.task.borrow_mut().take() {
            t.abort();
        }
    }
}

impl ExternalClient {
    /// A client of group `name` (as its members were built with), reachable at `listen` (port 0
    /// picks one; members answer there), that knows the members at `contacts`; fetches the view.
    /// Each request waits at most `timeout` for its answer before the next member is tried.
    ///
    /// # Errors
    ///
    /// [`ClientError`]: the listener cannot be opened, no contact answers.
    pub async fn connect(
        name: &str,
        contacts: Vec<SocketAddr>,
        listen: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let listener = TcpListener::bind(listen).map_err(|e| ClientError::Listen { address: listen, source: e })?;
        let reply_to = listener.local_addr().to_string();
        let me = PeerId(EXTERNAL.0);
        let limits = TransportLimits::default();
        let acceptor = Rc::new(TcpAcceptor::new(listener, me, &limits, 64, timeout));
        acceptor.accept_messages(control_tag(name), 64 << 20);
        let mailbox = Rc::new(Mailbox::default());
        let task = spawn({
            let (acceptor, mailbox) = (acceptor.clone(), mailbox.clone());
            async move {
                loop {
                    let (_, body) = acceptor.next_message().await;
                    match Control::decode(&body) {
                        Ok(Control::ClientReply { call, body }) => {
                            // Late or stray replies are dropped beyond a bound.
                            let mut replies = mailbox.replies.borrow_mut();
                            if replies.len() >= 1024 {
                                replies.pop_first();
                            }
                            replies.insert(call, body);
                        }
                        Ok(Control::ClientViewReply { view, addresses }) => {
                            let mut views = mailbox.views.borrow_mut();
                            if views.len() >= 16 {
                                views.pop_front();
                            }
                            views.push_back((view, addresses));
                        }
                        Ok(Control::ClientNotify { topic, body }) => {
                            let mut n = mailbox.notifications.borrow_mut();
                            if n.len() < 1 << 16 {
                                n.push_back((topic, body));
                            }
                        }
                        Ok(other) => tracing::debug!(?other, "an external client ignored a message"),
                        Err(e) => tracing::warn!(error = %e, "an external client ignored a malformed message"),
                    }
                    mailbox.wake();
                }
            }
        });
        let client = Self {
            name: name.to_string(),
            me,
            reply_to,
            contacts,
            timeout,
            mailbox,
            view: RefCell::new(None),
            next_call: Cell::new(1),
            _acceptor: acceptor,
            task: RefCell::new(Some(task)),
        };
        client.refresh_view().await?;
        Ok(client)
    }

    /// The view as last fetched.
    pub fn view(&self) -> Option<View> {
        self.view.borrow().as_ref().map(|(v, _)| v.clone())
    }

    /// Every address worth trying: the members of the last view, then the contacts.
    fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.view.borrow().as_ref().map(|(_, a)| a.iter().map(|(_, a)| a.clone()).collect()).unwrap_or_default();
        for c in &self.contacts {
            let c = c.to_string();
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    async fn send(&self, address: &str, message: &Control) -> bool {
        self.deliver(address, message).await == Sent::Taken
    }

    /// Sends a message and says whether the member took it, certainly did not, or may have.
    async fn deliver(&self, address: &str, message: &Control) -> Sent {
        let Ok(addr) = address.parse::<SocketAddr>() else { return Sent::NotTaken };
        match send_message(self.me, addr, control_tag(&self.name), &message.encode(), self.timeout).await {
            Ok(()) => Sent::Taken,
            // Failing to connect, or a refused handshake, happens before the message is sent.
            Err(TransportError::Handshake { .. }) => Sent::NotTaken,
            Err(TransportError::Io { context, .. }) if context.starts_with("connect to") => Sent::NotTaken,
            Err(_) => Sent::Maybe,
        }
    }

    /// Waits (at most the timeout) for `take` to find something in the mailbox.
    async fn wait<R>(&self, mut take: impl FnMut(&Mailbox) -> Option<R>) -> Option<R> {
        let mailbox = self.mailbox.clone();
        let wait = poll_fn(|cx| {
            if let Some(r) = take(&mailbox) {
                return Poll::Ready(r);
            }
            mailbox.wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        time::timeout(self.timeout, wait).await.ok()
    }

    /// Fetches the current view from any member (the last view's members first, then the
    /// contacts), and keeps it.
    ///
    /// # Errors
    ///
    /// [`ClientError::Unreachable`] when no member answers.
    pub async fn refresh_view(&self) -> Result<View, ClientError> {
        let tried = self.candidates();
        for address in &tried {
            if !self.send(address, &Control::ClientView { reply_to: self.reply_to.clone() }).await {
                continue;
            }
            let got = self.wait(|m| m.views.borrow_mut().pop_front()).await;
            if let Some((view, addresses)) = got {
                let keep = self.view.borrow().as_ref().is_none_or(|(v, _)| v.id <= view.id);
                if keep {
                    *self.view.borrow_mut() = Some((view.clone(), addresses));
                }
                return Ok(self.view().expect("just set"));
            }
        }
        Err(ClientError::Unreachable { tried })
    }

    /// Sends query `method` of the replicas in `shard` to member `to` (or, with `None`, to any
    /// member of the shard), and returns its archived reply. When the member does not answer,
    /// the client fetches the view again and tries the shard's other members.
    ///
    /// # Errors
    ///
    /// [`ClientError`]: the shard is not in the view, the query failed at the member, or no
    /// member of the shard answered.
    pub async fn query_raw(
        &self,
        shard: ShardRef,
        to: Option<NodeId>,
        method: u32,
        args: &[u8],
    ) -> Result<AlignedVec, ClientError> {
        self.query_checked(shard, to, method, args, 0).await
    }

    /// As [`ExternalClient::query_raw`], the member checking that it hosts the type of
    /// `fingerprint` in the shard's subgroup (0: unchecked).
    async fn query_checked(
        &self,
        shard: ShardRef,
        to: Option<NodeId>,
        method: u32,
        args: &[u8],
        fingerprint: u64,
    ) -> Result<AlignedVec, ClientError> {
        let mut tried = Vec::new();
        for attempt in 0..3 {
            if attempt > 0 {
                let _ = self.refresh_view().await;
            }
            let targets = self.targets(shard, to)?;
            for (_, address) in targets {
                let call = self.next_call.get();
                self.next_call.set(call + 1);
                let version = Version::from_u64(fingerprint);
                let header = Header { kind: Kind::Query, shard, method, caller: EXTERNAL, call, version };
                let message =
                    Control::ClientCall { reply_to: self.reply_to.clone(), call, body: header.with_body(args) };
                tried.push(address.clone());
                if !self.send(&address, &message).await {
                    continue;
                }
                if let Some(body) = self.wait(|m| m.replies.borrow_mut().remove(&call)).await {
                    return match body.split_first() {
                        Some((1, reply)) => {
                            let mut v = AlignedVec::new();
                            v.extend_from_slice(reply);
                            Ok(v)
                        }
                        _ => Err(remote_error(&body)),
                    };
                }
            }
        }
        Err(ClientError::Unreachable { tried })
    }

    /// Calls ordered method `method` of the replicas in `shard` through one of the shard's
    /// members, which multicasts it on the client's behalf; returns the version it was applied
    /// at and that member's reply. It is sent to one member only once: if that member fails
    /// after taking it, the outcome is unknown ([`ClientError::Unknown`]) rather than applied
    /// twice.
    ///
    /// # Errors
    ///
    /// [`ClientError`]: the shard is not in the view, the call failed, no member could be
    /// reached, or the outcome is unknown.
    pub async fn ordered_raw(
        &self,
        shard: ShardRef,
        method: u32,
        args: &[u8],
    ) -> Result<(Version, AlignedVec), ClientError> {
        self.ordered_checked(shard, method, args, 0).await
    }

    /// As [`ExternalClient::ordered_raw`], checked as [`ExternalClient::query_checked`].
    async fn ordered_checked(
        &self,
        shard: ShardRef,
        method: u32,
        args: &[u8],
        fingerprint: u64,
    ) -> Result<(Version, AlignedVec), ClientError> {
        let mut tried = Vec::new();
        for attempt in 0..3 {
            if attempt > 0 {
                let _ = self.refresh_view().await;
            }
            let targets = self.targets(shard, None)?;
            for (_, address) in targets {
                let call = self.next_call.get();
                self.next_call.set(call + 1);
                let version = Version::from_u64(fingerprint);
                let header = Header { kind: Kind::Ordered, shard, method, caller: EXTERNAL, call, version };
                let message =
                    Control::ClientCall { reply_to: self.reply_to.clone(), call, body: header.with_body(args) };
                tried.push(address.clone());
                match self.deliver(&address, &message).await {
                    Sent::NotTaken => continue, // safe to try another member
                    Sent::Maybe => return Err(ClientError::Unknown { member: address }),
                    Sent::Taken => {}
                }
                let Some(body) = self.wait(|m| m.replies.borrow_mut().remove(&call)).await else {
                    return Err(ClientError::Unknown { member: address });
                };
                return match body.split_first() {
                    Some((1, rest)) if rest.len() >= 8 => {
                        let version = Version::from_u64(u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")));
                        let mut v = AlignedVec::new();
                        v.extend_from_slice(&rest[8..]);
                        Ok((version, v))
                    }
                    _ => Err(remote_error(&body)),
                };
            }
        }
        Err(ClientError::Unreachable { tried })
    }

    /// The members of `shard` (only `to`, if given) with their addresses, from the last view.
    fn targets(&self, shard: ShardRef, to: Option<NodeId>) -> Result<Vec<(NodeId, String)>, ClientError> {
        let view = self.view.borrow();
        let Some((v, addresses)) = view.as_ref() else { return Ok(Vec::new()) };
        let Some(s) = v.shards.iter().find(|s| s.id == shard) else {
            return Err(ClientError::NoSuchShard(shard));
        };
        Ok(s.members
            .iter()
            .filter(|m| to.is_none_or(|t| t == **m))
            .filter_map(|m| addresses.iter().find(|(n, _)| n == m).map(|(n, a)| (*n, a.clone())))
            .collect())
    }

    /// Subscribes to notifications on `topic` from every member of the current view (any member
    /// may push them); returns how many members took the subscription.
    pub async fn subscribe(&self, topic: &str) -> usize {
        let mut n = 0;
        for address in self.candidates() {
            let m = Control::ClientSubscribe { reply_to: self.reply_to.clone(), topic: topic.to_string() };
            n += usize::from(self.send(&address, &m).await);
        }
        n
    }

    /// The next notification (topic and bytes), waiting at most the timeout.
    pub async fn next_notification(&self) -> Option<(String, Vec<u8>)> {
        self.wait(|m| m.notifications.borrow_mut().pop_front()).await
    }
}

/// Queries into the replicas of type `T` in one shard, from outside the group; the client
/// `#[replicated]` generates for external use wraps one.
pub struct ExternalHandle<T> {
    client: Rc<ExternalClient>,
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
    pub fn new(client: Rc<ExternalClient>, shard: ShardRef) -> Self {
        Self { client, shard, _type: PhantomData }
    }

    /// The client.
    pub fn client(&self) -> &ExternalClient {
        &self.client
    }

    /// As [`ExternalClient::ordered_raw`] on this shard; the member checks that it hosts `T`
    /// (the same method table: [`Replicated::FINGERPRINT`]).
    ///
    /// # Errors
    ///
    /// As [`ExternalClient::ordered_raw`]; [`ClientError::Remote`] with
    /// [`RemoteKind::TypeMismatch`] if the member hosts another type or version.
    pub async fn ordered_raw(&self, method: u32, args: &[u8]) -> Result<(Version, AlignedVec), ClientError> {
        self.client.ordered_checked(self.shard, method, args, T::FINGERPRINT).await
    }

    /// As [`ExternalClient::query_raw`] on this shard, checked as
    /// [`ExternalHandle::ordered_raw`].
    ///
    /// # Errors
    ///
    /// As [`ExternalHandle::ordered_raw`].
    pub async fn query_raw(&self, to: Option<NodeId>, method: u32, args: &[u8]) -> Result<AlignedVec, ClientError> {
        self.client.query_checked(self.shard, to, method, args, T::FINGERPRINT).await
    }
}
