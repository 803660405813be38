//! `client`: external clients calling a replicated object from another process.
//!
//! Three member processes of a `Group` over loopback TCP host a `#[replicated]` type in one
//! shard of all three; client processes (`derecho-client`, driven by the `futures` crate's
//! executor: no derecho runtime in the client) call it:
//!
//! * `tcp-100b-ordered-1`: one ordered call of 100 bytes outstanding; p50 and p99 of the time
//!   from the call to its reply (relayed by a member, applied by the shard). Baselines in the
//!   same run: the members' own ordered call of 100 bytes with one outstanding (`member-...`),
//!   and a raw TCP round trip of 100 bytes between two processes with blocking sockets.
//! * `tcp-100b-ordered-256`, `tcp-100b-ordered-256-4c`: 256 ordered calls in flight from one
//!   client, and from each of 4 client processes; calls per second (summed).
//! * `tcp-100b-query-256`: 256 queries in flight from one client; queries per second.
//!
//! * `python-tcp-100b-ordered-1`, `python-tcp-100b-ordered-64-threads`: the generated Python class
//!   against three kv members, with the Rust client's `kv bench` on the same group as baseline
//!   (`examples/python/bench.py`; only once the module is built by `examples/python/run-tests`).
//!
//! It ends with the issue's targets: p50 at most twice the members' p50 plus one raw round
//! trip; 200,000 ordered calls/s from one client, 300,000 from four; 400,000 queries/s.
//!
//! ```text
//! cargo run --release -p derecho-benches --bin client [-- --quick] [-- --secs S]
//! ```

use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, Instant};

use derecho::available_cores;
use derecho::driver::GroupBuilder;
use derecho::protocol::{NodeId, ShardIndex, ShardRef, SubgroupId};
use derecho::rpc::{ExternalClient, ExternalHandle, Service};
use derecho_benches::sink::{Sink, SinkClient, SinkExternal};
use derecho_benches::{Commands, MemberProcesses, Record, arg, flag, percentile, raw};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

const BENCH: &str = "client";
const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const MEMBERS: u32 = 3;
const GROUP: &str = "client-bench";
/// Spin budget of the members before parking, µs.
const SPIN_US: u64 = 20;
const SIZE: usize = 100;

fn member(args: &[String]) {
    let num = |n: &str| -> u64 { arg(args, n).expect(n).parse().expect("a number") };
    let me = NodeId(num("--member") as u32);
    let rounds = num("--rounds") as usize;
    let commands = Commands::from_stdin();
    let executor = derecho_benches::member_executor(args, Duration::from_micros(SPIN_US));
    executor.block_on(async move {
        let (limits, membership) = derecho_benches::call_bench_settings();
        let builder = GroupBuilder::new(me, "127.0.0.1:0".parse().unwrap())
            .insecure()
            .name(GROUP)
            .limits(limits)
            .membership(membership);
        let service = Service::new();
        service.host(SubgroupId(0), Sink::default);
        let contact = arg(args, "--contact").map(|c| c.parse().expect("an address"));
        let group = service.start_or_join(builder, contact).await.expect("start or join");
        println!("listening {}", group.local_addr());
        group.wait_view(Duration::from_secs(60), |v| v.members.len() == MEMBERS as usize).await.expect("three members");
        println!("ready");
        commands.wait_for(1).await;
        if me.0 == 0 {
            // The baseline: this member's own ordered calls, one outstanding.
            let client = SinkClient::new(service.handle::<Sink>(SHARD));
            let payload = vec![7u8; SIZE];
            let mut samples = Vec::with_capacity(rounds);
            for i in 0..rounds + rounds / 10 {
                let t = Instant::now();
                client.put(&payload).await.expect("ordered call");
                if i >= rounds / 10 {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            println!("own {} {}", percentile(&mut samples, 50.0), percentile(&mut samples, 99.0));
            std::io::stdout().flush().ok();
        }
        commands.wait_for(2).await;
        group.close().await;
    });
}

/// A client process: runs one case against the members at `--contacts` and prints its result.
fn client(args: &[String]) {
    let contacts: Vec<String> = arg(args, "--contacts").expect("--contacts").split(',').map(String::from).collect();
    let case = arg(args, "--case").expect("--case").to_string();
    let secs: u64 = arg(args, "--secs").expect("--secs").parse().expect("a number");
    let rounds: usize = arg(args, "--rounds").expect("--rounds").parse().expect("a number");
    let commands = Commands::from_stdin();
    let client = ExternalClient::builder(GROUP, contacts).build();
    client.blocking().refresh_view().expect("the view");
    let store = SinkExternal::new(ExternalHandle::new(client.clone(), SHARD));
    let payload = vec![7u8; SIZE];
    println!("ready");
    std::io::stdout().flush().ok();
    commands.block_until(1);
    match case.as_str() {
        "ordered-1" => {
            let mut samples = Vec::with_capacity(rounds);
            for i in 0..rounds + rounds / 10 {
                let t = Instant::now();
                futures::executor::block_on(store.put(&payload)).expect("ordered call");
                if i >= rounds / 10 {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            println!("latency {} {}", percentile(&mut samples, 50.0), percentile(&mut samples, 99.0));
        }
        "ordered-256" | "query-256" => {
            let done = Cell::new(0u64);
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs);
            let ordered = case == "ordered-256";
            futures::executor::block_on(async {
                let mut all = FuturesUnordered::new();
                for _ in 0..256 {
                    all.push(async {
                        while Instant::now() < deadline {
                            if ordered {
                                store.put(&payload).await.expect("ordered call");
                            } else {
                                store.peek(None, &payload).await.expect("query");
                            }
                            done.set(done.get() + 1);
                        }
                    });
                }
                while all.next().await.is_some() {}
            });
            println!("rate {}", done.get() as f64 / start.elapsed().as_secs_f64());
        }
        other => panic!("unknown case {other}"),
    }
    std::io::stdout().flush().ok();
    commands.block_until(2);
}

/// Runs `clients` client processes of `case` against the members at `contacts`; returns each
/// one's result line (after its keyword).
fn run_clients(contacts: &str, case: &str, clients: u32, secs: u64, rounds: usize) -> Vec<Vec<f64>> {
    let mut procs = MemberProcesses::new(format!("client {case}"), Duration::from_secs(120 + secs));
    for i in 0..clients {
        let mut a: Vec<String> = vec!["--role".into(), "client".into(), "--contacts".into(), contacts.into()];
        a.extend(["--case".into(), case.into(), "--secs".into(), secs.to_string()]);
        a.extend(["--rounds".into(), rounds.to_string()]);
        procs.spawn(100 + i, &a);
    }
    let mut ready = 0;
    procs.wait("clients ready", |_, l| {
        ready += usize::from(l == "ready");
        ready == clients as usize
    });
    procs.tell_all("go");
    let mut out = Vec::new();
    procs.wait("results", |_, l| {
        if let Some((_, rest)) = l.split_once(' ').filter(|(k, _)| *k == "latency" || *k == "rate") {
            out.push(rest.split(' ').map(|x| x.parse::<f64>().expect("a number")).collect());
        }
        out.len() == clients as usize
    });
    procs.finish(Duration::from_secs(30));
    out
}

/// The Python client's cases (`examples/python/bench.py`, against kv members), when the module
/// is built (`bash examples/python/run-tests` builds it); otherwise says how to get them.
fn python_cases(quick: bool) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let python = format!("{root}/target/python-venv/bin/python");
    let kv = format!("{root}/target/release/kv");
    if !std::path::Path::new(&python).exists() || !std::path::Path::new(&kv).exists() {
        eprintln!("client: no Python cases (run `bash examples/python/run-tests` first to build the module)");
        return;
    }
    let mut cmd = std::process::Command::new(python);
    cmd.arg(format!("{root}/examples/python/bench.py")).env("KV_BIN", kv);
    if quick {
        cmd.arg("--quick");
    }
    match cmd.output() {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => eprintln!("client: the Python cases failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => eprintln!("client: the Python cases could not start: {e}"),
    }
}

fn main() {
    derecho_benches::log_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if arg(&args, "--child") == Some("member") {
        if arg(&args, "--role") == Some("client") {
            client(&args);
        } else {
            member(&args);
        }
        return;
    }
    if raw::child_role(arg(&args, "--child").unwrap_or_default(), &args) {
        return;
    }
    let quick = flag(&args, "--quick");
    let secs: u64 = arg(&args, "--secs").map_or(if quick { 1 } else { 3 }, |v| v.parse().expect("a number"));
    let rounds = if quick { 2_000 } else { 10_000 };
    let pinned = flag(&args, "--pinned");
    let cores = available_cores();
    eprintln!("client benchmark ({}), {secs} s per case, cores {cores:?}", if quick { "quick" } else { "full" });
    let (raw_p50, raw_p99) = raw::pingpong_us(SIZE, rounds, false, cores.get(1).copied().unwrap_or(0));
    Record::new(BENCH, "raw-tcp-100b-rtt", "p50_us", raw_p50, "us").print();
    Record::new(BENCH, "raw-tcp-100b-rtt", "p99_us", raw_p99, "us").print();

    let mut members = MemberProcesses::new("client members", Duration::from_secs(120));
    let margs = |id: u32, contact: Option<&str>| {
        let mut a: Vec<String> = vec!["--member".into(), id.to_string(), "--rounds".into(), rounds.to_string()];
        if pinned && !cores.is_empty() {
            a.extend(["--core".into(), cores[id as usize % cores.len()].to_string()]);
        }
        if let Some(c) = contact {
            a.extend(["--contact".into(), c.into()]);
        }
        a
    };
    members.spawn(0, &margs(0, None));
    let line = members.wait("address", |id, l| id == 0 && l.starts_with("listening "));
    let first = line["listening ".len()..].to_string();
    for id in 1..MEMBERS {
        members.spawn(id, &margs(id, Some(&first)));
    }
    // Every member's address (the client knows them all) and readiness, in any order.
    let mut contacts = vec![first];
    let mut ready = 0;
    members.wait("addresses and readiness", |_, l| {
        if let Some(a) = l.strip_prefix("listening ") {
            contacts.push(a.to_string());
        }
        ready += usize::from(l == "ready");
        ready == MEMBERS as usize && contacts.len() == MEMBERS as usize
    });
    members.tell_all("go");
    let own = members.wait("the members' own latency", |_, l| l.starts_with("own "));
    let own: Vec<f64> = own["own ".len()..].split(' ').map(|x| x.parse().expect("a number")).collect();
    Record::new(BENCH, "member-tcp-100b-ordered-1", "p50_us", own[0], "us").print();
    Record::new(BENCH, "member-tcp-100b-ordered-1", "p99_us", own[1], "us").print();
    let contacts = contacts.join(",");

    let lat = &run_clients(&contacts, "ordered-1", 1, secs, rounds)[0];
    let bound = 2.0 * own[0] + raw_p50;
    Record::new(BENCH, "tcp-100b-ordered-1", "p50_us", lat[0], "us").with_baseline(own[0]).print();
    Record::new(BENCH, "tcp-100b-ordered-1", "p99_us", lat[1], "us").with_baseline(own[1]).print();
    let one = run_clients(&contacts, "ordered-256", 1, secs, rounds)[0][0];
    Record::new(BENCH, "tcp-100b-ordered-256", "calls_per_s", one, "calls/s").print();
    let four: f64 = run_clients(&contacts, "ordered-256", 4, secs, rounds).iter().map(|r| r[0]).sum();
    Record::new(BENCH, "tcp-100b-ordered-256-4c", "calls_per_s", four, "calls/s").print();
    let queries = run_clients(&contacts, "query-256", 1, secs, rounds)[0][0];
    Record::new(BENCH, "tcp-100b-query-256", "queries_per_s", queries, "queries/s").print();
    members.finish(Duration::from_secs(30));

    python_cases(quick);

    Record::new(BENCH, "target-ordered-1-p50", "p50_us", lat[0], "us").with_target(bound, lat[0] <= bound).print();
    Record::new(BENCH, "target-ordered-256", "calls_per_s", one, "calls/s")
        .with_target(200_000.0, one >= 200_000.0)
        .print();
    Record::new(BENCH, "target-ordered-256-4c", "calls_per_s", four, "calls/s")
        .with_target(300_000.0, four >= 300_000.0)
        .print();
    Record::new(BENCH, "target-query-256", "queries_per_s", queries, "queries/s")
        .with_target(400_000.0, queries >= 400_000.0)
        .print();
}
