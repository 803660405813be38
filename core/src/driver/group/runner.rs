//! The runner: executes a [`Member`]'s commands on transports, timers and the listener, feeds
//! what happens back as inputs, and tells the application. It decides nothing.
//!
//! One loop ([`Inner::step`]): with the member borrowed, handle the time (rules, timers),
//! deliver, and take every command and event out, running the I/O ones at once (pushes,
//! sends, connects: no application code); then, with nothing borrowed, call the application
//! for the rest (saves, snapshots, restores, view changes, stops) and feed its answers back.
//! So an application may call back into the group from any upcall; only from a delivery,
//! which borrows the table, does a call that needs the member answer a typed error.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use derecho_runtime::transport::tcp::{TcpAcceptor, send_message};
use derecho_runtime::transport::{AnyTransport, Payload, PeerId, Transport, TransportError, TransportEvent};
use derecho_runtime::{AlignedBuf, JoinHandle, spawn};

use super::app::{Application, State, ViewChange};
use super::builder::{Settings, control_tag};
use crate::driver::{EventBox, GroupError, GroupEvent, RegionMemory, push_range, since};
use crate::protocol::member::{Command, Event, Input, Member, Stage};
use crate::protocol::membership::GmsStep;
use crate::protocol::wire::{APP_FRAME_HEADER_LEN, APP_FRAME_KIND};
use crate::protocol::{NodeId, Progress, ShardRef, StopReason, Time, Version, View, ViewId};

/// A shard's persistence frontiers: durable here, durable at every member.
pub(super) type Frontiers = (Option<Version>, Option<Version>);

/// What the application and the public handles may read without touching the member (it may
/// be borrowed by a delivery in progress).
#[derive(Default)]
pub(super) struct Published {
    /// The current view (`None` before the first).
    pub(super) view: Option<Rc<View>>,
    /// Why the current view has no shards, if it is inadequate.
    pub(super) inadequate: Option<String>,
    /// Why the member stopped.
    pub(super) stopped: Option<StopReason>,
    /// A view change is under way.
    pub(super) changing: bool,
    /// The frontiers of this member's shards in the current view.
    pub(super) frontiers: BTreeMap<ShardRef, Frontiers>,
}

/// A shard's counters since the member started, and the node's count when last read.
#[derive(Clone, Copy, Debug)]
struct ShardCount {
    shard: ShardRef,
    /// Messages this member sent in it.
    sent: u64,
    /// Messages delivered here.
    delivered: u64,
    /// The view and the node's delivered count in it when last read.
    seen: (ViewId, u64),
}

/// The entry of `shard` in `counts` (added if missing).
fn count_of(counts: &mut Vec<ShardCount>, shard: ShardRef) -> &mut ShardCount {
    let i = match counts.iter().position(|c| c.shard == shard) {
        Some(i) => i,
        None => {
            counts.push(ShardCount { shard, sent: 0, delivered: 0, seen: (ViewId(0), 0) });
            counts.len() - 1
        }
    };
    &mut counts[i]
}

/// Node ids as a list for logs: `[0, 1, 2]`.
fn ids(members: &[NodeId]) -> String {
    format!("[{}]", members.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(", "))
}

/// A view's transport while it is open, with the view's members.
type OpenView = (Rc<AnyTransport>, Vec<NodeId>);

/// Work for the application, taken out of the member and done with nothing borrowed.
enum Deferred {
    Event(Event),
    Save(Command),
}

pub(super) struct Inner {
    pub(super) settings: Settings,
    pub(super) acceptor: TcpAcceptor,
    epoch: Instant,
    pub(super) member: RefCell<Member<RegionMemory>>,
    pub(super) app: RefCell<Box<dyn Application>>,
    /// The transport of each view still open (the current one, and those lingering), with the
    /// view's members.
    transports: RefCell<BTreeMap<ViewId, OpenView>>,
    /// The transport pushes go to, and its view.
    current: RefCell<Option<(ViewId, Rc<AnyTransport>)>>,
    pub(super) published: RefCell<Published>,
    /// Inputs that arrived while the member was borrowed (from inside an upcall): fed at the
    /// next step.
    queued: RefCell<VecDeque<Input<RegionMemory>>>,
    /// Peers of the current transport that closed or failed.
    pub(super) gone: RefCell<Vec<NodeId>>,
    /// External clients' sessions.
    pub(super) sessions: super::sessions::Sessions,
    pub(super) events: EventBox,
    /// Tasks waiting on progress, view changes, entering and stops.
    pub(super) waiters: RefCell<Vec<Waker>>,
    progress: RefCell<Progress>,
    pub(super) closed: Cell<bool>,
    pub(super) tasks: RefCell<Vec<JoinHandle<()>>>,
    /// The task reading each open view transport's events.
    pub(super) view_tasks: RefCell<Vec<(ViewId, JoinHandle<()>)>>,
    /// When each lingering view was last beaten on.
    beats: RefCell<BTreeMap<ViewId, Instant>>,
    /// Scratch of `step`.
    push_peers: RefCell<Vec<PeerId>>,
    push_errors: RefCell<Vec<(PeerId, TransportError)>>,
    deferred: RefCell<Vec<Deferred>>,
    /// Frontiers moved that the application has not been told of (it was busy).
    untold: Cell<bool>,
    /// The frontiers the application was last told of.
    told: RefCell<BTreeMap<ShardRef, Frontiers>>,
    /// Entering the first view failed: why (taken by the task that waits for it).
    pub(super) enter_error: RefCell<Option<super::JoinError>>,
    /// The last view transport that could not be set up.
    connect_error: RefCell<Option<GroupError>>,
    /// A step is running.
    stepping: Cell<bool>,
    /// Application frames that arrived on the transport of a view not installed here yet (a
    /// peer that installed it first already sends in it), with their total bytes: handed to
    /// the application once that view is installed.
    early: RefCell<(Vec<EarlyFrame>, usize)>,
    /// `member{id, view}`: entered while a step runs, so every event of the member names it;
    /// replaced at each view installed.
    span: RefCell<tracing::Span>,
    /// Per shard: messages sent here and messages delivered here, since the member started
    /// (delivered ones counted per step from the node's own counter, never per delivery: the
    /// delivery loop stays as tight as the application's upcall).
    counts: RefCell<Vec<ShardCount>>,
    /// Views installed here.
    views_installed: Cell<u64>,
    /// What the member last said it waits for, and when it last said so at info (cleared once
    /// a view is installed).
    waiting: RefCell<Option<(String, Instant)>>,
    /// Where the metrics listener listens, if there is one.
    pub(super) metrics_addr: Cell<Option<SocketAddr>>,
}

/// An application frame held until its view is installed: the view, the sender, the frame.
type EarlyFrame = (ViewId, NodeId, AlignedBuf);

/// Bytes of application frames held for a view not yet installed; beyond this, more are dropped
/// (the callers time out or ask again).
const EARLY_BYTES_MAX: usize = 64 << 20;

impl Inner {
    pub(super) fn new(
        settings: Settings,
        acceptor: TcpAcceptor,
        member: Member<RegionMemory>,
        app: Box<dyn Application>,
    ) -> Self {
        let span = RefCell::new(tracing::info_span!(parent: None, "member", id = settings.me.0));
        Self {
            settings,
            acceptor,
            epoch: Instant::now(),
            member: RefCell::new(member),
            app: RefCell::new(app),
            transports: RefCell::default(),
            current: RefCell::default(),
            published: RefCell::default(),
            queued: RefCell::default(),
            gone: RefCell::default(),
            sessions: super::sessions::Sessions::default(),
            events: EventBox::default(),
            waiters: RefCell::default(),
            progress: RefCell::default(),
            closed: Cell::new(false),
            tasks: RefCell::default(),
            view_tasks: RefCell::default(),
            beats: RefCell::default(),
            push_peers: RefCell::default(),
            push_errors: RefCell::default(),
            deferred: RefCell::default(),
            untold: Cell::new(false),
            told: RefCell::default(),
            enter_error: RefCell::default(),
            connect_error: RefCell::default(),
            stepping: Cell::new(false),
            early: RefCell::default(),
            span,
            counts: RefCell::default(),
            views_installed: Cell::new(0),
            waiting: RefCell::default(),
            metrics_addr: Cell::new(None),
        }
    }

    /// The member's span (`member{id, view}`), for events emitted outside a step.
    pub(super) fn span(&self) -> tracing::Span {
        self.span.borrow().clone()
    }

    /// Adds what the node delivered since it was last read, per shard of this member (called
    /// after a delivery, in the view it delivered in).
    fn count_delivered(&self, member: &Member<RegionMemory>) {
        let Some(node) = member.node() else { return };
        let (me, view) = (self.settings.me, node.view().id);
        let mut counts = self.counts.borrow_mut();
        for s in node.view().shards.iter().filter(|s| s.members.contains(&me)) {
            let Some(now) = node.messages_delivered(s.id) else { continue };
            let c = count_of(&mut counts, s.id);
            let before = if c.seen.0 == view { c.seen.1 } else { 0 };
            c.delivered += now.saturating_sub(before);
            c.seen = (view, now);
        }
    }

    /// A message this member sent in `shard`.
    pub(super) fn count_sent(&self, shard: ShardRef) {
        count_of(&mut self.counts.borrow_mut(), shard).sent += 1;
    }

    /// See [`super::Group::metrics`].
    pub(super) fn metrics(&self) -> super::metrics::Metrics {
        let me = self.settings.me;
        let published = self.published.borrow();
        let member = self.member.try_borrow().ok();
        let in_flight = |shard| member.as_ref().and_then(|m| m.node()?.in_flight(shard));
        let stage = match &member {
            Some(m) => m.stage(),
            // Borrowed by a delivery in progress: it runs in a view.
            None if published.stopped.is_some() => Stage::Stopped,
            None if published.changing => Stage::Wedged,
            None => Stage::Running,
        };
        let view = published.view.clone();
        let counts = self.counts.borrow();
        let mut shards: Vec<super::metrics::ShardMetrics> = Vec::new();
        let mine = view.iter().flat_map(|v| v.shards.iter()).filter(|s| s.members.contains(&me));
        for s in mine {
            let (sent, delivered) = counts.iter().find(|c| c.shard == s.id).map_or((0, 0), |c| (c.sent, c.delivered));
            let (here, everywhere) = published.frontiers.get(&s.id).copied().unwrap_or_default();
            shards.push(super::metrics::ShardMetrics {
                shard: s.id,
                members: s.members.clone(),
                sent,
                delivered,
                persisted_here: here,
                persisted_everywhere: everywhere,
                in_flight: in_flight(s.id),
            });
        }
        for &ShardCount { shard: id, sent, delivered, .. } in counts.iter() {
            if !shards.iter().any(|s| s.shard == id) {
                shards.push(super::metrics::ShardMetrics {
                    shard: id,
                    members: Vec::new(),
                    sent,
                    delivered,
                    persisted_here: None,
                    persisted_everywhere: None,
                    in_flight: None,
                });
            }
        }
        super::metrics::Metrics {
            me,
            stage,
            waiting: self.waiting.borrow().as_ref().map(|(w, _)| w.clone()),
            view: view.as_ref().map(|v| v.id),
            members: view.as_ref().map(|v| v.members.clone()).unwrap_or_default(),
            rank: view.as_ref().and_then(|v| v.rank_of(me)),
            views_installed: self.views_installed.get(),
            shards,
            held_bytes: self.early.borrow().1 as u64,
            executor: derecho_runtime::loop_stats(),
        }
    }

    pub(super) fn now(&self) -> Time {
        since(self.epoch)
    }

    pub(super) fn wake_all(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Feeds an input and runs a step; from inside a step (an upcall), the step under way
    /// takes it.
    pub(super) fn feed(self: &Rc<Self>, input: Input<RegionMemory>) {
        if self.closed.get() {
            return;
        }
        self.queued.borrow_mut().push_back(input);
        self.step();
    }

    /// Calls the application from outside a step (a frame arrived, a control message, the
    /// group attached): inputs it feeds meanwhile (a report, a failure, a fatal error) are
    /// queued as during a step's upcalls, and a step takes them once it returns. `None` if
    /// the application is busy (never from a task: every upcall returns before another runs).
    pub(super) fn upcall<R>(self: &Rc<Self>, f: impl FnOnce(&mut dyn Application) -> R) -> Option<R> {
        let nested = self.stepping.replace(true);
        let span = self.span();
        let _span = span.enter();
        let r = self.app.try_borrow_mut().ok().map(|mut app| f(&mut **app));
        self.stepping.set(nested);
        if !nested && !self.queued.borrow().is_empty() {
            self.step();
        }
        r
    }

    /// The one command loop: see the module documentation. Returns how much happened. Not
    /// re-entered: a step started from inside an upcall of another returns at once, and the
    /// outer one takes what was queued meanwhile.
    pub(super) fn step(self: &Rc<Self>) -> usize {
        if self.stepping.replace(true) {
            return 0;
        }
        let span = self.span();
        let _span = span.enter();
        let done = self.step_rounds();
        self.stepping.set(false);
        done
    }

    fn step_rounds(self: &Rc<Self>) -> usize {
        let mut done = 0;
        // Bounded: each round feeds the application's answers back; a few rounds settle it.
        for _ in 0..16 {
            if self.closed.get() {
                return done;
            }
            let Ok(mut member) = self.member.try_borrow_mut() else { return done };
            let now = self.now();
            while let Some(input) = self.queued.borrow_mut().pop_front() {
                member.handle(now, input);
            }
            member.handle(now, Input::Tick);
            done += match self.app.try_borrow_mut() {
                Ok(mut app) => {
                    let n = member.deliver(|d| app.deliver(d));
                    if n > 0 {
                        self.count_delivered(&member);
                    }
                    n
                }
                Err(_) => 0,
            };
            let mut deferred = std::mem::take(&mut *self.deferred.borrow_mut());
            while let Some(c) = member.poll_command() {
                done += 1;
                match c {
                    Command::SaveProposal { .. } | Command::SaveView { .. } => deferred.push(Deferred::Save(c)),
                    c => self.run(&member, c),
                }
            }
            while let Some(e) = member.poll_event() {
                deferred.push(Deferred::Event(e));
            }
            let (moved, frontiers_moved) = self.published_moved(&member);
            drop(member);
            if moved {
                self.wake_all();
            }
            if frontiers_moved || self.untold.get() {
                self.tell_frontiers();
            }
            if deferred.is_empty() && self.queued.borrow().is_empty() {
                *self.deferred.borrow_mut() = deferred;
                return done;
            }
            for d in deferred.drain(..) {
                self.dispatch(d);
            }
            *self.deferred.borrow_mut() = deferred;
            // Something changed that waiters may wait for (a view, a state restored, a stop).
            self.wake_all();
        }
        done
    }

    /// Updates what the handles read; returns whether something waiters wait for moved, and
    /// whether a frontier of this member's shards did.
    fn published_moved(&self, member: &Member<RegionMemory>) -> (bool, bool) {
        let Some(node) = member.node() else { return (false, false) };
        let mut progress = self.progress.borrow_mut();
        let frontier_moves = progress.frontier_moves;
        let moved = node.update_progress(&mut progress);
        let frontiers_may_have_moved = progress.frontier_moves != frontier_moves;
        drop(progress);
        let changing = member.is_changing_view();
        let mut p = self.published.borrow_mut();
        let changed = p.changing != changing;
        p.changing = changing;
        let mut frontiers_moved = false;
        if frontiers_may_have_moved {
            let me = self.settings.me;
            let mine = node.view().shards.iter().filter(|s| s.members.contains(&me));
            // Shards this member left (at a view change) have no frontiers here any more.
            p.frontiers.retain(|id, _| mine.clone().any(|s| s.id == *id));
            for s in mine {
                let f = (node.persisted_here(s.id), node.persisted_everywhere(s.id));
                frontiers_moved |= p.frontiers.insert(s.id, f) != Some(f);
            }
        }
        (moved || changed, frontiers_moved)
    }

    /// Tells the application of the frontiers that moved since it was last told (PROTOCOLS
    /// §4); if it is busy, at a later step.
    fn tell_frontiers(&self) {
        let moved: Vec<(ShardRef, Frontiers)> = {
            let (p, told) = (self.published.borrow(), self.told.borrow());
            p.frontiers
                .iter()
                .filter(|(s, f)| **f != (None, None) && told.get(s) != Some(f))
                .map(|(s, f)| (*s, *f))
                .collect()
        };
        let Ok(mut app) = self.app.try_borrow_mut() else {
            self.untold.set(true);
            return;
        };
        self.untold.set(false);
        for (shard, (local, global)) in moved {
            self.told.borrow_mut().insert(shard, (local, global));
            app.persisted(shard, local, global);
        }
    }

    /// Runs an I/O command (no application code).
    fn run(self: &Rc<Self>, member: &Member<RegionMemory>, c: Command) {
        match c {
            Command::Push { range, to } => {
                let Some(t) = self.current_transport(member) else { return };
                push_range(&*t, &self.push_peers, &self.push_errors, range, &to, |peer, e| {
                    // A failed peer is suspected through its transport event.
                    tracing::trace!(%peer, error = %e, "push not sent");
                });
            }
            Command::SendFrames { view, to, frames } => {
                let Some(t) = self.transport_of(view) else { return };
                self.spawn_task(async move {
                    'members: for m in to {
                        for f in &frames {
                            if let Err(e) = t.send_frame(PeerId(m.0), Payload::Vec(f.clone())).await {
                                tracing::warn!(to = %m, error = %e, "frames not sent");
                                continue 'members;
                            }
                        }
                    }
                });
            }
            Command::SendControl { to, message, report } => self.send_control(to, message, report),
            Command::Connect { next } => {
                let weak = Rc::downgrade(self);
                self.spawn_task(async move {
                    let Some(inner) = weak.upgrade() else { return };
                    let result = inner.settings.connect(&inner.acceptor, &next.view, &next.addresses).await;
                    let view = next.view.id;
                    match result {
                        Ok((transport, region)) => {
                            if inner.closed.get() {
                                transport.close(Duration::ZERO).await;
                                return;
                            }
                            inner.transports.borrow_mut().insert(view, (transport.clone(), next.view.members.clone()));
                            let events = spawn(events(Rc::downgrade(&inner), transport, view));
                            inner.view_tasks.borrow_mut().push((view, events));
                            inner.feed(Input::Connected { view, memory: RegionMemory::new(region) });
                        }
                        Err(e) => {
                            tracing::error!(view = view.0, error = %e, "cannot set up a view's transport");
                            let reason = e.to_string();
                            *inner.connect_error.borrow_mut() = Some(e);
                            inner.feed(Input::ConnectFailed { view, reason });
                        }
                    }
                });
            }
            Command::Beat { view, to, frame } => {
                let Some(t) = self.transport_of(view) else { return };
                let now = Instant::now();
                let last = self.beats.borrow_mut().insert(view, now);
                let heard: Vec<NodeId> = to
                    .iter()
                    .copied()
                    .filter(|m| t.last_heard(PeerId(m.0)).is_some_and(|h| last.is_none_or(|l| h > l)))
                    .collect();
                if !heard.is_empty() {
                    self.queued.borrow_mut().push_back(Input::HeardOnOldView { view, peers: heard });
                }
                self.spawn_task(async move {
                    for m in to {
                        let _ = t.send_frame(PeerId(m.0), Payload::Vec(frame.clone())).await;
                    }
                });
            }
            Command::CloseView { view, members } => self.close_view(view, members),
            Command::SaveProposal { .. } | Command::SaveView { .. } => unreachable!("deferred by step"),
        }
    }

    /// The transport of the member's current view.
    fn current_transport(&self, member: &Member<RegionMemory>) -> Option<Rc<AnyTransport>> {
        let view = member.view()?.id;
        let mut current = self.current.borrow_mut();
        if current.as_ref().is_none_or(|(v, _)| *v != view) {
            let t = self.transport_of(view)?;
            *current = Some((view, t));
            self.gone.borrow_mut().clear();
        }
        current.as_ref().map(|(_, t)| t.clone())
    }

    /// Closes the transport of an earlier view and stops reading it.
    fn close_view(self: &Rc<Self>, view: ViewId, members: Vec<NodeId>) {
        self.beats.borrow_mut().remove(&view);
        let Some((t, _)) = self.transports.borrow_mut().remove(&view) else { return };
        let mut tasks = self.view_tasks.borrow_mut();
        if let Some(i) = tasks.iter().position(|(v, _)| *v == view) {
            tasks.remove(i).1.abort();
        }
        drop(tasks);
        let weak = Rc::downgrade(self);
        self.spawn_task(async move {
            t.close(Duration::from_millis(50)).await;
            if let Some(inner) = weak.upgrade() {
                inner.settings.remove_dead_files(view, &members);
            }
        });
    }

    /// Sends a control message to a listener in the background; with `report`, its delivery
    /// is fed back.
    fn send_control(self: &Rc<Self>, to: String, message: Rc<[u8]>, report: bool) {
        let me = PeerId(self.settings.me.0);
        let tag = control_tag(&self.settings.name);
        let within = self.settings.connect_timeout;
        let tls = self.settings.tls.clone();
        let weak = Rc::downgrade(self);
        self.spawn_task(async move {
            let sent = match to.parse::<SocketAddr>() {
                Ok(addr) => match send_message(me, addr, tag, &message, within, tls.as_ref()).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "control message not delivered");
                        false
                    }
                },
                Err(_) => {
                    tracing::warn!(address = %to, "a control message to an address that does not parse");
                    false
                }
            };
            if report && let Some(inner) = weak.upgrade() {
                inner.feed(if sent { Input::ControlSent { to } } else { Input::ControlNotSent { to } });
            }
        });
    }

    /// Runs `f` until the group closes.
    pub(super) fn spawn_task(&self, f: impl std::future::Future<Output = ()> + 'static) {
        let mut tasks = self.tasks.borrow_mut();
        tasks.retain(|t| !t.is_finished());
        tasks.push(spawn(f));
    }

    /// Does work for the application, with nothing borrowed; feeds its answers back.
    fn dispatch(self: &Rc<Self>, d: Deferred) {
        match d {
            Deferred::Save(Command::SaveProposal { view, members }) => {
                let saved = self.app.borrow_mut().save_proposal(view, &members);
                self.answer(match saved {
                    Ok(()) => Input::ProposalSaved { view, members },
                    Err(e) => Input::SaveFailed {
                        reason: format!("view {} could not be saved before acknowledging it: {e}", view.0),
                    },
                });
            }
            Deferred::Save(Command::SaveView { view, addresses }) => {
                if let Err(e) = self.app.borrow_mut().save_view(&view, &addresses) {
                    self.answer(Input::SaveFailed { reason: format!("view {} could not be saved: {e}", view.id.0) });
                }
            }
            Deferred::Save(_) => unreachable!("only saves are deferred"),
            Deferred::Event(e) => match e {
                Event::Step(GmsStep::Suspected(peer)) => tracing::info!(%peer, "suspects a member failed"),
                Event::Step(GmsStep::Wedged) => tracing::info!("wedged: a view change is under way"),
                Event::Step(step) => tracing::debug!(?step, "view change step"),
                Event::Installed(change) => self.installed(change),
                Event::TakeSnapshot { view, shard } => match self.app.borrow_mut().snapshot(shard) {
                    State::Ready(state) => self.answer(Input::SnapshotTaken { view, shard, state: Some(state) }),
                    State::Later(f) => {
                        self.answer(Input::SnapshotTaken { view, shard, state: None });
                        let weak = Rc::downgrade(self);
                        self.spawn_task(async move {
                            let state = f.await;
                            if let Some(inner) = weak.upgrade() {
                                inner.feed(Input::SnapshotTaken { view, shard, state: Some(state) });
                            }
                        });
                    }
                },
                Event::Restore { view, shard, from, state } => {
                    let restored = self.app.borrow_mut().restore(shard, &state);
                    match restored {
                        Ok(()) => {
                            tracing::info!(%shard, len = state.len(), %from, "state received");
                            self.answer(Input::StateRestored { view, shard });
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            self.events.report(GroupEvent::StateRejected { shard, from, reason: reason.clone() });
                            self.answer(Input::StateRefused { view, shard, from, reason });
                        }
                    }
                }
                Event::StateRejected { shard, from, reason } => {
                    tracing::warn!(%shard, %from, %reason, "a state rejected");
                    self.events.report(GroupEvent::StateRejected { shard, from, reason });
                }
                Event::StateNotSent { shard, reason } => tracing::error!(%shard, %reason, "a state not sent"),
                Event::Violation { peer, what } => {
                    tracing::warn!(%peer, %what, "a peer broke the protocol");
                    self.events.report(GroupEvent::Violation { peer, what });
                }
                Event::ResendFailed { shard, count } => {
                    self.app.borrow_mut().resend_failed(shard, count);
                    self.events.report(GroupEvent::ResendFailed { shard, count });
                }
                Event::Waiting(what) => {
                    // Said at info when it changes, and again at most once a second (a contact
                    // that refuses connections is asked again every 50 ms).
                    let now = Instant::now();
                    let mut waiting = self.waiting.borrow_mut();
                    match waiting.as_mut() {
                        Some((w, at)) if *w == what && now.duration_since(*at) < Duration::from_secs(1) => {
                            tracing::debug!("waiting: {what}");
                        }
                        _ => {
                            tracing::info!("waiting: {what}");
                            *waiting = Some((what, now));
                        }
                    }
                }
                Event::EnterFailed(e) => {
                    tracing::error!(error = %e, "could not enter the group");
                    let connect = self.connect_error.borrow_mut().take();
                    *self.enter_error.borrow_mut() = Some(super::JoinError::from_enter(e, connect));
                    self.wake_all();
                }
                Event::Stopped(reason) => self.stopped(reason),
            },
        }
    }

    /// Feeds an answer of the application.
    fn answer(&self, input: Input<RegionMemory>) {
        self.queued.borrow_mut().push_back(input);
    }

    fn installed(self: &Rc<Self>, change: ViewChange) {
        // A root span of its own (not a child of the one entered now, which would nest them).
        *self.span.borrow_mut() =
            tracing::info_span!(parent: None, "member", id = self.settings.me.0, view = change.view.id.0);
        self.views_installed.set(self.views_installed.get() + 1);
        *self.waiting.borrow_mut() = None;
        // In the new view's span (the step under way entered the old one).
        self.span().in_scope(|| {
            tracing::info!(
                members = %ids(&change.view.members),
                shards = %change.view.shards.iter().map(|s| format!("{}: {}", s.id, ids(&s.members))).collect::<Vec<_>>().join(", "),
                "view installed"
            )
        });
        {
            let mut p = self.published.borrow_mut();
            p.view = Some(Rc::new(change.view.clone()));
            p.inadequate = change.inadequate.clone();
        }
        self.app.borrow_mut().view_installed(&change);
        let id = change.view.id;
        let held = {
            let mut early = self.early.borrow_mut();
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut early.0).into_iter().partition(|e| e.0 <= id);
            early.1 = later.iter().map(|e| e.2.len()).sum();
            early.0 = later;
            now
        };
        for (_, from, frame) in held.into_iter().filter(|e| e.0 == id) {
            self.app.borrow_mut().receive(from, &frame[APP_FRAME_HEADER_LEN..]);
        }
        self.events.report(GroupEvent::ViewInstalled(change));
        self.wake_all();
    }

    /// The member stopped: the application is told, waiting calls fail; a member that failed
    /// (it broke a promise the group relies on) also closes its connections and its listener
    /// at once, so that the others see it fail and clients go elsewhere.
    fn stopped(self: &Rc<Self>, reason: StopReason) {
        self.published.borrow_mut().stopped = Some(reason.clone());
        self.app.borrow_mut().stopped();
        if let StopReason::Failed(why) = &reason {
            tracing::error!(reason = %why, "this member stops");
            self.closed.set(true);
            // Nothing is served any more: clients go to other members at once.
            self.acceptor.stop();
            self.sessions.close_all();
            self.events.report(GroupEvent::Fatal(why.clone()));
            let open: Vec<Rc<AnyTransport>> = self.transports.borrow().values().map(|(t, _)| t.clone()).collect();
            drop(spawn(async move {
                for t in open {
                    t.close(Duration::ZERO).await;
                }
            }));
        } else {
            tracing::info!(%reason, "stopped");
            self.events.report(GroupEvent::Stopped(reason));
        }
        self.wake_all();
    }

    /// A control message reached the listener.
    pub(super) fn control(self: &Rc<Self>, from: PeerId, body: &[u8]) {
        let span = self.span();
        let _span = span.enter();
        let rest = {
            let Ok(mut member) = self.member.try_borrow_mut() else {
                tracing::debug!("a control message while the member is busy: dropped (its sender asks again)");
                return;
            };
            member.handle_control(self.now(), NodeId(from.0), body)
        };
        match rest {
            None => {}
            Some(other) => tracing::debug!(?other, "ignored a control message"),
        }
    }

    /// An event of the transport of `view`.
    fn transport_event(self: &Rc<Self>, view: ViewId, ev: TransportEvent) {
        let span = self.span();
        let _span = span.enter();
        let current = self.published.borrow().view.as_ref().is_some_and(|v| v.id == view);
        match ev {
            TransportEvent::PeerFailed { peer, reason } => {
                if current {
                    self.gone.borrow_mut().push(NodeId(peer.0));
                    self.wake_all();
                    self.events.report(GroupEvent::PeerFailed { peer: NodeId(peer.0), reason });
                }
                self.feed(Input::PeerFailed { view, peer: NodeId(peer.0) });
            }
            TransportEvent::Frame { from, frame } if frame.first() == Some(&APP_FRAME_KIND) => {
                let peer = NodeId(from.0);
                if frame.len() < APP_FRAME_HEADER_LEN {
                    self.events
                        .report(GroupEvent::Violation { peer, what: "an application frame without its header".into() });
                    self.feed(Input::ReportFailure(peer));
                    return;
                }
                if current {
                    self.upcall(|app| app.receive(peer, &frame[APP_FRAME_HEADER_LEN..]));
                    return;
                }
                let installed = self.published.borrow().view.as_ref().map(|v| v.id);
                if installed.is_some_and(|v| v > view) {
                    return; // sent in an earlier view: the sender asks again if it must
                }
                let mut early = self.early.borrow_mut();
                if early.1 + frame.len() > EARLY_BYTES_MAX {
                    tracing::warn!(%peer, view = view.0, "too many bytes sent in a view not installed yet: a frame dropped");
                    return;
                }
                early.1 += frame.len();
                early.0.push((view, peer, frame.into_buf()));
            }
            TransportEvent::Frame { from, frame } => {
                let now = self.now();
                match self.member.try_borrow_mut() {
                    Ok(mut m) => m.handle_frame(now, view, NodeId(from.0), &frame),
                    Err(_) => tracing::debug!("a view frame while the member is busy: dropped"),
                }
            }
        }
    }

    /// Stops every task and the listener.
    pub(super) fn stop_tasks(&self) {
        if !self.closed.replace(true)
            && let Ok(mut app) = self.app.try_borrow_mut()
        {
            app.stopped();
        }
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
        for (_, t) in self.view_tasks.borrow_mut().drain(..) {
            t.abort();
        }
        self.acceptor.stop();
        self.sessions.close_all();
        self.wake_all();
    }

    /// Every transport still open, with its view and the view's members.
    pub(super) fn take_transports(&self) -> Vec<(ViewId, Rc<AnyTransport>, Vec<NodeId>)> {
        std::mem::take(&mut *self.transports.borrow_mut()).into_iter().map(|(v, (t, m))| (v, t, m)).collect()
    }

    /// The transport of `view`, if it is open.
    fn transport_of(&self, view: ViewId) -> Option<Rc<AnyTransport>> {
        self.transports.borrow().get(&view).map(|(t, _)| t.clone())
    }

    /// The transport of the current view.
    pub(super) fn transport(&self) -> Option<Rc<AnyTransport>> {
        let view = self.published.borrow().view.as_ref()?.id;
        self.transport_of(view)
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
