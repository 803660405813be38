//! One member's whole life, sans-IO: the [`Node`] and every decision above it (PROTOCOLS §3.5,
//! §4.1). The driver and the simulator both run this code; neither decides anything of its own.
//!
//! A [`Member`] starts a group, asks to join one, or restarts from its logs; once in a view it
//! runs its node, answers joiners, moves shard states to new members and takes theirs in,
//! keeps an old view alive while others finish it, and, when it persists, has its proposals and
//! views saved in the order total restart needs.
//!
//! # Method families
//!
//! Inputs go in with the current time; commands, events and the next deadline come out:
//!
//! 1. [`Member::handle`] (anything that happened), [`Member::handle_control`] (a message to this
//!    member's listener), [`Member::handle_frame`] (a frame of a view's transport that is not an
//!    application frame).
//! 2. [`Member::send`] writes a multicast in place; [`Member::deliver`] hands every deliverable
//!    message to the application, borrowed from the table (the data path; no event per
//!    message).
//! 3. [`Member::poll_command`]: side effects for the driver (push, send, connect, save), each
//!    documented with the condition that held it back, if any.
//! 4. [`Member::poll_event`]: what the application hears (installed views, states to take or
//!    restore, stops).
//! 5. [`Member::poll_timeout`]: when to call [`Member::handle`] with [`Input::Tick`] if nothing
//!    else happens.
//!
//! # Ordering conditions, held here rather than by the driver's loop
//!
//! * A persisting member's acknowledgement of a proposed view (or, as leader, its proposal) goes
//!   into its row only once the view is saved ([`Command::SaveProposal`] answered by
//!   [`Input::ProposalSaved`]; [`Node::awaits_save`] meanwhile): nobody can count it before.
//!   Heartbeats go on meanwhile.
//! * A shard's state for new members is taken before anything of the new view is delivered here
//!   ([`Event::TakeSnapshot`] answered by [`Input::SnapshotTaken`]): [`Member::deliver`]
//!   delivers nothing in between.
//! * The application hears of a view before anything is delivered in it: [`Member::deliver`]
//!   delivers nothing while an event waits to be taken. A driver tells the events it takes to
//!   the application before it calls [`Member::deliver`] again.
//! * A persisting member saves a view only once every state it received for it is durable
//!   ([`Command::SaveView`]).
//! * A joiner is proposed only once its listener answered ([`Answer::Pending`] delivered,
//!   [`Input::ControlSent`]): an address that never answers is never admitted.
//!
//! # Layout
//!
//! * [`join`]: asking to join (redirects, retries, refusals) and admitting joiners.
//! * [`transfer`]: shard states out (snapshots in pieces) and in (pieces reassembled, limits).
//! * [`linger`]: the previous view kept alive until every member has left it.
//! * [`restart`]: restarting from saved logs: looking for a running group, leading a total
//!   restart (offers collected, [`crate::protocol::restart::plan`]).

mod io;
pub mod join;
pub mod linger;
pub mod restart;
pub mod transfer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use super::ids::{NodeId, ShardRef, Time, Version, ViewId};
use super::layout::View;
use super::membership::{GmsStep, JoinRefusal, NextView, StopReason};
use super::multicast::{Delivered, SendError};
use super::node::{Input as NodeInput, Node, Output};
use super::restart::Offer;
use super::sst::SstMemory;
use super::wire::{Answer, Control, JOIN_VERSION, ViewFrame};

pub use io::{Command, EnterError, Event, Input, MemberConfig, ViewChange};
pub use join::Asking;
pub use linger::Linger;
pub use restart::Restarting;
pub use transfer::{Incoming, STATE_PIECE_LEN};

/// Where a member stands.
#[derive(Debug)]
enum Phase {
    /// Created: nothing asked yet.
    Idle,
    /// Asking a contact to let it in (a join, or a restart offer to its restart leader).
    Asking(Box<Asking>),
    /// Restarting from its logs without a contact: looking for a running group, then leading.
    Restarting(Box<Restarting>),
    /// Its first view is known (welcome, bootstrap or restart plan): waiting for its transport.
    Entering(Rc<NextView>),
    /// In a view (the node may be between views, waiting for the next one's transport).
    Running,
    /// Could not enter, or stopped.
    Done,
}

/// Where a member is in its life ([`Member::stage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Asking to be let in, or waiting for its first view's connections or states.
    Joining,
    /// Restarting from its logs: looking for the group, or waiting for a quorum.
    Restarting,
    /// In a view, delivering.
    Running,
    /// A view change is under way: sending waits for the next view.
    Wedged,
    /// It left, failed, or could not enter.
    Stopped,
}

impl Stage {
    /// The stage as a lowercase word (`running`), as status displays and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Joining => "joining",
            Stage::Restarting => "restarting",
            Stage::Running => "running",
            Stage::Wedged => "wedged",
            Stage::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member's sans-IO state (see the module documentation).
#[derive(Debug)]
pub struct Member<M: SstMemory> {
    config: MemberConfig,
    phase: Phase,
    node: Option<Node<M>>,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    /// A proposal being saved ([`Input::ProposalSaved`] answers it).
    saving: Option<(ViewId, Vec<NodeId>)>,
    /// The last proposal saved (not saved twice).
    saved_proposal: Option<(ViewId, Vec<NodeId>)>,
    /// The last view saved, and the view waiting to be saved until its states are durable.
    saved_view: Option<ViewId>,
    unsaved_view: Option<NextView>,
    /// Snapshots asked for and not yet ordered by the application: deliveries wait.
    snapshots: Vec<(ViewId, ShardRef)>,
    /// States on their way to this member, and the shards whose state is being restored.
    incoming: Incoming,
    /// Join requests answered later (a refusal, the welcome): the joiner's address.
    joiners: BTreeMap<NodeId, String>,
    /// Join requests whose listener is being checked ([`Answer::Pending`] under way): the
    /// joiner, whether it returns with its logs, when it asked.
    admitting: BTreeMap<String, (NodeId, bool, Time)>,
    /// Earlier views whose transports are kept alive.
    lingering: Vec<Linger>,
    /// The states this member sends, per view and shard: to whom.
    sending: BTreeMap<(ViewId, ShardRef), Vec<NodeId>>,
    /// Why it stopped.
    stopped: Option<StopReason>,
    /// The time of the last input (commands that start a timer count from it).
    now: Time,
}

impl<M: SstMemory> Member<M> {
    /// A member with `config` that has not started, joined or restarted yet.
    pub fn new(config: MemberConfig) -> Self {
        Self {
            config,
            phase: Phase::Idle,
            node: None,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            saving: None,
            saved_proposal: None,
            saved_view: None,
            unsaved_view: None,
            snapshots: Vec::new(),
            incoming: Incoming::default(),
            joiners: BTreeMap::new(),
            admitting: BTreeMap::new(),
            lingering: Vec::new(),
            sending: BTreeMap::new(),
            stopped: None,
            now: Time(0),
        }
    }

    /// Starts a new group of this member alone (PROTOCOLS §3.5): its first view is id 0 with
    /// the layout's shards (none while inadequate).
    ///
    /// # Panics
    ///
    /// If the member already started, joined or restarted (a programmer error).
    pub fn start(&mut self) {
        assert!(matches!(self.phase, Phase::Idle), "start on a member that is not idle");
        let me = self.config.me;
        let view = Node::<M>::bootstrap_view(me, &*self.config.layout);
        let inadequate = view.shards.is_empty().then(|| "the layout needs more members".to_string());
        let next = NextView {
            view,
            inadequate,
            addresses: vec![(me, self.config.address.clone())],
            joined: vec![me],
            departed: Vec::new(),
            transfers: Vec::new(),
            lost: Vec::new(),
            history: Vec::new(),
        };
        self.enter(Rc::new(next));
    }

    /// Enters `next` as this member's first view, known in advance: the starting members of a
    /// group all configured with the same first view (the simulator starts its groups so).
    ///
    /// # Panics
    ///
    /// If the member already started, joined or restarted, or `next` does not name it (a
    /// programmer error).
    pub fn enter_view(&mut self, next: Rc<NextView>) {
        assert!(matches!(self.phase, Phase::Idle), "enter_view on a member that is not idle");
        assert!(next.view.rank_of(self.config.me).is_some(), "a first view without this member");
        self.enter(next);
    }

    /// The view whose transport this member waits for ([`Command::Connect`]), if it is `view`.
    pub fn connecting(&self, view: ViewId) -> Option<&NextView> {
        match &self.phase {
            Phase::Entering(n) if n.view.id == view => Some(n),
            Phase::Running => self.node.as_ref()?.next_view().filter(|n| n.view.id == view),
            _ => None,
        }
    }

    /// Enters `next` as this member's first view: connects its transport.
    fn enter(&mut self, next: Rc<NextView>) {
        assert!(next.view.rank_of(self.config.me).is_some(), "entering a view without this member");
        assert!(self.node.is_none(), "a member enters one first view");
        self.commands.push_back(Command::Connect { next: next.clone() });
        self.phase = Phase::Entering(next);
    }

    /// This member's settings.
    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    /// The current view, once this member is in one.
    pub fn view(&self) -> Option<&View> {
        self.node.as_ref().map(Node::view)
    }

    /// The node, once this member is in a view.
    pub fn node(&self) -> Option<&Node<M>> {
        self.node.as_ref()
    }

    /// The node, mutably (for a driver or simulator applying pushes into its table).
    pub fn node_mut(&mut self) -> Option<&mut Node<M>> {
        self.node.as_mut()
    }

    /// Why this member stopped, if it did.
    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// Where this member is in its life, for status displays.
    pub fn stage(&self) -> Stage {
        match &self.phase {
            _ if self.stopped.is_some() => Stage::Stopped,
            Phase::Idle | Phase::Asking(_) | Phase::Entering(_) => Stage::Joining,
            Phase::Restarting(_) => Stage::Restarting,
            Phase::Running if self.is_changing_view() => Stage::Wedged,
            Phase::Running if !self.is_ready() => Stage::Joining,
            Phase::Running => Stage::Running,
            Phase::Done => Stage::Stopped,
        }
    }

    /// Whether this member runs in a view (it may be between views).
    pub fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running)
    }

    /// Whether a view change is under way here (wedged, or waiting for the next view's
    /// transport): what is delivered now is the old view's ragged edge.
    pub fn is_changing_view(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.is_wedged() || n.next_view().is_some())
    }

    /// Whether this member has entered its first view with every state it awaited restored
    /// (a joiner returns to its caller then).
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Running)
            && self.node.as_ref().is_some_and(|n| n.view().shards.iter().all(|s| !n.awaiting_state(s.id)))
    }

    /// Sends a message of `len` bytes into `shard`, written in place by `fill` (see
    /// [`Node::send`]).
    ///
    /// # Errors
    ///
    /// [`SendError::Wedged`] before this member is in a view, [`SendError::Stopped`] once it
    /// stopped, otherwise as [`Node::send`].
    pub fn send(
        &mut self,
        now: Time,
        shard: ShardRef,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64, SendError> {
        if let Some(r) = &self.stopped {
            return Err(SendError::Stopped(r.to_string()));
        }
        match &mut self.node {
            Some(node) => node.send(now, shard, len, fill),
            None => Err(SendError::Wedged(shard)),
        }
    }

    /// Delivers every deliverable message to `f`, in order; returns how many. Nothing is
    /// delivered while an event waits to be taken ([`Member::poll_event`]: the application hears
    /// of a new view before anything delivered in it), nor while a snapshot of a new view's
    /// state has not been ordered by the application ([`Event::TakeSnapshot`] answered by
    /// [`Input::SnapshotTaken`]: the snapshot must not include anything of the new view).
    pub fn deliver(&mut self, f: impl FnMut(Delivered<'_>)) -> usize {
        if !self.events.is_empty()
            || !self.snapshots.is_empty()
            || self.stopped.is_some()
            || !matches!(self.phase, Phase::Running)
        {
            return 0;
        }
        match &mut self.node {
            Some(node) => node.deliver(f),
            None => 0,
        }
    }

    /// The next command, in order. `None` also while a proposal is being saved.
    pub fn poll_command(&mut self) -> Option<Command> {
        loop {
            if let Some(c) = self.commands.pop_front() {
                return Some(c);
            }
            if self.stopped.is_some() {
                return None;
            }
            let output = self.node.as_mut()?.poll_output()?;
            if let Some(c) = self.on_output(output) {
                return Some(c);
            }
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Member::handle`] with [`Input::Tick`] again if nothing else happens.
    pub fn poll_timeout(&self) -> Option<Time> {
        if matches!(self.phase, Phase::Done | Phase::Idle) {
            return None;
        }
        let own = match &self.phase {
            Phase::Asking(a) => Some(a.next_timeout()),
            Phase::Restarting(r) => Some(r.next_timeout()),
            _ => None,
        };
        let linger = self.lingering.iter().map(Linger::next_timeout).min();
        let admit = self.admitting.values().map(|(_, _, at)| at.plus_ns(self.config.retry_ns)).min();
        [own, linger, admit, self.node.as_ref().and_then(Node::poll_timeout)].into_iter().flatten().min()
    }

    /// Feeds what happened.
    pub fn handle(&mut self, now: Time, input: Input<M>) {
        self.now = self.now.max(now);
        match input {
            Input::Tick => self.tick(now),
            Input::PeerFailed { view, peer } => {
                if self.view().is_some_and(|v| v.id == view) {
                    self.node_input(now, NodeInput::PeerFailed(peer));
                }
            }
            Input::ReportFailure(peer) => self.node_input(now, NodeInput::ReportFailure(peer)),
            Input::Leave => self.node_input(now, NodeInput::Leave),
            Input::Connected { view, memory } => self.connected(now, view, memory),
            Input::ConnectFailed { view, reason } => {
                if self.stopped.is_none() {
                    self.stop(StopReason::Failed(format!("cannot set up the transport of view {}: {reason}", view.0)));
                }
            }
            Input::ControlSent { to } => self.admitted(now, &to),
            Input::ControlNotSent { to } => self.control_not_sent(now, &to),
            Input::ProposalSaved { view, members } => {
                let p = (view, members);
                if self.saving.as_ref() == Some(&p) {
                    self.saving = None;
                }
                if self.stopped.is_none()
                    && let Some(node) = &mut self.node
                    && node.proposed_view().as_ref() == Some(&p)
                {
                    node.proposal_saved(now);
                }
                self.saved_proposal = Some(p);
            }
            Input::SaveFailed { reason } => self.stop(StopReason::Failed(reason)),
            Input::SnapshotTaken { view, shard, state } => self.snapshot_taken(view, shard, state),
            Input::StateRestored { view, shard } => self.state_restored(now, view, shard),
            Input::StateRefused { view, shard, from, reason } => self.source_failed((view, shard, from), reason),
            Input::Persisted { shard, version } => {
                if let Some(node) = &mut self.node {
                    node.report_persisted(shard, version);
                }
                self.save_view_if_whole();
            }
            Input::HeardOnOldView { view, peers } => self.heard_on_old_view(now, view, &peers),
            Input::Fatal(reason) => self.stop(StopReason::Failed(reason)),
        }
        self.after_input(now);
    }

    /// A control message from `from` (as its connection's hello named it) reached this
    /// member's listener. Join requests, their answers and restart offers are handled here;
    /// anything else (an external client's request) is given back to the caller.
    pub fn handle_control(&mut self, now: Time, from: NodeId, bytes: &[u8]) -> Option<Control> {
        self.now = self.now.max(now);
        let message = match Control::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.events.push_back(Event::Waiting(format!("ignored a malformed control message: {e}")));
                return None;
            }
        };
        // A join or an offer speaks for its sender only: the id its hello claimed (with TLS, the
        // id its certificate names) must be the one it asks for. Otherwise anyone admitted to
        // the listener could ask in another's name, or count for others in a restart.
        if let Control::Join { node, .. } | Control::Restart { node, .. } = &message
            && *node != from
        {
            self.events.push_back(Event::Waiting(format!(
                "ignored a join or restart offer for {node} sent by {from}: a member asks for itself only"
            )));
            return None;
        }
        let rest = match message {
            Control::Join { version, node, address, app } => {
                self.join_request(now, version, node, address, app, None);
                None
            }
            Control::Restart { version, node, address, app, offer, leading } => {
                self.join_request(now, version, node, address, app, Some((offer, leading)));
                None
            }
            Control::Answer(answer) => {
                self.answer(now, from, answer);
                None
            }
        };
        self.after_input(now);
        rest
    }

    /// A frame of the transport of `view` from `from` that is not an application frame: a
    /// piece of a state, or an "alive" beat. A malformed one suspects its sender.
    pub fn handle_frame(&mut self, now: Time, view: ViewId, from: NodeId, bytes: &[u8]) {
        self.now = self.now.max(now);
        match ViewFrame::decode(bytes) {
            Ok(ViewFrame::Alive { .. }) => self.node_input(now, NodeInput::PeerAlive(from)),
            Ok(ViewFrame::State { view: v, shard, offset, total, body }) => {
                self.state_piece(now, view, from, v, shard, offset, total, body);
            }
            Ok(ViewFrame::StateRefused { view: v, shard, reason }) => {
                if self.wants_copy(view, (v, shard, from)) {
                    self.source_failed((v, shard, from), format!("refused to send it: {reason}"));
                }
            }
            Err(e) => {
                if self.view().is_some_and(|v| v.id == view) {
                    self.node_input(now, NodeInput::ReportFailure(from));
                }
                self.events.push_back(Event::Violation { peer: from, what: e.to_string() });
            }
        }
        self.after_input(now);
    }

    fn node_input(&mut self, now: Time, input: NodeInput) {
        if self.stopped.is_none()
            && let Some(node) = &mut self.node
        {
            node.handle(now, input);
        }
    }

    /// Timers: the node's rules, retries, lingering views, admissions that never answered.
    fn tick(&mut self, now: Time) {
        match &mut self.phase {
            Phase::Asking(_) => self.asking_tick(now),
            Phase::Restarting(_) => self.restarting_tick(now),
            _ => {}
        }
        self.node_input(now, NodeInput::RowsChanged);
        if !self.lingering.is_empty() {
            self.linger_tick(now);
        }
        if !self.admitting.is_empty() {
            let retry = self.config.retry_ns;
            self.admitting.retain(|_, (_, _, at)| now < at.plus_ns(retry));
        }
    }

    /// Checks that follow every input: lingering views done, a view to save.
    fn after_input(&mut self, now: Time) {
        if !self.lingering.is_empty() {
            self.linger_done(now);
        }
    }

    /// The transport of `view` is ready.
    fn connected(&mut self, now: Time, view: ViewId, memory: M) {
        if self.stopped.is_some() {
            return;
        }
        match &self.phase {
            Phase::Entering(next) if next.view.id == view => {
                let next = next.clone();
                self.first_view(now, &next, memory);
            }
            Phase::Running => {
                let node = self.node.as_mut().expect("a running member has a node");
                let Some(next) = node.next_view().filter(|n| n.view.id == view).cloned() else { return };
                if let Err(e) = node.install(now, memory) {
                    self.stop(StopReason::Failed(format!("cannot install view {}: {e}", view.0)));
                    return;
                }
                if node.stopped().is_some() {
                    // It stopped instead (a state it awaited never came): the outputs say why,
                    // and the view is not this member's.
                    return;
                }
                self.installed(&next);
            }
            _ => {}
        }
    }

    /// Creates the node of this member's first view.
    fn first_view(&mut self, now: Time, next: &Rc<NextView>, memory: M) {
        assert!(self.node.is_none() && matches!(self.phase, Phase::Entering(_)), "a first view once");
        let c = &self.config;
        let node = Node::join(c.me, next, &c.limits, memory, c.membership.clone(), c.layout.clone(), now);
        match node {
            Ok(mut node) => {
                node.set_saves_proposals(c.persistent);
                self.node = Some(node);
                self.phase = Phase::Running;
                self.installed(next);
            }
            Err(e) => self.stop(StopReason::Failed(format!("cannot start in view {}: {e}", next.view.id.0))),
        }
    }

    /// A view was installed here: the application hears of it, and it is saved once whole.
    fn installed(&mut self, next: &NextView) {
        assert_eq!(self.view().map(|v| v.id), Some(next.view.id), "installed in the node first");
        let change = ViewChange::of(next, self.config.me);
        self.incoming.retain_view(next.view.id);
        let mut awaited = Vec::new();
        for t in next.transfers.iter().filter(|t| t.to.contains(&self.config.me)) {
            self.incoming.expect(next.view.id, t.shard, t.from.clone());
            let from: Vec<String> = t.from.iter().map(|n| n.0.to_string()).collect();
            awaited.push(format!("the state of {} from node {}", t.shard, from.join(" or ")));
        }
        self.events.push_back(Event::Installed(change));
        if !awaited.is_empty() {
            let within = self.config.membership.state_transfer_timeout.as_millis();
            self.events.push_back(Event::Waiting(format!("{} (within {within} ms)", awaited.join(", "))));
        }
        if self.config.persistent {
            // An inadequate view (no shards) is never saved: nothing is delivered in it, and a
            // restart judges each shard by the last view that had it. A view still unsaved when
            // the next one comes is never saved: the states it awaited will not come.
            self.unsaved_view = (!next.view.shards.is_empty()).then(|| next.clone());
            self.save_view_if_whole();
        }
    }

    /// Saves the current view once every state received for it is restored and durable
    /// (PROTOCOLS §4.1: a member whose saved view is the last one holds, for each of its
    /// shards, everything durable at every member of the shard).
    fn save_view_if_whole(&mut self) {
        let (Some(next), Some(node)) = (&self.unsaved_view, &self.node) else { return };
        if node.view().id != next.view.id || self.stopped.is_some() {
            return;
        }
        let before = Version::from_u64(Version::new(next.view.id, 0).as_u64().saturating_sub(1));
        let whole = next
            .transfers
            .iter()
            .filter(|t| t.to.contains(&self.config.me))
            .all(|t| !node.awaiting_state(t.shard) && node.persisted_here(t.shard).is_some_and(|p| p >= before));
        if !whole {
            return;
        }
        let next = self.unsaved_view.take().expect("checked");
        if self.saved_view != Some(next.view.id) {
            self.saved_view = Some(next.view.id);
            self.commands.push_back(Command::SaveView { view: next.view.clone(), addresses: next.addresses.clone() });
        }
    }

    /// Turns one output of the node into a command, or into events and queued commands.
    fn on_output(&mut self, output: Output) -> Option<Command> {
        match output {
            Output::Push { range, to } => return Some(Command::Push { range, to }),
            Output::Violation { node, violation } => {
                self.events.push_back(Event::Violation { peer: node, what: violation.to_string() });
            }
            Output::Step(step) => {
                let saves = matches!(step, GmsStep::Proposed(_) | GmsStep::Acked { .. }) && self.config.persistent;
                self.events.push_back(Event::Step(step));
                // The node writes the list into its row only once it is saved.
                if saves && let Some(p) = self.node.as_ref().and_then(Node::proposed_view) {
                    if self.saved_proposal.as_ref() == Some(&p) {
                        // The same view again (a new leader re-proposed it): saved already.
                        let now = self.now;
                        self.node.as_mut().expect("a node").proposal_saved(now);
                    } else if self.saving.as_ref() != Some(&p) {
                        self.saving = Some(p.clone());
                        return Some(Command::SaveProposal { view: p.0, members: p.1 });
                    }
                }
            }
            Output::NextView(next) => self.view_done(next),
            Output::Stopped(reason) => self.stop(reason),
            Output::JoinRefused { node, refusal } => {
                if let Some(address) = self.joiners.remove(&node) {
                    self.answer_joiner(&address, Answer::Refused(refusal));
                }
            }
            Output::SendState { shard, to } => {
                let view = self.node.as_ref().expect("a node").view().id;
                self.snapshots.push((view, shard));
                self.sending.retain(|(v, _), _| *v >= view);
                self.sending.insert((view, shard), to);
                self.events.push_back(Event::TakeSnapshot { view, shard });
            }
            Output::ResendFailed { shard, count } => self.events.push_back(Event::ResendFailed { shard, count }),
        }
        None
    }

    /// This member is done with its view: it welcomes the joiners, keeps the old view alive
    /// while others finish it, and connects the next one.
    fn view_done(&mut self, next: NextView) {
        let node = self.node.as_ref().expect("a node");
        assert_eq!(next.view.id.0, node.view().id.0 + 1, "the view after this one");
        assert!(matches!(self.phase, Phase::Running), "a view is done only while running");
        let old = node.view();
        let next = Rc::new(next);
        let welcome: Rc<[u8]> = Control::Answer(Answer::Welcome(Box::new((*next).clone()))).encode().into();
        for j in &next.joined {
            self.joiners.remove(j);
            if let Some((_, address)) = next.addresses.iter().find(|(n, _)| n == j) {
                self.commands.push_back(Command::SendControl {
                    to: address.clone(),
                    message: welcome.clone(),
                    report: false,
                });
            }
        }
        let others: Vec<NodeId> = old.members.iter().copied().filter(|&m| m != self.config.me).collect();
        let linger = Linger::new(old.id, others, self.now, self.linger_until_ns());
        self.lingering.push(linger);
        self.commands.push_back(Command::Connect { next });
    }

    fn linger_until_ns(&self) -> u64 {
        self.config.connect_timeout_ns + 4 * self.config.membership.suspect_after_ns()
    }

    /// The one way a member stops: the reason is told once, as an event; nothing more is sent
    /// (a save or an acknowledgement under way included) but the closing of lingering views.
    fn stop(&mut self, reason: StopReason) {
        if matches!(self.phase, Phase::Done) {
            return;
        }
        self.stopped = Some(reason.clone());
        self.saving = None;
        self.snapshots.clear();
        self.commands.retain(|c| matches!(c, Command::CloseView { .. }));
        for l in self.lingering.drain(..) {
            self.commands.push_back(Command::CloseView { view: l.view, members: l.members });
        }
        let was = std::mem::replace(&mut self.phase, Phase::Done);
        if matches!(was, Phase::Running) {
            self.events.push_back(Event::Stopped(reason));
        } else {
            self.events.push_back(Event::EnterFailed(EnterError::Stopped(reason)));
        }
    }

    /// Ends an attempt to enter a group.
    fn fail_entering(&mut self, e: EnterError) {
        debug_assert!(!matches!(self.phase, Phase::Running | Phase::Done), "failing to enter from {:?}", self.phase);
        self.phase = Phase::Done;
        self.commands.clear();
        self.events.push_back(Event::EnterFailed(e));
    }

    /// Sends an answer to a joiner's listener.
    fn answer_joiner(&mut self, address: &str, answer: Answer) {
        let message = Control::Answer(answer).encode().into();
        self.commands.push_back(Command::SendControl { to: address.to_string(), message, report: false });
    }

    /// Whether a request speaks this member's handshake version and runs the same
    /// application; if not, the refusal is answered.
    fn compatible(&mut self, version: u16, app: u64, address: &str) -> bool {
        if version != JOIN_VERSION {
            self.answer_joiner(address, Answer::Version(JOIN_VERSION));
            return false;
        }
        if app != self.config.app && app != 0 && self.config.app != 0 {
            let refusal = JoinRefusal::AppMismatch { ours: self.config.app, theirs: app };
            self.answer_joiner(address, Answer::Refused(refusal));
            return false;
        }
        true
    }

    /// The views this member's persistence must know of at a restart (for the tests).
    pub fn saved_view(&self) -> Option<ViewId> {
        self.saved_view
    }

    /// Offers this member holds as restart leader (empty otherwise).
    pub fn offers(&self) -> Vec<NodeId> {
        match &self.phase {
            Phase::Restarting(r) => r.offers.keys().copied().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether a restart offer of `offer` may join the running group this member is in: the
    /// group must be past the view the member saved (else it may be a new group, and joining
    /// it would drop the member's logs).
    fn admits_restart(&self, node: NodeId, offer: &Offer) -> Result<(), JoinRefusal> {
        let Some(v) = self.view() else { return Err(JoinRefusal::NotRunning) };
        if offer.saved_a_view() && v.id <= offer.saved.id {
            // Still a member of the view: the group has not removed its earlier life yet.
            if v.rank_of(node).is_some() {
                return Err(JoinRefusal::IdInUse(node));
            }
            return Err(JoinRefusal::NotRestarted { view: v.id.0, saved: offer.saved.id.0 });
        }
        Ok(())
    }
}
