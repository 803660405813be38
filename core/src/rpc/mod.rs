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
//! * [`wire`]: the 32-byte header of calls, queries and replies.
//! * [`Replicated`], [`Method`], [`HandlerError`]: what a replicated type provides.
//! * [`Service`]: the replicas of one member, as a group's application.
//! * [`Handle`], [`Replies`], [`CallError`]: calling a shard.
//! * [`ExternalClient`], [`ExternalHandle`]: queries from a process outside the group, view
//!   changes followed, notifications received.

mod external;
mod recovery;
pub mod wire;

pub use external::{ClientError, ExternalClient, ExternalHandle};
pub use recovery::RecoveryError;

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::marker::PhantomData;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use crate::driver::{Application, GroupSendError, GroupSender, JoinError, SendToError, State, ViewChange, app_frame};
use crate::persist::Hlc;
use crate::protocol::{Delivered, NodeId, ShardRef, SubgroupId, Version, View};
use wire::{HEADER_LEN, Header, Kind};

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
}

/// A replicated type: what `#[replicated]` generates for it.
pub trait Replicated: Sized + 'static {
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

    /// This replica's state, for a member that joins its shard.
    ///
    /// # Errors
    ///
    /// The state could not be archived.
    fn snapshot(&self) -> Result<Vec<u8>, String>;

    /// A replica from a snapshot.
    ///
    /// # Errors
    ///
    /// The bytes are not a snapshot of this type.
    fn restore(state: &[u8]) -> Result<Self, String>;
}

/// The caller of a query from an external client (a process outside the group).
pub const EXTERNAL: NodeId = NodeId(u32::MAX);

/// The call a handler is running for ([`context`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallContext {
    /// The member that called.
    pub caller: NodeId,
    /// The shard.
    pub shard: ShardRef,
    /// Ordered calls: the version the call was delivered at, its place in the shard's order
    /// (the same at every replica). `None` for queries.
    pub version: Option<Version>,
    /// Stable queries ([`Handle::stable_reads`]): every update of the shard up to this version
    /// is applied at every replica, and none after it is known to be. A versioned object that
    /// answers as of this version answers linearizably: the replica may already hold later
    /// updates, which other replicas may not have yet. `None` for other calls.
    pub stable: Option<Version>,
    /// Ordered calls: the version's time (PROTOCOLS §4): the caller's hybrid logical clock,
    /// made to go forward in the shard's order, the same at every replica. `None` for queries.
    pub time: Option<Hlc>,
    /// Queries to a service that persists ([`Service::persist_to`]): the time of the shard's
    /// global persistence frontier. Every version at or before it is durable at every member,
    /// and no later version can have an earlier time, so a read as of a time at or before it is
    /// a consistent snapshot of the shard ([`crate::persist::Persistent::at_time`]). `None`
    /// otherwise, or before anything is durable everywhere.
    pub stable_time: Option<Hlc>,
}

impl CallContext {
    /// The context of a call whose header went through the service: for a delivered ordered
    /// call its version field holds the version's time; for a query, the stable time plus one
    /// (0: none).
    fn of(header: &Header, version: Option<Version>) -> Self {
        let (caller, shard) = (header.caller, header.shard);
        let field = header.version.as_u64();
        if header.kind == Kind::Ordered {
            return Self { caller, shard, version, stable: None, time: Some(Hlc(field)), stable_time: None };
        }
        let stable = if header.kind == Kind::StableQuery { version } else { None };
        let stable_time = field.checked_sub(1).map(Hlc);
        Self { caller, shard, version: None, stable, time: None, stable_time }
    }
}

thread_local! {
    static CONTEXT: Cell<Option<CallContext>> = const { Cell::new(None) };
}

/// The call the handler running on this thread serves; `None` outside a handler. A
/// versioned store reads the version of the update it applies from here.
pub fn context() -> Option<CallContext> {
    CONTEXT.with(Cell::get)
}

fn with_context<R>(c: CallContext, f: impl FnOnce() -> R) -> R {
    /// Restores the previous context even if the handler panics.
    struct Restore(Option<CallContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CONTEXT.with(|x| x.set(self.0));
        }
    }
    let _restore = Restore(CONTEXT.with(|x| x.replace(Some(c))));
    f()
}

/// A replica behind a type-erased pointer.
trait Hosted: Any {
    fn apply<'a>(&'a mut self, method: u32, args: &[u8]) -> Applied<'a>;
    fn query<'a>(&'a self, method: u32, args: &[u8]) -> Applied<'a>;
    fn is_async(&self, method: u32) -> bool;
    fn snapshot(&self) -> Result<Vec<u8>, String>;
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
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        Replicated::snapshot(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Why a call failed, as a whole or for one member.
#[derive(Debug, thiserror::Error)]
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
    /// The member could not run the call.
    #[error("{node} could not run the call: {reason}")]
    Remote {
        /// The member.
        node: NodeId,
        /// What its handler said.
        reason: String,
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
    /// No reply within the service's call timeout ([`Service::set_call_timeout`]).
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

struct Pending {
    shard: ShardRef,
    /// Ordered calls: the shard's members when the call was delivered here.
    expected: Option<Rc<[NodeId]>>,
    /// A query's target, and the query (sent again if a view change may have lost it).
    query: Option<(NodeId, Vec<u8>)>,
    /// Ordered calls: the version of this member's own delivery of the call.
    version: Option<Version>,
    replies: BTreeMap<NodeId, Result<AlignedVec, CallError>>,
    /// The call failed as a whole.
    failed: Option<CallError>,
    waker: Option<Waker>,
    /// When the call's timeout expires.
    deadline: Instant,
}

impl Pending {
    fn complete(&self) -> bool {
        if self.failed.is_some() {
            return true;
        }
        match (&self.expected, &self.query) {
            (_, Some((t, _))) => self.replies.contains_key(t),
            (Some(e), None) => e.iter().all(|n| self.replies.contains_key(n)),
            (None, None) => false,
        }
    }

    fn wake_if_complete(&mut self) {
        if self.complete()
            && let Some(w) = self.waker.take()
        {
            w.wake();
        }
    }
}

/// One shard's replica, and the calls waiting for it while an async handler runs.
#[derive(Default)]
struct Slot {
    /// `None` while a job has it (an async handler under way), or before its state arrives.
    replica: Option<Box<dyn Hosted>>,
    queue: VecDeque<Job>,
    /// A worker task is draining `queue`.
    working: bool,
    /// This member left the shard; the slot stays until its worker has drained the queue (a
    /// snapshot for the shard's new members may be in it), answering no queries.
    retired: bool,
}

impl Slot {
    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.working && self.replica.is_some()
    }
}

/// Work for a shard's worker, in order.
enum Job {
    /// An ordered call (delivered at `version`) or a query, with a copy of its arguments.
    Call { header: Header, version: Option<Version>, from: NodeId, args: AlignedVec, external: Option<StateCell> },
    /// The replica's state once everything before it is applied.
    Snapshot(StateCell),
}

/// Where the worker leaves a snapshot for the task that sends it, and that task's waker.
type StateCell = Rc<RefCell<(Option<Vec<u8>>, Option<Waker>)>>;

type Make = Box<dyn Fn() -> Box<dyn Hosted>>;
type Restore = Box<dyn Fn(&[u8]) -> Result<Box<dyn Hosted>, String>>;

struct Registered {
    type_id: TypeId,
    name: &'static str,
    make: Make,
    restore: Restore,
}

/// The last replies sent to each caller, oldest first (searched only when a caller asks again,
/// which is rare: after a view change).
type SentReplies = BTreeMap<NodeId, VecDeque<(u64, Vec<u8>)>>;

/// Replies kept per caller for callers that ask again ([`wire::Kind::Repeat`]).
const REPLY_CACHE_LEN: usize = 1 << 14;
/// The largest batch frame; a single larger message goes alone.
const BATCH_LEN_MAX: usize = 1 << 20;
/// Queries waiting for a shard's worker; beyond this, more are refused.
const QUEUE_LEN_MAX: usize = 1 << 16;
/// External calls under way at once; beyond this, more are refused.
const EXTERNAL_MAX: usize = 1024;

/// Bytes before the replica's archive in a state sent to a joiner: the shard's last time, and
/// padding.
const STATE_PREFIX: usize = 16;

/// Messages waiting to be sent; beyond this, queries from peers are refused.
const OUTBOX_LEN_MAX: usize = 1 << 18;

struct ServiceInner {
    types: RefCell<BTreeMap<SubgroupId, Registered>>,
    replicas: RefCell<BTreeMap<ShardRef, Slot>>,
    /// Shards this member joined whose state has not arrived: no replica to answer from yet.
    awaiting: RefCell<Vec<ShardRef>>,
    pending: RefCell<BTreeMap<u64, Pending>>,
    next_call: Cell<u64>,
    /// Frames being filled, per destination: the application-frame header, then a batch of
    /// messages (replies and queries are written straight into them).
    outbox: RefCell<Vec<(NodeId, Vec<u8>)>>,
    /// Messages in `outbox` (at most [`OUTBOX_LEN_MAX`] before queries are refused).
    outbox_len: Cell<usize>,
    outbox_waker: RefCell<Option<Waker>>,
    /// Replies sent to other callers, by (caller, call).
    sent: RefCell<SentReplies>,
    sender: RefCell<Option<GroupSender>>,
    view: RefCell<Option<View>>,
    /// Every shard's members in the current view (shared by the calls that expect them).
    shard_members: RefCell<BTreeMap<ShardRef, Rc<[NodeId]>>>,
    me: Cell<Option<NodeId>>,
    call_timeout: Cell<Duration>,
    stopped: Cell<bool>,
    /// External calls under way (at most [`EXTERNAL_MAX`]).
    external: Rc<Cell<usize>>,
    /// The version of the last update delivered in each shard.
    delivered: RefCell<BTreeMap<ShardRef, Version>>,
    /// Stable queries waiting for their shard to settle (at most [`QUEUE_LEN_MAX`]).
    stable_waiting: Cell<usize>,
    /// Called when a shard's persistence frontiers move ([`Service::on_persisted`]).
    persist_callbacks: RefCell<Vec<PersistCallback>>,
    /// Where shards' logs go ([`Service::persist_to`]); `None`: nothing is persisted.
    persist_dir: RefCell<Option<std::path::PathBuf>>,
    /// The log of each shard this member persists.
    logs: RefCell<BTreeMap<ShardRef, Rc<ShardLog>>>,
    /// This member's hybrid logical clock: the time it stamps on its ordered calls.
    clock: Cell<crate::persist::HlcClock>,
    /// Set once a log failed: nothing is reported persisted any more.
    persist_failed: RefCell<Option<String>>,
    /// The last view saved in the persistence directory.
    saved_view: Cell<Option<crate::protocol::ViewId>>,
    /// The current view, until it can be saved ([`ServiceInner::save_view_if_whole`]).
    unsaved_view: RefCell<Option<View>>,
    /// Views proposed or acknowledged after the last one saved (also on disk).
    proposals: RefCell<Vec<(crate::protocol::ViewId, Vec<NodeId>)>>,
    /// The time of the last version delivered in each shard.
    times: RefCell<BTreeMap<ShardRef, u64>>,
    /// Persisting services: the times of versions not yet known durable everywhere, and of the
    /// last one that is (for the stable time of queries).
    recent_times: RefCell<BTreeMap<ShardRef, VecDeque<(Version, u64)>>>,
}

/// A callback on persistence frontiers: the shard, the local frontier, the global one.
type PersistCallback = Box<dyn FnMut(ShardRef, Option<Version>, Option<Version>)>;

/// A shard's log: every ordered call delivered in the shard, in order, with its version and
/// timestamp (the operation log of the whole object: one write and one sync cover every field
/// it changed, and replaying it rebuilds every version). A record whose first byte is 0 holds a
/// state instead (the replica's starting point when it came by state transfer); a call's first
/// byte is its kind, 1.
struct ShardLog {
    log: Rc<crate::persist::DurableLog>,
    /// The view its replica started in (its file's name).
    view: crate::protocol::ViewId,
    /// A flush task is running.
    flushing: Cell<bool>,
    /// Its first record is a state not yet durable.
    state_pending: Cell<bool>,
}

impl Default for ServiceInner {
    fn default() -> Self {
        Self {
            types: RefCell::default(),
            replicas: RefCell::default(),
            awaiting: RefCell::default(),
            pending: RefCell::default(),
            next_call: Cell::new(0),
            outbox: RefCell::default(),
            outbox_len: Cell::new(0),
            outbox_waker: RefCell::default(),
            sent: RefCell::default(),
            sender: RefCell::default(),
            view: RefCell::default(),
            shard_members: RefCell::default(),
            me: Cell::new(None),
            call_timeout: Cell::new(Duration::from_secs(30)),
            stopped: Cell::new(false),
            external: Rc::new(Cell::new(0)),
            delivered: RefCell::default(),
            stable_waiting: Cell::new(0),
            persist_callbacks: RefCell::default(),
            persist_dir: RefCell::default(),
            logs: RefCell::default(),
            clock: Cell::new(crate::persist::HlcClock::new()),
            persist_failed: RefCell::default(),
            saved_view: Cell::new(None),
            unsaved_view: RefCell::default(),
            proposals: RefCell::default(),
            times: RefCell::default(),
            recent_times: RefCell::default(),
        }
    }
}

/// The replicas of one member, as the [`Application`] of its group. Clone it to keep a handle
/// after giving it to the group.
#[derive(Clone, Default)]
pub struct Service {
    inner: Rc<ServiceInner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("replicas", &self.inner.replicas.borrow().len()).finish_non_exhaustive()
    }
}

impl Service {
    /// A service hosting nothing yet; calls wait at most 30 s for their replies.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a call waits for its replies before the missing ones are
    /// [`CallError::Timeout`].
    pub fn set_call_timeout(&self, d: Duration) -> &Self {
        self.inner.call_timeout.set(d);
        self
    }

    /// Persists every shard this member hosts (PROTOCOLS §4): each ordered call delivered in a
    /// shard is appended to the shard's log in `dir` (one file per shard and starting view),
    /// written and synced in batches, one `fdatasync` for every call appended meanwhile; each
    /// member publishes how far its log is durable, and the minimum over the shard is the
    /// global persistence frontier ([`Handle::wait_persisted`], [`Service::persisted`]). A log
    /// that fails (a full disk, an I/O error) is never trusted again: the member stops with
    /// [`crate::driver::GroupEvent::Fatal`]. Call before the group starts.
    ///
    /// The member also saves each view it installs in `dir`. If `dir` holds a saved view when
    /// [`Service::start_or_join`] runs, the member rebuilds its replicas from its logs and
    /// takes part in a total restart (PROTOCOLS §4.1, [`crate::driver::GroupBuilder::restart`]).
    ///
    /// # Errors
    ///
    /// The directory cannot be created.
    pub fn persist_to(&self, dir: impl Into<std::path::PathBuf>) -> std::io::Result<&Self> {
        if self.inner.sender.borrow().is_some() {
            return Err(std::io::Error::other("persist_to is called before the service is attached to its group"));
        }
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        *self.inner.persist_dir.borrow_mut() = Some(dir);
        Ok(self)
    }

    /// Calls `f` with a shard and its frontiers (durable here, durable at every member of the
    /// shard) each time one of them moves. `f` runs inside the group's driver: it must be
    /// quick and must not call the service or the group (spawn a task for that).
    pub fn on_persisted(&self, f: impl FnMut(ShardRef, Option<Version>, Option<Version>) + 'static) -> &Self {
        self.inner.persist_callbacks.borrow_mut().push(Box::new(f));
        self
    }

    /// The persistence frontiers of `shard` (see [`crate::driver::GroupSender::persisted`]):
    /// durable here, and durable at every member of the shard.
    pub fn persisted(&self, shard: ShardRef) -> (Option<Version>, Option<Version>) {
        self.inner.sender.borrow().as_ref().map_or((None, None), |s| s.persisted(shard))
    }

    /// Hosts type `T` in `subgroup` (whose shards must be ordered): this member keeps a replica
    /// of each of the subgroup's shards it belongs to, starting from `make()` (or from the state
    /// of the shard's older members when it joins one). Every member registers the same types
    /// in the same subgroups, before it starts or joins its group.
    pub fn host<T: Replicated>(&self, subgroup: SubgroupId, make: impl Fn() -> T + 'static) -> &Self {
        let registered = Registered {
            type_id: TypeId::of::<T>(),
            name: T::NAME,
            make: Box::new(move || Box::new(make()) as Box<dyn Hosted>),
            restore: Box::new(|state| T::restore(state).map(|t| Box::new(t) as Box<dyn Hosted>)),
        };
        self.inner.types.borrow_mut().insert(subgroup, registered);
        self
    }

    /// Starts a new group (no `contact`) or joins the group of the member at `contact`, with
    /// this service as the application, and attaches the service to it.
    ///
    /// A service that persists ([`Service::persist_to`]) and finds a saved view in its
    /// directory restarts instead: it rebuilds its replicas from its logs and offers them to
    /// the restart leader, which is the member started without a `contact`
    /// ([`crate::driver::GroupBuilder::restart`]). The same command line thus starts a member
    /// the first time and restarts it after the whole group stopped.
    ///
    /// # Errors
    ///
    /// As [`crate::driver::GroupBuilder::join`] (a failed start is [`JoinError::Start`]);
    /// [`JoinError::Recovery`] if the directory cannot be recovered ([`RecoveryError`]),
    /// [`JoinError::NoQuorum`] if a restart leader's quorum does not come back in time;
    /// [`JoinError::Config`] for a persisting service without partition safety.
    pub async fn start_or_join(
        &self,
        builder: crate::driver::GroupBuilder,
        contact: Option<std::net::SocketAddr>,
    ) -> Result<crate::driver::Group, JoinError> {
        // A total restart finds every view that may have been committed through a majority of
        // the view before it: without partition safety a minority may commit one.
        if self.inner.persist_dir.borrow().is_some() && !builder.membership_config().partition_safety {
            return Err(JoinError::Config(crate::driver::PARTITION_SAFETY_NEEDED.into()));
        }
        let recovered = self.inner.recover().await.map_err(|e| JoinError::Recovery(e.to_string()))?;
        let group = match (recovered, contact) {
            // Views acknowledged but none saved, and no contact: nothing to lead a restart
            // with; this member starts a group afresh, as a new member would.
            (Some(offer), None) if !offer.saved_a_view() => {
                tracing::warn!(proposed = ?offer.proposed, "no saved view and no contact: starting afresh");
                if let Some(dir) = self.inner.persist_dir.borrow().clone() {
                    recovery::forget_proposals(&dir).map_err(|e| JoinError::Recovery(e.to_string()))?;
                }
                self.inner.proposals.borrow_mut().clear();
                builder.start(self.clone()).await?
            }
            (Some(offer), contact) => builder.restart(offer, contact, self.clone()).await?,
            (None, None) => builder.start(self.clone()).await?,
            (None, Some(c)) => builder.join(c, self.clone()).await?,
        };
        self.attach(group.sender());
        Ok(group)
    }

    /// Connects the service to its group (once the group started or joined): replies and
    /// queries go out through `sender`.
    pub fn attach(&self, sender: GroupSender) {
        self.inner.set_view(sender.view());
        self.inner.me.set(sender.me());
        *self.inner.sender.borrow_mut() = Some(sender.clone());
        // A log that failed before: this member cannot go on.
        let failed = self.inner.persist_failed.borrow().clone();
        if let Some(reason) = failed {
            sender.fatal(&format!("persistence failed: {reason}"));
            return;
        }
        // What became durable before (a joiner's state) is published now (collected first:
        // reporting runs the group, which may deliver into this service).
        let durable: Vec<(ShardRef, u64)> =
            self.inner.logs.borrow().iter().filter_map(|(s, l)| l.log.persisted().map(|p| (*s, p))).collect();
        for (shard, p) in durable {
            sender.report_persisted(shard, Version::from_u64(p));
        }
        self.refresh_replicas();
        let weak = Rc::downgrade(&self.inner);
        drop(crate::spawn(outbox(weak.clone(), sender)));
        drop(crate::spawn(sweep(weak)));
    }

    /// A handle on `shard` for calls into type `T`.
    pub fn handle<T: Replicated>(&self, shard: ShardRef) -> Handle<T> {
        Handle { service: Rc::downgrade(&self.inner), shard, stable: false, _type: PhantomData }
    }

    /// Reads this member's replica of `shard` (none if it holds none, or not of type `T`).
    /// Must not be called from a handler.
    pub fn read<T: Replicated, R>(&self, shard: ShardRef, f: impl FnOnce(&T) -> R) -> Option<R> {
        let replicas = self.inner.replicas.borrow();
        replicas.get(&shard).and_then(|s| s.replica.as_ref()).and_then(|r| r.as_any().downcast_ref::<T>()).map(f)
    }

    /// Creates the replicas of the shards this member is in (except those whose state is on
    /// its way), drops those of shards it left.
    fn refresh_replicas(&self) {
        let (Some(view), Some(me)) = (self.inner.view.borrow().clone(), self.inner.me.get()) else { return };
        let mine: Vec<ShardRef> = view.shards.iter().filter(|s| s.members.contains(&me)).map(|s| s.id).collect();
        let mut replicas = self.inner.replicas.borrow_mut();
        // An inadequate view has no shards: keep the replicas for the next adequate one. A
        // slot with work under way stays, retired, until its worker has finished it.
        if !view.shards.is_empty() {
            replicas.retain(|s, slot| {
                slot.retired = !mine.contains(s);
                !slot.retired || slot.working || !slot.queue.is_empty()
            });
        }
        let awaiting = self.inner.awaiting.borrow();
        for s in mine {
            if !awaiting.contains(&s) {
                self.inner.ensure_replica(&mut replicas, s);
            }
        }
    }

    fn receive_one(&self, from: NodeId, body: &[u8]) {
        let inner = &self.inner;
        let Ok((h, rest)) = Header::read(body) else {
            tracing::warn!(%from, "a frame that is not a call or reply: ignored");
            return;
        };
        match h.kind {
            Kind::Query | Kind::StableQuery => {
                if h.caller != from {
                    tracing::warn!(%from, ?h, "a query in another member's name: ignored");
                    return;
                }
                if inner.outbox_len.get() >= OUTBOX_LEN_MAX {
                    inner.send_error(from, &h, "the member is overloaded: too many replies waiting");
                    return;
                }
                let waiting = inner.awaiting.borrow().contains(&h.shard);
                let state = inner.replicas.borrow().get(&h.shard).map(|s| (s.retired, s.queue.len()));
                match state {
                    Some((false, queued)) if !waiting && queued < QUEUE_LEN_MAX => {}
                    Some((false, _)) if !waiting => {
                        inner.send_error(from, &h, "the member is overloaded: too many calls waiting");
                        return;
                    }
                    _ => {
                        inner.send_error(from, &h, "this member holds no replica of the shard (yet)");
                        return;
                    }
                }
                inner.query(h, from, rest);
            }
            Kind::Repeat => {
                if h.caller != from {
                    return;
                }
                let again = inner
                    .sent
                    .borrow()
                    .get(&from)
                    .and_then(|q| q.iter().rev().find(|(c, _)| *c == h.call).map(|(_, b)| b.clone()));
                if let Some(bytes) = again {
                    inner.send(from, &bytes);
                }
            }
            Kind::Reply | Kind::Error => {
                if Some(h.caller) != inner.me.get() {
                    return;
                }
                let reply = if h.kind == Kind::Reply {
                    let mut v = AlignedVec::new();
                    v.extend_from_slice(rest);
                    Ok(v)
                } else {
                    Err(CallError::Remote { node: from, reason: String::from_utf8_lossy(rest).into_owned() })
                };
                inner.record(h.call, from, reply);
            }
            Kind::Ordered => tracing::warn!(%from, "an ordered call sent point to point: ignored"),
        }
    }
}

/// Bytes before each message of a batch: its length (`u32`) and padding, so that every
/// message starts 16-byte aligned (its body is read in place).
const BATCH_PREFIX: usize = 16;

/// The messages of a batch frame; stops at the first malformed length.
fn batch_messages(mut body: &[u8]) -> impl Iterator<Item = Result<&[u8], &'static str>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        if body.len() < BATCH_PREFIX {
            body = &[];
            return Some(Err("a batch shorter than a message prefix"));
        }
        let len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
        let end = BATCH_PREFIX.saturating_add(len);
        if end > body.len() {
            body = &[];
            return Some(Err("a message longer than its batch"));
        }
        let msg = &body[BATCH_PREFIX..end];
        body = &body[end.next_multiple_of(16).min(body.len())..];
        Some(Ok(msg))
    })
}

/// Sends the frames the service filled: everything queued for one member leaves in one frame
/// (or a few, each at most [`BATCH_LEN_MAX`]).
async fn outbox(inner: Weak<ServiceInner>, sender: GroupSender) {
    loop {
        let frames = poll_fn(|cx| {
            let Some(inner) = inner.upgrade() else { return Poll::Ready(None) };
            let mut q = inner.outbox.borrow_mut();
            if q.is_empty() {
                *inner.outbox_waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            inner.outbox_len.set(0);
            Poll::Ready(Some(std::mem::take(&mut *q)))
        })
        .await;
        let Some(frames) = frames else { return };
        for (to, frame) in frames {
            if let Err(e) = sender.send_app_frame(to, frame).await {
                tracing::debug!(%to, error = %e, "replies or queries not sent");
                if matches!(e, SendToError::Closed) {
                    if let Some(inner) = inner.upgrade() {
                        inner.fail_all(|| CallError::Closed);
                    }
                    return;
                }
            }
        }
    }
}

/// Completes the calls whose timeout passed: their missing replies become
/// [`CallError::Timeout`]. One timer for all calls, not one each.
async fn sweep(inner: Weak<ServiceInner>) {
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

/// Sets the handler's [`CallContext`] around every poll of an async handler, so that
/// [`context`] answers correctly after an await.
struct InContext<F> {
    context: CallContext,
    future: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for InContext<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let c = self.context;
        abort_on_panic(|| with_context(c, || std::pin::Pin::new(&mut self.future).poll(cx)))
    }
}

/// Runs a handler on a shard's worker. A handler that panics there takes the replica it holds
/// with it: this replica could no longer follow the others, and the worker's task would swallow
/// the panic, so the process stops (a handler's panic is a programmer error).
fn abort_on_panic<R>(f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("a replicated handler panicked on a shard's worker; its replica is lost: stopping");
            std::process::abort();
        }
    }
}

/// Drains a shard's queue: one job at a time, in order, holding the replica while an async
/// handler awaits.
async fn worker(inner: Weak<ServiceInner>, shard: ShardRef) {
    loop {
        let (job, mut replica) = {
            let Some(inner) = inner.upgrade() else { return };
            let mut replicas = inner.replicas.borrow_mut();
            let Some(slot) = replicas.get_mut(&shard) else { return };
            let Some(job) = slot.queue.pop_front() else {
                slot.working = false;
                return;
            };
            (job, slot.replica.take())
        };
        match job {
            Job::Call { header, version, from, args, external } => {
                let context = CallContext::of(&header, version);
                let result = match replica.as_mut() {
                    None => {
                        Err(HandlerError::NoSuchMethod { ty: "no replica here", method: header.method, kind: "any" })
                    }
                    Some(r) => {
                        let applied = abort_on_panic(|| {
                            with_context(context, || {
                                if header.kind == Kind::Ordered {
                                    r.apply(header.method, &args)
                                } else {
                                    r.query(header.method, &args)
                                }
                            })
                        });
                        match applied {
                            Applied::Now(r) => r,
                            Applied::Later(f) => InContext { context, future: f }.await,
                        }
                    }
                };
                let Some(inner) = inner.upgrade() else { return };
                if let Some(slot) = inner.replicas.borrow_mut().get_mut(&shard) {
                    slot.replica = slot.replica.take().or(replica);
                }
                match external {
                    Some(cell) => {
                        let mut c = cell.borrow_mut();
                        c.0 = Some(external_reply(result));
                        if let Some(w) = c.1.take() {
                            w.wake();
                        }
                    }
                    None => inner.finish(header, version, from, result),
                }
            }
            Job::Snapshot(cell) => {
                let state = match replica.as_ref().map(|r| r.snapshot()) {
                    Some(Ok(s)) => s,
                    Some(Err(e)) => {
                        tracing::error!(%shard, error = %e, "the replica's state could not be archived");
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                let mut c = cell.borrow_mut();
                c.0 = Some(state);
                if let Some(w) = c.1.take() {
                    w.wake();
                }
                drop(c);
                let Some(inner) = inner.upgrade() else { return };
                if let Some(slot) = inner.replicas.borrow_mut().get_mut(&shard) {
                    slot.replica = slot.replica.take().or(replica);
                }
            }
        }
    }
}

impl ServiceInner {
    fn set_view(&self, view: Option<View>) {
        *self.shard_members.borrow_mut() =
            view.iter().flat_map(|v| v.shards.iter()).map(|s| (s.id, Rc::from(s.members.as_slice()))).collect();
        if self.persist_dir.borrow().is_some() {
            // An inadequate view (no shards) is not saved: nothing is delivered in it, and a
            // restart judges each shard by the last view that had it (the views after it that
            // this member acknowledged are in its saved proposals). A view still unsaved when
            // the next one comes is never saved: the states it awaited will not come.
            *self.unsaved_view.borrow_mut() = view.clone().filter(|v| !v.shards.is_empty());
            self.save_view_if_whole();
        }
        *self.view.borrow_mut() = view;
    }

    /// A persisting member saves each view (PROTOCOLS §4.1, total restart starts from the last
    /// one saved) before anything is logged in it, and only once every state it receives for
    /// its shards is durable: a member whose saved view is the last one then holds, for each
    /// of its shards, everything durable at every member of the shard.
    fn save_view_if_whole(&self) {
        if !self.awaiting.borrow().is_empty() || self.logs.borrow().values().any(|l| l.state_pending.get()) {
            return;
        }
        let Some(view) = self.unsaved_view.borrow_mut().take() else { return };
        let Some(dir) = self.persist_dir.borrow().clone() else { return };
        if self.saved_view.get() == Some(view.id) || self.persist_failed.borrow().is_some() {
            return;
        }
        match recovery::save_view(&dir, &view) {
            Ok(()) => self.saved_view.set(Some(view.id)),
            Err(e) => return self.persistence_failed(format!("saving view {} in {}: {e}", view.id.0, dir.display())),
        }
        let mut proposals = self.proposals.borrow_mut();
        let before = proposals.len();
        proposals.retain(|(id, _)| *id > view.id);
        if proposals.len() != before
            && let Err(e) = recovery::save_proposals(&dir, &proposals)
        {
            drop(proposals);
            self.persistence_failed(format!("saving the proposed views in {}: {e}", dir.display()));
        }
    }

    /// Saves a view this member proposed or acknowledged, before the acknowledgement leaves.
    ///
    /// # Errors
    ///
    /// Persistence failed, now or before (the member must not acknowledge).
    fn save_proposal(&self, id: crate::protocol::ViewId, members: &[NodeId]) -> Result<(), String> {
        let Some(dir) = self.persist_dir.borrow().clone() else { return Ok(()) };
        if let Some(reason) = self.persist_failed.borrow().clone() {
            return Err(reason);
        }
        let mut proposals = self.proposals.borrow_mut();
        if proposals.iter().any(|(i, m)| *i == id && m.as_slice() == members) {
            return Ok(());
        }
        proposals.push((id, members.to_vec()));
        if let Err(e) = recovery::save_proposals(&dir, &proposals) {
            drop(proposals);
            let reason = format!("saving proposed view {} in {}: {e}", id.0, dir.display());
            self.persistence_failed(reason.clone());
            return Err(reason);
        }
        Ok(())
    }

    /// Queues a message of `len` bytes for `to`, written by `write` straight into the frame
    /// being filled for it: a length, padding, the message, padding to 16 bytes.
    fn send_with(&self, to: NodeId, len: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let mut q = self.outbox.borrow_mut();
        let room = |f: &Vec<u8>| f.len() + BATCH_PREFIX + len <= BATCH_LEN_MAX;
        let i = match q.iter().rposition(|(t, f)| *t == to && room(f)) {
            Some(i) => i,
            None => {
                q.push((to, app_frame(&[])));
                q.len() - 1
            }
        };
        let f = &mut q[i].1;
        f.extend_from_slice(&(len as u32).to_le_bytes());
        f.resize(f.len() + BATCH_PREFIX - 4, 0);
        let start = f.len();
        write(f);
        debug_assert_eq!(f.len() - start, len, "a message wrote another length than it announced");
        f.resize(f.len().next_multiple_of(16), 0);
        drop(q);
        self.outbox_len.set(self.outbox_len.get() + 1);
        if let Some(w) = self.outbox_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Queues a whole message (header included) for `to`.
    fn send(&self, to: NodeId, msg: &[u8]) {
        self.send_with(to, msg.len(), |f| f.extend_from_slice(msg));
    }

    /// Queues a header and a body for `to`, with no intermediate buffer.
    fn send_parts(&self, to: NodeId, h: &Header, body: &[u8]) {
        self.send_with(to, HEADER_LEN + body.len(), |f| {
            let start = f.len();
            f.resize(start + HEADER_LEN, 0);
            h.write(&mut f[start..]);
            f.extend_from_slice(body);
        });
    }

    /// Queues an error reply to the call `h` for `to`.
    fn send_error(&self, to: NodeId, h: &Header, why: &str) {
        self.send_parts(to, &Header { kind: Kind::Error, version: Version::from_u64(0), ..*h }, why.as_bytes());
    }

    /// Remembers a reply sent to `caller`, for a repeat.
    fn keep_sent(&self, caller: NodeId, call: u64, bytes: Vec<u8>) {
        let mut sent = self.sent.borrow_mut();
        let q = sent.entry(caller).or_default();
        if q.len() >= REPLY_CACHE_LEN {
            q.pop_front();
        }
        q.push_back((call, bytes));
    }

    /// The slot of `shard`, with a fresh replica if it has none and its type is registered;
    /// `false` if the subgroup hosts no type.
    fn ensure_replica(self: &Rc<Self>, replicas: &mut BTreeMap<ShardRef, Slot>, shard: ShardRef) -> bool {
        let types = self.types.borrow();
        let Some(t) = types.get(&shard.subgroup) else { return false };
        let slot = replicas.entry(shard).or_default();
        slot.retired = false;
        if slot.replica.is_none() && !slot.working {
            slot.replica = Some((t.make)());
            // A new replica starts from the type's initial state: its times and log too.
            self.times.borrow_mut().remove(&shard);
            self.recent_times.borrow_mut().remove(&shard);
            self.open_log(shard, None);
        } else if slot.idle()
            && self.persist_dir.borrow().is_some()
            && self.persist_failed.borrow().is_none()
            && !self.logs.borrow().contains_key(&shard)
        {
            // A replica rebuilt from an earlier run's log: its log in this view starts from its
            // state.
            let time = self.times.borrow().get(&shard).copied().unwrap_or(0);
            match slot.replica.as_ref().expect("idle").snapshot() {
                Ok(archive) => self.open_log(shard, Some(&framed_state(time, &archive))),
                Err(e) => self.persistence_failed(format!("{shard}: its state could not be archived: {e}")),
            }
        }
        true
    }

    /// Starts the log of `shard` for a replica created in the current view: empty for a fresh
    /// replica, or with `state` (the state it was restored from) as its first record.
    fn open_log(self: &Rc<Self>, shard: ShardRef, state: Option<&[u8]>) {
        let Some(dir) = self.persist_dir.borrow().clone() else { return };
        let Some(view) = self.view.borrow().as_ref().map(|v| v.id) else { return };
        let path = dir.join(recovery::log_name(shard, view));
        let log = match crate::persist::DurableLog::create(&path) {
            Ok(l) => l,
            Err(e) => return self.persistence_failed(format!("{shard}: {e}")),
        };
        let slog =
            Rc::new(ShardLog { log, view, flushing: Cell::new(false), state_pending: Cell::new(state.is_some()) });
        self.logs.borrow_mut().insert(shard, slog.clone());
        if let Some(state) = state {
            // Everything before the view's first message (versions of view 0 never come by
            // state transfer: that view has one member).
            let before = Version::from_u64(Version::new(view, 0).as_u64().saturating_sub(1));
            let time = state.get(..8).map_or(0, |t| u64::from_le_bytes(t.try_into().expect("8 bytes")));
            let mut record = Vec::with_capacity(1 + state.len());
            record.push(0);
            record.extend_from_slice(state);
            if let Err(e) = slog.log.append(before.as_u64(), time, &record) {
                return self.persistence_failed(format!("{shard}: {e}"));
            }
            // Durable and reported at once: the shard's global frontier (and the stable time of
            // reads) must not wait for this member's first call.
            self.recent_times.borrow_mut().entry(shard).or_default().push_back((before, time));
            self.flush(shard, slog);
        }
    }

    /// Appends a delivered call to its shard's log with its version and time, and makes sure a
    /// flush is under way.
    fn log_call(self: &Rc<Self>, shard: ShardRef, version: Version, hlc: u64, payload: &[u8]) {
        let Some(slog) = self.logs.borrow().get(&shard).cloned() else { return };
        if let Err(e) = slog.log.append(version.as_u64(), hlc, payload) {
            return self.persistence_failed(format!("{shard}: {e}"));
        }
        let mut recent = self.recent_times.borrow_mut();
        let q = recent.entry(shard).or_default();
        q.push_back((version, hlc));
        // Bounded: when the global frontier lags this far, the oldest times are forgotten and
        // reads by time are refused until it catches up (never answered differently).
        while q.len() > 1 << 16 {
            q.pop_front();
        }
        drop(recent);
        self.flush(shard, slog);
    }

    /// Makes sure a flush of `slog` is under way: rounds of one write and one sync for
    /// everything appended, each reported as the local frontier once durable.
    fn flush(self: &Rc<Self>, shard: ShardRef, slog: Rc<ShardLog>) {
        if slog.flushing.replace(true) {
            return;
        }
        // The sender is looked up at each report: a joiner's first log (its state) is flushed
        // before the service is attached ([`Service::attach`] republishes what was durable).
        let weak = Rc::downgrade(self);
        let sender = {
            let weak = weak.clone();
            move || weak.upgrade().and_then(|i| i.sender.borrow().clone())
        };
        drop(crate::spawn(async move {
            while let Some(target) = slog.log.last_appended() {
                if let Err(e) = slog.log.persist(target).await {
                    // Never retried: what a failed sync wrote cannot be trusted. Recorded, so
                    // that a service not attached yet stops its member when it is.
                    if let Some(inner) = weak.upgrade() {
                        inner.persistence_failed(format!("the log of {shard} failed: {e}"));
                    }
                    return;
                }
                if let Some(s) = sender() {
                    s.report_persisted(shard, Version::from_u64(target));
                }
                if slog.state_pending.replace(false)
                    && let Some(inner) = weak.upgrade()
                {
                    inner.save_view_if_whole();
                    // The state at the head of this log holds everything older logs of the
                    // shard held: they go (a restart reads the newest log only).
                    if let Some(dir) = inner.persist_dir.borrow().as_deref() {
                        recovery::remove_older_logs(dir, shard, slog.view);
                    }
                }
                if slog.log.last_appended() == Some(target) {
                    break;
                }
            }
            slog.flushing.set(false);
        }));
    }

    /// A log could not be created or appended to: this member can no longer persist, and stops.
    fn persistence_failed(&self, reason: String) {
        tracing::error!(%reason, "persistence failed");
        let first = self.persist_failed.borrow().is_none();
        self.persist_failed.borrow_mut().get_or_insert(reason.clone());
        if first && let Some(s) = self.sender.borrow().as_ref() {
            s.fatal(&format!("persistence failed: {reason}"));
        }
    }

    /// Runs a query now or after the calls before it; a stable query first waits until what
    /// this member delivered in the shard is delivered at every member of it.
    fn query(self: &Rc<Self>, header: Header, from: NodeId, args: &[u8]) {
        let header = Header { version: Version::from_u64(self.stable_time_field(header.shard)), ..header };
        if header.kind != Kind::StableQuery {
            self.run_or_queue(header, None, from, args);
            return;
        }
        if self.stopped.get() {
            self.refuse(from, &header, "this member has stopped");
            return;
        }
        if self.stable_waiting.get() >= QUEUE_LEN_MAX {
            self.refuse(from, &header, "the member is overloaded: too many stable queries waiting");
            return;
        }
        let shard = header.shard;
        let view = self.view.borrow().as_ref().map(|v| v.id);
        // Updates delivered here so far. With none yet in this view: everything of earlier views
        // (all of it is delivered everywhere, or trimmed away, once a view is installed; a
        // member joins a view's transport only after its trim). In view 0, (0, 0) is the first
        // message's version, but with nothing delivered the replica holds nothing of it.
        let stable = match (self.delivered.borrow().get(&shard).copied(), view) {
            (Some(v), Some(view)) if v.view() == view => v,
            (_, Some(view)) => Version::from_u64(Version::new(view, 0).as_u64().saturating_sub(1)),
            (_, None) => Version::from_u64(0),
        };
        let Some(sender) = self.sender.borrow().clone() else {
            self.refuse(from, &header, "the member is not attached to a group");
            return;
        };
        let mut owned: AlignedVec = AlignedVec::new();
        owned.extend_from_slice(args);
        let within = self.call_timeout.get();
        let inner = Rc::downgrade(self);
        self.stable_waiting.set(self.stable_waiting.get() + 1);
        drop(crate::spawn(async move {
            let settled = sender.settle(shard, within).await;
            let Some(inner) = inner.upgrade() else { return };
            inner.stable_waiting.set(inner.stable_waiting.get() - 1);
            if let Err(e) = settled {
                inner.refuse(from, &header, &format!("the shard did not settle for a stable query: {e}"));
                return;
            }
            // Things may have changed while it waited.
            let usable = !inner.stopped.get()
                && !inner.awaiting.borrow().contains(&shard)
                && inner.replicas.borrow().get(&shard).is_some_and(|s| !s.retired);
            if usable {
                inner.run_or_queue(header, Some(stable), from, &owned);
            } else {
                inner.refuse(from, &header, "this member no longer holds a replica of the shard");
            }
        }));
    }

    /// The time of `shard`'s global persistence frontier plus one, 0 if there is none (what a
    /// query's header carries into [`CallContext::stable_time`]).
    fn stable_time_field(&self, shard: ShardRef) -> u64 {
        if self.persist_dir.borrow().is_none() {
            return 0; // nothing is persisted: there is no stable time
        }
        let Some(global) = self.sender.borrow().as_ref().and_then(|s| s.persisted(shard).1) else { return 0 };
        let mut recent = self.recent_times.borrow_mut();
        let Some(q) = recent.get_mut(&shard) else { return 0 };
        while q.len() >= 2 && q[1].0 <= global {
            q.pop_front();
        }
        match q.front() {
            Some(&(v, t)) if v <= global => t.saturating_add(1),
            _ => 0,
        }
    }

    /// Answers a call with an error: recorded for this member's own call, sent to another's.
    fn refuse(&self, from: NodeId, header: &Header, why: &str) {
        if Some(header.caller) == self.me.get() {
            self.record(header.call, header.caller, Err(CallError::Remote { node: from, reason: why.into() }));
        } else {
            self.send_error(from, header, why);
        }
    }

    /// Runs a call now if the shard is idle and the method synchronous (arguments read in place);
    /// otherwise queues it for the shard's worker.
    fn run_or_queue(self: &Rc<Self>, header: Header, version: Option<Version>, from: NodeId, args: &[u8]) {
        let ordered = header.kind == Kind::Ordered;
        let mut replicas = self.replicas.borrow_mut();
        let Some(slot) = replicas.get_mut(&header.shard) else { return };
        let sync = slot.replica.as_ref().is_some_and(|r| !r.is_async(header.method));
        if slot.idle() && sync {
            let result = Self::run_now(slot, header, version, ordered, args);
            drop(replicas);
            self.finish(header, version, from, result);
            return;
        }
        let mut owned = AlignedVec::new();
        owned.extend_from_slice(args);
        slot.queue.push_back(Job::Call { header, version, from, args: owned, external: None });
        if !slot.working {
            slot.working = true;
            drop(crate::spawn(worker(Rc::downgrade(self), header.shard)));
        }
    }

    /// Runs a synchronous handler on an idle slot's replica, reading the arguments in place.
    fn run_now(
        slot: &mut Slot,
        header: Header,
        version: Option<Version>,
        ordered: bool,
        args: &[u8],
    ) -> Result<AlignedVec, HandlerError> {
        let r = slot.replica.as_mut().expect("an idle slot has its replica");
        let context = CallContext::of(&header, version);
        let applied =
            with_context(context, || if ordered { r.apply(header.method, args) } else { r.query(header.method, args) });
        match applied {
            Applied::Now(r) => r,
            Applied::Later(_) => Err(HandlerError::NoSuchMethod {
                ty: "a method that said it was synchronous",
                method: header.method,
                kind: "sync",
            }),
        }
    }

    /// Sends (or, for this member's own call, records) the reply of a call.
    fn finish(&self, h: Header, version: Option<Version>, from: NodeId, result: Result<AlignedVec, HandlerError>) {
        if Some(h.caller) == self.me.get() {
            let reply = result.map_err(|e| CallError::Remote { node: h.caller, reason: e.to_string() });
            self.record(h.call, h.caller, reply);
            return;
        }
        // A reply sent during a view change may be lost with the old view's connections: keep
        // it for the caller to ask again. Earlier ones reach the caller before the view ends.
        if h.kind == Kind::Ordered && self.sender.borrow().as_ref().is_some_and(GroupSender::is_wedged) {
            let bytes = reply_bytes(&h, version, &result);
            self.send(from, &bytes);
            self.keep_sent(h.caller, h.call, bytes);
            return;
        }
        match &result {
            Ok(reply) => {
                let header = Header { kind: Kind::Reply, version: version.unwrap_or(Version::from_u64(0)), ..h };
                self.send_parts(from, &header, reply);
            }
            Err(e) => self.send_error(from, &h, &e.to_string()),
        }
    }

    /// Records a reply from `from` to call `call`; wakes the caller when the call is complete.
    fn record(&self, call: u64, from: NodeId, reply: Result<AlignedVec, CallError>) {
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
    fn fail_all(&self, e: impl Fn() -> CallError) {
        for p in self.pending.borrow_mut().values_mut() {
            p.failed.get_or_insert_with(&e);
            p.wake_if_complete();
        }
    }
}

fn reply_bytes(h: &Header, version: Option<Version>, result: &Result<AlignedVec, HandlerError>) -> Vec<u8> {
    match result {
        Ok(bytes) => {
            Header { kind: Kind::Reply, version: version.unwrap_or(Version::from_u64(0)), ..*h }.with_body(bytes)
        }
        Err(e) => error_bytes(h, &e.to_string()),
    }
}

/// An external client's reply: a status byte (1 ok, 0 error), then the archived reply or the
/// error's text.
fn external_reply(result: Result<AlignedVec, HandlerError>) -> Vec<u8> {
    match result {
        Ok(bytes) => {
            let mut v = Vec::with_capacity(1 + bytes.len());
            v.push(1);
            v.extend_from_slice(&bytes);
            v
        }
        Err(e) => {
            let mut v = vec![0];
            v.extend_from_slice(e.to_string().as_bytes());
            v
        }
    }
}

/// An external call's answer, counted among those under way until it is ready.
fn counted(count: &Rc<Cell<usize>>, f: impl std::future::Future<Output = Vec<u8>> + 'static) -> State {
    count.set(count.get() + 1);
    let count = count.clone();
    State::Later(Box::pin(async move {
        /// Counts the call out even if the answer is dropped unfinished.
        struct Out(Rc<Cell<usize>>);
        impl Drop for Out {
            fn drop(&mut self) {
                self.0.set(self.0.get().saturating_sub(1));
            }
        }
        let _out = Out(count);
        f.await
    }))
}

/// A future of what a worker leaves in `cell`.
fn later(cell: StateCell) -> State {
    State::Later(Box::pin(poll_fn(move |cx| {
        let mut c = cell.borrow_mut();
        match c.0.take() {
            Some(state) => Poll::Ready(state),
            None => {
                c.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })))
}

/// A shard's state as it travels and is logged: the time of its last version, 8 bytes of
/// padding (the archive stays 16-byte aligned), then the replica's archive.
fn framed_state(time: u64, archive: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(STATE_PREFIX + archive.len());
    v.extend_from_slice(&time.to_le_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(archive);
    v
}

fn error_bytes(h: &Header, why: &str) -> Vec<u8> {
    Header { kind: Kind::Error, version: Version::from_u64(0), ..*h }.with_body(why.as_bytes())
}

impl Application for Service {
    fn deliver(&mut self, d: Delivered<'_>) {
        let inner = &self.inner;
        if let Some(v) = d.version {
            inner.delivered.borrow_mut().insert(d.shard, v);
        }
        let Ok((h, args)) = Header::read(d.payload) else {
            tracing::warn!(sender = %d.sender, shard = %d.shard, "a delivered message that is not a call: ignored");
            return;
        };
        if h.kind != Kind::Ordered || h.caller != d.sender || h.shard != d.shard {
            tracing::warn!(sender = %d.sender, ?h, "a delivered call with a wrong header: ignored");
            return;
        }
        let Some(version) = d.version else {
            // Without a total order, replicas would apply calls in different orders.
            let e = HandlerError::NoSuchMethod { ty: "an unordered shard", method: h.method, kind: "ordered" };
            inner.finish(h, None, h.caller, Err(e));
            return;
        };
        if !inner.ensure_replica(&mut inner.replicas.borrow_mut(), d.shard) {
            tracing::warn!(shard = %d.shard, "a call for a shard with no registered type: ignored");
            return;
        }
        // The version's time: the caller's clock (carried in the call's version field), made
        // to go forward in the shard's order, so the same at every replica.
        let time = {
            let mut times = inner.times.borrow_mut();
            let last = times.entry(d.shard).or_insert(0);
            // A stamp is the caller's to choose: capped, so that times can always go forward.
            *last = h.version.as_u64().min(u64::MAX >> 1).max(last.saturating_add(1));
            *last
        };
        inner.log_call(d.shard, version, time, d.payload);
        let h = Header { version: Version::from_u64(time), ..h };
        if Some(h.caller) == inner.me.get()
            && let Some(p) = inner.pending.borrow_mut().get_mut(&h.call)
        {
            // The members this call expects replies from: the shard's when it is delivered
            // (not when an async handler finishes it, perhaps in a later view).
            if let Some(members) = inner.shard_members.borrow().get(&h.shard) {
                p.replies.retain(|n, _| members.contains(n));
                p.expected = Some(members.clone());
            }
            p.version = Some(version);
        }
        inner.run_or_queue(h, Some(version), h.caller, args);
    }

    fn receive(&mut self, from: NodeId, body: &[u8]) {
        for msg in batch_messages(body) {
            match msg {
                Ok(m) => self.receive_one(from, m),
                Err(why) => {
                    tracing::warn!(%from, why, "a malformed batch: the rest is ignored");
                    return;
                }
            }
        }
    }

    fn snapshot(&mut self, shard: ShardRef) -> State {
        // The state a joiner receives: the time of the shard's last version (so that it stamps
        // the next versions as the others do), 8 bytes of padding (the archive stays 16-byte
        // aligned), then the replica's archive.
        let time = self.inner.times.borrow().get(&shard).copied().unwrap_or(0);
        let frame = move |archive: Vec<u8>| framed_state(time, &archive);
        let mut replicas = self.inner.replicas.borrow_mut();
        let Some(slot) = replicas.get_mut(&shard) else { return State::Ready(frame(Vec::new())) };
        if slot.idle() {
            return State::Ready(frame(match slot.replica.as_ref().map(|r| r.snapshot()) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::error!(%shard, error = %e, "the replica's state could not be archived");
                    Vec::new()
                }
                None => Vec::new(),
            }));
        }
        // Async handlers are still applying the old view: the state is taken once they are
        // done, before anything delivered after this point.
        let cell: StateCell = Rc::new(RefCell::new((None, None)));
        slot.queue.push_back(Job::Snapshot(cell.clone()));
        match later(cell) {
            State::Later(f) => State::Later(Box::pin(async move { frame(f.await) })),
            ready => ready,
        }
    }

    fn external(&mut self, request: &[u8]) -> Option<State> {
        let inner = &self.inner;
        let refuse = |why: &str| {
            Some(State::Ready(external_reply(Err(HandlerError::BadArguments {
                method: "external call",
                reason: why.into(),
            }))))
        };
        let Ok((h, args)) = Header::read(request) else { return refuse("not a call") };
        if inner.external.get() >= EXTERNAL_MAX {
            return refuse("the member is overloaded: too many external calls under way");
        }
        if h.kind == Kind::Ordered {
            // Relayed: this member makes the ordered call on the client's behalf and answers
            // with the version and its own replica's reply.
            let me = inner.me.get()?;
            let in_shard = inner
                .view
                .borrow()
                .as_ref()
                .and_then(|v| v.shards.iter().find(|s| s.id == h.shard).map(|s| s.senders.contains(&me)));
            if in_shard != Some(true) {
                return refuse("this member cannot send in the shard");
            }
            let (inner, args) = (inner.clone(), args.to_vec());
            return Some(counted(&self.inner.external, async move {
                // Answered as soon as this member applied it: the others' replies are not
                // awaited (one slow member must not delay the client).
                match ordered_call_own(&inner, h.shard, h.method, &args).await {
                    Ok((version, Ok(bytes))) => {
                        let mut v = Vec::with_capacity(9 + bytes.len());
                        v.push(1);
                        v.extend_from_slice(&version.as_u64().to_le_bytes());
                        v.extend_from_slice(&bytes);
                        v
                    }
                    Ok((_, Err(e))) | Err(e) => [&[0u8][..], e.to_string().as_bytes()].concat(),
                }
            }));
        }
        if h.kind != Kind::Query {
            return refuse("external clients send queries and ordered calls only");
        }
        if inner.awaiting.borrow().contains(&h.shard) {
            return refuse("this member holds no replica of the shard yet");
        }
        let mut replicas = inner.replicas.borrow_mut();
        let Some(slot) = replicas.get_mut(&h.shard) else { return refuse("this member holds no replica of the shard") };
        let sync = slot.replica.as_ref().is_some_and(|r| !r.is_async(h.method));
        let header = Header { caller: EXTERNAL, version: Version::from_u64(inner.stable_time_field(h.shard)), ..h };
        if slot.idle() && sync {
            return Some(State::Ready(external_reply(ServiceInner::run_now(slot, header, None, false, args))));
        }
        let mut owned = AlignedVec::new();
        owned.extend_from_slice(args);
        let cell: StateCell = Rc::new(RefCell::new((None, None)));
        slot.queue.push_back(Job::Call {
            header,
            version: None,
            from: EXTERNAL,
            args: owned,
            external: Some(cell.clone()),
        });
        if !slot.working {
            slot.working = true;
            drop(crate::spawn(worker(Rc::downgrade(inner), h.shard)));
        }
        let State::Later(f) = later(cell) else { unreachable!("later() is a future") };
        Some(counted(&inner.external, f))
    }

    fn restore(&mut self, shard: ShardRef, state: &[u8]) -> Result<(), String> {
        let types = self.inner.types.borrow();
        let Some(t) = types.get(&shard.subgroup) else { return Ok(()) };
        if state.len() < STATE_PREFIX {
            return Err(format!("{}: a state of {} bytes, shorter than its header", t.name, state.len()));
        }
        let time = u64::from_le_bytes(state[..8].try_into().expect("8 bytes"));
        let (framed, state) = (state, &state[STATE_PREFIX..]);
        let replica = (t.restore)(state).map_err(|e| format!("{}: {e}", t.name))?;
        self.inner.times.borrow_mut().insert(shard, time);
        self.inner.recent_times.borrow_mut().remove(&shard);
        self.inner.replicas.borrow_mut().entry(shard).or_default().replica = Some(replica);
        self.inner.awaiting.borrow_mut().retain(|s| *s != shard);
        // The log starts from the state as it came: time and archive.
        self.inner.open_log(shard, Some(framed));
        Ok(())
    }

    fn view_proposed(&mut self, id: crate::protocol::ViewId, members: &[NodeId]) -> Result<(), String> {
        self.inner.save_proposal(id, members)
    }

    fn persisted(&mut self, shard: ShardRef, local: Option<Version>, global: Option<Version>) {
        // Taken out while they run: a callback may register another.
        let mut callbacks = std::mem::take(&mut *self.inner.persist_callbacks.borrow_mut());
        for f in &mut callbacks {
            f(shard, local, global);
        }
        let mut cell = self.inner.persist_callbacks.borrow_mut();
        callbacks.append(&mut cell);
        *cell = callbacks;
    }

    fn view_installed(&mut self, change: &ViewChange) {
        let inner = &self.inner;
        *inner.awaiting.borrow_mut() = change.awaiting_state.clone();
        inner.set_view(Some(change.view.clone()));
        // Replies kept for members that left will never be asked for again.
        inner.sent.borrow_mut().retain(|caller, _| change.view.members.contains(caller));
        if inner.me.get().is_some() {
            self.refresh_replicas();
        }
        let me = inner.me.get();
        let mut again: Vec<(NodeId, Vec<u8>)> = Vec::new();
        for (&call, p) in inner.pending.borrow_mut().iter_mut() {
            let members = &change.view.members;
            match (&p.expected, &p.query) {
                (_, Some((t, query))) => {
                    if !members.contains(t) {
                        p.replies.entry(*t).or_insert(Err(CallError::Departed(*t)));
                    } else if !p.replies.contains_key(t) {
                        // The query or its reply may have been lost with the old connections.
                        again.push((*t, query.clone()));
                    }
                }
                (Some(e), None) => {
                    for &n in e.iter() {
                        if p.replies.contains_key(&n) {
                            continue;
                        }
                        if !members.contains(&n) {
                            p.replies.insert(n, Err(CallError::Departed(n)));
                        } else if Some(n) != me {
                            // Its reply may have been lost with the old connections.
                            let h = Header {
                                kind: Kind::Repeat,
                                shard: p.shard,
                                method: 0,
                                caller: me.expect("a member with pending calls knows itself"),
                                call,
                                version: Version::from_u64(0),
                            };
                            again.push((n, h.with_body(&[])));
                        }
                    }
                }
                (None, None) => {
                    // Not yet delivered: it is sent again in this view, unless this member can
                    // no longer send in the shard.
                    let sender = change
                        .view
                        .shards
                        .iter()
                        .any(|s| s.id == p.shard && me.is_some_and(|m| s.senders.contains(&m)));
                    if !change.view.shards.is_empty() && !sender {
                        p.failed.get_or_insert(CallError::NotDelivered(p.shard));
                    }
                }
            }
            p.wake_if_complete();
        }
        for (to, bytes) in again {
            inner.send(to, &bytes);
        }
    }

    fn stopped(&mut self) {
        self.inner.stopped.set(true);
        self.inner.fail_all(|| CallError::Closed);
    }
}

/// Calls into the replicas of type `T` in one shard ([`Service::handle`]).
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
struct PendingGuard<'a> {
    inner: &'a ServiceInner,
    call: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending.borrow_mut().remove(&self.call);
    }
}

impl<T: Replicated> Handle<T> {
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
    /// sees that point as [`CallContext::stable`]. A versioned object that answers as of it
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
        let header = Header { kind, shard: self.shard, method, caller: me, call: 0, version: Version::from_u64(0) };
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
fn new_pending(inner: &ServiceInner, shard: ShardRef, query: Option<(NodeId, Vec<u8>)>) -> u64 {
    let call = inner.next_call.get();
    inner.next_call.set(call + 1);
    inner.pending.borrow_mut().insert(
        call,
        Pending {
            shard,
            expected: None,
            query,
            version: None,
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
async fn wait_call(inner: &ServiceInner, call: u64) -> Pending {
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
async fn multicast_call(inner: &ServiceInner, shard: ShardRef, method: u32, args: &[u8]) -> Result<u64, CallError> {
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
    let header = Header { kind: Kind::Ordered, shard, method, caller: me, call, version: Version::from_u64(stamp.0) };
    sender
        .send(shard, HEADER_LEN + args.len(), |buf| {
            header.write(buf);
            buf[HEADER_LEN..].copy_from_slice(args);
        })
        .await
        .map_err(|e| match e {
            GroupSendError::Refused(crate::protocol::SendError::NotAMember(s)) => CallError::NotAMember(s),
            other => CallError::Send(other),
        })?;
    // Sent: the caller's own guard or stream owns the record from here.
    std::mem::forget(guard);
    Ok(call)
}

/// An ordered call into `shard` (see [`Handle::ordered_raw`]), without the type check.
async fn ordered_call(
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

/// An ordered call made for an external client: returns once this member applied it, with the
/// version and this member's own reply.
async fn ordered_call_own(
    inner: &ServiceInner,
    shard: ShardRef,
    method: u32,
    args: &[u8],
) -> Result<(Version, Result<AlignedVec, CallError>), CallError> {
    let me = inner.me.get().ok_or(CallError::Closed)?;
    let call = multicast_call(inner, shard, method, args).await?;
    let guard = PendingGuard { inner, call };
    let own = poll_fn(|cx| {
        let mut pending = inner.pending.borrow_mut();
        let p = pending.get_mut(&call).expect("a pending call stays until its caller takes it");
        if let Some(e) = p.failed.take() {
            return Poll::Ready(Err(e));
        }
        if let Some(r) = p.replies.remove(&me) {
            return Poll::Ready(Ok((p.version.unwrap_or(Version::from_u64(0)), r)));
        }
        p.waker = Some(cx.waker().clone());
        Poll::Pending
    });
    let r = own.await;
    drop(guard);
    r
}

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

    /// The error for a reply that could not be archived.
    pub fn bad_reply(method: &'static str, e: impl std::fmt::Display) -> HandlerError {
        HandlerError::Reply { method, reason: e.to_string() }
    }
}
