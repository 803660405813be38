//! Persisted replicated objects (PROTOCOLS §4), members on one executor over loopback TCP: every
//! delivered ordered call lands in its shard's log on every member, stamped with a time that
//! goes forward; each member publishes its local persistence frontier and the global one is
//! their minimum; a joiner's log starts from the state it received; a member whose disk fills up
//! stops with a fatal error and never reports the versions it could not write.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use derecho::Builder;
use derecho::driver::{Group, GroupBuilder, GroupEvent};
use derecho::persist::{DurableLog, Hlc};
use derecho::protocol::{MembershipConfig, NodeId, ShardIndex, ShardRef, SubgroupId, Version};
use derecho::rpc::Service;
use derecho::runtime::time;
use derecho_examples::kv::{KvStore, KvStoreClient};

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const WAIT: Duration = Duration::from_secs(20);

fn builder(me: u32, name: &str) -> GroupBuilder {
    let membership = MembershipConfig {
        heartbeat: Duration::from_millis(5),
        suspect_after: Duration::from_millis(300),
        ..MembershipConfig::default()
    };
    GroupBuilder::new(NodeId(me), "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .insecure()
        .name(name)
        .membership(membership)
        .connect_timeout(Duration::from_secs(3))
}

struct Member {
    group: Group,
    service: Service,
    kv: KvStoreClient,
    /// The highest frontiers the `on_persisted` callback was told: local, global.
    seen: Rc<Cell<(Option<Version>, Option<Version>)>>,
}

async fn member(me: u32, name: &str, contact: Option<SocketAddr>, dir: &Path) -> Member {
    member_with(builder(me, name), contact, dir).await
}

async fn member_with(builder: GroupBuilder, contact: Option<SocketAddr>, dir: &Path) -> Member {
    let service = Service::new();
    service.host(SubgroupId(0), KvStore::default);
    service.persist_to(dir).expect("a log directory");
    let seen = Rc::new(Cell::new((None, None)));
    let s = seen.clone();
    service.on_persisted(move |shard, local, global| {
        assert_eq!(shard, SHARD);
        let (l, g) = s.get();
        // Frontiers told to the application only move forward within a view here.
        s.set((l.max(local), g.max(global)));
    });
    let group = service.start_or_join(builder, contact).await.expect("start, join or restart");
    let kv = KvStoreClient::new(service.handle::<KvStore>(SHARD));
    Member { group, service, kv, seen }
}

/// Removes a directory when dropped (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("derecho-persistence-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a temporary directory");
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The records of the one log in `dir` (recovered as after a crash).
async fn records(dir: &Path) -> Vec<(u64, u64, Vec<u8>)> {
    let logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), 1, "one log per shard: {logs:?}");
    let (_, recovered) = DurableLog::open(&logs[0]).await.expect("the log opens");
    assert_eq!(recovered.damage, None, "the log is intact");
    recovered.records
}

#[test]
fn every_replica_logs_every_call_and_the_global_frontier_is_their_minimum() {
    let tmp = TempDir::new("frontier");
    let dirs: Vec<PathBuf> = (0..4).map(|i| tmp.0.join(format!("member-{i}"))).collect();
    Builder::new().build().unwrap().block_on(async {
        let a = member(0, "persist-test", None, &dirs[0]).await;
        let b = member(1, "persist-test", Some(a.group.local_addr()), &dirs[1]).await;
        let c = member(2, "persist-test", Some(a.group.local_addr()), &dirs[2]).await;
        for m in [&a, &b, &c] {
            m.group.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        let mut last = Version::from_u64(0);
        for i in 0..50u32 {
            let m = [&a, &b, &c][i as usize % 3];
            let r = m.kv.put(&format!("k{}", i % 7), format!("v{i}").as_bytes()).await.expect("put");
            last = last.max(r.version);
        }
        // Awaiting the last version's global persistence: every member has it on disk. Each
        // member learns the others' frontiers through the table, so each waits for itself.
        for m in [&a, &b, &c] {
            m.service.handle::<KvStore>(SHARD).wait_persisted(last, WAIT).await.expect("globally persisted");
        }
        for m in [&a, &b, &c] {
            let (local, global) = m.service.persisted(SHARD);
            assert!(local >= Some(last), "{local:?} below {last}");
            assert!(global >= Some(last), "{global:?} below {last}");
            // The callback was told as the frontiers moved.
            let (told_local, told_global) = m.seen.get();
            assert!(told_local >= Some(last) && told_global >= Some(last), "told {told_local:?}, {told_global:?}");
        }
        // Every member logged the same 50 calls, in order, their times going forward; the two
        // that joined start from the state they received.
        let mut logs: Vec<Vec<(u64, u64, Vec<u8>)>> =
            futures::future::join_all(dirs[..3].iter().map(|d| records(d))).await;
        for log in &mut logs[1..] {
            assert_eq!(log[0].2[0], 0, "a joiner's first record is the state it received");
            log.remove(0);
        }
        assert_eq!(logs[0].len(), 50);
        for log in &logs {
            assert_eq!(log, &logs[0], "replicas logged different calls");
        }
        assert!(logs[0].windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "versions and times go forward");
        assert!(logs[0].iter().all(|(_, _, p)| p[0] == 1), "every record is an ordered call");
        assert_eq!(logs[0].last().unwrap().0, last.as_u64());
        let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
        let first_us = logs[0][0].1 >> derecho::persist::Hlc::LOGICAL_BITS;
        assert!(first_us <= now_us && now_us - first_us < 60_000_000, "the time is the callers' clock: {first_us}");

        // Reads by time: the value a key had at a time, at every replica, once that time is
        // durable everywhere; a later time is refused.
        let r1 = a.kv.put("timed", b"one").await.expect("put");
        time::sleep(Duration::from_millis(2)).await; // two distinct microseconds for the two puts
        let between = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
        time::sleep(Duration::from_millis(2)).await;
        let r2 = b.kv.put("timed", b"two").await.expect("put");
        for m in [&a, &b, &c] {
            m.service.handle::<KvStore>(SHARD).wait_persisted(r2.version, WAIT).await.expect("persisted");
        }
        for to in [NodeId(0), NodeId(1), NodeId(2)] {
            let at = c.kv.get_at_time(to, "timed", between).await.expect("query").expect("a stable time");
            assert_eq!(at, Some((r1.version.as_u64(), b"one".to_vec())), "at {to}");
            let before = c.kv.get_at_time(to, "timed", between - 1_000_000).await.expect("query");
            assert_eq!(before, Ok(None), "at {to}: nothing a second earlier");
            let later = c.kv.get_at_time(to, "timed", u64::MAX >> Hlc::LOGICAL_BITS).await.expect("query");
            assert!(later.is_err_and(|e| e.contains("stable time")), "at {to}: a future time answered");
        }

        // A joiner's log starts from the state it received, then follows the calls.
        let d = member(3, "persist-test", Some(a.group.local_addr()), &dirs[3]).await;
        d.group.wait_view(WAIT, |v| v.members.len() == 4).await.unwrap();
        // Before anything new is written, the frontier covers the joiner too: its state is
        // durable and reported at once.
        for m in [&a, &d] {
            m.service.handle::<KvStore>(SHARD).wait_persisted(r2.version, WAIT).await.expect("durable with the joiner");
        }
        let r = d.kv.put("after", b"join").await.expect("put after the join");
        d.service.handle::<KvStore>(SHARD).wait_persisted(r.version, WAIT).await.expect("persisted with the joiner");
        let joined = records(&dirs[3]).await;
        assert_eq!(joined.len(), 2, "the state, then the call");
        assert_eq!(joined[0].2[0], 0, "the first record is a state");
        assert!(joined[0].0 < joined[1].0 && joined[1].0 == r.version.as_u64());
        for g in [a.group, b.group, c.group, d.group] {
            g.close().await;
        }
    });
}

/// A 64 KiB tmpfs for member 2's log: the disk fills up under load. The member stops with a
/// fatal error, never reports the versions it could not write, and the others go on.
#[test]
fn a_full_disk_stops_the_member_and_loses_no_reported_version() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let tmp = TempDir::new("full");
    let small = tmp.0.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&small).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let dirs = [tmp.0.join("member-0"), tmp.0.join("member-1"), small.join("member-2")];
    Builder::new().build().unwrap().block_on(async {
        let a = member(0, "persist-full", None, &dirs[0]).await;
        let b = member(1, "persist-full", Some(a.group.local_addr()), &dirs[1]).await;
        let c = member(2, "persist-full", Some(a.group.local_addr()), &dirs[2]).await;
        for m in [&a, &b, &c] {
            m.group.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        // 1 KiB values: the 64 KiB disk is full after about sixty. The first ten are durable
        // everywhere before more come, so member 2 has reported a frontier.
        let value = vec![b'x'; 1024];
        let mut last = Version::from_u64(0);
        for i in 0..10u32 {
            last = last.max(a.kv.put(&format!("k{i}"), &value).await.expect("put").version);
        }
        let first = last;
        c.service.handle::<KvStore>(SHARD).wait_persisted(first, WAIT).await.expect("the first ten everywhere");
        for i in 10..200u32 {
            match a.kv.put(&format!("k{i}"), &value).await {
                Ok(r) => last = last.max(r.version),
                Err(e) => panic!("put {i} failed at member 0: {e}"),
            }
        }
        // Member 2 stopped with a fatal error naming the log.
        let deadline = Instant::now() + WAIT;
        let reason = loop {
            match time::timeout(deadline.saturating_duration_since(Instant::now()), c.group.next_event()).await {
                Ok(GroupEvent::Fatal(reason)) => break reason,
                Ok(_) => {}
                Err(_) => panic!("member 2 did not stop within {WAIT:?}"),
            }
        };
        assert!(reason.contains("log") && reason.contains("failed"), "{reason}");
        let (local, _) = c.service.persisted(SHARD);
        assert!(local >= Some(first), "member 2's frontier {local:?} is below what it reported before");
        assert!(local < Some(last), "member 2 reported {local:?} durable, beyond what fits");
        // Its log holds a valid prefix, and at least everything it reported.
        let log = std::fs::read_dir(&dirs[2])
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("a log");
        let (_, recovered) = DurableLog::open(&log).await.expect("the log opens");
        let on_disk = recovered.records.last().map(|r| r.0);
        assert!(on_disk >= local.map(|v| v.as_u64()), "reported {local:?}, on disk only {on_disk:?}");
        // The others remove it and persist everything.
        for m in [&a, &b] {
            m.group.wait_view(WAIT, |v| v.members == [NodeId(0), NodeId(1)]).await.expect("a view without 2");
        }
        let r = a.kv.put("after", b"the failure").await.expect("put");
        a.service.handle::<KvStore>(SHARD).wait_persisted(r.version, WAIT).await.expect("globally persisted");
        for g in [a.group, b.group, c.group] {
            g.close().await;
        }
    });
}

/// Every key's latest value and version in `m`'s replica.
fn contents(m: &Member, keys: &[String]) -> Vec<Option<(u64, Vec<u8>)>> {
    m.service.read::<KvStore, _>(SHARD, |s| keys.iter().map(|k| s.get(k)).collect()).expect("a replica")
}

#[test]
fn a_stopped_group_restarts_from_the_longest_log() {
    let tmp = TempDir::new("restart");
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.0.join(format!("member-{i}"))).collect();
    let keys: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
    Builder::new().build().unwrap().block_on(async {
        // First run: three members; member 2 stops halfway, so its log is the shortest.
        let a = member(0, "restart-test", None, &dirs[0]).await;
        let b = member(1, "restart-test", Some(a.group.local_addr()), &dirs[1]).await;
        let c = member(2, "restart-test", Some(a.group.local_addr()), &dirs[2]).await;
        for m in [&a, &b, &c] {
            m.group.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        let mut last = Version::from_u64(0);
        for i in 0..30u32 {
            let m = [&a, &b, &c][i as usize % 3];
            last = last.max(m.kv.put(&keys[i as usize % 9], format!("one-{i}").as_bytes()).await.expect("put").version);
        }
        a.service.handle::<KvStore>(SHARD).wait_persisted(last, WAIT).await.expect("globally persisted");
        c.group.close().await;
        for m in [&a, &b] {
            m.group.wait_view(WAIT, |v| v.members.len() == 2).await.unwrap();
        }
        for i in 0..20u32 {
            let m = [&a, &b][i as usize % 2];
            last = last.max(m.kv.put(&keys[i as usize % 9], format!("two-{i}").as_bytes()).await.expect("put").version);
        }
        a.service.handle::<KvStore>(SHARD).wait_persisted(last, WAIT).await.expect("globally persisted");
        let before = contents(&a, &keys);
        let at_first = a.service.read::<KvStore, _>(SHARD, |s| s.get_at("k0", last.as_u64())).unwrap();
        for m in [&a, &b] {
            m.group.close().await;
        }
        drop((a, b, c));

        // Restart, the member with the shortest log as the restart leader, the others in
        // reverse order. The last view is {0, 1}: both must be back before the group resumes.
        let listener = derecho::runtime::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let leader = listener.local_addr();
        let (c, b, a) = futures::join!(
            member_with(builder(2, "restart-test").listener(listener), None, &dirs[2]),
            member(1, "restart-test", Some(leader), &dirs[1]),
            member(0, "restart-test", Some(leader), &dirs[0]),
        );
        for m in [&a, &b, &c] {
            m.group.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        let view = a.group.view();
        assert!(view.id.0 > last.view().0, "the restart view {} follows the logged views", view.id.0);
        // Every member holds what the longest log held, history included.
        for m in [&a, &b, &c] {
            assert_eq!(contents(m, &keys), before, "member {} after the restart", m.group.me());
            let old = m.service.read::<KvStore, _>(SHARD, |s| s.get_at("k0", last.as_u64())).unwrap();
            assert_eq!(old, at_first);
        }
        // And the group goes on: new versions follow the old ones.
        let r = c.kv.put("k0", b"three").await.expect("put after the restart");
        assert!(r.version > last, "{} after {last}", r.version);
        for m in [&a, &b, &c] {
            m.service.handle::<KvStore>(SHARD).wait_persisted(r.version, WAIT).await.expect("globally persisted");
            let latest = m.service.read::<KvStore, _>(SHARD, |s| s.get("k0")).unwrap();
            assert_eq!(latest, Some((r.version.as_u64(), b"three".to_vec())));
        }
        for m in [&a, &b, &c] {
            m.group.close().await;
        }
    });
}

/// A persisting service refuses to run without partition safety: a total restart relies on
/// every view being committed by a majority of the one before.
#[test]
fn persistence_without_partition_safety_is_refused() {
    let tmp = TempDir::new("unsafe");
    Builder::new().build().unwrap().block_on(async {
        let service = Service::new();
        service.host(SubgroupId(0), KvStore::default);
        service.persist_to(&tmp.0).expect("a log directory");
        let unsafe_membership = MembershipConfig { partition_safety: false, ..MembershipConfig::default() };
        let e = service
            .start_or_join(builder(0, "persist-unsafe").membership(unsafe_membership.clone()), None)
            .await
            .expect_err("refused");
        assert!(
            matches!(
                e,
                derecho::rpc::StartError::Join(derecho::driver::JoinError::Start(derecho::driver::GroupError::Config(
                    _
                )))
            ),
            "{e}"
        );
        assert!(e.to_string().contains("partition safety"), "{e}");
        assert!(std::fs::read_dir(&tmp.0).unwrap().next().is_none(), "nothing written");
        // Nor does the driver restart a group without it.
        let offer = derecho::protocol::restart::Offer {
            saved: derecho::protocol::View {
                id: derecho::protocol::ViewId(3),
                members: vec![NodeId(0)],
                shards: Vec::new(),
            },
            logs: Default::default(),
            damaged: Default::default(),
            proposed: Vec::new(),
            newest_file: derecho::protocol::ViewId(0),
        };
        let e = builder(0, "persist-unsafe")
            .membership(unsafe_membership)
            .restart(offer, Vec::new(), None, |_: derecho::protocol::Delivered<'_>| {})
            .await
            .expect_err("refused");
        assert!(matches!(e, derecho::driver::JoinError::Config(_)), "{e}");
    });
}

/// A type whose handlers make calls: one spawns an ordered call, one awaits a query.
#[derive(
    Debug,
    Default,
    derecho::rpc::support::rkyv::Archive,
    derecho::rpc::support::rkyv::Serialize,
    derecho::rpc::support::rkyv::Deserialize,
)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Relay {
    bumps: u64,
    spawned: u64,
}

thread_local! {
    /// The client a handler calls through (a replica cannot hold one: it is archived).
    static RELAY: std::cell::RefCell<Option<RelayClient>> = const { std::cell::RefCell::new(None) };
}

fn relay() -> RelayClient {
    RELAY.with(|r| r.borrow().clone()).expect("a client")
}

#[derecho::replicated]
impl Relay {
    /// Adds one.
    pub fn bump(&mut self) -> u64 {
        self.bumps += 1;
        self.bumps
    }

    /// Spawns an ordered `bump`: it is delivered, and logged, on its own.
    pub fn spawn_bump(&mut self) -> u64 {
        self.spawned += 1;
        let client = relay();
        drop(derecho::spawn(async move {
            let _ = client.bump().await;
        }));
        self.spawned
    }

    /// Awaits member `to`'s count and adds it: a replica rebuilt without that answer differs.
    pub async fn add_count_of(&mut self, to: u32) -> u64 {
        let n = relay().count(NodeId(to)).await.unwrap_or(0);
        self.bumps += n;
        self.bumps
    }

    /// The count.
    pub fn count(&self) -> u64 {
        self.bumps
    }

    /// How many bumps were spawned.
    pub fn spawned(&self) -> u64 {
        self.spawned
    }
}

/// A member hosting `Relay`, its client the one handlers call through.
async fn relay_member(
    builder: GroupBuilder,
    contact: Option<SocketAddr>,
    dir: &Path,
) -> Result<(Group, Service), derecho::rpc::StartError> {
    let service = Service::new();
    service.host(SubgroupId(0), Relay::default);
    service.persist_to(dir).expect("a log directory");
    RELAY.with(|r| *r.borrow_mut() = Some(RelayClient::new(service.handle::<Relay>(SHARD))));
    let group = service.start_or_join(builder, contact).await?;
    Ok((group, service))
}

/// Replaying a log runs each logged call's handler again, but calls are not made again: an
/// ordered call a handler spawned was logged itself and is replayed once; a handler that
/// awaited a call's reply cannot be replayed, and recovery refuses its log. (One member: the
/// handlers find their client in a thread-local, which members on one thread would share.)
#[test]
fn calls_made_by_handlers_are_not_made_again_at_recovery() {
    let tmp = TempDir::new("replay-calls");
    Builder::new().build().unwrap().block_on(async {
        let (group, service) = relay_member(builder(0, "replay-calls"), None, &tmp.0).await.expect("start");
        let client = RelayClient::new(service.handle::<Relay>(SHARD));
        for _ in 0..5 {
            client.spawn_bump().await.expect("spawn_bump");
        }
        let deadline = Instant::now() + WAIT;
        while client.count(NodeId(0)).await.expect("count") < 5 {
            assert!(Instant::now() < deadline, "the spawned bumps did not all arrive");
            time::sleep(Duration::from_millis(2)).await;
        }
        let last = client.bump().await.expect("bump").version;
        service.handle::<Relay>(SHARD).wait_persisted(last, WAIT).await.expect("persisted");
        assert_eq!(service.read::<Relay, _>(SHARD, |r| (r.bumps, r.spawned)), Some((6, 5)));
        group.close().await;
        drop((group, service, client));

        // Back: the replica holds the five spawned bumps and the last one, once each.
        let (group, service) = relay_member(builder(0, "replay-calls"), None, &tmp.0).await.expect("restart");
        let client = RelayClient::new(service.handle::<Relay>(SHARD));
        let after = client.bump().await.expect("a bump after the restart");
        service.handle::<Relay>(SHARD).wait_persisted(after.version, WAIT).await.expect("persisted");
        let (bumps, spawned) = service.read::<Relay, _>(SHARD, |r| (r.bumps, r.spawned)).expect("a replica");
        assert_eq!((bumps, spawned), (7, 5), "a spawned call was made again at recovery, or lost");

        // A handler that awaits a call (here refused at once: a query of its own shard).
        let awaited = client.add_count_of(0).await.expect("add_count_of").version;
        service.handle::<Relay>(SHARD).wait_persisted(awaited, WAIT).await.expect("persisted");
        group.close().await;
        drop((group, service, client));
        let e = relay_member(builder(0, "replay-calls"), None, &tmp.0).await.expect_err("refused");
        assert!(
            matches!(&e, derecho::rpc::StartError::Recovery(derecho::rpc::RecoveryError::Replay { reason, .. })
                if reason.contains("made a call")),
            "{e}"
        );
    });
}
