//! [`Group`]: a group with membership (PROTOCOLS §3) over TCP or shared memory.
//!
//! Every decision of a member's life lives in [`crate::protocol::member::Member`], the same
//! code the simulator runs; this module runs it. One listener per member, held by a
//! [`TcpAcceptor`], serves everything: each view runs on a transport of its own whose group tag
//! names the group and the view, and the acceptor routes each incoming connection by that tag,
//! parking connections for a view this member has not reached yet. Joins, their answers and
//! restart offers are one-shot messages to the same listener under the group's control tag.
//!
//! Over shared memory ([`TransportKind::Shm`]) the joins and control messages still go to the
//! TCP listener, and each view's transport is a [`ShmTransport`] of its own namespace,
//! `{group name}-v{view id}`, whose table region is created before the member announces itself
//! in it (so pushes never meet a peer's missing table). Members that do not appear in the
//! namespace within `connect_timeout` are reported failed, as over TCP; the files a killed member
//! leaves behind in an old view's namespace are removed by the survivors when they release that
//! view.
//!
//! # Layout
//!
//! * [`app`]: the [`Application`] trait and the errors of the group's operations.
//! * [`builder`]: [`GroupBuilder`] (settings, listener, start, join, restart) and the transport
//!   of each view.
//! * [`runner`]: the one command loop: member commands run on transports, events told to the
//!   application, inputs fed back.
//!
//! [`TcpAcceptor`]: derecho_runtime::transport::tcp::TcpAcceptor
//! [`TransportKind::Shm`]: crate::driver::TransportKind::Shm
//! [`ShmTransport`]: derecho_runtime::transport::shm::ShmTransport

pub mod app;
pub mod builder;
pub mod metrics;
mod runner;
mod sessions;

use std::cell::Cell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Duration;

use derecho_runtime::signal::{Signal, Signals};
use derecho_runtime::transport::{AnyTransport, Payload, PeerId, Transport};
use derecho_runtime::{HookId, Park, PollHook, add_poll_hook, remove_poll_hook, spawn, time};

pub use app::{
    AppError, Application, JoinError, PARTITION_SAFETY_NEEDED, PersistWaitError, SendToError, State, ViewChange,
    WaitError,
};
pub use builder::GroupBuilder;
pub use metrics::{Metrics, ShardMetrics};
pub use sessions::ClientLimits;

use super::{GroupEvent, GroupSendError, RegionMemory, SettleError};
use crate::protocol::member::{Input, Member};
use crate::protocol::wire::{APP_FRAME_HEADER_LEN, APP_FRAME_KIND, app_frame};
use crate::protocol::{NodeId, SendError, ShardRef, StopReason, Time, Version, View, ViewId};
use runner::Inner;

/// How [`Group::leave_on_signal`] ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Shutdown {
    /// A signal arrived and the member left the group.
    Left(Signal),
    /// A signal arrived but leaving failed or timed out (the others will detect a failure).
    LeaveFailed(Signal, WaitError),
    /// A second signal arrived while leaving.
    Forced(Signal),
    /// The signal descriptor failed.
    NoSignals(std::io::Error),
}

impl Shutdown {
    /// The exit code a program that shuts down this way should return: 0 after leaving, 1 if
    /// leaving failed, 128 + the signal number when forced (the shell's convention).
    pub fn exit_code(&self) -> u8 {
        match self {
            Shutdown::Left(_) => 0,
            Shutdown::LeaveFailed(..) | Shutdown::NoSignals(_) => 1,
            Shutdown::Forced(Signal::Interrupt) => 130,
            Shutdown::Forced(_) => 143,
        }
    }
}

impl std::fmt::Display for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shutdown::Left(s) => write!(f, "{s}: left the group"),
            Shutdown::LeaveFailed(s, e) => write!(f, "{s}: could not leave the group: {e}"),
            Shutdown::Forced(s) => write!(f, "{s} again: gave up leaving the group"),
            Shutdown::NoSignals(e) => write!(f, "cannot read signals: {e}"),
        }
    }
}

/// The largest frame of a view's transport besides pushes of the table: application frames
/// ([`GroupSender::send_to`], the calls layer's batches, queries and replies) and pieces of
/// states. Shared-memory rings hold two of them.
pub const FRAME_LEN_MAX: usize = 8 << 20;

/// Sends through a [`Group`] from other tasks ([`Group::sender`]); every call fails with
/// [`SendToError::Closed`] once the group is closed or dropped.
#[derive(Clone, Debug)]
pub struct GroupSender {
    inner: Weak<Inner>,
}

impl GroupSender {
    fn inner(&self) -> Result<Rc<Inner>, SendToError> {
        self.inner.upgrade().filter(|i| !i.closed.get()).ok_or(SendToError::Closed)
    }

    /// Stops this member for good with `reason` ([`StopReason::Failed`],
    /// [`GroupEvent::Fatal`]): used when it can no longer keep a promise the group relies on,
    /// such as a log that failed to sync. The others see it fail and go on without it.
    pub fn fatal(&self, reason: &str) {
        if let Ok(inner) = self.inner() {
            inner.feed(Input::Fatal(reason.to_string()));
        }
    }

    /// Reports that every version of `shard` up to `version` is durable on this member (the
    /// local persistence frontier, PROTOCOLS §4): it is published to the shard's members, whose
    /// minimum is the global frontier ([`GroupSender::persisted`]). Reports that go backwards
    /// are ignored; a member republishes its frontier in every view.
    pub fn report_persisted(&self, shard: ShardRef, version: Version) {
        if let Ok(inner) = self.inner() {
            inner.feed(Input::Persisted { shard, version });
        }
    }

    /// The persistence frontiers of `shard`: the highest version durable on this member, and
    /// the highest durable at every member of the shard in the current view (`None` until
    /// every member has reported one in this view).
    pub fn persisted(&self, shard: ShardRef) -> (Option<Version>, Option<Version>) {
        // Still answered once closed: what was reported durable stays so.
        let Some(inner) = self.inner.upgrade() else { return (None, None) };
        inner.published.borrow().frontiers.get(&shard).copied().unwrap_or((None, None))
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
        version: Version,
        within: Duration,
    ) -> Result<(), PersistWaitError> {
        let inner = self.inner().map_err(|_| PersistWaitError::Closed)?;
        let me = inner.settings.me;
        let wait = poll_fn(|cx| {
            if inner.closed.get() {
                return Poll::Ready(Err(PersistWaitError::Closed));
            }
            let p = inner.published.borrow();
            if let Some(r) = &p.stopped {
                return Poll::Ready(Err(PersistWaitError::Stopped(r.clone())));
            }
            let in_shard =
                p.view.as_ref().is_some_and(|v| v.shards.iter().any(|s| s.id == shard && s.members.contains(&me)));
            if !p.changing && !in_shard {
                return Poll::Ready(Err(PersistWaitError::NotInShard(shard)));
            }
            if p.frontiers.get(&shard).and_then(|f| f.1).is_some_and(|g| g >= version) {
                return Poll::Ready(Ok(()));
            }
            drop(p);
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
        let inner = self.inner().map_err(|_| SettleError::Closed)?;
        settle(&inner, shard, within).await
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
        let member = inner.published.borrow().view.as_ref().is_some_and(|v| v.rank_of(to).is_some());
        if to == inner.settings.me || !member {
            return Err(SendToError::NotAMember(to));
        }
        let transport = inner.transport().ok_or(SendToError::Closed)?;
        drop(inner);
        transport.send_frame(PeerId(to.0), Payload::from(frame)).await?;
        Ok(())
    }

    /// Whether a view change is under way here: what is delivered now is the old view's
    /// ragged edge, and a peer may install the next view before a frame sent now reaches it
    /// (frames of an old view are dropped), so replies sent now may need sending again.
    pub fn is_wedged(&self) -> bool {
        self.inner().is_ok_and(|i| i.published.borrow().changing)
    }

    /// Pushes `body` to every external client subscribed to `topic` at this member, on its
    /// session (queued; written in the background). Returns how many it is sent to.
    pub fn notify(&self, topic: &str, body: &[u8]) -> usize {
        self.inner().map_or(0, |inner| inner.sessions.notify(topic, body))
    }

    /// This member's id, if the group is open.
    pub fn me(&self) -> Option<NodeId> {
        self.inner().ok().map(|i| i.settings.me)
    }

    /// The current view, if the group is open.
    pub fn view(&self) -> Option<View> {
        self.inner().ok().and_then(|i| i.published.borrow().view.as_deref().cloned())
    }

    /// The id of the current view, if the group is open (without copying the view).
    pub fn view_id(&self) -> Option<ViewId> {
        self.inner().ok().and_then(|i| i.published.borrow().view.as_ref().map(|v| v.id))
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
        if let Some(r) = &inner.published.borrow().stopped {
            return Poll::Ready(Err(GroupSendError::Stopped(r.clone())));
        }
        let Ok(mut member) = inner.member.try_borrow_mut() else {
            return Poll::Ready(Err(GroupSendError::Reentrant));
        };
        let mut f = fill.take();
        let r = member.send(inner.now(), shard, len, |buf| (f.take().expect("fill once"))(buf));
        match r {
            Ok(_) => {
                inner.count_sent(shard);
                Poll::Ready(Ok(()))
            }
            Err(SendError::WindowFull(_) | SendError::Wedged(_)) => {
                fill = f;
                inner.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
            // Between views (an inadequate view has no shards): wait for one that has it.
            Err(SendError::NotAMember(_)) if member.view().is_some_and(|v| v.shards.is_empty()) => {
                fill = f;
                inner.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
            Err(SendError::Stopped(_)) => Poll::Ready(Err(GroupSendError::Stopped(
                member.stopped().cloned().unwrap_or(StopReason::Removed { view: 0, why: "stopped" }),
            ))),
            Err(e) => Poll::Ready(Err(GroupSendError::Refused(e))),
        }
    })
    .await
}

/// Waits until every member of `shard` has delivered what this member had delivered first.
async fn settle(inner: &Inner, shard: ShardRef, within: Duration) -> Result<(), SettleError> {
    // Where this member stands now, and in which view (read as soon as the member is free).
    let start: std::cell::RefCell<Option<(ViewId, Vec<u64>)>> = Default::default();
    let wait = poll_fn(|cx| {
        if inner.closed.get() {
            return Poll::Ready(Err(SettleError::Closed));
        }
        let Ok(member) = inner.member.try_borrow() else {
            inner.waiters.borrow_mut().push(cx.waker().clone());
            return Poll::Pending;
        };
        let Some(node) = member.node() else { return Poll::Ready(Err(SettleError::NoSuchShard(shard))) };
        let (view, here) = match &*start.borrow() {
            Some(s) => s.clone(),
            None => {
                let Some(here) = node.delivery_frontier(shard) else {
                    return Poll::Ready(Err(SettleError::NoSuchShard(shard)));
                };
                (node.view().id, here)
            }
        };
        start.borrow_mut().get_or_insert_with(|| (view, here.clone()));
        // A view change delivers everything of the old view that anyone will.
        if node.view().id != view || member.stopped().is_some() {
            return Poll::Ready(Ok(()));
        }
        if node.delivered_everywhere(shard, &here).unwrap_or(false) {
            return Poll::Ready(Ok(()));
        }
        drop(member);
        inner.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    });
    match time::timeout(within, wait).await {
        Ok(r) => r,
        Err(_) => Err(SettleError::Timeout { within, here: start.take().map(|s| s.1).unwrap_or_default() }),
    }
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
/// See the `group` example and `tests/tests/group.rs`.
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
    /// Runs `member` (begun by `begin`) with `app`: the listener, the timers, the rules.
    fn run(
        settings: builder::Settings,
        acceptor: derecho_runtime::transport::tcp::TcpAcceptor,
        member: Member<RegionMemory>,
        app: Box<dyn Application>,
        begin: impl FnOnce(&mut Member<RegionMemory>, Time),
    ) -> Self {
        let inner = Rc::new(Inner::new(settings, acceptor, member, app));
        inner.upcall(|app| app.attached(GroupSender { inner: Rc::downgrade(&inner) }));
        let hook = add_poll_hook(RulesHook { inner: inner.clone() });
        let weak = Rc::downgrade(&inner);
        let mut tasks = Vec::new();
        // Control messages (joins, answers, restart offers, external clients).
        tasks.push(spawn({
            let weak = weak.clone();
            async move {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let (from, body) = inner.acceptor.next_message().await;
                    if inner.closed.get() {
                        return;
                    }
                    inner.control(from, &body);
                    inner.step();
                }
            }
        }));
        // External clients' sessions.
        tasks.push(spawn(sessions::serve(weak.clone())));
        // Timers: heartbeats, suspicion timeouts, retries, lingering views.
        tasks.push(spawn(async move {
            loop {
                let wait = {
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.closed.get() {
                        return;
                    }
                    let heartbeat = inner.settings.membership.heartbeat;
                    let now = inner.now();
                    let next = inner.member.try_borrow().ok().and_then(|m| m.poll_timeout());
                    next.map_or(heartbeat, |t| Duration::from_nanos(t.0.saturating_sub(now.0)).min(heartbeat))
                };
                time::sleep(wait.max(Duration::from_micros(100))).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.step();
            }
        }));
        inner.tasks.borrow_mut().extend(tasks);
        let now = inner.now();
        begin(&mut inner.member.borrow_mut(), now);
        inner.step();
        Self { inner, hook: Cell::new(Some(hook)), shut: Cell::new(false) }
    }

    /// Waits until this member is in its first view with every state it awaited restored.
    async fn entered(&self) -> Result<(), JoinError> {
        poll_fn(|cx| {
            if let Some(e) = self.inner.enter_error.borrow_mut().take() {
                return Poll::Ready(Err(e));
            }
            if let Some(r) = &self.inner.published.borrow().stopped {
                return Poll::Ready(Err(JoinError::Stopped(r.clone())));
            }
            let ready = self.inner.member.try_borrow().is_ok_and(|m| m.is_ready());
            if ready && self.inner.published.borrow().view.is_some() {
                return Poll::Ready(Ok(()));
            }
            self.inner.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// This member's id.
    pub fn me(&self) -> NodeId {
        self.inner.settings.me
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.inner.published.borrow().view.as_deref().cloned().expect("a group has a view once it is returned")
    }

    /// The members of the current view, in rank order.
    pub fn members(&self) -> Vec<NodeId> {
        self.view().members
    }

    /// This member's rank in the current view.
    pub fn my_rank(&self) -> usize {
        self.view().rank_of(self.me()).expect("a member of its view")
    }

    /// Why this member stopped, if it did.
    pub fn stopped(&self) -> Option<StopReason> {
        self.inner.published.borrow().stopped.clone()
    }

    /// Messages delivered in `shard` in the current view (`None` if this member is not in the
    /// shard, or while a delivery is under way).
    pub fn delivered_count(&self, shard: ShardRef) -> Option<u64> {
        self.inner.member.try_borrow().ok()?.node()?.delivered_count(shard)
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
            let p = self.inner.published.borrow();
            if let Some(r) = &p.stopped {
                return Poll::Ready(Err(WaitError::Stopped(r.clone())));
            }
            if self.inner.closed.get() {
                return Poll::Ready(Err(WaitError::Closed));
            }
            if let Some(v) = &p.view
                && !p.changing
                && pred(v)
            {
                return Poll::Ready(Ok((**v).clone()));
            }
            drop(p);
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
        settle(&self.inner, shard, within).await
    }

    /// Tells the group that `node` has failed (PROTOCOLS §3.2): it is suspected at once.
    pub fn report_failure(&self, node: NodeId) {
        self.inner.feed(Input::ReportFailure(node));
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
        self.inner.feed(Input::Leave);
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
            let all = self.inner.transport().is_none_or(|t| t.peers().iter().all(|p| gone.contains(&NodeId(p.0))));
            if all {
                return Poll::Ready(());
            }
            drop(gone);
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

    /// Waits for SIGTERM or SIGINT on `signals`, then leaves the group ([`Group::leave`], bounded
    /// by `within`) so that the others install the next view at once instead of detecting a
    /// failure. A second signal while leaving returns at once ([`Shutdown::Forced`]). Runs
    /// until then: await it beside the program's own work (or spawn it and await the handle).
    pub async fn leave_on_signal(&self, signals: &Signals, within: Duration) -> Shutdown {
        let first = match signals.next().await {
            Ok(s) => s,
            Err(e) => return Shutdown::NoSignals(e),
        };
        self.inner.span().in_scope(|| {
            tracing::info!(signal = %first, within_ms = within.as_millis() as u64, "leaving the group (a second signal ends the wait)")
        });
        let mut leave = std::pin::pin!(self.leave(within));
        let mut second = std::pin::pin!(signals.next());
        poll_fn(|cx| {
            if let Poll::Ready(r) = leave.as_mut().poll(cx) {
                return Poll::Ready(match r {
                    Ok(()) => Shutdown::Left(first),
                    Err(e) => Shutdown::LeaveFailed(first, e),
                });
            }
            match second.as_mut().poll(cx) {
                Poll::Ready(Ok(s)) => Poll::Ready(Shutdown::Forced(s)),
                // The descriptor failed: the leave goes on.
                Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
            }
        })
        .await
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
        let current = self.inner.transport();
        self.stop();
        for (view, t, members) in self.inner.take_transports() {
            let linger = if current.as_ref().is_some_and(|c| Rc::ptr_eq(c, &t)) {
                Duration::from_millis(200)
            } else {
                Duration::ZERO
            };
            t.close(linger).await;
            self.inner.settings.remove_dead_files(view, &members);
        }
    }

    fn stop(&self) {
        if let Some(h) = self.hook.take() {
            remove_poll_hook(h);
        }
        self.inner.stop_tasks();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.shut.replace(true) {
            self.stop();
            // Shared-memory transports close at once (their files go with them); TCP ones close
            // as their tasks are dropped.
            for (view, t, members) in self.inner.take_transports() {
                if let AnyTransport::Shm(t) = &*t {
                    t.close();
                }
                self.inner.settings.remove_dead_files(view, &members);
            }
        }
    }
}
