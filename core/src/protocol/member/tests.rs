//! Handler tests of the member (STYLE: build a state, call one handler, assert the exact
//! commands and events). Heartbeats run once a second here, so that a handler's pushes are its
//! own; where a test is about something else, pushes are filtered out by name
//! ([`without_pushes`]).

use std::collections::BTreeMap;
use std::rc::Rc;

use super::*;
use crate::protocol::ids::ShardIndex;
use crate::protocol::layout::DeliveryMode;
use crate::protocol::membership::{MembershipConfig, OneShard, StateTransfer};
use crate::protocol::restart::Offer;
#[allow(unused_imports)]
use crate::protocol::sst::SstMemory;
use crate::protocol::sst::{GmsCounter, HeapMemory};
use crate::protocol::wire::{Answer, ViewFrame};
use crate::protocol::{LayoutFn, ShardLayout, SubgroupId};

const S: u64 = 1_000_000_000;

fn shard0() -> ShardRef {
    ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) }
}

fn address(n: u32) -> String {
    format!("a{n}")
}

fn layout() -> Rc<dyn LayoutFn> {
    Rc::new(OneShard { mode: DeliveryMode::Ordered, min_members: 1 })
}

fn config(me: u32, persistent: bool) -> MemberConfig {
    let mut c = MemberConfig::new(NodeId(me), address(me), layout());
    c.limits = crate::protocol::Limits { window_len: 8, payload_len_max: 64, ring_len: 1024, ..Default::default() };
    c.membership = MembershipConfig {
        heartbeat: std::time::Duration::from_nanos(S),
        suspect_after: std::time::Duration::from_nanos(10 * S),
        ..MembershipConfig::default()
    };
    c.retry_ns = 2 * S;
    c.join_timeout_ns = 30 * S;
    c.restart_timeout_ns = 60 * S;
    c.persistent = persistent;
    c
}

/// The view `id` of `members` (one shard of all) as a member enters it.
fn next_view(id: u32, members: &[u32]) -> NextView {
    let ids: Vec<NodeId> = members.iter().map(|&n| NodeId(n)).collect();
    NextView {
        view: View { id: ViewId(id), members: ids.clone(), shards: layout().layout(&ids).unwrap() },
        inadequate: None,
        addresses: ids.iter().map(|n| (*n, address(n.0))).collect(),
        joined: Vec::new(),
        departed: Vec::new(),
        transfers: Vec::new(),
        lost: Vec::new(),
        history: Vec::new(),
    }
}

fn table(next: &NextView) -> HeapMemory {
    HeapMemory::new(Node::<HeapMemory>::table_len(&next.view, &config(0, false).limits))
}

/// Every command out now.
fn commands(m: &mut Member<HeapMemory>) -> Vec<Command> {
    std::iter::from_fn(|| m.poll_command()).collect()
}

/// Every event out now.
fn events(m: &mut Member<HeapMemory>) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

/// The commands that are not pushes (heartbeats and protocol rows are judged elsewhere).
fn without_pushes(c: Vec<Command>) -> Vec<Command> {
    c.into_iter().filter(|c| !matches!(c, Command::Push { .. })).collect()
}

fn control(message: &Control) -> Rc<[u8]> {
    message.encode().into()
}

/// A member of `next` that entered it at time 0, its first commands and events taken.
fn entered(me: u32, next: &NextView, persistent: bool) -> Member<HeapMemory> {
    entered_with(config(me, persistent), next)
}

/// [`entered`] with these settings.
fn entered_with(config: MemberConfig, next: &NextView) -> Member<HeapMemory> {
    let mut m = Member::new(config);
    m.enter_view(Rc::new(next.clone()));
    assert_eq!(commands(&mut m), vec![Command::Connect { next: Rc::new(next.clone()) }]);
    m.handle(Time(1), Input::Connected { view: next.view.id, memory: table(next) });
    let _ = (commands(&mut m), events(&mut m));
    m
}

/// Members whose pushes reach each other at once, in order.
struct Net {
    members: BTreeMap<u32, Member<HeapMemory>>,
    /// What each member produced besides pushes, in order.
    commands: BTreeMap<u32, Vec<Command>>,
    events: BTreeMap<u32, Vec<Event>>,
    now: u64,
}

impl Net {
    fn new(ids: &[u32], persistent: bool) -> Self {
        Self::at(0, ids, persistent)
    }

    /// Members of view `id` (they entered it together).
    fn at(id: u32, ids: &[u32], persistent: bool) -> Self {
        let next = next_view(id, ids);
        let members = ids.iter().map(|&i| (i, entered(i, &next, persistent))).collect();
        Self { members, commands: BTreeMap::new(), events: BTreeMap::new(), now: 10 }
    }

    fn member(&mut self, i: u32) -> &mut Member<HeapMemory> {
        self.members.get_mut(&i).expect("a member")
    }

    /// Runs every member and carries its pushes to the others, until nothing moves (members in
    /// `deaf` receive nothing).
    fn settle(&mut self, deaf: &[u32]) {
        for _ in 0..100 {
            self.now += 10;
            let mut moved = false;
            let ids: Vec<u32> = self.members.keys().copied().collect();
            for &i in &ids {
                let now = Time(self.now);
                let m = self.member(i);
                if m.stopped().is_some() {
                    continue;
                }
                m.handle(now, Input::Tick);
                let delivered = m.deliver(|_| {});
                moved |= delivered > 0;
                let mut pushes = Vec::new();
                let mut others = Vec::new();
                for c in commands(m) {
                    match c {
                        Command::Push { range, to } => {
                            let bytes = m.node().unwrap().memory().slice(range.clone()).to_vec();
                            pushes.push((range.start, bytes, to));
                        }
                        other => others.push(other),
                    }
                }
                self.commands.entry(i).or_default().extend(others);
                let evs = events(self.member(i));
                self.events.entry(i).or_default().extend(evs);
                for (at, bytes, to) in pushes {
                    for p in to.iter().filter(|p| !deaf.contains(&p.0)) {
                        if let Some(peer) = self.members.get_mut(&p.0)
                            && let Some(node) = peer.node_mut()
                        {
                            node.memory_mut().apply(at, &bytes);
                            moved = true;
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the members did not settle");
    }

    fn take_commands(&mut self, i: u32) -> Vec<Command> {
        self.commands.remove(&i).unwrap_or_default()
    }

    fn take_events(&mut self, i: u32) -> Vec<Event> {
        self.events.remove(&i).unwrap_or_default()
    }
}

fn join(node: u32) -> Vec<u8> {
    Control::Join { version: JOIN_VERSION, node: NodeId(node), address: address(node), app: 0 }.encode()
}

/// Admission control (issue 15): with an allow-list, an id not on it is refused (answered, not
/// proposed); one on it is admitted as usual.
#[test]
fn a_leader_with_an_allow_list_refuses_other_ids() {
    let mut c = config(0, false);
    c.allowed = Some(vec![NodeId(0), NodeId(1), NodeId(2), NodeId(7)].into());
    let mut leader = entered_with(c, &next_view(0, &[0, 1, 2]));
    assert_eq!(leader.handle_control(Time(100), NodeId(9), &join(9)), None);
    assert_eq!(
        commands(&mut leader),
        vec![Command::SendControl {
            to: address(9),
            message: control(&Control::Answer(Answer::Refused(JoinRefusal::NotAllowed(NodeId(9))))),
            report: false
        }]
    );
    leader.handle_control(Time(110), NodeId(7), &join(7));
    assert_eq!(
        commands(&mut leader),
        vec![Command::SendControl {
            to: address(7),
            message: control(&Control::Answer(Answer::Pending)),
            report: true
        }]
    );
}

/// A join speaks for its sender only: a request for node 9 sent by node 8 (as its hello, and
/// with TLS its certificate, says) is ignored, and says so.
#[test]
fn a_join_in_another_nodes_name_is_ignored() {
    let mut net = Net::new(&[0, 1, 2], false);
    let leader = net.member(0);
    let _ = events(leader);
    assert_eq!(leader.handle_control(Time(100), NodeId(8), &join(9)), None);
    assert_eq!(commands(leader), vec![]);
    assert_eq!(
        events(leader),
        vec![Event::Waiting(
            "ignored a join or restart offer for node 9 sent by node 8: a member asks for itself only".into()
        )]
    );
}

/// Admission control (issue 15): at most `ADMITTING_MAX` joiners wait for their listeners to
/// answer; a join beyond that is dropped unanswered (and says so), and taken once one is done.
#[test]
fn a_leader_holds_a_bounded_number_of_joins_waiting_for_their_listeners() {
    use super::join::ADMITTING_MAX;
    let mut net = Net::new(&[0, 1, 2], false);
    let leader = net.member(0);
    for n in 0..ADMITTING_MAX as u32 {
        leader.handle_control(Time(100), NodeId(100 + n), &join(100 + n));
        assert_eq!(commands(leader).len(), 1, "joiner {n} is answered");
    }
    let _ = events(leader);
    let extra = 100 + ADMITTING_MAX as u32;
    leader.handle_control(Time(100), NodeId(extra), &join(extra));
    assert_eq!(commands(leader), vec![], "a join beyond the bound was answered");
    assert_eq!(
        events(leader),
        vec![Event::Waiting(format!("dropped a join: {ADMITTING_MAX} joiners' listeners have not answered yet"))]
    );
    // One listener does not answer: room for the next.
    leader.handle(Time(110), Input::ControlNotSent { to: address(100) });
    leader.handle_control(Time(120), NodeId(extra), &join(extra));
    assert_eq!(
        commands(leader),
        vec![Command::SendControl {
            to: address(extra),
            message: control(&Control::Answer(Answer::Pending)),
            report: true
        }]
    );
}

/// PROTOCOLS §3.5 and member-core finding 4: the leader proposes a joiner only once its
/// listener answered; an address that never answers is never admitted.
#[test]
fn a_joiner_is_proposed_only_once_its_listener_answered() {
    let mut net = Net::new(&[0, 1, 2], false);
    let leader = net.member(0);
    assert_eq!(leader.handle_control(Time(100), NodeId(9), &join(9)), None);
    assert_eq!(
        commands(leader),
        vec![Command::SendControl {
            to: address(9),
            message: control(&Control::Answer(Answer::Pending)),
            report: true
        }]
    );
    assert_eq!(leader.node().unwrap().proposed_view(), None, "proposed before the joiner answered");
    // A listener that does not answer: nothing is proposed, ever.
    leader.handle(Time(110), Input::ControlNotSent { to: address(9) });
    leader.handle(Time(120), Input::Tick);
    assert_eq!(leader.node().unwrap().proposed_view(), None);
    assert_eq!(without_pushes(commands(leader)), vec![]);
    // The same request again, and this time the listener answers.
    leader.handle_control(Time(130), NodeId(9), &join(9));
    let _ = commands(leader);
    leader.handle(Time(140), Input::ControlSent { to: address(9) });
    assert_eq!(
        leader.node().unwrap().proposed_view(),
        Some((ViewId(1), vec![NodeId(0), NodeId(1), NodeId(2), NodeId(9)]))
    );
    // The proposal's pushes (its list, then its counters); its steps come out as they do.
    let pushes = commands(leader);
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert!(pushes.iter().all(|c| matches!(c, Command::Push { .. })), "{pushes:?}");
    assert_eq!(events(leader), vec![Event::Step(GmsStep::Wedged), Event::Step(GmsStep::Proposed(1))]);
}

/// A member that is not the leader redirects; an id in the view is refused.
#[test]
fn followers_redirect_and_ids_in_use_are_refused() {
    let mut net = Net::new(&[0, 1, 2], false);
    let follower = net.member(1);
    follower.handle_control(Time(100), NodeId(9), &join(9));
    let refusal = JoinRefusal::NotLeader { leader: NodeId(0), address: address(0) };
    assert_eq!(
        commands(follower),
        vec![Command::SendControl {
            to: address(9),
            message: control(&Control::Answer(Answer::Refused(refusal))),
            report: false
        }]
    );
    let leader = net.member(0);
    let twin = Control::Join { version: JOIN_VERSION, node: NodeId(2), address: "elsewhere".into(), app: 0 }.encode();
    leader.handle_control(Time(100), NodeId(2), &twin);
    let refusal = JoinRefusal::IdInUse(NodeId(2));
    assert_eq!(
        commands(leader),
        vec![Command::SendControl {
            to: "elsewhere".into(),
            message: control(&Control::Answer(Answer::Refused(refusal))),
            report: false
        }]
    );
}

/// A request from another build of the application (its replicated types' fingerprint differs)
/// or of the handshake is refused before anything else is looked at.
#[test]
fn requests_from_another_application_or_handshake_are_refused() {
    let mut c = config(0, false);
    c.app = 7;
    let mut m = Member::new(c);
    let request = |version, app| Control::Join { version, node: NodeId(9), address: address(9), app }.encode();
    m.handle_control(Time(1), NodeId(9), &request(JOIN_VERSION, 8));
    let refusal = JoinRefusal::AppMismatch { ours: 7, theirs: 8 };
    assert_eq!(
        commands(&mut m),
        vec![Command::SendControl {
            to: address(9),
            message: control(&Control::Answer(Answer::Refused(refusal))),
            report: false
        }]
    );
    m.handle_control(Time(2), NodeId(9), &request(JOIN_VERSION + 1, 7));
    assert_eq!(
        commands(&mut m),
        vec![Command::SendControl {
            to: address(9),
            message: control(&Control::Answer(Answer::Version(JOIN_VERSION))),
            report: false
        }]
    );
    // The same application: past the check (an idle member runs no group yet).
    m.handle_control(Time(3), NodeId(9), &request(JOIN_VERSION, 7));
    assert_eq!(
        commands(&mut m),
        vec![Command::SendControl {
            to: address(9),
            message: control(&Control::Answer(Answer::Refused(JoinRefusal::NotRunning))),
            report: false
        }]
    );
}

/// Member-core finding 8: a new leader that inherited a join from its failed predecessor's
/// list answers the joiner's retry as a join under way (it will be welcomed), not as an id in
/// use.
#[test]
fn a_new_leader_answers_a_retry_of_an_inherited_join_as_under_way() {
    let mut net = Net::new(&[0, 1, 2], false);
    net.member(0).handle_control(Time(100), NodeId(9), &join(9));
    net.member(0).handle(Time(110), Input::ControlSent { to: address(9) });
    // Everyone acknowledges 0's list; then 0 fails before committing (1 and 2 stop hearing it).
    net.settle(&[0]);
    for i in [1, 2] {
        net.member(i).handle(Time(200), Input::ReportFailure(NodeId(0)));
    }
    net.settle(&[0]);
    let new_leader = net.member(1);
    assert_eq!(new_leader.node().unwrap().leader(), NodeId(1));
    let list = new_leader.node().unwrap().proposed_view().expect("the inherited list").1;
    assert!(list.contains(&NodeId(9)), "{list:?}");
    let _ = commands(new_leader);
    new_leader.handle_control(Time(300), NodeId(9), &join(9));
    assert_eq!(
        commands(new_leader),
        vec![Command::SendControl {
            to: address(9),
            message: control(&Control::Answer(Answer::Pending)),
            report: false
        }]
    );
}

/// Member-core finding 3: a member that sends a shard's state for a new view (here the restart
/// view it leads, where it holds the longest log) takes the snapshot before it delivers
/// anything of that view: deliveries wait while the view's events are untaken and until the
/// application ordered the snapshot.
#[test]
fn the_snapshot_is_ordered_before_anything_of_the_new_view_is_delivered() {
    // One shard of 0 and 1 where only 0 sends: its own message is stable once 1's row says it
    // received it.
    let shard = ShardLayout {
        id: shard0(),
        members: vec![NodeId(0), NodeId(1)],
        senders: vec![NodeId(0)],
        mode: DeliveryMode::Ordered,
    };
    let mut c = config(0, false);
    c.layout = Rc::new(crate::protocol::FixedShards(vec![shard.clone()]));
    let next = NextView {
        view: View { id: ViewId(5), members: vec![NodeId(0), NodeId(1)], shards: vec![shard] },
        inadequate: None,
        addresses: vec![(NodeId(0), address(0)), (NodeId(1), address(1))],
        joined: vec![NodeId(1)],
        departed: Vec::new(),
        transfers: vec![StateTransfer { shard: shard0(), from: vec![NodeId(0)], to: vec![NodeId(1)] }],
        lost: Vec::new(),
        history: Vec::new(),
    };
    let mut m = Member::new(c);
    m.enter_view(Rc::new(next.clone()));
    let _ = commands(&mut m);
    m.handle(Time(1), Input::Connected { view: ViewId(5), memory: table(&next) });
    assert_eq!(m.send(Time(2), shard0(), 8, |b| b.fill(7)), Ok(0));
    // Member 1's row, as its pushes would make it: it received message 0 (a copy of 0's own
    // shard counters).
    let node = m.node_mut().unwrap();
    node.handle(Time(3), crate::protocol::Input::RowsChanged);
    let cols = node.row_layout().shards[0].clone();
    let (row0, row1) = (node.row_range(NodeId(0)).unwrap(), node.row_range(NodeId(1)).unwrap());
    let counters = cols.counters(1);
    let own = node.memory().slice(row0.start + counters.start..row0.start + counters.end).to_vec();
    node.memory_mut().apply(row1.start + counters.start, &own);
    let mut delivered = 0;
    assert_eq!(m.deliver(|_| delivered += 1), 0, "delivered with the view's events untaken");
    let _ = commands(&mut m);
    assert_eq!(
        events(&mut m),
        vec![
            Event::Installed(ViewChange::of(&next, NodeId(0))),
            Event::Step(GmsStep::Installed(ViewId(5))),
            Event::TakeSnapshot { view: ViewId(5), shard: shard0() },
        ]
    );
    assert_eq!(m.deliver(|_| delivered += 1), 0, "delivered before the snapshot was ordered");
    m.handle(Time(4), Input::SnapshotTaken { view: ViewId(5), shard: shard0(), state: None });
    assert_eq!(m.deliver(|_| delivered += 1), 1, "the message of the new view, after the snapshot");
    // The state itself comes later, and goes to the new member in one frame.
    m.handle(Time(5), Input::SnapshotTaken { view: ViewId(5), shard: shard0(), state: Some(vec![1, 2, 3]) });
    assert_eq!(
        without_pushes(commands(&mut m)),
        vec![Command::SendFrames {
            view: ViewId(5),
            to: vec![NodeId(1)],
            frames: transfer::pieces(ViewId(5), shard0(), &[1, 2, 3])
        }]
    );
}

/// PROTOCOLS §4.1: a persisting leader's proposal, and each follower's acknowledgement, goes
/// into its row only once the view is saved; heartbeats go on meanwhile.
#[test]
fn a_proposal_or_acknowledgement_is_counted_only_once_its_view_is_saved() {
    let mut net = Net::new(&[0, 1, 2], true);
    net.member(0).handle_control(Time(100), NodeId(9), &join(9));
    let _ = commands(net.member(0));
    net.member(0).handle(Time(110), Input::ControlSent { to: address(9) });
    net.settle(&[]);
    let proposal = (ViewId(1), vec![NodeId(0), NodeId(1), NodeId(2), NodeId(9)]);
    let save = Command::SaveProposal { view: proposal.0, members: proposal.1.clone() };
    let counter = |net: &mut Net, i: u32, c: GmsCounter| {
        let node = net.member(i).node().unwrap();
        let at = node.row_range(NodeId(i)).unwrap().start + node.row_layout().gms.counter(c);
        node.memory().load_u64(at)
    };
    // The leader saves first: until then its row proposes nothing, and nobody acknowledges.
    assert_eq!(net.take_commands(0), vec![save.clone()]);
    assert!(net.member(0).node().unwrap().awaits_save());
    assert_eq!(counter(&mut net, 0, GmsCounter::NumChanges), 0);
    for i in [1, 2] {
        assert_eq!(net.take_commands(i), vec![], "member {i} saw a proposal not saved");
    }
    net.member(0).handle(Time(1_000), Input::ProposalSaved { view: proposal.0, members: proposal.1.clone() });
    assert_eq!(counter(&mut net, 0, GmsCounter::NumChanges), 1, "one change: add 9");
    net.settle(&[]);
    for i in [1, 2] {
        assert_eq!(net.take_commands(i), vec![save.clone()], "member {i}");
        assert!(net.member(i).node().unwrap().awaits_save());
        assert_eq!(counter(&mut net, i, GmsCounter::NumAcked), 0, "member {i} acknowledged before saving");
    }
    assert!(net.member(0).node().unwrap().final_trims().is_none(), "committed without acknowledgements");
    // A heartbeat still leaves while the save is under way.
    let m = net.member(1);
    m.handle(Time(2 * S), Input::Tick);
    assert!(commands(m).iter().any(|c| matches!(c, Command::Push { .. })), "heartbeats stopped");
    for i in [1, 2] {
        net.member(i).handle(Time(2 * S), Input::ProposalSaved { view: proposal.0, members: proposal.1.clone() });
        assert_eq!(counter(&mut net, i, GmsCounter::NumAcked), 1, "member {i}");
    }
    net.settle(&[]);
    assert!(net.member(0).node().unwrap().final_trims().is_some(), "committed once saved");
}

/// A persisting member saves a view only once every state it received for it is restored and
/// durable (PROTOCOLS §4.1), with the view's addresses.
#[test]
fn a_view_is_saved_once_its_states_are_durable() {
    let mut next = next_view(4, &[0, 9]);
    next.joined = vec![NodeId(9)];
    next.transfers = vec![StateTransfer { shard: shard0(), from: vec![NodeId(0)], to: vec![NodeId(9)] }];
    let mut m = Member::new(config(9, true));
    m.enter_view(Rc::new(next.clone()));
    let _ = commands(&mut m);
    m.handle(Time(1), Input::Connected { view: ViewId(4), memory: table(&next) });
    assert_eq!(without_pushes(commands(&mut m)), vec![], "saved before its state came");
    let _ = events(&mut m);
    let state = vec![5u8; 10];
    for piece in transfer::pieces(ViewId(4), shard0(), &state) {
        m.handle_frame(Time(2), ViewId(4), NodeId(0), &piece);
    }
    assert_eq!(events(&mut m), vec![Event::Restore { view: ViewId(4), shard: shard0(), from: NodeId(0), state }]);
    m.handle(Time(3), Input::StateRestored { view: ViewId(4), shard: shard0() });
    assert_eq!(without_pushes(commands(&mut m)), vec![], "saved before its state was durable");
    let before = Version::from_u64(Version::new(ViewId(4), 0).as_u64() - 1);
    m.handle(Time(4), Input::Persisted { shard: shard0(), version: before });
    assert_eq!(
        without_pushes(commands(&mut m)),
        vec![Command::SaveView { view: next.view.clone(), addresses: next.addresses.clone() }]
    );
}

/// A state travels in pieces: one out of order fails that source's copy, one beyond
/// `state_len_max` too; a copy the application refuses waits for another source's; once every
/// source's copy failed, the member stops at once.
#[test]
fn pieces_of_a_state_are_checked_and_a_refused_copy_waits_for_another() {
    let mut next = next_view(2, &[0, 1, 9]);
    next.transfers = vec![StateTransfer { shard: shard0(), from: vec![NodeId(0), NodeId(1)], to: vec![NodeId(9)] }];
    let joiner = |state_len_max: usize| {
        let mut c = config(9, false);
        c.state_len_max = state_len_max;
        let mut m = Member::new(c);
        m.enter_view(Rc::new(next.clone()));
        m.handle(Time(1), Input::Connected { view: ViewId(2), memory: table(&next) });
        let _ = commands(&mut m);
        // Installed, then the wait said out loud: whose state, from whom, how long.
        assert_eq!(
            events(&mut m),
            vec![
                Event::Installed(ViewChange::of(&next, NodeId(9))),
                Event::Waiting("the state of subgroup 0 shard 0 from node 0 or 1 (within 10000 ms)".into()),
                Event::Step(GmsStep::Installed(ViewId(2))),
            ]
        );
        m
    };
    let state: Vec<u8> = (0..(5 << 19)).map(|i| i as u8).collect();
    let pieces = transfer::pieces(ViewId(2), shard0(), &state);
    assert_eq!(pieces.len(), 3);
    let refused =
        |from: u32| Input::StateRefused { view: ViewId(2), shard: shard0(), from: NodeId(from), reason: "bad".into() };

    // 0's copy under way, 1's whole first: the application refuses 1's, 0's is taken.
    let mut m = joiner(3 << 20);
    m.handle_frame(Time(2), ViewId(2), NodeId(0), &pieces[0]);
    for p in &pieces {
        assert_eq!(events(&mut m), vec![]);
        m.handle_frame(Time(3), ViewId(2), NodeId(1), p);
    }
    assert_eq!(
        events(&mut m),
        vec![Event::Restore { view: ViewId(2), shard: shard0(), from: NodeId(1), state: state.clone() }]
    );
    m.handle(Time(4), refused(1));
    assert_eq!(events(&mut m), vec![Event::StateRejected { shard: shard0(), from: NodeId(1), reason: "bad".into() }]);
    assert!(m.node().unwrap().awaiting_state(shard0()));
    for p in &pieces[1..] {
        m.handle_frame(Time(5), ViewId(2), NodeId(0), p);
    }
    assert_eq!(
        events(&mut m),
        vec![Event::Restore { view: ViewId(2), shard: shard0(), from: NodeId(0), state: state.clone() }]
    );
    m.handle(Time(6), Input::StateRestored { view: ViewId(2), shard: shard0() });
    assert!(!m.node().unwrap().awaiting_state(shard0()));

    // 0's pieces out of order, then 1's copy refused by the application: nothing can come.
    let mut m = joiner(3 << 20);
    m.handle_frame(Time(2), ViewId(2), NodeId(0), &pieces[1]);
    let rejected = events(&mut m);
    assert!(
        matches!(&rejected[..], [Event::StateRejected { from: NodeId(0), reason, .. }] if reason.contains("was expected")),
        "{rejected:?}"
    );
    m.handle_frame(Time(2), ViewId(2), NodeId(0), &pieces[0]);
    assert_eq!(events(&mut m), vec![], "a failed source's copy is not taken again");
    for p in &pieces {
        m.handle_frame(Time(3), ViewId(2), NodeId(1), p);
    }
    assert!(matches!(&events(&mut m)[..], [Event::Restore { from: NodeId(1), .. }]));
    m.handle(Time(4), refused(1));
    let evs = events(&mut m);
    assert!(
        matches!(&evs[..], [Event::StateRejected { from: NodeId(1), .. }, Event::Stopped(StopReason::StateUnavailable { reason, .. })]
            if reason.contains("node 0: a piece at") && reason.contains("node 1: bad")),
        "{evs:?}"
    );

    // Too long for this member, from both sources.
    let mut m = joiner(1 << 20);
    m.handle_frame(Time(2), ViewId(2), NodeId(0), &pieces[0]);
    let evs = events(&mut m);
    assert!(matches!(&evs[..], [Event::StateRejected { reason, .. }] if reason.contains("state_len_max")), "{evs:?}");
    m.handle_frame(Time(2), ViewId(2), NodeId(1), &pieces[0]);
    let evs = events(&mut m);
    assert!(
        matches!(&evs[..], [Event::StateRejected { .. }, Event::Stopped(StopReason::StateUnavailable { .. })]),
        "{evs:?}"
    );
}

/// A source whose state is longer than its `state_len_max` tells the new members so, and a
/// new member whose every source refused stops at once instead of at the transfer timeout.
#[test]
fn a_source_that_cannot_send_a_state_says_so_and_the_joiner_stops_at_once() {
    let mut next = next_view(2, &[0, 9]);
    next.joined = vec![NodeId(9)];
    next.transfers = vec![StateTransfer { shard: shard0(), from: vec![NodeId(0)], to: vec![NodeId(9)] }];
    // The source.
    let mut c = config(0, false);
    c.state_len_max = 4;
    let mut source = Member::new(c);
    source.enter_view(Rc::new(next.clone()));
    let _ = commands(&mut source);
    source.handle(Time(1), Input::Connected { view: ViewId(2), memory: table(&next) });
    let _ = commands(&mut source);
    // (Entering a view it is a source in, as in a restart view, it takes a snapshot.)
    let evs = events(&mut source);
    assert!(evs.contains(&Event::TakeSnapshot { view: ViewId(2), shard: shard0() }), "{evs:?}");
    source.handle(Time(2), Input::SnapshotTaken { view: ViewId(2), shard: shard0(), state: Some(vec![0; 5]) });
    let reason = "5 bytes, above state_len_max (4)".to_string();
    assert_eq!(events(&mut source), vec![Event::StateNotSent { shard: shard0(), reason: reason.clone() }]);
    let refusal = ViewFrame::StateRefused { view: ViewId(2), shard: shard0(), reason: reason.clone() }.encode();
    assert_eq!(
        without_pushes(commands(&mut source)),
        vec![Command::SendFrames { view: ViewId(2), to: vec![NodeId(9)], frames: vec![Rc::new(refusal.clone())] }]
    );
    // The joiner.
    let mut joiner = Member::new(config(9, false));
    joiner.enter_view(Rc::new(next.clone()));
    joiner.handle(Time(1), Input::Connected { view: ViewId(2), memory: table(&next) });
    let _ = (commands(&mut joiner), events(&mut joiner));
    joiner.handle_frame(Time(2), ViewId(2), NodeId(0), &refusal);
    let why = format!("refused to send it: {reason}");
    assert_eq!(
        events(&mut joiner),
        vec![
            Event::StateRejected { shard: shard0(), from: NodeId(0), reason: why.clone() },
            Event::Stopped(StopReason::StateUnavailable { shard: shard0(), reason: format!("node 0: {why}") }),
        ]
    );
}

fn answer(a: Answer) -> Vec<u8> {
    Control::Answer(a).encode()
}

/// A joiner asks its contact, follows a redirect, asks the contact again after silence, takes
/// an id in use as "not removed yet" for a grace, and enters the view it is welcomed to.
#[test]
fn a_joiner_follows_redirects_retries_and_enters_its_welcome() {
    let mut m = Member::<HeapMemory>::new(config(9, false));
    m.join(Time(0), address(1));
    let request = control(&Control::Join { version: JOIN_VERSION, node: NodeId(9), address: address(9), app: 0 });
    let ask = |to: u32| Command::SendControl { to: address(to), message: request.clone(), report: true };
    assert_eq!(commands(&mut m), vec![ask(1)]);
    let redirect = Answer::Refused(JoinRefusal::NotLeader { leader: NodeId(0), address: address(0) });
    m.handle_control(Time(10), NodeId(1), &answer(redirect));
    assert_eq!(commands(&mut m), vec![ask(0)]);
    assert_eq!(
        events(&mut m),
        vec![Event::Waiting("asking a0 to let this member in: node 1 redirected to its leader node 0".into())]
    );
    // The leader answers nothing: after the retry period the contact is asked again.
    assert_eq!(m.poll_timeout(), Some(Time(10 + 2 * S)));
    m.handle(Time(10 + 2 * S), Input::Tick);
    assert_eq!(commands(&mut m), vec![ask(1)]);
    // "Id in use" (an earlier life not removed yet) is asked again until the grace ends.
    m.handle_control(Time(3 * S), NodeId(0), &answer(Answer::Refused(JoinRefusal::IdInUse(NodeId(9)))));
    assert_eq!(commands(&mut m), vec![]);
    m.handle(Time(5 * S), Input::Tick);
    assert_eq!(commands(&mut m), vec![ask(1)]);
    let next = next_view(3, &[0, 1, 9]);
    m.handle_control(Time(6 * S), NodeId(0), &answer(Answer::Welcome(Box::new(next.clone()))));
    assert_eq!(commands(&mut m), vec![Command::Connect { next: Rc::new(next.clone()) }]);
    let _ = events(&mut m);
    m.handle(Time(6 * S + 1), Input::Connected { view: ViewId(3), memory: table(&next) });
    assert!(m.is_ready());
    assert_eq!(events(&mut m)[0], Event::Installed(ViewChange::of(&next, NodeId(9))));
}

/// An id still in use after the grace is a refusal; no welcome within the join timeout is a
/// timeout naming the last member asked.
#[test]
fn a_joiner_gives_up_with_a_typed_error() {
    let mut m = Member::<HeapMemory>::new(config(9, false));
    m.join(Time(0), address(1));
    let _ = commands(&mut m);
    m.handle_control(Time(1), NodeId(1), &answer(Answer::Refused(JoinRefusal::IdInUse(NodeId(9)))));
    let grace = config(9, false).id_in_use_grace_ns();
    m.handle_control(Time(1 + grace), NodeId(1), &answer(Answer::Refused(JoinRefusal::IdInUse(NodeId(9)))));
    let evs = events(&mut m);
    assert_eq!(evs.last(), Some(&Event::EnterFailed(EnterError::Refused(JoinRefusal::IdInUse(NodeId(9))))), "{evs:?}");
    assert_eq!(m.poll_timeout(), None);
    let mut m = Member::<HeapMemory>::new(config(9, false));
    m.join(Time(0), address(1));
    m.handle(Time(5), Input::ControlNotSent { to: address(1) });
    m.handle(Time(30 * S), Input::Tick);
    let evs = events(&mut m);
    assert_eq!(
        evs.last(),
        Some(&Event::EnterFailed(EnterError::Timeout {
            waited_ms: 30_000,
            contact: address(1),
            asked: address(1),
            reason: Some("a1 could not be reached".into()),
        })),
        "{evs:?}"
    );
}

fn offer_of(view: &NextView, logs: &[(u16, u32, u64)]) -> Offer {
    Offer {
        saved: view.view.clone(),
        logs: logs
            .iter()
            .map(|&(s, v, seq)| {
                (ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(s) }, Version::new(ViewId(v), seq))
            })
            .collect(),
        damaged: Default::default(),
        proposed: Vec::new(),
        newest_file: ViewId(0),
    }
}

/// Member-core finding 9: a member restarted with its own command (no contact) first asks the
/// members of its saved view whether a group runs; a running one redirects it to its leader,
/// and it offers its logs there as a joiner instead of waiting for a restart quorum.
#[test]
fn a_restarting_member_without_a_contact_finds_the_running_group() {
    let saved = next_view(4, &[0, 1, 2]);
    let mut m = Member::<HeapMemory>::new(config(0, true));
    m.restart(Time(0), offer_of(&saved, &[(0, 4, 7)]), saved.addresses.clone(), None);
    let probe = |leading| {
        let c = Control::Restart {
            version: JOIN_VERSION,
            node: NodeId(0),
            address: address(0),
            app: 0,
            offer: offer_of(&saved, &[(0, 4, 7)]),
            leading,
        };
        control(&c)
    };
    assert_eq!(
        commands(&mut m),
        vec![
            Command::SendControl { to: address(1), message: probe(true), report: true },
            Command::SendControl { to: address(2), message: probe(true), report: true },
        ]
    );
    let redirect = Answer::Refused(JoinRefusal::NotLeader { leader: NodeId(1), address: address(1) });
    m.handle_control(Time(10), NodeId(2), &answer(redirect));
    assert_eq!(commands(&mut m), vec![Command::SendControl { to: address(1), message: probe(false), report: true }]);
    // It never leads a restart now: it asks the leader again after silence, until the running
    // group welcomes it.
    m.handle(Time(5 * S), Input::Tick);
    assert_eq!(commands(&mut m), vec![Command::SendControl { to: address(1), message: probe(false), report: true }]);
    assert!(m.offers().is_empty());
    let next = next_view(6, &[1, 2, 0]);
    m.handle_control(Time(5 * S), NodeId(1), &answer(Answer::Welcome(Box::new(next.clone()))));
    assert_eq!(commands(&mut m), vec![Command::Connect { next: Rc::new(next) }]);
}

/// With no running group (every member asked is restarting too, or unreachable), it leads:
/// offers collected until the quorum, then the restart view welcomed and entered.
#[test]
fn with_no_running_group_a_restarting_member_leads() {
    let saved = next_view(4, &[0, 1, 2]);
    let mut m = Member::<HeapMemory>::new(config(0, true));
    m.restart(Time(0), offer_of(&saved, &[(0, 4, 7)]), saved.addresses.clone(), None);
    let _ = commands(&mut m);
    m.handle_control(Time(1), NodeId(1), &answer(Answer::Refused(JoinRefusal::NotRunning)));
    assert_eq!(m.offers(), vec![NodeId(0)], "led before every member asked answered");
    m.handle(Time(2), Input::ControlNotSent { to: address(2) });
    let evs = events(&mut m);
    assert!(
        evs.contains(&Event::Waiting(
            "1 of the 3 members of view 4 are back; a majority is needed"
                .replace("1 of", "leading the restart, waiting: 1 of")
        )),
        "{evs:?}"
    );
    // Member 1's offer completes a majority; its log is the longest: it sends.
    let offer = Control::Restart {
        version: JOIN_VERSION,
        node: NodeId(1),
        address: address(1),
        app: 0,
        offer: offer_of(&saved, &[(0, 4, 9)]),
        leading: false,
    };
    m.handle_control(Time(3), NodeId(1), &offer.encode());
    let c = commands(&mut m);
    let [Command::SendControl { to, message, report: false }, Command::Connect { next }] = &c[..] else {
        panic!("{c:?}")
    };
    assert_eq!(to, &address(1));
    assert_eq!(next.view.members, vec![NodeId(0), NodeId(1)]);
    assert_eq!(next.view.id, ViewId(5));
    assert_eq!(next.transfers, vec![StateTransfer { shard: shard0(), from: vec![NodeId(1)], to: vec![NodeId(0)] }]);
    assert_eq!(Control::decode(message).unwrap(), Control::Answer(Answer::Welcome(Box::new((**next).clone()))));
}

/// A running group and a restart offer: a group not past the saved view refuses it (a new
/// group, perhaps), a group where the offering member is still in the view says "id in use"
/// (asked again), a group past it admits it as a joiner returning with its logs.
#[test]
fn a_running_member_judges_a_restart_offer() {
    let mut net = Net::new(&[0, 1, 2], false);
    let mut offer_from = |node: u32, saved: &NextView| {
        let c = Control::Restart {
            version: JOIN_VERSION,
            node: NodeId(node),
            address: address(node),
            app: 0,
            offer: offer_of(saved, &[(0, saved.view.id.0, 3)]),
            leading: false,
        };
        net.member(0).handle_control(Time(10), NodeId(node), &c.encode());
        commands(net.member(0))
    };
    let refused = |r| {
        vec![Command::SendControl {
            to: address(2),
            message: control(&Control::Answer(Answer::Refused(r))),
            report: false,
        }]
    };
    assert_eq!(offer_from(2, &next_view(0, &[0, 1, 2])), refused(JoinRefusal::IdInUse(NodeId(2))));
    let refused = |r| {
        vec![Command::SendControl {
            to: address(7),
            message: control(&Control::Answer(Answer::Refused(r))),
            report: false,
        }]
    };
    assert_eq!(offer_from(7, &next_view(3, &[7, 8])), refused(JoinRefusal::NotRestarted { view: 0, saved: 3 }));
    // A group past the saved view admits it, as a joiner returning with its logs once its
    // listener answered.
    let mut net = Net::at(5, &[0, 1, 2], false);
    let c = Control::Restart {
        version: JOIN_VERSION,
        node: NodeId(7),
        address: address(7),
        app: 0,
        offer: offer_of(&next_view(3, &[0, 7]), &[(0, 3, 3)]),
        leading: false,
    };
    let leader = net.member(0);
    leader.handle_control(Time(10), NodeId(7), &c.encode());
    assert_eq!(
        commands(leader),
        vec![Command::SendControl {
            to: address(7),
            message: control(&Control::Answer(Answer::Pending)),
            report: true
        }]
    );
    leader.handle(Time(20), Input::ControlSent { to: address(7) });
    let _ = commands(leader);
    let node = leader.node().unwrap();
    let row = node.row_range(NodeId(0)).unwrap().start + node.row_layout().gms.changes;
    let change =
        crate::protocol::Change::decode_for_tests(node.memory().slice(row..row + crate::protocol::sst::CHANGE_LEN));
    assert_eq!(change, Ok(crate::protocol::Change::Add { node: NodeId(7), address: address(7), returning: true }));
}

/// One way to stop: a member that cannot save a proposal stops (its acknowledgement never
/// goes into its row), tells why once, delivers and sends nothing more.
#[test]
fn a_member_that_cannot_save_stops_once_and_sends_nothing_more() {
    let mut net = Net::new(&[0, 1, 2], true);
    net.member(0).handle_control(Time(100), NodeId(9), &join(9));
    let _ = commands(net.member(0));
    net.member(0).handle(Time(110), Input::ControlSent { to: address(9) });
    net.settle(&[]);
    let proposal = net.take_commands(0);
    let [Command::SaveProposal { view, members }] = &proposal[..] else { panic!("{proposal:?}") };
    net.member(0).handle(Time(200), Input::ProposalSaved { view: *view, members: members.clone() });
    net.settle(&[]);
    let _ = net.take_events(1);
    let m = net.member(1);
    m.handle(Time(300), Input::SaveFailed { reason: "the disk is gone".into() });
    let stop = StopReason::Failed("the disk is gone".into());
    assert_eq!(events(m), vec![Event::Stopped(stop.clone())]);
    m.handle(Time(400), Input::Tick);
    assert_eq!(commands(m), vec![], "a stopped member sent something");
    assert_eq!(m.stopped(), Some(&stop));
    assert_eq!(m.deliver(|_| {}), 0);
    assert_eq!(m.send(Time(500), shard0(), 4, |_| {}), Err(crate::protocol::SendError::Stopped(stop.to_string())));
    assert_eq!(m.poll_timeout(), None);
    // A second failure says nothing more.
    m.handle(Time(600), Input::Fatal("again".into()));
    assert_eq!(events(m), vec![]);
}

/// After a view change the old view lingers: a beat every heartbeat period, members heard on
/// it count as alive, and it closes once every member of the new view showed a heartbeat in
/// it (or after its time).
#[test]
fn the_old_view_lingers_until_everyone_moved_on() {
    let mut net = Net::new(&[0, 1, 2], false);
    for i in [0, 1] {
        net.member(i).handle(Time(100), Input::ReportFailure(NodeId(2)));
    }
    net.settle(&[2]);
    let next = next_view(1, &[0, 1]);
    let c = net.take_commands(0);
    assert!(matches!(&c[..], [Command::Connect { next: n }] if n.view == next.view), "{c:?}");
    let beat = |view: u32| Rc::new(ViewFrame::Alive { view: ViewId(view) }.encode());
    let m = net.member(0);
    m.handle(Time(1_000), Input::Connected { view: ViewId(1), memory: table(&next) });
    assert!(m.poll_timeout().is_some_and(|t| t <= Time(1_000)), "the first beat is due at once");
    m.handle(Time(1_000), Input::Tick);
    let c = without_pushes(commands(m));
    assert_eq!(c, vec![Command::Beat { view: ViewId(0), to: vec![NodeId(1), NodeId(2)], frame: beat(1) }]);
    // Member 1 has not shown a heartbeat in view 1 yet: still lingering a period later.
    m.handle(Time(1_000 + S), Input::Tick);
    let c = without_pushes(commands(m));
    assert_eq!(c, vec![Command::Beat { view: ViewId(0), to: vec![NodeId(1), NodeId(2)], frame: beat(1) }]);
    m.handle(Time(1_000 + S), Input::HeardOnOldView { view: ViewId(0), peers: vec![NodeId(1)] });
    // Member 1 installs and its heartbeat arrives: view 0 closes.
    net.member(1).handle(Time(1_000), Input::Connected { view: ViewId(1), memory: table(&next) });
    net.settle(&[2]);
    let c = without_pushes(net.take_commands(0));
    assert!(c.contains(&Command::CloseView { view: ViewId(0), members: vec![NodeId(1), NodeId(2)] }), "{c:?}");
}

/// Two members restarting without a contact at once: the larger id follows the smaller, and
/// redirects members that ask it.
#[test]
fn of_two_would_be_restart_leaders_the_larger_id_follows() {
    let saved = next_view(4, &[0, 1, 2]);
    let mut m = Member::<HeapMemory>::new(config(1, true));
    m.restart(Time(0), offer_of(&saved, &[(0, 4, 7)]), saved.addresses.clone(), None);
    let _ = commands(&mut m);
    let probe = Control::Restart {
        version: JOIN_VERSION,
        node: NodeId(0),
        address: address(0),
        app: 0,
        offer: offer_of(&saved, &[(0, 4, 9)]),
        leading: true,
    };
    m.handle_control(Time(1), NodeId(0), &probe.encode());
    let own = control(&Control::Restart {
        version: JOIN_VERSION,
        node: NodeId(1),
        address: address(1),
        app: 0,
        offer: offer_of(&saved, &[(0, 4, 7)]),
        leading: false,
    });
    assert_eq!(commands(&mut m), vec![Command::SendControl { to: address(0), message: own, report: true }]);
    // Member 2 asks it: it redirects to 0.
    m.handle_control(Time(2), NodeId(2), &join(2));
    let refusal = JoinRefusal::NotLeader { leader: NodeId(0), address: address(0) };
    assert_eq!(
        commands(&mut m),
        vec![Command::SendControl {
            to: address(2),
            message: control(&Control::Answer(Answer::Refused(refusal))),
            report: false
        }]
    );
}
