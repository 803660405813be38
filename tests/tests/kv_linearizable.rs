//! The key-value store is linearizable while a member fails. Puts are ordered calls, gets are
//! stable queries (`Handle::stable_reads`) to a random member, on a few keys; every history is
//! checked key by key (`derecho_tests::checkers::linearizability`). A failure prints the seed;
//! `KV_SEED=<n>` replays it.
//!
//! * In one process (one executor, loopback TCP): six clients; member 2 closes in the middle
//!   with its calls in flight.
//! * In three processes (`kv_member`), over TCP and over shared memory: each process runs two
//!   clients in three phases and writes its history to a file as it goes; member 2 is killed
//!   with SIGKILL in the middle of the second phase, the survivors run the third in the next
//!   view. Times are `CLOCK_MONOTONIC`, one clock for the host. Over shared memory, no file is
//!   left once the survivors closed (the killed member's are removed by them).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use derecho::Builder;
use derecho::driver::{Group, GroupBuilder};
use derecho::protocol::{MembershipConfig, NodeId, ShardIndex, ShardRef, SubgroupId};
use derecho::rpc::Service;
use derecho::sim::SimRng;
use derecho_examples::kv::{KvStore, KvStoreClient};
use derecho_tests::checkers::linearizability::{Op, OpKind, check};
use derecho_tests::kv_process::Member;

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const WAIT: Duration = Duration::from_secs(20);
const KEYS: [&str; 3] = ["apple", "pear", "plum"];

fn builder(me: u32) -> GroupBuilder {
    let membership = MembershipConfig {
        heartbeat: Duration::from_millis(5),
        suspect_after: Duration::from_millis(300),
        ..MembershipConfig::default()
    };
    GroupBuilder::new(NodeId(me), "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .insecure()
        .name("kv-linearizable")
        .membership(membership)
        .connect_timeout(Duration::from_secs(3))
}

async fn member(me: u32, contact: Option<SocketAddr>) -> (Group, KvStoreClient) {
    let service = Service::new();
    service.host(SubgroupId(0), KvStore::default);
    let group = service.start_or_join(builder(me), contact).await.expect("start or join");
    (group, KvStoreClient::new(service.handle::<KvStore>(SHARD).stable_reads()))
}

type History = Rc<RefCell<BTreeMap<String, Vec<Op>>>>;

/// One client: `count` operations, recording each with logical invoke and response times.
async fn client(id: u32, kv: KvStoreClient, seed: u64, count: u32, clock: Rc<Cell<u64>>, history: History) {
    let mut rng = SimRng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(id) | 1);
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

/// One `kv_member` process with the arguments of this test.
fn spawn_member(me: u32, contact: Option<&str>, history: &Path, seed: u64, shm_dir: Option<&Path>) -> Member {
    let mut args: Vec<std::ffi::OsString> =
        vec!["--seed".into(), seed.to_string().into(), "--ops".into(), OPS.to_string().into()];
    args.extend(["--history".into(), history.into()]);
    if let Some(c) = contact {
        args.extend(["--contact".into(), c.into()]);
    }
    if let Some(d) = shm_dir {
        args.extend(["--shm-dir".into(), d.into()]);
    }
    Member::spawn(env!("CARGO_BIN_EXE_kv_member"), me, &args)
}

/// Operations per client and phase.
const OPS: u32 = 6;

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The operations of the history files, by key (see `kv_member` for the format).
fn parse_histories(files: &[PathBuf]) -> BTreeMap<String, Vec<Op>> {
    let mut ops: BTreeMap<(u32, u32), (String, Op)> = BTreeMap::new();
    let mut dropped = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("a history file");
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| -> u64 { w[i].parse().unwrap_or_else(|_| panic!("bad line {line:?}")) };
            let id = (num(1) as u32, num(2) as u32);
            match w[0] {
                "inv" if w[4] == "put" => {
                    let op = Op { client: id.0, invoke: num(6), response: None, kind: OpKind::Put(w[5].into()) };
                    ops.insert(id, (w[3].into(), op));
                }
                "inv" => {
                    let op = Op { client: id.0, invoke: num(5), response: None, kind: OpKind::Get(None) };
                    ops.insert(id, (w[3].into(), op));
                }
                "ok" => ops.get_mut(&id).expect("an invoked put").1.response = Some(num(3)),
                "got" => {
                    let op = &mut ops.get_mut(&id).expect("an invoked get").1;
                    op.response = Some(num(3));
                    op.kind = OpKind::Get((w[4] != "-").then(|| w[4].to_string()));
                }
                // A failed put may or may not have taken effect (no response); a failed get had
                // no effect.
                "fail" => dropped.push(id),
                other => panic!("unknown history line {other:?}"),
            }
        }
    }
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for (id, (key, op)) in ops {
        let unanswered_get = matches!(op.kind, OpKind::Get(_)) && op.response.is_none();
        if unanswered_get || (dropped.contains(&id) && matches!(op.kind, OpKind::Get(_))) {
            continue;
        }
        by_key.entry(key).or_default().push(op);
    }
    by_key
}

fn run_processes(seed: u64, shm: bool) -> Result<(), String> {
    let tag = if shm { "shm" } else { "tcp" };
    let dir = std::env::temp_dir().join(format!("derecho-kv-lin-{}-{tag}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a history directory");
    let _histories = RemoveOnDrop(dir.clone());
    let shm_dir = shm.then(|| PathBuf::from(format!("/dev/shm/derecho-kv-lin-{}-{seed}", std::process::id())));
    if let Some(d) = &shm_dir {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).expect("a directory in /dev/shm");
    }
    let _shm = shm_dir.clone().map(RemoveOnDrop);
    let files: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("member-{i}.history"))).collect();
    let mut members = vec![spawn_member(0, None, &files[0], seed, shm_dir.as_deref())];
    let contact = members[0].expect("listening ")["listening ".len()..].to_string();
    for i in 1..3u32 {
        members.push(spawn_member(i, Some(&contact), &files[i as usize], seed, shm_dir.as_deref()));
    }
    for m in &members {
        m.expect("ready");
    }
    // Phase 1: everyone, before the failure.
    for m in &mut members {
        m.tell("phase 1");
    }
    for m in &members {
        m.expect("phase 1 done");
    }
    // Phase 2, paced: member 2's clients stop at their fourth operation, which may still be in
    // flight when the member is killed.
    for (i, m) in members.iter_mut().enumerate() {
        m.tell(if i == 2 { "phase 2 300 3" } else { "phase 2 300" });
    }
    members[2].expect("stalling");
    let killed_at = now_ns();
    members[2].kill();
    for m in members.iter().take(2) {
        m.expect("phase 2 done");
    }
    // Phase 3: the survivors, in the next view.
    for m in members.iter_mut().take(2) {
        m.tell("phase 3");
    }
    for m in members.iter().take(2) {
        m.expect("phase 3 done");
    }
    for m in members.iter_mut().take(2) {
        m.finish();
    }
    let history = parse_histories(&files);
    let total: usize = history.values().map(Vec::len).sum();
    let after = history.values().flatten().filter(|o| o.invoke > killed_at).count();
    let member2_done = history.values().flatten().filter(|o| o.client >= 20 && o.response.is_some()).count();
    if let Some(d) = &shm_dir {
        let left: Vec<_> =
            std::fs::read_dir(d).expect("the shm directory").filter_map(Result::ok).map(|e| e.file_name()).collect();
        if !left.is_empty() {
            return Err(format!("files left in {}: {left:?}", d.display()));
        }
    }
    eprintln!("{tag} seed {seed}: {total} operations, {after} after the kill, {member2_done} completed by member 2");
    assert!(total >= 40, "only {total} operations were recorded");
    assert!(after >= 10, "only {after} operations began after the kill");
    // Phase 1 and at most four operations of phase 2 per client.
    assert!(member2_done <= 2 * (OPS as usize + 4), "member 2 completed {member2_done} operations");
    check(&history).map_err(|e| e.to_string())
}

/// Removes a directory when dropped (also when the test panics).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("KV_SEED") {
        Ok(s) => vec![s.parse().expect("KV_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

#[test]
fn a_history_with_a_killed_member_process_is_linearizable_over_tcp() {
    for seed in seeds() {
        if let Err(e) = run_processes(seed, false) {
            panic!("seed {seed} (KV_SEED={seed} replays it): {e}");
        }
    }
}

#[test]
fn a_history_with_a_killed_member_process_is_linearizable_over_shared_memory() {
    for seed in seeds() {
        if let Err(e) = run_processes(seed, true) {
            panic!("seed {seed} (KV_SEED={seed} replays it): {e}");
        }
    }
}
