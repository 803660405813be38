//! Replicated objects over a `Group` (members on one executor, loopback TCP): a `#[replicated]`
//! key-value type, ordered calls with a reply from every replica, queries to one member,
//! typed errors, and a joiner whose replica arrives by state transfer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use derecho::Builder;
use derecho::driver::{Group, GroupBuilder};
use derecho::protocol::{MembershipConfig, NodeId, ShardIndex, ShardRef, SubgroupId};
use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};
use derecho::rpc::{CallError, Replicated, Service};
use derecho::runtime::time;

/// A key-value store: ordered puts, queried gets, a version counter.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Store {
    entries: BTreeMap<String, Vec<u8>>,
    puts: u64,
}

#[derecho::replicated]
impl Store {
    /// Sets `key`; returns the value it replaced.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Option<Vec<u8>> {
        self.puts += 1;
        self.entries.insert(key.to_owned(), value.to_vec())
    }

    /// Adds `n` to the counter stored under `key` (8 bytes, little-endian); returns the sum.
    pub fn add(&mut self, key: &str, n: u64) -> u64 {
        let old = self.entries.get(key).and_then(|v| v.as_slice().try_into().ok()).map_or(0, u64::from_le_bytes);
        let new = old + n;
        self.entries.insert(key.to_owned(), new.to_le_bytes().to_vec());
        new
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.get(key).cloned()
    }

    /// How many puts this replica applied.
    pub fn puts(&self) -> u64 {
        self.puts
    }

    /// The stable point this query was answered at, if it was a stable query.
    pub fn stable_point(&self) -> Option<u64> {
        derecho::rpc::context().and_then(|c| c.stable).map(|v| v.as_u64())
    }
}

/// Another replicated type, never hosted.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Other {
    n: u64,
}

#[derecho::replicated]
impl Other {
    /// Adds one.
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const WAIT: Duration = Duration::from_secs(20);

fn builder(me: u32) -> GroupBuilder {
    let membership = MembershipConfig {
        heartbeat: Duration::from_millis(5),
        suspect_after: Duration::from_millis(300),
        ..MembershipConfig::default()
    };
    GroupBuilder::new(NodeId(me), "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .insecure()
        .name("replicated-test")
        .membership(membership)
        .connect_timeout(Duration::from_secs(3))
}

/// A member: its group, its service and a client of the store.
struct Member {
    group: Group,
    service: Service,
    store: StoreClient,
}

async fn member(me: u32, contact: Option<SocketAddr>) -> Member {
    let service = Service::new();
    service.host(SubgroupId(0), Store::default);
    let group = service.start_or_join(builder(me), contact).await.expect("start or join");
    let store = StoreClient::new(service.handle::<Store>(SHARD));
    Member { group, service, store }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn ordered_calls_reply_from_every_replica_and_queries_from_one() {
    Builder::new().build().unwrap().block_on(async {
        let a = member(0, None).await;
        let b = member(1, Some(a.group.local_addr())).await;
        let c = member(2, Some(a.group.local_addr())).await;
        for m in [&a, &b, &c] {
            m.group.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        assert_eq!(
            Store::METHODS.iter().map(|m| (m.name, m.ordered)).collect::<Vec<_>>(),
            vec![("put", true), ("add", true), ("get", false), ("puts", false), ("stable_point", false)]
        );

        // An ordered put: every replica applies it and replies, at one version.
        let r = a.store.put("k", b"v1").await.expect("put");
        assert_eq!(r.replies.len(), 3, "{r:?}");
        for (node, reply) in r.replies {
            assert_eq!(reply.expect("a reply"), None, "{node}: no earlier value");
        }
        let r = b.store.put("k", b"v2").await.expect("put");
        let v2 = r.version;
        assert!(r.all().unwrap().iter().all(|(_, old)| old.as_deref() == Some(&b"v1"[..])));

        // Concurrent ordered adds from every member: every replica computes the same sums,
        // because every replica applies them in the same order.
        let adds = futures::future::join_all(
            [&a, &b, &c].into_iter().flat_map(|m| (0..5).map(move |i| m.store.add("n", i + 1))),
        )
        .await;
        let mut versions = Vec::new();
        for replies in adds {
            let replies = replies.expect("add");
            versions.push(replies.version);
            let sums: Vec<u64> = replies.all().unwrap().into_iter().map(|(_, s)| s).collect();
            assert!(sums.windows(2).all(|w| w[0] == w[1]), "replicas disagree: {sums:?}");
        }
        versions.sort();
        versions.dedup();
        assert_eq!(versions.len(), 15, "each call has its own place in the order");
        assert!(versions[0] > v2);

        // Queries go to one member; each replica has applied everything it replied to.
        for m in [&a, &b, &c] {
            let got = m.store.get(NodeId(1), "k").await.expect("query");
            assert_eq!(got.as_deref(), Some(&b"v2"[..]));
            assert_eq!(m.store.get(NodeId(2), "n").await.unwrap(), Some(45u64.to_le_bytes().to_vec()));
        }
        assert_eq!(a.store.puts(NodeId(0)).await.unwrap(), 2);

        // Stable queries: answered at a point that covers every completed call (they were
        // applied everywhere before they completed), from this member and from another.
        assert_eq!(a.store.stable_point(NodeId(1)).await.unwrap(), None, "a plain query has no stable point");
        let stable = StoreClient::new(a.service.handle::<Store>(SHARD).stable_reads());
        let last = versions.last().unwrap().as_u64();
        for to in [NodeId(0), NodeId(2)] {
            let point = stable.stable_point(to).await.unwrap().expect("a stable point");
            assert!(point >= last, "{to} answered at {point}, before the last completed call {last}");
            assert_eq!(stable.get(to, "n").await.unwrap(), Some(45u64.to_le_bytes().to_vec()));
        }
        assert_eq!(a.service.read(SHARD, |s: &Store| s.puts), Some(2));

        // Typed errors: a member that is not in the view.
        let e = a.store.get(NodeId(9), "k").await.expect_err("no such member");
        assert!(matches!(e, CallError::SendTo(_)), "{e}");

        // A joiner's replica comes with the state.
        let d = member(3, Some(a.group.local_addr())).await;
        for m in [&a, &b, &c, &d] {
            m.group.wait_view(WAIT, |v| v.members.len() == 4).await.unwrap();
        }
        assert_eq!(d.service.read(SHARD, |s: &Store| (s.puts, s.entries.len())), Some((2, 2)));
        assert_eq!(d.store.get(NodeId(3), "n").await.unwrap(), Some(45u64.to_le_bytes().to_vec()));
        let r = d.store.add("n", 5).await.unwrap();
        assert_eq!(r.replies.len(), 4);
        assert!(r.all().unwrap().iter().all(|(_, s)| *s == 50));
        // Each replica's reply as it arrives.
        let mut each = d.store.add_each("n", 1).await.unwrap();
        let mut seen = Vec::new();
        while let Some((node, reply)) = each.next().await {
            assert_eq!(reply.expect("a reply"), 51, "{node}");
            seen.push(node);
        }
        seen.sort();
        assert_eq!(seen, vec![NodeId(0), NodeId(1), NodeId(2), NodeId(3)]);
        assert!(each.version().is_some(), "the version the call was delivered at");
        assert!(each.next().await.is_none());

        // A member that fails: calls in flight get its entry as Departed, or a reply.
        c.group.close().await;
        for m in [&a, &b, &d] {
            m.group.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        let r = a.store.add("n", 1).await.unwrap();
        assert_eq!(r.replies.keys().copied().collect::<Vec<_>>(), vec![NodeId(0), NodeId(1), NodeId(3)]);
        until("b's replica caught up", || b.service.read(SHARD, |s: &Store| s.entries.len()) == Some(2)).await;

        // A handle of another type than the one hosted is refused.
        let e = a.service.handle::<Other>(SHARD).ordered_raw(0, &[]).await.expect_err("wrong type");
        assert!(matches!(e, CallError::WrongType(_)), "{e}");
        // A closed member's calls fail at once, with a typed error.
        d.group.close().await;
        let e = d.store.put("k", b"late").await.expect_err("closed");
        assert!(matches!(e, CallError::Closed), "{e}");
        for m in [a, b] {
            m.group.close().await;
        }
    });
}

/// A journal whose ordered operations await inside the handler.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Journal {
    lines: Vec<String>,
}

thread_local! {
    /// The client a handler uses for nested calls (a replica cannot hold one: it is archived).
    static JOURNAL: std::cell::RefCell<Option<JournalClient>> = const { std::cell::RefCell::new(None) };
}

#[derecho::replicated]
impl Journal {
    /// Writes `start`, awaits, writes `end`: another call's lines never come in between.
    pub async fn step(&mut self, n: u64, pause_us: u64) -> u64 {
        let v = derecho::rpc::context().and_then(|c| c.version).expect("an ordered call has a version");
        self.lines.push(format!("start {n} at {v}"));
        time::sleep(Duration::from_micros(pause_us)).await;
        // The context survives the await.
        assert_eq!(derecho::rpc::context().and_then(|c| c.version), Some(v));
        self.lines.push(format!("end {n}"));
        self.lines.len() as u64
    }

    /// Awaits a nested ordered call into its own shard: refused, it would never complete.
    pub async fn nested_awaited(&mut self) -> String {
        let client = JOURNAL.with(|c| c.borrow().clone()).expect("a client");
        match client.step(999, 0).await {
            Err(e) => e.to_string(),
            Ok(_) => "completed".into(),
        }
    }

    /// Spawns a nested ordered call: it is sent now and completes after this handler returns.
    pub fn nested_spawned(&mut self, n: u64) -> usize {
        let client = JOURNAL.with(|c| c.borrow().clone()).expect("a client");
        drop(derecho::spawn(async move {
            client.step(n, 0).await.expect("the nested call");
        }));
        self.lines.push(format!("spawned {n}"));
        self.lines.len()
    }

    /// Every line.
    pub async fn lines(&self) -> Vec<String> {
        self.lines.clone()
    }
}

async fn journal_member(me: u32, contact: Option<SocketAddr>) -> (Group, Service, JournalClient) {
    let service = Service::new();
    service.host(SubgroupId(0), Journal::default);
    let group = service.start_or_join(builder(me), contact).await.expect("start or join");
    let client = JournalClient::new(service.handle::<Journal>(SHARD));
    (group, service, client)
}

#[test]
fn async_handlers_run_one_at_a_time_in_order_and_nested_calls_do_not_deadlock() {
    Builder::new().build().unwrap().block_on(async {
        let (ga, sa, a) = journal_member(0, None).await;
        let (gb, sb, b) = journal_member(1, Some(ga.local_addr())).await;
        for g in [&ga, &gb] {
            g.wait_view(WAIT, |v| v.members.len() == 2).await.unwrap();
        }
        JOURNAL.with(|c| *c.borrow_mut() = Some(a.clone()));
        // Many awaiting calls at once from both members.
        let calls = (0..20u64).map(|n| {
            let c = if n % 2 == 0 { a.clone() } else { b.clone() };
            async move { c.step(n, 200 * (n % 4)).await.expect("step") }
        });
        let replies = futures::future::join_all(calls).await;
        for r in &replies {
            let all = r.replies.values().map(|x| *x.as_ref().expect("a reply")).collect::<Vec<_>>();
            assert!(all.windows(2).all(|w| w[0] == w[1]), "replicas disagree: {all:?}");
        }
        let lines_a = a.lines(NodeId(0)).await.unwrap();
        assert_eq!(lines_a, b.lines(NodeId(1)).await.unwrap(), "the replicas' journals differ");
        assert_eq!(lines_a.len(), 40);
        // Every start is followed by its own end; versions increase.
        let mut last = None;
        for pair in lines_a.chunks(2) {
            let n = pair[0].split(' ').nth(1).unwrap();
            assert_eq!(pair[1], format!("end {n}"), "another call ran inside call {n}: {lines_a:?}");
            let v = pair[0].rsplit(' ').next().unwrap().to_string();
            assert!(last.as_ref().is_none_or(|l: &String| *l < v || l.len() < v.len()), "{lines_a:?}");
            last = Some(v);
        }

        // A joiner while async handlers are still running: its state is taken after them.
        let slow = (100..110u64).map(|n| {
            let c = a.clone();
            async move { c.step(n, 500).await.expect("step") }
        });
        let join = async { journal_member(2, Some(ga.local_addr())).await };
        let (_, (gc, sc, c)) = futures::join!(futures::future::join_all(slow), join);
        for g in [&ga, &gb, &gc] {
            g.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        let r = a.step(200, 0).await.unwrap();
        assert_eq!(r.replies.len(), 3);
        let full = a.lines(NodeId(0)).await.unwrap();
        assert_eq!(c.lines(NodeId(2)).await.unwrap(), full, "the joiner's journal differs");
        assert_eq!(full.len(), 62);

        // Nested calls into the same shard (Derecho issue #70).
        let r = a.nested_awaited().await.unwrap();
        for (node, reply) in r.replies {
            let text = reply.unwrap();
            assert!(text.contains("would never complete"), "{node}: {text}");
        }
        let r = a.nested_spawned(300).await.unwrap();
        assert!(r.all().is_ok());
        until("the spawned nested call completes", || {
            sa.read(SHARD, |j: &Journal| j.lines.iter().any(|l| l == "end 300")) == Some(true)
                && sb.read(SHARD, |j: &Journal| j.lines.iter().any(|l| l == "end 300")) == Some(true)
        })
        .await;
        let lines = sb.read(SHARD, |j: &Journal| j.lines.clone()).unwrap();
        let spawned = lines.iter().position(|l| l == "spawned 300").unwrap();
        let ended = lines.iter().position(|l| l == "end 300").unwrap();
        assert!(spawned < ended, "the nested call ran before its caller returned");
        drop(sc);
        JOURNAL.with(|c| *c.borrow_mut() = None);
        for g in [ga, gb, gc] {
            g.close().await;
        }
    });
}

#[test]
fn external_clients_query_follow_view_changes_and_receive_notifications() {
    use derecho::rpc::{ClientError, ExternalClient, ExternalHandle};
    Builder::new().build().unwrap().block_on(async {
        let a = member(0, None).await;
        let b = member(1, Some(a.group.local_addr())).await;
        let c = member(2, Some(a.group.local_addr())).await;
        for m in [&a, &b, &c] {
            m.group.wait_view(WAIT, |v| v.members.len() == 3).await.unwrap();
        }
        a.store.put("k", b"v").await.unwrap();

        // A client that knows one member fetches the view and asks any member of the shard.
        // A host name resolves.
        let client = ExternalClient::builder("replicated-test", [format!("localhost:{}", b.group.local_addr().port())])
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect");
        assert_eq!(client.view().unwrap().members.len(), 3);
        let store = StoreExternal::new(ExternalHandle::new(client.clone(), SHARD));
        assert_eq!(store.get(None, "k").await.unwrap().as_deref(), Some(&b"v"[..]));
        for n in 0..3 {
            assert_eq!(store.puts(Some(NodeId(n))).await.unwrap(), 1, "member {n}");
        }

        // An ordered call from outside, relayed by a member: applied everywhere, at one version.
        let (version, old) = store.put("k", b"from outside").await.expect("relayed put");
        assert_eq!(old.as_deref(), Some(&b"v"[..]));
        assert!(version.as_u64() > 0);
        for n in 0..3 {
            let got = store.get(Some(NodeId(n)), "k").await.unwrap();
            assert_eq!(got.as_deref(), Some(&b"from outside"[..]), "member {n}");
        }

        // More ordered calls at once than a member takes on a connection (1,024): the client
        // keeps at most 1,024 outstanding, the rest wait, and every one completes.
        let many = futures::future::join_all((0..1500).map(|i| {
            let store = store.clone();
            async move { store.put(&format!("many{i}"), b"x").await }
        }))
        .await;
        assert!(many.iter().all(Result::is_ok), "{:?}", many.iter().find(|r| r.is_err()));

        // A client of another type (another method table) is refused, typed; raw calls are
        // not checked.
        let other = OtherExternal::new(ExternalHandle::new(client.clone(), SHARD));
        let e = other.bump().await.expect_err("another type");
        assert!(matches!(e, ClientError::Remote { kind: derecho::rpc::RemoteKind::TypeMismatch, .. }), "{e}");
        let puts = client.query_raw(SHARD, Some(NodeId(0)), 3, 0, &[]).await.expect("a raw query");
        assert!(!puts.is_empty());

        // Notifications pushed by a member reach subscribed clients.
        assert_eq!(client.subscribe("news").await, 3);
        assert_eq!(a.group.sender().notify("news", b"hello"), 1);
        assert_eq!(client.next_notification().await, ("news".to_string(), b"hello".to_vec()));

        // A member fails: the client follows the view change and asks the others.
        c.group.close().await;
        for m in [&a, &b] {
            m.group.wait_view(WAIT, |v| v.members.len() == 2).await.unwrap();
        }
        for _ in 0..4 {
            assert_eq!(store.get(None, "k").await.unwrap().as_deref(), Some(&b"from outside"[..]));
        }
        let members: Vec<NodeId> = client.refresh_view().await.unwrap().members.iter().map(|m| m.0).collect();
        assert_eq!(members, vec![NodeId(0), NodeId(1)]);
        let e = store.get(Some(NodeId(2)), "k").await.expect_err("member 2 is gone");
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");

        // Nobody at the contact: a clear error within the bound.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = ExternalClient::builder("replicated-test", [dead.to_string()])
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await
            .expect_err("nobody there");
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        for m in [a, b] {
            m.group.close().await;
        }
    });
}

#[test]
fn members_outside_a_shard_query_it() {
    use derecho::protocol::{GroupLayout, Policy, SubgroupSpec};
    let layout =
        || GroupLayout::new(vec![SubgroupSpec::new("store", Policy::Fixed { shards: 1, per_shard: 2 })]).unwrap();
    Builder::new().build().unwrap().block_on(async {
        let mut members = Vec::new();
        for me in 0..3u32 {
            let service = Service::new();
            service.host(SubgroupId(0), Store::default);
            let b = builder(me).layout(layout());
            let group = match members.first() {
                None => b.start(service.clone()).await.expect("start"),
                Some((g, _)) => b.join(Group::local_addr(g), service.clone()).await.expect("join"),
            };
            service.attach(group.sender());
            members.push((group, service));
        }
        for (g, _) in &members {
            g.wait_view(WAIT, |v| v.members.len() == 3 && !v.shards.is_empty()).await.unwrap();
        }
        let store = |i: usize| StoreClient::new(members[i].1.handle::<Store>(SHARD));
        // Members 0 and 1 hold the shard; member 2 does not.
        assert_eq!(members[0].0.view().shards[0].members, vec![NodeId(0), NodeId(1)]);
        store(0).put("k", b"v").await.unwrap();
        // Member 2 cannot make ordered calls into a shard it is not in...
        let e = store(2).put("k", b"x").await.expect_err("not a member");
        assert!(matches!(e, CallError::NotAMember(_)), "{e}");
        // ...but queries its members.
        assert_eq!(store(2).get(NodeId(1), "k").await.unwrap().as_deref(), Some(&b"v"[..]));
        // And asking a member outside the shard is a typed error, not an empty answer.
        let e = store(0).get(NodeId(2), "k").await.expect_err("member 2 holds no replica");
        assert!(e.to_string().contains("no replica"), "{e}");
        for (g, _) in members {
            g.close().await;
        }
    });
}

/// A member whose replicated types differ (another type in a subgroup, or another version of
/// it: another method table) is refused at join, typed, rather than let in to misread calls.
#[test]
fn a_member_hosting_other_types_is_refused_at_join() {
    use derecho::driver::JoinError;
    use derecho::protocol::JoinRefusal;
    use derecho::rpc::StartError;
    Builder::new().build().unwrap().block_on(async {
        let a = member(0, None).await;
        let other = Service::new();
        other.host(SubgroupId(0), Other::default);
        let e = other.start_or_join(builder(1), Some(a.group.local_addr())).await.expect_err("refused");
        assert!(matches!(e, StartError::Join(JoinError::Refused(JoinRefusal::AppMismatch { .. }))), "{e}");
        assert_eq!(a.group.members(), vec![NodeId(0)], "the group is unchanged");
        a.group.close().await;
    });
}
