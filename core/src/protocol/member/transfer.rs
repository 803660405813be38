//! State transfer (PROTOCOLS §3.5): a shard's state moves to its new members when a view
//! installs.
//!
//! **Out.** Every survivor of the old shard listed as a source ([`StateTransfer::from`])
//! sends: one failing does not strand the new member. The application takes the snapshot
//! after everything it delivered in the old view and before anything of the new one
//! ([`Event::TakeSnapshot`]; [`super::Member::deliver`] holds deliveries until it is ordered).
//! A state longer than [`MemberConfig::state_len_max`] is not sent; the others travel in
//! pieces of [`STATE_PIECE_LEN`] bytes, each a frame of the new view's transport, in order.
//!
//! A source that cannot send its copy (too long) says so ([`ViewFrame::StateRefused`]).
//!
//! **In.** A new member reassembles the pieces of every source in parallel (each in order,
//! the offsets checked, the length bounded before anything is kept) and hands the first whole
//! copy to the application ([`Event::Restore`]); a copy the application refuses makes it wait
//! for another source's. Once one is restored, the other copies are dropped and delivery
//! starts in the shard. Memory is bounded by the number of sources times `state_len_max`.
//! A source's copy that fails (refused there, or a piece out of order, too long, refused by
//! the application here) is not taken again; once every source's copy failed, the member
//! stops at once ([`StopReason::StateUnavailable`]) rather than at the transfer timeout.
//!
//! [`StateTransfer::from`]: crate::protocol::StateTransfer::from
//! [`MemberConfig::state_len_max`]: super::MemberConfig::state_len_max
//! [`StopReason::StateUnavailable`]: crate::protocol::StopReason::StateUnavailable

use std::collections::BTreeMap;
use std::rc::Rc;

use super::{Command, Event, Member};
use crate::protocol::StopReason;
use crate::protocol::ids::{NodeId, ShardRef, Time, ViewId};
use crate::protocol::node::Input as NodeInput;
use crate::protocol::sst::SstMemory;
use crate::protocol::wire::ViewFrame;

/// The bytes of a state in one frame; larger states travel in pieces.
pub const STATE_PIECE_LEN: usize = 1 << 20;

/// States on their way to this member.
#[derive(Debug, Default)]
pub struct Incoming {
    /// The pieces received so far, per view, shard and source.
    pieces: BTreeMap<(ViewId, ShardRef, NodeId), Vec<u8>>,
    /// Copies handed to the application and not answered yet.
    restoring: Vec<(ViewId, ShardRef, NodeId)>,
    /// The sources of each state this member awaits.
    sources: BTreeMap<(ViewId, ShardRef), Vec<NodeId>>,
    /// The sources whose copy failed, with why.
    failed: BTreeMap<(ViewId, ShardRef, NodeId), String>,
}

impl Incoming {
    /// Forgets everything of views before `view`.
    pub(super) fn retain_view(&mut self, view: ViewId) {
        self.pieces.retain(|(v, _, _), _| *v >= view);
        self.restoring.retain(|(v, _, _)| *v >= view);
        self.sources.retain(|(v, _), _| *v >= view);
        self.failed.retain(|(v, _, _), _| *v >= view);
    }

    /// This member awaits the state of `shard` in `view` from `sources`.
    pub(super) fn expect(&mut self, view: ViewId, shard: ShardRef, sources: Vec<NodeId>) {
        self.sources.insert((view, shard), sources);
    }

    /// Bytes held for states not yet whole.
    pub fn buffered_len(&self) -> usize {
        self.pieces.values().map(Vec::len).sum()
    }
}

impl<M: SstMemory> Member<M> {
    /// A piece of a state for `shard` in view `v`, from `from`, on the transport of
    /// `transport_view`.
    #[allow(clippy::too_many_arguments)] // the fields of one frame
    pub(super) fn state_piece(
        &mut self,
        _now: Time,
        transport_view: ViewId,
        from: NodeId,
        v: ViewId,
        shard: ShardRef,
        offset: u64,
        total: u64,
        body: Vec<u8>,
    ) {
        let key = (v, shard, from);
        if !self.wants_copy(transport_view, key) {
            return; // a second source's copy, a failed one, or too late
        }
        if total > self.config.state_len_max as u64 {
            let reason = format!("a state of {total} bytes, above state_len_max ({})", self.config.state_len_max);
            self.source_failed(key, reason);
            return;
        }
        let buf = self.incoming.pieces.entry(key).or_default();
        if offset != buf.len() as u64 {
            let reason = format!("a piece at {offset} where {} was expected", buf.len());
            self.source_failed(key, reason);
            return;
        }
        buf.extend_from_slice(&body);
        if (buf.len() as u64) < total {
            return;
        }
        let state = self.incoming.pieces.remove(&key).unwrap_or_default();
        self.incoming.restoring.push(key);
        self.events.push_back(Event::Restore { view: v, shard, from, state });
    }

    /// Whether a piece of `key`'s copy, on the transport of `transport_view`, is wanted: the
    /// state is awaited in that view, no copy is being restored, this one has not failed.
    pub(super) fn wants_copy(&self, transport_view: ViewId, key: (ViewId, ShardRef, NodeId)) -> bool {
        let (v, shard, _) = key;
        self.node.as_ref().is_some_and(|node| {
            transport_view == v
                && node.view().id == v
                && node.awaiting_state(shard)
                && !self.incoming.restoring.iter().any(|(rv, rs, _)| (*rv, *rs) == (v, shard))
                && !self.incoming.failed.contains_key(&key)
        })
    }

    /// A source's copy failed (it refused to send it, or it was rejected here): it is not
    /// taken again; once every source's failed, the state cannot come and this member stops.
    pub(super) fn source_failed(&mut self, key: (ViewId, ShardRef, NodeId), reason: String) {
        let (view, shard, from) = key;
        self.incoming.pieces.remove(&key);
        self.incoming.restoring.retain(|r| *r != key);
        self.events.push_back(Event::StateRejected { shard, from, reason: reason.clone() });
        self.incoming.failed.insert(key, reason);
        let Some(sources) = self.incoming.sources.get(&(view, shard)) else { return };
        let awaiting = self.node.as_ref().is_some_and(|n| n.view().id == view && n.awaiting_state(shard));
        if awaiting && sources.iter().all(|s| self.incoming.failed.contains_key(&(view, shard, *s))) {
            let reason = sources
                .iter()
                .map(|s| format!("{s}: {}", self.incoming.failed[&(view, shard, *s)]))
                .collect::<Vec<_>>();
            self.stop(StopReason::StateUnavailable { shard, reason: reason.join("; ") });
        }
    }

    /// The application restored the state of `shard` for `view`: delivery starts there.
    pub(super) fn state_restored(&mut self, now: Time, view: ViewId, shard: ShardRef) {
        self.incoming.restoring.retain(|(v, s, _)| (*v, *s) != (view, shard));
        self.incoming.pieces.retain(|(v, s, _), _| (*v, *s) != (view, shard));
        if self.view().is_some_and(|v| v.id == view) {
            self.node_input(now, NodeInput::StateReceived(shard));
        }
        self.save_view_if_whole();
    }

    /// The application took (or ordered) the snapshot of `shard` for `view`.
    pub(super) fn snapshot_taken(&mut self, view: ViewId, shard: ShardRef, state: Option<Vec<u8>>) {
        // (A state that comes after a later view change superseded its transfer is dropped.)
        self.snapshots.retain(|s| *s != (view, shard));
        let Some(state) = state else { return };
        let Some(to) = self.sending.remove(&(view, shard)) else { return };
        if self.stopped.is_some() {
            return;
        }
        if state.len() > self.config.state_len_max {
            let reason = format!("{} bytes, above state_len_max ({})", state.len(), self.config.state_len_max);
            self.events.push_back(Event::StateNotSent { shard, reason: reason.clone() });
            let refused = ViewFrame::StateRefused { view, shard, reason }.encode();
            self.commands.push_back(Command::SendFrames { view, to, frames: vec![Rc::new(refused)] });
            return;
        }
        let frames = pieces(view, shard, &state);
        self.commands.push_back(Command::SendFrames { view, to, frames });
    }
}

/// A state as frames of at most [`STATE_PIECE_LEN`] bytes of it each (at least one frame, for
/// an empty state).
pub fn pieces(view: ViewId, shard: ShardRef, state: &[u8]) -> Vec<Rc<Vec<u8>>> {
    let total = state.len() as u64;
    let mut frames = Vec::with_capacity(state.len().div_ceil(STATE_PIECE_LEN).max(1));
    let mut offset = 0;
    loop {
        let end = (offset + STATE_PIECE_LEN).min(state.len());
        let body = state[offset..end].to_vec();
        frames.push(Rc::new(ViewFrame::State { view, shard, offset: offset as u64, total, body }.encode()));
        offset = end;
        if offset == state.len() {
            return frames;
        }
    }
}
