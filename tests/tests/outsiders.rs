//! Outsiders against member processes (`ledger_member`, three on loopback) while a client keeps
//! calling. Issue-15 attacks, reproduced from outside with raw sockets:
//!
//! * Listener abuse: garbage, frame headers announcing 4 GiB, 256 connections per member each
//!   holding a valid header and a truncated 1 MiB body (half as control messages, half as client
//!   frames), 500 idle connections, and connections that send one byte a second. The members
//!   stay up, each member's resident memory stays under [`RSS_GROWTH_MAX`] above what it was
//!   before, and the good client's calls all succeed, none slower than [`CALL_BOUND`].
//! * Phantom joiners: four join requests for ids whose addresses never answer, then four whose
//!   addresses answer the handshake and never take part. The group stays up: the first are never
//!   admitted, the second at most two at a time (fewer than the three members that stay), and
//!   they are removed again.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use derecho::protocol::wire::{Control, JOIN_VERSION};
use derecho::protocol::{NodeId, ShardRef};
use derecho::rpc::{ExternalClient, ExternalHandle, block_on};
use derecho_tests::kv_process::{Member, three_members};
use derecho_tests::ledger::{Ledger, LedgerExternal};
use derecho_wire::frame::{HEADER_LEN, Header, Kind};

const SHARD: ShardRef = ShardRef::new(0, 0);
const GROUP: &str = "ledger";
/// How much a member's resident memory may grow while the listener attacks run (documented in
/// the book's "Security and failure" chapter: the listener's budgets plus slack for the
/// allocator).
const RSS_GROWTH_MAX: u64 = 160 << 20;
/// The slowest a good client's call may be while an attack runs.
const CALL_BOUND: Duration = Duration::from_secs(2);

fn members() -> (Vec<Member>, Vec<String>) {
    members_with(&[])
}

/// Three members, each started with `extra` arguments.
fn members_with(extra: &[&str]) -> (Vec<Member>, Vec<String>) {
    three_members(env!("CARGO_BIN_EXE_ledger_member"), extra)
}

fn client(addrs: &[String]) -> (ExternalClient, LedgerExternal) {
    let c = ExternalClient::builder(GROUP, addrs.to_vec()).timeout(Duration::from_secs(20)).build();
    c.blocking().refresh_view().expect("the view");
    (c.clone(), LedgerExternal::new(ExternalHandle::<Ledger>::new(c, SHARD)))
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS");
    kb << 10
}

fn hello(tag: u32) -> [u8; HEADER_LEN] {
    Header::encode(Kind::Hello, u64::from(u32::MAX - 7) | (u64::from(tag) << 32), &[])
}

/// A data frame header announcing `len` bytes of body.
fn data_header(len: u32) -> [u8; HEADER_LEN] {
    let mut h = Header::encode(Kind::Data, 0, &[]);
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// A client that calls in a loop until `stop`; returns (calls, failures, worst latency).
fn load(ledger: LedgerExternal, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>, Duration)> {
    std::thread::spawn(move || {
        let (mut calls, mut failures, mut worst) = (0u64, Vec::new(), Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match block_on(ledger.add(calls)) {
                Ok(_) => calls += 1,
                Err(e) => failures.push(e.to_string()),
            }
            worst = worst.max(t.elapsed());
        }
        (calls, failures, worst)
    })
}

#[test]
fn listener_attacks_cost_bounded_memory_and_no_calls() {
    let (mut members, addrs) = members();
    let (_c, ledger) = client(&addrs);
    block_on(ledger.add(u64::MAX)).expect("a first call");
    let pids: Vec<u32> = members.iter().map(|m| m.pid().expect("running")).collect();
    let before: Vec<u64> = pids.iter().map(|&p| rss(p)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(ledger.clone(), stop.clone());
    let session = derecho_wire::session_tag(GROUP);
    let control = derecho_wire::control_tag(GROUP);
    let mut held = Vec::new();
    let body = vec![0x5a_u8; 1 << 20];
    for a in &addrs {
        // Garbage, and a header announcing 4 GiB.
        let mut g = TcpStream::connect(a).unwrap();
        g.write_all(&[0xab; 4096]).unwrap();
        held.push(g);
        let mut h = TcpStream::connect(a).unwrap();
        h.write_all(&hello(session)).unwrap();
        h.write_all(&data_header(u32::MAX)).unwrap();
        held.push(h);
        // 256 valid headers, each with a body one byte short of what it announces: control
        // messages (at most 1 MiB) and client frames.
        for i in 0..256 {
            let Ok(mut s) = TcpStream::connect(a) else { continue };
            let (tag, len) = if i % 2 == 0 { (control, (1 << 20) - 64) } else { (session, 1 << 20) };
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(&hello(tag));
            let _ = s.write_all(&data_header(len));
            let _ = s.write_all(&body[..len as usize - 1]);
            held.push(s);
        }
    }
    // 500 idle connections, half of them past the handshake.
    for i in 0..500 {
        let Ok(mut s) = TcpStream::connect(&addrs[i % 3]) else { continue };
        if i % 2 == 0 {
            let _ = s.write_all(&hello(session));
        }
        held.push(s);
    }
    // One byte a second, on twelve connections.
    let slow_stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..12)
        .map(|i| {
            let a = addrs[i % 3].clone();
            let stop = slow_stop.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(&a) else { return };
                let mut bytes = hello(session).to_vec();
                bytes.extend_from_slice(&data_header(4096));
                for b in bytes.iter().cycle() {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    // The attack holds for a while; resident memory is sampled meanwhile.
    let mut peak = [0u64; 3];
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for (k, &p) in pids.iter().enumerate() {
            peak[k] = peak[k].max(rss(p));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (calls, failures, worst) = loader.join().unwrap();
    slow_stop.store(true, Ordering::Relaxed);
    drop(held);
    for t in slow {
        t.join().unwrap();
    }
    for (k, m) in members.iter_mut().enumerate() {
        assert!(!m.exited(), "member {k} died under the attack");
        let growth = peak[k].saturating_sub(before[k]);
        assert!(
            growth < RSS_GROWTH_MAX,
            "member {k}: resident memory grew by {} MiB (from {} MiB), above the {} MiB bound",
            growth >> 20,
            before[k] >> 20,
            RSS_GROWTH_MAX >> 20
        );
    }
    assert!(
        failures.is_empty(),
        "{} of the good client's calls failed under attack: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(calls > 100, "only {calls} calls completed during the attack");
    assert!(worst < CALL_BOUND, "a good client's call took {worst:?} during the attack");
    eprintln!(
        "listener attack: {calls} calls, worst {worst:?}, resident memory growth {:?} MiB",
        peak.iter().zip(&before).map(|(p, b)| p.saturating_sub(*b) >> 20).collect::<Vec<_>>()
    );
    for m in &mut members {
        m.finish();
    }
}

/// A listener that speaks just enough of the protocol to be admitted (it answers every hello
/// with one of its own and reads what comes) and then never takes part. Counts the connections
/// that brought a tag other than the control tag: a view's transport dialling it, which means
/// it was admitted.
fn liar(control: u32, admitted: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let admitted = admitted.clone();
            std::thread::spawn(move || {
                let mut h = [0u8; HEADER_LEN];
                if s.read_exact(&mut h).is_err() {
                    return;
                }
                let tag = u32::from_le_bytes(h[12..16].try_into().unwrap());
                if tag != control {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                let _ = s.write_all(&Header::encode(Kind::Hello, u64::from(h[8]) | (u64::from(tag) << 32), &[]));
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Sends a join request for `node` at `address` to the member at `to`, as a raw control message.
fn raw_join(to: &str, control: u32, node: u32, address: &str, app: u64) {
    let body = Control::Join { version: JOIN_VERSION, node: NodeId(node), address: address.to_string(), app }.encode();
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&Header::encode(Kind::Hello, u64::from(node) | (u64::from(control) << 32), &[])).unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).expect("the member's hello");
    s.write_all(&Header::encode(Kind::Data, 0, &body)).unwrap();
    s.write_all(&body).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn phantom_joiners_do_not_stop_the_group() {
    let (mut members, addrs) = members();
    let (c, ledger) = client(&addrs);
    block_on(ledger.add(u64::MAX)).expect("a first call");
    let app = {
        use derecho::driver::Application;
        let s = derecho::rpc::Service::new();
        s.host(derecho::protocol::SubgroupId(0), Ledger::default);
        s.fingerprint()
    };
    let control = derecho_wire::control_tag(GROUP);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(ledger.clone(), stop.clone());
    // Addresses nobody answers at.
    for node in 100..104 {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        raw_join(&addrs[0], control, node, &addr, app);
    }
    // Addresses that answer the handshake and then never take part.
    let admitted = Arc::new(AtomicUsize::new(0));
    for node in 200..204 {
        let addr = liar(control, admitted.clone());
        raw_join(&addrs[0], control, node, &addr, app);
    }
    // The group goes on: every phantom admitted is removed again, and the view comes back to
    // the three members.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_max = 3;
    let mut last = (0, Instant::now());
    loop {
        let v = c.blocking().refresh_view().expect("the view");
        seen_max = seen_max.max(v.members.len());
        if v.id.0 != last.0 {
            last = (v.id.0, Instant::now());
        }
        let ids: Vec<u32> = v.members.iter().map(|(n, _)| n.0).collect();
        let settled = last.1.elapsed() > Duration::from_secs(3);
        if ids == [0, 1, 2] && admitted.load(Ordering::Relaxed) > 0 && settled {
            break;
        }
        assert!(Instant::now() < deadline, "the view did not come back to members 0, 1, 2: view {} {ids:?}", v.id.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (calls, failures, worst) = loader.join().unwrap();
    for (k, m) in members.iter_mut().enumerate() {
        assert!(!m.exited(), "member {k} stopped after the phantom joins");
    }
    assert!(admitted.load(Ordering::Relaxed) > 0, "no phantom that answers was ever admitted: the test did not attack");
    assert!(seen_max <= 5, "more phantoms than members that stay were admitted at once ({seen_max} members)");
    assert!(failures.is_empty(), "calls failed during the phantom joins: {failures:?}");
    eprintln!("phantom joins: {calls} calls meanwhile, worst {worst:?}, largest view {seen_max}");
    for m in &mut members {
        m.finish();
    }
}

/// With an allow-list (`allow_only`), a join for another id is refused, and the refusal says so.
#[test]
fn a_join_from_an_id_not_allowed_is_refused() {
    let (mut members, addrs) = members_with(&["--allow", "0,1,2,3"]);
    let app = {
        use derecho::driver::Application;
        let s = derecho::rpc::Service::new();
        s.host(derecho::protocol::SubgroupId(0), Ledger::default);
        s.fingerprint()
    };
    let control = derecho_wire::control_tag(GROUP);
    // The joiner's listener, where the answer goes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap().to_string();
    raw_join(&addrs[0], control, 9, &at, app);
    l.set_nonblocking(false).unwrap();
    let (mut s, _) = l.accept().expect("the member answers the joiner's listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).expect("the member's hello");
    s.write_all(&Header::encode(Kind::Hello, u64::from(9u32) | (u64::from(control) << 32), &[])).unwrap();
    s.read_exact(&mut h).expect("the answer's header");
    let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("the answer");
    let answer = Control::decode(&body).expect("a control message");
    assert_eq!(
        answer,
        Control::Answer(derecho::protocol::wire::Answer::Refused(derecho::protocol::JoinRefusal::NotAllowed(NodeId(
            9
        ))))
    );
    for m in &mut members {
        m.finish();
    }
}
