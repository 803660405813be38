//! The simulated group with membership (PROTOCOLS §3, §4.1): members that crash, restart,
//! join, leave and get partitioned, over a virtual clock and seeded links and disks.
//!
//! Every member runs a [`Member`], the same sans-IO code the driver runs: the simulator only
//! executes its commands (pushes and frames on seeded FIFO links, control messages, connects,
//! saves on simulated disks) and feeds back what happens. It decides nothing a member would:
//! joins, redirects, welcomes, state transfer, the lingering old view, restart offers and the
//! restart plan all come from the member. Its application is tiny: per shard, the log of
//! `(sender, workload seq)` it delivered, which is also the state a new member receives.
//!
//! The network model: a link carries a member's traffic for a view in order, or breaks (a push
//! dropped breaks the view's connection on that link until a later view). Traffic for a view a
//! member has not connected yet waits until it does (as a listener parks connections), traffic
//! for a view it closed is dropped. A crash can be planned at a time or on a named step of the
//! view change ([`GmsStep`](crate::protocol::GmsStep)): the member then dies at the end of that activation, and each peer
//! receives a seeded prefix of what it sent in it, which is how "the leader failed after
//! publishing to some" is simulated.
//!
//! # Layout
//!
//! * this file: the event loop.
//! * `plan`: the plan, the configuration, the events checkers read.
//! * `member`: one member's activation: inputs, sends, deliveries, commands, events.
//! * `disk`: simulated disks: logs, syncs, crashes that lose unsynced writes, bit flips,
//!   restarts from what a disk holds.

mod disk;
mod member;
mod plan;

pub use plan::{Event, GroupConfig, MemberEvent, Plan, StepKind};

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::protocol::member::{Input, Member, MemberConfig};
use crate::protocol::{HeapMemory, LayoutFn, Node, NodeId, OneShard, RoundRobinShards, ShardRef, Time, View, ViewId};

use super::rng::SimRng;
use super::trace::Trace;
use super::world::Failure;
use member::SimMember;

/// A shard's application log, as sent to a new member.
type Log = Rc<[(NodeId, u64)]>;

/// What travels on a view's transport.
#[derive(Clone, Debug)]
enum Traffic {
    /// A push of a range of the sender's row.
    Push { offset: usize, bytes: Rc<[u8]> },
    /// A frame (a piece of a state, an "alive" beat).
    Frame(Rc<Vec<u8>>),
}

#[derive(Clone, Debug)]
enum Ev {
    /// Traffic of `view` from `from` reaches `to`.
    Arrive {
        from: NodeId,
        to: NodeId,
        view: ViewId,
        traffic: Traffic,
    },
    /// A control message reaches `to`'s listener; `report`: its sender hears it was delivered.
    Ctrl {
        from: NodeId,
        to: NodeId,
        bytes: Rc<[u8]>,
        report: bool,
    },
    /// `node` hears whether its control message to `to` was delivered.
    CtrlReport {
        node: NodeId,
        to: String,
        sent: bool,
    },
    /// `node`'s transport of `view` is connected.
    Connected {
        node: NodeId,
        view: ViewId,
    },
    /// `node`'s proposal of `view` with `members` is on its disk.
    Saved {
        node: NodeId,
        view: ViewId,
        members: Vec<NodeId>,
    },
    Tick {
        node: NodeId,
    },
    SendDue {
        node: NodeId,
    },
    Plan(usize),
    Heal(usize),
    Wake {
        node: NodeId,
    },
    SyncDone {
        node: NodeId,
    },
}

#[derive(Debug, Default)]
struct Stream {
    total: u64,
    next_seq: u64,
    blocked: bool,
    next_len: Option<usize>,
    done: bool,
}

/// The simulated group (see the module documentation).
#[derive(Debug)]
pub struct GroupSim {
    config: GroupConfig,
    layout: Rc<dyn LayoutFn>,
    members: BTreeMap<NodeId, SimMember>,
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
    /// Links whose connection for a view broke (traffic of that view was dropped).
    broken: BTreeSet<(NodeId, NodeId, ViewId)>,
    fired: BTreeSet<usize>,
    events: Vec<Event>,
    trace: Trace,
}

/// The address of a simulated member's listener.
fn address(node: NodeId) -> String {
    format!("sim:{}", node.0)
}

/// The member a simulated address names.
fn node_at(address: &str) -> Option<NodeId> {
    address.strip_prefix("sim:")?.parse().ok().map(NodeId)
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
            config,
        };
        // Every starting member enters view 0 together (as members of a static configuration
        // would): its transport is connected at once.
        let next = Rc::new(crate::protocol::NextView {
            addresses: ids.iter().map(|&n| (n, address(n))).collect(),
            joined: Vec::new(),
            departed: Vec::new(),
            transfers: Vec::new(),
            inadequate: None,
            lost: Vec::new(),
            history: Vec::new(),
            view: view.clone(),
        });
        for &id in &ids {
            let stream = Stream { total: sim.config.messages_per_sender, ..Stream::default() };
            let mut m = SimMember::new(Member::new(sim.member_config(id)), stream);
            m.member.enter_view(next.clone());
            sim.members.insert(id, m);
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

    /// The settings of member `id`: the group's, and timeouts long enough that joins and
    /// restarts never give up before the run ends.
    fn member_config(&self, id: NodeId) -> MemberConfig {
        let c = &self.config;
        MemberConfig {
            me: id,
            address: address(id),
            limits: c.limits.clone(),
            membership: c.membership.clone(),
            layout: self.layout.clone(),
            state_len_max: 64 << 20,
            join_timeout_ns: c.end.0,
            restart_timeout_ns: c.end.0,
            retry_ns: 2 * c.membership.suspect_after_ns(),
            connect_timeout_ns: 2 * c.membership.suspect_after_ns(),
            persistent: c.sync_ns.is_some(),
            app: 0,
            allowed: None,
        }
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.queue.insert((at.max(self.now), self.scheduled), ev);
        self.scheduled += 1;
    }

    fn record(&mut self, node: NodeId, what: MemberEvent) {
        self.events.push(Event { at: self.now, step: self.steps, node, what });
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
        self.members.get(&id)?.member.node()
    }

    /// A member's whole sans-IO state.
    pub fn member(&self, id: NodeId) -> Option<&Member<HeapMemory>> {
        self.members.get(&id).map(|m| &m.member)
    }

    /// Whether the member is alive, in a view, and has not stopped.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.alive && m.member.is_running() && m.member.stopped().is_none())
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
        Failure::at(self.config.seed, self.steps, self.now, message, &self.trace)
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
            Ev::Arrive { from, to, view, traffic } => self.arrive(from, to, view, traffic),
            Ev::Ctrl { from, to, bytes, report } => self.control(from, to, &bytes, report),
            Ev::CtrlReport { node, to, sent } => {
                let input = if sent { Input::ControlSent { to } } else { Input::ControlNotSent { to } };
                self.activate(node, Some(input));
            }
            Ev::Connected { node, view } => self.connected(node, view),
            Ev::Saved { node, view, members } => self.saved(node, view, members),
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
                assert!(
                    self.members.get(&node).is_none_or(|m| !m.alive),
                    "a planned join of n{}, a member already alive (one process per id)",
                    node.0
                );
                self.trace.record(format_args!("t={} join n{} via n{}", now.0, node.0, via.0));
                let mut m =
                    SimMember::new(Member::new(self.member_config(node)), Stream { done: true, ..Stream::default() });
                m.member.join(now, address(via));
                self.members.insert(node, m);
                self.activate(node, None);
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

    fn link_open(&self, from: NodeId, to: NodeId) -> bool {
        !self.blocked.contains_key(&(from, to))
    }

    /// Whether traffic of `view` passes the link now. A transport connection delivers in order
    /// or fails: once a link dropped traffic of a view, it carries nothing more of that view
    /// (the connection is broken); a later view's connection works again once the link heals.
    fn traffic_passes(&mut self, from: NodeId, to: NodeId, view: ViewId) -> bool {
        if self.broken.contains(&(from, to, view)) {
            return false;
        }
        if !self.link_open(from, to) {
            self.broken.insert((from, to, view));
            return false;
        }
        true
    }

    fn arrival_time(&mut self, from: NodeId, to: NodeId) -> Time {
        let latency = self.net_rng.range(self.config.latency_ns.clone());
        let last = self.last_arrival.entry((from, to)).or_default();
        let at = self.now.plus_ns(latency).max(*last);
        *last = at;
        at
    }

    /// Puts an event a member's activation produced on the network.
    fn schedule_event(&mut self, ev: Ev) {
        match &ev {
            Ev::Arrive { from, to, view, .. } => {
                if !self.traffic_passes(*from, *to, *view) {
                    return;
                }
                let at = self.arrival_time(*from, *to);
                self.schedule(at, ev);
            }
            Ev::Ctrl { from, to, report, .. } => {
                let (from, to, report) = (*from, *to, *report);
                let reachable = self.link_open(from, to) && self.members.get(&to).is_some_and(|m| m.alive);
                let at = self.arrival_time(from, to);
                if reachable {
                    self.schedule(at, ev);
                } else if report {
                    // The connection is refused, or never answers: the sender hears it failed.
                    self.schedule(at, Ev::CtrlReport { node: from, to: address(to), sent: false });
                }
            }
            _ => self.schedule(self.now, ev),
        }
    }
}
