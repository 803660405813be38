//! `persistence`: the durable log alone, the first layer of persistence (issue 6 measures
//! globally persisted versions of a replicated object once that exists; this program measures
//! what it will be built on).
//!
//! For 100-byte and 10 KiB versions, on disk (the working directory's file system) and on tmpfs
//! (`/dev/shm`):
//! * `log-many`: 1,024 appends in flight, persisted together (`DurableLog::persist` shares one
//!   write and one `fdatasync` among everything appended): versions durable per second;
//! * `log-one`: one version at a time, appended then persisted: latency p50.
//!
//! Baseline, measured in the same run: the machine's *fsync floor*, a 4 KiB append plus
//! `fdatasync` through std, p50. `log-one` should sit near it (the issue's target is 1.5 times),
//! and `log-many` shows what batching buys.
//!
//! ```text
//! cargo run --release -p derecho-benches --bin persistence [-- --quick]
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use derecho::Builder;
use derecho::persist::DurableLog;
use derecho_benches::{Record, flag, percentile};

const BENCH: &str = "persistence";

/// An executor that spins 200 µs before parking: an io_uring completion then costs no
/// wake-up (50-100 µs on these VMs), which would otherwise dominate tmpfs latencies.
fn executor() -> derecho::LocalExecutor {
    Builder::new().spin_budget(std::time::Duration::from_micros(200)).build().expect("an executor")
}

/// p50 of `n` 4 KiB appends each followed by `fdatasync`, in microseconds.
fn fsync_floor(dir: &Path, n: usize) -> f64 {
    let path = dir.join("floor.bin");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path).expect("a file");
    let block = vec![7u8; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(&path);
    percentile(&mut samples, 50.0)
}

/// Versions per second with `batch` appends persisted together, for `total` versions.
fn log_many(dir: &Path, size: usize, total: u64, batch: u64) -> f64 {
    let path = dir.join("many.log");
    let _ = std::fs::remove_file(&path);
    let ex = executor();
    let rate = ex.block_on(async {
        let (log, _) = DurableLog::open(&path).await.expect("open");
        let payload = vec![3u8; size];
        let t0 = Instant::now();
        let mut v = 0;
        while v < total {
            for _ in 0..batch {
                v += 1;
                log.append(v, v, &payload).expect("append");
            }
            log.persist(v).await.expect("persist");
        }
        total as f64 / t0.elapsed().as_secs_f64()
    });
    let _ = std::fs::remove_file(&path);
    rate
}

/// p50 latency of append-then-persist, one version at a time, in microseconds.
fn log_one(dir: &Path, size: usize, n: u64) -> f64 {
    let path = dir.join("one.log");
    let _ = std::fs::remove_file(&path);
    let ex = executor();
    let p50 = ex.block_on(async {
        let (log, _) = DurableLog::open(&path).await.expect("open");
        let payload = vec![3u8; size];
        let mut samples = Vec::with_capacity(n as usize);
        for v in 1..=n {
            let t0 = Instant::now();
            log.append(v, v, &payload).expect("append");
            log.persist(v).await.expect("persist");
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        percentile(&mut samples, 50.0)
    });
    let _ = std::fs::remove_file(&path);
    p50
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = flag(&args, "--quick");
    let (floor_n, many_total, one_n) = if quick { (200, 100_000, 200) } else { (1_000, 500_000, 1_000) };
    let disk: PathBuf = std::env::current_dir()
        .expect("a working directory")
        .join(format!("target/persistence-bench-{}", std::process::id()));
    let tmpfs: PathBuf = PathBuf::from(format!("/dev/shm/derecho-persistence-bench-{}", std::process::id()));
    eprintln!(
        "persistence benchmark ({}): disk {}, tmpfs {}",
        if quick { "quick" } else { "full" },
        disk.display(),
        tmpfs.display()
    );
    for (media, dir) in [("disk", &disk), ("tmpfs", &tmpfs)] {
        if std::fs::create_dir_all(dir).is_err() {
            eprintln!("skipping {media}: cannot create {}", dir.display());
            continue;
        }
        let floor = fsync_floor(dir, floor_n);
        Record::new(BENCH, format!("{media}-4kib-fsync-floor"), "latency_p50", floor, "us").print();
        for (size, label) in [(100usize, "100b"), (10 << 10, "10kib")] {
            let total = if size > 1024 { many_total / 10 } else { many_total };
            let rate = log_many(dir, size, total, 1024);
            // Baseline: one version per fsync-floor period.
            Record::new(BENCH, format!("{media}-{label}-log-many"), "versions_per_s", rate, "versions/s")
                .with_baseline(1e6 / floor)
                .print();
            let p50 = log_one(dir, size, one_n);
            Record::new(BENCH, format!("{media}-{label}-log-one"), "latency_p50", p50, "us")
                .with_baseline(floor)
                .print();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
