//! What goes in and out of a [`super::Member`]: its settings, the inputs it is fed, the commands
//! a driver runs for it, the events its application hears, and the errors of entering a group.

use std::ops::Range;
use std::rc::Rc;

use crate::protocol::ids::{NodeId, ShardRef, Version, ViewId};
use crate::protocol::layout::View;
use crate::protocol::limits::Limits;
use crate::protocol::membership::{GmsStep, JoinRefusal, LayoutFn, MembershipConfig, NextView, StopReason};
use crate::protocol::restart::Waiting;

#[allow(unused_imports)] // named in the documentation
use super::Member;
#[allow(unused_imports)] // named in the documentation
use crate::protocol::wire::{Answer, Control, ViewFrame};

/// Settings of one member (the membership settings, limits and layout are the same at every
/// member of a group).
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// This member.
    pub me: NodeId,
    /// The address its peers and joiners reach its listener at.
    pub address: String,
    /// Table limits.
    pub limits: Limits,
    /// Heartbeats, timeouts, partition safety.
    pub membership: MembershipConfig,
    /// Every view's shards.
    pub layout: Rc<dyn LayoutFn>,
    /// The largest shard state sent or accepted, in bytes.
    pub state_len_max: usize,
    /// How long a joiner waits for its welcome.
    pub join_timeout_ns: u64,
    /// How long a restarting member waits: the restart leader for its quorum, the others for
    /// their welcome.
    pub restart_timeout_ns: u64,
    /// How long a joiner waits for an answer before it asks again.
    pub retry_ns: u64,
    /// How long a view's transport takes at most to connect (an old view lingers this long
    /// plus four suspicion timeouts at most).
    pub connect_timeout_ns: u64,
    /// The application persists (PROTOCOLS §4.1): proposals and views are saved
    /// ([`Command::SaveProposal`], [`Command::SaveView`]).
    pub persistent: bool,
    /// A fingerprint of the application (0: none): a joiner whose fingerprint differs from a
    /// member's is refused ([`JoinRefusal::AppMismatch`]).
    pub app: u64,
    /// The node ids allowed to join or to come back with their logs (`None`: any id); others
    /// are refused ([`JoinRefusal::NotAllowed`]).
    pub allowed: Option<Rc<[NodeId]>>,
}

impl MemberConfig {
    /// Defaults for `me` at `address`: the default limits and membership settings, one ordered
    /// shard of every member, states up to 64 MiB, a 30 s join timeout, a 5 minute restart
    /// timeout, a 2 s retry and connect timeout, no persistence.
    pub fn new(me: NodeId, address: impl Into<String>, layout: Rc<dyn LayoutFn>) -> Self {
        Self {
            me,
            address: address.into(),
            limits: Limits::default(),
            membership: MembershipConfig::default(),
            layout,
            state_len_max: 64 << 20,
            join_timeout_ns: 30_000_000_000,
            restart_timeout_ns: 300_000_000_000,
            retry_ns: 2_000_000_000,
            connect_timeout_ns: 2_000_000_000,
            persistent: false,
            app: 0,
            allowed: None,
        }
    }
}

/// What happened, for [`Member::handle`]. `M` is the table memory.
#[derive(Debug)]
pub enum Input<M> {
    /// Peers' rows may have changed, or time passed: run the rules and the timers.
    Tick,
    /// The transport of `view` lost its connection to `peer` (ignored for another view than
    /// the current one).
    PeerFailed {
        /// The view.
        view: ViewId,
        /// The peer.
        peer: NodeId,
    },
    /// The application reports `node` as failed (PROTOCOLS §3.2).
    ReportFailure(NodeId),
    /// This member asks to leave gracefully.
    Leave,
    /// The transport and table of `view` are ready ([`Command::Connect`]): `memory` is the
    /// zeroed table.
    Connected {
        /// The view.
        view: ViewId,
        /// Its table.
        memory: M,
    },
    /// The transport of `view` could not be set up: this member stops.
    ConnectFailed {
        /// The view.
        view: ViewId,
        /// Why.
        reason: String,
    },
    /// A control message reached `to`'s listener ([`Command::SendControl`] with `report`).
    ControlSent {
        /// The address.
        to: String,
    },
    /// A control message could not be delivered to `to`.
    ControlNotSent {
        /// The address.
        to: String,
    },
    /// The proposal of `view` with `members` is saved ([`Command::SaveProposal`]): this
    /// member's acknowledgement of it may go into its row.
    ProposalSaved {
        /// The view.
        view: ViewId,
        /// Its members.
        members: Vec<NodeId>,
    },
    /// A proposal or view could not be saved: this member stops.
    SaveFailed {
        /// Why.
        reason: String,
    },
    /// The application took the state of `shard` for `view` ([`Event::TakeSnapshot`]):
    /// `Some` with the bytes, or `None` when it ordered the snapshot after everything delivered
    /// so far and hands the bytes later (in a second input with `Some`).
    SnapshotTaken {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// The state, if ready.
        state: Option<Vec<u8>>,
    },
    /// The application restored a state ([`Event::Restore`]): delivery may start in `shard`.
    StateRestored {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
    },
    /// The application could not read a state ([`Event::Restore`]): another source's copy is
    /// awaited.
    StateRefused {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// The source.
        from: NodeId,
        /// Why.
        reason: String,
    },
    /// Everything of `shard` up to `version` is durable here (PROTOCOLS §4).
    Persisted {
        /// The shard.
        shard: ShardRef,
        /// The version.
        version: Version,
    },
    /// Peers heard on the lingering transport of `view` since the last [`Command::Beat`].
    HeardOnOldView {
        /// The old view.
        view: ViewId,
        /// The peers.
        peers: Vec<NodeId>,
    },
    /// This member can no longer keep a promise the group relies on (a log failed): it stops.
    Fatal(String),
}

/// A side effect for the driver. Commands come out in the order they must take effect; one that
/// needs an answer before anything after it may happen says so, and nothing comes out until the
/// answer arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Push this range of this member's row to these peers, on the current view's transport, in
    /// order with earlier pushes.
    Push {
        /// Table offsets.
        range: Range<usize>,
        /// The peers.
        to: Rc<[NodeId]>,
    },
    /// Send these frames, in order, to each of these peers on the transport of `view` (the
    /// current one or one lingering; dropped if it is gone).
    SendFrames {
        /// The view.
        view: ViewId,
        /// The peers.
        to: Vec<NodeId>,
        /// The frames ([`ViewFrame`] encoded).
        frames: Vec<Rc<Vec<u8>>>,
    },
    /// Send a control message to the listener at `to`. With `report`, answer
    /// [`Input::ControlSent`] or [`Input::ControlNotSent`]; without, a failure only matters to
    /// the logs.
    SendControl {
        /// The address.
        to: String,
        /// The encoded [`Control`].
        message: Rc<[u8]>,
        /// Whether delivery is reported.
        report: bool,
    },
    /// Set up the transport and the zeroed table of `next.view` and answer
    /// [`Input::Connected`] (or [`Input::ConnectFailed`]). A peer that does not connect in time
    /// is reported failed ([`Input::PeerFailed`]).
    Connect {
        /// The view to connect.
        next: Rc<NextView>,
    },
    /// Send `frame` (an "alive" beat) to `to` on the lingering transport of `view`, and answer
    /// [`Input::HeardOnOldView`] with the peers heard on it since the last beat.
    Beat {
        /// The old view.
        view: ViewId,
        /// Its other members.
        to: Vec<NodeId>,
        /// The encoded beat.
        frame: Rc<Vec<u8>>,
    },
    /// The transport of `view` is no longer needed: close it (and remove what its members that
    /// died left behind).
    CloseView {
        /// The old view.
        view: ViewId,
        /// Its members.
        members: Vec<NodeId>,
    },
    /// Save the proposal of `view` durably, then answer [`Input::ProposalSaved`] (or
    /// [`Input::SaveFailed`]). The member's acknowledgement of it goes into its row only with
    /// the answer (PROTOCOLS §4.1: a restart quorum must hear of every view that may have been
    /// committed).
    SaveProposal {
        /// The proposed view.
        view: ViewId,
        /// Its members.
        members: Vec<NodeId>,
    },
    /// Save `view` durably as the last view of this member (for total restart), with every
    /// member's address; answer [`Input::SaveFailed`] if it cannot be saved. Only adequate
    /// views, once every state received for them is durable.
    SaveView {
        /// The view.
        view: View,
        /// Every member's address.
        addresses: Vec<(NodeId, String)>,
    },
}

/// A view installed here, with what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewChange {
    /// The view.
    pub view: View,
    /// Members added.
    pub joined: Vec<NodeId>,
    /// Members removed (failed or left).
    pub departed: Vec<NodeId>,
    /// Why the view has no shards, if it is inadequate.
    pub inadequate: Option<String>,
    /// The shards this member joined whose state is on its way ([`Event::Restore`] comes
    /// before anything is delivered in them).
    pub awaiting_state: Vec<ShardRef>,
}

impl ViewChange {
    pub(super) fn of(next: &NextView, me: NodeId) -> Self {
        Self {
            view: next.view.clone(),
            joined: next.joined.clone(),
            departed: next.departed.clone(),
            inadequate: next.inadequate.clone(),
            awaiting_state: next.transfers.iter().filter(|t| t.to.contains(&me)).map(|t| t.shard).collect(),
        }
    }
}

/// Why a member could not enter a group.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnterError {
    /// The group refused (an id in use, a full group, a group that did not restart).
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
    /// No welcome in time.
    #[error("no welcome within {waited_ms} ms (contact {contact}, last asked {asked}{})", reason_suffix(.reason))]
    Timeout {
        /// How long it waited.
        waited_ms: u64,
        /// The contact given.
        contact: String,
        /// The member last asked.
        asked: String,
        /// The last thing it heard, if anything.
        reason: Option<String>,
    },
    /// The restart quorum was not met in time.
    #[error("no restart quorum within {waited_ms} ms: {waiting}")]
    NoQuorum {
        /// How long it waited.
        waited_ms: u64,
        /// What was still missing.
        waiting: Waiting,
    },
    /// Admitted, but stopped before it could start.
    #[error("stopped while entering: {0}")]
    Stopped(StopReason),
}

fn reason_suffix(r: &Option<String>) -> String {
    r.as_ref().map_or_else(String::new, |r| format!("; {r}"))
}

/// Something the application (or its operator) hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A step of a view change (for logs, and for the simulator's crash points).
    Step(GmsStep),
    /// A view was installed here (a joiner's first view included).
    Installed(ViewChange),
    /// Take the state of `shard` for the new members of `view`, after everything delivered so
    /// far and before anything delivered later; answer [`Input::SnapshotTaken`].
    TakeSnapshot {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
    },
    /// Replace the state of `shard` with `state`, from `from`; answer [`Input::StateRestored`]
    /// or [`Input::StateRefused`].
    Restore {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// The source.
        from: NodeId,
        /// The state.
        state: Vec<u8>,
    },
    /// A state from `from` was dropped (too long, pieces out of order, refused).
    StateRejected {
        /// The shard.
        shard: ShardRef,
        /// The source.
        from: NodeId,
        /// Why.
        reason: String,
    },
    /// A state this member should send was not sent.
    StateNotSent {
        /// The shard.
        shard: ShardRef,
        /// Why.
        reason: String,
    },
    /// A peer broke the protocol; it is suspected.
    Violation {
        /// The peer.
        peer: NodeId,
        /// What it did.
        what: String,
    },
    /// Messages of this member above a trim could not be sent again: they are lost.
    ResendFailed {
        /// The shard.
        shard: ShardRef,
        /// How many.
        count: usize,
    },
    /// What this member has been waiting for (a welcome, a restart quorum): said when it
    /// changes and every few seconds while it lasts.
    Waiting(String),
    /// This member could not enter a group ([`Member::join`], [`Member::restart`]).
    EnterFailed(EnterError),
    /// This member stopped; nothing more is delivered.
    Stopped(StopReason),
}
