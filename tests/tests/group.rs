//! The membership driver (`Group`) over loopback TCP, members on one executor: bootstrap and
//! joins (with a redirect to the leader), a group that waits until it is adequate, a member that
//! fails and the survivors that continue in the next view, a joiner that catches up through
//! state transfer, refusals with typed errors, and a graceful leave.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use derecho::driver::{
    AppError, Application, Group, GroupBuilder, GroupEvent, JoinError, State, TransportKind, ViewChange,
};
use derecho::protocol::{
    Delivered, DeliveryMode, JoinRefusal, MembershipConfig, NodeId, OneShard, ShardIndex, ShardRef, StopReason,
    SubgroupId, Version,
};
use derecho::runtime::time;
use derecho::{Builder, TcpListener};

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const WAIT: Duration = Duration::from_secs(20);

/// The application: every delivered (sender, value), in order; its state is the whole log.
#[derive(Default)]
struct Log {
    entries: Vec<(u32, u64)>,
    views: Vec<ViewChange>,
}

#[derive(Clone, Default)]
struct App(Rc<RefCell<Log>>);

impl Application for App {
    fn deliver(&mut self, m: Delivered<'_>) {
        let v = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
        self.0.borrow_mut().entries.push((m.sender.0, v));
    }

    fn snapshot(&mut self, _shard: ShardRef) -> State {
        let bytes: Vec<u8> = self
            .0
            .borrow()
            .entries
            .iter()
            .flat_map(|(s, v)| s.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect();
        State::Ready(bytes)
    }

    fn restore(&mut self, _shard: ShardRef, state: &[u8]) -> Result<(), AppError> {
        if !state.len().is_multiple_of(12) {
            return Err(format!("{} bytes is not a whole number of entries", state.len()).into());
        }
        self.0.borrow_mut().entries = state
            .chunks(12)
            .map(|c| (u32::from_le_bytes(c[..4].try_into().unwrap()), u64::from_le_bytes(c[4..].try_into().unwrap())))
            .collect();
        Ok(())
    }

    fn view_installed(&mut self, change: &ViewChange) {
        self.0.borrow_mut().views.push(change.clone());
    }
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn builder(me: u32, min_members: usize) -> GroupBuilder {
    let membership = MembershipConfig {
        heartbeat: Duration::from_millis(5),
        suspect_after: Duration::from_millis(300),
        ..MembershipConfig::default()
    };
    GroupBuilder::new(NodeId(me), local())
        .insecure()
        .name("group-test")
        .membership(membership)
        .layout(OneShard { mode: DeliveryMode::Ordered, min_members })
        .connect_timeout(Duration::from_secs(3))
        .join_timeout(WAIT)
}

async fn send_values(g: &Group, from: u64, count: u64) {
    for v in from..from + count {
        g.send(SHARD, 8, |b| b.copy_from_slice(&v.to_le_bytes())).await.expect("send");
    }
}

/// Waits (bounded) until `cond` holds, failing with `what` and the state `describe` gives.
async fn until(what: &str, mut cond: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}; {}", describe());
        time::sleep(Duration::from_millis(2)).await;
    }
}

fn members(g: &Group) -> Vec<u32> {
    g.members().iter().map(|n| n.0).collect()
}

#[test]
fn members_join_fail_and_catch_up_through_state_transfer() {
    Builder::new().build().unwrap().block_on(join_fail_and_catch_up(builder));
}

/// The same over shared memory: each view in a namespace of its own, joins through the TCP
/// listener; every file is gone once the members closed.
#[test]
fn members_join_fail_and_catch_up_over_shared_memory() {
    let dir = std::path::PathBuf::from(format!("/dev/shm/derecho-group-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory in /dev/shm");
    let d = dir.clone();
    let shm = move |me, min| builder(me, min).transport(TransportKind::Shm).shm_dir(d.clone());
    Builder::new().build().unwrap().block_on(join_fail_and_catch_up(shm));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

async fn join_fail_and_catch_up(builder: impl Fn(u32, usize) -> GroupBuilder) {
    {
        let apps: Vec<App> = (0..4).map(|_| App::default()).collect();
        let a = builder(0, 2).start(apps[0].clone()).await.expect("start");
        let contact = a.local_addr();
        // Alone, the group is inadequate: nothing can be delivered yet.
        assert!(a.view().shards.is_empty(), "a view of one member is inadequate with min_members 2");
        let b = builder(1, 2).join(contact, apps[1].clone()).await.expect("b joins");
        // C asks B, which is not the leader: it is redirected to A.
        let c = builder(2, 2).join(b.local_addr(), apps[2].clone()).await.expect("c joins via a redirect");
        for g in [&a, &b, &c] {
            let v = g.wait_view(WAIT, |v| v.members.len() == 3).await.expect("a view of three");
            assert_eq!(v.members, vec![NodeId(0), NodeId(1), NodeId(2)]);
        }
        assert_eq!((a.my_rank(), b.my_rank(), c.my_rank()), (0, 1, 2));

        // Every member sends; everyone delivers the same sequence.
        futures::join!(send_values(&a, 0, 100), send_values(&b, 1000, 100), send_values(&c, 2000, 100));
        let logs = || apps.iter().map(|a| a.0.borrow().entries.len()).collect::<Vec<_>>();
        until(
            "all 300 messages delivered at the three members",
            || logs()[..3].iter().all(|&n| n >= 300),
            || format!("delivered {:?}", logs()),
        )
        .await;
        let first = apps[0].0.borrow().entries.clone();
        assert_eq!(first.len(), 300);
        for app in &apps[1..3] {
            assert_eq!(app.0.borrow().entries, first, "a member delivered another sequence");
        }

        // C fails (its connections close): A and B install a view without it and go on.
        c.close().await;
        drop(c);
        for g in [&a, &b] {
            g.wait_view(WAIT, |v| v.members == [NodeId(0), NodeId(1)]).await.expect("a view without C");
        }
        futures::join!(send_values(&a, 100, 50), send_values(&b, 1100, 50));
        until(
            "the next view's messages delivered",
            || logs()[0] >= 400 && logs()[1] >= 400,
            || format!("delivered {:?}", logs()),
        )
        .await;
        assert_eq!(apps[0].0.borrow().entries, apps[1].0.borrow().entries);

        // D joins and receives the log as state, then delivers what follows.
        let d = builder(3, 2).join(contact, apps[3].clone()).await.expect("d joins");
        for g in [&a, &b, &d] {
            g.wait_view(WAIT, |v| v.members == [NodeId(0), NodeId(1), NodeId(3)]).await.expect("a view with D");
        }
        futures::join!(send_values(&a, 200, 20), send_values(&d, 3000, 20));
        until("D caught up", || logs()[3] >= 440 && logs()[0] >= 440, || format!("delivered {:?}", logs())).await;
        assert_eq!(apps[3].0.borrow().entries, apps[0].0.borrow().entries, "D's state plus deliveries differ");
        assert_eq!(apps[1].0.borrow().entries, apps[0].0.borrow().entries);
        let views: Vec<Vec<u32>> =
            apps[0].0.borrow().views.iter().map(|v| v.view.members.iter().map(|n| n.0).collect()).collect();
        assert_eq!(views.last().unwrap(), &vec![0, 1, 3], "views seen by A: {views:?}");
        assert_eq!(members(&d), vec![0, 1, 3]);
        for g in [a, b, d] {
            g.close().await;
        }
    }
}

#[test]
fn a_local_frontier_is_published_when_nothing_else_moves() {
    Builder::new().build().unwrap().block_on(async {
        let a = builder(0, 2).start(App::default()).await.expect("start");
        let b = builder(1, 2).join(a.local_addr(), App::default()).await.expect("b joins");
        a.wait_view(WAIT, |v| v.members.len() == 2).await.unwrap();
        send_values(&a, 0, 1).await;
        let delivered = || (a.delivered_count(SHARD), b.delivered_count(SHARD));
        until("both deliver", || delivered() == (Some(1), Some(1)), || format!("{:?}", delivered())).await;
        // The group is quiet and B reports nothing: only A's own frontier moves, and A's
        // handles must see it (no other progress comes along to publish it).
        let v = Version::from_u64(0);
        a.sender().report_persisted(SHARD, v);
        until(
            "A reads its own frontier",
            || a.sender().persisted(SHARD) == (Some(v), None),
            || format!("{:?}", a.sender().persisted(SHARD)),
        )
        .await;
        b.sender().report_persisted(SHARD, v);
        until(
            "A reads the global frontier",
            || a.sender().persisted(SHARD) == (Some(v), Some(v)),
            || format!("{:?}", a.sender().persisted(SHARD)),
        )
        .await;
        b.close().await;
        a.close().await;
    });
}

#[test]
fn refusals_are_typed_and_leaving_is_graceful() {
    Builder::new().build().unwrap().block_on(async {
        let a = builder(0, 1).start(|_: Delivered<'_>| {}).await.expect("start");
        let b = builder(1, 1).join(a.local_addr(), |_: Delivered<'_>| {}).await.expect("b joins");
        b.wait_view(WAIT, |v| v.members.len() == 2).await.unwrap();
        // An id already in the view.
        let e = builder(1, 1).join(a.local_addr(), |_: Delivered<'_>| {}).await.expect_err("a duplicate id");
        assert!(matches!(e, JoinError::Refused(JoinRefusal::IdInUse(NodeId(1)))), "{e}");
        // Nobody listening at the contact: a timeout naming it, not a hang.
        let dead = TcpListener::bind(local()).unwrap();
        let dead_addr = dead.local_addr();
        drop(dead);
        let e = builder(5, 1)
            .join_timeout(Duration::from_millis(500))
            .join(dead_addr, |_: Delivered<'_>| {})
            .await
            .expect_err("no group there");
        assert!(matches!(e, JoinError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains(&dead_addr.to_string()), "{e}");

        // B leaves: it stops with Left, A installs a view of itself and still delivers.
        b.leave(WAIT).await.expect("leave");
        assert!(matches!(b.stopped(), Some(StopReason::Left(_))), "{:?}", b.stopped());
        let e = b.send(SHARD, 8, |_| {}).await.expect_err("a member that left cannot send");
        assert!(e.to_string().contains("closed") || e.to_string().contains("stopped"), "{e}");
        a.wait_view(WAIT, |v| v.members == [NodeId(0)]).await.expect("A alone");
        let mut saw_install = false;
        while let Some(e) = a.try_next_event() {
            if let GroupEvent::ViewInstalled(c) = e {
                saw_install |= c.departed == [NodeId(1)];
            }
        }
        assert!(saw_install, "A reported the view without B");
        send_values(&a, 0, 3).await;
        until("A delivers alone", || a.delivered_count(SHARD) == Some(3), || format!("{:?}", a.delivered_count(SHARD)))
            .await;
        a.close().await;
    });
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn view_changes_do_not_leak_connections() {
    Builder::new().build().unwrap().block_on(async {
        let a = builder(0, 1).start(|_: Delivered<'_>| {}).await.expect("start");
        let b = builder(1, 1).join(a.local_addr(), |_: Delivered<'_>| {}).await.expect("b joins");
        let churn = |round: u32| {
            let contact = a.local_addr();
            async move {
                let c = builder(2, 1).join(contact, |_: Delivered<'_>| {}).await.expect("c joins");
                c.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
                c.close().await;
            }
        };
        churn(0).await;
        for g in [&a, &b] {
            g.wait_view(WAIT, |v| v.members.len() == 2).await.unwrap();
        }
        let base = open_fds();
        for round in 1..=5 {
            churn(round).await;
            for g in [&a, &b] {
                g.wait_view(WAIT, |v| v.members.len() == 2).await.unwrap();
            }
        }
        // Ten more view changes; each would leave a socket per peer and member if old
        // views' transports were never released.
        until(
            "the old views' connections closed",
            || open_fds() <= base + 2,
            || format!("{} descriptors open, {base} after the first round", open_fds()),
        )
        .await;
        a.close().await;
        b.close().await;
    });
}

#[test]
fn simultaneous_joins_share_view_changes_and_each_gets_the_state() {
    Builder::new().build().unwrap().block_on(async {
        let apps: Vec<App> = (0..5).map(|_| App::default()).collect();
        let a = builder(0, 1).start(apps[0].clone()).await.expect("start");
        send_values(&a, 0, 25).await;
        until("A delivers alone", || apps[0].0.borrow().entries.len() == 25, String::new).await;
        let contact = a.local_addr();
        let (b, c, d, e) = futures::join!(
            builder(1, 1).join(contact, apps[1].clone()),
            builder(2, 1).join(contact, apps[2].clone()),
            builder(3, 1).join(contact, apps[3].clone()),
            builder(4, 1).join(contact, apps[4].clone()),
        );
        let joiners = [b.expect("b"), c.expect("c"), d.expect("d"), e.expect("e")];
        a.wait_view(WAIT, |v| v.members.len() == 5).await.expect("five members");
        // Four joins cost fewer than four view changes: they are batched, as many per change
        // as keep the members already there a majority (one, then one, then two: PROTOCOLS
        // §3.5). A's first view is its own start.
        let changes = apps[0].0.borrow().views.len() - 1;
        assert!(changes <= 3, "{changes} view changes for four simultaneous joins");
        // Every joiner starts from A's history.
        for (i, app) in apps[1..].iter().enumerate() {
            assert_eq!(app.0.borrow().entries.len(), 25, "joiner {} did not receive the state", i + 1);
        }
        send_values(&joiners[3], 100, 5).await;
        let all = || apps.iter().all(|app| app.0.borrow().entries.len() == 30);
        until("everyone delivers the last messages", all, || {
            format!("{:?}", apps.iter().map(|a| a.0.borrow().entries.len()).collect::<Vec<_>>())
        })
        .await;
        for app in &apps[1..] {
            assert_eq!(app.0.borrow().entries, apps[0].0.borrow().entries);
        }
        a.close().await;
        for g in joiners {
            g.close().await;
        }
    });
}

#[test]
fn a_member_in_two_subgroups_delivers_each_in_its_own_order() {
    use derecho::protocol::{GroupLayout, Policy, SubgroupSpec};
    let layout = || {
        GroupLayout::new(vec![
            SubgroupSpec::new("all", Policy::AllMembers { min: 3 }),
            SubgroupSpec::new("pair", Policy::Fixed { shards: 1, per_shard: 2 }),
        ])
        .unwrap()
    };
    let pair = ShardRef { subgroup: SubgroupId(1), shard: ShardIndex(0) };
    Builder::new().build().unwrap().block_on(async {
        type Seen = Rc<RefCell<Vec<(ShardRef, u32, u64)>>>;
        let seen: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
        let app = |s: &Seen| {
            let s = s.clone();
            move |d: Delivered<'_>| {
                let v = u64::from_le_bytes(d.payload[..8].try_into().unwrap());
                s.borrow_mut().push((d.shard, d.sender.0, v));
            }
        };
        let a = builder(0, 1).layout(layout()).start(app(&seen[0])).await.expect("start");
        let b = builder(1, 1).layout(layout()).join(a.local_addr(), app(&seen[1])).await.expect("b");
        let c = builder(2, 1).layout(layout()).join(a.local_addr(), app(&seen[2])).await.expect("c");
        for g in [&a, &b, &c] {
            g.wait_view(WAIT, |v| v.shards.len() == 2).await.expect("both subgroups laid out");
        }
        // The pair is the two oldest members; the third is not in it and cannot send there.
        assert_eq!(a.view().shards[1].members, vec![NodeId(0), NodeId(1)]);
        let e = c.send(pair, 8, |_| {}).await.expect_err("not a member of the pair");
        assert!(e.to_string().contains("does not belong"), "{e}");
        for (g, base) in [(&a, 0u64), (&b, 100)] {
            for v in base..base + 10 {
                g.send(pair, 8, |buf| buf.copy_from_slice(&v.to_le_bytes())).await.unwrap();
                g.send(SHARD, 8, |buf| buf.copy_from_slice(&(v + 1000).to_le_bytes())).await.unwrap();
            }
        }
        let count = |i: usize, shard: ShardRef| seen[i].borrow().iter().filter(|e| e.0 == shard).count();
        until(
            "every delivery",
            || (0..3).all(|i| count(i, SHARD) == 20) && count(0, pair) == 20 && count(1, pair) == 20,
            || format!("{:?}", (0..3).map(|i| (count(i, SHARD), count(i, pair))).collect::<Vec<_>>()),
        )
        .await;
        assert_eq!(count(2, pair), 0, "the third member delivered in a shard it is not in");
        let order = |i: usize, shard: ShardRef| -> Vec<(u32, u64)> {
            seen[i].borrow().iter().filter(|e| e.0 == shard).map(|e| (e.1, e.2)).collect()
        };
        assert_eq!(order(0, pair), order(1, pair));
        assert_eq!(order(0, SHARD), order(1, SHARD));
        assert_eq!(order(0, SHARD), order(2, SHARD));
        for g in [a, b, c] {
            g.close().await;
        }
    });
}

/// An application whose state is a blob larger than one frame of a state (1 MiB).
#[derive(Clone, Default)]
struct Blob(Rc<RefCell<Vec<u8>>>);

impl Application for Blob {
    fn deliver(&mut self, _: Delivered<'_>) {}

    fn snapshot(&mut self, _shard: ShardRef) -> State {
        State::Ready(self.0.borrow().clone())
    }

    fn restore(&mut self, _shard: ShardRef, state: &[u8]) -> Result<(), AppError> {
        *self.0.borrow_mut() = state.to_vec();
        Ok(())
    }
}

/// A state of several pieces reaches the joiner whole, over both transports.
#[test]
fn a_large_state_travels_in_pieces() {
    let dir = std::path::PathBuf::from(format!("/dev/shm/derecho-group-blob-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory in /dev/shm");
    let blob: Vec<u8> = (0..(5 << 20) / 2 + 7).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for shm in [false, true] {
        let d = dir.clone();
        let make = move |me| {
            let b = builder(me, 1).name(if shm { "blob-shm" } else { "blob-tcp" });
            if shm { b.transport(TransportKind::Shm).shm_dir(d.clone()) } else { b }
        };
        let blob = blob.clone();
        Builder::new().build().unwrap().block_on(async move {
            let a_app = Blob(Rc::new(RefCell::new(blob.clone())));
            let a = make(0).start(a_app).await.expect("start");
            let b_app = Blob::default();
            let b = make(1).join(a.local_addr(), b_app.clone()).await.expect("b joins");
            assert_eq!(b_app.0.borrow().len(), blob.len(), "shm {shm}: the state's length");
            assert!(*b_app.0.borrow() == blob, "shm {shm}: the state differs");
            for g in [a, b] {
                g.close().await;
            }
        });
    }
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// An application whose disk failed: it cannot save a view it is about to acknowledge.
#[derive(Clone, Default)]
struct CannotSave(Rc<std::cell::Cell<u32>>);

impl Application for CannotSave {
    fn deliver(&mut self, _: Delivered<'_>) {}

    fn persistent(&self) -> bool {
        true
    }

    fn save_proposal(&mut self, _id: derecho::protocol::ViewId, _members: &[NodeId]) -> Result<(), AppError> {
        self.0.set(self.0.get() + 1);
        Err("the disk is gone".into())
    }
}

/// PROTOCOLS §4.1: a member acknowledges a view only once it saved it. C cannot save the view
/// that adds D: it stops with a fatal error before its acknowledgement leaves, so the leader
/// never installs a view with both C and D (had the acknowledgement left, A would have
/// committed that view, every member of it having acknowledged).
///
/// Over shared memory, where a push lands in the peers' memory at once while a member's
/// departure is noticed later: an acknowledgement that left would be counted.
#[test]
fn a_member_that_cannot_save_a_proposed_view_stops_without_acknowledging_it() {
    let dir = std::path::PathBuf::from(format!("/dev/shm/derecho-group-nosave-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory in /dev/shm");
    let d = dir.clone();
    let builder = move |me| builder(me, 1).name("nosave").transport(TransportKind::Shm).shm_dir(d.clone());
    Builder::new().build().unwrap().block_on(async {
        let a = builder(0).start(App::default()).await.expect("start");
        let b = builder(1).join(a.local_addr(), App::default()).await.expect("b joins");
        let cannot = CannotSave::default();
        let c = builder(2).join(a.local_addr(), cannot.clone()).await.expect("c joins");
        for g in [&a, &b, &c] {
            g.wait_view(WAIT, |v| v.members.len() == 3).await.expect("a view of three");
        }
        assert_eq!(cannot.0.get(), 0, "C acknowledged nothing yet (its own join needs no acknowledgement)");
        let d = builder(3).join(a.local_addr(), App::default()).await.expect("d joins");
        let deadline = Instant::now() + WAIT;
        let reason = loop {
            match time::timeout(deadline.saturating_duration_since(Instant::now()), c.next_event()).await {
                Ok(GroupEvent::Fatal(reason)) => break reason,
                Ok(_) => {}
                Err(_) => panic!("C did not stop within {WAIT:?}"),
            }
        };
        assert!(reason.contains("could not be saved") && reason.contains("the disk is gone"), "{reason}");
        assert_eq!(cannot.0.get(), 1, "C tried to save the view once");
        // A member that failed serves nothing more: its listener is closed.
        let refused = std::net::TcpStream::connect(c.local_addr());
        assert!(refused.is_err(), "C's listener still accepts connections after C failed");
        let v = a.wait_view(WAIT, |v| v.members.contains(&NodeId(3))).await.expect("D is in");
        assert_eq!(v.members, vec![NodeId(0), NodeId(1), NodeId(3)]);
        while let Some(e) = a.try_next_event() {
            if let GroupEvent::ViewInstalled(change) = e {
                let m = &change.view.members;
                assert!(
                    !(m.contains(&NodeId(2)) && m.contains(&NodeId(3))),
                    "A installed view {} with C and D: C's acknowledgement left",
                    change.view.id.0
                );
            }
        }
        for g in [a, b, d] {
            g.close().await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A member restarted right after it died may find its address still taken for a moment (the
/// kernel tears a killed process's io_uring down asynchronously): it tries again for up to the
/// connect timeout, then fails naming the address.
#[test]
fn a_member_waits_briefly_for_its_address_to_be_free() {
    Builder::new().build().unwrap().block_on(async {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        drop(derecho::spawn(async move {
            time::sleep(Duration::from_millis(100)).await;
            drop(held);
        }));
        let g = GroupBuilder::new(NodeId(0), addr)
            .insecure()
            .name("bind-retry")
            .start(|_: Delivered<'_>| {})
            .await
            .expect("started once the address was free");
        assert_eq!(g.local_addr(), addr);
        g.close().await;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = GroupBuilder::new(NodeId(0), taken.local_addr().unwrap())
            .insecure()
            .name("bind-retry")
            .connect_timeout(Duration::from_millis(200))
            .start(|_: Delivered<'_>| {})
            .await
            .expect_err("the address stays taken");
        assert!(e.to_string().contains(&taken.local_addr().unwrap().to_string()), "{e}");
    });
}
