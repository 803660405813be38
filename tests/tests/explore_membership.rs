//! Exhaustive exploration of small membership configurations (TESTING.md tier T2): every
//! interleaving of deliveries, a crash, failure notices, a graceful leave, a false suspicion, a
//! join and a few sends, judged by the same properties as the simulator's checkers (see
//! `derecho_tests::explore`).

use derecho::protocol::NodeId;
use derecho_tests::explore::{Bound, explore};

fn assert_complete(name: &str, bound: &Bound) {
    let found = explore(bound).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{name}: {found:?}");
    assert!(found.complete, "{name}: the bound of {} worlds was reached: {found:?}", bound.max_worlds);
    assert!(found.finals > 0 && found.max_view >= 1, "{name}: no view change was explored: {found:?}");
}

#[test]
fn a_member_crash_with_one_message_in_flight() {
    assert_complete(
        "crash",
        &Bound {
            members: 3,
            senders: vec![(NodeId(1), 1)],
            crash: Some(NodeId(2)),
            join: None,
            leave: None,
            suspect: None,
            max_worlds: 400_000,
        },
    );
}

#[test]
fn the_leader_crash_with_a_message_in_flight() {
    assert_complete(
        "leader crash",
        &Bound {
            members: 3,
            senders: vec![(NodeId(1), 1)],
            crash: Some(NodeId(0)),
            join: None,
            leave: None,
            suspect: None,
            max_worlds: 400_000,
        },
    );
}

#[test]
fn a_join() {
    // Every survivor of the shard sends the joiner its state, so a join alone already has many
    // interleavings; messages in flight across a view change are explored with the crashes.
    assert_complete(
        "join",
        &Bound {
            members: 3,
            senders: vec![],
            crash: None,
            join: Some(NodeId(9)),
            leave: None,
            suspect: None,
            max_worlds: 400_000,
        },
    );
}

#[test]
fn a_leave_with_a_message_in_flight() {
    assert_complete(
        "leave",
        &Bound {
            members: 3,
            senders: vec![(NodeId(1), 1)],
            crash: None,
            join: None,
            leave: Some(NodeId(2)),
            suspect: None,
            max_worlds: 400_000,
        },
    );
}

#[test]
fn the_leader_leaves_with_a_message_in_flight() {
    assert_complete(
        "leader leave",
        &Bound {
            members: 3,
            senders: vec![(NodeId(1), 1)],
            crash: None,
            join: None,
            leave: Some(NodeId(0)),
            suspect: None,
            max_worlds: 400_000,
        },
    );
}

#[test]
fn a_false_suspicion_with_a_message_in_flight() {
    // Member 1 suspects member 2, which runs on and is removed, while member 0 sends.
    assert_complete(
        "false suspicion",
        &Bound {
            members: 3,
            senders: vec![(NodeId(0), 1)],
            crash: None,
            join: None,
            leave: None,
            suspect: Some((NodeId(1), NodeId(2))),
            max_worlds: 400_000,
        },
    );
}
