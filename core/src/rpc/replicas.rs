//! The replicas of a member's shards and the work on them: each shard's replica in a slot,
//! calls run at once when the replica is idle and synchronous, otherwise queued for the shard's
//! worker, which runs them one at a time, in order, holding the replica while an async handler
//! awaits.

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use rkyv::util::AlignedVec;

use super::CallError;
use super::persistence::{PersistError, framed_state};
use super::replicated::{Applied, HandlerError, Hosted, InContext, StateError, abort_on_panic};
use super::service::{Service, ServiceInner, external_reply};
use super::sessions::Table;
use super::wire::{FLAG_SESSION, Header, Kind, RemoteKind};
use crate::context::{CallContext, with_context};
use crate::driver::State;
use crate::persist::Hlc;
use crate::protocol::{NodeId, ShardRef, Version};

/// What [`ServiceInner::with_idle_replica`] found.
pub(super) enum Idle<R> {
    /// The replica was idle: what the function returned.
    Ran(R),
    /// The replica is busy (running or with work queued).
    Busy,
    /// This member has no replica of the shard.
    NoSlot,
}

impl<R> Idle<R> {
    /// What the function returned, if it ran.
    pub(super) fn ran(self) -> Option<R> {
        match self {
            Idle::Ran(r) => Some(r),
            Idle::Busy | Idle::NoSlot => None,
        }
    }
}

/// The context of a call whose header went through the service: for a delivered ordered
/// call its version field holds the version's time; for a query, the stable time plus one
/// (0: none). `client`: an external client's identity.
pub(super) fn call_context(header: &Header, version: Option<Version>, client: Option<Rc<str>>) -> CallContext {
    let (caller, shard) = (header.caller, header.shard);
    let field = header.version.as_u64();
    if header.kind == Kind::Ordered {
        return CallContext { caller, shard, version, stable: None, time: Some(Hlc(field)), stable_time: None, client };
    }
    let stable = if header.kind == Kind::StableQuery { version } else { None };
    let stable_time = field.checked_sub(1).map(Hlc);
    CallContext { caller, shard, version: None, stable, time: None, stable_time, client }
}

/// One shard's replica, and the calls waiting for it while an async handler runs.
#[derive(Default)]
pub(super) struct Slot {
    /// `None` while a job has it (an async handler under way), or before its state arrives.
    pub(super) replica: Option<Box<dyn Hosted>>,
    pub(super) queue: VecDeque<Job>,
    /// A worker task is draining `queue`.
    pub(super) working: bool,
    /// This member left the shard; the slot stays until its worker has drained the queue (a
    /// snapshot for the shard's new members may be in it), answering no queries.
    pub(super) retired: bool,
}

impl Slot {
    pub(super) fn idle(&self) -> bool {
        self.queue.is_empty() && !self.working && self.replica.is_some()
    }
}

/// Work for a shard's worker, in order.
pub(super) enum Job {
    /// An ordered call (delivered at `version`) or a query, with a copy of its arguments and
    /// its external client's identity.
    Call {
        header: Header,
        version: Option<Version>,
        from: NodeId,
        args: AlignedVec,
        external: Option<StateCell>,
        client: Option<Rc<str>>,
    },
    /// The replica's state once everything before it is applied.
    Snapshot(StateCell),
}

/// Where the worker leaves a snapshot for the task that sends it, and that task's waker.
pub(super) type StateCell = Rc<RefCell<(Option<Vec<u8>>, Option<Waker>)>>;

pub(super) type Make = Box<dyn Fn() -> Box<dyn Hosted>>;
pub(super) type Restore = Rc<dyn Fn(&[u8]) -> Result<Box<dyn Hosted>, StateError>>;

pub(super) struct Registered {
    pub(super) type_id: TypeId,
    pub(super) name: &'static str,
    pub(super) make: Make,
    pub(super) restore: Restore,
    /// [`super::Replicated::FINGERPRINT`] of the type.
    pub(super) fingerprint: u64,
}

/// Queries waiting for a shard's worker; beyond this, more are refused.
pub(super) const QUEUE_LEN_MAX: usize = 1 << 16;

/// Drains a shard's queue: one job at a time, in order, holding the replica while an async
/// handler awaits.
pub(super) async fn worker(inner: Weak<ServiceInner>, shard: ShardRef) {
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
            Job::Call { header, version, from, args, external, client } => {
                let context = call_context(&header, version, client);
                let result = match replica.as_mut() {
                    None => Err(HandlerError::NoReplica { shard }),
                    Some(r) => {
                        let applied = abort_on_panic(|| {
                            with_context(context.clone(), || {
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

/// A future of what a worker leaves in `cell`.
pub(super) fn later(cell: StateCell) -> State {
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

impl ServiceInner {
    /// The slot of `shard`, with a fresh replica if it has none and its type is registered;
    /// `false` if the subgroup hosts no type.
    pub(super) fn ensure_replica(self: &Rc<Self>, replicas: &mut BTreeMap<ShardRef, Slot>, shard: ShardRef) -> bool {
        let types = self.types.borrow();
        let Some(t) = types.get(&shard.subgroup) else { return false };
        let slot = replicas.entry(shard).or_default();
        slot.retired = false;
        if slot.replica.is_none() && !slot.working {
            slot.replica = Some((t.make)());
            // A new replica starts from the type's initial state: its times and log too.
            self.times.borrow_mut().remove(&shard);
            self.recent_times.borrow_mut().remove(&shard);
            self.sessions.borrow_mut().remove(&shard);
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
                Ok(archive) => {
                    let table = self.sessions.borrow().get(&shard).map(Table::encode).unwrap_or_default();
                    self.open_log(shard, Some(&framed_state(time, &table, &archive)));
                }
                Err(e) => self.persistence_failed(PersistError::Snapshot { shard, reason: e.to_string() }),
            }
        }
        true
    }

    /// Runs a query now or after the calls before it; a stable query first waits until what
    /// this member delivered in the shard is delivered at every member of it.
    pub(super) fn query(self: &Rc<Self>, header: Header, from: NodeId, args: &[u8]) {
        let header = Header { version: Version::from_u64(self.stable_time_field(header.shard)), ..header };
        if header.kind != Kind::StableQuery {
            self.run_or_queue(header, None, from, args, None);
            return;
        }
        if self.stopped.get() {
            self.refuse(from, &header, RemoteKind::Stopped, "this member has stopped");
            return;
        }
        if self.stable_waiting.get() >= QUEUE_LEN_MAX {
            self.refuse(from, &header, RemoteKind::Overloaded, "too many stable queries waiting");
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
            self.refuse(from, &header, RemoteKind::Stopped, "the member is not attached to a group");
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
                inner.refuse(
                    from,
                    &header,
                    RemoteKind::NotSettled,
                    &format!("the shard did not settle for a stable query: {e}"),
                );
                return;
            }
            // Things may have changed while it waited.
            let usable = !inner.stopped.get()
                && !inner.awaiting.borrow().contains(&shard)
                && inner.replicas.borrow().get(&shard).is_some_and(|s| !s.retired);
            if usable {
                inner.run_or_queue(header, Some(stable), from, &owned, None);
            } else {
                inner.refuse(
                    from,
                    &header,
                    RemoteKind::NoReplica,
                    "this member no longer holds a replica of the shard",
                );
            }
        }));
    }

    /// Answers a call with an error: recorded for this member's own call, sent to another's.
    pub(super) fn refuse(&self, from: NodeId, header: &Header, kind: RemoteKind, why: &str) {
        if Some(header.caller) == self.me.get() {
            self.record(header.call, header.caller, Err(CallError::Remote { node: from, kind, reason: why.into() }));
        } else {
            self.send_error(from, header, kind, why);
        }
    }

    /// Runs a call now if the shard is idle and the method synchronous (arguments read in place);
    /// otherwise queues it for the shard's worker.
    pub(super) fn run_or_queue(
        self: &Rc<Self>,
        header: Header,
        version: Option<Version>,
        from: NodeId,
        args: &[u8],
        client: Option<&str>,
    ) {
        let ordered = header.kind == Kind::Ordered;
        let client: Option<Rc<str>> = client.map(Rc::from);
        // A synchronous method on an idle replica runs now (an asynchronous one is queued).
        let ran = self.with_idle_replica(header.shard, |r| {
            (!r.is_async(header.method)).then(|| Self::run_now(r, header, version, ordered, args, client.clone()))
        });
        match ran {
            Idle::Ran(Some(result)) => {
                self.finish(header, version, from, result);
                return;
            }
            Idle::NoSlot => return,
            Idle::Ran(None) | Idle::Busy => {}
        }
        if ordered && Some(header.caller) != self.me.get() && header.flags & FLAG_SESSION == 0 {
            self.sent.borrow_mut().entry(header.caller).or_default().working_on(header.call);
        }
        let mut owned = AlignedVec::new();
        owned.extend_from_slice(args);
        self.queue_job(header.shard, Job::Call { header, version, from, args: owned, external: None, client });
    }

    /// Queues a job for the worker of `shard`, starting it if none runs.
    pub(super) fn queue_job(self: &Rc<Self>, shard: ShardRef, job: Job) {
        let mut replicas = self.replicas.borrow_mut();
        let Some(slot) = replicas.get_mut(&shard) else { return };
        slot.queue.push_back(job);
        if !slot.working {
            slot.working = true;
            drop(crate::spawn(worker(Rc::downgrade(self), shard)));
        }
    }

    /// Runs `f` on the replica of `shard` if it is idle, with no borrow of the service held
    /// (a handler may call back into the service); `None` if it is not idle. Work queued
    /// meanwhile goes to the shard's worker afterwards.
    pub(super) fn with_idle_replica<R>(
        self: &Rc<Self>,
        shard: ShardRef,
        f: impl FnOnce(&mut dyn Hosted) -> R,
    ) -> Idle<R> {
        let mut replica = {
            let mut replicas = self.replicas.borrow_mut();
            let Some(slot) = replicas.get_mut(&shard) else { return Idle::NoSlot };
            if !slot.idle() {
                return Idle::Busy;
            }
            slot.working = true;
            slot.replica.take().expect("an idle slot has its replica")
        };
        let out = f(&mut *replica);
        let mut replicas = self.replicas.borrow_mut();
        if let Some(slot) = replicas.get_mut(&shard) {
            slot.replica = Some(replica);
            slot.working = false;
            if !slot.queue.is_empty() {
                slot.working = true;
                drop(crate::spawn(worker(Rc::downgrade(self), shard)));
            }
        }
        Idle::Ran(out)
    }

    /// Runs a synchronous handler on an idle slot's replica, reading the arguments in place.
    pub(super) fn run_now(
        r: &mut dyn Hosted,
        header: Header,
        version: Option<Version>,
        ordered: bool,
        args: &[u8],
        client: Option<Rc<str>>,
    ) -> Result<AlignedVec, HandlerError> {
        let context = call_context(&header, version, client);
        let applied =
            with_context(context, || if ordered { r.apply(header.method, args) } else { r.query(header.method, args) });
        match applied {
            Applied::Now(r) => r,
            // The method table said synchronous: a type implemented by hand that lies.
            Applied::Later(_) => Err(HandlerError::NotSynchronous { method: header.method }),
        }
    }

    /// Sends (or, for this member's own call, records) the reply of a call.
    pub(super) fn finish(
        &self,
        h: Header,
        version: Option<Version>,
        from: NodeId,
        result: Result<AlignedVec, HandlerError>,
    ) {
        if h.flags & FLAG_SESSION != 0
            && let Some(version) = version
        {
            // An external client's call: its reply goes in the shard's record of the client,
            // where the relaying member takes it; no member waits for it.
            self.session_answered(h.shard, version, &result);
            if let Ok(reply) = result {
                super::support::recycle(reply);
            }
            return;
        }
        if Some(h.caller) == self.me.get() {
            let reply = result.map_err(|e| CallError::Remote { node: h.caller, kind: e.kind(), reason: e.to_string() });
            self.record(h.call, h.caller, reply);
            return;
        }
        if h.kind == Kind::Ordered {
            // A view change can lose a reply already sent (its transport closes before the
            // caller reads it): keep it for the caller to ask again.
            self.send_kept(from, &h, version, &result);
        } else {
            match &result {
                Ok(reply) => {
                    let header = Header { kind: Kind::Reply, version: version.unwrap_or(Version::from_u64(0)), ..h };
                    self.send_parts(from, &header, reply);
                }
                Err(e) => self.send_error(from, &h, e.kind(), &e.to_string()),
            }
        }
        // Its bytes are in the outgoing frame (and the reply cache): the buffer serves again.
        if let Ok(reply) = result {
            super::support::recycle(reply);
        }
    }
}

impl Service {
    /// Creates the replicas of the shards this member is in (except those whose state is on
    /// its way), drops those of shards it left.
    pub(super) fn refresh_replicas(&self) {
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
}
