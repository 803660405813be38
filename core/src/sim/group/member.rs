//! One simulated member's activation: its inputs handled, its workload sent, its deliveries
//! logged, then every command of its [`Member`] executed on the simulated network and disk and
//! every event told to its tiny application (what the driver's runner does for real).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::disk::{Disk, decode_log, encode_log};
use super::{Ev, Event, GroupSim, MemberEvent, Plan, StepKind, Stream, Traffic, address, node_at};
use crate::protocol::member::{Command, EnterError, Event as MemberOut, Input, Member};
use crate::protocol::{HeapMemory, Node, NodeId, SendError, ShardRef, SstMemory, Time, ViewId};

use crate::sim::payload;

/// A simulated member: its sans-IO state, its transports as the network sees them, its
/// application's logs, its workload and its disk.
#[derive(Debug)]
pub(super) struct SimMember {
    pub(super) member: Member<HeapMemory>,
    pub(super) alive: bool,
    pub(super) tick_at: Option<Time>,
    /// Views whose transport is connected (the current one, and those lingering).
    pub(super) open: BTreeSet<ViewId>,
    /// Traffic for views not connected yet: (view, from, traffic).
    pub(super) parked: Vec<(ViewId, NodeId, Traffic)>,
    /// Peers heard on each open view since its last beat.
    pub(super) heard: BTreeMap<ViewId, BTreeSet<NodeId>>,
    /// The application: per shard, the log of `(sender, workload seq)` delivered.
    pub(super) log: BTreeMap<ShardRef, Vec<(NodeId, u64)>>,
    pub(super) stream: Stream,
    /// Slow: its period and until when.
    pub(super) slow: Option<(u64, Option<Time>)>,
    /// Inputs waiting for a slow member's next tick.
    pub(super) deferred: Vec<Input<HeapMemory>>,
    pub(super) wake_at: Option<Time>,
    pub(super) disk: Disk,
    /// Restarted from its disk and not yet in a view: the shards whose state is to be judged
    /// final ([`MemberEvent::Resumed`]) in its first view.
    pub(super) resuming: bool,
    /// Restarted from its disk: its first view since (the states it sends in it come from its
    /// logs).
    pub(super) first_view_back: Option<ViewId>,
}

impl SimMember {
    pub(super) fn new(member: Member<HeapMemory>, stream: Stream) -> Self {
        Self {
            member,
            alive: true,
            tick_at: None,
            open: BTreeSet::new(),
            parked: Vec::new(),
            heard: BTreeMap::new(),
            log: BTreeMap::new(),
            stream,
            slow: None,
            deferred: Vec::new(),
            wake_at: None,
            disk: Disk::default(),
            resuming: false,
            first_view_back: None,
        }
    }
}

impl GroupSim {
    /// Runs a member on `input` (or just its rules), unless it is slow: then the input waits
    /// for its next tick.
    pub(super) fn activate(&mut self, id: NodeId, input: Option<Input<HeapMemory>>) {
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else { return };
        if !m.alive {
            return;
        }
        if let Some((tick, until)) = m.slow {
            if until.is_none_or(|u| now < u) {
                m.deferred.push(input.unwrap_or(Input::Tick));
                if m.wake_at.is_none() {
                    let at = Time((now.0 / tick + 1) * tick);
                    m.wake_at = Some(at);
                    self.schedule(at, Ev::Wake { node: id });
                }
                return;
            }
            m.slow = None;
        }
        self.run_member(id, vec![input.unwrap_or(Input::Tick)]);
    }

    /// Runs a member on its inputs: each handled, then sends, deliveries, commands and events
    /// until nothing more comes out.
    pub(super) fn run_member(&mut self, id: NodeId, inputs: Vec<Input<HeapMemory>>) {
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else { return };
        if !m.alive {
            return;
        }
        let ticked = inputs.iter().any(|i| matches!(i, Input::Tick));
        for input in inputs {
            m.member.handle(now, input);
        }
        // A member's timers move forward when they fire (else it would tick forever).
        if ticked && m.member.poll_timeout().is_some_and(|t| t <= now) {
            let what = format!("its next timeout {:?} is not after the tick at {now:?}", m.member.poll_timeout());
            self.record(id, MemberEvent::Fault(what));
        }
        self.open_current(id);
        let mut crash = false;
        let mut pending: Vec<(NodeId, Ev)> = Vec::new();
        for _round in 0..64 {
            self.try_send(id);
            self.deliver(id);
            let again = self.drain(id, &mut crash, &mut pending);
            self.open_current(id);
            if !again {
                break;
            }
        }
        if crash {
            // Each peer gets a seeded prefix of what this activation sent, then nothing.
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
        // A deadline already past is due now (the tick is recorded at the time it fires).
        if let Some(t) = m.member.poll_timeout().map(|t| t.max(now))
            && m.tick_at.is_none_or(|cur| t < cur)
        {
            m.tick_at = Some(t);
            self.schedule(t, Ev::Tick { node: id });
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
        let Some(view) = m.member.view() else { return };
        let Some(shard) = view.shards.iter().find(|s| s.senders.contains(&id)).map(|s| s.id) else { return };
        let len = *s.next_len.get_or_insert_with(|| {
            self.work_rng.range(u64::from(*self.config.payload_len.start())..=u64::from(*self.config.payload_len.end()))
                as usize
        });
        let seq = s.next_seq;
        match m.member.send(now, shard, len, |buf| payload::encode(buf, id, shard, seq)) {
            Ok(index) => {
                let view = m.member.view().expect("a view").id;
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
        let persist = self.config.sync_ns.is_some();
        let m = self.members.get_mut(&id).expect("a member");
        let Some(view) = m.member.view().map(|v| v.id) else { return };
        let mut got = Vec::new();
        let mut bad = Vec::new();
        m.member.deliver(|d| match payload::decode(d.payload) {
            Ok(p) => got.push((d.shard, p.sender, p.seq, d.version, d.sender, d.index)),
            Err(e) => bad.push(format!("bad payload from n{} #{}: {e}", d.sender.0, d.index)),
        });
        for (shard, sender, seq, version, from, index) in got {
            m.log.entry(shard).or_default().push((sender, seq));
            if let Some(v) = version
                && persist
            {
                m.disk.append(shard, v, sender, seq);
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

    /// Runs the member's commands and tells its events; true if it should run again (answers
    /// were fed back).
    fn drain(&mut self, id: NodeId, crash: &mut bool, pending: &mut Vec<(NodeId, Ev)>) -> bool {
        let mut again = false;
        loop {
            let m = self.members.get_mut(&id).expect("a member");
            let Some(c) = m.member.poll_command() else { break };
            again |= self.command(id, c, pending);
        }
        loop {
            let m = self.members.get_mut(&id).expect("a member");
            let Some(e) = m.member.poll_event() else { break };
            again |= self.event(id, e, crash);
        }
        again
    }

    /// Executes one command; true if an answer was fed back.
    fn command(&mut self, id: NodeId, c: Command, pending: &mut Vec<(NodeId, Ev)>) -> bool {
        let now = self.now;
        match c {
            Command::Push { range, to } => {
                let m = &self.members[&id];
                let node = m.member.node().expect("a push comes from a node");
                let view = node.view().id;
                let bytes: Rc<[u8]> = node.memory().slice(range.clone()).into();
                for &peer in to.iter() {
                    let traffic = Traffic::Push { offset: range.start, bytes: bytes.clone() };
                    pending.push((peer, Ev::Arrive { from: id, to: peer, view, traffic }));
                }
            }
            Command::SendFrames { view, to, frames } => {
                for peer in to {
                    for f in &frames {
                        let traffic = Traffic::Frame(f.clone());
                        pending.push((peer, Ev::Arrive { from: id, to: peer, view, traffic }));
                    }
                }
            }
            Command::SendControl { to, message, report } => match node_at(&to) {
                Some(peer) => pending.push((peer, Ev::Ctrl { from: id, to: peer, bytes: message, report })),
                None => {
                    if report {
                        self.schedule(now, Ev::CtrlReport { node: id, to, sent: false });
                    }
                }
            },
            Command::Connect { next } => {
                let latency = self.net_rng.range(self.config.latency_ns.clone());
                self.schedule(now.plus_ns(latency), Ev::Connected { node: id, view: next.view.id });
            }
            Command::Beat { view, to, frame } => {
                for peer in to {
                    let traffic = Traffic::Frame(frame.clone());
                    pending.push((peer, Ev::Arrive { from: id, to: peer, view, traffic }));
                }
                let m = self.members.get_mut(&id).expect("a member");
                let peers: Vec<NodeId> =
                    m.heard.get_mut(&view).map(std::mem::take).unwrap_or_default().into_iter().collect();
                if !peers.is_empty() {
                    m.member.handle(now, Input::HeardOnOldView { view, peers });
                    return true;
                }
            }
            Command::CloseView { view, .. } => {
                let m = self.members.get_mut(&id).expect("a member");
                m.open.remove(&view);
                m.heard.remove(&view);
            }
            Command::SaveProposal { view, members } => {
                // On the disk a small sync later (a file replaced atomically); the
                // acknowledgement waits for it.
                let m = self.members.get_mut(&id).expect("a member");
                m.disk.saving.push((view, members.clone()));
                let at = now.plus_ns(self.disk_rng.range(10_000..=500_000));
                self.schedule(at, Ev::Saved { node: id, view, members });
            }
            Command::SaveView { view, addresses } => {
                let m = self.members.get_mut(&id).expect("a member");
                m.disk.save_view(view, addresses);
            }
        }
        false
    }

    /// Tells one event to the application; true if an answer was fed back.
    fn event(&mut self, id: NodeId, e: MemberOut, crash: &mut bool) -> bool {
        let now = self.now;
        match e {
            MemberOut::Step(step) => {
                let view = self.members[&id].member.view().map_or(ViewId(0), |v| v.id);
                self.trace.record(format_args!("t={} step n{} v{} {step:?}", now.0, id.0, view.0));
                // The trims a member acts on: those it delivers by.
                if matches!(step, crate::protocol::GmsStep::TrimDelivered)
                    && let Some(trims) = self.members[&id].member.node().and_then(Node::final_trims)
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
                false
            }
            MemberOut::Installed(change) => {
                self.trace.record(format_args!(
                    "t={} installed n{} v{} members {:?}",
                    now.0,
                    id.0,
                    change.view.id.0,
                    change.view.members.iter().map(|n| n.0).collect::<Vec<_>>()
                ));
                self.record(id, MemberEvent::Installed(change.view.clone()));
                let m = self.members.get_mut(&id).expect("a member");
                if m.resuming && m.first_view_back.is_none() {
                    m.first_view_back = Some(change.view.id);
                }
                self.resumed(id, None);
                false
            }
            MemberOut::TakeSnapshot { view, shard } => {
                self.trace.record(format_args!("t={} snapshot n{} v{} {shard}", now.0, id.0, view.0));
                let m = self.members.get_mut(&id).expect("a member");
                if m.first_view_back == Some(view) {
                    // A member back from its disk sends the state of a shard from its log: the
                    // shard resumes from it.
                    let log: super::Log = m.log.get(&shard).cloned().unwrap_or_default().into();
                    self.record(id, MemberEvent::Resumed { view, shard, log });
                }
                let m = self.members.get_mut(&id).expect("a member");
                let state = encode_log(m.log.get(&shard).map_or(&[][..], Vec::as_slice));
                m.member.handle(now, Input::SnapshotTaken { view, shard, state: Some(state) });
                true
            }
            MemberOut::Restore { view, shard, from, state } => {
                let log: Rc<[(NodeId, u64)]> = match decode_log(&state) {
                    Ok(l) => l.into(),
                    Err(e) => {
                        self.record(
                            id,
                            MemberEvent::Fault(format!("a state from n{} that does not decode: {e}", from.0)),
                        );
                        let m = self.members.get_mut(&id).expect("a member");
                        let reason = e.to_string();
                        m.member.handle(now, Input::StateRefused { view, shard, from, reason });
                        return true;
                    }
                };
                let persist = self.config.sync_ns.is_some();
                let m = self.members.get_mut(&id).expect("a member");
                m.log.insert(shard, log.to_vec());
                if persist {
                    m.disk.start_from_state(shard, view, log.clone());
                }
                self.trace.record(format_args!(
                    "t={} restore n{} {shard} from n{} len {}",
                    now.0,
                    id.0,
                    from.0,
                    log.len()
                ));
                self.record(id, MemberEvent::StateReceived { shard, len: log.len() });
                self.resumed(id, Some(shard));
                let m = self.members.get_mut(&id).expect("a member");
                m.member.handle(now, Input::StateRestored { view, shard });
                true
            }
            MemberOut::StateRejected { shard, from, reason } => {
                self.record(id, MemberEvent::Fault(format!("a state of {shard} from n{} rejected: {reason}", from.0)));
                false
            }
            MemberOut::StateNotSent { shard, reason } => {
                self.record(id, MemberEvent::Fault(format!("the state of {shard} not sent: {reason}")));
                false
            }
            MemberOut::Violation { peer, what } => {
                self.trace.record(format_args!("t={} violation n{} accuses n{}: {what}", now.0, id.0, peer.0));
                self.record(id, MemberEvent::Fault(format!("n{} accuses n{}: {what}", id.0, peer.0)));
                false
            }
            MemberOut::ResendFailed { shard, count } => {
                self.record(id, MemberEvent::ResendFailed { shard, count });
                false
            }
            MemberOut::Waiting(what) => {
                self.trace.record(format_args!("t={} waiting n{}: {what}", now.0, id.0));
                false
            }
            MemberOut::EnterFailed(e) => {
                self.trace.record(format_args!("t={} enter-failed n{}: {e}", now.0, id.0));
                match e {
                    EnterError::Refused(r) => self.record(id, MemberEvent::JoinRefused(r)),
                    other => self.record(id, MemberEvent::EnterFailed(other.to_string())),
                }
                false
            }
            MemberOut::Stopped(reason) => {
                self.trace.record(format_args!("t={} stopped n{}: {reason}", now.0, id.0));
                self.record(id, MemberEvent::Stopped(reason));
                false
            }
        }
    }

    /// Traffic of `view` from `from` reaches `to`.
    pub(super) fn arrive(&mut self, from: NodeId, to: NodeId, view: ViewId, traffic: Traffic) {
        if !self.traffic_passes(from, to, view) {
            return;
        }
        let now = self.now;
        let Some(m) = self.members.get_mut(&to) else { return };
        if !m.alive {
            return;
        }
        if !m.open.contains(&view) {
            // Not connected yet: the listener parks it. Connected once and closed: dropped.
            let newest = m.open.last().copied();
            if newest.is_none_or(|n| view > n) {
                m.parked.push((view, from, traffic));
            }
            return;
        }
        m.heard.entry(view).or_default().insert(from);
        let current = m.member.view().map(|v| v.id);
        match traffic {
            Traffic::Push { offset, bytes } => {
                // On a lingering view (its table gone) a push only shows the peer is alive.
                if current == Some(view) && self.apply(to, from, offset, &bytes) {
                    self.activate(to, None);
                }
            }
            Traffic::Frame(bytes) => {
                let m = self.members.get_mut(&to).expect("a member");
                m.member.handle_frame(now, view, from, &bytes);
                self.activate(to, None);
            }
        }
    }

    /// Applies a push to `to`'s table; false if it was refused.
    fn apply(&mut self, to: NodeId, from: NodeId, offset: usize, bytes: &[u8]) -> bool {
        let node = self.members.get_mut(&to).and_then(|m| m.member.node_mut()).expect("a node");
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

    /// A control message reaches `to`'s listener.
    pub(super) fn control(&mut self, from: NodeId, to: NodeId, bytes: &[u8], report: bool) {
        let alive = self.link_open(from, to) && self.members.get(&to).is_some_and(|m| m.alive);
        if report {
            let at = self.arrival_time(to, from);
            self.schedule(at, Ev::CtrlReport { node: from, to: address(to), sent: alive });
        }
        if !alive {
            return;
        }
        let now = self.now;
        let m = self.members.get_mut(&to).expect("a member");
        if let Some(other) = m.member.handle_control(now, from, bytes) {
            self.record(to, MemberEvent::Fault(format!("a control message the simulator never sends: {other:?}")));
        }
        self.activate(to, None);
    }

    /// `id`'s transport of `view` is connected: its member installs (or enters) the view when
    /// it next runs, and the traffic parked for the view arrives then ([`GroupSim::open_current`]).
    pub(super) fn connected(&mut self, id: NodeId, view: ViewId) {
        let limits = self.config.limits.clone();
        let Some(m) = self.members.get_mut(&id) else { return };
        if !m.alive {
            return;
        }
        let Some(len) = m.member.connecting(view).map(|n| Node::<HeapMemory>::table_len(&n.view, &limits)) else {
            return;
        };
        self.activate(id, Some(Input::Connected { view, memory: HeapMemory::new(len) }));
    }

    /// Once a member is in a view whose traffic it has not taken yet, the view's transport is
    /// open: what was parked for it arrives, in order (older parked traffic is dropped, as a
    /// listener drops connections of views its member skipped).
    fn open_current(&mut self, id: NodeId) {
        let now = self.now;
        let m = self.members.get_mut(&id).expect("a member");
        let Some(view) = m.member.view().map(|v| v.id) else { return };
        if !m.open.insert(view) {
            return;
        }
        let parked = std::mem::take(&mut m.parked);
        let mut arrived = false;
        for (v, from, traffic) in parked {
            if v > view {
                m.parked.push((v, from, traffic));
                continue;
            }
            if v < view {
                continue;
            }
            m.heard.entry(v).or_default().insert(from);
            arrived = true;
            match traffic {
                Traffic::Push { offset, bytes } => {
                    let node = m.member.node_mut().expect("a node");
                    match node.row_range(from) {
                        Some(row) if offset >= row.start && offset + bytes.len() <= row.end => {
                            node.memory_mut().apply(offset, &bytes);
                        }
                        row => {
                            let (len, table) = (bytes.len(), node.memory().len());
                            let what = format!(
                                "a parked push of view {} from n{} to {offset}+{len} outside its row {row:?} (table {table})",
                                v.0, from.0
                            );
                            self.events.push(Event {
                                at: now,
                                step: self.steps,
                                node: id,
                                what: MemberEvent::Fault(what),
                            });
                        }
                    }
                }
                Traffic::Frame(bytes) => m.member.handle_frame(now, v, from, &bytes),
            }
        }
        if arrived {
            m.member.handle(now, Input::Tick);
        }
    }

    /// `id`'s proposal of `view` is on its disk: its acknowledgement may go into its row.
    pub(super) fn saved(&mut self, id: NodeId, view: ViewId, members: Vec<NodeId>) {
        let Some(m) = self.members.get_mut(&id) else { return };
        if !m.alive {
            return;
        }
        m.disk.proposal_saved(view, &members);
        self.activate(id, Some(Input::ProposalSaved { view, members }));
    }
}
