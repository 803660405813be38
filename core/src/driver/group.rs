//! [`Group`]: a group with membership (PROTOCOLS §3) over TCP or shared memory.
//!
//! One listener per member, held by a [`TcpAcceptor`], serves everything: each view runs on a
//! transport of its own whose group tag names the group and the view, and the acceptor routes
//! each incoming connection by that tag, parking connections for a view this member has not
//! reached yet. Joins and their answers are one-shot messages to the same listener under the
//! group's control tag.
//!
//! Over shared memory ([`TransportKind::Shm`]) the joins and control messages still go to the
//! TCP listener, and each view's transport is a [`ShmTransport`] of its own namespace,
//! `{group name}-v{view id}`, whose table region is created before the member announces itself
//! in it (so pushes never meet a peer's missing table). Members that do not appear in the
//! namespace within `connect_timeout` are reported failed, as over TCP; the files a killed member
//! leaves behind in an old view's namespace are removed by the survivors when they release that
//! view.
//!
//! A view change, as the driver sees it: the protocol announces [`Output::NextView`]; the driver
//! welcomes the joiners (every old member does, so one failure does not strand a joiner),
//! connects the next view's transport (a peer missing after `connect_timeout` is reported as
//! failed and so suspected), registers the next table in it and installs. The previous view's
//! transport stays open until every member of the new view has shown a heartbeat in it: until
//! then it carries "alive" frames both ways, so that a member still finishing the old view does
//! not suspect those that finished first (`Input::PeerAlive`). States for new members are frames
//! of the new view's transport, made by the application's snapshot at the moment of install,
//! before anything of the new view is delivered.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::region::Region;
use derecho_runtime::transport::shm::{ShmConfig, ShmTransport};
use derecho_runtime::transport::tcp::{TcpAcceptor, TcpConfig, TcpTransport, send_message};
use derecho_runtime::transport::{
    AnyTransport, Payload, PeerId, Transport, TransportError, TransportEvent, TransportLimits,
};
use derecho_runtime::{HookId, JoinHandle, Park, PollHook, add_poll_hook, remove_poll_hook, spawn, time};

use super::config::TransportKind;
use super::wire::{APP_FRAME_HEADER_LEN, APP_FRAME_KIND, Answer, Control, JOIN_VERSION, ViewFrame, app_frame};
use super::{
    EventBox, GroupError, GroupEvent, GroupSendError, RegionMemory, SettleError, TABLE_REGION, push_range, since,
};
use crate::protocol::restart::{self, Offer, Waiting};
use crate::protocol::{
    Delivered, GmsStep, Input, JoinRefusal, LayoutFn, Limits, MembershipConfig, NextView, Node, NodeId, OneShard,
    Output, RowLayout, SendError, ShardRef, StopReason, Time, View, ViewId,
};

/// The longest control message (a welcome carries the view and every address).
const MESSAGE_LEN_MAX: usize = 1 << 20;
/// Connections parked at once, for views not reached yet and control messages.
const PARK_MAX: usize = 256;
/// The largest frame of a view's transport besides pushes of the table: application frames
/// ([`GroupSender::send_to`], the calls layer's batches, queries and replies) and pieces of
/// states. Shared-memory rings hold two of them.
pub const FRAME_LEN_MAX: usize = 8 << 20;
/// The bytes of a state in one frame; larger states travel in pieces.
const STATE_PIECE_LEN: usize = 1 << 20;

/// What the application gives a [`Group`]: the delivery of messages, and the state of each
/// shard for members that join it (PROTOCOLS §3.5). Any `FnMut(Delivered)` is an application
/// without state.
///
/// Every method runs on the group's executor, inside the driver: it must not call the
/// [`Group`] (spawn a task for that), and it should be quick. A snapshot or restore that takes
/// longer than the suspicion timeout silences this member that long, and the others suspect it.
pub trait Application: 'static {
    /// A message delivered, in the shard's delivery order. Must not call [`Group::send`]
    /// (spawn a task for that).
    fn deliver(&mut self, message: Delivered<'_>);

    /// The state of `shard` for a member joining it: everything delivered in the shard so far
    /// (called at the view change, before anything of the new view is delivered). An
    /// application still applying earlier deliveries (async handlers) answers
    /// [`State::Later`] and finishes them first.
    fn snapshot(&mut self, _shard: ShardRef) -> State {
        State::Ready(Vec::new())
    }

    /// Replaces the state of `shard` with a snapshot from an old member; called once, before
    /// anything is delivered in the shard. An error is reported ([`GroupEvent::StateRejected`])
    /// and the next source's copy is tried; with none, the member stops with
    /// [`StopReason::StateTransferTimeout`].
    ///
    /// # Errors
    ///
    /// The snapshot is not one this application can read.
    fn restore(&mut self, _shard: ShardRef, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// A new view was installed here.
    fn view_installed(&mut self, _change: &ViewChange) {}

    /// This member proposed or acknowledged the next view, `id` with `members`; its
    /// acknowledgement leaves when this returns `Ok`. A persisting application saves it first
    /// (PROTOCOLS §4.1: a restart quorum must hear of every view that may have been committed).
    ///
    /// # Errors
    ///
    /// Why it could not be saved: the member stops ([`GroupEvent::Fatal`]) and the
    /// acknowledgement never leaves.
    fn view_proposed(&mut self, _id: ViewId, _members: &[NodeId]) -> Result<(), String> {
        Ok(())
    }

    /// A frame another member sent this one with [`GroupSender::send_to`]. `body` is borrowed
    /// from the receive buffer, 16-byte aligned.
    fn receive(&mut self, _from: NodeId, _body: &[u8]) {}

    /// This member stopped (partitioned, removed, left) or its group closed: nothing more will
    /// be delivered or received.
    fn stopped(&mut self) {}

    /// A persistence frontier of `shard` moved (PROTOCOLS §4): `local` is the highest version
    /// durable here ([`GroupSender::report_persisted`]), `global` the highest durable at every
    /// member of the shard in the current view.
    fn persisted(
        &mut self,
        _shard: ShardRef,
        _local: Option<crate::protocol::Version>,
        _global: Option<crate::protocol::Version>,
    ) {
    }

    /// A request from an external client (a process outside the group) sent to this member's
    /// listener; the answer goes back to the client. `None`: this application serves none.
    fn external(&mut self, _request: &[u8]) -> Option<State> {
        None
    }
}

/// A shard's state for a joining member ([`Application::snapshot`]).
pub enum State {
    /// The state now.
    Ready(Vec<u8>),
    /// The state once the application has applied everything delivered before the view change.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>>>>),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Ready(v) => write!(f, "State::Ready({} bytes)", v.len()),
            State::Later(_) => f.write_str("State::Later"),
        }
    }
}

impl From<Vec<u8>> for State {
    fn from(v: Vec<u8>) -> Self {
        State::Ready(v)
    }
}

impl<F: FnMut(Delivered<'_>) + 'static> Application for F {
    fn deliver(&mut self, message: Delivered<'_>) {
        self(message);
    }
}

/// A view installed, with what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewChange {
    /// The view.
    pub view: View,
    /// Members added.
    pub joined: Vec<NodeId>,
    /// Members removed (failed or left).
    pub departed: Vec<NodeId>,
    /// Why the view has no shards, if it is inadequate (the group waits for joins).
    pub inadequate: Option<String>,
    /// The shards this member joined whose state is on its way ([`Application::restore`]
    /// comes before anything is delivered in them).
    pub awaiting_state: Vec<ShardRef>,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The group refused (an id in use, a full group).
    #[error("refused: {0}")]
    Refused(JoinRefusal),
    /// The contact speaks another version of the join handshake.
    #[error("the group speaks join version {theirs}, this build {ours}")]
    Version {
        /// The group's.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// No welcome within the join timeout.
    #[error("no answer from the group within {after:?} (contact {contact}, last asked {asked})")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// The contact given.
        contact: SocketAddr,
        /// The member last asked (the leader, after a redirect).
        asked: String,
    },
    /// The welcome's view or the listener could not be set up.
    #[error(transparent)]
    Start(#[from] GroupError),
    /// Admitted, but stopped before it could start (the state did not come in time, or the
    /// group removed it).
    #[error("stopped while joining: {0}")]
    Stopped(StopReason),
    /// This member's persisted state could not be recovered (see
    /// [`crate::rpc::RecoveryError`]).
    #[error("recovery from this member's logs failed: {0}")]
    Recovery(String),
    /// The restart leader's quorum was not met in time ([`GroupBuilder::restart`]).
    #[error("no restart quorum within {after:?}: {waiting}")]
    NoQuorum {
        /// The restart timeout.
        after: Duration,
        /// What was still missing.
        waiting: Waiting,
    },
    /// A configuration this member cannot run with.
    #[error("configuration: {0}")]
    Config(String),
}

/// Why a total restart (and so persistence) needs partition safety.
pub(crate) const PARTITION_SAFETY_NEEDED: &str = "persistence needs partition safety \
    (MembershipConfig::partition_safety): a total restart relies on every view being committed by a majority \
    of the one before";

/// Errors of [`Group::wait_view`].
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// No view matched in time.
    #[error("no matching view within {within:?}; the current view is {current:?}")]
    Timeout {
        /// How long it waited.
        within: Duration,
        /// The view when it gave up.
        current: View,
    },
    /// This member stopped.
    #[error("stopped: {0}")]
    Stopped(StopReason),
    /// The group was closed, or the driver could not go on ([`GroupEvent::Fatal`]).
    #[error("the group is closed")]
    Closed,
}

/// Settings and application of a member; [`GroupBuilder::start`] starts a group,
/// [`GroupBuilder::join`] joins one.
pub struct GroupBuilder {
    me: NodeId,
    listen: SocketAddr,
    listener: Option<TcpListener>,
    advertise: Option<String>,
    name: String,
    limits: Limits,
    membership: MembershipConfig,
    layout: Rc<dyn LayoutFn>,
    connect_timeout: Duration,
    join_timeout: Duration,
    restart_timeout: Duration,
    state_len_max: usize,
    transport: TransportKind,
    shm_dir: std::path::PathBuf,
}

impl std::fmt::Debug for GroupBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupBuilder").field("me", &self.me).field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl GroupBuilder {
    /// Member `me`, listening on `listen` (port 0 picks one). Defaults: group name "derecho",
    /// default limits and membership settings, one ordered shard of every member adequate from
    /// one member, a 2 s connect timeout per view, a 30 s join timeout, a 5 minute restart
    /// timeout, states up to 64 MiB.
    pub fn new(me: NodeId, listen: SocketAddr) -> Self {
        Self {
            me,
            listen,
            listener: None,
            advertise: None,
            name: "derecho".into(),
            limits: Limits::default(),
            membership: MembershipConfig::default(),
            layout: Rc::new(OneShard { mode: crate::protocol::DeliveryMode::Ordered, min_members: 1 }),
            connect_timeout: Duration::from_secs(2),
            join_timeout: Duration::from_secs(30),
            restart_timeout: Duration::from_secs(300),
            state_len_max: 64 << 20,
            transport: TransportKind::Tcp,
            shm_dir: std::path::PathBuf::from("/dev/shm"),
        }
    }

    /// The transport of each view (every member must use the same): TCP (the default), or
    /// shared memory among processes of this host. Over shared memory joins and external
    /// clients still reach members through their TCP listener, and the group's name must be
    /// 1 to 48 letters, digits, `_`, `.` or `-`, unique among the groups sharing
    /// [`GroupBuilder::shm_dir`]. Each ring between two members is sized for the largest frame,
    /// [`FRAME_LEN_MAX`], twice (about 16 MiB per pair of members and view, touched as it is
    /// used; states travel in pieces).
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = kind;
        self
    }

    /// Where shared-memory views keep their files (default `/dev/shm`).
    pub fn shm_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.shm_dir = dir.into();
        self
    }

    /// A listener already bound (its address replaces `listen`).
    pub fn listener(mut self, l: TcpListener) -> Self {
        self.listen = l.local_addr();
        self.listener = Some(l);
        self
    }

    /// The address peers reach this member at, if not the listen address (at most 56 bytes).
    pub fn advertise(mut self, address: impl Into<String>) -> Self {
        self.advertise = Some(address.into());
        self
    }

    /// The group's name: members of differently named groups never connect.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Table limits (every member must use the same).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Heartbeat, suspicion timeout, partition safety, state-transfer timeout.
    pub fn membership(mut self, m: MembershipConfig) -> Self {
        self.membership = m;
        self
    }

    /// The membership configuration set.
    pub fn membership_config(&self) -> &MembershipConfig {
        &self.membership
    }

    /// The shard layout of every view (every member must use the same).
    pub fn layout(mut self, layout: impl LayoutFn + 'static) -> Self {
        self.layout = Rc::new(layout);
        self
    }

    /// How long a view's transport waits for a peer before reporting it failed.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long [`GroupBuilder::join`] waits for its welcome.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        self.join_timeout = d;
        self
    }

    /// How long [`GroupBuilder::restart`] waits: the restart leader for a quorum, the others
    /// for their welcome (default 5 minutes: members of a stopped group come back one by one).
    pub fn restart_timeout(mut self, d: Duration) -> Self {
        self.restart_timeout = d;
        self
    }

    /// The largest shard state accepted or sent (at most 4 GiB less 64 bytes, a frame's limit).
    pub fn state_len_max(mut self, len: usize) -> Self {
        self.state_len_max = len.min(u32::MAX as usize - 64);
        self
    }

    async fn acceptor(&mut self) -> Result<(TcpAcceptor, String), GroupError> {
        let listener = match self.listener.take() {
            Some(l) => l,
            None => self.bind().await?,
        };
        let advertise = self.advertise.clone().unwrap_or_else(|| listener.local_addr().to_string());
        if advertise.parse::<SocketAddr>().is_err() || advertise.len() > crate::protocol::ADDRESS_LEN_MAX {
            return Err(GroupError::Transport(TransportError::Config(format!(
                "advertise: {advertise:?} is not an IP address and port of at most {} bytes",
                crate::protocol::ADDRESS_LEN_MAX
            ))));
        }
        let limits = TransportLimits { max_frame_len: MESSAGE_LEN_MAX, ..TransportLimits::default() };
        let acceptor = TcpAcceptor::new(listener, PeerId(self.me.0), &limits, PARK_MAX, self.connect_timeout * 4);
        acceptor.accept_messages(tag(&self.name, u64::MAX), MESSAGE_LEN_MAX);
        Ok((acceptor, advertise))
    }

    /// Binds the listening address. A member restarted right after it died may find its
    /// address still taken for a moment: the kernel releases the listener of a killed process
    /// only once its io_uring (holding a pending accept) is torn down, asynchronously. So an
    /// address in use is tried again for up to the connect timeout.
    async fn bind(&self) -> Result<TcpListener, GroupError> {
        let deadline = Instant::now() + self.connect_timeout;
        loop {
            match TcpListener::bind(self.listen) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tracing::debug!(listen = %self.listen, "the address is in use; trying again");
                    time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    return Err(GroupError::Transport(TransportError::Config(format!(
                        "cannot listen on {}: {e}",
                        self.listen
                    ))));
                }
            }
        }
    }

    /// Starts a new group of this member alone (PROTOCOLS §3.5 bootstrap); others join it with
    /// this member's address as contact. It delivers nothing until a view is adequate (see
    /// [`Group::wait_view`]). Must run inside an executor.
    ///
    /// # Errors
    ///
    /// [`GroupError`]: invalid settings, the address cannot be bound.
    pub async fn start(mut self, app: impl Application) -> Result<Group, GroupError> {
        self.membership.validate().map_err(crate::protocol::NodeError::from)?;
        let (acceptor, advertise) = self.acceptor().await?;
        let view = Node::<RegionMemory>::bootstrap_view(self.me, &*self.layout);
        let addresses = [(self.me, advertise.clone())].into_iter().collect();
        let settings = Settings::from(&self);
        let (transport, region) = settings.connect(&acceptor, &view, &[(self.me, advertise.clone())]).await?;
        let epoch = Instant::now();
        let node = Node::with_membership(
            self.me,
            view,
            addresses,
            &self.limits,
            RegionMemory::new(region),
            self.membership.clone(),
            self.layout.clone(),
            Time(0),
        )?;
        Ok(Group::run(settings, acceptor, transport, node, Box::new(app), epoch, None))
    }

    /// Joins the group that the member at `contact` belongs to (redirected to its leader), and
    /// returns once admitted, in the view that adds this member, with the state of every shard
    /// it joins restored (the application's [`Application::restore`]). Must run inside an
    /// executor.
    ///
    /// # Errors
    ///
    /// [`JoinError`]: refused (an id in use, a full group), another handshake version, no
    /// welcome within the join timeout, no state within the state-transfer timeout, or a
    /// transport error.
    pub async fn join(mut self, contact: SocketAddr, app: impl Application) -> Result<Group, JoinError> {
        self.membership.validate().map_err(|e| GroupError::Node(e.into()))?;
        let (acceptor, advertise) = self.acceptor().await?;
        let request = Control::Join { version: JOIN_VERSION, node: self.me, address: advertise }.encode();
        let next = self.ask(&acceptor, &request, contact, self.join_timeout).await?;
        self.enter(acceptor, next, app).await
    }

    /// Restarts a group from its members' logs (PROTOCOLS §4.1): `offer` is this member's
    /// last saved view and the last version of each shard's log here.
    ///
    /// Without a `contact`, this member is the restart leader: it collects the offers of the
    /// members that come back, and once a majority of the last view and at least one member of
    /// each of its shards are there ([`crate::protocol::restart::plan`]) it installs the
    /// restart view: those members, each shard starting from its longest log, sent to the
    /// members whose log is shorter. With a `contact` (the restart leader, or any member of a
    /// group already running again), this member offers itself and enters the view it is
    /// welcomed to, as a joiner does.
    ///
    /// # Errors
    ///
    /// [`JoinError::NoQuorum`] when the leader's quorum is not met within the restart timeout;
    /// [`JoinError::Config`] without partition safety; otherwise as [`GroupBuilder::join`].
    pub async fn restart(
        mut self,
        offer: Offer,
        contact: Option<SocketAddr>,
        app: impl Application,
    ) -> Result<Group, JoinError> {
        self.membership.validate().map_err(|e| GroupError::Node(e.into()))?;
        if !self.membership.partition_safety {
            return Err(JoinError::Config(PARTITION_SAFETY_NEEDED.into()));
        }
        let (acceptor, advertise) = self.acceptor().await?;
        if let Some(contact) = contact {
            let request = Control::Restart { version: JOIN_VERSION, node: self.me, address: advertise, offer }.encode();
            let next = self.ask(&acceptor, &request, contact, self.restart_timeout).await?;
            return self.enter(acceptor, next, app).await;
        }
        let control = tag(&self.name, u64::MAX);
        let deadline = Instant::now() + self.restart_timeout;
        let mut addresses: BTreeMap<NodeId, String> = [(self.me, advertise)].into_iter().collect();
        let mut offers: BTreeMap<NodeId, Offer> = [(self.me, offer)].into_iter().collect();
        let plan = loop {
            let waiting = match restart::plan(self.me, &offers, &*self.layout) {
                Ok(plan) => break plan,
                Err(w) => w,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((_, body)) = time::timeout(left, acceptor.next_message()).await else {
                return Err(JoinError::NoQuorum { after: self.restart_timeout, waiting });
            };
            match Control::decode(&body) {
                Ok(Control::Restart { version, node, address, offer }) => {
                    if version != JOIN_VERSION {
                        let answer = Control::Answer(Answer::Version(JOIN_VERSION)).encode();
                        if let Ok(a) = address.parse::<SocketAddr>() {
                            let _ = send_message(PeerId(self.me.0), a, control, &answer, self.connect_timeout).await;
                        }
                        continue;
                    }
                    // View ids must leave room for the restart view's versions (24 bits).
                    let id_fits = |v: ViewId| v.0 < (1 << 24) - 2;
                    let fits = id_fits(offer.saved.id)
                        && id_fits(offer.newest_file)
                        && offer.logs.values().all(|v| id_fits(v.view()))
                        && offer
                            .proposed
                            .iter()
                            .all(|(id, m)| id_fits(*id) && m.len() <= self.limits.members_max as usize);
                    // A member that saved no view offers only the views it acknowledged.
                    let valid = if offer.saved_a_view() {
                        offer.saved.validate(&self.limits).is_ok()
                    } else {
                        offer.logs.is_empty() && offer.damaged.is_empty()
                    };
                    if node == self.me || !valid || !fits {
                        tracing::warn!(%node, "a restart offer with this member's id, a bad view or view ids out of range: ignored");
                        continue;
                    }
                    tracing::info!(me = %self.me, %node, %address, saved = offer.saved.id.0, "restart offer");
                    addresses.insert(node, address);
                    offers.insert(node, offer);
                }
                // A member with nothing to recover (no saved view, no view acknowledged) asks to
                // join: it is back, holding no log (a later view acknowledged by another may be
                // waiting for it).
                Ok(Control::Join { version, node, address }) if version == JOIN_VERSION && node != self.me => {
                    tracing::info!(me = %self.me, %node, %address, "a member without logs is back");
                    addresses.insert(node, address);
                    offers.entry(node).or_insert_with(|| Offer::without_saved_view(Vec::new()));
                }
                Ok(other) => tracing::debug!(?other, "ignored a control message while restarting"),
                Err(e) => tracing::warn!(error = %e, "ignored a malformed control message"),
            }
        };
        tracing::info!(me = %self.me, view = plan.view.id.0, members = ?plan.view.members, "restart view");
        let next = NextView {
            addresses: plan.view.members.iter().map(|m| (*m, addresses[m].clone())).collect(),
            joined: plan.view.members.iter().copied().filter(|m| *m != self.me).collect(),
            departed: plan.last.members.iter().copied().filter(|m| !plan.view.members.contains(m)).collect(),
            transfers: plan.transfers,
            inadequate: None,
            view: plan.view,
        };
        let welcome = Control::Answer(Answer::Welcome(Box::new(next.clone()))).encode();
        for (node, address) in &next.addresses {
            if *node == self.me {
                continue;
            }
            // A member that does not take its welcome misses the view's connect and is
            // reported failed there, as any member that fails.
            match address.parse::<SocketAddr>() {
                Ok(a) => {
                    if let Err(e) = send_message(PeerId(self.me.0), a, control, &welcome, self.connect_timeout).await {
                        tracing::warn!(%node, error = %e, "restart welcome not delivered");
                    }
                }
                Err(_) => tracing::warn!(%node, %address, "a restart address that does not parse"),
            }
        }
        self.enter(acceptor, next, app).await
    }

    /// Sends `request` (a join or a restart offer) to `contact` until a welcome comes,
    /// following redirects to the leader, for at most `timeout`.
    async fn ask(
        &self,
        acceptor: &TcpAcceptor,
        request: &[u8],
        contact: SocketAddr,
        timeout: Duration,
    ) -> Result<NextView, JoinError> {
        let control = tag(&self.name, u64::MAX);
        let deadline = Instant::now() + timeout;
        let mut target = contact;
        // Members that took a request of ours: an `IdInUse` from one of them may be about that
        // request, still under way.
        let mut asked: Vec<SocketAddr> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(JoinError::Timeout { after: timeout, contact, asked: target.to_string() });
            }
            // The contact may not be listening yet: ask again shortly.
            if let Err(e) =
                send_message(PeerId(self.me.0), target, control, request, left.min(Duration::from_secs(2))).await
            {
                tracing::debug!(%target, error = %e, "join request not delivered; retrying");
                time::sleep(Duration::from_millis(50).min(left)).await;
                if target != contact {
                    target = contact;
                }
                continue;
            }
            let asked_now = asked.contains(&target);
            asked.push(target);
            // Answers come as messages to our own listener; a redirect is asked at once, silence
            // asks again (the member asked may have failed, or be busy with a view change).
            let wait_until = (Instant::now() + Duration::from_secs(2)).min(deadline);
            loop {
                let left = wait_until.saturating_duration_since(Instant::now());
                let Ok((_, body)) = time::timeout(left, acceptor.next_message()).await else {
                    target = contact;
                    break;
                };
                match Control::decode(&body) {
                    Ok(Control::Answer(Answer::Welcome(next))) if next.view.rank_of(self.me).is_some() => {
                        return Ok(*next);
                    }
                    Ok(Control::Answer(Answer::Refused(JoinRefusal::NotLeader { address, .. }))) => {
                        match address.parse() {
                            Ok(a) => target = a,
                            Err(_) => {
                                tracing::warn!(%address, "a redirect to an address that does not parse");
                                target = contact;
                                time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        break;
                    }
                    // Asked again while our first request is under way: the id in use is ours.
                    Ok(Control::Answer(Answer::Refused(JoinRefusal::IdInUse(_)))) if asked_now => {}
                    Ok(Control::Answer(Answer::Refused(r))) => return Err(JoinError::Refused(r)),
                    Ok(Control::Answer(Answer::Version(theirs))) => {
                        return Err(JoinError::Version { theirs, ours: JOIN_VERSION });
                    }
                    Ok(other) => tracing::debug!(?other, "ignored a control message while joining"),
                    Err(e) => tracing::warn!(error = %e, "ignored a malformed control message"),
                }
            }
        }
    }

    /// Enters `next`, the first view of this member (a joiner's, or a restart view), and
    /// returns once the state of every shard it receives is restored.
    async fn enter(self, acceptor: TcpAcceptor, next: NextView, app: impl Application) -> Result<Group, JoinError> {
        let settings = Settings::from(&self);
        let (transport, region) = settings.connect(&acceptor, &next.view, &next.addresses).await?;
        let epoch = Instant::now();
        let node = Node::join(
            self.me,
            &next,
            &self.limits,
            RegionMemory::new(region),
            self.membership.clone(),
            self.layout.clone(),
            Time(0),
        )
        .map_err(GroupError::from)?;
        let change = ViewChange {
            view: next.view.clone(),
            joined: next.joined.clone(),
            departed: next.departed.clone(),
            inadequate: next.inadequate.clone(),
            awaiting_state: next.transfers.iter().filter(|t| t.to.contains(&self.me)).map(|t| t.shard).collect(),
        };
        let group = Group::run(settings, acceptor, transport, node, Box::new(app), epoch, Some(change));
        // Admitted; return once the state of every shard this member joined is restored.
        let restored = poll_fn(|cx| {
            let node = group.inner.node.borrow();
            if let Some(r) = node.stopped() {
                return Poll::Ready(Err(JoinError::Stopped(r.clone())));
            }
            if group.inner.closed.get() {
                return Poll::Ready(Err(JoinError::Start(GroupError::Transport(TransportError::Closed))));
            }
            if !node.view().shards.iter().any(|s| node.awaiting_state(s.id)) {
                return Poll::Ready(Ok(()));
            }
            group.inner.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        restored.await?;
        Ok(group)
    }
}

/// The group tag of the control messages of group `name` (joins, external clients).
pub(crate) fn control_tag(name: &str) -> u32 {
    tag(name, u64::MAX)
}

/// FNV-1a of the group name and a number: the tag of view `what`, or of control messages.
fn tag(name: &str, what: u64) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes().chain(what.to_le_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// What the running group keeps of the builder.
struct Settings {
    me: NodeId,
    name: String,
    limits: Limits,
    membership: MembershipConfig,
    connect_timeout: Duration,
    state_len_max: usize,
    transport: TransportKind,
    shm_dir: std::path::PathBuf,
}

impl From<&GroupBuilder> for Settings {
    fn from(b: &GroupBuilder) -> Self {
        Self {
            me: b.me,
            name: b.name.clone(),
            limits: b.limits.clone(),
            membership: b.membership.clone(),
            connect_timeout: b.connect_timeout,
            state_len_max: b.state_len_max,
            transport: b.transport,
            shm_dir: b.shm_dir.clone(),
        }
    }
}

impl Settings {
    /// The shared-memory namespace of view `view`.
    fn shm_namespace(&self, view: ViewId) -> String {
        format!("{}-v{}", self.name, view.0)
    }

    /// The transport of `view` and its table region: peers missing after the connect timeout
    /// are reported failed.
    async fn connect(
        &self,
        acceptor: &TcpAcceptor,
        view: &View,
        addresses: &[(NodeId, String)],
    ) -> Result<(Rc<AnyTransport>, Rc<Region>), GroupError> {
        let table_len = Node::<RegionMemory>::table_len(view, &self.limits);
        let row_len = RowLayout::new(view, &self.limits).row_len;
        let heartbeat = Duration::from_nanos(self.membership.heartbeat_ns);
        let max_frame_len = row_len.max(FRAME_LEN_MAX);
        let limits = TransportLimits {
            max_frame_len,
            heartbeat_interval: heartbeat,
            peer_timeout: Duration::from_nanos(self.membership.suspect_after_ns).max(2 * heartbeat),
            connect_timeout: self.connect_timeout,
            send_queue_len_max: (64 << 20usize).max(4 * row_len).max(max_frame_len),
        };
        if self.transport == TransportKind::Shm {
            if self.name.len() > 48 {
                return Err(TransportError::Config(format!(
                    "name: a group over shared memory needs a name of at most 48 bytes, not {:?}",
                    self.name
                ))
                .into());
            }
            let peers = view.members.iter().filter(|&&m| m != self.me).map(|m| PeerId(m.0)).collect();
            let mut config = ShmConfig::new(PeerId(self.me.0), peers, self.shm_namespace(view.id));
            config.dir = self.shm_dir.clone();
            config.ring_len = ShmConfig::ring_len_for(max_frame_len, 16 << 20);
            config.limits = limits;
            config.regions = vec![(TABLE_REGION, table_len)];
            let t = ShmTransport::connect_allowing_missing(config).await?;
            let region = t.region(TABLE_REGION).ok_or(TransportError::UnknownRegion(TABLE_REGION))?;
            return Ok((Rc::new(AnyTransport::Shm(t)), region));
        }
        let mut peers = Vec::new();
        for &m in view.members.iter().filter(|&&m| m != self.me) {
            let a = addresses.iter().find(|(n, _)| *n == m).map(|(_, a)| a.as_str()).unwrap_or("");
            match a.parse::<SocketAddr>() {
                Ok(a) => peers.push((PeerId(m.0), a)),
                // Reported failed below, like a peer that never connects.
                Err(_) => tracing::warn!(member = %m, address = a, "a member's address does not parse"),
            }
        }
        let unreachable: Vec<NodeId> =
            view.members.iter().copied().filter(|&m| m != self.me && !peers.iter().any(|(p, _)| p.0 == m.0)).collect();
        let mut config = TcpConfig::new(PeerId(self.me.0), peers);
        config.group_tag = tag(&self.name, u64::from(view.id.0));
        config.limits = limits;
        let t = TcpTransport::connect_via(acceptor, config, true).await?;
        if !unreachable.is_empty() {
            tracing::warn!(?unreachable, "members without a usable address are suspected");
        }
        let region = t.register_region(TABLE_REGION, table_len)?;
        Ok((Rc::new(AnyTransport::Tcp(t)), region))
    }

    /// Removes what members of `view` that were killed left in its shared-memory namespace
    /// (nothing over TCP; nothing of a member whose process is alive: it removes its own files
    /// when it closes).
    fn remove_dead_files(&self, view: ViewId, members: &[NodeId]) {
        if self.transport != TransportKind::Shm {
            return;
        }
        let ns = self.shm_namespace(view);
        for p in members.iter().filter(|&&m| m != self.me).map(|m| PeerId(m.0)) {
            match ShmTransport::remove_files_of(&self.shm_dir, &ns, p) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(peer = %p, files = n, namespace = ns, "removed a departed member's files"),
                Err(e) => tracing::debug!(error = %e, "cannot list the shared-memory directory"),
            }
        }
    }
}

/// A shard's persistence frontiers: durable here, durable at every member.
type Frontiers = (Option<crate::protocol::Version>, Option<crate::protocol::Version>);

/// An earlier view: its id, its members, its transport while it lingers.
type Lingering = (ViewId, Vec<NodeId>, Weak<AnyTransport>);

struct Inner {
    settings: Settings,
    acceptor: TcpAcceptor,
    node: RefCell<Node<RegionMemory>>,
    app: RefCell<Box<dyn Application>>,
    transport: RefCell<Rc<AnyTransport>>,
    /// The current transport's view.
    transport_view: Cell<ViewId>,
    /// A view change's install task is under way.
    installing: Cell<bool>,
    /// The node was wedged when the rules last ran (its deliveries are the ragged edge).
    wedged: Cell<bool>,
    /// Peers of the current transport that closed or failed.
    gone: RefCell<Vec<NodeId>>,
    /// External clients subscribed to notifications, by topic (at most `PARK_MAX` each).
    subscribers: RefCell<BTreeMap<String, Vec<SocketAddr>>>,
    /// Join requests received here and not yet answered: where to answer.
    joins: RefCell<BTreeMap<NodeId, String>>,
    events: EventBox,
    /// Tasks in `send`, `settle`, `wait_view`: woken on progress, view changes and stop.
    waiters: RefCell<Vec<Waker>>,
    /// The window and delivered-everywhere progress when the waiters were last woken.
    window_seen: Cell<u64>,
    epoch: Instant,
    closed: Cell<bool>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// The task reading each open view transport's events, by view.
    view_tasks: RefCell<Vec<(ViewId, JoinHandle<()>)>>,
    /// Scratch of `drain`.
    push_peers: RefCell<Vec<PeerId>>,
    push_errors: RefCell<Vec<(PeerId, TransportError)>>,
    /// The persistence progress last seen, and whether a local frontier was reported since.
    persisted_seen: Cell<u64>,
    local_reported: Cell<bool>,
    /// The frontiers last told to the application, per shard.
    frontiers: RefCell<BTreeMap<ShardRef, Frontiers>>,
    /// States arriving in pieces, by sender, shard and view.
    state_pieces: RefCell<BTreeMap<(NodeId, ShardRef, ViewId), Vec<u8>>>,
    /// Earlier views, their members and their transports while they linger; closed (and
    /// cleaned) with the group.
    lingering: RefCell<Vec<Lingering>>,
}

impl Inner {
    fn now(&self) -> Time {
        since(self.epoch)
    }

    fn report(&self, e: GroupEvent) {
        self.events.report(e);
    }

    fn wake_all(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// One batch: run the rules (and the timers when due), deliver, act on the outputs.
    fn step(self: &Rc<Self>) -> usize {
        if self.closed.get() {
            return 0;
        }
        let Ok(mut node) = self.node.try_borrow_mut() else { return 0 };
        let now = self.now();
        if node.poll_timeout().is_some_and(|t| now >= t) {
            node.handle(now, Input::Tick);
        } else {
            node.handle(now, Input::RowsChanged);
        }
        self.wedged.set(node.is_wedged());
        let delivered = match self.app.try_borrow_mut() {
            Ok(mut app) => node.deliver(|d| app.deliver(d)),
            Err(_) => 0,
        };
        let acted = self.drain(&mut node);
        let persisted = node.persisted_progress();
        let progress =
            node.window_progress() ^ node.delivered_everywhere_progress().rotate_left(32) ^ persisted.rotate_left(16);
        if progress != self.window_seen.get() {
            self.window_seen.set(progress);
            self.wake_all();
        }
        let local = self.local_reported.replace(false);
        if persisted != self.persisted_seen.get() || local {
            self.persisted_seen.set(persisted);
            let moved = self.frontiers_moved(&node);
            // Told with the node released: the application may read the frontiers.
            drop(node);
            self.tell_frontiers(moved);
        }
        delivered + acted
    }

    /// The shards whose persistence frontiers moved since the application was last told.
    fn frontiers_moved(&self, node: &Node<RegionMemory>) -> Vec<(ShardRef, Frontiers)> {
        let seen = self.frontiers.borrow();
        node.view()
            .shards
            .iter()
            .filter(|s| s.members.contains(&self.settings.me))
            .map(|s| (s.id, (node.persisted_here(s.id), node.persisted_everywhere(s.id))))
            .filter(|(id, now)| *now != (None, None) && seen.get(id) != Some(now))
            .collect()
    }

    /// Tells the application of moved frontiers (at the next step if it is busy).
    fn tell_frontiers(&self, moved: Vec<(ShardRef, Frontiers)>) {
        if moved.is_empty() {
            return;
        }
        let Ok(mut app) = self.app.try_borrow_mut() else {
            self.local_reported.set(true);
            return;
        };
        let mut seen = self.frontiers.borrow_mut();
        for (shard, now) in moved {
            seen.insert(shard, now);
            app.persisted(shard, now.0, now.1);
        }
    }

    /// See [`Group::settle`].
    async fn settle(&self, shard: ShardRef, within: Duration) -> Result<(), SettleError> {
        let here = self.node.borrow().delivery_frontier(shard).ok_or(SettleError::NoSuchShard(shard))?;
        let view = self.node.borrow().view().id;
        let wait = poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(Err(SettleError::Closed));
            }
            let node = self.node.borrow();
            // A view change delivers everything of the old view that anyone will.
            if node.view().id != view || node.stopped().is_some() {
                return Poll::Ready(Ok(()));
            }
            if node.delivered_everywhere(shard, &here).unwrap_or(false) {
                return Poll::Ready(Ok(()));
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        match time::timeout(within, wait).await {
            Ok(r) => r,
            Err(_) => Err(SettleError::Timeout { within, here }),
        }
    }

    /// See [`GroupSender::fatal`].
    fn fatal(self: &Rc<Self>, reason: &str) {
        if self.closed.replace(true) {
            return;
        }
        tracing::error!(me = %self.settings.me, reason, "this member stops");
        match self.app.try_borrow_mut() {
            Ok(mut app) => app.stopped(),
            // Called from inside the application (a delivery, a restore): tell it once it
            // returns.
            Err(_) => {
                let weak = Rc::downgrade(self);
                drop(spawn(async move {
                    if let Some(inner) = weak.upgrade()
                        && let Ok(mut app) = inner.app.try_borrow_mut()
                    {
                        app.stopped();
                    }
                }));
            }
        }
        self.report(GroupEvent::Fatal(reason.to_string()));
        self.wake_all();
        let transport = self.transport.borrow().clone();
        drop(spawn(async move { transport.close(Duration::ZERO).await }));
    }

    /// Acts on every output of the node; returns how many.
    fn drain(self: &Rc<Self>, node: &mut Node<RegionMemory>) -> usize {
        let mut n = 0;
        while let Some(o) = node.poll_output() {
            n += 1;
            match o {
                // A member stopped (by an output before this one, or by the application it
                // called) sends nothing more: not the acknowledgement of a view it could not
                // save, not rows of a state it can no longer keep.
                _ if self.closed.get() => break,
                Output::Push { range, to } => {
                    let transport = self.transport.borrow();
                    push_range(&**transport, &self.push_peers, &self.push_errors, range, &to, |peer, e| {
                        // A failed peer is suspected through its transport event.
                        tracing::trace!(%peer, error = %e, "push not sent");
                    });
                }
                Output::Violation { node: peer, violation } => {
                    tracing::warn!(%peer, %violation, "peer broke the protocol");
                    self.report(GroupEvent::Violation { peer, what: violation.to_string() });
                }
                Output::Step(step) => {
                    tracing::debug!(me = %self.settings.me, ?step, "view change step");
                    // Before the acknowledgement's push (queued after this step) leaves.
                    if matches!(step, GmsStep::Proposed(_) | GmsStep::Acked { .. })
                        && let Some((id, members)) = node.proposed_view()
                    {
                        let saved = self.app.borrow_mut().view_proposed(id, &members);
                        if let Err(reason) = saved {
                            self.fatal(&format!("view {} could not be saved before acknowledging it: {reason}", id.0));
                        }
                    }
                }
                Output::NextView(next) => {
                    if !self.installing.replace(true) {
                        self.welcome(&next);
                        // From now on this member pushes nothing in the old view: its "alive"
                        // beats keep members still finishing it from suspecting this one.
                        let old = self.transport.borrow().clone();
                        let (view, members) = (self.transport_view.get(), node.view().members.clone());
                        let mut lingering = self.lingering.borrow_mut();
                        lingering.retain(|(_, _, t)| t.strong_count() > 0);
                        lingering.push((view, members.clone(), Rc::downgrade(&old)));
                        drop(lingering);
                        let linger = spawn(linger(Rc::downgrade(self), old, view, members));
                        let inner = self.clone();
                        let install = spawn(async move { inner.install(next).await });
                        let mut tasks = self.tasks.borrow_mut();
                        tasks.retain(|t| !t.is_finished());
                        tasks.extend([linger, install]);
                    }
                }
                Output::Stopped(reason) => {
                    tracing::info!(me = %self.settings.me, %reason, "stopped");
                    if let Ok(mut app) = self.app.try_borrow_mut() {
                        app.stopped();
                    }
                    self.report(GroupEvent::Stopped(reason));
                    self.wake_all();
                }
                Output::JoinRefused { node: joiner, refusal } => {
                    if let Some(address) = self.joins.borrow_mut().remove(&joiner) {
                        self.answer(address, Answer::Refused(refusal));
                    }
                }
                Output::SendState { shard, to } => {
                    let state = self.app.borrow_mut().snapshot(shard);
                    let view = node.view().id;
                    let transport = self.transport.borrow().clone();
                    let len_max = self.settings.state_len_max;
                    self.tasks.borrow_mut().push(spawn(async move {
                        let state = match state {
                            State::Ready(s) => s,
                            State::Later(f) => f.await,
                        };
                        if state.len() > len_max {
                            tracing::error!(%shard, len = state.len(), "the state is longer than state_len_max: not sent");
                            return;
                        }
                        // In pieces, each a frame; the pieces of one state reach a member in order.
                        let total = state.len() as u64;
                        let mut pieces = Vec::new();
                        let mut offset = 0;
                        loop {
                            let end = (offset + STATE_PIECE_LEN).min(state.len());
                            let body = state[offset..end].to_vec();
                            let piece = ViewFrame::State { view, shard, offset: offset as u64, total, body };
                            pieces.push(Payload::from(piece.encode()));
                            offset = end;
                            if offset == state.len() {
                                break;
                            }
                        }
                        'members: for t in to {
                            for piece in &pieces {
                                if let Err(e) = transport.send_frame(PeerId(t.0), piece.clone()).await {
                                    tracing::warn!(to = %t, error = %e, "state not sent");
                                    continue 'members;
                                }
                            }
                        }
                    }));
                }
                Output::ResendFailed { shard, count } => self.report(GroupEvent::ResendFailed { shard, count }),
            }
        }
        n
    }

    /// Sends `answer` to a joiner's listener, in the background.
    fn answer(&self, address: String, answer: Answer) {
        self.send_control(&address, Control::Answer(answer));
    }

    /// Sends a control message to a listener (a joiner's, an external client's), in the
    /// background.
    fn send_control(&self, address: &str, message: Control) {
        let Ok(addr) = address.parse::<SocketAddr>() else {
            tracing::warn!(%address, "cannot answer a listener whose address does not parse");
            return;
        };
        let me = PeerId(self.settings.me.0);
        let control = tag(&self.settings.name, u64::MAX);
        let within = self.settings.connect_timeout;
        drop(spawn(async move {
            let body = message.encode();
            if let Err(e) = send_message(me, addr, control, &body, within).await {
                tracing::debug!(%addr, error = %e, "control message not delivered");
            }
        }));
    }

    /// Every old member sends the next view to its joiners (the first to arrive wins).
    fn welcome(&self, next: &NextView) {
        for j in &next.joined {
            self.joins.borrow_mut().remove(j);
            if let Some((_, address)) = next.addresses.iter().find(|(n, _)| n == j) {
                self.answer(address.clone(), Answer::Welcome(Box::new(next.clone())));
            }
        }
    }

    /// Connects the next view's transport and installs the view over its table.
    async fn install(self: Rc<Self>, next: NextView) {
        let (transport, region) = match self.settings.connect(&self.acceptor, &next.view, &next.addresses).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the next view's transport");
                self.report(GroupEvent::Fatal(format!("cannot set up view {}: {e}", next.view.id.0)));
                self.closed.set(true);
                self.wake_all();
                return;
            }
        };
        if self.closed.get() {
            transport.close(Duration::ZERO).await;
            return;
        }
        *self.transport.borrow_mut() = transport.clone();
        self.gone.borrow_mut().clear();
        self.transport_view.set(next.view.id);
        {
            let mut node = self.node.borrow_mut();
            if node.stopped().is_some() {
                // Stopped while connecting (removed, partitioned): nothing to install.
                drop(node);
                self.installing.set(false);
                self.wake_all();
                return;
            }
            if let Err(e) = node.install(self.now(), RegionMemory::new(region)) {
                drop(node);
                self.report(GroupEvent::Fatal(format!("cannot install view {}: {e}", next.view.id.0)));
                self.closed.set(true);
                self.installing.set(false);
                self.wake_all();
                return;
            }
            // PROTOCOLS §7: a peer's pushes may write only its own row.
            for &m in next.view.members.iter().filter(|&&m| m != self.settings.me) {
                if let Some(row) = node.row_range(m) {
                    transport.confine_pushes(TABLE_REGION, PeerId(m.0), row);
                }
            }
            // States first: the snapshot must not include anything of the new view.
            self.drain(&mut node);
            if node.stopped().is_some() {
                // It stopped instead (a state it awaited never came): the view is not this
                // member's, and the application must not take it as installed (a persisting
                // one would save it as whole).
                drop(node);
                self.installing.set(false);
                self.wake_all();
                return;
            }
        }
        self.installing.set(false);
        let events = spawn(events(Rc::downgrade(&self), transport, next.view.id));
        self.view_tasks.borrow_mut().push((next.view.id, events));
        let change = ViewChange {
            view: next.view.clone(),
            joined: next.joined.clone(),
            departed: next.departed.clone(),
            inadequate: next.inadequate.clone(),
            awaiting_state: next
                .transfers
                .iter()
                .filter(|t| t.to.contains(&self.settings.me))
                .map(|t| t.shard)
                .collect(),
        };
        tracing::info!(me = %self.settings.me, view = next.view.id.0, members = ?next.view.members, "installed");
        self.app.borrow_mut().view_installed(&change);
        self.report(GroupEvent::ViewInstalled(change));
        self.wake_all();
        self.step();
    }

    /// A join request arrived at this member's listener.
    fn control(&self, body: &[u8]) {
        let decoded = match Control::decode(body) {
            // A member restarting from its logs after the group restarted joins as any other:
            // the state it receives replaces what its logs hold. A group not past the view it
            // saved did not restart from the others' logs (it may have started afresh): joining
            // it would drop this member's logs.
            Ok(Control::Restart { version, node, address, offer }) => {
                let view = self.node.borrow().view().id;
                // (A member that saved no view holds no log to lose.)
                if offer.saved_a_view() && view <= offer.saved.id {
                    let refusal = JoinRefusal::NotRestarted { view: view.0, saved: offer.saved.id.0 };
                    tracing::warn!(%node, %refusal, "a restart offer refused");
                    self.answer(address, Answer::Refused(refusal));
                    return;
                }
                Ok(Control::Join { version, node, address })
            }
            other => other,
        };
        match decoded {
            Ok(Control::Join { version, node, address }) => {
                if version != JOIN_VERSION {
                    self.answer(address, Answer::Version(JOIN_VERSION));
                    return;
                }
                tracing::info!(me = %self.settings.me, joiner = %node, %address, "join request");
                self.joins.borrow_mut().insert(node, address.clone());
                self.node.borrow_mut().handle(self.now(), Input::Join { node, address });
            }
            Ok(Control::ClientView { reply_to }) => {
                let (view, addresses) = {
                    let node = self.node.borrow();
                    (node.view().clone(), node.addresses())
                };
                self.send_control(&reply_to, Control::ClientViewReply { view, addresses });
            }
            Ok(Control::ClientCall { reply_to, call, body }) => {
                let answer = match self.app.try_borrow_mut() {
                    Ok(mut app) => app.external(&body),
                    Err(_) => None,
                };
                match answer {
                    None => {
                        let mut body = vec![0];
                        body.extend_from_slice(b"this member serves no external calls");
                        self.send_control(&reply_to, Control::ClientReply { call, body });
                    }
                    Some(State::Ready(body)) => self.send_control(&reply_to, Control::ClientReply { call, body }),
                    Some(State::Later(f)) => {
                        let me = PeerId(self.settings.me.0);
                        let control = tag(&self.settings.name, u64::MAX);
                        let within = self.settings.connect_timeout;
                        drop(spawn(async move {
                            let body = f.await;
                            let Ok(addr) = reply_to.parse::<SocketAddr>() else { return };
                            let m = Control::ClientReply { call, body }.encode();
                            let _ = send_message(me, addr, control, &m, within).await;
                        }));
                    }
                }
            }
            Ok(Control::ClientSubscribe { reply_to, topic }) => match reply_to.parse::<SocketAddr>() {
                Ok(addr) => {
                    let mut subs = self.subscribers.borrow_mut();
                    if subs.len() >= PARK_MAX && !subs.contains_key(&topic) {
                        tracing::warn!(%topic, "too many notification topics: subscription refused");
                        return;
                    }
                    let list = subs.entry(topic).or_default();
                    if !list.contains(&addr) && list.len() < PARK_MAX {
                        list.push(addr);
                    }
                }
                Err(_) => tracing::warn!(%reply_to, "a subscriber whose address does not parse"),
            },
            Ok(other) => tracing::debug!(?other, "ignored a stale answer"),
            Err(e) => tracing::warn!(error = %e, "ignored a malformed control message"),
        }
    }

    /// An event of the transport of `view`.
    fn transport_event(&self, view: ViewId, ev: TransportEvent) {
        let current = self.transport_view.get() == view;
        let now = self.now();
        match ev {
            TransportEvent::PeerFailed { peer, reason } => {
                if current {
                    self.gone.borrow_mut().push(NodeId(peer.0));
                    self.wake_all();
                    self.node.borrow_mut().handle(now, Input::PeerFailed(NodeId(peer.0)));
                    self.report(GroupEvent::PeerFailed { peer: NodeId(peer.0), reason });
                }
            }
            TransportEvent::Frame { from, frame } if frame.first() == Some(&APP_FRAME_KIND) => {
                if !current {
                    return; // sent in an earlier view
                }
                match frame.get(APP_FRAME_HEADER_LEN..) {
                    Some(body) => self.app.borrow_mut().receive(NodeId(from.0), body),
                    None => {
                        let peer = NodeId(from.0);
                        self.node.borrow_mut().handle(now, Input::ReportFailure(peer));
                        self.report(GroupEvent::Violation {
                            peer,
                            what: "an application frame without its header".into(),
                        });
                    }
                }
            }
            TransportEvent::Frame { from, frame } => match ViewFrame::decode(&frame) {
                Ok(ViewFrame::Alive { .. }) => self.node.borrow_mut().handle(now, Input::PeerAlive(NodeId(from.0))),
                Ok(ViewFrame::State { view: v, shard, offset, total, body }) => {
                    let mut node = self.node.borrow_mut();
                    if !current || v != node.view().id || !node.awaiting_state(shard) {
                        return; // a second source's copy, or too late
                    }
                    let peer = NodeId(from.0);
                    if total > self.settings.state_len_max as u64 {
                        drop(node);
                        let reason = format!("a state of {total} bytes, above state_len_max");
                        self.report(GroupEvent::StateRejected { shard, from: peer, reason });
                        return;
                    }
                    // Pieces from one member arrive in order; a state is whole at its last piece.
                    let body = {
                        let mut pieces = self.state_pieces.borrow_mut();
                        pieces.retain(|(_, _, view), _| *view == v);
                        let buf = pieces.entry((peer, shard, v)).or_default();
                        if offset != buf.len() as u64 {
                            let expected = buf.len();
                            pieces.remove(&(peer, shard, v));
                            drop(pieces);
                            drop(node);
                            let reason = format!("a piece at {offset} where {expected} was expected");
                            self.report(GroupEvent::StateRejected { shard, from: peer, reason });
                            return;
                        }
                        buf.extend_from_slice(&body);
                        if (buf.len() as u64) < total {
                            return;
                        }
                        pieces.remove(&(peer, shard, v)).unwrap_or_default()
                    };
                    self.state_pieces.borrow_mut().retain(|(_, s, _), _| *s != shard);
                    match self.app.borrow_mut().restore(shard, &body) {
                        Ok(()) => {
                            tracing::info!(me = %self.settings.me, %shard, len = body.len(), from = %from, "state received");
                            node.handle(now, Input::StateReceived(shard));
                            drop(node);
                            self.wake_all();
                        }
                        Err(reason) => {
                            self.report(GroupEvent::StateRejected { shard, from: NodeId(from.0), reason });
                        }
                    }
                }
                Err(e) => {
                    let peer = NodeId(from.0);
                    tracing::warn!(%peer, error = %e, "malformed frame: suspecting the sender");
                    if current {
                        self.node.borrow_mut().handle(now, Input::ReportFailure(peer));
                    }
                    self.report(GroupEvent::Violation { peer, what: e.to_string() });
                }
            },
        }
    }
}

/// Feeds a view transport's events to the group while it lives.
async fn events(inner: Weak<Inner>, transport: Rc<AnyTransport>, view: ViewId) {
    loop {
        let ev = transport.next_event().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.get() {
            return;
        }
        inner.transport_event(view, ev);
        inner.step();
    }
}

/// Runs from the moment this member is done with a view (`Output::NextView`) until every member
/// of the next view has shown a heartbeat in it (or a few suspicion timeouts passed): sends
/// "alive" frames on the old view's transport, so that members still finishing the old view do
/// not suspect this one (it pushes nothing there any more), reports traffic from them as signs
/// of life, and finally closes that transport and stops its events task.
async fn linger(inner: Weak<Inner>, old: Rc<AnyTransport>, old_view: ViewId, old_members: Vec<NodeId>) {
    let Some(strong) = inner.upgrade() else { return };
    let period = Duration::from_nanos(strong.settings.membership.heartbeat_ns);
    let until = Instant::now()
        + strong.settings.connect_timeout
        + Duration::from_nanos(strong.settings.membership.suspect_after_ns) * 4;
    drop(strong);
    let mut last = Instant::now();
    loop {
        let Some(inner) = inner.upgrade() else { break };
        let now = Instant::now();
        let (alive, done) = {
            let node = inner.node.borrow();
            let me = inner.settings.me;
            let others: Vec<NodeId> = old.peers().iter().map(|p| NodeId(p.0)).filter(|&m| m != me).collect();
            let here: Vec<NodeId> = others.iter().copied().filter(|&m| node.view().rank_of(m).is_some()).collect();
            let installed = !inner.installing.get() && node.view().id != old_view;
            let done = inner.closed.get()
                || node.stopped().is_some()
                || now >= until
                || (installed && here.iter().all(|&m| node.heard_in_view(m)));
            let alive: Vec<NodeId> =
                here.into_iter().filter(|&m| old.last_heard(PeerId(m.0)).is_some_and(|h| h > last)).collect();
            (alive, done)
        };
        if done {
            break;
        }
        {
            let t = inner.now();
            let mut node = inner.node.borrow_mut();
            for &m in &alive {
                node.handle(t, Input::PeerAlive(m));
            }
        }
        let beat = Payload::from(ViewFrame::Alive { view: inner.transport_view.get() }.encode());
        drop(inner);
        for p in old.peers().to_vec() {
            let _ = old.send_frame(p, beat.clone()).await;
        }
        last = now;
        time::sleep(period).await;
    }
    if let Some(inner) = inner.upgrade() {
        let mut tasks = inner.view_tasks.borrow_mut();
        if let Some(i) = tasks.iter().position(|(v, _)| *v == old_view) {
            tasks.remove(i).1.abort();
        }
    }
    old.close(Duration::from_millis(50)).await;
    if let Some(inner) = inner.upgrade() {
        inner.settings.remove_dead_files(old_view, &old_members);
    }
}

/// Sends through a [`Group`] from other tasks ([`Group::sender`]); every call fails with
/// [`SendToError::Closed`] once the group is closed or dropped.
#[derive(Clone, Debug)]
pub struct GroupSender {
    inner: Weak<Inner>,
}

/// Errors of [`GroupSender::wait_persisted`].
#[derive(Debug, thiserror::Error)]
pub enum PersistWaitError {
    /// The version was not durable everywhere in time.
    #[error("version {version} was not durable at every member within {within:?}")]
    Timeout {
        /// How long it waited.
        within: Duration,
        /// The version.
        version: crate::protocol::Version,
    },
    /// This member is not in the shard.
    #[error("this member is not in {0}")]
    NotInShard(ShardRef),
    /// This member stopped.
    #[error("stopped: {0}")]
    Stopped(StopReason),
    /// The group is closed.
    #[error("the group is closed")]
    Closed,
}

/// Errors of [`GroupSender::send_to`].
#[derive(Debug, thiserror::Error)]
pub enum SendToError {
    /// The node is not a member of the current view (or is this member).
    #[error("{0} is not another member of the current view")]
    NotAMember(NodeId),
    /// The connection to it failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The group is closed.
    #[error("the group is closed")]
    Closed,
}

impl GroupSender {
    fn inner(&self) -> Result<Rc<Inner>, SendToError> {
        self.inner.upgrade().filter(|i| !i.closed.get()).ok_or(SendToError::Closed)
    }

    /// Stops this member for good with `reason` ([`GroupEvent::Fatal`]): used when it can no
    /// longer keep a promise the group relies on, such as a log that failed to sync. The others
    /// see it fail and go on without it.
    pub fn fatal(&self, reason: &str) {
        if let Some(inner) = self.inner.upgrade() {
            inner.fatal(reason);
        }
    }

    /// Reports that every version of `shard` up to `version` is durable on this member (the
    /// local persistence frontier, PROTOCOLS §4): it is published to the shard's members, whose
    /// minimum is the global frontier ([`GroupSender::persisted`]). Reports that go backwards
    /// are ignored; a member republishes its frontier in every view.
    pub fn report_persisted(&self, shard: ShardRef, version: crate::protocol::Version) {
        let Ok(inner) = self.inner() else { return };
        inner.node.borrow_mut().report_persisted(shard, version);
        inner.local_reported.set(true);
        inner.step();
    }

    /// The persistence frontiers of `shard`: the highest version durable on this member, and
    /// the highest durable at every member of the shard in the current view (`None` until
    /// every member has reported one in this view).
    pub fn persisted(&self, shard: ShardRef) -> (Option<crate::protocol::Version>, Option<crate::protocol::Version>) {
        // Still answered once closed: what was reported durable stays so.
        let Some(inner) = self.inner.upgrade() else { return (None, None) };
        let node = inner.node.borrow();
        (node.persisted_here(shard), node.persisted_everywhere(shard))
    }

    /// Waits until `version` of `shard` is durable at every member of the shard (the global
    /// persistence frontier reaches it).
    ///
    /// # Errors
    ///
    /// [`PersistWaitError`]: not within `within`, this member stopped or left the shard, the
    /// group closed.
    pub async fn wait_persisted(
        &self,
        shard: ShardRef,
        version: crate::protocol::Version,
        within: Duration,
    ) -> Result<(), PersistWaitError> {
        let inner = self.inner.upgrade().filter(|i| !i.closed.get()).ok_or(PersistWaitError::Closed)?;
        let wait = poll_fn(|cx| {
            if inner.closed.get() {
                return Poll::Ready(Err(PersistWaitError::Closed));
            }
            let node = inner.node.borrow();
            if let Some(r) = node.stopped() {
                return Poll::Ready(Err(PersistWaitError::Stopped(r.clone())));
            }
            if !inner.installing.get()
                && node.view().shards.iter().all(|s| s.id != shard || !s.members.contains(&inner.settings.me))
            {
                return Poll::Ready(Err(PersistWaitError::NotInShard(shard)));
            }
            if node.persisted_everywhere(shard).is_some_and(|p| p >= version) {
                return Poll::Ready(Ok(()));
            }
            inner.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        match time::timeout(within, wait).await {
            Ok(r) => r,
            Err(_) => Err(PersistWaitError::Timeout { within, version }),
        }
    }

    /// As [`Group::settle`]: waits until every member of `shard` has delivered what this member
    /// had delivered when called.
    ///
    /// # Errors
    ///
    /// As [`Group::settle`].
    pub async fn settle(&self, shard: ShardRef, within: Duration) -> Result<(), SettleError> {
        let inner = self.inner.upgrade().filter(|i| !i.closed.get()).ok_or(SettleError::Closed)?;
        inner.settle(shard, within).await
    }

    /// Sends `body` to member `to` of the current view, in order with this member's other frames
    /// to it; `to` receives it in [`Application::receive`] if it is still in the same view.
    ///
    /// # Errors
    ///
    /// [`SendToError`]: `to` is not another member of the view, its connection failed, or the
    /// group is closed.
    pub async fn send_to(&self, to: NodeId, body: &[u8]) -> Result<(), SendToError> {
        self.send_app_frame(to, app_frame(body)).await
    }

    /// As [`GroupSender::send_to`], with the frame already built: it starts with the
    /// application-frame header ([`app_frame`]), so a caller that fills a frame in place sends it
    /// without another copy.
    ///
    /// # Errors
    ///
    /// As [`GroupSender::send_to`].
    ///
    /// # Panics
    ///
    /// If `frame` does not start with the application-frame header (a programmer error).
    pub async fn send_app_frame(&self, to: NodeId, frame: Vec<u8>) -> Result<(), SendToError> {
        assert!(
            frame.len() >= APP_FRAME_HEADER_LEN && frame[0] == APP_FRAME_KIND,
            "an application frame starts with its header"
        );
        let inner = self.inner()?;
        if to == inner.settings.me || inner.node.borrow().view().rank_of(to).is_none() {
            return Err(SendToError::NotAMember(to));
        }
        let transport = inner.transport.borrow().clone();
        drop(inner);
        transport.send_frame(PeerId(to.0), Payload::from(frame)).await?;
        Ok(())
    }

    /// Whether a view change is under way here: what is delivered now is the old view's
    /// ragged edge, and a peer may install the next view before a frame sent now reaches it
    /// (frames of an old view are dropped), so replies sent now may need sending again.
    pub fn is_wedged(&self) -> bool {
        self.inner().is_ok_and(|i| i.wedged.get() || i.installing.get())
    }

    /// Pushes `body` to every external client subscribed to `topic` at this member (in the
    /// background; a client that cannot be reached is dropped from the list). Returns how many
    /// it is sent to.
    pub fn notify(&self, topic: &str, body: &[u8]) -> usize {
        let Ok(inner) = self.inner() else { return 0 };
        let subs: Vec<SocketAddr> = inner.subscribers.borrow().get(topic).cloned().unwrap_or_default();
        let message = Control::ClientNotify { topic: topic.to_string(), body: body.to_vec() }.encode();
        let me = PeerId(inner.settings.me.0);
        let control = tag(&inner.settings.name, u64::MAX);
        let within = inner.settings.connect_timeout;
        for addr in &subs {
            let (m, weak, topic, addr) = (message.clone(), self.inner.clone(), topic.to_string(), *addr);
            drop(spawn(async move {
                if send_message(me, addr, control, &m, within).await.is_err()
                    && let Some(inner) = weak.upgrade()
                    && let Some(list) = inner.subscribers.borrow_mut().get_mut(&topic)
                {
                    list.retain(|a| *a != addr);
                }
            }));
        }
        subs.len()
    }

    /// This member's id, if the group is open.
    pub fn me(&self) -> Option<NodeId> {
        self.inner().ok().map(|i| i.settings.me)
    }

    /// The current view, if the group is open.
    pub fn view(&self) -> Option<View> {
        self.inner().ok().map(|i| i.node.borrow().view().clone())
    }

    /// As [`Group::send`].
    ///
    /// # Errors
    ///
    /// As [`Group::send`].
    pub async fn send(&self, shard: ShardRef, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), GroupSendError> {
        let inner = self.inner.upgrade().ok_or(GroupSendError::Closed)?;
        send_on(&inner, shard, len, fill).await
    }
}

/// Sends a message into `shard` (see [`Group::send`]).
async fn send_on(
    inner: &Inner,
    shard: ShardRef,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), GroupSendError> {
    let mut fill = Some(fill);
    poll_fn(|cx| {
        if inner.closed.get() {
            return Poll::Ready(Err(GroupSendError::Closed));
        }
        let Ok(mut node) = inner.node.try_borrow_mut() else {
            return Poll::Ready(Err(GroupSendError::Reentrant));
        };
        if let Some(r) = node.stopped() {
            return Poll::Ready(Err(GroupSendError::Stopped(r.clone())));
        }
        let now = inner.now();
        let mut f = fill.take();
        let r = node.send(now, shard, len, |buf| (f.take().expect("fill once"))(buf));
        match r {
            Ok(_) => Poll::Ready(Ok(())),
            Err(SendError::WindowFull(_) | SendError::Wedged(_)) => {
                fill = f;
                inner.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
            // Between views (an inadequate view has no shards): wait for one that has it.
            Err(SendError::NotAMember(_)) if node.view().shards.is_empty() => {
                fill = f;
                inner.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
            Err(SendError::Stopped(_)) => Poll::Ready(Err(GroupSendError::Stopped(
                node.stopped().cloned().unwrap_or(StopReason::Removed { view: node.view().id.0, why: "stopped" }),
            ))),
            Err(e) => Poll::Ready(Err(GroupSendError::Refused(e))),
        }
    })
    .await
}

struct RulesHook {
    inner: Rc<Inner>,
}

impl PollHook for RulesHook {
    fn poll(&mut self) -> usize {
        self.inner.step()
    }

    fn prepare_park(&mut self, _park: &mut Park<'_>) -> bool {
        // Pushes and frames wake the executor; the timer task covers heartbeats.
        true
    }
}

/// A member of a group with membership: views change as members fail, join and leave
/// (PROTOCOLS §3). Start one with [`GroupBuilder`].
///
/// # Examples
///
/// See the `group` example and `tests/tests/group_processes.rs`.
pub struct Group {
    inner: Rc<Inner>,
    hook: Cell<Option<HookId>>,
    /// `close` ran (or the group was dropped).
    shut: Cell<bool>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("me", &self.inner.settings.me).finish_non_exhaustive()
    }
}

impl Group {
    fn run(
        settings: Settings,
        acceptor: TcpAcceptor,
        transport: Rc<AnyTransport>,
        node: Node<RegionMemory>,
        app: Box<dyn Application>,
        epoch: Instant,
        joined: Option<ViewChange>,
    ) -> Self {
        let view = node.view().id;
        for &m in node.view().members.iter().filter(|&&m| m != settings.me) {
            if let Some(row) = node.row_range(m) {
                transport.confine_pushes(TABLE_REGION, PeerId(m.0), row);
            }
        }
        let inner = Rc::new(Inner {
            settings,
            acceptor,
            node: RefCell::new(node),
            app: RefCell::new(app),
            transport: RefCell::new(transport.clone()),
            transport_view: Cell::new(view),
            installing: Cell::new(false),
            wedged: Cell::new(false),
            gone: RefCell::new(Vec::new()),
            subscribers: RefCell::new(BTreeMap::new()),
            joins: RefCell::new(BTreeMap::new()),
            events: EventBox::default(),
            waiters: RefCell::new(Vec::new()),
            window_seen: Cell::new(0),
            epoch,
            closed: Cell::new(false),
            tasks: RefCell::new(Vec::new()),
            view_tasks: RefCell::new(Vec::new()),
            push_peers: RefCell::new(Vec::new()),
            push_errors: RefCell::new(Vec::new()),
            lingering: RefCell::new(Vec::new()),
            state_pieces: RefCell::new(BTreeMap::new()),
            persisted_seen: Cell::new(0),
            local_reported: Cell::new(false),
            frontiers: RefCell::new(BTreeMap::new()),
        });
        if let Some(change) = joined {
            inner.app.borrow_mut().view_installed(&change);
            inner.report(GroupEvent::ViewInstalled(change));
        }
        let hook = add_poll_hook(RulesHook { inner: inner.clone() });
        let weak = Rc::downgrade(&inner);
        inner.view_tasks.borrow_mut().push((view, spawn(events(weak.clone(), transport, view))));
        let mut tasks = Vec::new();
        // Control messages (join requests) to this member's listener.
        tasks.push(spawn({
            let weak = weak.clone();
            async move {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let (_, body) = inner.acceptor.next_message().await;
                    if inner.closed.get() {
                        return;
                    }
                    inner.control(&body);
                    inner.step();
                }
            }
        }));
        // Timers: heartbeats and suspicion timeouts.
        tasks.push(spawn(async move {
            loop {
                let wait = {
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.closed.get() {
                        return;
                    }
                    let heartbeat = Duration::from_nanos(inner.settings.membership.heartbeat_ns);
                    let now = inner.now();
                    let next = inner.node.borrow().poll_timeout();
                    next.map_or(heartbeat, |t| Duration::from_nanos(t.0.saturating_sub(now.0)).min(heartbeat))
                };
                time::sleep(wait.max(Duration::from_micros(100))).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.step();
            }
        }));
        inner.tasks.borrow_mut().extend(tasks);
        inner.step();
        Self { inner, hook: Cell::new(Some(hook)), shut: Cell::new(false) }
    }

    /// This member's id.
    pub fn me(&self) -> NodeId {
        self.inner.settings.me
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.inner.node.borrow().view().clone()
    }

    /// The members of the current view, in rank order.
    pub fn members(&self) -> Vec<NodeId> {
        self.inner.node.borrow().view().members.clone()
    }

    /// This member's rank in the current view.
    pub fn my_rank(&self) -> usize {
        self.inner.node.borrow().my_rank()
    }

    /// Why this member stopped, if it did.
    pub fn stopped(&self) -> Option<StopReason> {
        self.inner.node.borrow().stopped().cloned()
    }

    /// Messages delivered in `shard` in the current view.
    pub fn delivered_count(&self, shard: ShardRef) -> Option<u64> {
        self.inner.node.borrow().delivered_count(shard)
    }

    /// The address this member listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.acceptor.local_addr()
    }

    /// A handle that sends through this group from other tasks; it does not keep the group
    /// open.
    pub fn sender(&self) -> GroupSender {
        GroupSender { inner: Rc::downgrade(&self.inner) }
    }

    /// Sends a message of `len` bytes into `shard`, written in place by `fill`. Waits while the
    /// window is full and while a view change is under way (the message then goes out in the
    /// next view).
    ///
    /// # Errors
    ///
    /// [`GroupSendError`]: refused by the protocol (not a sender of the shard, too large),
    /// called from the delivery callback, this member stopped, or the group closed.
    pub async fn send(&self, shard: ShardRef, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), GroupSendError> {
        send_on(&self.inner, shard, len, fill).await
    }

    /// Waits until the current view satisfies `pred` (checked now and at every view change).
    ///
    /// # Errors
    ///
    /// [`WaitError`]: not within `within`, or this member stopped.
    pub async fn wait_view(&self, within: Duration, mut pred: impl FnMut(&View) -> bool) -> Result<View, WaitError> {
        let wait = poll_fn(|cx| {
            let node = self.inner.node.borrow();
            if let Some(r) = node.stopped() {
                return Poll::Ready(Err(WaitError::Stopped(r.clone())));
            }
            if self.inner.closed.get() {
                return Poll::Ready(Err(WaitError::Closed));
            }
            if !self.inner.installing.get() && pred(node.view()) {
                return Poll::Ready(Ok(node.view().clone()));
            }
            self.inner.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        match time::timeout(within, wait).await {
            Ok(r) => r,
            Err(_) => Err(WaitError::Timeout { within, current: self.view() }),
        }
    }

    /// Waits until every member of `shard` in the current view has delivered what this member
    /// had delivered when called (see `StaticGroup::settle`).
    ///
    /// # Errors
    ///
    /// [`SettleError`]: not a member of the shard, not settled within `within`, or closed.
    pub async fn settle(&self, shard: ShardRef, within: Duration) -> Result<(), SettleError> {
        self.inner.settle(shard, within).await
    }

    /// Tells the group that `node` has failed (PROTOCOLS §3.2): it is suspected at once.
    pub fn report_failure(&self, node: NodeId) {
        self.inner.node.borrow_mut().handle(self.inner.now(), Input::ReportFailure(node));
        self.inner.step();
    }

    /// Leaves the group gracefully: the next view does not have this member; returns once it
    /// stopped (at most `within`) and the others moved on (they close their connections to it
    /// once they installed the next view; at most `within` again), then closes.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] when the group did not remove this member in time (it is closed
    /// anyway, and the others will see it fail).
    pub async fn leave(&self, within: Duration) -> Result<(), WaitError> {
        self.inner.node.borrow_mut().handle(self.inner.now(), Input::Leave);
        self.inner.step();
        let r = match self.wait_view(within, |_| false).await {
            Err(WaitError::Stopped(StopReason::Left(_))) => Ok(()),
            Err(WaitError::Stopped(other)) => Err(WaitError::Stopped(other)),
            Err(e) => Err(e),
            Ok(_) => unreachable!("the predicate never holds"),
        };
        // Closing at once would look like a failure to members that have not yet read this
        // member's last pushes (with two members, a partition).
        let moved_on = poll_fn(|cx| {
            let gone = self.inner.gone.borrow();
            if self.inner.transport.borrow().peers().iter().all(|p| gone.contains(&NodeId(p.0))) {
                return Poll::Ready(());
            }
            self.inner.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        let _ = time::timeout(within, moved_on).await;
        self.close().await;
        r
    }

    /// The next group event, waiting for one.
    pub async fn next_event(&self) -> GroupEvent {
        self.inner.events.next().await
    }

    /// The next group event if one is ready.
    pub fn try_next_event(&self) -> Option<GroupEvent> {
        self.inner.events.try_next()
    }

    /// Stops running the rules, stops listening and closes every connection (peers see this
    /// member fail).
    pub async fn close(&self) {
        if self.shut.replace(true) {
            return;
        }
        let lingering = self.views_held();
        self.stop_tasks();
        let t = self.inner.transport.borrow().clone();
        t.close(Duration::from_millis(200)).await;
        for (view, members, old) in lingering {
            if let Some(old) = old {
                old.close(Duration::ZERO).await;
            }
            self.inner.settings.remove_dead_files(view, &members);
        }
    }

    /// The current view and the earlier ones still lingering: id, members, transport.
    fn views_held(&self) -> Vec<(ViewId, Vec<NodeId>, Option<Rc<AnyTransport>>)> {
        let mut views: Vec<_> =
            self.inner.lingering.borrow_mut().drain(..).map(|(v, m, t)| (v, m, t.upgrade())).collect();
        let current = self.inner.transport.borrow().clone();
        let members = self.inner.node.borrow().view().members.clone();
        views.push((self.inner.transport_view.get(), members, Some(current)));
        views
    }

    fn stop_tasks(&self) {
        if !self.inner.closed.get()
            && let Ok(mut app) = self.inner.app.try_borrow_mut()
        {
            app.stopped();
        }
        self.inner.closed.set(true);
        if let Some(h) = self.hook.take() {
            remove_poll_hook(h);
        }
        for t in self.inner.tasks.borrow_mut().drain(..) {
            t.abort();
        }
        for (_, t) in self.inner.view_tasks.borrow_mut().drain(..) {
            t.abort();
        }
        self.inner.acceptor.stop();
        self.inner.wake_all();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.shut.replace(true) {
            self.stop_tasks();
            // Shared-memory transports close at once (their files go with them); TCP ones close
            // as their tasks are dropped.
            for (view, members, t) in self.views_held() {
                if let Some(t) = t
                    && let AnyTransport::Shm(t) = &*t
                {
                    t.close();
                }
                self.inner.settings.remove_dead_files(view, &members);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_by_group_and_view() {
        assert_ne!(tag("a", 0), tag("b", 0));
        assert_ne!(tag("a", 0), tag("a", 1));
        assert_ne!(tag("a", 0), tag("a", u64::MAX));
        assert_eq!(tag("a", 3), tag("a", 3));
    }
}
