//! `rpc`: calls into a replicated object, the equivalent of Derecho's `typed_subgroup_bw_test`
//! (ordered calls) and `p2p_bw_test` (P2P queries).
//!
//! Three member processes of a `Group`, each view over loopback TCP or over shared memory, pinned
//! round robin to the cores, host a `#[replicated]` type in one shard of all three. For a few
//! seconds:
//!
//! * `ordered`: every member keeps `--outstanding` ordered calls in flight (a call completes when
//!   every replica applied it and replied); the result is calls completed per second, summed
//!   over the members;
//! * `query`: every member keeps queries in flight to the next member; queries per second;
//! * `multicast` (the baseline of `ordered`): the same members multicast messages of the same
//!   size with no call layer; messages delivered per second at a member.
//!
//! Cases are named `TRANSPORT-SIZE-MODE` (`tcp-100b-ordered`, `shm-10kib-query`); transport
//! `tls` is TCP with mutual TLS on every connection (certificates of a throw-away authority), and
//! its cases also print their rate against the same case over plaintext TCP in the same run
//! (`tls_vs_plaintext`). A full run ends with the issues' target lines:
//! `target-ordered-100b` (at least 500,000 ordered calls per second over TCP) and
//! `target-tls-10kib-ordered-vs-plaintext` (TLS at least 0.7 of plaintext).
//!
//! ```text
//! cargo run --release -p derecho-benches --bin rpc [-- --quick] [-- --secs S] [-- --transport tcp|tls|shm]
//! ```

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use derecho::driver::{GroupBuilder, TransportKind};
use derecho::protocol::{Delivered, NodeId, ShardIndex, ShardRef, SubgroupId};
use derecho::rpc::Service;
use derecho::{available_cores, spawn};
use derecho_benches::sink::{Sink, SinkClient};
use derecho_benches::{Commands, MemberProcesses, Record, arg, flag};

const BENCH: &str = "rpc";
const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const MEMBERS: u32 = 3;
/// Spin budget of the members before parking, µs.
const SPIN_US: u64 = 200;

fn member(args: &[String]) {
    let num = |n: &str| -> u64 { arg(args, n).expect(n).parse().expect("a number") };
    let me = NodeId(num("--member") as u32);
    let size = num("--size") as usize;
    let secs = num("--secs");
    let outstanding = num("--outstanding") as usize;
    let mode = arg(args, "--mode").expect("--mode").to_string();
    let shm_dir = arg(args, "--shm-dir").map(str::to_string);
    let commands = Commands::from_stdin();
    let executor = derecho_benches::member_executor(args, Duration::from_micros(SPIN_US));
    executor.block_on(async move {
        let (limits, membership) = derecho_benches::call_bench_settings();
        let builder = GroupBuilder::new(me, "127.0.0.1:0".parse().unwrap())
            .name("rpc-bench")
            .limits(limits)
            .membership(membership);
        let builder = match shm_dir {
            Some(d) => builder.transport(TransportKind::Shm).shm_dir(d),
            None => builder,
        };
        let builder = match arg(args, "--tls") {
            Some(d) => {
                let d = std::path::Path::new(d);
                let file = |ext: &str| d.join(format!("node-{}.{ext}", me.0));
                let id =
                    derecho::runtime::tls::TlsIdentity::from_pem_files(&d.join("ca.pem"), &file("pem"), &file("key"))
                        .expect("the benchmark's certificates");
                builder.tls(id)
            }
            None => builder.insecure(),
        };
        let delivered = Rc::new(Cell::new(0u64));
        let service = Service::new();
        service.host(SubgroupId(0), Sink::default);
        let contact = arg(args, "--contact").map(|c| c.parse().expect("an address"));
        let group = if mode == "multicast" {
            let d = delivered.clone();
            let app = move |_: Delivered<'_>| d.set(d.get() + 1);
            match contact {
                None => builder.start(app).await,
                Some(c) => builder.join(c, app).await.map_err(|e| {
                    derecho::driver::GroupError::Transport(derecho::TransportError::Config(e.to_string()))
                }),
            }
            .expect("group")
        } else {
            service.start_or_join(builder, contact).await.expect("start or join")
        };
        println!("listening {}", group.local_addr());
        group.wait_view(Duration::from_secs(60), |v| v.members.len() == MEMBERS as usize).await.expect("three members");
        println!("ready");
        commands.wait_for(1).await;
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let done = Rc::new(Cell::new(0u64));
        let payload = vec![7u8; size];
        let mut tasks = Vec::new();
        for _ in 0..outstanding {
            let (done, payload, mode) = (done.clone(), payload.clone(), mode.clone());
            let client = SinkClient::new(service.handle::<Sink>(SHARD));
            let sender = group.sender();
            let next = NodeId((me.0 + 1) % MEMBERS);
            tasks.push(spawn(async move {
                while Instant::now() < deadline {
                    match mode.as_str() {
                        "ordered" => {
                            client.put(&payload).await.expect("ordered call");
                        }
                        "query" => {
                            client.peek(next, &payload).await.expect("query");
                        }
                        _ => sender.send(SHARD, payload.len(), |b| b.copy_from_slice(&payload)).await.expect("send"),
                    }
                    done.set(done.get() + 1);
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let elapsed = start.elapsed();
        // Messages delivered here (multicast), or calls this member completed.
        let count = if mode == "multicast" { delivered.get() } else { done.get() };
        println!("done {count} {}", elapsed.as_nanos());
        std::io::stdout().flush().ok();
        commands.wait_for(2).await;
        group.close().await;
    });
}

/// One case: returns the rate (per second) summed over members (calls) or at one member
/// (multicast: every member delivers every message).
fn run_case(transport: &str, size: usize, mode: &str, secs: u64) -> f64 {
    let cores = available_cores();
    // Enough calls in flight to keep the window busy; for large calls the ring fills first.
    let outstanding = match mode {
        "ordered" if size > 1024 => 256,
        "ordered" => 2048,
        "query" => 64,
        _ => 1,
    };
    // Over shared memory, each case's views live in a directory of their own.
    let shm_dir = (transport == "shm").then(|| {
        let d = format!("/dev/shm/derecho-rpc-bench-{}-{size}-{mode}", std::process::id());
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a directory in /dev/shm");
        d
    });
    // With TLS, a throw-away authority and each member's certificate in a directory.
    let tls_dir = (transport == "tls").then(|| {
        let d = std::env::temp_dir().join(format!("derecho-rpc-bench-tls-{}-{size}-{mode}", std::process::id()));
        let ca = derecho::runtime::tls::DevCa::new().expect("a development authority");
        ca.write_nodes(&d, 0..MEMBERS).expect("certificates");
        d
    });
    let mut members = MemberProcesses::new(format!("rpc {transport} {mode}"), Duration::from_secs(60 + secs));
    let args = |id: u32, contact: Option<&str>| {
        let mut a: Vec<String> = vec!["--member".into(), id.to_string(), "--size".into(), size.to_string()];
        a.extend(["--secs".into(), secs.to_string(), "--outstanding".into(), outstanding.to_string()]);
        a.extend(["--mode".into(), mode.into()]);
        if !cores.is_empty() {
            a.extend(["--core".into(), cores[id as usize % cores.len()].to_string()]);
        }
        if let Some(c) = contact {
            a.extend(["--contact".into(), c.into()]);
        }
        if let Some(d) = &tls_dir {
            a.extend(["--tls".into(), d.display().to_string()]);
        }
        if let Some(d) = &shm_dir {
            a.extend(["--shm-dir".into(), d.clone()]);
        }
        a
    };
    members.spawn(0, &args(0, None));
    let line = members.wait("address", |id, l| id == 0 && l.starts_with("listening "));
    let a0 = line["listening ".len()..].to_string();
    for id in 1..MEMBERS {
        members.spawn(id, &args(id, Some(&a0)));
    }
    let mut ready = 0;
    members.wait("readiness", |_, l| {
        ready += usize::from(l == "ready");
        ready == MEMBERS as usize
    });
    members.tell_all("go");
    let mut results: Vec<(u64, u64)> = Vec::new();
    members.wait("results", |_, l| {
        if let Some(rest) = l.strip_prefix("done ") {
            let mut f = rest.split(' ').map(|x| x.parse::<u64>().expect("a number"));
            results.push((f.next().expect("count"), f.next().expect("ns")));
        }
        results.len() == MEMBERS as usize
    });
    members.finish(Duration::from_secs(30));
    if let Some(d) = tls_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    if let Some(d) = shm_dir {
        let left: Vec<String> = std::fs::read_dir(&d)
            .map(|r| r.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let _ = std::fs::remove_dir_all(&d);
        assert!(left.is_empty(), "rpc {transport} {mode}: the members left files in {d}: {left:?}");
    }
    let rate = |(count, ns): (u64, u64)| count as f64 / (ns as f64 / 1e9);
    if mode == "multicast" {
        // Every member delivers every message: the slowest member's rate.
        results.into_iter().map(rate).fold(f64::INFINITY, f64::min)
    } else {
        results.into_iter().map(rate).sum()
    }
}

fn main() {
    derecho_benches::log_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if arg(&args, "--child") == Some("member") {
        member(&args);
        return;
    }
    let quick = flag(&args, "--quick");
    let secs: u64 = arg(&args, "--secs").map_or(if quick { 1 } else { 3 }, |v| v.parse().expect("a number"));
    eprintln!(
        "rpc benchmark ({}), {secs} s per case, cores {:?}",
        if quick { "quick" } else { "full" },
        available_cores()
    );
    let mut ordered_100b = None;
    let mut tls_10kib = None;
    // Plaintext rates by (size, mode), for the TLS cases' ratio.
    let mut plain: Vec<((usize, &str), f64)> = Vec::new();
    let only = arg(&args, "--transport");
    for transport in ["tcp", "tls", "shm"].into_iter().filter(|t| only.is_none_or(|o| o == *t)) {
        for (size, label) in [(100usize, "100b"), (10 << 10, "10kib")] {
            let case = |mode: &str| format!("{transport}-{label}-{mode}");
            let baseline = run_case(transport, size, "multicast", secs);
            Record::new(BENCH, case("multicast"), "messages_per_s", baseline, "msg/s").print();
            let ordered = run_case(transport, size, "ordered", secs);
            Record::new(BENCH, case("ordered"), "calls_per_s", ordered, "calls/s").with_baseline(baseline).print();
            if (transport, size) == ("tcp", 100) {
                ordered_100b = Some(ordered);
            }
            let query = run_case(transport, size, "query", secs);
            Record::new(BENCH, case("query"), "queries_per_s", query, "queries/s").print();
            for (mode, rate) in [("multicast", baseline), ("ordered", ordered), ("query", query)] {
                if transport == "tcp" {
                    plain.push(((size, mode), rate));
                }
                let vs = plain.iter().find(|(k, _)| *k == (size, mode)).map(|(_, r)| *r);
                if transport == "tls"
                    && let Some(p) = vs
                {
                    Record::new(BENCH, case(mode), "tls_vs_plaintext", rate, "per s").with_baseline(p).print();
                    if (size, mode) == (10 << 10, "ordered") {
                        tls_10kib = Some(rate / p);
                    }
                }
            }
        }
    }
    if let Some(v) = ordered_100b {
        Record::new(BENCH, "target-ordered-100b", "calls_per_s", v, "calls/s")
            .with_target(500_000.0, v >= 500_000.0)
            .print();
    }
    if let Some(r) = tls_10kib {
        Record::new(BENCH, "target-tls-10kib-ordered-vs-plaintext", "ratio", r, "ratio")
            .with_target(0.7, r >= 0.7)
            .print();
    }
}
