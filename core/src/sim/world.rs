//! The simulated group: N protocol nodes in one thread, a virtual clock, an event queue, FIFO
//! links with seeded latency, slow members, cut links and a seeded workload.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use crate::protocol::{
    HeapMemory, Input, Node, NodeId, Output, Progress, RowViolation, SendError, ShardLayout, ShardRef, SstMemory, Time,
    Version, View, ViewId,
};

use super::config::{Active, ConfigError, Members, Senders, SimConfig, node_id, shard_id};
use super::payload;
use super::rng::SimRng;
use super::trace::Trace;

/// One message delivered at one member, as the application saw it (payload copied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Virtual time of the delivery.
    pub at: Time,
    /// The simulation step that delivered it.
    pub step: u64,
    /// The shard.
    pub shard: ShardRef,
    /// The sender the protocol named.
    pub sender: NodeId,
    /// The sender's message index the protocol named.
    pub index: u64,
    /// The version the protocol assigned (ordered shards).
    pub version: Option<Version>,
    /// The sender's timestamp.
    pub timestamp: Time,
    /// The payload bytes delivered.
    pub payload: Vec<u8>,
}

/// A message the protocol accepted from the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    /// When `send` accepted it.
    pub at: Time,
    /// The index `send` returned.
    pub index: u64,
    /// The workload's sequence number (written in the payload).
    pub seq: u64,
    /// Payload length.
    pub len: usize,
    /// The payload's checksum.
    pub checksum: u32,
}

/// One active sender in one shard: what it must send and what it sent.
#[derive(Clone, Debug)]
pub struct SendStream {
    node: NodeId,
    rank: usize,
    shard: ShardRef,
    total: u64,
    sent: Vec<SentMessage>,
    /// The send timer fired and no message has been tried since.
    due: bool,
    /// The last try met a full window: retry at every activation of the node.
    blocked: bool,
    /// The length of the next message, drawn once so that a retried message is the same one.
    next_len: Option<usize>,
    window_full: u64,
}

impl SendStream {
    /// The sender.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The shard.
    pub fn shard(&self) -> ShardRef {
        self.shard
    }

    /// Messages the workload sends in total.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Messages accepted so far, in order (`sent()[seq]` is workload message `seq`).
    pub fn sent(&self) -> &[SentMessage] {
        &self.sent
    }

    /// Messages not sent yet.
    pub fn unsent(&self) -> u64 {
        self.total - self.sent.len() as u64
    }

    /// Whether the last try met a full window and nothing was accepted since.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// How many times the sender became blocked on a full window (refusals while already
    /// blocked are not counted).
    pub fn window_full(&self) -> u64 {
        self.window_full
    }
}

/// Something a node did that breaks the protocol or the transport contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The node reported that a peer's row broke the protocol (`Output::Violation`); in the
    /// simulator every peer is honest, so this is a protocol bug.
    Violation {
        /// The peer accused.
        peer: NodeId,
        /// What it is accused of.
        violation: RowViolation,
    },
    /// A push that does not lie inside the sender's own row (refused, not applied).
    PushOutsideRow {
        /// The sender.
        from: NodeId,
        /// The table range it pushed.
        range: Range<usize>,
    },
    /// A push addressed to a node that is not a member, or to the sender itself.
    PushToNonPeer {
        /// The sender.
        from: NodeId,
        /// The addressee.
        to: NodeId,
    },
}

/// A fault observed at one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// When.
    pub at: Time,
    /// The step.
    pub step: u64,
    /// Where it was observed.
    pub node: NodeId,
    /// What.
    pub kind: FaultKind,
}

/// What happened so far, for the checkers.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Per member (by rank), every delivery in order.
    pub deliveries: Vec<Vec<Delivery>>,
    /// Every fault observed, in order.
    pub faults: Vec<Fault>,
}

/// Counts of what the simulation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pushes issued (one per `Output::Push`, whatever the number of peers).
    pub pushes: u64,
    /// Pushes applied at a peer.
    pub arrivals: u64,
    /// Pushes dropped by a cut link.
    pub dropped: u64,
    /// Messages accepted by `send`.
    pub sends: u64,
    /// Times a sender met a full window.
    pub window_full: u64,
    /// Messages delivered (summed over members).
    pub deliveries: u64,
    /// Activations of slow members at their ticks.
    pub wakes: u64,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Nothing left to happen: every event was processed.
    Quiesced,
    /// `max_steps` events were processed and more were queued.
    StepLimit,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Why it stopped.
    pub end: End,
    /// Events processed.
    pub steps: u64,
    /// Virtual time of the last event.
    pub time: Time,
    /// Workload messages never accepted by `send`.
    pub unsent: u64,
}

/// A check failed during a run.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The configuration's seed.
    pub seed: u64,
    /// The step after which the check failed.
    pub step: u64,
    /// Virtual time then.
    pub time: Time,
    /// What the check said.
    pub message: String,
    /// The last trace lines.
    pub trace_tail: Vec<String>,
}

impl Failure {
    /// A failure of the run of `seed` after `step`, at `time`, with the tail of `trace`.
    pub fn at(seed: u64, step: u64, time: Time, message: String, trace: &Trace) -> Self {
        Self { seed, step, time, message, trace_tail: trace.tail().map(str::to_string).collect() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed after step {} at t={}ns: {}", self.seed, self.step, self.time.0, self.message)?;
        writeln!(f, "last {} trace lines:", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Event {
    /// A push lands at `to`.
    Arrive { from: usize, to: usize, offset: usize, bytes: Rc<[u8]> },
    /// A sender's timer: try its next message.
    SendDue { stream: usize },
    /// A slow member's tick.
    Wake { node: usize },
}

#[derive(Clone, Debug, Default)]
struct Link {
    /// The latest arrival time scheduled on the link: a later push never arrives earlier (FIFO).
    last_arrival: Time,
    cut_at: Option<Time>,
}

#[derive(Clone, Debug, Default)]
struct NodeRun {
    tick_ns: Option<u64>,
    extra_latency_ns: u64,
    wake_at: Option<Time>,
    streams: Vec<usize>,
}

/// The deterministic simulator of a static group (TESTING.md tier T1).
///
/// Each step takes the earliest event (ties broken by the order they were scheduled) and runs
/// it: a push landing at a member (validated against the sender's row, applied to the member's
/// table, then the member's rules, sends, deliveries and outputs), a sender's timer, or a slow
/// member's tick.
///
/// # Examples
///
/// ```
/// use derecho::protocol::DeliveryMode;
/// use derecho::sim::{End, Sim, SimConfig};
///
/// let mut sim = Sim::new(SimConfig::new(42, 3, DeliveryMode::Ordered, 5))?;
/// let outcome = sim.run(|_| Ok(())).expect("no check to fail");
/// assert_eq!(outcome.end, End::Quiesced);
/// for &id in sim.node_ids() {
///     assert_eq!(sim.deliveries(id).len(), 15);
/// }
/// # Ok::<(), derecho::sim::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    view: View,
    ids: Vec<NodeId>,
    nodes: Vec<Node<HeapMemory>>,
    runs: Vec<NodeRun>,
    /// `from * n + to`.
    links: Vec<Link>,
    queue: BTreeMap<(Time, u64), Event>,
    scheduled: u64,
    now: Time,
    steps: u64,
    net_rng: SimRng,
    work_rng: SimRng,
    streams: Vec<SendStream>,
    history: History,
    stats: Stats,
    trace: Trace,
}

impl Sim {
    /// Builds the group described by `config`, with the first message of every sender scheduled.
    ///
    /// # Errors
    ///
    /// The configuration is invalid, or the protocol refuses the view or limits it yields.
    pub fn new(config: SimConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut root = SimRng::new(config.seed);
        let mut layout_rng = root.fork();
        let net_rng = root.fork();
        let work_rng = root.fork();
        let n = config.members as usize;
        let ids: Vec<NodeId> = (0..config.members).map(node_id).collect();

        let mut shards = Vec::with_capacity(config.shards.len());
        let mut active = Vec::with_capacity(config.shards.len());
        for (i, spec) in config.shards.iter().enumerate() {
            let members: Vec<NodeId> = match &spec.members {
                Members::All => ids.clone(),
                Members::Ranks(r) => r.iter().map(|&r| ids[r as usize]).collect(),
            };
            let positions = match &spec.senders {
                Senders::All => (0..members.len()).collect(),
                Senders::Half => layout_rng.choose(members.len(), members.len().div_ceil(2)),
                Senders::One => layout_rng.choose(members.len(), 1),
                Senders::Positions(p) => p.clone(),
            };
            let senders: Vec<NodeId> = positions.iter().map(|&p| members[p]).collect();
            active.push(match spec.active {
                Active::All => senders.clone(),
                Active::One => vec![senders[layout_rng.below(senders.len() as u64) as usize]],
            });
            shards.push(ShardLayout { id: shard_id(i), members, senders, mode: spec.mode });
        }
        let view = View { id: ViewId(1), members: ids.clone(), shards };
        let table_len = Node::<HeapMemory>::table_len(&view, &config.limits);
        let nodes = ids
            .iter()
            .map(|&id| Node::new(id, view.clone(), &config.limits, HeapMemory::new(table_len)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError { field: "shards", reason: format!("the protocol refuses the view: {e}") })?;

        let mut runs = vec![NodeRun::default(); n];
        for s in &config.slow_nodes {
            let run = &mut runs[s.rank as usize];
            run.tick_ns = s.tick_ns;
            run.extra_latency_ns = s.extra_latency_ns;
        }
        let mut links = vec![Link::default(); n * n];
        for c in &config.cuts {
            let link = &mut links[c.from as usize * n + c.to as usize];
            link.cut_at = Some(link.cut_at.map_or(c.at, |t| t.min(c.at)));
        }
        let trace = Trace::new(config.record_trace);
        let mut sim = Self {
            view,
            ids,
            nodes,
            runs,
            links,
            queue: BTreeMap::new(),
            scheduled: 0,
            now: Time(0),
            steps: 0,
            net_rng,
            work_rng,
            streams: Vec::new(),
            history: History { deliveries: vec![Vec::new(); n], faults: Vec::new() },
            stats: Stats::default(),
            trace,
            config,
        };
        let total = sim.config.workload.messages_per_sender;
        for (i, senders) in active.iter().enumerate() {
            for &node in senders {
                let rank = sim.rank(node);
                let stream = sim.streams.len();
                sim.streams.push(SendStream {
                    node,
                    rank,
                    shard: shard_id(i),
                    total,
                    sent: Vec::new(),
                    due: false,
                    blocked: false,
                    next_len: None,
                    window_full: 0,
                });
                sim.runs[rank].streams.push(stream);
                if total > 0 {
                    let at = Time(sim.work_rng.range(sim.config.workload.interval_ns.clone()));
                    sim.schedule(at, Event::SendDue { stream });
                }
            }
        }
        let describe: Vec<String> = sim
            .view
            .shards
            .iter()
            .map(|s| {
                let ids = |v: &[NodeId]| v.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(",");
                format!("{:?} members [{}] senders [{}]", s.mode, ids(&s.members), ids(&s.senders))
            })
            .collect();
        sim.trace.record(format_args!("start seed={} {}", sim.config.seed, describe.join("; ")));
        Ok(sim)
    }

    fn schedule(&mut self, at: Time, event: Event) {
        assert!(at >= self.now, "an event scheduled in the past: {} < {}", at.0, self.now.0);
        self.queue.insert((at, self.scheduled), event);
        self.scheduled += 1;
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The (static) view every member runs.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The members, in rank order.
    pub fn node_ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The rank of a member.
    ///
    /// # Panics
    ///
    /// If `node` is not a member.
    pub fn rank(&self, node: NodeId) -> usize {
        self.view.rank_of(node).unwrap_or_else(|| panic!("{node} is not a member of the simulated group"))
    }

    /// A member's protocol state.
    pub fn node(&self, node: NodeId) -> &Node<HeapMemory> {
        &self.nodes[self.rank(node)]
    }

    /// Virtual time now.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Events processed.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether no event is queued (the run is over).
    pub fn is_quiet(&self) -> bool {
        self.queue.is_empty()
    }

    /// A member's deliveries, in order.
    pub fn deliveries(&self, node: NodeId) -> &[Delivery] {
        &self.history.deliveries[self.rank(node)]
    }

    /// The workload's senders.
    pub fn streams(&self) -> &[SendStream] {
        &self.streams
    }

    /// The stream of `node` in `shard`, if it is an active sender there.
    pub fn stream(&self, node: NodeId, shard: ShardRef) -> Option<&SendStream> {
        self.streams.iter().find(|s| s.node == node && s.shard == shard)
    }

    /// Faults observed.
    pub fn faults(&self) -> &[Fault] {
        &self.history.faults
    }

    /// Deliveries and faults.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The recorded history, for tests of the checkers: forge a history (swap, drop, duplicate
    /// or corrupt a delivery) and check that a checker notices. Never used by a simulation.
    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    /// Counts of what happened.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Workload messages not yet accepted by `send`.
    pub fn unsent(&self) -> u64 {
        self.streams.iter().map(SendStream::unsent).sum()
    }

    /// How the run stands now.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            end: if self.queue.is_empty() { End::Quiesced } else { End::StepLimit },
            steps: self.steps,
            time: self.now,
            unsent: self.unsent(),
        }
    }

    /// Runs events until none is left or `max_steps` were run, calling `check` once before the
    /// first step and after every step.
    ///
    /// # Errors
    ///
    /// The first message `check` returns, with the step, time and last trace lines.
    pub fn run(&mut self, mut check: impl FnMut(&Sim) -> Result<(), String>) -> Result<Outcome, Failure> {
        check(self).map_err(|m| self.failure(m))?;
        while self.steps < self.config.max_steps {
            if !self.step() {
                break;
            }
            check(self).map_err(|m| self.failure(m))?;
        }
        let outcome = self.outcome();
        self.trace.record(format_args!(
            "end {:?} steps={} t={} unsent={}",
            outcome.end, outcome.steps, outcome.time.0, outcome.unsent
        ));
        Ok(outcome)
    }

    /// A failure report for `message` at the current step.
    pub fn failure(&self, message: String) -> Failure {
        Failure::at(self.config.seed, self.steps, self.now, message, &self.trace)
    }

    /// Runs the earliest event; false when none is left.
    pub fn step(&mut self) -> bool {
        let Some(((at, _), event)) = self.queue.pop_first() else { return false };
        assert!(at >= self.now, "virtual time went backwards from {} to {}", self.now.0, at.0);
        self.now = at;
        self.steps += 1;
        match event {
            Event::Arrive { from, to, offset, bytes } => self.arrive(from, to, offset, &bytes),
            Event::SendDue { stream } => {
                let s = &mut self.streams[stream];
                s.due = true;
                let node = s.rank;
                self.trace.record(format_args!("t={} due n{} {}", at.0, self.ids[node].0, shard_name(s.shard)));
                self.activate(node);
            }
            Event::Wake { node } => {
                self.runs[node].wake_at = None;
                self.stats.wakes += 1;
                self.trace.record(format_args!("t={} wake n{}", at.0, self.ids[node].0));
                self.run_node(node);
            }
        }
        true
    }

    fn arrive(&mut self, from: usize, to: usize, offset: usize, bytes: &[u8]) {
        let (from_id, to_id) = (self.ids[from], self.ids[to]);
        let now = self.now;
        if self.links[from * self.ids.len() + to].cut_at.is_some_and(|c| c <= now) {
            self.stats.dropped += 1;
            self.trace.record(format_args!(
                "t={} drop n{}>n{} {}+{} (cut)",
                now.0,
                from_id.0,
                to_id.0,
                offset,
                bytes.len()
            ));
            return;
        }
        let range = offset..offset + bytes.len();
        let row = self.nodes[to].row_range(from_id).expect("the sender is a member");
        if range.start < row.start || range.end > row.end {
            self.trace
                .record(format_args!("t={} refuse n{}>n{} {range:?} outside row {row:?}", now.0, from_id.0, to_id.0));
            self.history.faults.push(Fault {
                at: now,
                step: self.steps,
                node: to_id,
                kind: FaultKind::PushOutsideRow { from: from_id, range },
            });
            return;
        }
        self.nodes[to].memory_mut().apply(offset, bytes);
        self.stats.arrivals += 1;
        self.trace.record(format_args!("t={} arrive n{}>n{} {}+{}", now.0, from_id.0, to_id.0, offset, bytes.len()));
        self.activate(to);
    }

    /// Something happened at `node`: run it now, or at its next tick if it is slow.
    fn activate(&mut self, node: usize) {
        match self.runs[node].tick_ns {
            None => self.run_node(node),
            Some(tick) => {
                if self.runs[node].wake_at.is_none() {
                    let at = Time(self.now.0.div_ceil(tick) * tick);
                    self.runs[node].wake_at = Some(at);
                    self.schedule(at, Event::Wake { node });
                }
            }
        }
    }

    /// One activation of a member, in the order `Node` documents: rules, sends, deliveries,
    /// outputs. Blocked senders retry at every activation, and again after the member's own
    /// deliveries if they gave its windows room ([`Node::update_progress`], the driver's wake
    /// rule): a member's own delivery may be what opens its window, and no input may follow.
    fn run_node(&mut self, node: usize) {
        self.nodes[node].handle(self.now, Input::RowsChanged);
        // Each round but the last releases something new, so the bound is never reached by a
        // correct protocol; it only turns a bug into a clear panic instead of a hang.
        for round in 0.. {
            assert!(round < 100_000, "n{}: sends and deliveries did not settle in one activation", self.ids[node].0);
            self.try_sends(node);
            let mut before = Progress::default();
            self.nodes[node].update_progress(&mut before);
            self.deliver(node);
            let blocked = self.runs[node].streams.iter().any(|&s| self.streams[s].blocked);
            let mut after = before.clone();
            self.nodes[node].update_progress(&mut after);
            if !blocked || after.released == before.released {
                break;
            }
        }
        self.drain(node);
    }

    fn try_sends(&mut self, node: usize) {
        for k in 0..self.runs[node].streams.len() {
            let stream = self.runs[node].streams[k];
            if self.streams[stream].due || self.streams[stream].blocked {
                self.try_send(stream);
            }
        }
    }

    fn try_send(&mut self, stream: usize) {
        let now = self.now;
        let s = &mut self.streams[stream];
        if s.sent.len() as u64 >= s.total {
            s.due = false;
            s.blocked = false;
            return;
        }
        let work_rng = &mut self.work_rng;
        let len_range = self.config.workload.payload_len.clone();
        let len = *s.next_len.get_or_insert_with(|| {
            work_rng.range(u64::from(*len_range.start())..=u64::from(*len_range.end())) as usize
        });
        let seq = s.sent.len() as u64;
        let (sender, shard) = (s.node, s.shard);
        let mut checksum = 0;
        let result = self.nodes[s.rank].send(now, shard, len, |buf| {
            payload::encode(buf, sender, shard, seq);
            checksum = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes"));
        });
        match result {
            Ok(index) => {
                s.sent.push(SentMessage { at: now, index, seq, len, checksum });
                s.next_len = None;
                s.due = false;
                s.blocked = false;
                self.stats.sends += 1;
                self.trace.record(format_args!(
                    "t={} send n{} {} #{index} seq={seq} len={len}",
                    now.0,
                    sender.0,
                    shard_name(shard)
                ));
                if (s.sent.len() as u64) < s.total {
                    let at = now.plus_ns(self.work_rng.range(self.config.workload.interval_ns.clone()));
                    self.schedule(at, Event::SendDue { stream });
                }
            }
            Err(SendError::WindowFull(_)) => {
                s.due = false;
                if !s.blocked {
                    s.blocked = true;
                    s.window_full += 1;
                    self.stats.window_full += 1;
                    self.trace.record(format_args!("t={} full n{} {} seq={seq}", now.0, sender.0, shard_name(shard)));
                }
            }
            Err(e) => panic!("simulator bug: n{} refused a workload message: {e}", sender.0),
        }
    }

    fn deliver(&mut self, node: usize) {
        let Self { nodes, history, trace, stats, now, steps, ids, .. } = self;
        let (now, step, me) = (*now, *steps, ids[node]);
        let out = &mut history.deliveries[node];
        nodes[node].deliver(|d| {
            trace.record(format_args!(
                "t={} deliver n{} {} n{}#{} {} len={}",
                now.0,
                me.0,
                shard_name(d.shard),
                d.sender.0,
                d.index,
                d.version.map_or_else(|| "-".to_string(), |v| v.to_string()),
                d.payload.len()
            ));
            stats.deliveries += 1;
            out.push(Delivery {
                at: now,
                step,
                shard: d.shard,
                sender: d.sender,
                index: d.index,
                version: d.version,
                timestamp: d.timestamp,
                payload: d.payload.to_vec(),
            });
        });
    }

    /// Drains a member's outputs: each push becomes one arrival per peer, carrying the bytes as
    /// they are now, on a FIFO link with a drawn latency.
    fn drain(&mut self, node: usize) {
        let n = self.ids.len();
        let now = self.now;
        let me = self.ids[node];
        while let Some(output) = self.nodes[node].poll_output() {
            match output {
                Output::Push { range, to } => {
                    self.stats.pushes += 1;
                    let table_len = self.nodes[node].memory().len();
                    if range.start > range.end || range.end > table_len {
                        self.trace.record(format_args!("t={} refuse n{} {range:?} outside the table", now.0, me.0));
                        self.history.faults.push(Fault {
                            at: now,
                            step: self.steps,
                            node: me,
                            kind: FaultKind::PushOutsideRow { from: me, range },
                        });
                        continue;
                    }
                    let bytes: Rc<[u8]> = self.nodes[node].memory().slice(range.clone()).into();
                    let mut line = format!("t={} push n{} {}+{} >", now.0, me.0, range.start, bytes.len());
                    for &peer in to.iter() {
                        let peer_rank = self.view.rank_of(peer).filter(|&r| r != node);
                        let Some(peer_rank) = peer_rank else {
                            self.history.faults.push(Fault {
                                at: now,
                                step: self.steps,
                                node: me,
                                kind: FaultKind::PushToNonPeer { from: me, to: peer },
                            });
                            line.push_str(&format!(" n{}:refused", peer.0));
                            continue;
                        };
                        let link = &mut self.links[node * n + peer_rank];
                        if link.cut_at.is_some_and(|c| c <= now) {
                            self.stats.dropped += 1;
                            line.push_str(&format!(" n{}:cut", peer.0));
                            continue;
                        }
                        let latency = self.net_rng.range(self.config.latency_ns.clone())
                            + self.runs[node].extra_latency_ns
                            + self.runs[peer_rank].extra_latency_ns;
                        let at = now.plus_ns(latency).max(link.last_arrival);
                        link.last_arrival = at;
                        line.push_str(&format!(" n{}@{}", peer.0, at.0));
                        self.schedule(
                            at,
                            Event::Arrive { from: node, to: peer_rank, offset: range.start, bytes: bytes.clone() },
                        );
                    }
                    self.trace.record(format_args!("{line}"));
                }
                Output::Violation { node: peer, violation } => {
                    self.trace.record(format_args!("t={} violation at n{} by n{}: {violation}", now.0, me.0, peer.0));
                    self.history.faults.push(Fault {
                        at: now,
                        step: self.steps,
                        node: me,
                        kind: FaultKind::Violation { peer, violation },
                    });
                }
                other => panic!("simulator bug: a static node produced {other:?}"),
            }
        }
    }
}

fn shard_name(shard: ShardRef) -> String {
    format!("s{}.{}", shard.subgroup.0, shard.shard.0)
}

#[cfg(test)]
mod tests {
    use super::super::config::{Cut, ShardSpec, SlowNode};
    use super::*;
    use crate::protocol::DeliveryMode;

    fn run(config: SimConfig) -> Sim {
        let mut sim = Sim::new(config).unwrap();
        let outcome = sim.run(|_| Ok(())).unwrap();
        assert_eq!(outcome.end, End::Quiesced);
        sim
    }

    #[test]
    fn every_member_delivers_every_message_in_the_same_order() {
        let sim = run(SimConfig::new(1, 3, DeliveryMode::Ordered, 20));
        let first = sim.deliveries(sim.node_ids()[0]).to_vec();
        assert_eq!(first.len(), 60);
        for &id in sim.node_ids() {
            let d = sim.deliveries(id);
            let key = |d: &[Delivery]| d.iter().map(|d| (d.sender, d.index, d.version)).collect::<Vec<_>>();
            assert_eq!(key(d), key(&first), "{id}");
        }
        assert!(sim.faults().is_empty(), "{:?}", sim.faults());
        assert_eq!(sim.unsent(), 0);
    }

    #[test]
    fn pushes_on_a_link_arrive_in_the_order_they_were_issued() {
        // With latencies drawn from a wide range, FIFO must hold anyway: arrivals on each link
        // are in increasing time and, for equal times, scheduled order (the queue's key).
        let mut config = SimConfig::new(9, 3, DeliveryMode::Ordered, 30);
        config.latency_ns = 0..=50_000;
        config.record_trace = true;
        let sim = run(config);
        let lines = sim.trace().lines().unwrap();
        // For each link, the offsets+lengths pushed and the ones that arrived, in order.
        let mut pushed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut arrived: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.get(1) {
                Some(&"push") => {
                    // "t=.. push n11 OFFSET+LEN > n22@T n33@T"
                    assert_eq!(words[4], ">", "{line}");
                    for to in &words[5..] {
                        let peer = to.split('@').next().unwrap();
                        pushed.entry((words[2].to_string(), peer.to_string())).or_default().push(words[3].to_string());
                    }
                }
                Some(&"arrive") => {
                    let (from, to) = words[2].split_once('>').unwrap();
                    arrived.entry((from.to_string(), to.to_string())).or_default().push(words[3].to_string());
                }
                _ => {}
            }
        }
        assert_eq!(pushed.len(), 6, "every directed link carried pushes");
        assert_eq!(pushed, arrived);
    }

    #[test]
    fn a_cut_link_drops_pushes_and_the_shard_stalls() {
        let mut config = SimConfig::new(3, 3, DeliveryMode::Ordered, 30);
        config.cuts = vec![Cut { from: 0, to: 2, at: Time(20_000) }];
        let sim = run(config);
        assert!(sim.stats().dropped > 0);
        assert!(sim.unsent() > 0, "the senders' windows fill once member 2 stops hearing from member 0");
    }

    #[test]
    fn a_slow_member_runs_only_at_its_ticks() {
        let mut config = SimConfig::new(4, 3, DeliveryMode::Ordered, 10);
        config.slow_nodes = vec![SlowNode { rank: 1, tick_ns: Some(40_000), extra_latency_ns: 0 }];
        let sim = run(config);
        let slow = sim.node_ids()[1];
        assert!(sim.stats().wakes > 0);
        for d in sim.deliveries(slow) {
            assert_eq!(d.at.0 % 40_000, 0, "a delivery between ticks: {d:?}");
        }
        assert_eq!(sim.deliveries(slow).len(), 30);
    }

    #[test]
    fn idle_senders_and_layout_choices_follow_the_config() {
        let mut config = SimConfig::new(5, 4, DeliveryMode::Ordered, 8);
        config.shards =
            vec![ShardSpec { senders: Senders::Half, active: Active::One, ..ShardSpec::all(DeliveryMode::Ordered) }];
        let sim = run(config);
        assert_eq!(sim.view().shards[0].senders.len(), 2);
        assert_eq!(sim.streams().len(), 1);
        for &id in sim.node_ids() {
            assert_eq!(sim.deliveries(id).len(), 8);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let a = run(SimConfig::new(77, 3, DeliveryMode::Ordered, 10));
        let b = run(SimConfig::new(77, 3, DeliveryMode::Ordered, 10));
        let c = run(SimConfig::new(78, 3, DeliveryMode::Ordered, 10));
        assert_eq!((a.trace().hash(), a.trace().len()), (b.trace().hash(), b.trace().len()));
        assert_ne!(a.trace().hash(), c.trace().hash());
    }
}
