//! [`Service`]: the replicas of one member, as the [`Application`] of its group.

use std::any::TypeId;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use rkyv::util::AlignedVec;

use super::RecoveryError;
use super::calls::{Pending, relay_call, sweep};
use super::outbox::{Again, OUTBOX_LEN_MAX, SentReplies, batch_messages, outbox};
use super::persistence::{PersistCallback, PersistError, STATE_PREFIX, ShardLog, framed_state, unframe_state};
use super::recovery;
use super::replicas::{Job, QUEUE_LEN_MAX, Registered, Slot, StateCell, later};
use super::replicated::{HandlerError, Hosted, Replicated, StateError};
use super::sessions::{IDENTITY_LEN_MAX, Prefix, Table};
use super::wire::{FLAG_ACK_APPLIED, FLAG_ACK_PERSISTED, FLAG_SESSION, Header, Kind, RemoteKind};
use super::{CallError, EXTERNAL, Handle};
use crate::driver::{AppError, Application, GroupSendError, GroupSender, JoinError, State, ViewChange};
use crate::protocol::{Delivered, NodeId, SendError, ShardRef, SubgroupId, Version, View, ViewId};

/// Why [`Service::start_or_join`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Starting, joining or restarting the group failed.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// This member's persisted state could not be recovered.
    #[error("recovery from this member's logs failed: {0}")]
    Recovery(#[from] RecoveryError),
}

/// External calls under way at once; beyond this, more are refused.
pub(super) const EXTERNAL_MAX: usize = 1024;

pub(super) struct ServiceInner {
    pub(super) types: RefCell<BTreeMap<SubgroupId, Registered>>,
    pub(super) replicas: RefCell<BTreeMap<ShardRef, Slot>>,
    /// Shards this member joined whose state has not arrived: no replica to answer from yet.
    pub(super) awaiting: RefCell<Vec<ShardRef>>,
    pub(super) pending: RefCell<BTreeMap<u64, Pending>>,
    pub(super) next_call: Cell<u64>,
    /// Frames being filled, per destination: the application-frame header, then a batch of
    /// messages (replies and queries are written straight into them).
    pub(super) outbox: RefCell<Vec<(NodeId, Vec<u8>)>>,
    /// Messages in `outbox` (at most [`OUTBOX_LEN_MAX`] before queries are refused).
    pub(super) outbox_len: Cell<usize>,
    pub(super) outbox_waker: RefCell<Option<Waker>>,
    /// Replies sent to other callers, by (caller, call).
    pub(super) sent: RefCell<SentReplies>,
    pub(super) sender: RefCell<Option<GroupSender>>,
    pub(super) view: RefCell<Option<View>>,
    /// Every shard's members in the current view (shared by the calls that expect them).
    pub(super) shard_members: RefCell<BTreeMap<ShardRef, Rc<[NodeId]>>>,
    pub(super) me: Cell<Option<NodeId>>,
    pub(super) call_timeout: Cell<Duration>,
    pub(super) stopped: Cell<bool>,
    /// External calls under way (at most [`EXTERNAL_MAX`]).
    pub(super) external: Rc<Cell<usize>>,
    /// The version of the last update delivered in each shard.
    pub(super) delivered: RefCell<BTreeMap<ShardRef, Version>>,
    /// Stable queries waiting for their shard to settle (at most [`QUEUE_LEN_MAX`]).
    pub(super) stable_waiting: Cell<usize>,
    /// Called when a shard's persistence frontiers move ([`Service::on_persisted`]).
    pub(super) persist_callbacks: RefCell<Vec<PersistCallback>>,
    /// Where shards' logs go ([`Service::persist_to`]); `None`: nothing is persisted.
    pub(super) persist_dir: RefCell<Option<std::path::PathBuf>>,
    /// The log of each shard this member persists.
    pub(super) logs: RefCell<BTreeMap<ShardRef, Rc<ShardLog>>>,
    /// This member's hybrid logical clock: the time it stamps on its ordered calls.
    pub(super) clock: Cell<crate::persist::HlcClock>,
    /// Set once a log failed: nothing is reported persisted any more.
    pub(super) persist_failed: RefCell<Option<PersistError>>,
    /// The last view saved in the persistence directory.
    pub(super) saved_view: Cell<Option<crate::protocol::ViewId>>,
    /// Views proposed or acknowledged after the last one saved (also on disk).
    pub(super) proposals: RefCell<Vec<(crate::protocol::ViewId, Vec<NodeId>)>>,
    /// The time of the last version delivered in each shard.
    pub(super) times: RefCell<BTreeMap<ShardRef, u64>>,
    /// Persisting services: the times of versions not yet known durable everywhere, and of the
    /// last one that is (for the stable time of queries).
    pub(super) recent_times: RefCell<BTreeMap<ShardRef, VecDeque<(Version, u64)>>>,
    /// Replicas are being rebuilt from the logs (until the service is attached): calls fail
    /// with [`CallError::Replaying`].
    pub(super) replaying: Cell<bool>,
    /// Calls a handler tried while it was replayed (recovery refuses the log).
    pub(super) replay_calls: Cell<usize>,
    /// Per shard: the external clients' calls and replies (exactly once; `sessions`).
    pub(super) sessions: RefCell<BTreeMap<ShardRef, Table>>,
    /// Relayed calls of external clients waiting for their reply, by (shard, client, number).
    pub(super) session_waiters: RefCell<BTreeMap<SessionKey, Vec<Waker>>>,
    /// Relayed calls the shard refused (a retry it cannot judge), with the refusal.
    pub(super) session_refusals: RefCell<BTreeMap<SessionKey, Vec<u8>>>,
    /// Decides which external callers may make which calls ([`Service::authorize`]).
    pub(super) authorize: RefCell<Option<Rc<Authorize>>>,
}

/// An external client's call as [`Service::authorize`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct ExternalCaller<'a> {
    /// The first DNS name of the client's TLS certificate; `None` over plaintext.
    pub identity: Option<&'a str>,
    /// The shard called.
    pub shard: ShardRef,
    /// The method's id in the type's method table.
    pub method: u32,
    /// An ordered call (else a query).
    pub ordered: bool,
}

/// The authorisation of external calls: `Err(why)` refuses one.
pub type Authorize = dyn Fn(&ExternalCaller<'_>) -> Result<(), String>;

/// A relayed call of an external client: its shard, the client, the call's number.
pub(super) type SessionKey = (ShardRef, u64, u64);

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
            proposals: RefCell::default(),
            times: RefCell::default(),
            recent_times: RefCell::default(),
            replaying: Cell::new(false),
            replay_calls: Cell::new(0),
            sessions: RefCell::default(),
            session_waiters: RefCell::default(),
            session_refusals: RefCell::default(),
            authorize: RefCell::default(),
        }
    }
}

/// The replicas of one member, as the [`Application`] of its group. Clone it to keep a handle
/// after giving it to the group.
#[derive(Clone, Default)]
pub struct Service {
    pub(super) inner: Rc<ServiceInner>,
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

    /// Decides, at the member a client is connected to and before anything else happens, which
    /// external calls run: `f` sees the client's identity (its TLS certificate's first DNS name,
    /// `None` over plaintext), the shard, the method and whether the call is ordered. A call it
    /// refuses is answered [`RemoteKind::Unauthorized`] with its reason, and is neither relayed
    /// nor applied anywhere. An ordered call is authorised once, where it enters the group, so
    /// every replica applies the same calls. Handlers see the identity too
    /// ([`CallContext::client`](crate::rpc::CallContext::client)): an ordered call carries it to
    /// every replica. Default: every call runs.
    pub fn authorize(&self, f: impl Fn(&ExternalCaller<'_>) -> Result<(), String> + 'static) -> &Self {
        *self.inner.authorize.borrow_mut() = Some(Rc::new(f));
        self
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
        if std::fs::metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            let why = format!("{} exists and is not a directory: give a directory for the logs", dir.display());
            return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, why));
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create the log directory {}: {e}", dir.display()))
        })?;
        *self.inner.persist_dir.borrow_mut() = Some(dir);
        Ok(self)
    }

    /// Calls `f` with a shard and its frontiers (durable here, durable at every member of the
    /// shard) each time one of them moves. `f` runs inside the group's driver: it must be
    /// quick. It may call the service and the group (a callback it registers runs from the
    /// next move on); anything that waits goes in a spawned task.
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
            restore: Rc::new(|state| T::restore(state).map(|t| Box::new(t) as Box<dyn Hosted>)),
            fingerprint: T::FINGERPRINT,
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
    /// [`StartError::Join`]: as [`crate::driver::GroupBuilder::join`] (a failed start is
    /// [`JoinError::Start`]), [`JoinError::NoQuorum`] if a restart leader's quorum does not come
    /// back in time, [`JoinError::Config`] for a persisting service without partition safety;
    /// [`StartError::Recovery`] if the directory cannot be recovered ([`RecoveryError`]),
    /// including a log whose replay made a call ([`RecoveryError::Replay`]).
    pub async fn start_or_join(
        &self,
        builder: crate::driver::GroupBuilder,
        contact: Option<std::net::SocketAddr>,
    ) -> Result<crate::driver::Group, StartError> {
        let recovered = self.inner.recover().await?;
        let group = match (recovered, contact) {
            // Views acknowledged but none saved, and no contact: nothing to lead a restart
            // with; this member starts a group afresh, as a new member would.
            (Some((offer, _)), None) if !offer.saved_a_view() => {
                tracing::warn!(proposed = ?offer.proposed, "no saved view and no contact: starting afresh");
                if let Some(dir) = self.inner.persist_dir.borrow().clone() {
                    recovery::forget_proposals(&dir).map_err(|e| RecoveryError::io(&dir, e))?;
                }
                self.inner.proposals.borrow_mut().clear();
                builder.start(self.clone()).await.map_err(JoinError::Start)?
            }
            (Some((offer, addresses)), contact) => builder.restart(offer, addresses, contact, self.clone()).await?,
            (None, None) => builder.start(self.clone()).await.map_err(JoinError::Start)?,
            (None, Some(c)) => builder.join(c, self.clone()).await?,
        };
        Ok(group)
    }

    /// Connects the service to its group (once the group started or joined): replies and
    /// queries go out through `sender`.
    pub fn attach(&self, sender: GroupSender) {
        if self.inner.sender.borrow().is_some() {
            return;
        }
        self.inner.replaying.set(false);
        self.inner.set_view(sender.view());
        self.inner.me.set(sender.me());
        *self.inner.sender.borrow_mut() = Some(sender.clone());
        // A log that failed before: this member cannot go on.
        let failed = self.inner.persist_failed.borrow().clone();
        if let Some(e) = failed {
            sender.fatal(&format!("persistence failed: {e}"));
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

    /// The typed client of `T` for `shard` (`TClient`, generated by `#[replicated]`): calls
    /// from this member into the shard's replicas.
    pub fn client<T: Replicated>(&self, shard: ShardRef) -> T::Client {
        T::Client::from(self.handle::<T>(shard))
    }

    /// A handle on `shard` for calls into type `T`.
    pub fn handle<T: Replicated>(&self, shard: ShardRef) -> Handle<T> {
        Handle::new(Rc::downgrade(&self.inner), shard)
    }

    /// Reads this member's replica of `shard` (none if it holds none, or not of type `T`, or
    /// while a handler of the shard has it: from inside one, this answers `None`).
    pub fn read<T: Replicated, R>(&self, shard: ShardRef, f: impl FnOnce(&T) -> R) -> Option<R> {
        let replicas = self.inner.replicas.borrow();
        replicas.get(&shard).and_then(|s| s.replica.as_ref()).and_then(|r| r.as_any().downcast_ref::<T>()).map(f)
    }

    pub(super) fn receive_one(&self, from: NodeId, body: &[u8]) {
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
                    inner.send_error(from, &h, RemoteKind::Overloaded, "too many replies waiting");
                    return;
                }
                let waiting = inner.awaiting.borrow().contains(&h.shard);
                let state = inner.replicas.borrow().get(&h.shard).map(|s| (s.retired, s.queue.len()));
                match state {
                    Some((false, queued)) if !waiting && queued < QUEUE_LEN_MAX => {}
                    Some((false, _)) if !waiting => {
                        inner.send_error(from, &h, RemoteKind::Overloaded, "too many calls waiting");
                        return;
                    }
                    _ => {
                        inner.send_error(
                            from,
                            &h,
                            RemoteKind::NoReplica,
                            "this member holds no replica of the shard (yet)",
                        );
                        return;
                    }
                }
                inner.query(h, from, rest);
            }
            Kind::Repeat => {
                if h.caller != from {
                    return;
                }
                let view = inner.view.borrow().as_ref().map_or(ViewId(0), |v| v.id);
                let again = inner.sent.borrow_mut().get_mut(&from).map_or(Again::Lost, |c| c.again(h.call, view));
                match again {
                    Again::Send(message) => inner.send(from, &message),
                    Again::Coming => {}
                    Again::Lost => {
                        let why = "the reply was lost in a view change and is no longer kept";
                        inner.send_error(from, &h, RemoteKind::ReplyLost, why);
                    }
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
                    Err(CallError::from_remote(from, rest))
                };
                inner.record(h.call, from, reply);
            }
            Kind::Ordered => tracing::warn!(%from, "an ordered call sent point to point: ignored"),
        }
    }
}

impl ServiceInner {
    pub(super) fn set_view(&self, view: Option<View>) {
        *self.shard_members.borrow_mut() =
            view.iter().flat_map(|v| v.shards.iter()).map(|s| (s.id, Rc::from(s.members.as_slice()))).collect();
        *self.view.borrow_mut() = view;
    }
}

/// An external client's reply: a status byte (1 ok, 0 error), then the archived reply or the
/// error's text.
pub(super) fn external_reply(result: Result<AlignedVec, HandlerError>) -> Vec<u8> {
    match result {
        Ok(bytes) => {
            let mut v = Vec::with_capacity(1 + bytes.len());
            v.push(1);
            v.extend_from_slice(&bytes);
            v
        }
        Err(e) => external_error(e.kind(), &e.to_string()),
    }
}

/// What an external client is told when relaying its ordered call failed.
fn relay_error(e: &CallError) -> Vec<u8> {
    match e {
        CallError::Remote { kind, .. } => external_error(*kind, &e.to_string()),
        CallError::Send(GroupSendError::Refused(SendError::TooLarge { len, max })) => {
            let why = format!(
                "the ordered call is a message of {len} bytes (its arguments, the client's session and, \
                 with TLS, its identity), above the group's limit of {max} (limits.payload_len_max)"
            );
            external_error(RemoteKind::TooLarge, &why)
        }
        // Not delivered (a view change), timed out here, the member closing: it may still be
        // applied (a call timed out here is sent again in the next view), and the shard's
        // record answers a second copy with the first reply, so sending it again is safe.
        _ => external_error(RemoteKind::TryAgain, &e.to_string()),
    }
}

/// An external call's error answer: 0, the kind of error, what the member said.
pub(super) fn external_error(kind: RemoteKind, why: &str) -> Vec<u8> {
    [&[0, kind as u8][..], why.as_bytes()].concat()
}

/// An external call's answer, counted among those under way until it is ready.
pub(super) fn counted(count: &Rc<Cell<usize>>, f: impl std::future::Future<Output = Vec<u8>> + 'static) -> State {
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
            let e = HandlerError::Unordered { shard: d.shard };
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
        let (client, args) = if h.flags & FLAG_SESSION == 0 {
            (None, args)
        } else {
            match inner.session_call(d.shard, version, h.caller, args) {
                Some(x) => x,
                None => return,
            }
        };
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
        inner.run_or_queue(h, Some(version), h.caller, args, client);
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
        // The clients' record as of this point; replies of calls still being applied are
        // filled in once the replica's state is taken (after them).
        let table = self.inner.sessions.borrow().get(&shard).cloned().unwrap_or_default();
        let live = Rc::downgrade(&self.inner);
        let frame = move |archive: Vec<u8>| {
            let mut table = table;
            if let Some(inner) = live.upgrade()
                && let Some(now) = inner.sessions.borrow().get(&shard)
            {
                table.fill_from(now);
            }
            framed_state(time, &table.encode(), &archive)
        };
        if !self.inner.replicas.borrow().contains_key(&shard) {
            return State::Ready(frame(Vec::new()));
        }
        if let Some(archived) = self.inner.with_idle_replica(shard, |r| r.snapshot()).ran() {
            return State::Ready(frame(archived.unwrap_or_else(|e| {
                tracing::error!(%shard, error = %e, "the replica's state could not be archived");
                Vec::new()
            })));
        }
        // Async handlers are still applying the old view: the state is taken once they are
        // done, before anything delivered after this point.
        let cell: StateCell = Rc::new(RefCell::new((None, None)));
        self.inner.queue_job(shard, Job::Snapshot(cell.clone()));
        match later(cell) {
            State::Later(f) => State::Later(Box::pin(async move { frame(f.await) })),
            ready => ready,
        }
    }

    fn external(&mut self, request: &[u8]) -> Option<State> {
        let inner = &self.inner;
        let refuse = |kind: RemoteKind, why: &str| Some(State::Ready(external_error(kind, why)));
        let Ok((h, args)) = Header::read(request) else { return refuse(RemoteKind::Other, "not a call") };
        let identity = crate::rpc::external_identity();
        if identity.as_ref().is_some_and(|i| i.len() > IDENTITY_LEN_MAX) {
            return refuse(RemoteKind::Unauthorized, "the client's certificate names it with more than 255 bytes");
        }
        // Taken out of the cell first: the application's function may call back into the service.
        let authorize = inner.authorize.borrow().clone();
        if let Some(f) = authorize {
            let caller = ExternalCaller {
                identity: identity.as_deref(),
                shard: h.shard,
                method: h.method,
                ordered: h.kind == Kind::Ordered,
            };
            if let Err(why) = f(&caller) {
                return refuse(RemoteKind::Unauthorized, &why);
            }
        }
        if inner.external.get() >= EXTERNAL_MAX {
            return refuse(RemoteKind::Overloaded, "too many external calls under way");
        }
        // The client names the type it expects by its fingerprint (0: unchecked).
        let hosted = inner.types.borrow().get(&h.shard.subgroup).map(|t| (t.name, t.fingerprint));
        match hosted {
            Some((name, fingerprint)) if h.version.as_u64() != 0 && h.version.as_u64() != fingerprint => {
                let why = format!("the client expects another type than {name} (or another version of it)");
                return refuse(RemoteKind::TypeMismatch, &why);
            }
            None => return refuse(RemoteKind::NoReplica, "this member hosts no type in the subgroup"),
            Some(_) => {}
        }
        if h.kind == Kind::Ordered {
            // Relayed: this member makes the ordered call on the client's behalf and answers
            // with the version and the reply the shard recorded for the client's call.
            let Some((prefix, None, args)) = (h.flags & FLAG_SESSION != 0).then(|| Prefix::read(args)).flatten() else {
                // A client never names itself: the identity is the one its certificate proves.
                return refuse(RemoteKind::Other, "an external ordered call must carry the client's session, only");
            };
            let me = inner.me.get()?;
            let in_shard = inner
                .view
                .borrow()
                .as_ref()
                .and_then(|v| v.shards.iter().find(|s| s.id == h.shard).map(|s| s.senders.contains(&me)));
            if in_shard != Some(true) {
                return refuse(RemoteKind::NoReplica, "this member cannot send in the shard");
            }
            // A persisting service answers once the call is durable at every member of the
            // shard, unless the client asks for less (or more).
            let persisted = match (h.flags & FLAG_ACK_PERSISTED != 0, h.flags & FLAG_ACK_APPLIED != 0) {
                (true, _) => true,
                (false, true) => false,
                (false, false) => inner.persist_dir.borrow().is_some(),
            };
            let (inner, args) = (inner.clone(), args.to_vec());
            return Some(counted(&self.inner.external, async move {
                let reply = match relay_call(&inner, h.shard, h.method, prefix, identity.as_deref(), &args).await {
                    Ok(reply) => reply,
                    Err(e) => return relay_error(&e),
                };
                if !persisted || reply.first() != Some(&1) || reply.len() < 9 {
                    return reply;
                }
                let version = Version::from_u64(u64::from_le_bytes(reply[1..9].try_into().expect("8 bytes")));
                let Some(sender) = inner.sender.borrow().clone() else {
                    return external_error(RemoteKind::TryAgain, "the member left the group");
                };
                match sender.wait_persisted(h.shard, version, inner.call_timeout.get()).await {
                    Ok(()) => reply,
                    Err(e) => external_error(
                        RemoteKind::NotPersisted,
                        &format!("applied at {version}, but not persisted at every member of {}: {e}", h.shard),
                    ),
                }
            }));
        }
        if h.kind != Kind::Query {
            return refuse(RemoteKind::Other, "external clients send queries and ordered calls only");
        }
        if inner.awaiting.borrow().contains(&h.shard) {
            return refuse(RemoteKind::NoReplica, "this member holds no replica of the shard yet");
        }
        let sync = match inner.replicas.borrow().get(&h.shard) {
            Some(slot) => slot.replica.as_ref().is_some_and(|r| !r.is_async(h.method)),
            None => return refuse(RemoteKind::NoReplica, "this member holds no replica of the shard"),
        };
        let header = Header { caller: EXTERNAL, version: Version::from_u64(inner.stable_time_field(h.shard)), ..h };
        if sync
            && let Some(result) = inner
                .with_idle_replica(h.shard, |r| ServiceInner::run_now(r, header, None, false, args, identity.clone()))
                .ran()
        {
            return Some(State::Ready(external_reply(result)));
        }
        let mut owned = AlignedVec::new();
        owned.extend_from_slice(args);
        let cell: StateCell = Rc::new(RefCell::new((None, None)));
        inner.queue_job(
            h.shard,
            Job::Call {
                header,
                version: None,
                from: EXTERNAL,
                args: owned,
                external: Some(cell.clone()),
                client: identity,
            },
        );
        let State::Later(f) = later(cell) else { unreachable!("later() is a future") };
        Some(counted(&inner.external, f))
    }

    fn restore(&mut self, shard: ShardRef, state: &[u8]) -> Result<(), AppError> {
        let restore = {
            let types = self.inner.types.borrow();
            let Some(t) = types.get(&shard.subgroup) else { return Ok(()) };
            if state.len() < STATE_PREFIX {
                return Err(Box::new(StateError::Short { ty: t.name, len: state.len() }));
            }
            (t.restore.clone(), t.name)
        };
        let (restore, ty) = restore;
        let framed = state;
        let (time, table, state) =
            unframe_state(state).map_err(|reason| Box::new(StateError::Archive { ty, reason }) as AppError)?;
        let replica = restore(state)?;
        self.inner.sessions.borrow_mut().insert(shard, table);
        self.inner.times.borrow_mut().insert(shard, time);
        self.inner.recent_times.borrow_mut().remove(&shard);
        self.inner.replicas.borrow_mut().entry(shard).or_default().replica = Some(replica);
        self.inner.awaiting.borrow_mut().retain(|s| *s != shard);
        // The log starts from the state as it came: time and archive.
        self.inner.open_log(shard, Some(framed));
        Ok(())
    }

    fn attached(&mut self, sender: GroupSender) {
        self.attach(sender);
    }

    fn fingerprint(&self) -> u64 {
        // Every hosted type with its subgroup: members must host the same types in the same
        // subgroups, each with the same method table.
        self.inner.types.borrow().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, (sg, t)| {
            let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
            mix(mix(h, u64::from(sg.0)), t.fingerprint)
        })
    }

    fn persistent(&self) -> bool {
        self.inner.persist_dir.borrow().is_some()
    }

    fn save_proposal(&mut self, id: crate::protocol::ViewId, members: &[NodeId]) -> Result<(), AppError> {
        Ok(self.inner.save_proposal(id, members)?)
    }

    fn save_view(&mut self, view: &View, addresses: &[(NodeId, String)]) -> Result<(), AppError> {
        Ok(self.inner.save_view(view, addresses)?)
    }

    fn resend_failed(&mut self, shard: ShardRef, _count: usize) {
        // Every call of this member into `shard` sent in an earlier view and not delivered was
        // dropped with it: it can no longer send there (or the view has no shards).
        let view = self.inner.view.borrow().as_ref().map(|v| v.id);
        for p in self.inner.pending.borrow_mut().values_mut() {
            if p.shard == shard && p.version.is_none() && p.query.is_none() && p.sent_in.is_some_and(|v| Some(v) < view)
            {
                p.failed.get_or_insert(CallError::NotDelivered(shard));
                p.wake_if_complete();
            }
        }
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
        // Relays of external calls look again (theirs may not have been delivered).
        inner.wake_sessions();
        // Replies kept for members that left will never be asked for again.
        inner.sent.borrow_mut().retain(|caller, cache| {
            cache.installed(change.view.id);
            change.view.members.contains(caller) && !cache.is_empty()
        });
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
                                flags: 0,
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
