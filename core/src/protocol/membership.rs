//! Membership and virtual synchrony (PROTOCOLS §3), as rules over the membership section of
//! the shared state table.
//!
//! Every member runs `Gms::step` after each batch of inputs. What it does, in order:
//!
//! 1. **Failure detection** (§3.2): bumps its heartbeat every period; suspects a peer whose
//!    heartbeat has not moved for `suspect_after`, whose connection failed, that the application
//!    reported, or whose row broke the protocol.
//! 2. **Suspicion** (§3.3 step 1): ORs into its own the suspicions of every row it does not
//!    suspect (a suspected row is frozen), stops if a row it trusts suspects *it*, and wedges on
//!    the first suspicion: no new multicasts, shard counters frozen and copied into the
//!    membership section (`frozen`).
//! 3. **Partition safety** (§3.3 step 2): if the suspected members (leavers not counted) reach
//!    `ceil(n / 2)`, it stops with [`StopReason::Partitioned`].
//! 4. **Propose / acknowledge** (steps 3, 4): the leader (lowest rank not suspected) keeps a
//!    change list: removal of every suspected or leaving member, pending joins. A new leader
//!    starts from the list of the most recent earlier leader found in any row (§3.4). Followers
//!    copy their leader's list and acknowledge it.
//! 5. **Commit and trim** (steps 5-7, one record): once every member it does not suspect has
//!    acknowledged the whole list, the leader publishes the view's *final* record: the list and,
//!    for every shard, the ragged trim `trim[sender] = min over the acknowledging shard members
//!    of frozen[sender]`. If any row already carries a final record (a leader that failed after
//!    publishing), the leader copies it instead: there is at most one final record, hence at
//!    most one trim per (view, shard). Followers copy the final record from their leader (echo).
//! 6. **Install** (step 8): once every member it does not suspect and that stays has echoed the
//!    final record, a member delivers up to the trims (`ShardState::deliver_trimmed`) and
//!    computes the next view; the driver gives it memory for the new table.
//!
//! Why one final record rather than a commit followed by per-shard trims: a commit that cannot
//! grow any more is stuck if a member fails between the commit and its trim, while a final
//! record is only published once every non-suspected member has acknowledged and frozen, so the
//! trims it carries are computed from counters that never move again. Safety rests on majority
//! intersection: a member installs only after a majority (everyone it does not suspect) echoed
//! the record; a later leader needs a majority of acknowledgements, so it sees the record in
//! some row before it could publish another, and copies it.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use std::time::Duration;

use super::ids::{NodeId, ShardRef, Time, ViewId};
use super::layout::{DeliveryMode, ShardLayout, View};
use super::multicast::{RowViolation, ShardState};
use super::sst::{CHANGE_LEN, GmsColumns, GmsCounter, RowLayout, SstMemory};

/// Timing and safety settings of the membership protocol (the same at every member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often a member bumps its heartbeat. Default 10 ms.
    pub heartbeat: Duration,
    /// A peer whose heartbeat has not moved for this long is suspected. Default 100 ms.
    pub suspect_after: Duration,
    /// Stop with [`StopReason::Partitioned`] rather than continue in a minority (PROTOCOLS §3.3
    /// step 2). Default on; turning it off gives up the no-split-brain guarantee.
    pub partition_safety: bool,
    /// How long a new shard member waits for the shard's state before giving up. Default 10 s.
    pub state_transfer_timeout: Duration,
    /// What a view does with a shard that lost every member holding its state. Default
    /// [`LostShards::Wait`].
    pub lost_shards: LostShards,
}

/// What becomes of a shard whose every member (every holder of its state) is gone
/// (PROTOCOLS §3.5). Every member must use the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LostShards {
    /// The view is inadequate ([`NextView::inadequate`] names the shard) until a member of the
    /// shard's last layout comes back with its logs (a restart offer to the running group,
    /// [`Change::Add::returning`]), whose state the shard resumes from. Nothing is lost
    /// silently.
    #[default]
    Wait,
    /// The shard starts empty in its new members (the operator accepts the loss); the view
    /// says so ([`NextView::lost`]).
    StartEmpty,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(10),
            suspect_after: Duration::from_millis(100),
            partition_safety: true,
            state_transfer_timeout: Duration::from_secs(10),
            lost_shards: LostShards::Wait,
        }
    }
}

/// A membership setting out of range; the message names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid membership setting {field}: {reason}")]
pub struct MembershipConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl MembershipConfig {
    /// [`MembershipConfig::heartbeat`] in nanoseconds (the protocol's time unit), saturated.
    pub fn heartbeat_ns(&self) -> u64 {
        nanos(self.heartbeat)
    }

    /// [`MembershipConfig::suspect_after`] in nanoseconds, saturated.
    pub fn suspect_after_ns(&self) -> u64 {
        nanos(self.suspect_after)
    }

    /// [`MembershipConfig::state_transfer_timeout`] in nanoseconds, saturated.
    pub fn state_transfer_timeout_ns(&self) -> u64 {
        nanos(self.state_transfer_timeout)
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), MembershipConfigError> {
        if self.heartbeat.is_zero() {
            return Err(MembershipConfigError { field: "heartbeat", reason: "must be above zero" });
        }
        if self.suspect_after < self.heartbeat.saturating_mul(2) {
            return Err(MembershipConfigError {
                field: "suspect_after",
                reason: "must be at least twice the heartbeat period",
            });
        }
        if self.state_transfer_timeout.is_zero() {
            return Err(MembershipConfigError { field: "state_transfer_timeout", reason: "must be above zero" });
        }
        Ok(())
    }
}

/// `d` in nanoseconds, saturated at `u64::MAX`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A change to the membership, proposed by the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Remove a member (failed or leaving).
    Remove(NodeId),
    /// Add a joiner, with the address its peers reach it at.
    Add {
        /// The joiner.
        node: NodeId,
        /// Its address (at most [`ADDRESS_LEN_MAX`] bytes of UTF-8).
        address: String,
        /// It comes back with the logs of an earlier life in the group (a restart offer): for
        /// a shard that lost every member holding its state, a returning member of the shard's
        /// last layout holds it (PROTOCOLS §3.5, §4.1).
        returning: bool,
    },
}

/// Longest address a joiner may give (it is carried in a fixed-width column).
pub const ADDRESS_LEN_MAX: usize = CHANGE_LEN - 8;

const CHANGE_REMOVE: u8 = 1;
const CHANGE_ADD: u8 = 2;
const CHANGE_ADD_RETURNING: u8 = 3;

impl Change {
    /// The node concerned.
    pub fn node(&self) -> NodeId {
        match self {
            Change::Remove(n) | Change::Add { node: n, .. } => *n,
        }
    }

    fn encode(&self, out: &mut [u8]) {
        out.fill(0);
        out[0..4].copy_from_slice(&self.node().0.to_le_bytes());
        match self {
            Change::Remove(_) => out[4] = CHANGE_REMOVE,
            Change::Add { address, returning, .. } => {
                out[4] = if *returning { CHANGE_ADD_RETURNING } else { CHANGE_ADD };
                out[5] = address.len() as u8;
                out[8..8 + address.len()].copy_from_slice(address.as_bytes());
            }
        }
    }

    /// Decodes a change (for the tests of other modules).
    #[cfg(test)]
    pub(crate) fn decode_for_tests(b: &[u8]) -> Result<Self, &'static str> {
        Self::decode(b)
    }

    fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let node = NodeId(u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")));
        match b[4] {
            CHANGE_REMOVE => Ok(Change::Remove(node)),
            kind @ (CHANGE_ADD | CHANGE_ADD_RETURNING) => {
                let len = b[5] as usize;
                if len > ADDRESS_LEN_MAX {
                    return Err("address longer than its column");
                }
                let address = std::str::from_utf8(&b[8..8 + len]).map_err(|_| "address is not UTF-8")?;
                Ok(Change::Add { node, address: address.to_string(), returning: kind == CHANGE_ADD_RETURNING })
            }
            _ => Err("unknown change kind"),
        }
    }
}

/// Computes a view's shards from its members (PROTOCOLS §3.1: a view is *adequate* when this
/// succeeds). Must be deterministic: every member computes it for every view.
pub trait LayoutFn: fmt::Debug {
    /// The shards of a view with these members (rank order), or why the view is inadequate.
    ///
    /// # Errors
    ///
    /// The view is inadequate (for example too few members): it delivers nothing and waits for
    /// joins.
    fn layout(&self, members: &[NodeId]) -> Result<Vec<ShardLayout>, String>;

    /// As [`LayoutFn::layout`], knowing the shards of the previous layout (the last one each
    /// shard had, also across inadequate views), so that a policy can keep members where they
    /// were. The default ignores them.
    ///
    /// # Errors
    ///
    /// As [`LayoutFn::layout`].
    fn layout_next(&self, members: &[NodeId], previous: &[ShardLayout]) -> Result<Vec<ShardLayout>, String> {
        let _ = previous;
        self.layout(members)
    }
}

/// One shard of every member, every member a sender; adequate from `min_members` members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneShard {
    /// Ordered or unordered.
    pub mode: DeliveryMode,
    /// Fewest members for the view to be adequate.
    pub min_members: usize,
}

impl LayoutFn for OneShard {
    fn layout(&self, members: &[NodeId]) -> Result<Vec<ShardLayout>, String> {
        if members.len() < self.min_members.max(1) {
            return Err(format!("{} members, fewer than the {} the layout needs", members.len(), self.min_members));
        }
        Ok(vec![ShardLayout {
            id: ShardRef { subgroup: super::SubgroupId(0), shard: super::ShardIndex(0) },
            members: members.to_vec(),
            senders: members.to_vec(),
            mode: self.mode,
        }])
    }
}

/// `shards` shards, member of rank `r` in shard `r % shards`, every member a sender; adequate
/// when every shard has at least `min_per_shard` members. A removal shifts ranks, so members
/// move between shards, and their new shards' state moves to them (PROTOCOLS §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundRobinShards {
    /// Number of shards (subgroup 0, shards `0..shards`).
    pub shards: u16,
    /// Ordered or unordered.
    pub mode: DeliveryMode,
    /// Fewest members per shard.
    pub min_per_shard: usize,
}

impl LayoutFn for RoundRobinShards {
    fn layout(&self, members: &[NodeId]) -> Result<Vec<ShardLayout>, String> {
        let k = usize::from(self.shards.max(1));
        let need = k * self.min_per_shard.max(1);
        if members.len() < need {
            return Err(format!("{} members, fewer than the {need} that {k} shards need", members.len()));
        }
        Ok((0..k)
            .map(|i| {
                let m: Vec<NodeId> = members.iter().copied().skip(i).step_by(k).collect();
                ShardLayout {
                    id: ShardRef { subgroup: super::SubgroupId(0), shard: super::ShardIndex(i as u16) },
                    senders: m.clone(),
                    members: m,
                    mode: self.mode,
                }
            })
            .collect())
    }
}

/// Shards given once (a static configuration): each keeps the listed members still present;
/// inadequate when a shard has lost every member or every sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedShards(pub Vec<ShardLayout>);

impl LayoutFn for FixedShards {
    fn layout(&self, members: &[NodeId]) -> Result<Vec<ShardLayout>, String> {
        let mut out = Vec::with_capacity(self.0.len());
        for s in &self.0 {
            let keep = |v: &[NodeId]| -> Vec<NodeId> {
                members.iter().copied().filter(|m| v.contains(m)).collect() // rank order of the view
            };
            let (m, senders) = (keep(&s.members), keep(&s.senders));
            if m.is_empty() || senders.is_empty() {
                return Err(format!("{} has no member or no sender left", s.id));
            }
            out.push(ShardLayout { id: s.id, members: m, senders, mode: s.mode });
        }
        Ok(out)
    }
}

/// A shard's state moves to new members when a view installs (PROTOCOLS §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateTransfer {
    /// The shard.
    pub shard: ShardRef,
    /// The members that send its state: every survivor of the old shard, those that stay in it
    /// first. Each sends; a new member applies the first state that arrives and ignores the
    /// others, so one source failing during the transfer does not strand it.
    pub from: Vec<NodeId>,
    /// The shard members that were not in it in the previous view.
    pub to: Vec<NodeId>,
}

/// Every member's address, as `(member, address)` pairs.
pub type Addresses = Vec<(NodeId, String)>;

/// The next view, as every member computes it from the final record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextView {
    /// The view (no shards if inadequate).
    pub view: View,
    /// Why the view is inadequate, if it is.
    pub inadequate: Option<String>,
    /// Every member's address.
    pub addresses: Addresses,
    /// Members added by this change, in rank order.
    pub joined: Vec<NodeId>,
    /// Members removed by this change.
    pub departed: Vec<NodeId>,
    /// Shard states to move to new shard members.
    pub transfers: Vec<StateTransfer>,
    /// Shards that lost every member holding their state and start empty
    /// ([`LostShards::StartEmpty`]; with [`LostShards::Wait`] the view is inadequate instead).
    pub lost: Vec<ShardRef>,
    /// The last layout of every shard the view does not have (an inadequate view has none):
    /// what the next view is computed from, so that a joiner computes the views after this one
    /// exactly as the others do.
    pub history: Vec<ShardLayout>,
}

/// Why a member stopped; it sends and delivers nothing more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StopReason {
    /// This member is in a minority (PROTOCOLS §3.3 step 2).
    #[error("partitioned: {suspected} of the {members} members of view {view} are unreachable, a majority is needed")]
    Partitioned {
        /// The view.
        view: u32,
        /// Members suspected.
        suspected: usize,
        /// Members of the view.
        members: usize,
    },
    /// Other members suspect this one, or removed it: it is out of the group.
    #[error("removed from the group in view {view}: {why}")]
    Removed {
        /// The view.
        view: u32,
        /// What showed it.
        why: &'static str,
    },
    /// This member left gracefully.
    #[error("left the group in view {0}")]
    Left(u32),
    /// The shard's state did not arrive in time (PROTOCOLS §3.5).
    #[error("the state of {0} did not arrive within the state transfer timeout")]
    StateTransferTimeout(ShardRef),
    /// No source of the shard's state can give it: each refused to send its copy (too long
    /// for its `state_len_max`, say), or its copy was rejected here (PROTOCOLS §3.5).
    #[error("the state of {shard} cannot come: {reason}")]
    StateUnavailable {
        /// The shard.
        shard: ShardRef,
        /// What each source's copy met.
        reason: String,
    },
    /// This member could not keep a promise the group relies on (a view it could not set up,
    /// a proposal or log it could not save): it stops, and the others go on without it.
    #[error("this member could not go on: {0}")]
    Failed(String),
}

/// A step of the view change, reported as it happens (the simulator crashes members around
/// them; drivers log them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GmsStep {
    /// This member now suspects `node`.
    Suspected(NodeId),
    /// This member wedged.
    Wedged,
    /// As leader, it proposed a change list of this length.
    Proposed(usize),
    /// It acknowledged its leader's list of this length.
    Acked {
        /// The leader.
        leader: NodeId,
        /// Changes acknowledged.
        len: usize,
    },
    /// As leader, it published the final record (list length), computed here.
    Committed(usize),
    /// It copied a final record published earlier (as a follower, or as a new leader reusing a
    /// failed leader's record).
    Echoed(usize),
    /// It delivered up to the trims and is ready to install the next view.
    TrimDelivered,
    /// It installed a view.
    Installed(ViewId),
}

/// Why a join request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinRefusal {
    /// A member with that id is in the view, or already joining.
    #[error("{0} is already a member of the group (or already joining)")]
    IdInUse(NodeId),
    /// Only the leader admits joiners: ask it.
    #[error("only the leader admits joiners: ask {leader} at {address}")]
    NotLeader {
        /// The leader.
        leader: NodeId,
        /// Its address.
        address: String,
    },
    /// The address does not fit its column.
    #[error("the joiner's address is longer than {ADDRESS_LEN_MAX} bytes")]
    AddressTooLong,
    /// The group has `members_max` members (counting joins under way).
    #[error("the group is full ({0} members, the members_max limit)")]
    GroupFull(u32),
    /// The group's configuration does not allow this id to join (its allow-list).
    #[error("{0} is not among the node ids the group's configuration allows to join")]
    NotAllowed(NodeId),
    /// The member asked runs no group: it is starting, joining or restarting itself.
    #[error("the member asked runs no group (it is starting, joining or restarting)")]
    NotRunning,
    /// The joiner's application disagrees with the group's on its replicated types (their
    /// method tables): method ids would mean different methods.
    #[error("the application differs from the group's (method tables {theirs:#x} here, {ours:#x} in the group)")]
    AppMismatch {
        /// The group's fingerprint.
        ours: u64,
        /// The joiner's.
        theirs: u64,
    },
    /// A member restarting from its logs asked a group that is not past the last view it
    /// saved: a group started afresh, perhaps. Joining it would drop the member's logs.
    #[error(
        "the group is in view {view}, not past view {saved} that this member saved: it may be a new group; \
         a member with logs does not join it (start the restart leader from its own logs)"
    )]
    NotRestarted {
        /// The group's current view.
        view: u32,
        /// The member's saved view.
        saved: u32,
    },
}

/// A join the leader received and has not proposed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Joiner {
    pub(crate) node: NodeId,
    pub(crate) address: String,
    /// It comes back with its logs ([`Change::Add::returning`]).
    pub(crate) returning: bool,
}

/// The counters of one row, as last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    heartbeat: u64,
    wedged: u64,
    leaving: u64,
    proposer: u64,
    num_changes: u64,
    num_acked: u64,
    final_len: u64,
    final_ready: u64,
}

impl Counters {
    fn read<M: SstMemory>(mem: &M, base: usize, cols: &GmsColumns) -> Self {
        let at = |c| mem.load_u64(base + cols.counter(c));
        // Read in reverse row order: `final_ready` first, then what it announces (acquire loads).
        let final_ready = at(GmsCounter::FinalReady);
        let final_len = at(GmsCounter::FinalLen);
        let num_acked = at(GmsCounter::NumAcked);
        let num_changes = at(GmsCounter::NumChanges);
        let proposer = at(GmsCounter::Proposer);
        let leaving = at(GmsCounter::Leaving);
        let wedged = at(GmsCounter::Wedged);
        let heartbeat = at(GmsCounter::Heartbeat);
        Self { heartbeat, wedged, leaving, proposer, num_changes, num_acked, final_len, final_ready }
    }
}

/// The view's final record: the change list and every shard's trim (view shard order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Final {
    pub(crate) changes: Vec<Change>,
    pub(crate) trims: Vec<Vec<u64>>,
}

/// Own ordered messages to send again, per shard, as `(timestamp, payload)` in order.
pub(crate) type Resends = Vec<(ShardRef, Vec<(Time, Vec<u8>)>)>;

/// What a member carries from one view into the next.
#[derive(Clone, Debug, Default)]
pub(crate) struct Carry {
    /// Members still present that this member suspected.
    pub(crate) suspected: Vec<NodeId>,
    /// Joins received (as leader) and not yet proposed.
    pub(crate) joins: Vec<Joiner>,
    /// It asked to leave and was not removed yet.
    pub(crate) leaving: bool,
    /// Own ordered messages above the trim, per shard, to send again.
    pub(crate) resend: Resends,
    /// The last layout each shard had, across inadequate views (see [`Gms::last_shards`]).
    pub(crate) last_shards: Vec<ShardLayout>,
}

/// The membership state of one member in one view.
#[derive(Clone, Debug)]
pub(crate) struct Gms {
    pub(crate) config: MembershipConfig,
    pub(crate) layout_fn: Rc<dyn LayoutFn>,
    cols: GmsColumns,
    row_len: usize,
    n: usize,
    me: usize,
    pub(crate) addresses: BTreeMap<NodeId, String>,
    heartbeat: u64,
    next_heartbeat: Time,
    seen: Vec<Counters>,
    heard_at: Vec<Time>,
    broken: Vec<bool>,
    pub(crate) suspected: Vec<bool>,
    /// Suspicions from inputs, applied at the next step.
    local: Vec<NodeId>,
    pub(crate) wedged: bool,
    pub(crate) leaving: bool,
    proposer: u64,
    changes: Vec<Change>,
    /// This member saves every list it takes up before it goes into its row.
    saves_proposals: bool,
    /// The list taken up waits to be saved.
    unsaved: bool,
    pub(crate) joins: Vec<Joiner>,
    pub(crate) final_record: Option<Final>,
    /// Every shard's members in the last view that had it: an inadequate view has no shards,
    /// and the view after it must still send each shard's state to its new members.
    pub(crate) last_shards: Vec<ShardLayout>,
    /// Every member it waits for echoed the final record: deliver up to the trims.
    pub(crate) trim_ready: bool,
    pub(crate) trim_delivered: bool,
    data_dirty: bool,
    counters_dirty: bool,
    pub(crate) steps: Vec<GmsStep>,
    pub(crate) violations: Vec<(NodeId, RowViolation)>,
    pub(crate) stop: Option<StopReason>,
}

impl Gms {
    pub(crate) fn new(
        config: MembershipConfig,
        layout_fn: Rc<dyn LayoutFn>,
        layout: &RowLayout,
        view: &View,
        me: NodeId,
        addresses: BTreeMap<NodeId, String>,
        now: Time,
    ) -> Self {
        let n = view.members.len();
        let grace = now.plus_ns(config.suspect_after_ns());
        Self {
            next_heartbeat: now,
            config,
            layout_fn,
            cols: layout.gms.clone(),
            row_len: layout.row_len,
            n,
            me: view.rank_of(me).expect("a member"),
            addresses,
            heartbeat: 0,
            seen: vec![Counters::default(); n],
            // Grace for the first sign of life in a new view: a member may still be finishing
            // the previous view change, which takes up to a timeout when a member failed at its
            // end, and its traffic meanwhile goes only to the old view's members.
            heard_at: vec![grace; n],
            broken: vec![false; n],
            suspected: vec![false; n],
            local: Vec::new(),
            wedged: false,
            leaving: false,
            proposer: 0,
            changes: Vec::new(),
            saves_proposals: false,
            unsaved: false,
            joins: Vec::new(),
            final_record: None,
            last_shards: view.shards.clone(),
            trim_ready: false,
            trim_delivered: false,
            data_dirty: false,
            counters_dirty: false,
            steps: Vec::new(),
            violations: Vec::new(),
            stop: None,
        }
    }

    fn base(&self, rank: usize) -> usize {
        rank * self.row_len
    }

    /// Suspects `node` at the next step (transport failure, report, violation).
    pub(crate) fn suspect_later(&mut self, node: NodeId) {
        self.local.push(node);
    }

    /// Joins under way: waiting, or already in the change list.
    pub(crate) fn joins_under_way(&self) -> usize {
        self.joins.len() + self.changes.iter().filter(|c| matches!(c, Change::Add { .. })).count()
    }

    /// The address of `node`'s join if it is under way here: waiting to be proposed, or in the
    /// change list (perhaps inherited from an earlier leader, PROTOCOLS §3.4).
    pub(crate) fn join_under_way(&self, node: NodeId) -> Option<&str> {
        let waiting = self.joins.iter().find(|j| j.node == node).map(|j| j.address.as_str());
        waiting.or_else(|| {
            self.changes.iter().find_map(|c| match c {
                Change::Add { node: n, address, .. } if *n == node => Some(address.as_str()),
                _ => None,
            })
        })
    }

    /// Whether rank `r`'s row has shown a heartbeat in this view (it installed the view).
    pub(crate) fn row_moved(&self, r: usize) -> bool {
        r < self.n && self.seen[r].heartbeat > 0
    }

    /// Rank `r` showed a sign of life now (traffic for another view).
    pub(crate) fn heard(&mut self, r: usize, now: Time) {
        if r < self.n {
            self.heard_at[r] = self.heard_at[r].max(now);
        }
    }

    /// The leader: the lowest rank not suspected.
    pub(crate) fn leader_rank(&self) -> usize {
        (0..self.n).find(|&r| !self.suspected[r]).unwrap_or(self.me)
    }

    /// Ranges of this member's row to push to every other member, data before counters.
    pub(crate) fn flush(&mut self, out: &mut impl FnMut(std::ops::Range<usize>)) {
        let base = self.base(self.me);
        if self.data_dirty {
            let r = self.cols.data_range();
            out(base + r.start..base + r.end);
            self.data_dirty = false;
            self.counters_dirty = true;
        }
        if self.counters_dirty {
            let r = self.cols.counter_range();
            out(base + r.start..base + r.end);
            self.counters_dirty = false;
        }
    }

    /// When the next step is due if nothing arrives.
    pub(crate) fn next_timeout(&self) -> Option<Time> {
        if self.stop.is_some() {
            return None;
        }
        if self.trim_ready {
            // Suspicions are frozen once the final record is echoed: only heartbeats go on.
            return Some(self.next_heartbeat);
        }
        let suspect_after = self.config.suspect_after_ns();
        let deadline = (0..self.n)
            .filter(|&r| r != self.me && !self.suspected[r])
            .map(|r| self.heard_at[r].plus_ns(suspect_after))
            .min();
        Some(deadline.map_or(self.next_heartbeat, |d| d.min(self.next_heartbeat)))
    }

    fn store(&mut self, mem: &mut impl SstMemory, c: GmsCounter, v: u64) {
        mem.store_u64(self.base(self.me) + self.cols.counter(c), v);
        self.counters_dirty = true;
    }

    fn write_changes(&mut self, mem: &mut impl SstMemory, changes: &[Change]) {
        let base = self.base(self.me) + self.cols.changes;
        for (i, c) in changes.iter().enumerate() {
            c.encode(mem.slice_mut(base + i * CHANGE_LEN..base + (i + 1) * CHANGE_LEN));
        }
        self.data_dirty = true;
    }

    fn read_changes(&self, mem: &impl SstMemory, rank: usize, len: usize) -> Result<Vec<Change>, &'static str> {
        let base = self.base(rank) + self.cols.changes;
        (0..len).map(|i| Change::decode(mem.slice(base + i * CHANGE_LEN..base + (i + 1) * CHANGE_LEN))).collect()
    }

    fn read_final(&self, mem: &impl SstMemory, rank: usize, view: &View) -> Result<Final, &'static str> {
        let len = self.seen[rank].final_len as usize;
        let changes = self.read_changes(mem, rank, len)?;
        let trims = view
            .shards
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let at = self.base(rank) + self.cols.trim[si];
                (0..s.senders.len()).map(|j| mem.load_u64(at + 8 * j)).collect()
            })
            .collect();
        Ok(Final { changes, trims })
    }

    fn violation(&mut self, view: &View, rank: usize, column: &'static str, reason: &'static str) {
        self.broken[rank] = true;
        self.violations.push((view.members[rank], RowViolation::Membership { column, reason }));
        self.local.push(view.members[rank]);
    }

    /// Reads and checks a peer's counters; false if the row broke a rule (it is then suspected).
    fn read_peer(&mut self, mem: &impl SstMemory, view: &View, r: usize, now: Time) -> bool {
        let c = Counters::read(mem, self.base(r), &self.cols);
        let was = self.seen[r];
        let flag = |v: u64| v <= 1;
        let problem = if c.heartbeat < was.heartbeat {
            Some(("heartbeat", "went backwards"))
        } else if !flag(c.wedged) || !flag(c.leaving) || !flag(c.final_ready) {
            Some(("flags", "a flag is neither 0 nor 1"))
        } else if c.wedged < was.wedged || c.leaving < was.leaving || c.final_ready < was.final_ready {
            Some(("flags", "a flag was cleared"))
        } else if c.proposer > self.n as u64 || c.proposer < was.proposer {
            Some(("proposer", "out of range or went backwards"))
        } else if c.num_changes > self.cols.changes_max as u64
            || c.num_acked > self.cols.changes_max as u64
            || c.final_len > self.cols.changes_max as u64
        {
            Some(("changes", "more changes than changes_max"))
        } else if c.final_ready == 1 && (c.final_len == 0 || (was.final_ready == 1 && c.final_len != was.final_len)) {
            Some(("final_len", "empty or changed after it was final"))
        } else {
            None
        };
        if let Some((column, reason)) = problem {
            self.violation(view, r, column, reason);
            return false;
        }
        if c.heartbeat != was.heartbeat {
            self.heard_at[r] = now;
        }
        self.seen[r] = c;
        true
    }

    fn suspect(&mut self, mem: &mut impl SstMemory, view: &View, r: usize) {
        assert!(r < self.n, "a rank of the view");
        if r == self.me || self.suspected[r] {
            return;
        }
        self.suspected[r] = true;
        let at = self.base(self.me) + self.cols.suspected + 8 * (r / 64);
        let word = mem.load_u64(at) | 1 << (r % 64);
        mem.store_u64(at, word);
        self.data_dirty = true;
        self.steps.push(GmsStep::Suspected(view.members[r]));
    }

    /// Wedges: shards frozen, their frozen counts copied into the membership section.
    fn wedge(&mut self, mem: &mut impl SstMemory, view: &View, shards: &mut [ShardState]) {
        if self.wedged {
            return;
        }
        self.wedged = true;
        for s in shards.iter_mut() {
            let frozen = s.freeze(mem);
            let si = view.shards.iter().position(|l| l.id == s.id).expect("a shard of the view");
            let at = self.base(self.me) + self.cols.frozen[si];
            for (j, v) in frozen.into_iter().enumerate() {
                mem.store_u64(at + 8 * j, v);
            }
        }
        self.data_dirty = true;
        self.store(mem, GmsCounter::Wedged, 1);
        self.steps.push(GmsStep::Wedged);
    }

    /// Asks to leave: the leader proposes this member's removal.
    pub(crate) fn leave(&mut self, mem: &mut impl SstMemory) {
        if !self.leaving {
            self.leaving = true;
            self.store(mem, GmsCounter::Leaving, 1);
        }
    }

    /// One run of the membership rules.
    pub(crate) fn step(&mut self, now: Time, view: &View, mem: &mut impl SstMemory, shards: &mut [ShardState]) {
        assert_eq!(view.members.len(), self.n, "the rules run on the view they were built for");
        assert!(self.me < self.n && self.seen.len() == self.n && self.suspected.len() == self.n);
        if self.stop.is_some() || self.trim_ready {
            // Nothing changes once the final record is echoed everywhere it must be: the rest
            // (ragged delivery, install) is driven by the node.
            if self.trim_ready && self.stop.is_none() && now >= self.next_heartbeat {
                self.beat(now, mem);
            }
            return;
        }
        if now >= self.next_heartbeat {
            self.beat(now, mem);
        }
        // Read every peer's counters; suspect on silence.
        let suspect_after = self.config.suspect_after_ns();
        for r in 0..self.n {
            if r == self.me || self.broken[r] {
                continue;
            }
            if !self.read_peer(mem, view, r, now) {
                continue;
            }
            if !self.suspected[r] && now >= self.heard_at[r].plus_ns(suspect_after) {
                self.suspect(mem, view, r);
            }
        }
        for node in std::mem::take(&mut self.local) {
            if let Some(r) = view.rank_of(node) {
                self.suspect(mem, view, r);
            }
        }
        // Merge the suspicions of rows not suspected (rank order: a row suspected by an earlier
        // one in this pass is frozen already).
        for r in 0..self.n {
            if r == self.me || self.suspected[r] || self.broken[r] {
                continue;
            }
            let words_at = self.base(r) + self.cols.suspected;
            // Checked whole before any bit is believed: only the last word can hold bits beyond
            // the members (`suspected_words` is `ceil(n / 64)`).
            let last = self.cols.suspected_words - 1;
            let valid_in_last = self.n - 64 * last;
            if valid_in_last < 64 && mem.load_u64(words_at + 8 * last) >> valid_in_last != 0 {
                self.violation(view, r, "suspected", "a bit beyond the view's members");
                continue;
            }
            for w in 0..self.cols.suspected_words {
                let mut bits = mem.load_u64(words_at + 8 * w);
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let target = w * 64 + b;
                    if target == self.me {
                        if !self.leaving {
                            self.stop =
                                Some(StopReason::Removed { view: view.id.0, why: "another member suspects it" });
                            return;
                        }
                    } else {
                        self.suspect(mem, view, target);
                    }
                }
            }
        }
        if self.suspected.iter().any(|&s| s) {
            self.wedge(mem, view, shards);
        }
        // Partition safety. A leaver still taking part is not suspected, so it never counts; a
        // suspected leaver does: not counting it would let both sides of a partition that
        // splits the leavers believe they hold a majority.
        let failed = (0..self.n).filter(|&r| self.suspected[r]).count();
        if self.config.partition_safety && failed > 0 && failed >= self.n.div_ceil(2) {
            self.stop = Some(StopReason::Partitioned { view: view.id.0, suspected: failed, members: self.n });
            return;
        }
        if self.final_record.is_none() {
            if self.leader_rank() == self.me {
                self.lead(view, mem, shards);
            } else {
                self.follow(view, mem, shards);
            }
        }
        if self.final_record.is_some() {
            self.check_echoes(view, mem);
        }
    }

    fn beat(&mut self, now: Time, mem: &mut impl SstMemory) {
        self.heartbeat += 1;
        self.store(mem, GmsCounter::Heartbeat, self.heartbeat);
        self.next_heartbeat = now.plus_ns(self.config.heartbeat_ns());
    }

    fn removed_by_final(&self, view: &View, rank: usize) -> bool {
        let node = view.members[rank];
        self.final_record.as_ref().is_some_and(|f| f.changes.contains(&Change::Remove(node)))
    }

    fn set_final(&mut self, mem: &mut impl SstMemory, view: &View, shards: &mut [ShardState], f: Final, step: GmsStep) {
        assert!(self.final_record.is_none(), "one final record per member and view");
        assert_eq!(f.trims.len(), view.shards.len(), "a trim per shard of the view");
        assert!(!f.changes.is_empty(), "a final record changes something");
        self.wedge(mem, view, shards);
        self.write_changes(mem, &f.changes);
        for (si, t) in f.trims.iter().enumerate() {
            let at = self.base(self.me) + self.cols.trim[si];
            for (j, &v) in t.iter().enumerate() {
                mem.store_u64(at + 8 * j, v);
            }
        }
        self.store(mem, GmsCounter::FinalLen, f.changes.len() as u64);
        self.store(mem, GmsCounter::FinalReady, 1);
        self.changes = f.changes.clone();
        self.unsaved = false;
        self.final_record = Some(f);
        self.steps.push(step);
    }

    fn lead(&mut self, view: &View, mem: &mut impl SstMemory, shards: &mut [ShardState]) {
        assert_eq!(self.leader_rank(), self.me, "only the leader leads");
        assert!(self.final_record.is_none() && self.stop.is_none());
        // A final record anywhere (a failed leader's) is reused, never recomputed. Prefer a
        // record held by a row this member trusts; among suspected rows, the record of the
        // most recent leader (its row's proposer): a later leader computed its own record only
        // because no earlier one had gathered its acknowledgements, so an earlier record held
        // by suspected rows alone cannot have been installed, while the later one may have.
        let holds = |r: usize| r != self.me && !self.broken[r] && self.seen[r].final_ready == 1;
        let published = (0..self.n).find(|&r| holds(r) && !self.suspected[r]).or_else(|| {
            (0..self.n).filter(|&r| holds(r)).max_by_key(|&r| (self.seen[r].proposer, std::cmp::Reverse(r)))
        });
        if let Some(r) = published {
            match self.read_final(mem, r, view) {
                Ok(f) => {
                    let len = f.changes.len();
                    self.set_final(mem, view, shards, f, GmsStep::Echoed(len));
                }
                Err(reason) => self.violation(view, r, "changes", reason),
            }
            return;
        }
        let me_proposer = self.me as u64 + 1;
        let mut list = if self.proposer == me_proposer {
            self.changes.clone()
        } else {
            // Taking over (§3.4): the most recent earlier leader's list, from any row.
            let best = (0..self.n)
                .filter(|&r| r != self.me && !self.broken[r] && self.seen[r].proposer > 0)
                .max_by_key(|&r| (self.seen[r].proposer, self.seen[r].num_changes, std::cmp::Reverse(r)));
            let mut from_rows = match best {
                Some(r) => match self.read_changes(mem, r, self.seen[r].num_changes as usize) {
                    Ok(list) => list,
                    Err(reason) => {
                        self.violation(view, r, "changes", reason);
                        return;
                    }
                },
                None => Vec::new(),
            };
            if self.proposer > 0 && self.changes.len() > from_rows.len() {
                from_rows = self.changes.clone();
            }
            // An earlier leader's list may remove this member (read from a row it suspects); as
            // leader it does not propose its own removal unless it is leaving.
            let me_node = view.members[self.me];
            if !self.leaving {
                from_rows.retain(|c| *c != Change::Remove(me_node));
            }
            from_rows
        };
        let cap = self.cols.changes_max;
        let push = |list: &mut Vec<Change>, c: Change| {
            if list.len() < cap && !list.iter().any(|o| o.node() == c.node()) {
                list.push(c);
            }
        };
        for r in 0..self.n {
            let leaving = if r == self.me { self.leaving } else { self.seen[r].leaving == 1 };
            if self.suspected[r] || leaving {
                push(&mut list, Change::Remove(view.members[r]));
            }
        }
        // Joiners a view change adds stay fewer than the members that stay: if every one of
        // them fails before it ever takes part (PROTOCOLS §3.5), the others still hold a
        // majority of the view and partition safety does not stop them. Others wait for the
        // next change.
        let staying = self.n - list.iter().filter(|c| matches!(c, Change::Remove(_))).count();
        let adds_max = staying.saturating_sub(1).max(1);
        for j in &self.joins {
            let adds = list.iter().filter(|c| matches!(c, Change::Add { .. })).count();
            if view.rank_of(j.node).is_none() && adds < adds_max {
                push(&mut list, Change::Add { node: j.node, address: j.address.clone(), returning: j.returning });
            }
        }
        self.joins.retain(|j| !list.iter().any(|c| c.node() == j.node));
        for c in &list {
            if let Change::Remove(x) = c
                && let Some(r) = view.rank_of(*x)
                && r != self.me
                && self.seen[r].leaving == 0
            {
                self.suspect(mem, view, r);
            }
        }
        if list.is_empty() {
            return;
        }
        if list != self.changes || self.proposer != me_proposer {
            let step = GmsStep::Proposed(list.len());
            self.take_up(view, mem, shards, me_proposer, list, step);
        }
        if self.unsaved {
            return; // committed only once its own proposal is saved
        }
        let len = self.changes.len() as u64;
        let all_acked = (0..self.n).filter(|&r| r != self.me && !self.suspected[r]).all(|r| {
            let c = self.seen[r];
            c.proposer == me_proposer && c.num_acked == len && c.wedged == 1
        });
        // Every suspect removed, or as many as one view change can carry (the rest go next).
        let all_suspects_removed = self.changes.len() == self.cols.changes_max
            || (0..self.n)
                .filter(|&r| self.suspected[r])
                .all(|r| self.changes.contains(&Change::Remove(view.members[r])));
        if !all_acked || !all_suspects_removed {
            return;
        }
        // The trims: per shard and sender, the least any acknowledging shard member froze.
        let trims = view
            .shards
            .iter()
            .enumerate()
            .map(|(si, s)| {
                (0..s.senders.len())
                    .map(|j| {
                        s.members
                            .iter()
                            .filter_map(|m| view.rank_of(*m))
                            .filter(|&r| !self.suspected[r])
                            .map(|r| mem.load_u64(self.base(r) + self.cols.frozen[si] + 8 * j))
                            .min()
                            .unwrap_or(0)
                    })
                    .collect()
            })
            .collect();
        let f = Final { changes: self.changes.clone(), trims };
        let len = f.changes.len();
        self.set_final(mem, view, shards, f, GmsStep::Committed(len));
    }

    fn follow(&mut self, view: &View, mem: &mut impl SstMemory, shards: &mut [ShardState]) {
        let l = self.leader_rank();
        assert_ne!(l, self.me, "the leader does not follow");
        assert!(self.final_record.is_none() && self.stop.is_none());
        if self.broken[l] {
            return;
        }
        let c = self.seen[l];
        if c.final_ready == 1 {
            match self.read_final(mem, l, view) {
                Ok(f) => {
                    let len = f.changes.len();
                    self.set_final(mem, view, shards, f, GmsStep::Echoed(len));
                }
                Err(reason) => self.violation(view, l, "changes", reason),
            }
            return;
        }
        let proposer = l as u64 + 1;
        if c.proposer != proposer || c.num_changes == 0 {
            return;
        }
        if self.proposer == proposer && self.changes.len() as u64 == c.num_changes {
            return;
        }
        let list = match self.read_changes(mem, l, c.num_changes as usize) {
            Ok(list) => list,
            Err(reason) => {
                self.violation(view, l, "changes", reason);
                return;
            }
        };
        // A removal in the list is not taken as a suspicion here: the member may be a leaver
        // whose flag has not arrived yet (it travels on another link), and suspecting it would
        // count it as a failure. A failed member goes silent and is suspected anyway; a removed
        // member is not waited for at install.
        let step = GmsStep::Acked { leader: view.members[l], len: list.len() };
        self.take_up(view, mem, shards, proposer, list, step);
    }

    /// This member proposes (as leader) or acknowledges (as follower) `list` of `proposer`:
    /// it wedges, and the list and its counters go into its row at once, or, for a member that
    /// saves its proposals (PROTOCOLS §4.1), once the list is saved ([`Gms::proposal_saved`]):
    /// nobody may count an acknowledgement whose view a restart could not hear of. Heartbeats
    /// go on meanwhile.
    fn take_up(
        &mut self,
        view: &View,
        mem: &mut impl SstMemory,
        shards: &mut [ShardState],
        proposer: u64,
        list: Vec<Change>,
        step: GmsStep,
    ) {
        debug_assert!(!list.is_empty(), "an empty change list is never taken up");
        self.wedge(mem, view, shards);
        self.proposer = proposer;
        self.changes = list;
        self.steps.push(step);
        if self.saves_proposals {
            self.unsaved = true;
        } else {
            self.publish_list(mem);
        }
    }

    /// Writes the list taken up, and its counters, into this member's row.
    fn publish_list(&mut self, mem: &mut impl SstMemory) {
        let changes = std::mem::take(&mut self.changes);
        self.write_changes(mem, &changes);
        self.store(mem, GmsCounter::Proposer, self.proposer);
        self.store(mem, GmsCounter::NumChanges, changes.len() as u64);
        self.store(mem, GmsCounter::NumAcked, changes.len() as u64);
        self.changes = changes;
        self.unsaved = false;
    }

    /// The list taken up is saved: it goes into this member's row (its acknowledgement, or its
    /// proposal, may now be counted). Nothing if it was published already, or superseded by a
    /// final record.
    pub(crate) fn proposal_saved(&mut self, mem: &mut impl SstMemory) {
        if self.unsaved && self.final_record.is_none() {
            self.publish_list(mem);
        }
    }

    /// Makes this member save every list it takes up before the list goes into its row.
    pub(crate) fn set_saves_proposals(&mut self, saves: bool) {
        self.saves_proposals = saves;
    }

    /// Whether a list this member took up waits to be saved before it goes into its row.
    pub(crate) fn awaits_save(&self) -> bool {
        self.unsaved && self.final_record.is_none()
    }

    /// The members of the next view as proposed (the changes this member acknowledged or
    /// proposed), if a change is under way.
    pub(crate) fn proposed_members(&self, view: &View) -> Option<Vec<NodeId>> {
        if self.changes.is_empty() {
            return None;
        }
        let mut members: Vec<NodeId> = view.members.clone();
        for c in &self.changes {
            match c {
                Change::Remove(n) => members.retain(|m| m != n),
                Change::Add { node, .. } => {
                    if !members.contains(node) {
                        members.push(*node);
                    }
                }
            }
        }
        Some(members)
    }

    /// Install condition: every member not suspected and staying echoed the same final record.
    /// A row whose final record differs from this member's is a violation (there is only one
    /// per view); it is suspected, and this member waits for it no more.
    fn check_echoes(&mut self, view: &View, mem: &mut impl SstMemory) {
        assert!(self.final_record.is_some() && !self.trim_ready, "echoes are checked for a record held, once");
        let len = self.changes.len() as u64;
        let mut all = true;
        for r in 0..self.n {
            if r == self.me || self.suspected[r] || self.broken[r] || self.removed_by_final(view, r) {
                continue;
            }
            let c = self.seen[r];
            if c.final_ready != 1 {
                all = false;
                continue;
            }
            if c.final_len != len || !self.same_final(view, mem, r) {
                self.violation(view, r, "final", "a final record other than the one this member holds");
                all = false;
            }
        }
        if !self.local.is_empty() {
            for node in std::mem::take(&mut self.local) {
                if let Some(r) = view.rank_of(node) {
                    self.suspect(mem, view, r);
                }
            }
            return;
        }
        // And a majority of the view holds this very record (leavers that echoed count, and so
        // do suspected rows, frozen as last read): without it, a record whose list removes many
        // leavers could be installed on the word of a minority. Two records (a leader that
        // failed after publishing to some, a later one that computed its own) can share a
        // length: only rows holding the same changes and trims count, so at most one record
        // per view ever gathers a majority.
        let holders = 1
            + (0..self.n)
                .filter(|&r| {
                    r != self.me
                        && !self.broken[r]
                        && self.seen[r].final_ready == 1
                        && self.seen[r].final_len == len
                        && self.same_final(view, mem, r)
                })
                .count();
        if all && holders > self.n / 2 {
            self.trim_ready = true;
        }
    }

    /// Whether row `r` carries the same final changes and trims as this member's row.
    fn same_final(&self, view: &View, mem: &impl SstMemory, r: usize) -> bool {
        let len = self.changes.len() * CHANGE_LEN;
        let (mine, theirs) = (self.base(self.me) + self.cols.changes, self.base(r) + self.cols.changes);
        if mem.slice(mine..mine + len) != mem.slice(theirs..theirs + len) {
            return false;
        }
        view.shards.iter().enumerate().all(|(si, s)| {
            (0..s.senders.len()).all(|j| {
                let at = self.cols.trim[si] + 8 * j;
                mem.load_u64(self.base(self.me) + at) == mem.load_u64(self.base(r) + at)
            })
        })
    }

    /// The next view from the final record (call once `trim_ready`).
    pub(crate) fn next_view(&self, view: &View) -> NextView {
        assert!(self.trim_ready, "the next view follows the final record's echoes");
        let f = self.final_record.as_ref().expect("a final record");
        let departed: Vec<NodeId> = f
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Remove(n) if view.rank_of(*n).is_some() => Some(*n),
                _ => None,
            })
            .collect();
        // A change list that names a joiner twice (a lying row) adds it once.
        let mut joined: Vec<(NodeId, String, bool)> = Vec::new();
        for c in &f.changes {
            if let Change::Add { node, address, returning } = c
                && view.rank_of(*node).is_none()
                && !joined.iter().any(|(n, _, _)| n == node)
            {
                joined.push((*node, address.clone(), *returning));
            }
        }
        // The members that stay hold the states of their shards; joiners hold nothing, unless
        // they return with their logs (and then only for a shard nobody else holds).
        let staying: Vec<NodeId> = view.members.iter().copied().filter(|m| !departed.contains(m)).collect();
        let mut members = staying.clone();
        members.extend(joined.iter().map(|(n, _, _)| *n));
        let mut addresses = self.addresses.clone();
        for d in &departed {
            addresses.remove(d);
        }
        for (n, a, _) in &joined {
            addresses.insert(*n, a.clone());
        }
        let previous: Vec<ShardLayout> = view
            .shards
            .iter()
            .cloned()
            .chain(self.last_shards.iter().filter(|o| view.shards.iter().all(|s| s.id != o.id)).cloned())
            .collect();
        let (mut shards, mut inadequate) = match self.layout_fn.layout_next(&members, &previous) {
            Ok(s) => (s, None),
            Err(why) => (Vec::new(), Some(why)),
        };
        let mut transfers = Vec::new();
        let mut lost = Vec::new();
        for s in &shards {
            // A shard without a previous layout is new: it starts empty.
            let Some(old) = previous.iter().find(|o| o.id == s.id) else { continue };
            let held = |m: &NodeId| old.members.contains(m) && staying.contains(m);
            // Every member that stays and was in the shard holds its state, even one that moves
            // to another shard; those in the shard first.
            let mut from: Vec<NodeId> = s.members.iter().copied().filter(held).collect();
            from.extend(staying.iter().copied().filter(|m| held(m) && !s.members.contains(m)));
            if from.is_empty() {
                // Every holder is gone: members of the shard's last layout that come back with
                // their logs hold it now.
                let back = |m: &NodeId| joined.iter().any(|(n, _, r)| n == m && *r) && old.members.contains(m);
                from = s.members.iter().copied().filter(back).collect();
                from.extend(joined.iter().map(|(n, _, _)| *n).filter(|m| back(m) && !s.members.contains(m)));
            }
            if from.is_empty() {
                lost.push(s.id);
                continue;
            }
            let to: Vec<NodeId> = s.members.iter().copied().filter(|m| !held(m) && !from.contains(m)).collect();
            if !to.is_empty() {
                transfers.push(StateTransfer { shard: s.id, from, to });
            }
        }
        if !lost.is_empty() && self.config.lost_shards == LostShards::Wait {
            // Never resumed empty: the view waits for a member holding the state to come back.
            let names: Vec<String> = lost.iter().map(ToString::to_string).collect();
            inadequate = Some(format!(
                "{} lost every member that held its state: waiting for one of them to come back with its logs",
                names.join(", ")
            ));
            shards = Vec::new();
            transfers.clear();
            lost.clear();
        }
        let history = previous.into_iter().filter(|o| shards.iter().all(|s| s.id != o.id)).collect();
        NextView {
            view: View { id: ViewId(view.id.0 + 1), members, shards },
            inadequate,
            addresses: addresses.into_iter().collect(),
            joined: joined.into_iter().map(|(n, _, _)| n).collect(),
            departed,
            transfers,
            lost,
            history,
        }
    }

    /// What to carry into the next view.
    pub(crate) fn carry(&self, view: &View, next: &View) -> Carry {
        assert!(next.id.0 == view.id.0 + 1, "carried into the view after this one");
        Carry {
            // Suspicions of this view, and those that arrived too late for it (a report or a
            // connection failure once the final record was echoed).
            suspected: (0..self.n)
                .filter(|&r| self.suspected[r])
                .map(|r| view.members[r])
                .chain(self.local.iter().copied())
                .filter(|m| next.rank_of(*m).is_some())
                .collect(),
            joins: self.joins.iter().filter(|j| next.rank_of(j.node).is_none()).cloned().collect(),
            leaving: self.leaving && next.rank_of(view.members[self.me]).is_some(),
            resend: Vec::new(),
            last_shards: view
                .shards
                .iter()
                .cloned()
                .chain(self.last_shards.iter().filter(|o| view.shards.iter().all(|s| s.id != o.id)).cloned())
                .collect(),
        }
    }

    /// Whether this member is removed by the final record.
    pub(crate) fn removed_self(&self, view: &View) -> bool {
        self.removed_by_final(view, self.me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_bad_bytes_are_refused() {
        let mut b = [0u8; CHANGE_LEN];
        for c in [
            Change::Remove(NodeId(7)),
            Change::Add { node: NodeId(9), address: "10.0.0.1:7000".into(), returning: false },
            Change::Add { node: NodeId(9), address: "10.0.0.1:7000".into(), returning: true },
        ] {
            c.encode(&mut b);
            assert_eq!(Change::decode(&b), Ok(c));
        }
        b[4] = 99;
        assert!(Change::decode(&b).is_err());
        b[4] = CHANGE_ADD;
        b[5] = 200;
        assert!(Change::decode(&b).is_err());
        b[5] = 2;
        b[8] = 0xff;
        assert!(Change::decode(&b).is_err());
    }

    #[test]
    fn layouts_decide_adequacy() {
        let one = OneShard { mode: DeliveryMode::Ordered, min_members: 2 };
        assert!(one.layout(&[NodeId(1)]).is_err());
        let s = one.layout(&[NodeId(1), NodeId(2)]).unwrap();
        assert_eq!(s[0].senders, vec![NodeId(1), NodeId(2)]);
        let fixed = FixedShards(vec![ShardLayout {
            id: ShardRef { subgroup: super::super::SubgroupId(0), shard: super::super::ShardIndex(0) },
            members: vec![NodeId(1), NodeId(2), NodeId(3)],
            senders: vec![NodeId(3)],
            mode: DeliveryMode::Ordered,
        }]);
        assert_eq!(fixed.layout(&[NodeId(3), NodeId(1)]).unwrap()[0].members, vec![NodeId(3), NodeId(1)]);
        assert!(fixed.layout(&[NodeId(1), NodeId(2)]).is_err(), "no sender left");
    }

    /// A view of `n` members in one ordered shard, every member a sender, and its row layout.
    fn seven() -> (View, RowLayout, crate::protocol::Limits) {
        let ids: Vec<NodeId> = (0..7).map(NodeId).collect();
        let layout = OneShard { mode: DeliveryMode::Ordered, min_members: 1 };
        let view = View { id: ViewId(3), members: ids.clone(), shards: layout.layout(&ids).unwrap() };
        let limits =
            crate::protocol::Limits { window_len: 8, payload_len_max: 64, ring_len: 1024, ..Default::default() };
        let rows = RowLayout::new(&view, &limits);
        (view, rows, limits)
    }

    fn gms_of(me: u32, view: &View, rows: &RowLayout) -> Gms {
        let layout: Rc<dyn LayoutFn> = Rc::new(OneShard { mode: DeliveryMode::Ordered, min_members: 1 });
        let addresses = view.members.iter().map(|n| (*n, format!("a{}", n.0))).collect();
        Gms::new(MembershipConfig::default(), layout, rows, view, NodeId(me), addresses, Time(0))
    }

    /// Writes `f` as row `r`'s final record, with proposer `proposer`, as its pushes would.
    fn hold(g: &Gms, mem: &mut crate::protocol::HeapMemory, r: usize, f: &Final, proposer: u64) {
        let base = g.base(r);
        for (i, c) in f.changes.iter().enumerate() {
            c.encode(
                mem.slice_mut(base + g.cols.changes + i * CHANGE_LEN..base + g.cols.changes + (i + 1) * CHANGE_LEN),
            );
        }
        for (si, t) in f.trims.iter().enumerate() {
            for (j, &v) in t.iter().enumerate() {
                mem.store_u64(base + g.cols.trim[si] + 8 * j, v);
            }
        }
        let len = f.changes.len() as u64;
        for (c, v) in [
            (GmsCounter::Wedged, 1),
            (GmsCounter::Proposer, proposer),
            (GmsCounter::NumChanges, len),
            (GmsCounter::NumAcked, len),
            (GmsCounter::FinalLen, len),
            (GmsCounter::FinalReady, 1),
        ] {
            mem.store_u64(base + g.cols.counter(c), v);
        }
    }

    /// Two records for one view (member-core finding 1): the leader 0 published F1 and failed;
    /// leader 1, seeing none, computed F2 with the same list and other trims. Member 4 holds
    /// F2, as do rows 1 and 3; rows 0, 2, 5 and 6 hold F1; 4 suspects 5 and 6. Counting rows by
    /// the length of their record made seven holders and let 4 install F2 while F1 had a
    /// majority; only rows with the same record count: three of seven, 4 waits.
    #[test]
    fn only_rows_holding_the_same_record_count_as_holders() {
        use crate::protocol::HeapMemory;
        let (view, rows, _) = seven();
        let list: Vec<Change> = (0..4).map(|n| Change::Remove(NodeId(n))).collect();
        let f1 = Final { changes: list.clone(), trims: vec![vec![4; 7]] };
        let f2 = Final { changes: list, trims: vec![vec![5; 7]] };
        for (f2_rows, installs) in [(vec![1, 3], false), (vec![1, 3, 5, 6], true)] {
            let mut mem = HeapMemory::new(rows.table_len());
            let mut g = gms_of(4, &view, &rows);
            g.set_final(&mut mem, &view, &mut [], f2.clone(), GmsStep::Echoed(4));
            for r in [0, 1, 2, 3, 5, 6] {
                let f = if f2_rows.contains(&r) { &f2 } else { &f1 };
                hold(&g, &mut mem, r, f, if f2_rows.contains(&r) { 2 } else { 1 });
                g.seen[r] = Counters::read(&mem, g.base(r), &g.cols);
            }
            g.suspected[5] = true;
            g.suspected[6] = true;
            g.check_echoes(&view, &mut mem);
            assert_eq!(g.trim_ready, installs, "F2 held by {f2_rows:?} and member 4");
            assert!(g.violations.is_empty(), "{:?}", g.violations);
        }
    }

    /// A new leader that finds records only in suspected rows copies the most recent leader's
    /// (the highest proposer), never the first row's.
    #[test]
    fn a_new_leader_copies_the_most_recent_leaders_record() {
        use crate::protocol::HeapMemory;
        let (view, rows, _) = seven();
        let list: Vec<Change> = (0..2).map(|n| Change::Remove(NodeId(n))).collect();
        let f1 = Final { changes: list.clone(), trims: vec![vec![4; 7]] };
        let f2 = Final { changes: list, trims: vec![vec![5; 7]] };
        let mut mem = HeapMemory::new(rows.table_len());
        let mut g = gms_of(2, &view, &rows);
        hold(&g, &mut mem, 0, &f1, 1);
        hold(&g, &mut mem, 1, &f2, 2);
        for r in [0, 1] {
            g.seen[r] = Counters::read(&mem, g.base(r), &g.cols);
            g.suspected[r] = true;
        }
        assert_eq!(g.leader_rank(), 2);
        g.lead(&view, &mut mem, &mut []);
        assert_eq!(g.final_record.as_ref(), Some(&f2), "copied the older record");
        assert_eq!(g.steps, vec![GmsStep::Wedged, GmsStep::Echoed(2)]);
    }

    #[test]
    fn config_validation_names_the_setting() {
        MembershipConfig::default().validate().unwrap();
        let e = MembershipConfig { suspect_after: Duration::from_nanos(1), ..MembershipConfig::default() }
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "suspect_after");
    }
}
