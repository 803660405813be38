//! The scenario a group simulation runs ([`Plan`], [`GroupConfig`]) and what it records
//! ([`Event`], [`MemberEvent`]) for the checkers.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::rc::Rc;

use super::super::payload;
use crate::protocol::{
    DeliveryMode, GmsStep, JoinRefusal, LayoutFn, Limits, MembershipConfig, NodeId, ShardRef, StopReason, Time,
    Version, View, ViewId,
};

/// A named step of the view change, to crash around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// [`GmsStep::Suspected`].
    Suspected,
    /// [`GmsStep::Wedged`].
    Wedged,
    /// [`GmsStep::Proposed`].
    Proposed,
    /// [`GmsStep::Acked`].
    Acked,
    /// [`GmsStep::Committed`].
    Committed,
    /// [`GmsStep::Echoed`].
    Echoed,
    /// [`GmsStep::TrimDelivered`].
    TrimDelivered,
    /// [`GmsStep::Installed`].
    Installed,
}

impl StepKind {
    /// Every kind.
    pub const ALL: [StepKind; 8] = [
        StepKind::Suspected,
        StepKind::Wedged,
        StepKind::Proposed,
        StepKind::Acked,
        StepKind::Committed,
        StepKind::Echoed,
        StepKind::TrimDelivered,
        StepKind::Installed,
    ];

    pub(super) fn of(step: &GmsStep) -> Self {
        match step {
            GmsStep::Suspected(_) => StepKind::Suspected,
            GmsStep::Wedged => StepKind::Wedged,
            GmsStep::Proposed(_) => StepKind::Proposed,
            GmsStep::Acked { .. } => StepKind::Acked,
            GmsStep::Committed(_) => StepKind::Committed,
            GmsStep::Echoed(_) => StepKind::Echoed,
            GmsStep::TrimDelivered => StepKind::TrimDelivered,
            GmsStep::Installed(_) => StepKind::Installed,
        }
    }
}

/// A planned fault or membership event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The member dies at `at`.
    Crash {
        /// Who.
        node: NodeId,
        /// When.
        at: Time,
    },
    /// The member dies right after it takes `step` (the first time at or after `after`).
    CrashOnStep {
        /// Who.
        node: NodeId,
        /// Which step.
        step: StepKind,
        /// Not before.
        after: Time,
    },
    /// From `at` until `heal`, nothing passes between `side` and the other members (both ways).
    Partition {
        /// One side.
        side: Vec<NodeId>,
        /// Start.
        at: Time,
        /// End, if it heals.
        heal: Option<Time>,
    },
    /// From `at` until `heal`, nothing passes from `from` to `to`.
    OneWay {
        /// Sender side.
        from: NodeId,
        /// Receiver side.
        to: NodeId,
        /// Start.
        at: Time,
        /// End, if it heals.
        heal: Option<Time>,
    },
    /// A new member (a fresh id, or a restarted member's new id) asks `via` to join at `at`.
    Join {
        /// The joiner.
        node: NodeId,
        /// The member it contacts first.
        via: NodeId,
        /// When.
        at: Time,
    },
    /// The member asks to leave at `at`.
    Leave {
        /// Who.
        node: NodeId,
        /// When.
        at: Time,
    },
    /// From `at` until `until`, the member runs only every `tick_ns` (a slow or descheduled
    /// process): what arrives in between waits for its next tick.
    Slow {
        /// Who.
        node: NodeId,
        /// Its period.
        tick_ns: u64,
        /// Start.
        at: Time,
        /// End, if it recovers.
        until: Option<Time>,
    },
    /// The application reports `node` as failed at member `by`.
    Report {
        /// Who reports.
        by: NodeId,
        /// Who is reported.
        node: NodeId,
        /// When.
        at: Time,
    },
    /// The first log sync of `node` that completes at or after `at` fails (a full disk, an I/O
    /// error): the member stops, as the real driver does, without reporting what it covered.
    /// Needs [`GroupConfig::sync_ns`].
    SyncFails {
        /// Whose disk.
        node: NodeId,
        /// From when.
        at: Time,
    },
    /// The crashed member `node` restarts at `at` from what its disk holds (PROTOCOLS §4.1):
    /// it rebuilds its shards' logs and offers them to `leader` (itself: it leads the restart,
    /// collecting offers until [`crate::protocol::restart::plan`] has a quorum). A group
    /// already running again takes the offer as a join. Needs [`GroupConfig::sync_ns`].
    Restart {
        /// Who.
        node: NodeId,
        /// The restart leader.
        leader: NodeId,
        /// When.
        at: Time,
    },
    /// At `at`, one record of the newest log of one of `node`'s shards (both seeded) no longer
    /// matches its checksum (a bit flip on disk): recovery cuts the log there.
    Corrupt {
        /// Whose disk.
        node: NodeId,
        /// When.
        at: Time,
    },
    /// The member's power is cut at `at`: as [`Plan::Crash`], and the first unsynced record
    /// the cut lost (if any) stays on disk torn, failing its checksum as a flipped bit would
    /// (recovery cannot tell them apart, and calls the log damaged).
    PowerCut {
        /// Who.
        node: NodeId,
        /// When.
        at: Time,
    },
}

/// What a group simulation runs.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Members at start, ids `0..members`, all in view 0.
    pub members: u32,
    /// The layout: with `shards == 1`, one shard of every member, adequate from this many
    /// members; with more, [`RoundRobinShards`](crate::protocol::RoundRobinShards) with this many members per shard.
    pub min_members: usize,
    /// Shards of the layout.
    pub shards: u16,
    /// A layout of the test's own, instead of the one `shards` and `min_members` describe.
    pub layout: Option<Rc<dyn LayoutFn>>,
    /// Ordered or unordered.
    pub mode: DeliveryMode,
    /// Heartbeats and timeouts.
    pub membership: MembershipConfig,
    /// Table limits.
    pub limits: Limits,
    /// Link latency.
    pub latency_ns: RangeInclusive<u64>,
    /// Messages each starting member sends (joiners send none).
    pub messages_per_sender: u64,
    /// Time between a member's messages.
    pub interval_ns: RangeInclusive<u64>,
    /// Payload lengths.
    pub payload_len: RangeInclusive<u32>,
    /// Faults and membership events.
    pub plan: Vec<Plan>,
    /// The run stops at this virtual time.
    pub end: Time,
    /// Or after this many events.
    pub max_steps: u64,
    /// Keep every trace line (else only the tail).
    pub record_trace: bool,
    /// Simulated persistence (PROTOCOLS §4): each member logs the versions it delivers and
    /// syncs them in rounds taking this long (one round covers everything appended before it
    /// starts), reporting each durable version to its node. `None`: nothing is persisted.
    pub sync_ns: Option<RangeInclusive<u64>>,
}

impl GroupConfig {
    /// `members` members sending `messages` messages each, ordered, no faults, a 1 ms heartbeat
    /// and 10 ms suspicion timeout, 200 ms of virtual time.
    pub fn new(seed: u64, members: u32, messages: u64) -> Self {
        Self {
            seed,
            members,
            min_members: 1,
            shards: 1,
            layout: None,
            mode: DeliveryMode::Ordered,
            membership: MembershipConfig {
                heartbeat: std::time::Duration::from_millis(1),
                suspect_after: std::time::Duration::from_millis(10),
                partition_safety: true,
                state_transfer_timeout: std::time::Duration::from_millis(50),
                lost_shards: crate::protocol::LostShards::Wait,
            },
            limits: Limits { window_len: 16, payload_len_max: 256, ring_len: 4096, ..Limits::default() },
            latency_ns: 2_000..=40_000,
            messages_per_sender: messages,
            interval_ns: 20_000..=400_000,
            payload_len: payload::PAYLOAD_HEADER_LEN as u32..=96,
            plan: Vec::new(),
            end: Time(200_000_000),
            max_steps: 5_000_000,
            record_trace: false,
            sync_ns: None,
        }
    }
}

/// One thing that happened at one member, for the checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// It installed (or, as a starting member or joiner, began in) this view.
    Installed(View),
    /// It delivered a workload message.
    Delivered {
        /// The view it was delivered in.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// The workload sender (from the payload).
        sender: NodeId,
        /// The workload sequence number (from the payload).
        seq: u64,
        /// The version the protocol assigned.
        version: Option<Version>,
    },
    /// `send` accepted its workload message `seq` in `view`.
    Sent {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// The workload sequence number.
        seq: u64,
    },
    /// The trims per shard of its view's final record, when it delivered by them.
    Final {
        /// The view.
        view: ViewId,
        /// The trims.
        trims: Vec<(ShardRef, Vec<u64>)>,
    },
    /// It received a shard's state (the log length).
    StateReceived {
        /// The shard.
        shard: ShardRef,
        /// Entries in the log received.
        len: usize,
    },
    /// Its last `count` accepted messages of `shard` could not be sent again (it is no longer
    /// a sender there): their sends failed.
    ResendFailed {
        /// The shard.
        shard: ShardRef,
        /// How many.
        count: usize,
    },
    /// It stopped.
    Stopped(StopReason),
    /// It crashed (planned).
    Crashed,
    /// Its join was refused.
    JoinRefused(JoinRefusal),
    /// It could not enter a group for another reason (no welcome in time, no restart quorum,
    /// stopped while entering).
    EnterFailed(String),
    /// Something broke a rule: a violation reported, a bad payload, a push outside a row.
    Fault(String),
    /// Simulated persistence: everything of `shard` up to `version` is durable here, and was
    /// reported to the node.
    Persisted {
        /// The shard.
        shard: ShardRef,
        /// The version.
        version: Version,
    },
    /// Simulated persistence: this member's node now says `version` of `shard` is durable at
    /// every member of the shard (its global frontier grew to it).
    GlobalPersisted {
        /// The view it saw it in.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// The version.
        version: Version,
    },
    /// A log sync failed (planned): the member stopped.
    StorageFailed,
    /// It restarted from its disk: the last version of each shard's log it recovered, and
    /// whether a corrupt record cut one of them.
    Restarted {
        /// Per shard, the last version recovered.
        logs: BTreeMap<ShardRef, Version>,
        /// A corrupt record cut a log.
        corrupted: bool,
    },
    /// A restarted member's shard state is final in its first view after the restart: the
    /// log it recovered, or the longer one it received.
    Resumed {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// The state.
        log: Rc<[(NodeId, u64)]>,
    },
}

/// A member event with its time and step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Virtual time.
    pub at: Time,
    /// Simulation step.
    pub step: u64,
    /// The member.
    pub node: NodeId,
    /// What happened.
    pub what: MemberEvent,
}
