//! An exhaustive explorer of small membership configurations (TESTING.md tier T2).
//!
//! It enumerates every interleaving of a few members' actions around the sans-IO core: the head
//! of any link (links are FIFO, as PROTOCOLS §1 requires) is delivered, a planned member
//! crashes, a survivor learns of the crash (the transport's failure event), a planned member
//! leaves gracefully, a planned member falsely suspects another that runs on (which is then
//! removed, and stops once it sees so), a joiner's request reaches the leader, a sender sends
//! its next message. Time stands still: heartbeats and timeouts are off, so suspicion comes
//! only from failure events and the planned suspicion, which makes the state space finite. Worlds are cloned at each branch; a world already seen (same tables, node states,
//! links and histories, by a hash of their debug form) is not explored twice.
//!
//! After every action the same properties as the simulator's checkers are judged: one member
//! list per view id, a majority of the predecessor, one trim per (view, shard), prefix-consistent
//! deliveries in a view, identical deliveries of a view at every member that installs the next,
//! no duplicates; and in every final world (nothing left to do): the surviving members share one
//! view, none is wedged, and every message a survivor sent is in every survivor's log.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use derecho::protocol::{
    DeliveryMode, HeapMemory, Input, Limits, MembershipConfig, NextView, Node, NodeId, OneShard, Output, SstMemory,
    Time, View, ViewId,
};

/// What to explore.
#[derive(Clone, Debug)]
pub struct Bound {
    /// Members at start (ids `0..members`).
    pub members: u32,
    /// Messages each listed member sends.
    pub senders: Vec<(NodeId, u64)>,
    /// A member that may crash, at any point.
    pub crash: Option<NodeId>,
    /// A joiner (id) that asks the leader to join, at any point.
    pub join: Option<NodeId>,
    /// A member that leaves gracefully, at any point.
    pub leave: Option<NodeId>,
    /// A member that suspects another, which runs on, at any point: `(suspecter, suspected)`.
    pub suspect: Option<(NodeId, NodeId)>,
    /// Stop after this many distinct worlds (the run then reports itself incomplete).
    pub max_worlds: usize,
}

/// What the exploration found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explored {
    /// Distinct worlds visited.
    pub worlds: usize,
    /// Final worlds (nothing left to do) judged.
    pub finals: usize,
    /// Every world within the bound was visited.
    pub complete: bool,
    /// Views installed somewhere, the largest id seen.
    pub max_view: u32,
}

/// Table pushes as `(offset, bytes)`.
type Pushes = Vec<(usize, Rc<[u8]>)>;

#[derive(Clone, Debug, Hash)]
enum Msg {
    /// Everything one activation pushed to one peer: applied together, then the rules run once
    /// (what a driver does with the frames that arrived since its last turn).
    Push {
        view: u32,
        pushes: Vec<(usize, Rc<[u8]>)>,
    },
    JoinRequest,
    Welcome(Box<NextViewKey>),
    State {
        log: Vec<(u32, u64)>,
    },
}

/// A next view, hashable (the protocol's type is not), with the original beside it.
#[derive(Clone, Debug)]
struct NextViewKey(NextView);

impl Hash for NextViewKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        format!("{:?}", self.0).hash(state);
    }
}

#[derive(Clone, Debug)]
struct World {
    nodes: BTreeMap<u32, Node<HeapMemory>>,
    dead: BTreeSet<u32>,
    links: BTreeMap<(u32, u32), VecDeque<Msg>>,
    crashed: bool,
    join_sent: bool,
    left: bool,
    suspected: bool,
    told: BTreeSet<u32>,
    sent: BTreeMap<u32, u64>,
    /// Per member: its log (state received, then deliveries).
    logs: BTreeMap<u32, Vec<(u32, u64)>>,
    /// Per member: view it is in and what it delivered there.
    in_view: BTreeMap<u32, (u32, Vec<(u32, u64)>)>,
}

#[derive(Debug, Default)]
struct Judge {
    views: BTreeMap<u32, Vec<NodeId>>,
    trims: BTreeMap<u32, Vec<(derecho::protocol::ShardRef, Vec<u64>)>>,
    closed: BTreeMap<u32, Vec<(u32, u64)>>,
    longest: BTreeMap<u32, Vec<(u32, u64)>>,
}

/// Explores every interleaving within `bound`.
///
/// # Errors
///
/// The first property broken, with the actions that led to it.
pub fn explore(bound: &Bound) -> Result<Explored, String> {
    let (world, judge) = start(bound);
    let mut seen = BTreeSet::new();
    let mut stats = Explored { worlds: 0, finals: 0, complete: true, max_view: 0 };
    // Depth-first, with the path of action names for the report.
    let mut stack: Vec<(World, Judge, Vec<String>)> = vec![(world, judge, Vec::new())];
    while let Some((world, judge, path)) = stack.pop() {
        let key = fingerprint(&world);
        if !seen.insert(key) {
            continue;
        }
        stats.worlds += 1;
        if stats.worlds > bound.max_worlds {
            stats.complete = false;
            break;
        }
        let actions = actions(&world, bound);
        if actions.is_empty() {
            stats.finals += 1;
            final_check(&world).map_err(|e| format!("{e}\nafter: {}", path.join(", ")))?;
            continue;
        }
        for a in actions {
            let mut w = world.clone();
            let mut j = Judge {
                views: judge.views.clone(),
                trims: judge.trims.clone(),
                closed: judge.closed.clone(),
                longest: judge.longest.clone(),
            };
            let mut p = path.clone();
            p.push(a.name());
            apply(&mut w, &mut j, bound, &a).map_err(|e| format!("{e}\nafter: {}", p.join(", ")))?;
            stats.max_view = stats.max_view.max(j.views.keys().next_back().copied().unwrap_or(0));
            stack.push((w, j, p));
        }
    }
    Ok(stats)
}

#[derive(Clone, Debug)]
enum Action {
    Deliver(u32, u32),
    Crash(u32),
    Tell(u32, u32),
    Join(u32),
    Leave(u32),
    Suspect(u32, u32),
    Send(u32),
}

impl Action {
    fn name(&self) -> String {
        match self {
            Action::Deliver(a, b) => format!("n{a}>n{b}"),
            Action::Crash(x) => format!("crash n{x}"),
            Action::Tell(y, x) => format!("n{y} learns n{x} failed"),
            Action::Join(j) => format!("n{j} asks to join"),
            Action::Leave(x) => format!("n{x} leaves"),
            Action::Suspect(a, b) => format!("n{a} suspects n{b}"),
            Action::Send(s) => format!("n{s} sends"),
        }
    }
}

fn membership() -> MembershipConfig {
    MembershipConfig {
        heartbeat: std::time::Duration::from_nanos(u64::MAX / 8),
        suspect_after: std::time::Duration::from_nanos(u64::MAX / 4),
        partition_safety: true,
        state_transfer_timeout: std::time::Duration::from_nanos(u64::MAX / 4),
        lost_shards: derecho::protocol::LostShards::Wait,
    }
}

fn limits() -> Limits {
    Limits { window_len: 4, payload_len_max: 16, ring_len: 128, changes_max: 4, members_max: 8, ..Limits::default() }
}

fn layout() -> Rc<OneShard> {
    Rc::new(OneShard { mode: DeliveryMode::Ordered, min_members: 1 })
}

fn start(bound: &Bound) -> (World, Judge) {
    let ids: Vec<NodeId> = (0..bound.members).map(NodeId).collect();
    let shards = derecho::protocol::LayoutFn::layout(&*layout(), &ids).expect("adequate");
    let view = View { id: ViewId(0), members: ids.clone(), shards };
    let addresses: BTreeMap<NodeId, String> = ids.iter().map(|n| (*n, format!("x:{}", n.0))).collect();
    let len = Node::<HeapMemory>::table_len(&view, &limits());
    let mut w = World {
        nodes: BTreeMap::new(),
        dead: BTreeSet::new(),
        links: BTreeMap::new(),
        crashed: false,
        join_sent: false,
        left: false,
        suspected: false,
        told: BTreeSet::new(),
        sent: BTreeMap::new(),
        logs: BTreeMap::new(),
        in_view: BTreeMap::new(),
    };
    for &id in &ids {
        let node = Node::with_membership(
            id,
            view.clone(),
            addresses.clone(),
            &limits(),
            HeapMemory::new(len),
            membership(),
            layout(),
            Time(0),
        )
        .expect("valid");
        w.nodes.insert(id.0, node);
        w.in_view.insert(id.0, (0, Vec::new()));
    }
    let mut judge = Judge::default();
    judge.views.insert(0, ids);
    for id in 0..bound.members {
        run(&mut w, &mut judge, id, Input::RowsChanged).expect("a quiet start breaks nothing");
    }
    (w, judge)
}

fn fingerprint(w: &World) -> u64 {
    let mut h = DefaultHasher::new();
    for (id, n) in &w.nodes {
        id.hash(&mut h);
        format!("{n:?}").hash(&mut h);
    }
    w.dead.hash(&mut h);
    w.links.hash(&mut h);
    (w.crashed, w.join_sent, w.left, w.suspected).hash(&mut h);
    w.told.hash(&mut h);
    w.sent.hash(&mut h);
    w.logs.hash(&mut h);
    w.in_view.hash(&mut h);
    h.finish()
}

fn running(w: &World, id: u32) -> bool {
    !w.dead.contains(&id) && w.nodes.get(&id).is_some_and(|n| n.stopped().is_none())
}

fn actions(w: &World, bound: &Bound) -> Vec<Action> {
    let mut out = Vec::new();
    for ((a, b), q) in &w.links {
        let Some(head) = q.front() else { continue };
        if w.dead.contains(b) {
            continue;
        }
        // A push for a view the receiver has not installed waits (a driver buffers it).
        let waits = match head {
            Msg::Push { view, .. } => w.nodes.get(b).is_none_or(|n| *view > n.view().id.0),
            _ => false,
        };
        if !waits {
            out.push(Action::Deliver(*a, *b));
        }
    }
    if let Some(x) = bound.crash
        && !w.crashed
    {
        out.push(Action::Crash(x.0));
    }
    if w.crashed
        && let Some(x) = bound.crash
    {
        for &y in w.nodes.keys() {
            if y != x.0 && running(w, y) && !w.told.contains(&y) && w.nodes[&y].view().rank_of(x).is_some() {
                out.push(Action::Tell(y, x.0));
            }
        }
    }
    if let Some(j) = bound.join
        && !w.join_sent
    {
        out.push(Action::Join(j.0));
    }
    if let Some(x) = bound.leave
        && !w.left
        && running(w, x.0)
    {
        out.push(Action::Leave(x.0));
    }
    if let Some((a, b)) = bound.suspect
        && !w.suspected
        && running(w, a.0)
        && w.nodes[&a.0].view().rank_of(b).is_some()
    {
        out.push(Action::Suspect(a.0, b.0));
    }
    for &(s, k) in &bound.senders {
        if w.sent.get(&s.0).copied().unwrap_or(0) < k
            && running(w, s.0)
            && let Some(n) = w.nodes.get(&s.0)
            && let Some(shard) = n.view().shards.first()
        {
            let mut probe = n.clone();
            if probe.can_send(shard.id, 8) {
                out.push(Action::Send(s.0));
            }
        }
    }
    out
}

fn apply(w: &mut World, j: &mut Judge, bound: &Bound, a: &Action) -> Result<(), String> {
    match *a {
        Action::Deliver(from, to) => {
            let msg = w.links.get_mut(&(from, to)).and_then(VecDeque::pop_front).expect("a message");
            receive(w, j, bound, from, to, msg)?;
        }
        Action::Crash(x) => {
            w.crashed = true;
            w.dead.insert(x);
            // What it had not sent yet is lost; what is on its links still arrives.
        }
        Action::Tell(y, x) => {
            w.told.insert(y);
            run(w, j, y, Input::PeerFailed(NodeId(x)))?;
        }
        Action::Join(joiner) => {
            w.join_sent = true;
            w.links.entry((joiner, 0)).or_default().push_back(Msg::JoinRequest);
        }
        Action::Leave(x) => {
            w.left = true;
            run(w, j, x, Input::Leave)?;
        }
        Action::Suspect(a, b) => {
            w.suspected = true;
            run(w, j, a, Input::ReportFailure(NodeId(b)))?;
        }
        Action::Send(s) => {
            let k = w.sent.get(&s).copied().unwrap_or(0);
            let node = w.nodes.get_mut(&s).expect("a sender");
            let shard = node.view().shards[0].id;
            node.send(Time(0), shard, 8, |b| {
                b[0..4].copy_from_slice(&s.to_le_bytes());
                b[4..8].copy_from_slice(&(k as u32).to_le_bytes());
            })
            .map_err(|e| format!("n{s} could not send after can_send said yes: {e}"))?;
            w.sent.insert(s, k + 1);
            run(w, j, s, Input::RowsChanged)?;
        }
    }
    Ok(())
}

fn receive(w: &mut World, j: &mut Judge, bound: &Bound, from: u32, to: u32, msg: Msg) -> Result<(), String> {
    match msg {
        Msg::Push { view, pushes } => {
            let Some(node) = w.nodes.get_mut(&to) else { return Ok(()) };
            let here = node.view().id.0;
            if view == here {
                for (offset, bytes) in pushes {
                    match node.row_range(NodeId(from)) {
                        Some(row) if offset >= row.start && offset + bytes.len() <= row.end => {
                            node.memory_mut().apply(offset, &bytes);
                        }
                        _ => return Err(format!("n{from} pushed outside its row at n{to}")),
                    }
                }
                run(w, j, to, Input::RowsChanged)?;
            }
            // An older view's push is dropped (`actions` never offers a newer view's).
        }
        Msg::JoinRequest => {
            let joiner = bound.join.expect("a joiner");
            run(w, j, to, Input::Join { node: joiner, address: format!("x:{}", joiner.0), returning: false })?;
        }
        Msg::Welcome(next) => {
            if w.nodes.contains_key(&to) {
                return Ok(());
            }
            let next = next.0;
            let len = Node::<HeapMemory>::table_len(&next.view, &limits());
            let node = Node::join(NodeId(to), &next, &limits(), HeapMemory::new(len), membership(), layout(), Time(0))
                .map_err(|e| format!("the joiner refused its view: {e}"))?;
            w.nodes.insert(to, node);
            w.in_view.insert(to, (next.view.id.0, Vec::new()));
            installed(j, to, &next.view)?;
            run(w, j, to, Input::RowsChanged)?;
        }
        Msg::State { log } => {
            let Some(node) = w.nodes.get(&to) else { return Ok(()) };
            let shard = node.view().shards[0].id;
            if node.stopped().is_some() || !node.awaiting_state(shard) {
                return Ok(());
            }
            w.logs.insert(to, log);
            run(w, j, to, Input::StateReceived(shard))?;
        }
    }
    Ok(())
}

fn installed(j: &mut Judge, id: u32, view: &View) -> Result<(), String> {
    match j.views.get(&view.id.0) {
        Some(m) if *m != view.members => {
            return Err(format!("view {} is {:?} at n{id} but {m:?} elsewhere", view.id.0, view.members));
        }
        Some(_) => {}
        None => {
            if let Some(prev) = j.views.get(&(view.id.0 - 1)) {
                let gone = prev.iter().filter(|m| !view.members.contains(m)).count();
                if gone > 0 && gone >= prev.len().div_ceil(2) {
                    return Err(format!("view {} {:?} lost a majority of {prev:?}", view.id.0, view.members));
                }
            } else {
                return Err(format!("view {} with no predecessor", view.id.0));
            }
            j.views.insert(view.id.0, view.members.clone());
        }
    }
    Ok(())
}

/// Runs a member on an input, then drains it (installing next views at once).
fn run(w: &mut World, j: &mut Judge, id: u32, input: Input) -> Result<(), String> {
    if w.dead.contains(&id) {
        return Ok(());
    }
    let Some(node) = w.nodes.get_mut(&id) else { return Ok(()) };
    if node.stopped().is_some() {
        return Ok(());
    }
    node.handle(Time(0), input);
    for _ in 0..16 {
        let node = w.nodes.get_mut(&id).expect("a node");
        let view = node.view().id.0;
        let mut got = Vec::new();
        node.deliver(|d| {
            let s = u32::from_le_bytes(d.payload[0..4].try_into().expect("4"));
            let k = u32::from_le_bytes(d.payload[4..8].try_into().expect("4"));
            got.push((s, u64::from(k)));
        });
        for g in got {
            let log = w.logs.entry(id).or_default();
            if log.contains(&g) {
                return Err(format!("n{id} delivered n{}'s message {} twice", g.0, g.1));
            }
            log.push(g);
            let (v, seq) = w.in_view.get_mut(&id).expect("in a view");
            debug_assert_eq!(*v, view);
            seq.push(g);
            let longest = j.longest.entry(view).or_default();
            let i = seq.len() - 1;
            if i < longest.len() {
                if longest[i] != seq[i] {
                    return Err(format!("view {view}: delivery {i} differs at n{id}"));
                }
            } else {
                longest.push(seq[i]);
            }
            if let Some(c) = j.closed.get(&view)
                && c.len() < seq.len()
            {
                return Err(format!("n{id} delivered more of view {view} than a member that left it"));
            }
        }
        let mut again = false;
        let mut batch: BTreeMap<u32, (u32, Pushes)> = BTreeMap::new();
        loop {
            let node = w.nodes.get_mut(&id).expect("a node");
            let Some(out) = node.poll_output() else { break };
            let view = node.view().id.0;
            if !matches!(out, Output::Push { .. }) {
                // Pushes of a view go out before whatever follows them (a next view, a state).
                for (peer, (view, pushes)) in std::mem::take(&mut batch) {
                    w.links.entry((id, peer)).or_default().push_back(Msg::Push { view, pushes });
                }
            }
            match out {
                Output::Push { range, to } => {
                    let bytes: Rc<[u8]> = node.memory().slice(range.clone()).into();
                    for p in to.iter() {
                        batch.entry(p.0).or_insert_with(|| (view, Vec::new())).1.push((range.start, bytes.clone()));
                    }
                }
                Output::Violation { node: peer, violation } => {
                    return Err(format!("n{id} accuses honest n{}: {violation}", peer.0));
                }
                Output::Step(derecho::protocol::GmsStep::TrimDelivered) => {
                    let trims = node.final_trims().expect("a final record");
                    match j.trims.get(&view) {
                        Some(t) if *t != trims => return Err(format!("two trims in view {view}")),
                        Some(_) => {}
                        None => {
                            j.trims.insert(view, trims);
                        }
                    }
                }
                Output::Step(_) | Output::Stopped(_) | Output::ResendFailed { .. } | Output::JoinRefused { .. } => {}
                Output::NextView(next) => {
                    let len = Node::<HeapMemory>::table_len(&next.view, &limits());
                    node.install(Time(0), HeapMemory::new(len)).map_err(|e| format!("install: {e}"))?;
                    if node.stopped().is_some() {
                        continue;
                    }
                    let (old, seq) = w.in_view.insert(id, (next.view.id.0, Vec::new())).expect("in a view");
                    match j.closed.get(&old) {
                        Some(c) if *c != seq => {
                            return Err(format!("n{id} left view {old} with other deliveries than another member"));
                        }
                        Some(_) => {}
                        None => {
                            j.closed.insert(old, seq);
                        }
                    }
                    installed(j, id, &next.view)?;
                    for &joiner in &next.joined {
                        w.links
                            .entry((id, joiner.0))
                            .or_default()
                            .push_back(Msg::Welcome(Box::new(NextViewKey(next.clone()))));
                    }
                    again = true;
                }
                Output::SendState { to, .. } => {
                    let log = w.logs.get(&id).cloned().unwrap_or_default();
                    for t in to {
                        w.links.entry((id, t.0)).or_default().push_back(Msg::State { log: log.clone() });
                    }
                }
            }
        }
        for (peer, (view, pushes)) in batch {
            w.links.entry((id, peer)).or_default().push_back(Msg::Push { view, pushes });
        }
        if !again {
            break;
        }
        // Pushes for the view just installed may be waiting at the front of the links.
        let node = w.nodes.get_mut(&id).expect("a node");
        node.handle(Time(0), Input::RowsChanged);
    }
    Ok(())
}

fn final_check(w: &World) -> Result<(), String> {
    let alive: Vec<u32> = w.nodes.keys().copied().filter(|&id| running(w, id)).collect();
    let Some(&first) = alive.first() else { return Err("no member runs at the end".into()) };
    let view = w.nodes[&first].view().clone();
    for &id in &alive {
        let n = &w.nodes[&id];
        if n.view() != &view {
            return Err(format!("at the end n{id} is in view {}, n{first} in view {}", n.view().id.0, view.id.0));
        }
        if n.is_wedged() {
            return Err(format!("at the end n{id} is wedged in view {}", view.id.0));
        }
        let log = |id| w.logs.get(&id).map_or(&[][..], Vec::as_slice);
        if log(id) != log(first) {
            return Err(format!("at the end n{id} and n{first} have different logs"));
        }
    }
    for &s in &alive {
        for k in 0..w.sent.get(&s).copied().unwrap_or(0) {
            if !w.logs.get(&first).is_some_and(|l| l.contains(&(s, k))) {
                return Err(format!("n{s}'s message {k} was lost"));
            }
        }
    }
    Ok(())
}
