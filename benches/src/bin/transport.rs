//! Transport micro-benchmarks: two processes, each pinned to its own core when the machine has
//! two, measuring derecho's TCP and shared-memory transports against baselines measured in the
//! same run: plain `std::net` sockets (blocking, and busy-polling with non-blocking reads) and
//! single-thread `memcpy`.
//!
//! `cargo run --release -p derecho-benches --bin transport [-- --quick]`
//!
//! Cases: streaming throughput of 64 KiB and 1 MiB frames; ping-pong round trips of 64 B and
//! 1 KiB frames, with spin budget 0 (parks between messages) and with spinning; on shared memory
//! also the one-way latency of a push (a counter written into the peer's region).
//!
//! Shared-memory streaming runs twice: `shm-*` frames are received in place and dropped without
//! being read, so it measures the sender's copy into the ring; in `shm-read-*` the receiver reads
//! every byte of each frame, as a consumer would.
//!
//! A full or quick run ends with one `target-*` line per target of the foundation issue whose
//! inputs it measured (`--only` leaves out the others), carrying `"threshold"` and `"met"`, and
//! an `info-*` line for the in-place shared-memory streaming, which has no target.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use derecho_benches::{ChildGuard, Record, arg, flag, median, percentile, pin, raw, two_cores};
use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::shm::{ShmConfig, ShmTransport};
use derecho_runtime::transport::tcp::{TcpConfig, TcpTransport};
use derecho_runtime::transport::{AnyTransport, Payload, PeerId, RegionId, Transport, TransportEvent};
use derecho_runtime::{AlignedBuf, Builder, time};

const BENCH: &str = "transport";
const PARENT: PeerId = PeerId(0);
const CHILD: PeerId = PeerId(1);
const SPIN: Duration = Duration::from_micros(200);
const WAIT: Duration = Duration::from_secs(60);
static CHILD_CORE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Plan {
    quick: bool,
    stream_bytes: usize,
    rounds: usize,
    repeats: usize,
}

fn main() {
    derecho_benches::log_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(role) = arg(&args, "--child") {
        child(role, &args);
        return;
    }
    let quick = flag(&args, "--quick");
    let plan = if quick {
        Plan { quick, stream_bytes: 128 << 20, rounds: 2_000, repeats: 1 }
    } else {
        Plan { quick, stream_bytes: 1 << 30, rounds: 20_000, repeats: 3 }
    };
    let (parent_core, child_core) = two_cores();
    assert!(pin(parent_core), "cannot pin to core {parent_core}");
    CHILD_CORE.store(child_core, std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "transport benchmark ({}): parent on core {parent_core}, child on core {child_core}",
        if quick { "quick" } else { "full" }
    );

    // `--only WORD` runs the groups whose name contains WORD (stream-tcp, stream-shm,
    // pingpong-tcp-park, pingpong-tcp-spin, pingpong-shm-park, pingpong-shm-spin, push), with their
    // baselines.
    let only = arg(&args, "--only").map(str::to_string);
    let want = |group: &str| only.as_deref().is_none_or(|w| group.contains(w) || w.contains(group));

    let memcpy = raw::memcpy_gbps(1 << 20, if quick { 2 << 30 } else { 8 << 30 });
    Record::new(BENCH, "memcpy-1mib", "throughput", memcpy, "GB/s").print();

    // The target lines, printed after every result line.
    let mut targets: Vec<Record> = Vec::new();

    for size in [64 << 10, 1 << 20] {
        let name = size_name(size);
        if want("stream-tcp") {
            let raw = median((0..plan.repeats).map(|_| raw_stream(size, plan.stream_bytes)).collect());
            Record::new(BENCH, format!("raw-tcp-{name}"), "throughput", raw, "GB/s").print();
            let tcp = median((0..plan.repeats).map(|_| dx_stream("tcp", size, plan.stream_bytes, false)).collect());
            Record::new(BENCH, format!("tcp-{name}"), "throughput", tcp, "GB/s").with_baseline(raw).print();
            let full =
                median((0..plan.repeats).map(|_| dx_stream("tcp-fullsum", size, plan.stream_bytes, false)).collect());
            Record::new(BENCH, format!("tcp-fullsum-{name}"), "throughput", full, "GB/s").with_baseline(raw).print();
            let r = ratio(tcp, raw);
            targets.push(target(format!("tcp-stream-{name}"), "ratio", r, "x", 0.9, r >= 0.9));
        }
        if want("stream-shm") {
            // Received in place, not read: the sender's copy into the ring.
            let shm = median((0..plan.repeats).map(|_| dx_stream("shm", size, plan.stream_bytes * 4, false)).collect());
            Record::new(BENCH, format!("shm-{name}"), "throughput", shm, "GB/s").with_baseline(memcpy).print();
            // The receiver reads every byte of each frame.
            let read = median((0..plan.repeats).map(|_| dx_stream("shm", size, plan.stream_bytes * 4, true)).collect());
            Record::new(BENCH, format!("shm-read-{name}"), "throughput", read, "GB/s").with_baseline(memcpy).print();
            if size == 1 << 20 {
                let r = ratio(read, memcpy);
                targets.push(target(format!("shm-stream-{name}"), "ratio", r, "x", 0.5, r >= 0.5));
                targets.push(Record::new(
                    BENCH,
                    format!("info-shm-stream-{name}-in-place"),
                    "ratio",
                    ratio(shm, memcpy),
                    "x",
                ));
            }
        }
    }

    for size in [64, 1024] {
        if !want("pingpong") {
            break;
        }
        let name = size_name(size);
        let (block_p50, block_p99) = raw_pingpong(size, plan.rounds, false);
        Record::new(BENCH, format!("raw-tcp-blocking-{name}"), "rtt_p50", block_p50, "us").print();
        Record::new(BENCH, format!("raw-tcp-blocking-{name}"), "rtt_p99", block_p99, "us").print();
        let (spin_p50, spin_p99) = raw_pingpong(size, plan.rounds, true);
        Record::new(BENCH, format!("raw-tcp-busypoll-{name}"), "rtt_p50", spin_p50, "us").print();
        Record::new(BENCH, format!("raw-tcp-busypoll-{name}"), "rtt_p99", spin_p99, "us").print();
        for (transport, spin) in [("tcp", Duration::ZERO), ("tcp", SPIN), ("shm", Duration::ZERO), ("shm", SPIN)] {
            let mode = if spin.is_zero() { "park" } else { "spin" };
            if !want(&format!("pingpong-{transport}-{mode}")) {
                continue;
            }
            let (p50, p99) = dx_pingpong(transport, size, plan.rounds, spin);
            if (transport, mode) == ("tcp", "spin") {
                let r = ratio(p50, spin_p50);
                targets.push(target(format!("tcp-spin-{name}-p50"), "ratio", r, "x", 1.5, r <= 1.5));
            }
            let case = format!("{transport}-{mode}-{name}");
            let base = match (transport, spin.is_zero()) {
                ("tcp", true) => Some((block_p50, block_p99)),
                ("tcp", false) => Some((spin_p50, spin_p99)),
                _ => None,
            };
            let mut r50 = Record::new(BENCH, case.clone(), "rtt_p50", p50, "us");
            let mut r99 = Record::new(BENCH, case, "rtt_p99", p99, "us");
            if let Some((b50, b99)) = base {
                r50 = r50.with_baseline(b50);
                r99 = r99.with_baseline(b99);
            }
            r50.print();
            r99.print();
        }
    }
    if want("push") {
        let (p50, p99) = shm_push_oneway(plan.rounds * 5);
        Record::new(BENCH, "shm-push-8b", "oneway_p50", p50, "us").print();
        Record::new(BENCH, "shm-push-8b", "oneway_p99", p99, "us").print();
        targets.push(target("shm-oneway-p50".to_string(), "oneway_p50", p50, "us", 1.0, p50 < 1.0));
    }
    for t in &targets {
        t.print();
    }
    let _ = plan.quick;
}

/// The line of the target `target-{name}`: `value` against `threshold`, and whether it `met` it
/// (at least, at most or below the threshold, depending on the target).
fn target(name: String, metric: &'static str, value: f64, unit: &'static str, threshold: f64, met: bool) -> Record {
    Record::new(BENCH, format!("target-{name}"), metric, value, unit).with_target(threshold, met)
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline == 0.0 { 0.0 } else { value / baseline }
}

fn size_name(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{}mib", size >> 20)
    } else if size >= 1 << 10 {
        format!("{}kib", size >> 10)
    } else {
        format!("{size}b")
    }
}

fn child_core() -> usize {
    CHILD_CORE.load(std::sync::atomic::Ordering::Relaxed)
}

fn child_args(role: &str, extra: &[(&str, String)]) -> Vec<String> {
    raw::child_args(role, child_core(), extra)
}

fn raw_stream(size: usize, total: usize) -> f64 {
    raw::stream_gbps(size, total, child_core())
}

fn raw_pingpong(size: usize, rounds: usize, busy: bool) -> (f64, f64) {
    raw::pingpong_us(size, rounds, busy, child_core())
}

fn unique_ns(tag: &str) -> String {
    derecho_benches::unique_name("bench", tag)
}

// ---- derecho transports ------------------------------------------------------------------------

/// Where the parent is reachable, for the child to connect.
enum Rendezvous {
    /// The listener, its address, and whether frame checksums cover every body (not only those
    /// up to the default 64 KiB).
    Tcp(TcpListener, SocketAddr, bool),
    Shm(String),
}

impl Rendezvous {
    fn new(transport: &str) -> Self {
        match transport {
            "tcp" | "tcp-fullsum" => {
                let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let a = l.local_addr();
                Rendezvous::Tcp(l, a, transport == "tcp-fullsum")
            }
            "shm" => Rendezvous::Shm(unique_ns("t")),
            other => panic!("unknown transport {other}"),
        }
    }

    fn child_args(&self) -> Vec<(&'static str, String)> {
        match self {
            Rendezvous::Tcp(_, a, sum) => {
                vec![("--transport", "tcp".into()), ("--addr", a.to_string()), ("--checksum-all", sum.to_string())]
            }
            Rendezvous::Shm(ns) => vec![("--transport", "shm".into()), ("--ns", ns.clone())],
        }
    }

    async fn connect(self) -> AnyTransport {
        match self {
            Rendezvous::Tcp(l, _, sum) => {
                let mut cfg = TcpConfig::new(PARENT, vec![(CHILD, "127.0.0.1:1".parse().unwrap())]);
                if sum {
                    cfg.checksum_body_len_max = usize::MAX;
                }
                AnyTransport::Tcp(TcpTransport::connect(l, cfg).await.expect("tcp connect"))
            }
            Rendezvous::Shm(ns) => AnyTransport::Shm(
                ShmTransport::connect(ShmConfig::new(PARENT, vec![CHILD], ns)).await.expect("shm connect"),
            ),
        }
    }
}

async fn child_connect(args: &[String]) -> AnyTransport {
    match arg(args, "--transport").expect("--transport") {
        "tcp" => {
            let parent: SocketAddr = arg(args, "--addr").expect("--addr").parse().unwrap();
            let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            AnyTransport::Tcp(
                TcpTransport::connect(l, TcpConfig::new(CHILD, vec![(PARENT, parent)])).await.expect("tcp connect"),
            )
        }
        "shm" => {
            let ns = arg(args, "--ns").expect("--ns").to_string();
            AnyTransport::Shm(
                ShmTransport::connect(ShmConfig::new(CHILD, vec![PARENT], ns)).await.expect("shm connect"),
            )
        }
        other => panic!("unknown transport {other}"),
    }
}

async fn next_frame(t: &AnyTransport) -> derecho_runtime::transport::Frame {
    match time::timeout(WAIT, t.next_event()).await {
        Ok(TransportEvent::Frame { frame, .. }) => frame,
        Ok(other) => panic!("expected a frame, got {other:?}"),
        Err(_) => panic!("no frame within {WAIT:?}"),
    }
}

fn executor(spin: Duration) -> derecho_runtime::LocalExecutor {
    Builder::new().spin_budget(spin).build().expect("executor")
}

/// Streams `total` bytes in frames of `size` to the child; with `read`, the child reads every byte
/// of each frame (else it only checks the length and drops the frame).
fn dx_stream(transport: &str, size: usize, total: usize, read: bool) -> f64 {
    let count = total / size;
    let rv = Rendezvous::new(transport);
    let mut extra = rv.child_args();
    extra.extend([("--size", size.to_string()), ("--count", count.to_string()), ("--read", read.to_string())]);
    let child = ChildGuard::spawn_self(&child_args("dx-stream-recv", &extra));
    let secs = executor(SPIN).block_on(async move {
        let t = rv.connect().await;
        let payload = Payload::from(AlignedBuf::from_slice(&vec![1u8; size]));
        let start = Instant::now();
        for _ in 0..count {
            t.send_frame(CHILD, payload.clone()).await.unwrap();
        }
        let ack = next_frame(&t).await;
        assert_eq!(&ack[..], b"ack");
        let secs = start.elapsed().as_secs_f64();
        t.close(Duration::from_secs(1)).await;
        secs
    });
    child.finish(WAIT);
    (count * size) as f64 / secs / 1e9
}

fn dx_pingpong(transport: &str, size: usize, rounds: usize, spin: Duration) -> (f64, f64) {
    let rv = Rendezvous::new(transport);
    let warm = rounds / 10;
    let mut extra = rv.child_args();
    extra.extend([("--count", (rounds + warm).to_string()), ("--spin-us", spin.as_micros().to_string())]);
    let child = ChildGuard::spawn_self(&child_args("dx-pong", &extra));
    let mut samples = executor(spin).block_on(async move {
        let t = rv.connect().await;
        let payload = Payload::from(AlignedBuf::from_slice(&vec![1u8; size]));
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds + warm {
            let start = Instant::now();
            t.send_frame(CHILD, payload.clone()).await.unwrap();
            let f = next_frame(&t).await;
            assert_eq!(f.len(), size);
            if i >= warm {
                samples.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        t.close(Duration::from_secs(1)).await;
        samples
    });
    child.finish(WAIT);
    (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0))
}

const PUSH_REGION: RegionId = RegionId(1);

/// Ping-pong of counters pushed into each other's region; one-way latency is half the round trip.
fn shm_push_oneway(rounds: usize) -> (f64, f64) {
    let rv = Rendezvous::new("shm");
    let warm = rounds / 10;
    let mut extra = rv.child_args();
    extra.push(("--count", (rounds + warm).to_string()));
    let child = ChildGuard::spawn_self(&child_args("dx-push-pong", &extra));
    let mut samples = executor(SPIN).block_on(async move {
        let t = rv.connect().await;
        let r = t.register_region(PUSH_REGION, 128).unwrap();
        let _ = next_frame(&t).await; // the child registered its region
        let mut samples = Vec::with_capacity(rounds);
        for i in 1..=(rounds + warm) as u64 {
            let start = Instant::now();
            r.store_u64(0, i);
            t.push(CHILD, PUSH_REGION, 0..8).unwrap();
            while r.load_u64(64) != i {
                std::hint::spin_loop();
            }
            if i > warm as u64 {
                samples.push(start.elapsed().as_secs_f64() * 1e6 / 2.0);
            }
        }
        t.close(Duration::from_secs(1)).await;
        samples
    });
    child.finish(WAIT);
    (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0))
}

// ---- the child process -------------------------------------------------------------------------

fn child(role: &str, args: &[String]) {
    if raw::child_role(role, args) {
        return;
    }
    let core: usize = arg(args, "--core").expect("--core").parse().expect("a core number");
    assert!(pin(core), "child cannot pin to core {core}");
    let num = |name: &str| -> usize { arg(args, name).unwrap_or("0").parse().expect("a number") };
    let count = num("--count");
    match role {
        "dx-stream-recv" => executor(SPIN).block_on(async {
            let t = child_connect(args).await;
            let size = num("--size");
            let read = arg(args, "--read") == Some("true");
            // The parent sends bytes of 1; a frame summed as words must give this.
            let expected = sum_words(&vec![1u8; size]);
            for _ in 0..count {
                let f = next_frame(&t).await;
                assert_eq!(f.len(), size);
                if read {
                    let sum = std::hint::black_box(sum_words(&f));
                    assert_eq!(sum, expected, "frame bytes differ from those sent");
                }
            }
            t.send_frame(PARENT, b"ack".into()).await.unwrap();
            t.close(Duration::from_secs(5)).await;
        }),
        "dx-pong" => {
            let spin = Duration::from_micros(num("--spin-us") as u64);
            executor(spin).block_on(async {
                let t = child_connect(args).await;
                for _ in 0..count {
                    let f = next_frame(&t).await;
                    t.send_frame(PARENT, Payload::from(f.into_buf())).await.unwrap();
                }
                t.close(Duration::from_secs(5)).await;
            })
        }
        "dx-push-pong" => executor(SPIN).block_on(async {
            let t = Rc::new(child_connect(args).await);
            let r = t.register_region(PUSH_REGION, 128).unwrap();
            t.send_frame(PARENT, b"registered".into()).await.unwrap();
            for i in 1..=count as u64 {
                while r.load_u64(0) != i {
                    std::hint::spin_loop();
                }
                r.store_u64(64, i);
                t.push(PARENT, PUSH_REGION, 64..72).unwrap();
            }
            t.close(Duration::from_secs(5)).await;
        }),
        other => panic!("unknown child role {other}"),
    }
}

/// Reads every byte: the wrapping sum of `bytes` as native-endian `u64` words (a tail shorter than
/// a word added byte by byte).
fn sum_words(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let sum = words.by_ref().fold(0u64, |s, w| s.wrapping_add(u64::from_ne_bytes(w.try_into().expect("8 bytes"))));
    words.remainder().iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)))
}
