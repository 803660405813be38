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
use std::ops::Range;
use std::rc::Rc;

use super::ids::{NodeId, ShardRef, Time};
use super::layout::{LayoutError, View};
use super::limits::{LimitError, Limits};
use super::multicast::{Delivered, RowViolation, SendError, ShardState};
use super::sst::{RowLayout, SstMemory};

/// What happened, for [`Node::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Peers' rows may have changed (pushes arrived): run the rules.
    RowsChanged,
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
    /// A peer's row broke the protocol; nothing more is read from it. The driver should
    /// suspect it.
    Violation {
        /// The peer.
        node: NodeId,
        /// What it did.
        violation: RowViolation,
    },
}

/// Why a node could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    /// The memory given for the table has the wrong size.
    #[error("the table needs {needed} bytes; the memory given has {given}")]
    MemoryLen {
        /// What the layout needs.
        needed: usize,
        /// What was given.
        given: usize,
    },
}

/// One member of a group running the multicast protocol over an SST in memory `M`.
#[derive(Debug)]
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
        Ok(Self {
            me,
            view,
            layout,
            mem,
            shards,
            outputs: VecDeque::new(),
            violations: Vec::new(),
            sent_since_step: None,
        })
    }

    /// This member.
    pub fn me(&self) -> NodeId {
        self.me
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
            Input::RowsChanged => self.run_rules(now),
        }
    }

    fn run_rules(&mut self, now: Time) {
        self.sent_since_step = None;
        for s in &mut self.shards {
            s.receive(&self.mem, &mut self.violations);
            s.update(&mut self.mem, now);
        }
        for (node, violation) in self.violations.drain(..) {
            self.outputs.push_back(Output::Violation { node, violation });
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
        let mem = &self.mem;
        self.shards.iter_mut().find(|s| s.id == shard).is_some_and(|s| s.can_send(mem, len))
    }

    /// Delivers every deliverable message to `f`, in order; returns how many were delivered.
    pub fn deliver(&mut self, mut f: impl FnMut(Delivered<'_>)) -> usize {
        self.catch_up();
        let mut n = 0;
        for s in &mut self.shards {
            n += s.deliver(&mut self.mem, &mut f);
        }
        n
    }

    /// The next thing to do, data pushes before counter pushes.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.catch_up();
        if self.outputs.is_empty() {
            for s in &mut self.shards {
                if s.dirty() {
                    let to = s.push_to.clone();
                    s.flush(&mut |range| self.outputs.push_back(Output::Push { range, to: to.clone() }));
                }
            }
        }
        self.outputs.pop_front()
    }

    /// When to call [`Node::handle`] again if no input arrives (none yet: the static multicast
    /// needs no timer).
    pub fn poll_timeout(&self) -> Option<Time> {
        None
    }

    /// Messages delivered in `shard` so far (ordered shards: `delivered_num + 1`).
    pub fn delivered_count(&self, shard: ShardRef) -> Option<u64> {
        self.shards.iter().find(|s| s.id == shard).map(ShardState::delivered_count)
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

    /// A number that grows whenever, in some shard, every member has delivered more: a driver
    /// wakes what waits on [`Node::delivered_everywhere`] when it changes.
    pub fn delivered_everywhere_progress(&self) -> u64 {
        self.shards.iter().map(|s| s.delivered_everywhere_progress(&self.mem)).sum()
    }

    /// Indices this member has published in `shard` (messages and nulls).
    pub fn sent_count(&self, shard: ShardRef) -> Option<u64> {
        self.shards.iter().find(|s| s.id == shard).map(ShardState::sent_count)
    }

    /// A number that grows whenever a window of this member's has more room (the sum over its
    /// shards of its indices released by every member): a driver wakes blocked senders when it
    /// changes.
    pub fn window_progress(&self) -> u64 {
        self.shards.iter().map(|s| s.released(&self.mem)).sum()
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
