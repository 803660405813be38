//! The driver: runs a protocol [`Node`] on the runtime over a transport.
//!
//! It is the only module that knows both the protocol and the runtime. The shared state table is
//! a region registered with the transport, so over shared memory peers' pushes land in it
//! directly and over TCP the transport applies them. The rules run in a poll hook, on every turn
//! of the executor's loop, like Derecho's predicate thread: apply everything that arrived, run
//! the rules once, deliver, then push what changed (PROTOCOLS §2.4 batching). Sending writes in
//! place into this member's row; a full window makes [`StaticGroup::send`] wait.
//!
//! The one `unsafe` outside the runtime lives here: delivery borrows message bytes from the table
//! (zero copy), which is sound because flow control keeps a message's bytes untouched until every
//! member delivered it; only the protocol knows that, so only the protocol's driver can promise
//! it.
//!
//! # Layout
//!
//! * `group`: [`Group`], a group with membership: the runner that executes a
//!   [`crate::protocol::member::Member`]'s commands (the same code the simulator runs).
//! * [`RegionMemory`]: the table in a transport region.
//! * [`StaticGroup`]: a group of fixed membership: start, send, delivery callback, close.
//! * `config`, `member_config`: the TOML configuration of a static group and of a member.
//!
//! `StaticGroup` keeps a small loop of its own rather than being a [`Group`] whose membership
//! never changes: it runs a [`Node`] without membership on a transport the caller already
//! connected (no listener, no joins, no restart, no application beyond its delivery callback),
//! which is what the multicast benchmark measures and what a new transport is first brought up
//! with. A `Member` always has membership, so hosting a static node in the runner would add a
//! second mode to both; its loop (`Inner::step`) makes no decisions: it runs the rules, delivers
//! and pushes.

mod config;
mod group;
mod member_config;

pub use config::{
    ConfigError, ENV_PREFIX, GroupConfig, MemberConfig, Origin, TlsSettings, TransportKind, resolve_address,
};
pub use derecho_runtime::signal::{Signal, Signals};
pub use group::{
    AppError, Application, ClientLimits, FRAME_LEN_MAX, Group, GroupBuilder, GroupSender, JoinError, Metrics,
    PARTITION_SAFETY_NEEDED, PersistWaitError, SendToError, ShardMetrics, Shutdown, State, ViewChange, WaitError,
};
pub use member_config::GroupMemberConfig;

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::ops::Range;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::shm::{ShmConfig, ShmTransport};
use derecho_runtime::transport::tcp::{TcpConfig, TcpTransport};
use derecho_runtime::transport::{
    AnyTransport, Payload, PeerFailure, PeerId, Region, RegionId, Transport, TransportError, TransportEvent,
    TransportLimits,
};
use derecho_runtime::{HookId, JoinHandle, Park, PollHook, add_poll_hook, remove_poll_hook, spawn, time};

use crate::protocol::{
    Delivered, Input, Limits, Node, NodeError, NodeId, Output, Progress, RowLayout, SendError, ShardRef, SstMemory,
    StopReason, Time, View,
};

/// The region that holds the shared state table.
pub const TABLE_REGION: RegionId = RegionId(0);

/// The table in a transport region.
#[derive(Debug)]
pub struct RegionMemory {
    region: Rc<Region>,
}

impl RegionMemory {
    /// Wraps a registered region.
    pub fn new(region: Rc<Region>) -> Self {
        Self { region }
    }
}

impl SstMemory for RegionMemory {
    fn len(&self) -> usize {
        self.region.len()
    }

    fn load_u64(&self, offset: usize) -> u64 {
        self.region.load_u64(offset)
    }

    fn store_u64(&mut self, offset: usize, value: u64) {
        self.region.store_u64(offset, value);
    }

    fn read(&self, offset: usize, dst: &mut [u8]) {
        self.region.read(offset, dst);
    }

    fn slice(&self, range: Range<usize>) -> &[u8] {
        // SAFETY: the protocol borrows only (a) received messages not yet delivered, whose bytes
        // their sender does not touch until every member delivered them (flow control,
        // PROTOCOLS §2.1), and (b) this member's own row, which only this member writes, never
        // while borrowed. No await happens while a borrow lives, so the TCP transport's reader
        // (same thread) cannot apply a push meanwhile.
        unsafe { self.region.bytes(range) }
    }

    fn slice_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        // SAFETY: the protocol borrows for writing only this member's own row, which peers never
        // write and see only through pushes made after the borrow ends; `&mut self` keeps this
        // process from borrowing it twice.
        unsafe { self.region.bytes_mut(range) }
    }
}

/// Connects this member's transport as `config` says. Over TCP it listens on its own address
/// (see [`connect_with`] to pass a listener already bound), with mutual TLS if `config.tls`
/// is given; over shared memory it uses the files of `config.shm_namespace`. Must run inside
/// an executor.
///
/// # Errors
///
/// [`GroupError::Transport`]: the address cannot be bound, a peer does not connect within the
/// start-up timeout, the shared-memory files cannot be created.
pub async fn connect(config: &GroupConfig) -> Result<AnyTransport, GroupError> {
    connect_with(config, None).await
}

fn no_address(id: u32) -> GroupError {
    GroupError::Transport(TransportError::Config(format!("member {id} has no address")))
}

/// As [`connect`], with this member's TCP listener already bound (`None` binds the configured
/// address; ignored over shared memory).
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_with(config: &GroupConfig, listener: Option<TcpListener>) -> Result<AnyTransport, GroupError> {
    connect_with_tls(config, listener, config.tls.as_ref().map(|t| t.identity.clone())).await
}

/// As [`connect_with`], with mutual TLS on every TCP connection when `tls` is given (each
/// member's certificate naming its id, [`derecho_runtime::tls::node_name`]) instead of the
/// configuration's. Without either, `config.insecure` must say plaintext is meant.
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_with_tls(
    config: &GroupConfig,
    listener: Option<TcpListener>,
    tls: Option<derecho_runtime::tls::TlsIdentity>,
) -> Result<AnyTransport, GroupError> {
    let me = PeerId(config.me.0);
    let limits = TransportLimits { connect_timeout: config.start_timeout, ..TransportLimits::default() };
    let others = config.members.iter().filter(|m| m.id != config.me.0);
    match config.transport {
        TransportKind::Tcp => {
            if tls.is_none() && !config.insecure {
                return Err(GroupError::Config(
                    "neither TLS nor insecure is configured: give [tls] ca, cert and key, or insecure = true",
                ));
            }
            if tls.is_none() {
                tracing::warn!("insecure: plaintext connections between the members, nothing authenticated");
            }
            let listener = match listener {
                Some(l) => l,
                None => {
                    let addr = config.address_of(config.me).ok_or_else(|| no_address(config.me.0))?;
                    TcpListener::bind(addr).map_err(|e| {
                        GroupError::Transport(TransportError::Config(format!("cannot listen on {addr}: {e}")))
                    })?
                }
            };
            let mut peers = Vec::new();
            for m in others {
                peers.push((PeerId(m.id), m.address.ok_or_else(|| no_address(m.id))?));
            }
            let mut tcp = TcpConfig::new(me, peers);
            tcp.group_tag = config.group_tag();
            tcp.tls = tls;
            // A push carries at most one row of the table; a peer's queue holds a few of them.
            let row_len = RowLayout::new(&config.view, &config.limits).row_len;
            tcp.limits = TransportLimits {
                max_frame_len: limits.max_frame_len.max(row_len),
                send_queue_len_max: limits.send_queue_len_max.max(4 * row_len),
                ..limits
            };
            Ok(AnyTransport::Tcp(TcpTransport::connect(listener, tcp).await?))
        }
        TransportKind::Shm => {
            // Pushes are stores into the peer's table, not frames: the default frame limit stands.
            let mut shm = ShmConfig::new(me, others.map(|m| PeerId(m.id)).collect(), config.shm_namespace.clone());
            shm.limits = limits;
            Ok(AnyTransport::Shm(ShmTransport::connect(shm).await?))
        }
    }
}

/// Errors of starting or running a group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The configuration or view is invalid.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The transport failed to set up the table region or to exchange the start-up barrier.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// A peer failed before the group started.
    #[error("{peer} failed during start-up: {reason}")]
    PeerFailedAtStart {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: PeerFailure,
    },
    /// The start-up barrier did not complete in time.
    #[error("start-up barrier timed out after {0:?}; missing: {1:?}")]
    StartTimeout(Duration, Vec<NodeId>),
    /// A configuration this member cannot run with.
    #[error("configuration: {0}")]
    Config(&'static str),
    /// The metrics listener could not be opened.
    #[error("{0}")]
    Metrics(#[source] std::io::Error),
}

/// Errors of [`StaticGroup::send`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupSendError {
    /// The protocol refused the message for good (not a sender, too large, not a member).
    #[error(transparent)]
    Refused(SendError),
    /// `send` was called from inside the delivery callback; spawn a task to send instead.
    #[error("send called from inside the delivery callback")]
    Reentrant,
    /// The group was closed.
    #[error("the group is closed")]
    Closed,
    /// This member stopped (partitioned, removed, left): nothing more can be sent.
    #[error("this member has stopped: {0}")]
    Stopped(StopReason),
}

/// Errors of [`StaticGroup::settle`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// This member is not in the shard.
    #[error("not a member of shard {0:?}")]
    NoSuchShard(ShardRef),
    /// Some member had not delivered as much in time.
    #[error("after {within:?}, some member had not yet delivered the frontier {here:?} delivered here")]
    Timeout {
        /// How long it waited.
        within: Duration,
        /// What this member had delivered when it started waiting (see `Node::delivery_frontier`).
        here: Vec<u64>,
    },
    /// The group was closed.
    #[error("the group is closed")]
    Closed,
}

/// Something the group reports besides deliveries.
#[derive(Debug)]
#[non_exhaustive]
pub enum GroupEvent {
    /// A peer failed (with a static membership the group can no longer make progress in shards
    /// the peer belongs to; membership changes handle this in a later layer).
    PeerFailed {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: PeerFailure,
    },
    /// A peer broke the protocol; its messages are ignored from now on.
    Violation {
        /// The peer.
        peer: NodeId,
        /// What it did.
        what: String,
    },
    /// A [`Group`] installed a new view.
    ViewInstalled(ViewChange),
    /// A [`Group`] member stopped (partitioned, removed, left, no state in time); it sends and
    /// delivers nothing more.
    Stopped(StopReason),
    /// Messages this member sent in the previous view, above its trim, could not be sent again
    /// (it is no longer a sender of the shard): they are lost, and this says how many.
    ResendFailed {
        /// The shard.
        shard: ShardRef,
        /// How many.
        count: usize,
    },
    /// The application refused a shard state from `from` ([`Application::restore`]).
    StateRejected {
        /// The shard.
        shard: ShardRef,
        /// The sender.
        from: NodeId,
        /// The application's reason.
        reason: String,
    },
    /// The driver cannot go on (the next view's transport or table could not be set up).
    Fatal(String),
}

type DeliverFn = Box<dyn FnMut(Delivered<'_>)>;

/// Pushes `range` of this member's row to the peers `to`, with the caller's scratch vectors
/// (no allocation per push); `failed` hears about each peer the push could not reach.
fn push_range(
    transport: &impl Transport,
    peers: &RefCell<Vec<PeerId>>,
    errors: &RefCell<Vec<(PeerId, TransportError)>>,
    range: Range<usize>,
    to: &[NodeId],
    mut failed: impl FnMut(PeerId, TransportError),
) {
    let mut peers = peers.borrow_mut();
    let mut errors = errors.borrow_mut();
    peers.clear();
    peers.extend(to.iter().map(|p| PeerId(p.0)));
    transport.push_many(&peers, TABLE_REGION, range, &mut errors);
    for (peer, e) in errors.drain(..) {
        failed(peer, e);
    }
}

/// A group's events, waiting for the application to take them.
#[derive(Default)]
struct EventBox {
    queue: RefCell<std::collections::VecDeque<GroupEvent>>,
    waker: RefCell<Option<Waker>>,
}

impl EventBox {
    fn report(&self, e: GroupEvent) {
        self.queue.borrow_mut().push_back(e);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn try_next(&self) -> Option<GroupEvent> {
        self.queue.borrow_mut().pop_front()
    }

    async fn next(&self) -> GroupEvent {
        poll_fn(|cx| {
            if let Some(e) = self.try_next() {
                return Poll::Ready(e);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The time since `epoch`, as the protocol counts it.
fn since(epoch: Instant) -> Time {
    Time(epoch.elapsed().as_nanos() as u64)
}

struct Inner {
    node: RefCell<Node<RegionMemory>>,
    transport: AnyTransport,
    deliver: RefCell<DeliverFn>,
    send_waiters: RefCell<Vec<Waker>>,
    /// Scratch of `step`, reused: the peers of a push and the errors of pushing.
    push_peers: RefCell<Vec<PeerId>>,
    push_errors: RefCell<Vec<(PeerId, TransportError)>>,
    /// Tasks in [`StaticGroup::settle`].
    settle_waiters: RefCell<Vec<Waker>>,
    events: EventBox,
    epoch: Instant,
    closed: Cell<bool>,
    /// Where delivery and flow control stood when waiters were last woken.
    progress: RefCell<Progress>,
}

impl Inner {
    fn now(&self) -> Time {
        since(self.epoch)
    }

    fn report(&self, e: GroupEvent) {
        self.events.report(e);
    }

    /// One batch: run the rules, deliver, push. Returns how much happened.
    fn step(&self) -> usize {
        let Ok(mut node) = self.node.try_borrow_mut() else { return 0 };
        let now = self.now();
        node.handle(now, Input::RowsChanged);
        let delivered = match self.deliver.try_borrow_mut() {
            Ok(mut f) => node.deliver(&mut *f),
            Err(_) => 0,
        };
        let mut pushes = 0;
        while let Some(o) = node.poll_output() {
            match o {
                Output::Push { range, to } => {
                    push_range(&self.transport, &self.push_peers, &self.push_errors, range, &to, |peer, e| {
                        if !matches!(e, TransportError::PeerFailed(_)) {
                            tracing::error!(%peer, error = %e, "push failed");
                        }
                    });
                    pushes += 1;
                }
                Output::Violation { node: peer, violation } => {
                    tracing::warn!(%peer, %violation, "peer broke the protocol");
                    self.report(GroupEvent::Violation { peer, what: violation.to_string() });
                }
                // A static node has no membership: it never changes views, stops or answers
                // joins.
                other => tracing::debug!(?other, "output without meaning in a static group"),
            }
        }
        // Blocked senders and settles wake when a window has room again or every member
        // delivered more, which other members' deliveries cause (their rows change) whether or
        // not this step delivered or pushed anything; not on every turn.
        if node.update_progress(&mut self.progress.borrow_mut()) {
            for w in self.send_waiters.borrow_mut().drain(..).chain(self.settle_waiters.borrow_mut().drain(..)) {
                w.wake();
            }
        }
        delivered + pushes
    }
}

struct RulesHook {
    inner: Rc<Inner>,
}

impl PollHook for RulesHook {
    fn poll(&mut self) -> usize {
        if self.inner.closed.get() { 0 } else { self.inner.step() }
    }

    fn prepare_park(&mut self, _park: &mut Park<'_>) -> bool {
        // Pushes arriving wake the executor (a TCP completion, a shared-memory doorbell), and the
        // next turn runs this hook: nothing to arm here.
        true
    }
}

/// A group of fixed membership running ordered multicast (PROTOCOLS §1, §2).
///
/// # Examples
///
/// See `tests/tests/static_group.rs` and the `multicast` example.
pub struct StaticGroup {
    inner: Rc<Inner>,
    hook: Cell<Option<HookId>>,
    events_task: RefCell<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for StaticGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticGroup").field("me", &self.inner.node.borrow().me()).finish_non_exhaustive()
    }
}

const READY: &[u8] = b"derecho-static-group-ready";

impl StaticGroup {
    /// Starts member `me` of `view` on a connected transport: registers the table, waits (at
    /// most `start_timeout`) until every peer has done the same, and starts running the rules.
    /// `on_deliver` receives every delivered message, borrowed; it must not call
    /// [`StaticGroup::send`] (spawn a task for that).
    ///
    /// # Errors
    ///
    /// [`GroupError`]: an invalid view or limits, a transport error, a peer failing or missing
    /// during start-up.
    pub async fn start(
        transport: AnyTransport,
        me: NodeId,
        view: View,
        limits: &Limits,
        start_timeout: Duration,
        on_deliver: impl FnMut(Delivered<'_>) + 'static,
    ) -> Result<Self, GroupError> {
        let len = Node::<RegionMemory>::table_len(&view, limits);
        let region = transport.register_region(TABLE_REGION, len)?;
        let node = Node::new(me, view.clone(), limits, RegionMemory::new(region))?;
        // PROTOCOLS §7: a peer's pushes may write only its own row. TCP enforces it as pushes
        // arrive; shared-memory peers write directly (a same-host trust assumption).
        if let AnyTransport::Tcp(t) = &transport {
            for &m in view.members.iter().filter(|&&m| m != me) {
                if let Some(row) = node.row_range(m) {
                    t.confine_pushes(TABLE_REGION, PeerId(m.0), row);
                }
            }
        }
        // Barrier: nobody pushes into a peer's table before the peer registered it.
        let peers: Vec<NodeId> = view.members.iter().copied().filter(|&m| m != me).collect();
        for &p in &peers {
            transport.send_frame(PeerId(p.0), Payload::from(READY)).await?;
        }
        let mut missing: Vec<NodeId> = peers.clone();
        let deadline = Instant::now() + start_timeout;
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match time::timeout(left, transport.next_event()).await {
                Ok(TransportEvent::Frame { from, frame }) if &frame[..] == READY => {
                    missing.retain(|&m| m.0 != from.0);
                }
                Ok(TransportEvent::Frame { from, .. }) => {
                    tracing::warn!(?from, "unexpected frame during start-up");
                }
                Ok(TransportEvent::PeerFailed { peer, reason }) => {
                    return Err(GroupError::PeerFailedAtStart { peer: NodeId(peer.0), reason });
                }
                Err(_) => return Err(GroupError::StartTimeout(start_timeout, missing)),
            }
        }
        let inner = Rc::new(Inner {
            node: RefCell::new(node),
            transport,
            deliver: RefCell::new(Box::new(on_deliver)),
            send_waiters: RefCell::new(Vec::new()),
            push_peers: RefCell::new(Vec::new()),
            push_errors: RefCell::new(Vec::new()),
            settle_waiters: RefCell::new(Vec::new()),
            events: EventBox::default(),
            epoch: Instant::now(),
            closed: Cell::new(false),
            progress: RefCell::default(),
        });
        let hook = add_poll_hook(RulesHook { inner: inner.clone() });
        let events_task = spawn({
            let inner = inner.clone();
            async move {
                loop {
                    match inner.transport.next_event().await {
                        TransportEvent::PeerFailed { peer, reason } => {
                            inner.report(GroupEvent::PeerFailed { peer: NodeId(peer.0), reason });
                        }
                        TransportEvent::Frame { from, .. } => {
                            tracing::debug!(?from, "frame ignored by a static group");
                        }
                    }
                }
            }
        });
        Ok(Self { inner, hook: Cell::new(Some(hook)), events_task: RefCell::new(Some(events_task)) })
    }

    /// Connects the transport and starts this member as `config` says ([`connect`], then
    /// [`StaticGroup::start`]).
    ///
    /// # Errors
    ///
    /// As [`connect`] and [`StaticGroup::start`].
    pub async fn start_from_config(
        config: &GroupConfig,
        on_deliver: impl FnMut(Delivered<'_>) + 'static,
    ) -> Result<Self, GroupError> {
        let transport = connect(config).await?;
        Self::start(transport, config.me, config.view.clone(), &config.limits, config.start_timeout, on_deliver).await
    }

    /// Sends a message of `len` bytes into `shard`, written in place by `fill`; waits while the
    /// window is full. Returns the message's index.
    ///
    /// # Errors
    ///
    /// [`GroupSendError`]: refused by the protocol, called from the delivery callback, or the
    /// group closed.
    pub async fn send(&self, shard: ShardRef, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<u64, GroupSendError> {
        let mut fill = Some(fill);
        poll_fn(|cx| {
            if self.inner.closed.get() {
                return Poll::Ready(Err(GroupSendError::Closed));
            }
            let Ok(mut node) = self.inner.node.try_borrow_mut() else {
                return Poll::Ready(Err(GroupSendError::Reentrant));
            };
            let now = self.inner.now();
            let f = fill.take().expect("send polled after completion");
            let mut unused = Some(f);
            let r = node.send(now, shard, len, |buf| (unused.take().expect("fill once"))(buf));
            match r {
                Ok(i) => Poll::Ready(Ok(i)),
                Err(SendError::WindowFull(_)) => {
                    fill = unused;
                    self.inner.send_waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(GroupSendError::Refused(e))),
            }
        })
        .await
    }

    /// Messages delivered in `shard` so far (ordered shards).
    pub fn delivered_count(&self, shard: ShardRef) -> Option<u64> {
        self.inner.node.borrow().delivered_count(shard)
    }

    /// Waits until every member of `shard` has delivered what this member had delivered when
    /// called (messages and nulls; sender by sender in unordered mode). A member that stops once
    /// it has delivered what it expects calls this first, so that its leaving does not look like
    /// a failure to members still catching up.
    ///
    /// # Errors
    ///
    /// [`SettleError`]: not a member of the shard, not settled within `within`, or closed.
    pub async fn settle(&self, shard: ShardRef, within: Duration) -> Result<(), SettleError> {
        let here = self.inner.node.borrow().delivery_frontier(shard).ok_or(SettleError::NoSuchShard(shard))?;
        let settled = || self.inner.node.borrow().delivered_everywhere(shard, &here).unwrap_or(false);
        let wait = poll_fn(|cx| {
            if self.inner.closed.get() {
                return Poll::Ready(Err(SettleError::Closed));
            }
            if settled() {
                return Poll::Ready(Ok(()));
            }
            self.inner.settle_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        match time::timeout(within, wait).await {
            Ok(r) => r,
            Err(_) => Err(SettleError::Timeout { within, here }),
        }
    }

    /// The next group event, waiting for one.
    pub async fn next_event(&self) -> GroupEvent {
        self.inner.events.next().await
    }

    /// A one-line description of the protocol state (counters of every row), for diagnostics.
    pub fn describe(&self) -> String {
        let node = self.inner.node.borrow();
        let layout = node.row_layout().clone();
        let mem = node.memory();
        let mut out = format!("me {} waiters {}:", node.me(), self.inner.send_waiters.borrow().len());
        for (s, cols) in node.view().shards.iter().zip(&layout.shards) {
            for rank in 0..layout.rows {
                let row = layout.row(rank);
                let recv: Vec<u64> = (0..s.senders.len()).map(|j| mem.load_u64(row + cols.received + 8 * j)).collect();
                out += &format!(
                    " [row {rank}: seq {} delivered {} sent {} received {recv:?}]",
                    mem.load_u64(row + cols.seq_num),
                    mem.load_u64(row + cols.delivered_num),
                    mem.load_u64(row + cols.sent)
                );
            }
        }
        out
    }

    /// Runs the rules once now (a send's pushes leave at the next turn of the loop anyway).
    pub fn flush(&self) {
        self.inner.step();
    }

    /// Stops running the rules and closes the transport (peers see this member leave).
    pub async fn close(&self) {
        if self.inner.closed.replace(true) {
            return;
        }
        if let Some(h) = self.hook.take() {
            remove_poll_hook(h);
        }
        if let Some(t) = self.events_task.borrow_mut().take() {
            t.abort();
        }
        for w in self.inner.send_waiters.borrow_mut().drain(..).chain(self.inner.settle_waiters.borrow_mut().drain(..))
        {
            w.wake();
        }
        self.inner.transport.close(Duration::from_secs(1)).await;
    }
}
