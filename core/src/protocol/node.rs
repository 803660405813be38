//! One member's protocol state: the sans-IO node.
//!
//! Method families, in the order a driver uses them after each batch of inputs:
//!
//! 1. `handle(now, input)`: feed what happened (rows changed after pushes arrived).
//! 2. `send(now, shard, len, fill)`: write messages in place into this member's row.
//! 3. `deliver(f)`: hand every deliverable message to `f`, borrowed from the table.
//! 4. `poll_output()`: drain the pushes (data before counters) and reported violations.
//! 5. `poll_timeout()`: when to call `handle` again if nothing happens.
//!
//! Nothing here performs I/O, reads a clock or draws a random number.

use std::collections::VecDeque;

use crate::protocol::Version;
use std::ops::Range;
use std::rc::Rc;

use std::collections::BTreeMap;

use super::ids::{NodeId, ShardRef, Time};
use super::layout::{LayoutError, View};
use super::limits::{LimitError, Limits};
use super::membership::{
    ADDRESS_LEN_MAX, Carry, Gms, GmsStep, JoinRefusal, LayoutFn, MembershipConfig, MembershipConfigError, NextView,
    Resends, StopReason,
};
use super::multicast::{Delivered, RowViolation, SendError, ShardState};
use super::sst::{RowLayout, SstMemory};

/// What happened, for [`Node::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Peers' rows may have changed (pushes arrived): run the rules.
    RowsChanged,
    /// Time passed ([`Node::poll_timeout`] was reached): heartbeats and suspicion timeouts.
    Tick,
    /// The transport lost its connection to a peer: suspect it (PROTOCOLS §3.2).
    PeerFailed(NodeId),
    /// The application reports a member as failed (PROTOCOLS §3.2).
    ReportFailure(NodeId),
    /// Traffic came from a peer for another view (one it already installed, or one this member
    /// has not finished yet): it is alive, though its row here does not move. Without this, a
    /// member finishing a view change late would suspect the members that finished first.
    PeerAlive(NodeId),
    /// A joiner asks to join (PROTOCOLS §3.5); answered by [`Output::JoinRefused`] or, once the
    /// view that adds it installs, by [`Output::NextView`].
    Join {
        /// The joiner's id.
        node: NodeId,
        /// Where its peers reach it.
        address: String,
        /// It comes back with its logs (a restart offer): it may hold the state of a shard
        /// that lost every other holder ([`crate::protocol::Change::Add`]).
        returning: bool,
    },
    /// This member asks to leave the group gracefully.
    Leave,
    /// The state of a shard arrived from its old members (PROTOCOLS §3.5): delivery may start.
    StateReceived(ShardRef),
}

/// What the node asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Push this range of this member's row to these peers (in order with earlier pushes).
    Push {
        /// Table offsets (inside this member's row).
        range: Range<usize>,
        /// The peers.
        to: Rc<[NodeId]>,
    },
    /// A peer's row broke the protocol; nothing more is read from it. A node with membership
    /// suspects it; a static node leaves that to the driver.
    Violation {
        /// The peer.
        node: NodeId,
        /// What it did.
        violation: RowViolation,
    },
    /// A step of the view change (for logs, and for the simulator's crash points).
    Step(GmsStep),
    /// The view change is done here: this member delivered everything of the old view it ever
    /// will. Give it a zeroed table of [`Node::table_len`] bytes for the new view with
    /// [`Node::install`]. Joiners learn it from the members of the old view (every one may send
    /// it; a joiner starts from the first with [`Node::join`]).
    NextView(NextView),
    /// This member stopped; everything after this fails with [`SendError::Stopped`].
    Stopped(StopReason),
    /// A join request was refused.
    JoinRefused {
        /// The joiner.
        node: NodeId,
        /// Why.
        refusal: JoinRefusal,
    },
    /// Send the application state of `shard` to these new shard members (this member is the
    /// shard's old leader, PROTOCOLS §3.5). Emitted by [`Node::install`], before anything of
    /// the new view is delivered.
    SendState {
        /// The shard.
        shard: ShardRef,
        /// The new members.
        to: Vec<NodeId>,
    },
    /// Messages of this member above a trim could not be sent again in the new view (it is no
    /// longer a sender of the shard): they are dropped, and their sends fail.
    ResendFailed {
        /// The shard.
        shard: ShardRef,
        /// How many.
        count: usize,
    },
}

/// Where a node with membership stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Waiting for [`Node::install`].
    Installing(NextView),
    Stopped(StopReason),
}

/// Why a node could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A limit out of range.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The view's layout is invalid.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// This node is not a member of the view.
    #[error("{0} is not a member of the view")]
    NotAMember(NodeId),
    /// A membership setting out of range.
    #[error(transparent)]
    Membership(#[from] MembershipConfigError),
    /// [`Node::install`] was called with no view change finished, or on a static node.
    #[error("no next view to install")]
    NoNextView,
    /// The memory given for the table has the wrong size.
    #[error("the table needs {needed} bytes; the memory given has {given}")]
    MemoryLen {
        /// What the layout needs.
        needed: usize,
        /// What was given.
        given: usize,
    },
}

/// A join request the leader may admit ([`Node::check_join`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinCheck {
    /// A new join.
    New,
    /// The same joiner asked again while its join is under way.
    UnderWay,
}

/// Where a member's delivery, flow control and persistence stand ([`Node::update_progress`]):
/// every field only grows within a view, so a value that differs from an earlier one of the same
/// view means something moved. A driver wakes what waits on windows, settles and frontiers when
/// it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The view.
    pub view: u32,
    /// Per shard of this member: its indices released by every member (window room).
    pub released: Vec<u64>,
    /// Per shard of this member: what every member has delivered.
    pub delivered_everywhere: Vec<u64>,
    /// Per shard of this member: the global persistence frontier (plus one; 0 for none).
    pub persisted_everywhere: Vec<u64>,
    /// Per shard of this member: the local persistence frontier (plus one; 0 for none).
    pub persisted_here: Vec<u64>,
    /// How many updates saw a persistence frontier move (or a new view): a driver that only
    /// needs to recompute frontiers when they moved compares it with an earlier value.
    pub frontier_moves: u64,
}

/// One member of a group running the multicast protocol over an SST in memory `M`.
/// Cloning a node copies its whole state and table: the exhaustive explorer branches on it.
#[derive(Clone, Debug)]
pub struct Node<M: SstMemory> {
    me: NodeId,
    view: View,
    layout: RowLayout,
    mem: M,
    /// The shards this member belongs to.
    shards: Vec<ShardState>,
    outputs: VecDeque<Output>,
    violations: Vec<(NodeId, RowViolation)>,
    /// Set by `send` (with its time) until the rules next run.
    sent_since_step: Option<Time>,
    limits: Limits,
    /// Membership (`None`: a static group).
    gms: Option<Gms>,
    phase: Phase,
    /// Every other member of the view (membership pushes go to all).
    all_peers: Rc<[NodeId]>,
    /// Own messages of the previous view to send again, in order.
    resend: VecDeque<(ShardRef, Time, Vec<u8>)>,
    /// A new shard member gives up waiting for state at this time.
    state_deadline: Option<Time>,
    /// The highest version durable here per shard, plus one (published in each view's table).
    persisted: BTreeMap<ShardRef, u64>,
    /// Every list of changes this member takes up is saved before it goes into its row.
    saves_proposals: bool,
}

impl<M: SstMemory> Node<M> {
    /// The table length a view needs, to size the memory before creating the node.
    pub fn table_len(view: &View, limits: &Limits) -> usize {
        RowLayout::new(view, limits).table_len()
    }

    /// A node for member `me` of `view`, over zeroed memory of [`Node::table_len`] bytes.
    ///
    /// # Errors
    ///
    /// Invalid limits or layout, `me` not in the view, or memory of the wrong size.
    pub fn new(me: NodeId, view: View, limits: &Limits, mem: M) -> Result<Self, NodeError> {
        Self::build(me, view, limits, mem)
    }

    fn build(me: NodeId, view: View, limits: &Limits, mem: M) -> Result<Self, NodeError> {
        limits.validate()?;
        view.validate(limits)?;
        if view.rank_of(me).is_none() {
            return Err(NodeError::NotAMember(me));
        }
        let layout = RowLayout::new(&view, limits);
        if mem.len() != layout.table_len() {
            return Err(NodeError::MemoryLen { needed: layout.table_len(), given: mem.len() });
        }
        let rank_of = |n: NodeId| view.rank_of(n).expect("validated member");
        let shards = view
            .shards
            .iter()
            .zip(&layout.shards)
            .filter(|(s, _)| s.members.contains(&me))
            .map(|(s, cols)| {
                ShardState::new(
                    s,
                    view.id,
                    cols.clone(),
                    layout.row_len,
                    rank_of,
                    me,
                    limits.window_len,
                    limits.payload_len_max,
                )
            })
            .collect();
        let all_peers: Rc<[NodeId]> = view.members.iter().copied().filter(|&m| m != me).collect();
        Ok(Self {
            me,
            view,
            layout,
            mem,
            shards,
            outputs: VecDeque::new(),
            violations: Vec::new(),
            sent_since_step: None,
            limits: limits.clone(),
            gms: None,
            phase: Phase::Running,
            all_peers,
            resend: VecDeque::new(),
            state_deadline: None,
            persisted: BTreeMap::new(),
            saves_proposals: false,
        })
    }

    /// A member of a group with membership (PROTOCOLS §3): `view` is the first view every
    /// starting member agrees on (for a bootstrap, a view of this member alone, see
    /// [`Node::bootstrap_view`]); `addresses` names every member's address; `layout` computes the
    /// shards of every later view.
    ///
    /// # Errors
    ///
    /// As [`Node::new`], and membership settings out of range.
    #[allow(clippy::too_many_arguments)] // each is one independent input of the protocol
    pub fn with_membership(
        me: NodeId,
        view: View,
        addresses: BTreeMap<NodeId, String>,
        limits: &Limits,
        mem: M,
        config: MembershipConfig,
        layout: Rc<dyn LayoutFn>,
        now: Time,
    ) -> Result<Self, NodeError> {
        config.validate()?;
        let mut node = Self::build(me, view, limits, mem)?;
        let gms = Gms::new(config, layout, &node.layout, &node.view, me, addresses, now);
        node.gms = Some(gms);
        node.steps_out(GmsStep::Installed(node.view.id));
        Ok(node)
    }

    /// A joiner's node, from the view the leader sent it (PROTOCOLS §3.5), or a member's node
    /// in a restart view (§4.1). It waits for the state of every shard it is new to
    /// ([`Input::StateReceived`]) before delivering there, and sends the states it holds the
    /// longest log of.
    ///
    /// # Errors
    ///
    /// As [`Node::with_membership`].
    #[allow(clippy::too_many_arguments)] // as with_membership
    pub fn join(
        me: NodeId,
        next: &NextView,
        limits: &Limits,
        mem: M,
        config: MembershipConfig,
        layout: Rc<dyn LayoutFn>,
        now: Time,
    ) -> Result<Self, NodeError> {
        let addresses = next.addresses.iter().cloned().collect();
        let mut node = Self::with_membership(me, next.view.clone(), addresses, limits, mem, config, layout, now)?;
        // The layouts the view does not have, as every member of it knows them.
        let g = node.gms.as_mut().expect("a node with membership");
        for old in &next.history {
            if g.last_shards.iter().all(|s| s.id != old.id) {
                g.last_shards.push(old.clone());
            }
        }
        // Only in a restart view does a new member send states (from its logs).
        for t in &next.transfers {
            if t.from.contains(&me) {
                node.outputs.push_back(Output::SendState { shard: t.shard, to: t.to.clone() });
            }
        }
        node.await_transfers(next, now);
        Ok(node)
    }

    /// The first view of a group this member starts alone: id 0, this member, the layout's
    /// shards (none while inadequate).
    pub fn bootstrap_view(me: NodeId, layout: &dyn LayoutFn) -> View {
        View { id: super::ids::ViewId(0), members: vec![me], shards: layout.layout(&[me]).unwrap_or_default() }
    }

    /// Installs the next view announced by [`Output::NextView`] over `mem` (zeroed, of
    /// [`Node::table_len`] bytes for that view): a new table, suspicions and joins carried over,
    /// this member's messages above the trim sent again first.
    ///
    /// # Errors
    ///
    /// No view change is finished, or the memory has the wrong size.
    pub fn install(&mut self, now: Time, mem: M) -> Result<(), NodeError> {
        let Phase::Installing(next) = &self.phase else { return Err(NodeError::NoNextView) };
        let next = next.clone();
        if let Some(s) = self.shards.iter().find(|s| s.awaiting_state) {
            // Its state never came, and the next view does not know: this member cannot catch
            // up. It stops (and may join again as a new member).
            let shard = s.id;
            self.stop(StopReason::StateTransferTimeout(shard));
            return Ok(());
        }
        let gms = self.gms.take().ok_or(NodeError::NoNextView)?;
        let mut carry: Carry = gms.carry(&self.view, &next.view);
        carry.resend = self.take_resends(&gms);
        let old_view = self.view.clone();
        let mut node = match Self::build(self.me, next.view.clone(), &self.limits, mem) {
            Ok(n) => n,
            Err(NodeError::MemoryLen { needed, given }) => {
                // The caller's mistake: it may try again with the right memory.
                self.gms = Some(gms);
                return Err(NodeError::MemoryLen { needed, given });
            }
            Err(e) => {
                // The final record described a view the limits refuse (only a lying leader
                // can cause it): this member cannot go on.
                self.gms = Some(gms);
                self.stop(StopReason::Removed { view: self.view.id.0, why: "the next view breaks the limits" });
                return Err(e);
            }
        };
        let addresses = next.addresses.iter().cloned().collect();
        let mut new_gms =
            Gms::new(gms.config.clone(), gms.layout_fn.clone(), &node.layout, &node.view, self.me, addresses, now);
        for s in &carry.suspected {
            new_gms.suspect_later(*s);
        }
        // Joins waiting here are proposed by the next view's leader only if it is this member:
        // elsewhere they would wait forever, so their joiners are sent to the leader.
        let leader = node.view.members[new_gms.leader_rank()];
        if leader == self.me {
            new_gms.joins = carry.joins;
        } else {
            let address = next.addresses.iter().find(|(n, _)| *n == leader).map(|(_, a)| a.clone()).unwrap_or_default();
            for j in carry.joins {
                let refusal = JoinRefusal::NotLeader { leader, address: address.clone() };
                node.outputs.push_back(Output::JoinRefused { node: j.node, refusal });
            }
        }
        for old in carry.last_shards {
            if new_gms.last_shards.iter().all(|s| s.id != old.id) {
                new_gms.last_shards.push(old);
            }
        }
        if carry.leaving {
            new_gms.leave(&mut node.mem);
        }
        new_gms.set_saves_proposals(self.saves_proposals);
        node.saves_proposals = self.saves_proposals;
        node.gms = Some(new_gms);
        for (shard, msgs) in carry.resend {
            let sender = node.view.shards.iter().any(|s| s.id == shard && s.senders.contains(&self.me));
            if sender {
                node.resend.extend(msgs.into_iter().map(|(t, p)| (shard, t, p)));
            } else if !msgs.is_empty() {
                node.outputs.push_back(Output::ResendFailed { shard, count: msgs.len() });
            }
        }
        node.outputs.extend(self.outputs.drain(..));
        for t in &next.transfers {
            if t.from.contains(&self.me) {
                node.outputs.push_back(Output::SendState { shard: t.shard, to: t.to.clone() });
            }
        }
        node.await_transfers(&next, now);
        // What is durable here stays durable: republished in the new table.
        node.persisted = std::mem::take(&mut self.persisted);
        for s in &mut node.shards {
            if let Some(&p) = node.persisted.get(&s.id) {
                s.set_persisted(&mut node.mem, p);
            }
        }
        debug_assert!(old_view.id < node.view.id);
        node.steps_out(GmsStep::Installed(node.view.id));
        *self = node;
        self.run_rules(now);
        Ok(())
    }

    fn await_transfers(&mut self, next: &NextView, now: Time) {
        let mut waiting = false;
        for t in &next.transfers {
            if t.to.contains(&self.me)
                && let Some(s) = self.shards.iter_mut().find(|s| s.id == t.shard)
            {
                s.awaiting_state = true;
                waiting = true;
            }
        }
        if waiting && let Some(g) = &self.gms {
            self.state_deadline = Some(now.plus_ns(g.config.state_transfer_timeout_ns()));
        }
    }

    fn take_resends(&self, gms: &Gms) -> Resends {
        let Some(f) = &gms.final_record else { return Vec::new() };
        let mut out = Vec::new();
        for s in &self.shards {
            let si = self.view.shards.iter().position(|l| l.id == s.id).expect("a shard of the view");
            let msgs = s.undelivered_own(&self.mem, &f.trims[si]);
            if !msgs.is_empty() {
                out.push((s.id, msgs));
            }
        }
        // Messages of an earlier view still queued came after those already re-sent (which left
        // the queue's front first): they follow them.
        for (shard, t, p) in &self.resend {
            match out.iter_mut().find(|(s, _)| s == shard) {
                Some((_, v)) => v.push((*t, p.clone())),
                None => out.push((*shard, vec![(*t, p.clone())])),
            }
        }
        out
    }

    fn steps_out(&mut self, step: GmsStep) {
        self.outputs.push_back(Output::Step(step));
    }

    /// This member.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The next view's id and members as proposed, once this member proposed or acknowledged a
    /// change ([`GmsStep::Proposed`], [`GmsStep::Acked`]); `None` if no change is under way. A
    /// persisting driver saves it before its acknowledgement leaves (PROTOCOLS §4.1): a view
    /// is committed only once a majority acknowledged it, so a restart quorum always hears of
    /// it.
    pub fn proposed_view(&self) -> Option<(super::ids::ViewId, Vec<NodeId>)> {
        let g = self.gms.as_ref()?;
        g.proposed_members(&self.view).map(|m| (super::ids::ViewId(self.view.id.0 + 1), m))
    }

    /// Makes this member save every view it proposes or acknowledges before anyone can count
    /// it (PROTOCOLS §4.1): the change list and its counters go into its row only once
    /// [`Node::proposal_saved`] says it is saved ([`Node::awaits_save`] until then), while
    /// heartbeats go on. For a persisting member; kept across views.
    pub fn set_saves_proposals(&mut self, saves: bool) {
        self.saves_proposals = saves;
        if let Some(g) = &mut self.gms {
            g.set_saves_proposals(saves);
        }
    }

    /// The proposal this member took up ([`Node::proposed_view`]) is saved: its acknowledgement
    /// (or, as leader, its proposal) goes into its row, and the rules run.
    pub fn proposal_saved(&mut self, now: Time) {
        if let Some(g) = &mut self.gms {
            g.proposal_saved(&mut self.mem);
        }
        self.run_rules(now);
    }

    /// Whether the proposal this member took up waits to be saved.
    pub fn awaits_save(&self) -> bool {
        self.gms.as_ref().is_some_and(Gms::awaits_save)
    }

    /// Whether `node`'s row has shown a heartbeat in this view, that is, `node` installed it (a
    /// driver keeps the previous view's connections open until then). False for a static node.
    pub fn heard_in_view(&self, node: NodeId) -> bool {
        match (&self.gms, self.view.rank_of(node)) {
            (Some(g), Some(r)) => g.row_moved(r),
            _ => false,
        }
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The table's row layout.
    pub fn row_layout(&self) -> &RowLayout {
        &self.layout
    }

    /// The table memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The table memory, for a driver or simulator that applies pushes into it.
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The range of the table that `node`'s row occupies (pushes from `node` must stay in it).
    pub fn row_range(&self, node: NodeId) -> Option<Range<usize>> {
        let rank = self.view.rank_of(node)?;
        let start = self.layout.row(rank);
        Some(start..start + self.layout.row_len)
    }

    /// Feeds an input and runs the rules once (PROTOCOLS §1: after every batch of updates).
    pub fn handle(&mut self, now: Time, input: Input) {
        match input {
            Input::RowsChanged | Input::Tick => {}
            Input::PeerFailed(n) | Input::ReportFailure(n) => {
                if let Some(g) = &mut self.gms {
                    g.suspect_later(n);
                }
            }
            Input::PeerAlive(n) => {
                if let (Some(g), Some(r)) = (&mut self.gms, self.view.rank_of(n)) {
                    g.heard(r, now);
                }
            }
            Input::Join { node, address, returning } => self.join_request(node, address, returning),
            Input::Leave => {
                if let Some(g) = &mut self.gms {
                    g.leave(&mut self.mem);
                }
            }
            // Only while running: once the view change is over here, a state that comes too late
            // must not make `install` believe this member caught up.
            Input::StateReceived(shard) if self.phase == Phase::Running => {
                if let Some(s) = self.shards.iter_mut().find(|s| s.id == shard) {
                    s.awaiting_state = false;
                }
                if !self.shards.iter().any(|s| s.awaiting_state) {
                    self.state_deadline = None;
                }
            }
            Input::StateReceived(_) => {}
        }
        self.run_rules(now);
    }

    /// Whether this member would admit `node` at `address` now (PROTOCOLS §3.5): it is the
    /// leader, the id is free, the group has room. A join already under way for the same id and
    /// address (waiting, or in the change list, perhaps inherited from an earlier leader) is a
    /// retry ([`JoinCheck::UnderWay`]), not an id in use.
    ///
    /// # Errors
    ///
    /// The refusal to answer the joiner with.
    pub fn check_join(&self, node: NodeId, address: &str) -> Result<JoinCheck, JoinRefusal> {
        let Some(g) = &self.gms else { return Err(JoinRefusal::IdInUse(node)) };
        if address.len() > ADDRESS_LEN_MAX {
            return Err(JoinRefusal::AddressTooLong);
        }
        let leader = self.view.members[g.leader_rank()];
        if leader != self.me {
            let address = g.addresses.get(&leader).cloned().unwrap_or_default();
            return Err(JoinRefusal::NotLeader { leader, address });
        }
        if self.view.rank_of(node).is_some() {
            return Err(JoinRefusal::IdInUse(node));
        }
        match g.join_under_way(node) {
            Some(a) if a == address => return Ok(JoinCheck::UnderWay),
            Some(_) => return Err(JoinRefusal::IdInUse(node)),
            None => {}
        }
        if self.view.members.len() + g.joins_under_way() >= self.limits.members_max as usize {
            return Err(JoinRefusal::GroupFull(self.limits.members_max));
        }
        Ok(JoinCheck::New)
    }

    fn join_request(&mut self, node: NodeId, address: String, returning: bool) {
        match self.check_join(node, &address) {
            Ok(JoinCheck::New) => {
                let joiner = super::membership::Joiner { node, address, returning };
                self.gms.as_mut().expect("checked: membership").joins.push(joiner);
            }
            Ok(JoinCheck::UnderWay) => {}
            Err(refusal) => self.outputs.push_back(Output::JoinRefused { node, refusal }),
        }
    }

    fn run_rules(&mut self, now: Time) {
        if matches!(self.phase, Phase::Stopped(_) | Phase::Installing(_)) {
            return;
        }
        self.flush_resends(now);
        // Everything sent so far (by `send`, and the resends just above) is received locally
        // by the pass below: nothing is left for `catch_up`.
        self.sent_since_step = None;
        for s in &mut self.shards {
            s.receive(&self.mem, &mut self.violations);
            s.update(&mut self.mem, now);
        }
        for (node, violation) in self.violations.drain(..) {
            if let Some(g) = &mut self.gms {
                g.suspect_later(node);
            }
            self.outputs.push_back(Output::Violation { node, violation });
        }
        let Some(g) = &mut self.gms else { return };
        g.step(now, &self.view, &mut self.mem, &mut self.shards);
        for (node, violation) in g.violations.drain(..) {
            self.outputs.push_back(Output::Violation { node, violation });
        }
        for step in g.steps.drain(..) {
            self.outputs.push_back(Output::Step(step));
        }
        if let Some(reason) = g.stop.take() {
            self.stop(reason);
            return;
        }
        if let Some(deadline) = self.state_deadline
            && now >= deadline
            && let Some(s) = self.shards.iter().find(|s| s.awaiting_state)
        {
            let shard = s.id;
            self.stop(StopReason::StateTransferTimeout(shard));
        }
    }

    fn stop(&mut self, reason: StopReason) {
        self.outputs.push_back(Output::Stopped(reason.clone()));
        self.phase = Phase::Stopped(reason);
    }

    /// Sends again, in order, own messages of the previous view above its trim; stops at the
    /// first that does not fit yet.
    fn flush_resends(&mut self, now: Time) {
        while let Some((shard, t, payload)) = self.resend.front() {
            let (shard, t) = (*shard, *t);
            let Some(s) = self.shards.iter_mut().find(|s| s.id == shard) else {
                let count = self.resend.iter().filter(|r| r.0 == shard).count();
                self.resend.retain(|r| r.0 != shard);
                self.outputs.push_back(Output::ResendFailed { shard, count });
                continue;
            };
            let len = payload.len();
            match s.send(&mut self.mem, t.max(now), len, |b| b.copy_from_slice(payload)) {
                Ok(_) => {
                    self.resend.pop_front();
                    self.sent_since_step = Some(now);
                }
                Err(_) => break,
            }
        }
    }

    /// Runs the rules if messages were sent since they last ran.
    fn catch_up(&mut self) {
        if let Some(at) = self.sent_since_step {
            self.run_rules(at);
        }
    }

    /// Sends a message of `len` bytes into `shard`, written in place by `fill`. Returns the
    /// message's index (this member's count of messages in the shard, this view).
    ///
    /// # Errors
    ///
    /// [`SendError::WindowFull`] when earlier messages must be delivered everywhere first (try
    /// again after the next input); the others are permanent for this message.
    pub fn send(
        &mut self,
        now: Time,
        shard: ShardRef,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64, SendError> {
        match &self.phase {
            Phase::Running => {}
            Phase::Installing(_) => return Err(SendError::Wedged(shard)),
            Phase::Stopped(r) => return Err(SendError::Stopped(r.to_string())),
        }
        if self.resend.iter().any(|r| r.0 == shard) {
            // Older messages go first.
            return Err(SendError::WindowFull(shard));
        }
        let (mem, shards) = (&mut self.mem, &mut self.shards);
        let s = shards.iter_mut().find(|s| s.id == shard).ok_or(SendError::NotAMember(shard))?;
        let index = s.send(mem, now, len, fill)?;
        // Our own messages are received locally before the next delivery or push, once for a
        // whole batch of sends rather than after each one.
        self.sent_since_step = Some(now);
        Ok(index)
    }

    /// Whether a message of `len` bytes could be sent into `shard` now.
    pub fn can_send(&mut self, shard: ShardRef, len: usize) -> bool {
        if self.phase != Phase::Running || self.resend.iter().any(|r| r.0 == shard) {
            return false;
        }
        let mem = &self.mem;
        self.shards.iter_mut().find(|s| s.id == shard).is_some_and(|s| s.can_send(mem, len))
    }

    /// Delivers every deliverable message to `f`, in order; returns how many were delivered.
    pub fn deliver(&mut self, mut f: impl FnMut(Delivered<'_>)) -> usize {
        if self.phase != Phase::Running {
            return 0;
        }
        self.catch_up();
        let mut n = 0;
        for s in &mut self.shards {
            n += s.deliver(&mut self.mem, &mut f);
        }
        // A new member whose state is still on its way waits for it (until the state deadline
        // stops it) before delivering up to the trim: the state plus the messages up to the trim
        // is the shard's whole history; without the state it could not go on into the next view.
        let waiting_for_state = self.state_deadline.is_some() && self.shards.iter().any(|s| s.awaiting_state);
        if self.gms.as_ref().is_some_and(|g| g.trim_ready && !g.trim_delivered) && !waiting_for_state {
            n += self.deliver_trimmed(&mut f);
        }
        n
    }

    /// Queues the pushes owed: each shard's data then counters, then the membership section.
    fn queue_pushes(&mut self) {
        for s in &mut self.shards {
            if s.dirty() {
                let to = s.push_to.clone();
                s.flush(&mut |range| self.outputs.push_back(Output::Push { range, to: to.clone() }));
            }
        }
        if let Some(g) = &mut self.gms
            && !matches!(self.phase, Phase::Stopped(_))
            && !self.all_peers.is_empty()
        {
            let to = self.all_peers.clone();
            g.flush(&mut |range| self.outputs.push_back(Output::Push { range, to: to.clone() }));
        }
    }

    /// Ragged-edge delivery, then the next view (PROTOCOLS §3.3 steps 7, 8).
    fn deliver_trimmed(&mut self, f: &mut impl FnMut(Delivered<'_>)) -> usize {
        let g = self.gms.as_ref().expect("membership");
        let trims = g.final_record.as_ref().expect("a final record").trims.clone();
        let leader = self.view.members[g.leader_rank()];
        let mut n = 0;
        for s in &mut self.shards {
            let si = self.view.shards.iter().position(|l| l.id == s.id).expect("a shard of the view");
            match s.deliver_trimmed(&mut self.mem, &trims[si], f) {
                Ok(k) => n += k,
                Err(_) => {
                    // A trim above what this member received: the final record lied.
                    let violation =
                        RowViolation::Membership { column: "trim", reason: "above what this member received" };
                    self.outputs.push_back(Output::Violation { node: leader, violation });
                    let why = "a final trim above what it received";
                    self.stop(StopReason::Removed { view: self.view.id.0, why });
                    return n;
                }
            }
        }
        let g = self.gms.as_mut().expect("membership");
        g.trim_delivered = true;
        let (removed, leaving) = (g.removed_self(&self.view), g.leaving);
        let next = g.next_view(&self.view);
        self.outputs.push_back(Output::Step(GmsStep::TrimDelivered));
        // Everything owed in the old view (the echo of the final record above all: members
        // still waiting for it cannot finish without it) goes before the next view.
        self.queue_pushes();
        if removed {
            let reason = if leaving {
                StopReason::Left(self.view.id.0)
            } else {
                StopReason::Removed { view: self.view.id.0, why: "the view change removed it" }
            };
            self.stop(reason);
            return n;
        }
        self.outputs.push_back(Output::NextView(next.clone()));
        self.phase = Phase::Installing(next);
        n
    }

    /// The next thing to do, data pushes before counter pushes.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.catch_up();
        if self.outputs.is_empty() {
            self.queue_pushes();
        }
        self.outputs.pop_front()
    }

    /// When to call [`Node::handle`] (with [`Input::Tick`]) again if no input arrives: the next
    /// heartbeat, suspicion deadline or state transfer deadline. `None` for a static node, a
    /// stopped one, or one waiting for [`Node::install`].
    pub fn poll_timeout(&self) -> Option<Time> {
        // Between views the rules do not run (nothing is due until the next view installs).
        if !matches!(self.phase, Phase::Running) {
            return None;
        }
        let g = self.gms.as_ref()?.next_timeout();
        match (g, self.state_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether this member waits for the state of `shard` (it applies the first that arrives;
    /// a later copy must be ignored).
    pub fn awaiting_state(&self, shard: ShardRef) -> bool {
        self.shards.iter().any(|s| s.id == shard && s.awaiting_state)
    }

    /// Why this member stopped, if it did.
    pub fn stopped(&self) -> Option<&StopReason> {
        match &self.phase {
            Phase::Stopped(r) => Some(r),
            _ => None,
        }
    }

    /// The next view, while it waits for [`Node::install`].
    pub fn next_view(&self) -> Option<&NextView> {
        match &self.phase {
            Phase::Installing(n) => Some(n),
            _ => None,
        }
    }

    /// The leader of the view as this member sees it (lowest rank it does not suspect).
    pub fn leader(&self) -> NodeId {
        self.gms.as_ref().map_or(self.view.members[0], |g| self.view.members[g.leader_rank()])
    }

    /// This member's rank in the view.
    pub fn my_rank(&self) -> usize {
        self.view.rank_of(self.me).expect("a member of its view")
    }

    /// The members this member suspects, in rank order.
    pub fn suspected(&self) -> Vec<NodeId> {
        self.gms.as_ref().map_or_else(Vec::new, |g| {
            (0..self.view.members.len()).filter(|&r| g.suspected[r]).map(|r| self.view.members[r]).collect()
        })
    }

    /// Whether a view change is under way here (new multicasts wait).
    pub fn is_wedged(&self) -> bool {
        self.gms.as_ref().is_some_and(|g| g.wedged)
    }

    /// The trims of this view's final record, per shard in view order, once this member has
    /// one (the view-agreement checker compares them across members).
    pub fn final_trims(&self) -> Option<Vec<(ShardRef, Vec<u64>)>> {
        let f = self.gms.as_ref()?.final_record.as_ref()?;
        Some(self.view.shards.iter().map(|s| s.id).zip(f.trims.iter().cloned()).collect())
    }

    /// Every member's address, as this member knows them.
    pub fn addresses(&self) -> Vec<(NodeId, String)> {
        self.gms.as_ref().map_or_else(Vec::new, |g| g.addresses.iter().map(|(n, a)| (*n, a.clone())).collect())
    }

    /// Own messages of an earlier view still waiting to be sent again.
    pub fn resends_pending(&self) -> usize {
        self.resend.len()
    }

    /// Messages delivered in `shard` so far (ordered shards: `delivered_num + 1`).
    pub fn delivered_count(&self, shard: ShardRef) -> Option<u64> {
        self.shards.iter().find(|s| s.id == shard).map(ShardState::delivered_count)
    }

    /// Messages (not nulls) delivered here in `shard` in this view.
    pub fn messages_delivered(&self, shard: ShardRef) -> Option<u64> {
        self.shards.iter().find(|s| s.id == shard).map(ShardState::messages_delivered)
    }

    /// What this member has delivered in `shard` (messages and nulls): one count in ordered
    /// mode, one per sender in unordered mode. Pass it to [`Node::delivered_everywhere`] later to
    /// learn when every member has caught up with it: a clean point to stop.
    pub fn delivery_frontier(&self, shard: ShardRef) -> Option<Vec<u64>> {
        self.shards.iter().find(|s| s.id == shard).map(|s| s.delivery_frontier(&self.mem))
    }

    /// Whether every member of `shard` has delivered at least `frontier` (from
    /// [`Node::delivery_frontier`]); `None` if this member is not in the shard.
    pub fn delivered_everywhere(&self, shard: ShardRef, frontier: &[u64]) -> Option<bool> {
        self.shards.iter().find(|s| s.id == shard).map(|s| s.delivered_everywhere(&self.mem, frontier))
    }

    /// Reports that every version of `shard` up to `version` is durable on this member
    /// (PROTOCOLS §4, the local persistence frontier); published in the table for the global
    /// frontier ([`Node::persisted_everywhere`]). Reports that go backwards are ignored.
    pub fn report_persisted(&mut self, shard: ShardRef, version: Version) {
        let v = version.as_u64().saturating_add(1);
        let entry = self.persisted.entry(shard).or_insert(0);
        if v <= *entry {
            return;
        }
        *entry = v;
        if let Some(s) = self.shards.iter_mut().find(|s| s.id == shard) {
            s.set_persisted(&mut self.mem, v);
        }
    }

    /// The local persistence frontier of `shard`: the highest version reported durable here.
    pub fn persisted_here(&self, shard: ShardRef) -> Option<Version> {
        self.persisted.get(&shard).filter(|&&v| v > 0).map(|&v| Version::from_u64(v - 1))
    }

    /// The global persistence frontier of `shard`: the highest version durable at every member
    /// of the shard in this view, as their rows say; `None` if some member has reported nothing
    /// in this view yet, or this member is not in the shard.
    pub fn persisted_everywhere(&self, shard: ShardRef) -> Option<Version> {
        let s = self.shards.iter().find(|s| s.id == shard)?;
        let v = s.persisted_everywhere(&self.mem);
        (v > 0).then(|| Version::from_u64(v - 1))
    }

    /// Updates `seen` to where delivery, flow control and persistence stand now; true if
    /// anything moved since `seen` was last updated (or the view changed). No allocation once
    /// `seen` has been sized for the view's shards: a driver calls it after every batch.
    pub fn update_progress(&self, seen: &mut Progress) -> bool {
        let n = self.shards.len();
        let mut moved = seen.view != self.view.id.0 || seen.released.len() != n;
        let mut frontiers = moved;
        if moved {
            seen.view = self.view.id.0;
            seen.released.resize(n, 0);
            seen.delivered_everywhere.resize(n, 0);
            seen.persisted_everywhere.resize(n, 0);
            seen.persisted_here.resize(n, 0);
        }
        for (i, s) in self.shards.iter().enumerate() {
            let now = (
                s.released(&self.mem),
                s.delivered_everywhere_progress(&self.mem),
                s.persisted_everywhere(&self.mem),
                self.persisted.get(&s.id).copied().unwrap_or(0),
            );
            let was =
                (seen.released[i], seen.delivered_everywhere[i], seen.persisted_everywhere[i], seen.persisted_here[i]);
            frontiers |= (was.2, was.3) != (now.2, now.3);
            if was != now {
                (
                    seen.released[i],
                    seen.delivered_everywhere[i],
                    seen.persisted_everywhere[i],
                    seen.persisted_here[i],
                ) = now;
                moved = true;
            }
        }
        if frontiers {
            seen.frontier_moves += 1;
        }
        moved
    }

    /// Indices this member has published in `shard` (messages and nulls).
    pub fn sent_count(&self, shard: ShardRef) -> Option<u64> {
        self.shards.iter().find(|s| s.id == shard).map(ShardState::sent_count)
    }

    /// This member's indices in `shard` not yet released by every member (sent, not yet
    /// delivered everywhere): what flow control counts against the window.
    pub fn in_flight(&self, shard: ShardRef) -> Option<u64> {
        let s = self.shards.iter().find(|s| s.id == shard)?;
        Some(s.sent_count().saturating_sub(s.released(&self.mem)))
    }

    /// The largest number of this member's indices that were outstanding at once in `shard`
    /// (never above `window_len`; the window checker reads it).
    pub fn outstanding_max(&self, shard: ShardRef) -> Option<u64> {
        self.shards.iter().find(|s| s.id == shard).map(|s| s.outstanding_max_seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::layout::DeliveryMode;
    use crate::protocol::layout::tests::{one_shard_view, shard0};
    use crate::protocol::sst::HeapMemory;

    fn limits() -> Limits {
        Limits { window_len: 8, payload_len_max: 256, ring_len: 4096, ..Limits::default() }
    }

    /// N nodes whose pushes are applied to every peer at once.
    /// (sender, index, seq, payload)
    type Record = (NodeId, u64, Option<u64>, Vec<u8>);

    struct Net {
        nodes: Vec<Node<HeapMemory>>,
        delivered: Vec<Vec<Record>>,
        violations: Vec<(NodeId, NodeId)>,
    }

    impl Net {
        fn new(n: u32, senders: &[u32], mode: DeliveryMode) -> Self {
            let view = one_shard_view(n, senders, mode);
            let len = Node::<HeapMemory>::table_len(&view, &limits());
            let nodes =
                (0..n).map(|i| Node::new(NodeId(i), view.clone(), &limits(), HeapMemory::new(len)).unwrap()).collect();
            Self { nodes, delivered: vec![Vec::new(); n as usize], violations: Vec::new() }
        }

        /// Propagates every push, runs the rules and delivers, until nothing moves.
        fn settle(&mut self) {
            for _ in 0..1000 {
                let mut moved = false;
                for i in 0..self.nodes.len() {
                    while let Some(o) = self.nodes[i].poll_output() {
                        match o {
                            Output::Push { range, to } => {
                                let bytes = self.nodes[i].memory().slice(range.clone()).to_vec();
                                for peer in to.iter() {
                                    self.nodes[peer.0 as usize].memory_mut().apply(range.start, &bytes);
                                }
                                moved = true;
                            }
                            Output::Violation { node, .. } => self.violations.push((NodeId(i as u32), node)),
                            other => panic!("a static node produced {other:?}"),
                        }
                    }
                }
                for i in 0..self.nodes.len() {
                    self.nodes[i].handle(Time(0), Input::RowsChanged);
                    let out = &mut self.delivered[i];
                    self.nodes[i]
                        .deliver(|d| out.push((d.sender, d.index, d.version.map(|v| v.seq()), d.payload.to_vec())));
                }
                if !moved && self.nodes.iter_mut().all(|n| n.poll_output().is_none()) {
                    return;
                }
            }
            panic!("the network did not settle");
        }
    }

    #[test]
    fn all_senders_deliver_the_same_total_order() {
        let mut net = Net::new(3, &[0, 1, 2], DeliveryMode::Ordered);
        for round in 0..5u8 {
            for i in 0..3 {
                net.nodes[i].send(Time(1), shard0(), 3, |b| b.copy_from_slice(&[i as u8, round, 7])).unwrap();
            }
            net.settle();
        }
        assert_eq!(net.delivered[0].len(), 15);
        for i in 1..3 {
            assert_eq!(net.delivered[i], net.delivered[0], "member {i} delivered another order");
        }
        // seq = k * S + r: round-robin over the senders.
        let seqs: Vec<u64> = net.delivered[0].iter().map(|d| d.2.unwrap()).collect();
        assert_eq!(seqs, (0..15).collect::<Vec<_>>());
        assert!(net.violations.is_empty());
    }

    #[test]
    fn a_lone_sender_makes_progress_through_nulls() {
        let mut net = Net::new(3, &[0, 1, 2], DeliveryMode::Ordered);
        for k in 0..20u8 {
            loop {
                match net.nodes[2].send(Time(1), shard0(), 1, |b| b[0] = k) {
                    Ok(_) => break,
                    Err(SendError::WindowFull(_)) => net.settle(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        net.settle();
        for i in 0..3 {
            let got: Vec<u8> = net.delivered[i].iter().map(|d| d.3[0]).collect();
            assert_eq!(got, (0..20).collect::<Vec<u8>>(), "member {i}");
        }
        // The idle senders sent nulls, not messages.
        assert!(net.nodes[0].sent_count(shard0()).unwrap() >= 19);
    }

    #[test]
    fn an_idle_shard_sends_nothing() {
        let mut net = Net::new(3, &[0, 1, 2], DeliveryMode::Ordered);
        net.settle();
        for n in &mut net.nodes {
            assert_eq!(n.sent_count(shard0()), Some(0));
            assert!(n.poll_output().is_none());
        }
    }

    #[test]
    fn unordered_delivers_fifo_per_sender_without_versions() {
        let mut net = Net::new(3, &[0, 1], DeliveryMode::Unordered);
        for k in 0..6u8 {
            net.nodes[0].send(Time(1), shard0(), 1, |b| b[0] = k).unwrap();
            if k % 2 == 0 {
                net.nodes[1].send(Time(1), shard0(), 1, |b| b[0] = 100 + k).unwrap();
            }
            net.settle();
        }
        for i in 0..3 {
            let from0: Vec<u8> = net.delivered[i].iter().filter(|d| d.0 == NodeId(0)).map(|d| d.3[0]).collect();
            let from1: Vec<u8> = net.delivered[i].iter().filter(|d| d.0 == NodeId(1)).map(|d| d.3[0]).collect();
            assert_eq!(from0, vec![0, 1, 2, 3, 4, 5]);
            assert_eq!(from1, vec![100, 102, 104]);
            assert!(net.delivered[i].iter().all(|d| d.2.is_none()));
        }
    }

    #[test]
    fn a_full_window_refuses_instead_of_dropping() {
        let mut net = Net::new(2, &[0], DeliveryMode::Ordered);
        let w = limits().window_len as u64;
        // Nothing propagates: the peer never delivers, so after `window_len` messages the window
        // is full.
        for k in 0..w {
            assert_eq!(net.nodes[0].send(Time(1), shard0(), 1, |b| b[0] = k as u8), Ok(k));
        }
        assert_eq!(net.nodes[0].send(Time(1), shard0(), 1, |_| {}), Err(SendError::WindowFull(shard0())));
        assert!(!net.nodes[0].can_send(shard0(), 1));
        net.settle();
        assert!(net.nodes[0].can_send(shard0(), 1));
        assert_eq!(net.delivered[1].len(), w as usize);
        assert!(net.nodes[0].outstanding_max(shard0()).unwrap() <= w);
    }

    #[test]
    fn send_errors_are_typed() {
        let mut net = Net::new(2, &[0], DeliveryMode::Ordered);
        assert_eq!(net.nodes[1].send(Time(0), shard0(), 1, |_| {}), Err(SendError::NotASender(shard0())));
        assert_eq!(net.nodes[0].send(Time(0), shard0(), 257, |_| {}), Err(SendError::TooLarge { len: 257, max: 256 }));
        let other = ShardRef { subgroup: crate::protocol::SubgroupId(9), shard: crate::protocol::ShardIndex(0) };
        assert_eq!(net.nodes[0].send(Time(0), other, 1, |_| {}), Err(SendError::NotAMember(other)));
    }

    #[test]
    fn a_lying_row_is_reported_and_ignored() {
        let mut net = Net::new(2, &[0, 1], DeliveryMode::Ordered);
        net.nodes[0].send(Time(1), shard0(), 1, |b| b[0] = 1).unwrap();
        // Node 0's row as seen by node 1: claim two more messages than the ring holds.
        let cols = net.nodes[1].row_layout().shards[0].clone();
        let sent_at = cols.sent;
        net.settle();
        net.nodes[1].memory_mut().store_u64(sent_at, 5);
        net.nodes[1].handle(Time(2), Input::RowsChanged);
        let v: Vec<Output> = std::iter::from_fn(|| net.nodes[1].poll_output()).collect();
        assert!(
            v.iter()
                .any(|o| matches!(o, Output::Violation { node: NodeId(0), violation: RowViolation::BadRecord { .. } })),
            "{v:?}"
        );
        // A counter going backwards is a violation too.
        let mut net = Net::new(2, &[0, 1], DeliveryMode::Ordered);
        net.nodes[0].send(Time(1), shard0(), 1, |_| {}).unwrap();
        net.settle();
        net.nodes[1].memory_mut().store_u64(sent_at, 0);
        net.nodes[1].handle(Time(2), Input::RowsChanged);
        let v: Vec<Output> = std::iter::from_fn(|| net.nodes[1].poll_output()).collect();
        assert!(
            v.iter().any(|o| matches!(o, Output::Violation { violation: RowViolation::CounterBackwards { .. }, .. }))
        );
    }

    #[test]
    fn a_pad_record_at_the_start_of_a_ring_is_a_violation_not_a_hang() {
        let mut net = Net::new(2, &[0, 1], DeliveryMode::Ordered);
        net.settle();
        // Node 0's row as seen by node 1: a pad record at ring position 0, and a sent counter
        // that promises a message behind it.
        let cols = net.nodes[1].row_layout().shards[0].clone();
        let ring = cols.ring;
        net.nodes[1].memory_mut().slice_mut(ring..ring + 32).fill(0);
        net.nodes[1].memory_mut().slice_mut(ring + 20..ring + 21)[0] = 3; // KIND_PAD
        net.nodes[1].memory_mut().store_u64(cols.sent, 1);
        net.nodes[1].handle(Time(2), Input::RowsChanged);
        let v: Vec<Output> = std::iter::from_fn(|| net.nodes[1].poll_output()).collect();
        assert!(
            v.iter()
                .any(|o| matches!(o, Output::Violation { node: NodeId(0), violation: RowViolation::BadRecord { .. } })),
            "{v:?}"
        );
    }

    #[test]
    fn node_creation_errors_name_the_problem() {
        let view = one_shard_view(2, &[0], DeliveryMode::Ordered);
        let len = Node::<HeapMemory>::table_len(&view, &limits());
        let e = Node::new(NodeId(7), view.clone(), &limits(), HeapMemory::new(len)).unwrap_err();
        assert_eq!(e, NodeError::NotAMember(NodeId(7)));
        let e = Node::new(NodeId(0), view.clone(), &limits(), HeapMemory::new(len - 64)).unwrap_err();
        assert!(matches!(e, NodeError::MemoryLen { .. }));
        let bad = Limits { window_len: 0, ..limits() };
        assert!(matches!(Node::new(NodeId(0), view, &bad, HeapMemory::new(len)), Err(NodeError::Limit(_))));
    }
}

#[cfg(test)]
mod membership_tests {
    use super::*;
    use crate::protocol::layout::DeliveryMode;
    use crate::protocol::membership::OneShard;
    use crate::protocol::sst::HeapMemory;
    use crate::protocol::{GmsStep, ViewId};

    fn limits() -> Limits {
        Limits { window_len: 8, payload_len_max: 64, ring_len: 1024, changes_max: 4, ..Limits::default() }
    }

    fn member(me: u32) -> Node<HeapMemory> {
        let ids: Vec<NodeId> = (0..3).map(NodeId).collect();
        let layout = Rc::new(OneShard { mode: DeliveryMode::Ordered, min_members: 1 });
        let shards = crate::protocol::LayoutFn::layout(&*layout, &ids).unwrap();
        let view = View { id: ViewId(0), members: ids.clone(), shards };
        let addresses = ids.iter().map(|n| (*n, format!("a{}", n.0))).collect();
        let len = Node::<HeapMemory>::table_len(&view, &limits());
        let config = MembershipConfig {
            heartbeat: std::time::Duration::from_micros(1),
            suspect_after: std::time::Duration::from_millis(1),
            ..MembershipConfig::default()
        };
        Node::with_membership(NodeId(me), view, addresses, &limits(), HeapMemory::new(len), config, layout, Time(0))
            .unwrap()
    }

    /// SplitMix64, for the garbage (the protocol module has no randomness of its own).
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn garbage_in_a_peer_row_is_a_violation_never_a_panic() {
        let mut seed = 7u64;
        let mut accused = 0;
        for round in 0..2_000u64 {
            let mut n = member(0);
            n.handle(Time(1), Input::RowsChanged);
            // Write random words (small values half the time, to pass the cheap checks) into
            // peer 1's row, membership section and shard counters alike.
            let row = n.row_range(NodeId(1)).unwrap();
            let gms_end = row.start + n.row_layout().gms.end + 64;
            for _ in 0..1 + next(&mut seed) % 8 {
                let at = row.start + (next(&mut seed) as usize % (gms_end - row.start)) / 8 * 8;
                let v = if next(&mut seed).is_multiple_of(2) { next(&mut seed) % 4 } else { next(&mut seed) };
                n.memory_mut().store_u64(at, v);
            }
            for t in 2..6 {
                n.handle(Time(t * 1000), Input::RowsChanged);
                n.deliver(|_| {});
                while let Some(o) = n.poll_output() {
                    if let Output::Violation { node, .. } = o {
                        assert_eq!(node, NodeId(1), "round {round}: an honest row was accused");
                        accused += 1;
                    }
                }
            }
        }
        assert!(accused > 500, "garbage was accused only {accused} times in 2000 rounds");
    }

    /// Total restart relies on this order (PROTOCOLS §4.1): the step that proposes or
    /// acknowledges a view comes out before the push that shows it to the others, so a driver
    /// saves the proposed view (`Node::proposed_view`) before anyone can count the
    /// acknowledgement.
    #[test]
    fn a_proposal_and_its_acknowledgement_come_out_before_their_pushes() {
        let mut leader = member(0);
        leader.handle(Time(1), Input::Join { node: NodeId(9), address: "a9".into(), returning: false });
        let out: Vec<Output> = std::iter::from_fn(|| leader.poll_output()).collect();
        let step = out.iter().position(|o| matches!(o, Output::Step(GmsStep::Proposed(_)))).expect("a proposal");
        let first_push = out.iter().position(|o| matches!(o, Output::Push { .. })).expect("a push");
        assert!(step < first_push, "{out:?}");
        let (id, members) = leader.proposed_view().expect("a proposed view");
        assert_eq!(id, ViewId(1));
        assert!(members.contains(&NodeId(9)) && members.contains(&NodeId(0)), "{members:?}");
        // A follower that reads the proposal acknowledges it: the step first, then its pushes.
        let mut follower = member(1);
        follower.handle(Time(1), Input::RowsChanged);
        while follower.poll_output().is_some() {}
        for o in &out {
            if let Output::Push { range, .. } = o {
                let bytes = leader.memory().slice(range.clone()).to_vec();
                follower.memory_mut().apply(range.start, &bytes);
            }
        }
        follower.handle(Time(2), Input::RowsChanged);
        let out: Vec<Output> = std::iter::from_fn(|| follower.poll_output()).collect();
        let step = out.iter().position(|o| matches!(o, Output::Step(GmsStep::Acked { .. }))).expect("an ack");
        assert!(out[..step].iter().all(|o| !matches!(o, Output::Push { .. })), "a push before the ack step: {out:?}");
        assert_eq!(follower.proposed_view().map(|(id, _)| id), Some(ViewId(1)));
    }

    /// Runs the nodes (ids = indices) until nothing moves: pushes reach the members of the
    /// same view, next views are installed at once. Returns each node's other outputs.
    fn settle(nodes: &mut [Node<HeapMemory>]) -> Vec<Vec<Output>> {
        let mut others: Vec<Vec<Output>> = nodes.iter().map(|_| Vec::new()).collect();
        for round in 0..500u64 {
            let mut moved = false;
            for i in 0..nodes.len() {
                nodes[i].handle(Time(2 + round), Input::RowsChanged);
                nodes[i].deliver(|_| {});
                while let Some(o) = nodes[i].poll_output() {
                    match o {
                        Output::Push { range, to } => {
                            let bytes = nodes[i].memory().slice(range.clone()).to_vec();
                            let view = nodes[i].view().id;
                            let count = nodes.len();
                            for j in to.iter().map(|n| n.0 as usize).filter(|&j| j < count) {
                                if nodes[j].view().id == view {
                                    nodes[j].memory_mut().apply(range.start, &bytes);
                                }
                            }
                            moved = true;
                        }
                        Output::NextView(next) => {
                            let len = Node::<HeapMemory>::table_len(&next.view, &limits());
                            nodes[i].install(Time(2 + round), HeapMemory::new(len)).unwrap();
                            others[i].push(Output::NextView(next));
                            moved = true;
                        }
                        o => others[i].push(o),
                    }
                }
            }
            if !moved {
                break;
            }
        }
        others
    }

    /// A join waiting at a member that does not lead the next view would never be proposed
    /// there: the joiner is sent to the leader when the view installs.
    #[test]
    fn joins_carried_into_a_view_this_member_does_not_lead_are_sent_to_its_leader() {
        let mut nodes: Vec<Node<HeapMemory>> = (0..3).map(member).collect();
        // Member 2 took a join while it thought itself the leader (it suspected 0 and 1).
        let joiner = crate::protocol::membership::Joiner { node: NodeId(7), address: "a7".into(), returning: false };
        nodes[2].gms.as_mut().unwrap().joins.push(joiner);
        // The leader adds another joiner: view 1 is [0, 1, 2, 9].
        nodes[0].handle(Time(1), Input::Join { node: NodeId(9), address: "a9".into(), returning: false });
        let others = settle(&mut nodes);
        for n in &nodes {
            assert_eq!(n.view().id, ViewId(1), "every member installed view 1");
        }
        let refused: Vec<&Output> = others[2].iter().filter(|o| matches!(o, Output::JoinRefused { .. })).collect();
        let redirect = Output::JoinRefused {
            node: NodeId(7),
            refusal: JoinRefusal::NotLeader { leader: NodeId(0), address: "a0".into() },
        };
        assert_eq!(refused, vec![&redirect]);
        assert!(nodes[2].gms.as_ref().unwrap().joins.is_empty(), "the join is no longer held at member 2");
        assert!(others[0].iter().chain(&others[1]).all(|o| !matches!(o, Output::JoinRefused { .. })));
    }

    #[test]
    fn a_lone_join_request_at_the_leader_becomes_a_proposal() {
        let mut n = member(0);
        n.handle(Time(1), Input::Join { node: NodeId(9), address: "a9".into(), returning: false });
        let steps: Vec<Output> = std::iter::from_fn(|| n.poll_output()).collect();
        assert!(steps.contains(&Output::Step(GmsStep::Proposed(1))), "{steps:?}");
        assert!(n.is_wedged());
        // A follower redirects, and an id in use is refused.
        let mut f = member(1);
        f.handle(Time(1), Input::Join { node: NodeId(9), address: "a9".into(), returning: false });
        let out: Vec<Output> = std::iter::from_fn(|| f.poll_output()).collect();
        assert!(out.iter().any(|o| matches!(
            o,
            Output::JoinRefused { refusal: JoinRefusal::NotLeader { leader: NodeId(0), .. }, .. }
        )));
        n.handle(Time(2), Input::Join { node: NodeId(2), address: "x".into(), returning: false });
        let out: Vec<Output> = std::iter::from_fn(|| n.poll_output()).collect();
        assert!(out.iter().any(|o| matches!(o, Output::JoinRefused { refusal: JoinRefusal::IdInUse(NodeId(2)), .. })));
        // The group is full once joins under way (proposed or waiting) reach members_max.
        let mut small = member(0);
        small.limits.members_max = 4;
        small.handle(Time(1), Input::Join { node: NodeId(7), address: "a7".into(), returning: false });
        small.handle(Time(1), Input::Join { node: NodeId(8), address: "a8".into(), returning: false });
        let out: Vec<Output> = std::iter::from_fn(|| small.poll_output()).collect();
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::JoinRefused { node: NodeId(8), refusal: JoinRefusal::GroupFull(4) })),
            "{out:?}"
        );
        n.handle(Time(3), Input::Join { node: NodeId(8), address: "x".repeat(100), returning: false });
        let out: Vec<Output> = std::iter::from_fn(|| n.poll_output()).collect();
        assert!(out.iter().any(|o| matches!(o, Output::JoinRefused { refusal: JoinRefusal::AddressTooLong, .. })));
    }
}
