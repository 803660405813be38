//! The simulated group with membership (PROTOCOLS §3): members that crash, restart as new
//! members, join, leave and get partitioned, over a virtual clock and seeded links.
//!
//! Each member runs a [`Node`] with membership and a tiny replicated application: per shard, the
//! log of `(sender, workload seq)` it delivered, which is also the state a new member receives
//! (PROTOCOLS §3.5). Pushes carry the sender's view id: a push for a view the receiver has not
//! installed yet waits until it does (a real driver buffers frames the same way), a push for an
//! older view is dropped. Joins, redirections, new views and state travel as control messages on
//! the same links. A crash can be planned at a time or on a named step of the view change
//! ([`GmsStep`]): the member then dies at the end of that activation, and each peer receives a
//! seeded prefix of what it pushed in it, which is how "the leader failed after publishing to
//! some" is simulated.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::rc::Rc;

use crate::protocol::{
    DeliveryMode, GmsStep, HeapMemory, Input, JoinRefusal, LayoutFn, Limits, MembershipConfig, NextView, Node, NodeId,
    OneShard, Output, RoundRobinShards, SendError, ShardRef, SstMemory, StopReason, Time, Version, View, ViewId,
};

use super::payload;
use super::rng::SimRng;
use super::trace::Trace;
use super::world::Failure;
use crate::protocol::restart::{self, Offer};

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

    fn of(step: &GmsStep) -> Self {
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
    /// members; with more, [`RoundRobinShards`] with this many members per shard.
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
                heartbeat_ns: 1_000_000,
                suspect_after_ns: 10_000_000,
                partition_safety: true,
                state_transfer_timeout_ns: 50_000_000,
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

/// A shard's application log, as sent to a new member.
type Log = Rc<[(NodeId, u64)]>;

#[derive(Clone, Debug)]
enum Ctrl {
    Join { node: NodeId, address: String },
    Refused(JoinRefusal),
    Welcome(Box<NextView>),
    State { view: ViewId, shard: ShardRef, log: Log },
    Offer { node: NodeId, offer: Offer },
}

#[derive(Clone, Debug)]
enum Ev {
    Arrive { from: NodeId, to: NodeId, view: ViewId, offset: usize, bytes: Rc<[u8]> },
    Ctrl { from: NodeId, to: NodeId, msg: Ctrl },
    Tick { node: NodeId },
    SendDue { node: NodeId },
    Plan(usize),
    Heal(usize),
    Wake { node: NodeId },
    JoinRetry { node: NodeId },
    SyncDone { node: NodeId },
    OfferRetry { node: NodeId },
}

#[derive(Debug, Default)]
struct Stream {
    total: u64,
    next_seq: u64,
    blocked: bool,
    next_len: Option<usize>,
    done: bool,
}

#[derive(Debug)]
struct Member {
    node: Option<Node<HeapMemory>>,
    alive: bool,
    tick_at: Option<Time>,
    /// Pushes for views not installed yet: (view, from, offset, bytes).
    future: Vec<(ViewId, NodeId, usize, Rc<[u8]>)>,
    /// States for a view not installed yet.
    future_state: Vec<(ViewId, ShardRef, Log)>,
    /// A joiner's contact, while it has no view.
    contact: Option<NodeId>,
    log: BTreeMap<ShardRef, Vec<(NodeId, u64)>>,
    stream: Stream,
    /// Slow: its period and until when.
    slow: Option<(u64, Option<Time>)>,
    /// Inputs waiting for a slow member's next tick.
    deferred: Vec<Input>,
    wake_at: Option<Time>,
    disk: Disk,
    /// The last view it installed (what a persisting member saves).
    saved: Option<View>,
    /// Restarted from its disk and not yet in a view: the shards whose state is to be judged
    /// final ([`MemberEvent::Resumed`]) in its first view.
    resuming: bool,
    /// Shards whose log a corrupt record cut at its restart.
    damaged: BTreeSet<ShardRef>,
    /// Views it proposed or acknowledged after its saved one (saved before the acknowledgement
    /// leaves, as the service does).
    proposals: Vec<(ViewId, Vec<NodeId>)>,
}

impl Member {
    fn new(node: Option<Node<HeapMemory>>, contact: Option<NodeId>, stream: Stream) -> Self {
        Self {
            node,
            alive: true,
            tick_at: None,
            future: Vec::new(),
            future_state: Vec::new(),
            contact,
            log: BTreeMap::new(),
            stream,
            slow: None,
            deferred: Vec::new(),
            wake_at: None,
            disk: Disk::default(),
            saved: None,
            resuming: false,
            damaged: BTreeSet::new(),
            proposals: Vec::new(),
        }
    }
}

/// A member's simulated disk: the last version appended and durable per shard, and the log
/// files themselves.
#[derive(Debug, Default)]
struct Disk {
    appended: BTreeMap<ShardRef, Version>,
    durable: BTreeMap<ShardRef, Version>,
    /// What the sync under way covers.
    in_flight: Option<BTreeMap<ShardRef, Version>>,
    /// The global frontier last seen, per view and shard.
    global_seen: BTreeMap<(ViewId, ShardRef), Version>,
    /// Per shard, its log files, oldest first (a replica that starts from a state starts a new
    /// one, as the service does).
    files: BTreeMap<ShardRef, Vec<LogFile>>,
}

/// One simulated log file: its records in order, each with its version.
#[derive(Debug, Default)]
struct LogFile {
    records: Vec<(Version, Record)>,
    /// Records from this index on fail their checksum.
    corrupt_at: Option<usize>,
}

#[derive(Debug, Clone)]
enum Record {
    /// The state the replica started from.
    State(Log),
    /// A delivered message.
    Entry(NodeId, u64),
}

/// The simulated group (see the module documentation).
#[derive(Debug)]
pub struct GroupSim {
    config: GroupConfig,
    layout: Rc<dyn LayoutFn>,
    members: BTreeMap<NodeId, Member>,
    queue: BTreeMap<(Time, u64), Ev>,
    scheduled: u64,
    now: Time,
    steps: u64,
    net_rng: SimRng,
    work_rng: SimRng,
    crash_rng: SimRng,
    disk_rng: SimRng,
    /// Power loss and bit flips on disks.
    loss_rng: SimRng,
    /// Directed links blocked, with the number of plans blocking each.
    blocked: BTreeMap<(NodeId, NodeId), u32>,
    last_arrival: BTreeMap<(NodeId, NodeId), Time>,
    /// Links whose connection for a view broke (a push of that view was dropped).
    broken: BTreeSet<(NodeId, NodeId, ViewId)>,
    fired: BTreeSet<usize>,
    events: Vec<Event>,
    trace: Trace,
    /// A restart leader's offers, while it collects them.
    offers: BTreeMap<NodeId, BTreeMap<NodeId, Offer>>,
}

fn address(node: NodeId) -> String {
    format!("sim:{}", node.0)
}

impl GroupSim {
    /// Builds the group: every starting member in view 0, the plan scheduled.
    ///
    /// # Panics
    ///
    /// If the configuration is refused by the protocol (a test's mistake).
    pub fn new(config: GroupConfig) -> Self {
        let mut root = SimRng::new(config.seed);
        let (net_rng, work_rng, crash_rng) = (root.fork(), root.fork(), root.fork());
        // Forked after the others: seeds without persistence (or without restarts) replay as
        // before.
        let disk_rng = root.fork();
        let loss_rng = root.fork();
        let layout: Rc<dyn LayoutFn> = if let Some(l) = &config.layout {
            l.clone()
        } else if config.shards <= 1 {
            Rc::new(OneShard { mode: config.mode, min_members: config.min_members })
        } else {
            Rc::new(RoundRobinShards { shards: config.shards, mode: config.mode, min_per_shard: config.min_members })
        };
        let ids: Vec<NodeId> = (0..config.members).map(NodeId).collect();
        let shards = layout.layout(&ids).unwrap_or_default();
        let view = View { id: ViewId(0), members: ids.clone(), shards };
        let addresses: BTreeMap<NodeId, String> = ids.iter().map(|&n| (n, address(n))).collect();
        let mut sim = Self {
            layout,
            members: BTreeMap::new(),
            queue: BTreeMap::new(),
            scheduled: 0,
            now: Time(0),
            steps: 0,
            net_rng,
            work_rng,
            crash_rng,
            disk_rng,
            loss_rng,
            blocked: BTreeMap::new(),
            last_arrival: BTreeMap::new(),
            broken: BTreeSet::new(),
            fired: BTreeSet::new(),
            events: Vec::new(),
            trace: Trace::new(config.record_trace),
            offers: BTreeMap::new(),
            config,
        };
        let len = Node::<HeapMemory>::table_len(&view, &sim.config.limits);
        for &id in &ids {
            let node = Node::with_membership(
                id,
                view.clone(),
                addresses.clone(),
                &sim.config.limits,
                HeapMemory::new(len),
                sim.config.membership.clone(),
                sim.layout.clone(),
                Time(0),
            )
            .expect("the simulated configuration is valid");
            let stream = Stream { total: sim.config.messages_per_sender, ..Stream::default() };
            sim.members.insert(id, Member::new(Some(node), None, stream));
            sim.record(id, MemberEvent::Installed(view.clone()));
            if sim.config.messages_per_sender > 0 {
                let at = Time(sim.work_rng.range(sim.config.interval_ns.clone()));
                sim.schedule(at, Ev::SendDue { node: id });
            }
        }
        for i in 0..sim.config.plan.len() {
            let at = match &sim.config.plan[i] {
                Plan::Crash { at, .. }
                | Plan::Partition { at, .. }
                | Plan::OneWay { at, .. }
                | Plan::Join { at, .. }
                | Plan::Leave { at, .. }
                | Plan::Slow { at, .. }
                | Plan::Report { at, .. }
                | Plan::Restart { at, .. }
                | Plan::Corrupt { at, .. }
                | Plan::PowerCut { at, .. } => Some(*at),
                Plan::CrashOnStep { .. } | Plan::SyncFails { .. } => None,
            };
            if let Some(at) = at {
                sim.schedule(at, Ev::Plan(i));
            }
        }
        sim.trace.record(format_args!("start seed={} members={}", sim.config.seed, sim.config.members));
        for &id in &ids {
            sim.activate(id, None);
        }
        sim
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.queue.insert((at.max(self.now), self.scheduled), ev);
        self.scheduled += 1;
    }

    fn record(&mut self, node: NodeId, what: MemberEvent) {
        let installed = matches!(what, MemberEvent::Installed(_));
        self.events.push(Event { at: self.now, step: self.steps, node, what });
        if installed {
            self.maybe_save(node);
        }
    }

    /// As the service does, a member saves its view once every state it received for its
    /// shards is durable (and it awaits none); restarts read the last view saved.
    fn maybe_save(&mut self, id: NodeId) {
        let Some(m) = self.members.get_mut(&id) else { return };
        let Some(node) = m.node.as_ref() else { return };
        let view = node.view();
        // An inadequate view (no shards) is not saved (as the service does): a restart judges
        // each shard by the last view that had it.
        if view.shards.is_empty() || view.shards.iter().any(|s| node.awaiting_state(s.id)) {
            return;
        }
        let pending = m.disk.files.iter().any(|(shard, files)| {
            files
                .last()
                .and_then(|f| f.records.first())
                .is_some_and(|(v, r)| matches!(r, Record::State(_)) && m.disk.durable.get(shard).is_none_or(|d| d < v))
        });
        if !pending && m.saved.as_ref().is_none_or(|s| s.id != view.id) {
            m.saved = Some(view.clone());
            m.proposals.retain(|(id, _)| *id > view.id);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Every member event so far, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The recorded events, for tests of the checkers: forge an event (a different view, a
    /// swapped delivery) and check that a checker notices. Never used by a simulation.
    pub fn events_mut(&mut self) -> &mut Vec<Event> {
        &mut self.events
    }

    /// Every member that ever existed.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// A member's node, once it has one.
    pub fn node(&self, id: NodeId) -> Option<&Node<HeapMemory>> {
        self.members.get(&id)?.node.as_ref()
    }

    /// Whether the member is alive and has not stopped.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.alive && m.node.as_ref().is_some_and(|n| n.stopped().is_none()))
    }

    /// Whether the member crashed (planned).
    pub fn crashed(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| !m.alive)
    }

    /// A member's application log of a shard: the state it would hand a new member.
    pub fn log(&self, id: NodeId, shard: ShardRef) -> &[(NodeId, u64)] {
        self.members.get(&id).and_then(|m| m.log.get(&shard)).map_or(&[], Vec::as_slice)
    }

    /// Workload messages a member has not had accepted yet.
    pub fn unsent(&self, id: NodeId) -> u64 {
        self.members.get(&id).map_or(0, |m| m.stream.total - m.stream.next_seq)
    }

    /// Virtual time now.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Steps run.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// A failure report at the current step.
    pub fn failure(&self, message: String) -> Failure {
        Failure {
            seed: self.config.seed,
            step: self.steps,
            time: self.now,
            message,
            trace_tail: self.trace.tail().map(str::to_string).collect(),
        }
    }

    /// Runs until the end time or step limit, calling `check` after every step.
    ///
    /// # Errors
    ///
    /// The first message `check` returns.
    pub fn run(&mut self, mut check: impl FnMut(&GroupSim) -> Result<(), String>) -> Result<(), Failure> {
        check(self).map_err(|m| self.failure(m))?;
        while self.steps < self.config.max_steps {
            let Some((&(at, _), _)) = self.queue.first_key_value() else { break };
            if at > self.config.end {
                break;
            }
            self.step();
            check(self).map_err(|m| self.failure(m))?;
        }
        self.trace.record(format_args!("end steps={} t={}", self.steps, self.now.0));
        Ok(())
    }

    fn step(&mut self) {
        let Some(((at, _), ev)) = self.queue.pop_first() else { return };
        self.now = at;
        self.steps += 1;
        match ev {
            Ev::Arrive { from, to, view, offset, bytes } => self.arrive(from, to, view, offset, bytes),
            Ev::Ctrl { from, to, msg } => self.control(from, to, msg),
            Ev::Tick { node } => {
                let m = self.members.get_mut(&node).expect("a member");
                if m.tick_at == Some(at) {
                    m.tick_at = None;
                    self.activate(node, Some(Input::Tick));
                }
            }
            Ev::SendDue { node } => {
                if let Some(m) = self.members.get_mut(&node) {
                    m.stream.blocked = true;
                }
                self.activate(node, None);
            }
            Ev::Plan(i) => self.plan(i),
            Ev::Heal(i) => self.heal(i),
            Ev::Wake { node } => {
                let m = self.members.get_mut(&node).expect("a member");
                if m.wake_at == Some(at) {
                    m.wake_at = None;
                    let inputs = std::mem::take(&mut m.deferred);
                    self.run_member(node, inputs);
                }
            }
            Ev::SyncDone { node } => self.sync_done(node),
            Ev::OfferRetry { node } => {
                let m = self.members.get(&node).expect("a member");
                if m.alive && m.node.is_none() {
                    self.send_offer(node);
                }
            }
            Ev::JoinRetry { node } => {
                let m = self.members.get(&node).expect("a member");
                // (A member restarting from its disk offers itself to its leader instead.)
                if m.alive && m.node.is_none() && !m.resuming {
                    // The contact may be dead: try the next member known to exist.
                    let last = m.contact.expect("a joiner has a contact");
                    let ids: Vec<NodeId> = self.members.keys().copied().filter(|&n| n != node).collect();
                    let via = ids.iter().copied().find(|&n| n > last).unwrap_or(ids[0]);
                    self.members.get_mut(&node).expect("a member").contact = Some(via);
                    self.trace.record(format_args!("t={} join-retry n{} via n{}", at.0, node.0, via.0));
                    self.send_ctrl(node, via, Ctrl::Join { node, address: address(node) });
                    let retry = self.now.plus_ns(self.config.membership.suspect_after_ns * 2);
                    self.schedule(retry, Ev::JoinRetry { node });
                }
            }
        }
    }

    fn links_of(&self, i: usize) -> Vec<(NodeId, NodeId)> {
        match &self.config.plan[i] {
            Plan::Partition { side, .. } => {
                let others: Vec<NodeId> = self.members.keys().copied().filter(|n| !side.contains(n)).collect();
                let mut v = Vec::new();
                for &a in side {
                    for &b in &others {
                        v.push((a, b));
                        v.push((b, a));
                    }
                }
                v
            }
            Plan::OneWay { from, to, .. } => vec![(*from, *to)],
            _ => Vec::new(),
        }
    }

    fn plan(&mut self, i: usize) {
        let now = self.now;
        match self.config.plan[i].clone() {
            Plan::Crash { node, .. } => self.crash(node, false),
            Plan::PowerCut { node, .. } => self.crash(node, true),
            Plan::Partition { heal, .. } | Plan::OneWay { heal, .. } => {
                for l in self.links_of(i) {
                    *self.blocked.entry(l).or_default() += 1;
                }
                self.trace.record(format_args!("t={} partition #{i}", now.0));
                if let Some(h) = heal {
                    self.schedule(h, Ev::Heal(i));
                }
            }
            Plan::Join { node, via, .. } => {
                self.trace.record(format_args!("t={} join n{} via n{}", now.0, node.0, via.0));
                self.members.insert(node, Member::new(None, Some(via), Stream { done: true, ..Stream::default() }));
                self.send_ctrl(node, via, Ctrl::Join { node, address: address(node) });
                let retry = now.plus_ns(self.config.membership.suspect_after_ns * 2);
                self.schedule(retry, Ev::JoinRetry { node });
            }
            Plan::Leave { node, .. } => self.activate(node, Some(Input::Leave)),
            Plan::Report { by, node, .. } => self.activate(by, Some(Input::ReportFailure(node))),
            Plan::Slow { node, tick_ns, until, .. } => {
                self.trace.record(format_args!("t={} slow n{} every {tick_ns}ns", now.0, node.0));
                if let Some(m) = self.members.get_mut(&node) {
                    m.slow = Some((tick_ns.max(1), until));
                }
            }
            Plan::Restart { node, leader, .. } => self.restart(node, leader),
            Plan::Corrupt { node, .. } => self.corrupt(node),
            Plan::CrashOnStep { .. } | Plan::SyncFails { .. } => {}
        }
    }

    /// Starts a sync round at `id` if persistence is simulated, none is under way and something
    /// is not durable yet.
    fn maybe_sync(&mut self, id: NodeId) {
        let Some(range) = self.config.sync_ns.clone() else { return };
        let m = self.members.get_mut(&id).expect("a member");
        if !m.alive || m.disk.in_flight.is_some() || m.disk.appended == m.disk.durable {
            return;
        }
        m.disk.in_flight = Some(m.disk.appended.clone());
        let at = self.now.plus_ns(self.disk_rng.range(range));
        self.schedule(at, Ev::SyncDone { node: id });
    }

    /// A sync round ends: its versions are durable and reported, or the planned failure stops
    /// the member.
    fn sync_done(&mut self, id: NodeId) {
        let now = self.now;
        // The first sync at or after the planned time fails, once (a member restarted later
        // has its disk back).
        let planned = self.config.plan.iter().enumerate().find(|(i, p)| {
            matches!(p, Plan::SyncFails { node, at } if *node == id && *at <= now) && !self.fired.contains(i)
        });
        let fails = planned.map(|(i, _)| i);
        let m = self.members.get_mut(&id).expect("a member");
        let Some(covered) = m.disk.in_flight.take() else { return };
        if !m.alive {
            return;
        }
        if let Some(i) = fails {
            self.fired.insert(i);
            self.trace.record(format_args!("t={} sync fails n{}", now.0, id.0));
            self.record(id, MemberEvent::StorageFailed);
            self.crash(id, false);
            return;
        }
        let mut reported = Vec::new();
        if let Some(node) = m.node.as_mut() {
            for (shard, version) in covered {
                m.disk.durable.insert(shard, version);
                node.report_persisted(shard, version);
                reported.push((shard, version));
            }
        }
        for (shard, version) in reported {
            self.trace.record(format_args!("t={} durable n{} {shard} {version}", now.0, id.0));
            self.record(id, MemberEvent::Persisted { shard, version });
        }
        self.maybe_save(id);
        self.activate(id, None);
        self.maybe_sync(id);
    }

    /// Records growth of `id`'s global persistence frontiers.
    fn observe_global(&mut self, id: NodeId) {
        if self.config.sync_ns.is_none() {
            return;
        }
        let m = self.members.get_mut(&id).expect("a member");
        let Some(node) = m.node.as_ref() else { return };
        let view = node.view().id;
        let mut grown = Vec::new();
        for s in &node.view().shards {
            if let Some(v) = node.persisted_everywhere(s.id)
                && m.disk.global_seen.get(&(view, s.id)).is_none_or(|&seen| seen < v)
            {
                m.disk.global_seen.insert((view, s.id), v);
                grown.push((s.id, v));
            }
        }
        for (shard, version) in grown {
            self.record(id, MemberEvent::GlobalPersisted { view, shard, version });
        }
    }

    fn heal(&mut self, i: usize) {
        for l in self.links_of(i) {
            if let Some(c) = self.blocked.get_mut(&l) {
                *c -= 1;
                if *c == 0 {
                    self.blocked.remove(&l);
                }
            }
        }
        self.trace.record(format_args!("t={} heal #{i}", self.now.0));
    }

    /// `torn`: the first unsynced record lost stays on disk, failing its checksum.
    fn crash(&mut self, node: NodeId, torn: bool) {
        let Some(m) = self.members.get_mut(&node) else { return };
        if !m.alive {
            return;
        }
        m.alive = false;
        // What was written but not synced may or may not be on the disk: a seeded prefix of
        // it is, the last record perhaps torn (recovery cuts a torn record).
        for (shard, files) in &mut m.disk.files {
            let durable = m.disk.durable.get(shard).copied();
            for f in files.iter_mut() {
                let synced = f.records.iter().take_while(|(v, _)| durable.is_some_and(|d| *v <= d)).count();
                let kept = synced + self.loss_rng.below((f.records.len() - synced) as u64 + 1) as usize;
                if torn && kept < f.records.len() {
                    f.records.truncate(kept + 1);
                    f.corrupt_at = Some(f.corrupt_at.map_or(kept, |c| c.min(kept)));
                } else {
                    f.records.truncate(kept);
                }
            }
        }
        m.disk.in_flight = None;
        // A disk failure planned before the crash that no sync met is over: a restarted member
        // has its disk back.
        let now = self.now;
        for (i, p) in self.config.plan.iter().enumerate() {
            if matches!(p, Plan::SyncFails { node: n, at } if *n == node && *at <= now) {
                self.fired.insert(i);
            }
        }
        self.trace.record(format_args!("t={} crash n{}", self.now.0, node.0));
        self.record(node, MemberEvent::Crashed);
    }

    /// A bit flip in one record of the newest non-empty log of one of `id`'s shards.
    fn corrupt(&mut self, id: NodeId) {
        let Some(m) = self.members.get_mut(&id) else { return };
        let candidates: Vec<ShardRef> = m
            .disk
            .files
            .iter()
            .filter(|(_, files)| files.iter().any(|f| !f.records.is_empty()))
            .map(|(s, _)| *s)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let shard = candidates[self.loss_rng.below(candidates.len() as u64) as usize];
        let f = m.disk.files.get_mut(&shard).and_then(|fs| fs.iter_mut().rev().find(|f| !f.records.is_empty()));
        let f = f.expect("a non-empty log");
        let at = self.loss_rng.below(f.records.len() as u64) as usize;
        f.corrupt_at = Some(f.corrupt_at.map_or(at, |c| c.min(at)));
        self.trace.record(format_args!("t={} corrupt n{} {shard} record {at}", self.now.0, id.0));
    }

    /// Restarts a crashed member from its disk (PROTOCOLS §4.1): each shard's newest log that
    /// holds a valid record becomes its log, and it offers them to `leader`.
    fn restart(&mut self, id: NodeId, leader: NodeId) {
        let Some(m) = self.members.get_mut(&id) else { return };
        if m.alive || self.config.sync_ns.is_none() {
            return;
        }
        if m.saved.is_none() {
            // It never saved a view (a joiner whose first state was not durable): as the
            // service does without a saved view, it starts afresh, offering only the views it
            // acknowledged (saved on its disk); a restart leader counts it as back, holding no
            // log.
            let proposals = std::mem::take(&mut m.proposals);
            *m = Member::new(None, Some(leader), Stream { done: true, ..Stream::default() });
            m.proposals = proposals;
            m.resuming = true;
            self.trace.record(format_args!("t={} restart n{} without a saved view", self.now.0, id.0));
            self.record(id, MemberEvent::Restarted { logs: BTreeMap::new(), corrupted: false });
            self.send_offer(id);
            return;
        }
        let mut logs = BTreeMap::new();
        let mut corrupted = false;
        let mut damaged = BTreeSet::new();
        let mut recovered = BTreeMap::new();
        for (shard, files) in &mut m.disk.files {
            for f in files.iter_mut() {
                if let Some(c) = f.corrupt_at.take()
                    && c < f.records.len()
                {
                    // A record failing its checksum: recovery knows its log is damaged.
                    corrupted = true;
                    damaged.insert(*shard);
                    f.records.truncate(c);
                }
            }
            files.retain(|f| !f.records.is_empty());
            let Some(f) = files.last() else { continue };
            let mut log = Vec::new();
            for (_, r) in &f.records {
                match r {
                    Record::State(l) => log = l.to_vec(),
                    Record::Entry(sender, seq) => log.push((*sender, *seq)),
                }
            }
            let last = f.records.last().expect("non-empty").0;
            logs.insert(*shard, last);
            recovered.insert(*shard, log);
        }
        m.alive = true;
        m.node = None;
        m.tick_at = None;
        m.future.clear();
        m.future_state.clear();
        m.contact = Some(leader);
        m.log = recovered;
        // What it had not sent died with it.
        m.stream.done = true;
        m.stream.total = m.stream.next_seq;
        m.slow = None;
        m.deferred.clear();
        m.wake_at = None;
        m.resuming = true;
        m.disk.appended = logs.clone();
        m.disk.durable = logs.clone();
        m.disk.global_seen.clear();
        m.damaged = damaged;
        self.trace.record(format_args!("t={} restart n{} leader n{} logs {logs:?}", self.now.0, id.0, leader.0));
        self.record(id, MemberEvent::Restarted { logs, corrupted });
        if id == leader {
            let offer = self.offer_of(id);
            self.offers.insert(id, BTreeMap::from([(id, offer)]));
            self.try_restart(id);
        } else {
            self.send_offer(id);
        }
    }

    /// Sends a restarting member's offer to its restart leader, again later if no view comes.
    /// What a restarting member offers: its saved view, the last version of each log (all
    /// recovered logs are durable), its damaged shards and the views it acknowledged since.
    fn offer_of(&self, id: NodeId) -> Offer {
        let m = &self.members[&id];
        match m.saved.clone() {
            None => Offer::without_saved_view(m.proposals.clone()),
            Some(saved) => {
                let proposed = m.proposals.iter().filter(|(id, _)| *id > saved.id).cloned().collect();
                let logs = m.disk.durable.clone();
                Offer { saved, logs, damaged: m.damaged.clone(), proposed, newest_file: ViewId(0) }
            }
        }
    }

    fn send_offer(&mut self, id: NodeId) {
        let leader = self.members[&id].contact.expect("a restarting member has a leader");
        let offer = self.offer_of(id);
        self.send_ctrl(id, leader, Ctrl::Offer { node: id, offer });
        let retry = self.now.plus_ns(self.config.membership.suspect_after_ns * 2);
        self.schedule(retry, Ev::OfferRetry { node: id });
    }

    /// The restart leader installs the restart view once its offers make a quorum.
    fn try_restart(&mut self, leader: NodeId) {
        let Some(offers) = self.offers.get(&leader) else { return };
        let plan = match restart::plan(leader, offers, &*self.layout) {
            Ok(p) => p,
            Err(waiting) => {
                self.trace.record(format_args!("t={} restart n{} waits: {waiting}", self.now.0, leader.0));
                return;
            }
        };
        self.offers.remove(&leader);
        self.trace.record(format_args!(
            "t={} restart-view n{} v{} members {:?}",
            self.now.0,
            leader.0,
            plan.view.id.0,
            plan.view.members.iter().map(|n| n.0).collect::<Vec<_>>()
        ));
        let next = NextView {
            addresses: plan.view.members.iter().map(|&m| (m, address(m))).collect(),
            joined: plan.view.members.iter().copied().filter(|&m| m != leader).collect(),
            departed: plan.last.members.iter().copied().filter(|m| !plan.view.members.contains(m)).collect(),
            transfers: plan.transfers,
            inadequate: None,
            view: plan.view,
        };
        for &m in &next.joined {
            self.send_ctrl(leader, m, Ctrl::Welcome(Box::new(next.clone())));
        }
        self.control(leader, leader, Ctrl::Welcome(Box::new(next)));
    }

    /// Records the final state of each shard of a restarted member's first view whose state
    /// is not on its way.
    fn resumed(&mut self, id: NodeId, received: Option<ShardRef>) {
        let m = self.members.get_mut(&id).expect("a member");
        let Some(node) = m.node.as_ref() else { return };
        if !m.resuming {
            return;
        }
        let view = node.view().clone();
        let waiting = |s: ShardRef| node.awaiting_state(s) && received != Some(s);
        let done: Vec<(ShardRef, Log)> = view
            .shards
            .iter()
            .filter(|s| s.members.contains(&id) && !waiting(s.id))
            .map(|s| (s.id, m.log.get(&s.id).cloned().unwrap_or_default().into()))
            .collect();
        if view.shards.iter().filter(|s| s.members.contains(&id)).all(|s| !waiting(s.id)) {
            m.resuming = false;
        }
        let judged: Vec<ShardRef> = self
            .events
            .iter()
            .rev()
            .take_while(|e| !(e.node == id && matches!(e.what, MemberEvent::Restarted { .. })))
            .filter_map(|e| match &e.what {
                MemberEvent::Resumed { shard, .. } if e.node == id => Some(*shard),
                _ => None,
            })
            .collect();
        for (shard, log) in done {
            if !judged.contains(&shard) {
                self.record(id, MemberEvent::Resumed { view: view.id, shard, log });
            }
        }
    }

    fn link_open(&self, from: NodeId, to: NodeId) -> bool {
        !self.blocked.contains_key(&(from, to))
    }

    fn arrival_time(&mut self, from: NodeId, to: NodeId) -> Time {
        let latency = self.net_rng.range(self.config.latency_ns.clone());
        let last = self.last_arrival.entry((from, to)).or_default();
        let at = self.now.plus_ns(latency).max(*last);
        *last = at;
        at
    }

    fn send_ctrl(&mut self, from: NodeId, to: NodeId, msg: Ctrl) {
        if !self.link_open(from, to) {
            return;
        }
        let at = self.arrival_time(from, to);
        self.schedule(at, Ev::Ctrl { from, to, msg });
    }

    fn arrive(&mut self, from: NodeId, to: NodeId, view: ViewId, offset: usize, bytes: Rc<[u8]>) {
        if !self.push_passes(from, to, view) {
            return;
        }
        let Some(m) = self.members.get_mut(&to) else { return };
        if !m.alive {
            return;
        }
        let current = m.node.as_ref().map(|n| n.view().id);
        match current {
            Some(v) if v == view => {
                if self.apply(to, from, offset, &bytes) {
                    self.activate(to, None);
                }
            }
            Some(v) => {
                if v < view {
                    m.future.push((view, from, offset, bytes));
                }
                // The sender is alive, in another view: what a driver learns from any frame.
                self.activate(to, Some(Input::PeerAlive(from)));
            }
            None => m.future.push((view, from, offset, bytes)),
        }
    }

    /// Applies a push to `to`'s table; false if it was refused.
    fn apply(&mut self, to: NodeId, from: NodeId, offset: usize, bytes: &[u8]) -> bool {
        let node = self.members.get_mut(&to).and_then(|m| m.node.as_mut()).expect("a node");
        let Some(row) = node.row_range(from) else { return false };
        let range = offset..offset + bytes.len();
        if range.start < row.start || range.end > row.end {
            let what = format!("push from n{} to {range:?} outside its row {row:?}", from.0);
            self.record(to, MemberEvent::Fault(what));
            return false;
        }
        node.memory_mut().apply(offset, bytes);
        true
    }

    fn control(&mut self, from: NodeId, to: NodeId, msg: Ctrl) {
        if !self.link_open(from, to) || !self.members.get(&to).is_some_and(|m| m.alive) {
            return;
        }
        let now = self.now;
        match msg {
            Ctrl::Join { node, address } => {
                self.trace.record(format_args!("t={} join-request n{} at n{}", now.0, node.0, to.0));
                self.activate(to, Some(Input::Join { node, address }));
            }
            Ctrl::Refused(refusal) => {
                self.trace.record(format_args!("t={} refused n{}: {refusal}", now.0, to.0));
                match refusal {
                    JoinRefusal::NotLeader { leader, .. } => {
                        self.members.get_mut(&to).expect("a joiner").contact = Some(leader);
                        self.send_ctrl(to, leader, Ctrl::Join { node: to, address: address(to) });
                    }
                    other => {
                        self.record(to, MemberEvent::JoinRefused(other));
                        self.members.get_mut(&to).expect("a joiner").alive = false;
                    }
                }
            }
            Ctrl::Welcome(next) => {
                let m = self.members.get_mut(&to).expect("a member");
                if m.node.is_some() {
                    return;
                }
                let len = Node::<HeapMemory>::table_len(&next.view, &self.config.limits);
                let node = Node::join(
                    to,
                    &next,
                    &self.config.limits,
                    HeapMemory::new(len),
                    self.config.membership.clone(),
                    self.layout.clone(),
                    now,
                )
                .expect("a valid view");
                m.node = Some(node);
                self.trace.record(format_args!("t={} welcome n{} view {}", now.0, to.0, next.view.id.0));
                self.record(to, MemberEvent::Installed(next.view.clone()));
                self.resumed(to, None);
                self.apply_future(to);
                self.activate(to, None);
            }
            Ctrl::Offer { node, offer } => {
                let view = self.members[&to].node.as_ref().map(|n| n.view().id);
                if let Some(view) = view {
                    // The group runs again: a late member joins it, its logs superseded; a
                    // group not past its saved view is refused, as the driver does (it keeps
                    // asking, and is never let in).
                    if view > offer.saved.id {
                        self.activate(to, Some(Input::Join { node, address: address(node) }));
                    }
                } else if let Some(offers) = self.offers.get_mut(&to) {
                    offers.insert(node, offer);
                    self.try_restart(to);
                }
            }
            Ctrl::State { view, shard, log } => {
                let m = self.members.get_mut(&to).expect("a member");
                let Some(node) = &m.node else {
                    m.future_state.push((view, shard, log));
                    return;
                };
                if node.stopped().is_some() || node.view().id > view {
                    return;
                }
                if node.view().id < view {
                    // Sent as soon as the sender installed; this member has not yet.
                    m.future_state.push((view, shard, log));
                    return;
                }
                if !node.awaiting_state(shard) {
                    return; // a second source's copy
                }
                m.log.insert(shard, log.to_vec());
                if self.config.sync_ns.is_some() {
                    // As the service does: the state is the first record of a new log, durable
                    // at once (everything before this view's first message).
                    let before = Version::from_u64(Version::new(view, 0).as_u64().saturating_sub(1));
                    m.disk.appended.insert(shard, before);
                    let file = LogFile { records: vec![(before, Record::State(log.clone()))], corrupt_at: None };
                    m.disk.files.entry(shard).or_default().push(file);
                }
                self.record(to, MemberEvent::StateReceived { shard, len: log.len() });
                self.resumed(to, Some(shard));
                self.activate(to, Some(Input::StateReceived(shard)));
            }
        }
    }

    /// Applies the buffered pushes for the view `id` now runs; drops older ones.
    fn apply_future(&mut self, id: NodeId) {
        let m = self.members.get_mut(&id).expect("a member");
        let view = m.node.as_ref().expect("a node").view().id;
        let future = std::mem::take(&mut m.future);
        let mut keep = Vec::new();
        for (v, from, offset, bytes) in future {
            if v == view {
                self.apply(id, from, offset, &bytes);
            } else if v > view {
                keep.push((v, from, offset, bytes));
            }
        }
        let m = self.members.get_mut(&id).expect("a member");
        m.future = keep;
        let states = std::mem::take(&mut m.future_state);
        for (v, shard, log) in states {
            if v >= view {
                self.control(id, id, Ctrl::State { view: v, shard, log });
            }
        }
    }

    /// Runs a member: the input, sends, deliveries, outputs (installing a next view at once).
    fn activate(&mut self, id: NodeId, input: Option<Input>) {
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else { return };
        if !m.alive || m.node.as_ref().is_none_or(|n| n.stopped().is_some()) {
            return;
        }
        if let Some((tick, until)) = m.slow {
            if until.is_none_or(|u| now < u) {
                m.deferred.push(input.unwrap_or(Input::RowsChanged));
                if m.wake_at.is_none() {
                    let at = Time((now.0 / tick + 1) * tick);
                    m.wake_at = Some(at);
                    self.schedule(at, Ev::Wake { node: id });
                }
                return;
            }
            m.slow = None;
        }
        self.run_member(id, vec![input.unwrap_or(Input::RowsChanged)]);
    }

    /// Runs a member on its inputs: each handled, then sends, deliveries and outputs.
    fn run_member(&mut self, id: NodeId, inputs: Vec<Input>) {
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else { return };
        if !m.alive || m.node.as_ref().is_none_or(|n| n.stopped().is_some()) {
            return;
        }
        for input in inputs {
            m.node.as_mut().expect("a node").handle(now, input);
        }
        let mut crash = false;
        let mut pending: Vec<(NodeId, Ev)> = Vec::new();
        for _round in 0..64 {
            self.try_send(id);
            self.deliver(id);
            let progressed = self.drain(id, &mut crash, &mut pending);
            if !progressed {
                break;
            }
        }
        if crash {
            // Each peer gets a seeded prefix of what this activation pushed, then nothing.
            let mut per_peer: BTreeMap<NodeId, Vec<Ev>> = BTreeMap::new();
            for (to, ev) in pending {
                per_peer.entry(to).or_default().push(ev);
            }
            for (to, evs) in per_peer {
                let keep = self.crash_rng.below(evs.len() as u64 + 1) as usize;
                self.trace.record(format_args!("t={} crash-prefix n{}>n{} {keep}/{}", now.0, id.0, to.0, evs.len()));
                for ev in evs.into_iter().take(keep) {
                    self.schedule_event(ev);
                }
            }
            self.crash(id, false);
            return;
        }
        for (_, ev) in pending {
            self.schedule_event(ev);
        }
        self.observe_global(id);
        self.maybe_sync(id);
        let m = self.members.get_mut(&id).expect("a member");
        if let Some(t) = m.node.as_ref().and_then(Node::poll_timeout)
            && m.tick_at.is_none_or(|cur| t < cur)
        {
            m.tick_at = Some(t);
            self.schedule(t, Ev::Tick { node: id });
        }
    }

    /// Whether a push of `view` passes the link now. A transport connection delivers in order or
    /// fails: once a link dropped a push of a view, it carries nothing more of that view (the
    /// connection is broken); a later view's connection works again once the link heals.
    fn push_passes(&mut self, from: NodeId, to: NodeId, view: ViewId) -> bool {
        if self.broken.contains(&(from, to, view)) {
            return false;
        }
        if !self.link_open(from, to) {
            self.broken.insert((from, to, view));
            return false;
        }
        true
    }

    fn schedule_event(&mut self, ev: Ev) {
        match &ev {
            Ev::Arrive { from, to, view, .. } => {
                if !self.push_passes(*from, *to, *view) {
                    return;
                }
                let at = self.arrival_time(*from, *to);
                self.schedule(at, ev);
            }
            Ev::Ctrl { from, to, .. } => {
                if !self.link_open(*from, *to) {
                    return;
                }
                let at = self.arrival_time(*from, *to);
                self.schedule(at, ev);
            }
            _ => self.schedule(self.now, ev),
        }
    }

    fn try_send(&mut self, id: NodeId) {
        let now = self.now;
        let m = self.members.get_mut(&id).expect("a member");
        let s = &mut m.stream;
        if s.done || !s.blocked {
            return;
        }
        if s.next_seq >= s.total {
            s.done = true;
            return;
        }
        let node = m.node.as_mut().expect("a node");
        let Some(shard) = node.view().shards.iter().find(|s| s.senders.contains(&id)).map(|s| s.id) else { return };
        let len = *s.next_len.get_or_insert_with(|| {
            self.work_rng.range(u64::from(*self.config.payload_len.start())..=u64::from(*self.config.payload_len.end()))
                as usize
        });
        let seq = s.next_seq;
        match node.send(now, shard, len, |buf| payload::encode(buf, id, shard, seq)) {
            Ok(index) => {
                let view = node.view().id;
                s.next_seq += 1;
                s.next_len = None;
                s.blocked = false;
                self.trace.record(format_args!("t={} send n{} v{} #{index} seq={seq}", now.0, id.0, view.0));
                self.record(id, MemberEvent::Sent { view, shard, seq });
                if seq + 1 < self.config.messages_per_sender {
                    let at = now.plus_ns(self.work_rng.range(self.config.interval_ns.clone()));
                    self.schedule(at, Ev::SendDue { node: id });
                }
            }
            Err(SendError::WindowFull(_) | SendError::Wedged(_) | SendError::NotAMember(_)) => {}
            Err(SendError::Stopped(_)) => s.done = true,
            Err(e) => panic!("simulator bug: n{} refused a workload message: {e}", id.0),
        }
    }

    fn deliver(&mut self, id: NodeId) {
        let now = self.now;
        let m = self.members.get_mut(&id).expect("a member");
        let node = m.node.as_mut().expect("a node");
        let view = node.view().id;
        let mut got = Vec::new();
        let mut bad = Vec::new();
        node.deliver(|d| match payload::decode(d.payload) {
            Ok(p) => got.push((d.shard, p.sender, p.seq, d.version, d.sender, d.index)),
            Err(e) => bad.push(format!("bad payload from n{} #{}: {e}", d.sender.0, d.index)),
        });
        for (shard, sender, seq, version, from, index) in got {
            m.log.entry(shard).or_default().push((sender, seq));
            if let Some(v) = version
                && self.config.sync_ns.is_some()
            {
                m.disk.appended.insert(shard, v);
                let files = m.disk.files.entry(shard).or_default();
                if files.is_empty() {
                    files.push(LogFile::default());
                }
                files.last_mut().expect("a file").records.push((v, Record::Entry(sender, seq)));
            }
            self.trace.record(format_args!(
                "t={} deliver n{} v{} n{}#{} seq={seq} {}",
                now.0,
                id.0,
                view.0,
                from.0,
                index,
                version.map_or_else(|| "-".into(), |v| v.to_string())
            ));
            self.events.push(Event {
                at: now,
                step: self.steps,
                node: id,
                what: MemberEvent::Delivered { view, shard, sender, seq, version },
            });
        }
        for b in bad {
            self.record(id, MemberEvent::Fault(b));
        }
    }

    /// Drains outputs; true if a next view was installed (the member runs again).
    fn drain(&mut self, id: NodeId, crash: &mut bool, pending: &mut Vec<(NodeId, Ev)>) -> bool {
        let now = self.now;
        let mut installed = false;
        loop {
            let m = self.members.get_mut(&id).expect("a member");
            let node = m.node.as_mut().expect("a node");
            let Some(out) = node.poll_output() else { break };
            let view = node.view().id;
            match out {
                Output::Push { range, to } => {
                    let bytes: Rc<[u8]> = node.memory().slice(range.clone()).into();
                    for &peer in to.iter() {
                        pending.push((
                            peer,
                            Ev::Arrive { from: id, to: peer, view, offset: range.start, bytes: bytes.clone() },
                        ));
                    }
                }
                Output::Violation { node: peer, violation } => {
                    self.trace.record(format_args!("t={} violation n{} accuses n{}: {violation}", now.0, id.0, peer.0));
                    self.record(id, MemberEvent::Fault(format!("n{} accuses n{}: {violation}", id.0, peer.0)));
                }
                Output::Step(step) => {
                    self.trace.record(format_args!("t={} step n{} v{} {step:?}", now.0, id.0, view.0));
                    // Saved before the acknowledgement leaves (it is queued after this step).
                    if matches!(step, GmsStep::Proposed(_) | GmsStep::Acked { .. })
                        && let Some(p) = self.members[&id].node.as_ref().and_then(Node::proposed_view)
                    {
                        let m = self.members.get_mut(&id).expect("a member");
                        if !m.proposals.contains(&p) {
                            m.proposals.push(p);
                        }
                    }
                    // The trims a member acts on: those it delivers by.
                    if matches!(step, GmsStep::TrimDelivered)
                        && let Some(trims) = self.members[&id].node.as_ref().and_then(Node::final_trims)
                    {
                        self.record(id, MemberEvent::Final { view, trims });
                    }
                    let kind = StepKind::of(&step);
                    for (i, p) in self.config.plan.iter().enumerate() {
                        if let Plan::CrashOnStep { node, step: k, after } = p
                            && *node == id
                            && *k == kind
                            && now >= *after
                            && !self.fired.contains(&i)
                        {
                            self.fired.insert(i);
                            *crash = true;
                            self.trace.record(format_args!("t={} crash-on-step n{} {kind:?}", now.0, id.0));
                        }
                    }
                }
                Output::NextView(next) => {
                    let len = Node::<HeapMemory>::table_len(&next.view, &self.config.limits);
                    self.trace.record(format_args!(
                        "t={} next-view n{} v{} members {:?}",
                        now.0,
                        id.0,
                        next.view.id.0,
                        next.view.members.iter().map(|n| n.0).collect::<Vec<_>>()
                    ));
                    let m = self.members.get_mut(&id).expect("a member");
                    let node = m.node.as_mut().expect("a node");
                    node.install(now, HeapMemory::new(len)).expect("a next view");
                    if node.stopped().is_some() {
                        continue;
                    }
                    self.record(id, MemberEvent::Installed(next.view.clone()));
                    // Every member of the old view welcomes the joiners (a joiner takes the first
                    // welcome): one dead member does not leave a joiner without its view.
                    {
                        for &j in &next.joined {
                            pending.push((j, Ev::Ctrl { from: id, to: j, msg: Ctrl::Welcome(Box::new(next.clone())) }));
                        }
                    }
                    self.apply_future(id);
                    installed = true;
                }
                Output::Stopped(reason) => {
                    self.trace.record(format_args!("t={} stopped n{}: {reason}", now.0, id.0));
                    self.record(id, MemberEvent::Stopped(reason));
                }
                Output::JoinRefused { node, refusal } => {
                    pending.push((node, Ev::Ctrl { from: id, to: node, msg: Ctrl::Refused(refusal) }));
                }
                Output::SendState { shard, to } => {
                    let log: Rc<[(NodeId, u64)]> =
                        self.members[&id].log.get(&shard).cloned().unwrap_or_default().into();
                    for t in to {
                        let msg = Ctrl::State { view, shard, log: log.clone() };
                        pending.push((t, Ev::Ctrl { from: id, to: t, msg }));
                    }
                }
                Output::ResendFailed { shard, count } => self.record(id, MemberEvent::ResendFailed { shard, count }),
            }
        }
        installed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views_of(sim: &GroupSim, id: NodeId) -> Vec<Vec<u32>> {
        sim.events()
            .iter()
            .filter(|e| e.node == id)
            .filter_map(|e| match &e.what {
                MemberEvent::Installed(v) => Some(v.members.iter().map(|n| n.0).collect()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_quiet_group_delivers_everything_and_keeps_its_view() {
        let mut sim = GroupSim::new(GroupConfig::new(1, 3, 20));
        sim.run(|_| Ok(())).unwrap();
        let shard = sim.node(NodeId(0)).unwrap().view().shards[0].id;
        for id in sim.ids() {
            assert_eq!(sim.log(id, shard).len(), 60, "n{}", id.0);
            assert_eq!(views_of(&sim, id).len(), 1, "no view change without a fault");
            assert_eq!(sim.log(id, shard), sim.log(NodeId(0), shard));
        }
    }

    #[test]
    fn survivors_of_a_crash_install_the_next_view_and_continue() {
        let mut config = GroupConfig::new(2, 3, 40);
        config.plan = vec![Plan::Crash { node: NodeId(2), at: Time(3_000_000) }];
        config.record_trace = true;
        let mut sim = GroupSim::new(config);
        sim.run(|_| Ok(())).unwrap();
        let shard = sim.node(NodeId(0)).unwrap().view().shards[0].id;
        for id in [NodeId(0), NodeId(1)] {
            assert_eq!(
                views_of(&sim, id),
                vec![vec![0, 1, 2], vec![0, 1]],
                "n{}\n{}",
                id.0,
                sim.trace().lines().unwrap().join("\n")
            );
            assert_eq!(sim.unsent(id), 0);
        }
        assert_eq!(sim.log(NodeId(0), shard), sim.log(NodeId(1), shard));
        let from = |id: u32| sim.log(NodeId(0), shard).iter().filter(|(s, _)| s.0 == id).count();
        assert_eq!((from(0), from(1)), (40, 40));
    }
}
