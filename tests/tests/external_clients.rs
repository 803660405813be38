//! External clients against member processes (`ledger_member`): a replicated ledger counts how
//! many times each operation id was applied, so a call applied twice shows.
//!
//! * Exactly once: four clients keep 16 ordered calls each in flight while the member relaying
//!   one client's calls is killed with SIGKILL; every call completes (resent to another member
//!   where its reply was lost), and every survivor applied each id once.
//! * Bad clients: garbage, a frame header announcing 4 GiB, 1,000 idle connections and a client
//!   that never reads its answers, while a good client keeps calling: the members stay up, the
//!   good client's calls all succeed within a bound, and the member closes the bad sessions.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use derecho::protocol::{NodeId, ShardRef};
use derecho::rpc::{ExternalClient, ExternalHandle, block_on};
use derecho_tests::kv_process::{Member, three_members};
use derecho_tests::ledger::{Ledger, LedgerExternal};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

const SHARD: ShardRef = ShardRef::new(0, 0);
const GROUP: &str = "ledger";

/// Three members; returns them and their addresses.
fn members() -> (Vec<Member>, Vec<String>) {
    three_members(env!("CARGO_BIN_EXE_ledger_member"), &[])
}

fn client(addrs: &[String]) -> (ExternalClient, LedgerExternal) {
    let c = ExternalClient::builder(GROUP, addrs.to_vec()).timeout(Duration::from_secs(20)).build();
    c.blocking().refresh_view().expect("the view");
    let ledger = LedgerExternal::new(ExternalHandle::<Ledger>::new(c.clone(), SHARD));
    (c, ledger)
}

#[test]
fn ordered_calls_are_applied_once_while_their_relay_is_killed() {
    let (mut members, addrs) = members();
    const CLIENTS: u64 = 4;
    const IN_FLIGHT: u64 = 16;
    const PER_TASK: u64 = 40;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let count = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS).map(|_| client(&addrs)).collect();
    // The member that relays client 0's ordered calls (one relay per client and shard).
    let relay = {
        let view = clients[0].0.view().expect("a view");
        let shard = view.shard(SHARD).expect("the shard");
        shard[(clients[0].0.id() as usize) % shard.len()]
    };
    let threads: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, (_, ledger))| {
            let (ledger, acked, count) = (ledger.clone(), acked.clone(), count.clone());
            std::thread::spawn(move || {
                block_on(async {
                    let mut tasks = FuturesUnordered::new();
                    for t in 0..IN_FLIGHT {
                        let (ledger, acked, count) = (&ledger, &acked, &count);
                        tasks.push(async move {
                            for i in 0..PER_TASK {
                                let op = ((c as u64 * IN_FLIGHT + t) << 32) | i;
                                let (_, n) = ledger.add(op).await.map_err(|e| format!("op {op:#x}: {e}"))?;
                                // The relay's replica applied it once (a resent call is answered
                                // with the first reply).
                                assert_eq!(n, 1, "op {op:#x} applied {n} times at its relay");
                                acked.lock().unwrap().insert(op);
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok::<_, String>(())
                        });
                    }
                    while let Some(r) = tasks.next().await {
                        r?;
                    }
                    Ok::<_, String>(())
                })
            })
        })
        .collect();
    // Kill the relay with calls in flight, a quarter of the way in.
    let total = CLIENTS * IN_FLIGHT * PER_TASK;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < total / 4 {
        assert!(Instant::now() < deadline, "only {} calls completed in 60 s", count.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(1));
    }
    members[relay.0 as usize].kill();
    for t in threads {
        t.join().expect("a client thread").expect("every call completes");
    }
    let resent: u64 = clients.iter().map(|(c, _)| c.resent()).sum();
    assert!(resent > 0, "no call was sent again: the kill found nothing in flight");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, total);
    // Every survivor applied every id, each once.
    let (_, ledger) = &clients[1];
    for n in (0..3u32).filter(|n| *n != relay.0) {
        let (all, twice) = block_on(ledger.report(Some(NodeId(n)))).expect("a report");
        assert!(twice.is_empty(), "member {n} applied {} ops twice: {:x?}", twice.len(), &twice[..twice.len().min(8)]);
        let all: BTreeSet<u64> = all.into_iter().collect();
        assert_eq!(all, acked, "member {n} applied other ops than those acknowledged");
    }
    eprintln!("{total} calls, {resent} sent again after killing relay {relay}");
    for (n, m) in members.iter_mut().enumerate() {
        if n as u32 != relay.0 {
            m.finish();
        }
    }
}

#[test]
fn bad_clients_cost_the_members_nothing() {
    let (mut members, addrs) = members();
    let target = &addrs[1];
    let tag = derecho_wire::session_tag(GROUP);
    // Garbage instead of a hello; a hello then a frame header announcing 4 GiB.
    let mut garbage = TcpStream::connect(target).unwrap();
    garbage.write_all(&[0xab; 4096]).unwrap();
    let mut huge = TcpStream::connect(target).unwrap();
    huge.write_all(&derecho_wire::frame::Header::encode_with(
        derecho_wire::frame::Kind::Hello,
        u64::from(u32::MAX) | (u64::from(tag) << 32),
        &[],
        true,
    ))
    .unwrap();
    let mut header = derecho_wire::frame::Header::encode(derecho_wire::frame::Kind::Data, 0, &[]);
    header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    huge.write_all(&header).unwrap();
    // 1,000 idle connections, half of them past the handshake.
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(&addrs[i % 3]).unwrap();
        if i % 2 == 0 {
            s.write_all(&derecho_wire::frame::Header::encode(
                derecho_wire::frame::Kind::Hello,
                u64::from(u32::MAX) | (u64::from(tag) << 32),
                &[],
            ))
            .unwrap();
        }
        idle.push(s);
    }
    // A client that sends requests and never reads the answers.
    let mut deaf = TcpStream::connect(target).unwrap();
    deaf.write_all(&derecho_wire::frame::Header::encode(
        derecho_wire::frame::Kind::Hello,
        u64::from(u32::MAX) | (u64::from(tag) << 32),
        &[],
    ))
    .unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let ping = {
        let mut v = Vec::new();
        for req in 0..20_000u64 {
            derecho_wire::client::Request::Ping { req }.encode(&mut v);
        }
        v
    };
    let deaf_writer = std::thread::spawn(move || {
        // Until the member closes it (its answers pile up unread: 40 MB of them, beyond the
        // 16 MiB a member holds for a client) or 60 rounds.
        for _ in 0..60 {
            if deaf.write_all(&ping).is_err() {
                return true;
            }
        }
        false
    });
    // Meanwhile a good client keeps calling: all succeed, none slow.
    let (_c, ledger) = client(&addrs);
    let mut worst = Duration::ZERO;
    for op in 0..300u64 {
        let t = Instant::now();
        block_on(ledger.add(op)).expect("a good client's call");
        worst = worst.max(t.elapsed());
    }
    assert!(worst < Duration::from_secs(2), "a good client's call took {worst:?} while bad clients ran");
    // The garbage connection and the huge frame were closed by the member.
    for (what, s) in [("garbage", &mut garbage), ("a 4 GiB frame", &mut huge)] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        let closed = loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break true,
                Ok(_) => {}
            }
        };
        assert!(closed, "{what} was not closed");
    }
    assert!(deaf_writer.join().unwrap(), "the member kept a client that does not read its answers");
    drop(idle);
    // Every member is still up and answers.
    for n in 0..3 {
        let (all, _) = block_on(ledger.report(Some(NodeId(n)))).expect("a member answers");
        assert_eq!(all.len(), 300, "member {n}");
    }
    for m in &mut members {
        m.finish();
    }
}

/// Removes a directory when dropped (also when the test panics).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn persisting_member(me: u32, dir: &std::path::Path, contact: Option<&str>) -> Member {
    let mut args = vec![OsString::from("--persist"), dir.join(format!("member-{me}")).into_os_string()];
    if let Some(c) = contact {
        args.extend([OsString::from("--contact"), OsString::from(c)]);
    }
    Member::spawn(env!("CARGO_BIN_EXE_ledger_member"), me, &args)
}

/// Starts members 0, 1, 2 persisting under `dir` (member 0 first, the others through it; after
/// a total restart, member 0 leads it); returns them and their addresses once all are ready.
fn persisting_members(dir: &std::path::Path) -> (Vec<Member>, Vec<String>) {
    let first = persisting_member(0, dir, None);
    let a0 = first.expect("listening ")["listening ".len()..].to_string();
    let mut all = vec![first];
    let mut addrs = vec![a0.clone()];
    for me in 1..3 {
        let m = persisting_member(me, dir, Some(&a0));
        addrs.push(m.expect("listening ")["listening ".len()..].to_string());
        all.push(m);
    }
    for m in &all {
        m.expect("ready");
    }
    (all, addrs)
}

#[test]
fn acknowledged_calls_survive_killing_every_member() {
    let dir = RemoveOnDrop(std::env::temp_dir().join(format!("derecho-ack-{}", std::process::id())));
    let (mut members, addrs) = persisting_members(&dir.0);
    // A persisting service answers once a call is durable at every member of its shard.
    let c = ExternalClient::builder(GROUP, addrs.clone()).timeout(Duration::from_secs(2)).build();
    c.blocking().refresh_view().expect("the view");
    let ledger = LedgerExternal::new(ExternalHandle::<Ledger>::new(c.clone(), SHARD));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let loader = {
        let (ledger, acked) = (ledger.clone(), acked.clone());
        std::thread::spawn(move || {
            block_on(async {
                let mut tasks = FuturesUnordered::new();
                for t in 0..16u64 {
                    let (ledger, acked) = (&ledger, &acked);
                    tasks.push(async move {
                        for i in 0.. {
                            let op = (t << 32) | i;
                            if ledger.add(op).await.is_err() {
                                return; // the members are gone
                            }
                            acked.lock().unwrap().insert(op);
                        }
                    });
                }
                while tasks.next().await.is_some() {}
            });
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "fewer than 300 calls acknowledged in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Every member at once, with calls in flight.
    for m in &mut members {
        m.kill();
    }
    loader.join().expect("the loader");
    let acked = acked.lock().unwrap().clone();
    drop(c);
    // The group restarts from its logs: every acknowledged call is there, once.
    let (mut members, addrs) = persisting_members(&dir.0);
    let (_c, ledger) = client(&addrs);
    for n in 0..3u32 {
        let (all, twice) = block_on(ledger.report(Some(NodeId(n)))).expect("a report");
        assert!(twice.is_empty(), "member {n} applied ops twice after the restart: {twice:x?}");
        let all: BTreeSet<u64> = all.into_iter().collect();
        let lost: Vec<_> = acked.difference(&all).take(8).collect();
        assert!(lost.is_empty(), "member {n} lost {} acknowledged calls: {lost:x?}", acked.difference(&all).count());
    }
    eprintln!("{} acknowledged calls survived the loss of every member", acked.len());
    for m in &mut members {
        m.finish();
    }
}
