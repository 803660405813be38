//! Ordered and unordered multicast in a static group: the equivalent of Derecho's
//! `bandwidth_test` and `latency_test`.
//!
//! `cargo run --release -p derecho-benches --bin multicast [-- --quick] [-- --only WORD]`
//!
//! Throughput cases: every member process (or thread, for `-inproc` cases) pinned to a core
//! (members share cores round-robin when there are more members than cores); the senders (all,
//! half or one member) each send `count` messages as fast as the window lets them; every member
//! delivers all of them. A case reports the slowest member's delivered messages per second and
//! GB/s, from the end of the start-up barrier to its last delivery. The baseline is measured in
//! the same run: a plain blocking TCP socket streaming 1 MiB writes from one process to another
//! (for TCP cases), single-thread `memcpy` of the message size (for shared memory); the
//! messages-per-second baseline is that rate divided by the message size.
//!
//! Latency cases: 2 members on separate cores, spinning, one sender with one message
//! outstanding; the time from `send` to the sender's own delivery of it, p50 and p99. Baselines:
//! a busy-polling raw socket round trip (TCP) and a round trip through a page of shared memory.
//!
//! Cases are named `TRANSPORT-SIZE-MEMBERSm-SENDERS-MODE[-inproc]`, e.g. `tcp-100b-3m-all-ordered`.
//! A full or quick run ends with one `target-*` line per target of the multicast issue it
//! measured.
//!
//! A single case: `-- --case tcp --members 3 --senders all --size 100 --mode ordered
//! [--inproc] [--count N]`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use derecho::driver::{GroupConfig, StaticGroup, connect_with};
use derecho::protocol::{Delivered, NodeId};
use derecho::runtime::time;
use derecho::{ShmTransport, TcpListener, available_cores};
use derecho_benches::{ChildGuard, Record, arg, flag, median, percentile, raw};

const BENCH: &str = "multicast";
/// How long one case may take before it is declared hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Spin budget of the members: they poll this long before parking.
const SPIN_US: u64 = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Senders {
    All,
    Half,
    One,
}

impl Senders {
    fn name(self) -> &'static str {
        match self {
            Senders::All => "all",
            Senders::Half => "half",
            Senders::One => "one",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Senders::All),
            "half" => Some(Senders::Half),
            "one" => Some(Senders::One),
            _ => None,
        }
    }

    fn count(self, members: u32) -> u32 {
        match self {
            Senders::All => members,
            Senders::Half => members.div_ceil(2),
            Senders::One => 1,
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    /// `tcp`, `shm`, or `tls` (TCP with mutual TLS).
    transport: &'static str,
    members: u32,
    senders: Senders,
    size: usize,
    ordered: bool,
    inproc: bool,
    /// Messages per sender (throughput) or measured round trips (latency).
    count: u64,
    latency: bool,
}

impl Case {
    fn work(&self) -> Work {
        Work { size: self.size, count: self.count, latency: self.latency }
    }

    fn name(&self) -> String {
        let size = if self.size >= 1024 { format!("{}kib", self.size / 1024) } else { format!("{}b", self.size) };
        format!(
            "{}-{size}-{}m-{}-{}{}",
            self.transport,
            self.members,
            self.senders.name(),
            if self.ordered { "ordered" } else { "unordered" },
            if self.inproc { "-inproc" } else { "" }
        )
    }

    /// The group's configuration file; with `tls`, the directory of the members' certificates.
    fn toml(&self, addrs: &[SocketAddr], namespace: &str, tls: Option<&std::path::Path>) -> String {
        let transport = if self.transport == "shm" { "shm" } else { "tcp" };
        let mut t = format!(
            "me = 0\ntransport = \"{transport}\"\nspin_us = {SPIN_US}\nstart_timeout_ms = 30000\nshm_namespace = \"{namespace}\"\n"
        );
        match tls {
            Some(d) => t += &format!("[tls]\ndir = {:?}\n", d.display().to_string()),
            None if transport == "tcp" => t += "insecure = true\n",
            None => {}
        }
        // Rings big enough for a window's worth of the largest messages.
        let ring = if self.size > 1024 { 8 << 20 } else { 1 << 20 };
        t += &format!("[limits]\nwindow_len = 4096\npayload_len_max = {}\nring_len = {ring}\n", self.size.max(1024));
        for i in 0..self.members {
            t += &format!("[[members]]\nid = {i}\n");
            if let Some(a) = addrs.get(i as usize) {
                t += &format!("address = \"{a}\"\n");
            }
        }
        let ids: Vec<String> = (0..self.members).map(|i| i.to_string()).collect();
        let senders: Vec<String> = (0..self.senders.count(self.members)).map(|i| i.to_string()).collect();
        t += &format!(
            "[[shards]]\nmembers = [{}]\nsenders = [{}]\nmode = \"{}\"\n",
            ids.join(", "),
            senders.join(", "),
            if self.ordered { "ordered" } else { "unordered" }
        );
        t
    }
}

/// What every member is told to do.
#[derive(Clone, Copy, Debug)]
struct Work {
    size: usize,
    /// Messages per sender (throughput) or measured round trips (latency).
    count: u64,
    latency: bool,
}

/// What one member measured.
#[derive(Clone, Debug, Default)]
struct Outcome {
    delivered: u64,
    bytes: u64,
    secs: f64,
    /// Send-to-own-delivery samples in µs (latency cases, the sender only).
    latencies: Vec<f64>,
}

impl Outcome {
    fn line(&self) -> String {
        let lat: Vec<String> = self.latencies.iter().map(|l| format!("{l:.3}")).collect();
        format!("outcome {} {} {} {}", self.delivered, self.bytes, self.secs, lat.join(","))
    }

    fn parse(line: &str) -> Option<Self> {
        let mut it = line.strip_prefix("outcome ")?.split(' ');
        let delivered = it.next()?.parse().ok()?;
        let bytes = it.next()?.parse().ok()?;
        let secs = it.next()?.parse().ok()?;
        let latencies = match it.next() {
            Some(l) if !l.is_empty() => l.split(',').map(|v| v.parse().ok()).collect::<Option<Vec<f64>>>()?,
            _ => Vec::new(),
        };
        Some(Self { delivered, bytes, secs, latencies })
    }
}

/// Shared between a member's delivery callback and its task.
struct Progress {
    me: NodeId,
    delivered: Cell<u64>,
    bytes: Cell<u64>,
    mine: Cell<u64>,
    expected: u64,
    waker: RefCell<Option<Waker>>,
    error: RefCell<Option<String>>,
}

impl Progress {
    fn on_deliver(&self, d: &Delivered<'_>) {
        // Read the header the sender wrote: a wrong one means the wrong bytes were delivered.
        let from = d.payload.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if from != Some(d.sender.0) && self.error.borrow().is_none() {
            *self.error.borrow_mut() = Some(format!("message from {} carries header {from:?}", d.sender));
        }
        self.delivered.set(self.delivered.get() + 1);
        self.bytes.set(self.bytes.get() + d.payload.len() as u64);
        if d.sender == self.me {
            self.mine.set(self.mine.get() + 1);
        }
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until `done` holds, woken by deliveries.
    async fn until(&self, done: impl Fn(&Self) -> bool) {
        poll_fn(|cx| {
            if done(self) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// One member's run: start, send, deliver everything, settle, close.
async fn member(config: GroupConfig, listener: Option<TcpListener>, case: Work) -> Result<Outcome, String> {
    let me = config.me;
    let shard = config.view.shards[0].clone();
    let sends = shard.senders.contains(&me);
    let warm = if case.latency { case.count / 10 } else { 0 };
    let per_sender = case.count + warm;
    let progress = Rc::new(Progress {
        me,
        delivered: Cell::new(0),
        bytes: Cell::new(0),
        mine: Cell::new(0),
        expected: per_sender * shard.senders.len() as u64,
        waker: RefCell::new(None),
        error: RefCell::new(None),
    });
    let p = progress.clone();
    let transport = connect_with(&config, listener).await.map_err(|e| format!("member {me}: {e}"))?;
    let group =
        StaticGroup::start(transport, me, config.view.clone(), &config.limits, config.start_timeout, move |d| {
            p.on_deliver(&d)
        })
        .await
        .map_err(|e| format!("member {me}: {e}"))?;
    let fill = |buf: &mut [u8]| {
        buf[..4].copy_from_slice(&me.0.to_le_bytes());
    };
    let start = Instant::now();
    let mut latencies = Vec::new();
    let work = async {
        if sends && case.latency {
            for i in 0..per_sender {
                let t = Instant::now();
                group.send(shard.id, case.size, fill).await.map_err(|e| e.to_string())?;
                progress.until(|p| p.mine.get() > i).await;
                if i >= warm {
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
        } else if sends {
            for _ in 0..per_sender {
                group.send(shard.id, case.size, fill).await.map_err(|e| e.to_string())?;
            }
        }
        progress.until(|p| p.delivered.get() >= p.expected).await;
        Ok::<_, String>(())
    };
    let finished = time::timeout(CASE_TIMEOUT, work).await;
    let secs = start.elapsed().as_secs_f64();
    let result = match finished {
        Ok(Ok(())) => match progress.error.take() {
            Some(e) => Err(e),
            None => group.settle(shard.id, Duration::from_secs(30)).await.map(|_| ()).map_err(|e| e.to_string()),
        },
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "member {me}: {} of {} delivered after {CASE_TIMEOUT:?}; {}",
            progress.delivered.get(),
            progress.expected,
            group.describe()
        )),
    };
    group.close().await;
    result.map(|()| Outcome { delivered: progress.delivered.get(), bytes: progress.bytes.get(), secs, latencies })
}

/// Free loopback ports, one per member (bound and released; processes bind them again).
fn loopback_listeners(n: u32) -> Vec<TcpListener> {
    (0..n).map(|_| TcpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind loopback")).collect()
}

fn unique_ns(case: &Case) -> String {
    derecho_benches::unique_name("mcbench", case.transport)
}

/// Runs a case; returns every member's outcome.
fn run_case(case: &Case) -> Vec<Outcome> {
    let cores = available_cores();
    let core = |i: u32| if cores.is_empty() { None } else { Some(cores[i as usize % cores.len()]) };
    let listeners = if case.transport == "shm" { Vec::new() } else { loopback_listeners(case.members) };
    // With TLS: a throw-away authority, and each member's certificate in a directory.
    let tls_dir = (case.transport == "tls").then(|| {
        let dir = std::env::temp_dir().join(format!("{}-tls", unique_ns(case)));
        let ca = derecho::runtime::tls::DevCa::new().expect("a development authority");
        ca.write_nodes(&dir, 0..case.members).expect("certificates");
        dir
    });
    let addrs: Vec<SocketAddr> = listeners.iter().map(TcpListener::local_addr).collect();
    let ns = unique_ns(case);
    let toml = case.toml(&addrs, &ns, tls_dir.as_deref());
    let config_of = |i: u32| {
        let mut sets = vec![format!("me={i}")];
        if let Some(c) = core(i) {
            sets.push(format!("core={c}"));
        }
        GroupConfig::from_toml(&toml, std::iter::empty(), &sets).expect("the benchmark's configuration is valid")
    };
    let outcomes = if case.inproc {
        let mut threads = Vec::new();
        let mut listeners = listeners.into_iter();
        for i in 0..case.members {
            let config = config_of(i);
            let listener = listeners.next();
            let work = case.work();
            let t = config
                .executor()
                .spawn_thread(move || member(config, listener, work))
                .expect("start a member's executor thread");
            threads.push(t);
        }
        threads
            .into_iter()
            .map(|t| t.join().expect("member thread panicked").unwrap_or_else(|e| panic!("{}: {e}", case.name())))
            .collect()
    } else {
        drop(listeners);
        let path = std::env::temp_dir().join(format!("{ns}.toml"));
        std::fs::write(&path, &toml).expect("write the configuration");
        let children: Vec<ChildGuard> = (0..case.members)
            .map(|i| {
                let mut args = vec![
                    "--child".to_string(),
                    "member".into(),
                    "--config".into(),
                    path.display().to_string(),
                    "--set".into(),
                    format!("me={i}"),
                    "--size".into(),
                    case.size.to_string(),
                    "--count".into(),
                    case.count.to_string(),
                ];
                if let Some(c) = core(i) {
                    args.extend(["--set".into(), format!("core={c}")]);
                }
                if case.latency {
                    args.push("--latency".into());
                }
                spawn_member(&args)
            })
            .collect();
        let outcomes = children.into_iter().map(|c| finish_member(c, &case.name())).collect();
        let _ = std::fs::remove_file(&path);
        outcomes
    };
    if case.transport == "shm" {
        let _ = ShmTransport::remove_namespace(std::path::Path::new("/dev/shm"), &ns);
    }
    if let Some(d) = tls_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    outcomes
}

/// A member process whose stdout carries its outcome (killed and reaped if dropped unfinished).
fn spawn_member(args: &[String]) -> ChildGuard {
    ChildGuard::spawn_self_with(args, Stdio::piped())
}

/// Reads a member's outcome and checks that it exited successfully; kills it if it hangs.
fn finish_member(mut guard: ChildGuard, case: &str) -> Outcome {
    let child = guard.0.as_mut().expect("child");
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = BufReader::new(out).lines().map_while(Result::ok).find_map(|l| Outcome::parse(&l));
        let _ = tx.send(outcome);
    });
    // On a timeout the panic drops the guard, which kills and reaps the member.
    let got = rx
        .recv_timeout(CASE_TIMEOUT + Duration::from_secs(40))
        .unwrap_or_else(|_| panic!("{case}: a member did not finish in time"));
    let status = guard.0.take().expect("child").wait().expect("wait for a member");
    match got {
        Some(o) if status.success() => o,
        _ => panic!("{case}: a member failed ({status})"),
    }
}

fn member_child(args: &[String]) {
    let path = arg(args, "--config").expect("--config");
    let sets: Vec<String> = args.windows(2).filter(|w| w[0] == "--set").map(|w| w[1].clone()).collect();
    let config = GroupConfig::load(path.as_ref(), std::iter::empty(), &sets).expect("valid configuration");
    let work = Work {
        size: arg(args, "--size").expect("--size").parse().expect("a size"),
        count: arg(args, "--count").expect("--count").parse().expect("a count"),
        latency: flag(args, "--latency"),
    };
    let executor = config.executor().build().expect("the member's executor");
    match executor.block_on(member(config, None, work)) {
        Ok(o) => println!("{}", o.line()),
        Err(e) => {
            eprintln!("multicast member: {e}");
            std::process::exit(1);
        }
    }
}

struct Plan {
    quick: bool,
    repeats: usize,
}

impl Plan {
    fn count(&self, size: usize) -> u64 {
        match (self.quick, size > 1024) {
            (true, false) => 300_000,
            (false, false) => 1_000_000,
            (true, true) => 20_000,
            (false, true) => 100_000,
        }
    }
}

fn main() {
    derecho_benches::log_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(role) = arg(&args, "--child") {
        if !raw::child_role(role, &args) {
            assert_eq!(role, "member", "unknown child role {role}");
            member_child(&args);
        }
        return;
    }
    let quick = flag(&args, "--quick");
    let plan = Plan { quick, repeats: if quick { 1 } else { 3 } };
    let cores = available_cores();
    let other_core = cores.get(1).copied().unwrap_or(0);
    eprintln!("multicast benchmark ({}), cores {cores:?}", if quick { "quick" } else { "full" });

    if let Some(transport) = arg(&args, "--case") {
        let transport = match transport {
            "shm" => "shm",
            "tls" => "tls",
            _ => "tcp",
        };
        let num = |n: &str, d: u64| arg(&args, n).map_or(d, |v| v.parse().expect("a number"));
        let size = num("--size", 100) as usize;
        let case = Case {
            transport,
            members: num("--members", 3) as u32,
            senders: Senders::parse(arg(&args, "--senders").unwrap_or("all")).expect("all, half or one"),
            size,
            ordered: arg(&args, "--mode") != Some("unordered"),
            inproc: flag(&args, "--inproc"),
            count: num("--count", plan.count(size)),
            latency: flag(&args, "--latency"),
        };
        report(&case, &run_case(&case));
        return;
    }

    let only = arg(&args, "--only").map(str::to_string);
    let want = |name: &str| only.as_deref().is_none_or(|w| name.contains(w));
    let mut targets = Vec::new();
    // Plaintext results, for the TLS cases' ratio.
    let mut plain: Vec<(String, f64)> = Vec::new();

    // Baselines.
    let raw_tcp = median((0..plan.repeats).map(|_| raw::stream_gbps(1 << 20, 2 << 30, other_core)).collect());
    Record::new(BENCH, "raw-tcp-1mib", "throughput", raw_tcp, "GB/s").print();

    let tput = |transport, size, senders, ordered, inproc| Case {
        transport,
        members: 3,
        senders,
        size,
        ordered,
        inproc,
        count: plan.count(size),
        latency: false,
    };
    let cases = [
        tput("tcp", 100, Senders::All, true, false),
        tput("tcp", 10 << 10, Senders::All, true, false),
        tput("tls", 100, Senders::All, true, false),
        tput("tls", 10 << 10, Senders::All, true, false),
        tput("shm", 100, Senders::All, true, false),
        tput("shm", 10 << 10, Senders::All, true, false),
        tput("tcp", 100, Senders::Half, true, false),
        tput("tcp", 100, Senders::One, true, false),
        tput("shm", 100, Senders::One, true, false),
        tput("tcp", 100, Senders::All, false, false),
        tput("shm", 100, Senders::All, false, false),
        tput("tcp", 100, Senders::All, true, true),
        tput("shm", 100, Senders::All, true, true),
    ];
    for case in cases {
        if !want(&case.name()) {
            continue;
        }
        let base = if case.transport == "shm" { raw::memcpy_gbps(case.size, 1 << 30) } else { raw_tcp };
        let runs: Vec<Vec<Outcome>> = (0..plan.repeats).map(|_| run_case(&case)).collect();
        let msgs = median(runs.iter().map(|o| slowest(o).0).collect());
        let gbps = median(runs.iter().map(|o| slowest(o).1).collect());
        let name = case.name();
        Record::new(BENCH, name.clone(), "delivered_msgs_per_s", msgs, "msg/s")
            .with_baseline(base * 1e9 / case.size as f64)
            .print();
        Record::new(BENCH, name.clone(), "delivered_gbps", gbps, "GB/s").with_baseline(base).print();
        if case.transport == "tcp" {
            plain.push((name.clone(), gbps));
        }
        // TLS against plaintext, measured in this run.
        let vs_plain = plain
            .iter()
            .find(|(n, _)| Some(n.as_str()) == name.strip_prefix("tls-").map(|r| format!("tcp-{r}")).as_deref());
        if case.transport == "tls"
            && let Some((_, p)) = vs_plain
        {
            Record::new(BENCH, name.clone(), "tls_vs_plaintext_gbps", gbps, "GB/s").with_baseline(*p).print();
            if case.size == 10 << 10 {
                let ratio = gbps / p;
                targets.push(target("tls-10kib-vs-plaintext", ratio, "ratio", 0.7, ratio >= 0.7));
            }
        }
        match name.as_str() {
            "tcp-100b-3m-all-ordered" => targets.push(target("tcp-100b-msgs", msgs, "msg/s", 1e6, msgs >= 1e6)),
            "tcp-10kib-3m-all-ordered" => targets.push(target("tcp-10kib-gbps", gbps, "GB/s", 0.8, gbps >= 0.8)),
            "shm-100b-3m-all-ordered" => targets.push(target("shm-100b-msgs", msgs, "msg/s", 3e6, msgs >= 3e6)),
            _ => {}
        }
    }

    let rounds = if quick { 3_000 } else { 20_000 };
    for transport in ["tcp", "shm"] {
        let case = Case {
            transport,
            members: 2,
            senders: Senders::One,
            size: 100,
            ordered: true,
            inproc: false,
            count: rounds,
            latency: true,
        };
        if !want(&format!("latency-{}", case.name())) {
            continue;
        }
        let (b50, b99) = if transport == "tcp" {
            raw::pingpong_us(100, rounds as usize, true, other_core)
        } else {
            raw::shm_pingpong_us(rounds as usize, other_core)
        };
        let mut samples: Vec<f64> = run_case(&case).into_iter().flat_map(|o| o.latencies).collect();
        let (p50, p99) = (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0));
        let name = format!("latency-{}", case.name());
        Record::new(BENCH, name.clone(), "latency_p50", p50, "us").with_baseline(b50).print();
        Record::new(BENCH, name, "latency_p99", p99, "us").with_baseline(b99).print();
        let limit = if transport == "tcp" { 30.0 } else { 5.0 };
        targets.push(target(&format!("{transport}-latency-p50"), p50, "us", limit, p50 <= limit));
    }
    for t in targets {
        t.print();
    }
}

/// The slowest member's delivered messages/s and GB/s.
fn slowest(outcomes: &[Outcome]) -> (f64, f64) {
    let msgs = outcomes.iter().map(|o| o.delivered as f64 / o.secs).fold(f64::INFINITY, f64::min);
    let gbps = outcomes.iter().map(|o| o.bytes as f64 / o.secs / 1e9).fold(f64::INFINITY, f64::min);
    (msgs, gbps)
}

fn target(name: &str, value: f64, unit: &'static str, threshold: f64, met: bool) -> Record {
    Record::new(BENCH, format!("target-{name}"), "value", value, unit).with_target(threshold, met)
}

/// Prints a single case's results.
fn report(case: &Case, outcomes: &[Outcome]) {
    let name = case.name();
    if case.latency {
        let mut samples: Vec<f64> = outcomes.iter().flat_map(|o| o.latencies.clone()).collect();
        Record::new(BENCH, name.clone(), "latency_p50", percentile(&mut samples, 50.0), "us").print();
        Record::new(BENCH, name, "latency_p99", percentile(&mut samples, 99.0), "us").print();
    } else {
        let (msgs, gbps) = slowest(outcomes);
        Record::new(BENCH, name.clone(), "delivered_msgs_per_s", msgs, "msg/s").print();
        Record::new(BENCH, name, "delivered_gbps", gbps, "GB/s").print();
    }
}
