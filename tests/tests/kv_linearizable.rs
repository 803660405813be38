//! The key-value store is linearizable while a member fails: three members (one executor,
//! loopback TCP), two clients each issuing seeded puts (ordered calls) and gets (queries to a
//! random member) on a few keys; member 2 closes in the middle, with its calls in flight. The
//! recorded history is checked key by key (`derecho_tests::checkers::linearizability`). A
//! failure prints the seed; `KV_SEED=<n>` replays it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use derecho::Builder;
use derecho::driver::{Group, GroupBuilder};
use derecho::protocol::{MembershipConfig, NodeId, ShardIndex, ShardRef, SubgroupId};
use derecho::rpc::Service;
use derecho_examples::kv::{KvStore, KvStoreClient};
use derecho_tests::checkers::linearizability::{Op, OpKind, check};

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const WAIT: Duration = Duration::from_secs(20);
const KEYS: [&str; 3] = ["apple", "pear", "plum"];

/// A small seeded generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn builder(me: u32) -> GroupBuilder {
    let membership =
        MembershipConfig { heartbeat_ns: 5_000_000, suspect_after_ns: 300_000_000, ..MembershipConfig::default() };
    GroupBuilder::new(NodeId(me), "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .name("kv-linearizable")
        .membership(membership)
        .connect_timeout(Duration::from_secs(3))
}

async fn member(me: u32, contact: Option<SocketAddr>) -> (Group, KvStoreClient) {
    let service = Service::new();
    service.host(SubgroupId(0), KvStore::default);
    let group = match contact {
        None => builder(me).start(service.clone()).await.expect("start"),
        Some(c) => builder(me).join(c, service.clone()).await.expect("join"),
    };
    service.attach(group.sender());
    (group, KvStoreClient::new(service.handle::<KvStore>(SHARD)))
}

type History = Rc<RefCell<BTreeMap<String, Vec<Op>>>>;

/// One client: `count` operations, recording each with logical invoke and response times.
async fn client(id: u32, kv: KvStoreClient, seed: u64, count: u32, clock: Rc<Cell<u64>>, history: History) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(id) | 1);
    let tick = || {
        clock.set(clock.get() + 1);
        clock.get()
    };
    for n in 0..count {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let invoke = tick();
        if rng.below(2) == 0 {
            let value = format!("c{id}-{n}");
            let r = kv.put(key, value.as_bytes()).await;
            // A put that returns completed at every surviving replica; one that failed (this
            // member stopped) may or may not have been applied.
            let response = r.is_ok().then(&tick);
            history.borrow_mut().entry(key.into()).or_default().push(Op {
                client: id,
                invoke,
                response,
                kind: OpKind::Put(value),
            });
            if response.is_none() {
                return;
            }
        } else {
            let to = NodeId(rng.below(3) as u32);
            if let Ok(got) = kv.get(to, key).await {
                let response = tick();
                let value = got.map(|(_, v)| String::from_utf8(v).expect("utf-8"));
                history.borrow_mut().entry(key.into()).or_default().push(Op {
                    client: id,
                    invoke,
                    response: Some(response),
                    kind: OpKind::Get(value),
                });
            }
            // A failed read (its member is gone) has no effect and is left out.
        }
    }
}

fn run(seed: u64) -> Result<(), String> {
    Builder::new().build().unwrap().block_on(async move {
        let (ga, a) = member(0, None).await;
        let (gb, b) = member(1, Some(ga.local_addr())).await;
        let (gc, c) = member(2, Some(ga.local_addr())).await;
        for g in [&ga, &gb, &gc] {
            g.wait_view(WAIT, |v| v.members.len() == 3).await.expect("three members");
        }
        let clock = Rc::new(Cell::new(0));
        let history: History = Rc::default();
        let clients = futures::future::join_all([
            client(0, a.clone(), seed, 12, clock.clone(), history.clone()),
            client(1, a, seed, 12, clock.clone(), history.clone()),
            client(2, b.clone(), seed, 12, clock.clone(), history.clone()),
            client(3, b, seed, 12, clock.clone(), history.clone()),
            client(4, c.clone(), seed, 12, clock.clone(), history.clone()),
            client(5, c, seed, 12, clock.clone(), history.clone()),
        ]);
        // Member 2 fails once a few operations are done, with its calls in flight.
        let kill = async {
            while clock.get() < 20 {
                derecho::runtime::time::sleep(Duration::from_micros(200)).await;
            }
            gc.close().await;
        };
        futures::join!(clients, kill);
        let h = history.borrow().clone();
        let total: usize = h.values().map(Vec::len).sum();
        assert!(total >= 30, "only {total} operations were recorded");
        // The failure happened mid-run: the failed member's clients did not finish.
        let theirs = h.values().flatten().filter(|o| o.client >= 4).count();
        assert!(theirs < 24, "member 2's clients recorded all {theirs} operations: it failed too late");
        for g in [ga, gb] {
            g.close().await;
        }
        check(&h).map_err(|e| e.to_string())
    })
}

#[test]
fn a_history_with_a_failure_is_linearizable() {
    let fixed = [1u64, 2, 3, 4, 5];
    let seeds: Vec<u64> = match std::env::var("KV_SEED") {
        Ok(s) => vec![s.parse().expect("KV_SEED is a number")],
        Err(_) => fixed.to_vec(),
    };
    for seed in seeds {
        if let Err(e) = run(seed) {
            panic!("seed {seed} (KV_SEED={seed} replays it): {e}");
        }
    }
}
