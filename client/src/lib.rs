//! A client of a derecho group, for programs outside the group: a web tier, a command-line
//! tool, a service on another host.
//!
//! A [`Client`] keeps one TCP connection open to each member it talks to (it dials; members never
//! dial back, so a client behind a firewall works), sends requests numbered and pipelined on
//! it, and reads the answers on a thread of the connection. It needs no executor: its futures
//! can be awaited on tokio, async-std, derecho's own executor or any other, and [`Blocking`]
//! runs the same calls on the caller's thread. It is `Send + Sync` and cheap to clone (clones
//! share the connections).
//!
//! **Exactly once.** Every ordered call carries the client's id and a number. The replicas
//! remember each client's replies until the client says it has them, so when a reply is lost
//! (the relaying member failed, the connection broke) the client sends the call again, to
//! another member if need be, and gets the first reply back: the call is applied once. A call
//! that may have been applied ends as a reply or as [`ClientError::Unknown`]: when the client
//! gives up (no member answered within its timeout), or in the rare case that the members have
//! forgotten the client (more than 10,000 clients per shard since) when it sends a call again.
//! At most 1,024 ordered calls of a client are outstanding; more wait.
//!
//! **Acknowledgements.** By default a member answers an ordered call as its service decides:
//! a service that persists its state answers once the call's version is persisted at every
//! member of the shard; others once the relaying member applied it. [`Ack`] overrides that.
//!
//! The types a `#[replicated]` type generates for outside use (`TExternal`) wrap this client;
//! this crate speaks the raw calls: a shard, a method's index, archived bytes.
//!
//! ```no_run
//! # async fn f() -> Result<(), derecho_client::ClientError> {
//! use derecho_client::{Client, ShardRef};
//!
//! let client = Client::builder("kv", ["localhost:17000", "localhost:17001"]).connect().await?;
//! println!("view {}", client.view().map_or(0, |v| v.id.0));
//! let bytes = client.query_raw(ShardRef::new(0, 0), None, 1, 0, b"").await?;
//! # let _ = bytes; Ok(()) }
//! ```

mod conn;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

pub use derecho_wire::client::ClientView;
use derecho_wire::client::{
    Call, CallKind, FLAG_ACK_APPLIED, FLAG_ACK_PERSISTED, FLAG_RETRY, FRAME_MAX, Request, SessionTag,
};
pub use derecho_wire::ids::{NodeId, ShardRef, Version, ViewId};
pub use derecho_wire::remote::RemoteKind;
use rkyv::util::AlignedVec;

use conn::{Conn, Done, Inbox, lock};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No member could be reached: every member of the last view and every contact were tried.
    #[error("no member of the group answered; tried {tried:?}: {last}")]
    Unreachable {
        /// The addresses tried.
        tried: Vec<String>,
        /// What went wrong last.
        last: String,
    },
    /// The shard is not in the group's current view.
    #[error("{0} is not in the group's current view")]
    NoSuchShard(ShardRef),
    /// The group's current view is inadequate, so no shard serves calls until a later view;
    /// `why` says what it waits for (a shard that lost every member holding its state waits for
    /// one of them to come back with its logs).
    #[error("{shard} cannot serve calls now: view {view} of the group is inadequate: {why}")]
    Unavailable {
        /// The shard called.
        shard: ShardRef,
        /// The view.
        view: u32,
        /// Why the view is inadequate.
        why: String,
    },
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
    /// The client gave up on an ordered call it had sent: no member answered it within the
    /// client's timeout, so it may have been applied or not.
    #[error("gave up on an ordered call after {after:?} (last sent to {member}: {why}): its outcome is unknown")]
    Unknown {
        /// The member it was last sent to.
        member: String,
        /// What went wrong last.
        why: String,
        /// How long the client tried.
        after: Duration,
    },
    /// A query was not answered within the client's timeout.
    #[error("no answer from {member} within {after:?}")]
    TimedOut {
        /// The member asked.
        member: String,
        /// The timeout.
        after: Duration,
    },
}

/// When a member answers an ordered call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ack {
    /// As the service decides: once persisted at every member of the shard if it persists its
    /// state, else once applied by the relaying member.
    #[default]
    Service,
    /// Once the relaying member applied the call (it may not be on disk anywhere yet).
    Applied,
    /// Once the call's version is persisted at every member of the shard.
    Persisted,
}

/// How a [`Client`] behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long a call may take in all, retries included (default 10 s).
    pub timeout: Duration,
    /// How long connecting to one member may take (default 1 s).
    pub connect_timeout: Duration,
    /// When members answer ordered calls.
    pub ack: Ack,
    /// The longest message accepted from a member (default 64 MiB).
    pub frame_max: usize,
    /// Mutual TLS with the members (who must run TLS with the same authority); `None`:
    /// plaintext (default).
    pub tls: Option<derecho_wire::tls::TlsIdentity>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            ack: Ack::Service,
            frame_max: FRAME_MAX,
            tls: None,
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    group: String,
    contacts: Vec<String>,
    config: ClientConfig,
}

impl ClientBuilder {
    /// Connects to the members with mutual TLS, presenting `identity` (its certificate's first
    /// DNS name is who the members see calling) and trusting its authority.
    #[must_use]
    pub fn tls(mut self, identity: derecho_wire::tls::TlsIdentity) -> Self {
        self.config.tls = Some(identity);
        self
    }

    /// How long a call may take in all.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.config.timeout = t;
        self
    }

    /// How long connecting to one member may take.
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.config.connect_timeout = t;
        self
    }

    /// When members answer ordered calls.
    #[must_use]
    pub fn ack(mut self, ack: Ack) -> Self {
        self.config.ack = ack;
        self
    }

    /// Every setting at once.
    #[must_use]
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// The client, without contacting anyone yet.
    pub fn build(self) -> Client {
        Client {
            shared: Arc::new(Shared {
                tag: derecho_wire::session_tag(&self.group),
                group: self.group,
                contacts: self.contacts,
                config: self.config,
                id: random_id(),
                next_req: AtomicU64::new(1),
                next_seq: AtomicU64::new(1),
                spread: AtomicUsize::new(0),
                resent: AtomicU64::new(0),
                view: Mutex::new(None),
                conns: Mutex::new(BTreeMap::new()),
                outstanding: Mutex::new((BTreeSet::new(), Vec::new())),
                inbox: Arc::new(Inbox::default()),
            }),
        }
    }

    /// The client, with the group's view fetched from a contact.
    ///
    /// # Errors
    ///
    /// [`ClientError::Unreachable`] when no contact answers.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let c = self.build();
        c.refresh_view().await?;
        Ok(c)
    }
}

/// A random client id (not from the protocol's deterministic core: a client's id only has to
/// differ from other clients').
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish() | 1
}

#[derive(Debug)]
struct Shared {
    group: String,
    tag: u32,
    contacts: Vec<String>,
    config: ClientConfig,
    id: u64,
    next_req: AtomicU64,
    next_seq: AtomicU64,
    spread: AtomicUsize,
    /// Ordered calls sent again (their reply was lost, or the member could not relay them).
    resent: AtomicU64,
    view: Mutex<Option<Arc<ClientView>>>,
    conns: Mutex<BTreeMap<String, Arc<Conn>>>,
    /// Ordered calls sent and not answered yet (their numbers), and calls waiting for a slot.
    outstanding: Mutex<(BTreeSet<u64>, Vec<Waker>)>,
    inbox: Arc<Inbox>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for c in lock(&self.conns).values() {
            c.close_by_client();
        }
    }
}

/// A client of one group. See the crate documentation.
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
}

/// Ordered calls a client keeps outstanding at most; more wait for one to end.
const ORDERED_MAX: usize = 1024;

/// Takes an ordered call's number out of the outstanding ones when the call ends, and lets a
/// call waiting for a slot go on.
struct Outstanding<'a>(&'a Shared, u64);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut o = lock(&self.0.outstanding);
            o.0.remove(&self.1);
            std::mem::take(&mut o.1)
        };
        for w in waiters {
            w.wake();
        }
    }
}

/// Waits for a slot among the outstanding ordered calls; returns the call's number, taken and
/// recorded under one lock.
struct OutstandingSlot<'a> {
    shared: &'a Shared,
}

impl Future for OutstandingSlot<'_> {
    type Output = u64;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let s = self.shared;
        let mut o = lock(&s.outstanding);
        if o.0.len() >= ORDERED_MAX {
            o.1.push(cx.waker().clone());
            return Poll::Pending;
        }
        let seq = s.next_seq.fetch_add(1, Ordering::Relaxed);
        o.0.insert(seq);
        Poll::Ready(seq)
    }
}

/// Member errors after which another member may take the call: it was not run.
fn retriable(kind: RemoteKind) -> bool {
    matches!(kind, RemoteKind::NoReplica | RemoteKind::Stopped | RemoteKind::TryAgain | RemoteKind::Overloaded)
}

impl Client {
    /// A client of group `group` (the name its members were built with) that first asks the
    /// members at `contacts` (`host:port`, host names resolve).
    pub fn builder<S: Into<String>>(group: &str, contacts: impl IntoIterator<Item = S>) -> ClientBuilder {
        ClientBuilder {
            group: group.to_string(),
            contacts: contacts.into_iter().map(Into::into).collect(),
            config: ClientConfig::default(),
        }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// This client's id, as the members' exactly-once records know it.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// How many times this client sent an ordered call again (a lost reply, a relay that
    /// failed); each was applied once.
    pub fn resent(&self) -> u64 {
        self.shared.resent.load(Ordering::Relaxed)
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// The view as last fetched.
    pub fn view(&self) -> Option<Arc<ClientView>> {
        lock(&self.shared.view).clone()
    }

    /// The same calls, run on the caller's thread.
    pub fn blocking(&self) -> Blocking<'_> {
        Blocking(self)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).values().filter(|c| !c.is_closed()).count()
    }

    /// Every address worth trying: the members of the last view, then the contacts.
    fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.view().map(|v| v.members.iter().map(|(_, a)| a.clone()).collect()).unwrap_or_default();
        for c in &self.shared.contacts {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// The open connection to `address`, or a new one.
    fn conn(&self, address: &str) -> Result<Arc<Conn>, String> {
        self.conn_until(address, Instant::now() + self.shared.config.connect_timeout)
    }

    /// As [`Client::conn`], connecting for at most the connect timeout and never past `until`.
    fn conn_until(&self, address: &str, until: Instant) -> Result<Arc<Conn>, String> {
        if let Some(c) = lock(&self.shared.conns).get(address)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let s = &self.shared;
        let within = s.config.connect_timeout.min(until.saturating_duration_since(Instant::now()));
        if within.is_zero() {
            return Err(format!("no time left to connect to {address}"));
        }
        let c = Conn::open(address, s.tag, within, s.config.frame_max, s.config.tls.as_ref(), s.inbox.clone())?;
        let mut conns = lock(&s.conns);
        conns.retain(|_, c| !c.is_closed());
        Ok(conns.entry(address.to_string()).or_insert(c).clone())
    }

    fn next_req(&self) -> u64 {
        self.shared.next_req.fetch_add(1, Ordering::Relaxed)
    }

    /// Fetches the current view from any member (the last view's members first, then the
    /// contacts), and keeps it unless an even newer one is kept already.
    ///
    /// # Errors
    ///
    /// [`ClientError::Unreachable`] when no member answers.
    pub async fn refresh_view(&self) -> Result<Arc<ClientView>, ClientError> {
        let n = self.candidates().len().max(1) as u32;
        self.refresh_until(Instant::now() + (self.shared.config.connect_timeout + Duration::from_secs(1)) * n).await
    }

    /// As [`Client::refresh_view`], giving up at `until`.
    async fn refresh_until(&self, until: Instant) -> Result<Arc<ClientView>, ClientError> {
        let tried = self.candidates();
        let mut last = String::from("nothing to try");
        for address in &tried {
            if Instant::now() >= until {
                last = format!("{last}; out of time");
                break;
            }
            let conn = match self.conn_until(address, until) {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let req = self.next_req();
            let mut frame = Vec::new();
            Request::View { req }.encode(&mut frame);
            let deadline = (Instant::now() + self.shared.config.connect_timeout.max(Duration::from_secs(1))).min(until);
            match conn.request(req, &frame, deadline).await {
                Done::View(view) => {
                    let mut kept = lock(&self.shared.view);
                    if kept.as_ref().is_none_or(|v| v.id <= view.id) {
                        *kept = Some(Arc::new(view));
                    }
                    return Ok(kept.clone().expect("just set"));
                }
                Done::Lost(why) => last = why,
                Done::TimedOut => last = format!("{address} did not answer within {:?}", deadline),
                other => last = format!("{address} answered a view request with {other:?}"),
            }
        }
        Err(ClientError::Unreachable { tried, last })
    }

    /// Calls query `method` of the replicas in `shard` at member `to` (with `None`, at any
    /// member of the shard), checked against the type of `fingerprint` (0: unchecked); returns
    /// the archived reply. A member that fails is replaced by another of the shard.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn query_raw(
        &self,
        shard: ShardRef,
        to: Option<NodeId>,
        method: u32,
        fingerprint: u64,
        args: &[u8],
    ) -> Result<AlignedVec, ClientError> {
        self.call(CallKind::Query, shard, to, method, fingerprint, args).await.map(|(_, r)| r)
    }

    /// Calls ordered method `method` of the replicas in `shard` (checked as
    /// [`Client::query_raw`]) through one of the shard's members, which multicasts it on the
    /// client's behalf; returns the version it was applied at and that member's reply. Applied
    /// once however often it is sent again (see the crate documentation).
    ///
    /// # Errors
    ///
    /// See [`ClientError`]; [`ClientError::Unknown`] when the client gave up on it.
    pub async fn ordered_raw(
        &self,
        shard: ShardRef,
        method: u32,
        fingerprint: u64,
        args: &[u8],
    ) -> Result<(Version, AlignedVec), ClientError> {
        self.call(CallKind::Ordered, shard, None, method, fingerprint, args).await
    }

    async fn call(
        &self,
        kind: CallKind,
        shard: ShardRef,
        to: Option<NodeId>,
        method: u32,
        fingerprint: u64,
        args: &[u8],
    ) -> Result<(Version, AlignedVec), ClientError> {
        let s = &self.shared;
        let started = Instant::now();
        let deadline = started + s.config.timeout;
        let ordered = kind == CallKind::Ordered;
        // An ordered call's number is taken and recorded as outstanding at once (a later call
        // must never tell the members that every call below it was answered while this one was
        // not sent yet), and at most ORDERED_MAX are outstanding (the members keep the replies
        // of a client's calls from its oldest outstanding one on).
        let seq = if ordered { OutstandingSlot { shared: s }.await } else { 0 };
        let _outstanding = ordered.then(|| Outstanding(s, seq));
        let mut flags = match s.config.ack {
            Ack::Service => 0,
            Ack::Applied => FLAG_ACK_APPLIED,
            Ack::Persisted => FLAG_ACK_PERSISTED,
        };
        let (mut tried, mut last, mut member) = (Vec::new(), String::from("no member tried"), String::new());
        let mut sent = false;
        let mut frame = Vec::with_capacity(128 + args.len());
        for attempt in 0..64 {
            if Instant::now() >= deadline {
                break;
            }
            if attempt > 0 || self.view().is_none() {
                if let Err(e) = self.refresh_until(deadline).await {
                    last = e.to_string();
                }
                if attempt > 2 {
                    // Members may be between views: give them a moment.
                    Sleep::new(Duration::from_millis(10 * attempt.min(20))).await;
                }
            }
            let Some(view) = self.view() else { continue };
            let Some(members) = view.shard(shard) else {
                // An inadequate view has no shards: a call that may have been applied waits for
                // the next view rather than say the shard does not exist.
                if sent {
                    last = match &view.inadequate {
                        Some(why) => format!("{shard} is not in view {}, which is inadequate: {why}", view.id.0),
                        None => format!("{shard} is not in view {}", view.id.0),
                    };
                    continue;
                }
                if let Some(why) = &view.inadequate {
                    return Err(ClientError::Unavailable { shard, view: view.id.0, why: why.clone() });
                }
                return Err(ClientError::NoSuchShard(shard));
            };
            let target = match to {
                Some(n) => n,
                None if members.is_empty() => continue,
                // Ordered calls go through one relay per client (the shard's order then keeps
                // the client's order while that member lives), another after a failure;
                // queries are spread over the shard.
                None if ordered => members[(s.id as usize).wrapping_add(attempt as usize) % members.len()],
                None => members[s.spread.fetch_add(1, Ordering::Relaxed) % members.len()],
            };
            let Some(address) = view.address(target) else {
                last = format!("{target} is not in view {}", view.id.0);
                if attempt > 0 && !sent {
                    // Asked of a member that left, as a fresh view says.
                    return Err(ClientError::Unreachable { tried, last });
                }
                continue;
            };
            member = address.to_string();
            if !tried.contains(&member) {
                tried.push(member.clone());
            }
            let conn = match self.conn_until(address, deadline) {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let answered_below = if ordered { lock(&s.outstanding).0.first().copied().unwrap_or(seq) } else { 0 };
            let req = self.next_req();
            frame.clear();
            Request::Call(Call {
                req,
                kind,
                flags,
                shard,
                to,
                method,
                fingerprint,
                session: SessionTag { client: s.id, seq, answered_below },
                args,
            })
            .encode(&mut frame);
            if flags & FLAG_RETRY != 0 {
                s.resent.fetch_add(1, Ordering::Relaxed);
            }
            let done = conn.request(req, &frame, deadline).await;
            // A call whose answer was lost, or that its relay could not finish, may have been
            // applied: from now on it is sent as a retry (a member's refusal before relaying
            // means it was not, and changes nothing).
            let maybe = matches!(done, Done::Lost(_) | Done::TimedOut | Done::Reply(Err((RemoteKind::TryAgain, _))));
            if ordered && maybe {
                sent = true;
                flags |= FLAG_RETRY;
            }
            match done {
                Done::Reply(Ok(r)) => return Ok(r),
                Done::Reply(Err((kind, reason))) if retriable(kind) && to.is_none() => {
                    last = format!("{member}: {kind}: {reason}");
                }
                Done::Reply(Err((RemoteKind::SessionExpired, reason))) => {
                    return Err(ClientError::Unknown { member, why: reason, after: started.elapsed() });
                }
                Done::Reply(Err((kind, reason))) => return Err(ClientError::Remote { kind, reason }),
                Done::Lost(why) => last = why,
                Done::TimedOut => {
                    last = format!("no answer from {member}");
                    break;
                }
                other => return Err(ClientError::BadReply(format!("{member} answered a call with {other:?}"))),
            }
        }
        if sent {
            return Err(ClientError::Unknown { member, why: last, after: started.elapsed() });
        }
        if tried.is_empty() || !last.starts_with("no answer") {
            return Err(ClientError::Unreachable { tried, last });
        }
        Err(ClientError::TimedOut { member, after: s.config.timeout })
    }

    /// Subscribes to notifications on `topic` at every member of the current view (any member
    /// may push them); returns how many members took the subscription. Notifications arrive
    /// through [`Client::next_notification`].
    pub async fn subscribe(&self, topic: &str) -> usize {
        let Some(view) = self.view() else { return 0 };
        let mut n = 0;
        for (_, address) in &view.members {
            let Ok(conn) = self.conn(address) else { continue };
            let req = self.next_req();
            let mut frame = Vec::new();
            Request::Subscribe { req, topic }.encode(&mut frame);
            let deadline = Instant::now() + self.shared.config.connect_timeout.max(Duration::from_secs(1));
            n += usize::from(matches!(conn.request(req, &frame, deadline).await, Done::Ack));
        }
        n
    }

    /// The next notification (topic and bytes), waiting for one.
    pub async fn next_notification(&self) -> (String, Vec<u8>) {
        std::future::poll_fn(|cx| {
            let mut q = lock(&self.shared.inbox.queue);
            if let Some(n) = q.0.pop_front() {
                return Poll::Ready(n);
            }
            q.1.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The calls of a [`Client`] on the caller's thread, for programs without an executor.
#[derive(Clone, Copy, Debug)]
pub struct Blocking<'a>(&'a Client);

impl Blocking<'_> {
    /// See [`Client::refresh_view`].
    ///
    /// # Errors
    ///
    /// As [`Client::refresh_view`].
    pub fn refresh_view(&self) -> Result<Arc<ClientView>, ClientError> {
        block_on(self.0.refresh_view())
    }

    /// See [`Client::query_raw`].
    ///
    /// # Errors
    ///
    /// As [`Client::query_raw`].
    pub fn query_raw(
        &self,
        shard: ShardRef,
        to: Option<NodeId>,
        method: u32,
        fingerprint: u64,
        args: &[u8],
    ) -> Result<AlignedVec, ClientError> {
        block_on(self.0.query_raw(shard, to, method, fingerprint, args))
    }

    /// See [`Client::ordered_raw`].
    ///
    /// # Errors
    ///
    /// As [`Client::ordered_raw`].
    pub fn ordered_raw(
        &self,
        shard: ShardRef,
        method: u32,
        fingerprint: u64,
        args: &[u8],
    ) -> Result<(Version, AlignedVec), ClientError> {
        block_on(self.0.ordered_raw(shard, method, fingerprint, args))
    }

    /// See [`Client::subscribe`].
    pub fn subscribe(&self, topic: &str) -> usize {
        block_on(self.0.subscribe(topic))
    }

    /// The next notification, waiting at most `within`.
    pub fn next_notification(&self, within: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(n) = lock(&self.0.shared.inbox.queue).0.pop_front() {
                return Some(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            {
                let mut q = lock(&self.0.shared.inbox.queue);
                if !q.0.is_empty() {
                    continue;
                }
                q.1.push(Waker::from(Arc::new(Unpark(std::thread::current()))));
            }
            std::thread::park_timeout(left.min(Duration::from_millis(50)));
        }
    }
}

/// Wakes a thread parked in [`block_on`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on this thread.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A timer that needs no executor: a thread sleeps and wakes the task (used only between
/// retries, never on a call's normal path).
struct Sleep {
    until: Instant,
    /// Once its thread runs: whether it has fired, and the task to wake.
    started: Option<Arc<Mutex<Fired>>>,
}

type Fired = (bool, Option<Waker>);

impl Sleep {
    fn new(d: Duration) -> Self {
        Self { until: Instant::now() + d, started: None }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            return Poll::Ready(());
        }
        match &self.started {
            Some(s) => {
                let mut s = lock(s);
                if s.0 {
                    return Poll::Ready(());
                }
                s.1 = Some(cx.waker().clone());
            }
            None => {
                let s = Arc::new(Mutex::new((false, Some(cx.waker().clone()))));
                let (t, until) = (s.clone(), self.until);
                std::thread::spawn(move || {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    let w = {
                        let mut t = lock(&t);
                        t.0 = true;
                        t.1.take()
                    };
                    if let Some(w) = w {
                        w.wake();
                    }
                });
                self.started = Some(s);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn a_client_is_send_sync_and_cloneable() {
        assert_send_sync::<Client>();
    }

    #[test]
    fn an_unreachable_group_is_an_error_naming_what_was_tried() {
        // Port 1 on loopback refuses connections.
        let c = Client::builder("g", ["127.0.0.1:1"]).connect_timeout(Duration::from_millis(200)).build();
        let e = c.blocking().refresh_view().unwrap_err();
        assert!(matches!(&e, ClientError::Unreachable { tried, .. } if tried == &["127.0.0.1:1"]), "{e}");
        let e = Client::builder("g", ["no-such-host.invalid:1"]).build().blocking().refresh_view().unwrap_err();
        assert!(e.to_string().contains("cannot resolve no-such-host.invalid:1"), "{e}");
    }

    #[test]
    fn block_on_and_sleep_work_without_an_executor() {
        let t = Instant::now();
        block_on(Sleep::new(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}
