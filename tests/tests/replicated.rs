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
    let membership =
        MembershipConfig { heartbeat_ns: 5_000_000, suspect_after_ns: 300_000_000, ..MembershipConfig::default() };
    GroupBuilder::new(NodeId(me), "127.0.0.1:0".parse::<SocketAddr>().unwrap())
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
    let group = match contact {
        None => builder(me).start(service.clone()).await.expect("start"),
        Some(c) => builder(me).join(c, service.clone()).await.expect("join"),
    };
    service.attach(group.sender());
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
            vec![("put", true), ("add", true), ("get", false), ("puts", false)]
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
