//! Baselines measured in the same run as the thing they are compared to: plain `std::net`
//! sockets between this process and a child (blocking, and busy-polling with non-blocking
//! calls), and single-thread `memcpy`.
//!
//! The child is the benchmark program itself, started with `--child ROLE --core N ...`; a
//! program's child entry point hands roles it does not know to [`child_role`].

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::time::{Duration, Instant};

use crate::{ChildGuard, arg, percentile, pin};

/// How long a baseline's child may take.
const WAIT: Duration = Duration::from_secs(60);

/// The arguments that start the child in `role` on `core`, with `extra` options.
pub fn child_args(role: &str, core: usize, extra: &[(&str, String)]) -> Vec<String> {
    let mut v = vec!["--child".to_string(), role.to_string(), "--core".to_string(), core.to_string()];
    for (k, val) in extra {
        v.push((*k).to_string());
        v.push(val.clone());
    }
    v
}

/// Single-thread `memcpy` of `size`-byte blocks, `total` bytes in all, in GB/s.
pub fn memcpy_gbps(size: usize, total: usize) -> f64 {
    let src = vec![7u8; size];
    let mut dst = vec![0u8; size];
    let reps = (total / size).max(1);
    let start = Instant::now();
    for i in 0..reps {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        if i == 0 {
            std::hint::black_box(&src);
        }
    }
    (reps * size) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Streams `total` bytes in `size`-byte blocking writes to a child on `child_core` that reads
/// them; GB/s.
pub fn stream_gbps(size: usize, total: usize, child_core: usize) -> f64 {
    let count = (total / size).max(1);
    let listener = StdListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let child = ChildGuard::spawn_self(&child_args(
        "raw-stream-recv",
        child_core,
        &[("--addr", addr.to_string()), ("--size", size.to_string()), ("--count", count.to_string())],
    ));
    let (mut s, _) = listener.accept().expect("accept the child");
    s.set_nodelay(true).expect("nodelay");
    let buf = vec![1u8; size];
    let start = Instant::now();
    for _ in 0..count {
        s.write_all(&buf).expect("write");
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).expect("the child's acknowledgement");
    let secs = start.elapsed().as_secs_f64();
    child.finish(WAIT);
    (count * size) as f64 / secs / 1e9
}

/// Ping-pong of `size`-byte messages with a child on `child_core`, `rounds` measured round
/// trips; `busy` polls non-blocking sockets instead of blocking. Returns (p50, p99) in µs.
pub fn pingpong_us(size: usize, rounds: usize, busy: bool, child_core: usize) -> (f64, f64) {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let role = if busy { "raw-pong-busy" } else { "raw-pong-block" };
    let warm = rounds / 10;
    let child = ChildGuard::spawn_self(&child_args(
        role,
        child_core,
        &[("--addr", addr.to_string()), ("--size", size.to_string()), ("--count", (rounds + warm).to_string())],
    ));
    let (mut s, _) = listener.accept().expect("accept the child");
    s.set_nodelay(true).expect("nodelay");
    s.set_nonblocking(busy).expect("nonblocking");
    let out = vec![1u8; size];
    let mut inp = vec![0u8; size];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + warm {
        let t = Instant::now();
        write_all_spin(&mut s, &out);
        read_exact_spin(&mut s, &mut inp);
        if i >= warm {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    child.finish(WAIT);
    (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0))
}

/// Round trips through a page of shared memory with a child on `child_core`: this side stores a
/// round number in one cache line, the child spins until it sees it and stores it back in
/// another. The floor under any shared-memory protocol's latency. Returns (p50, p99) in µs.
pub fn shm_pingpong_us(rounds: usize, child_core: usize) -> (f64, f64) {
    let path = std::env::temp_dir().join(format!("derecho-bench-raw-shm-{}", std::process::id()));
    let page = SharedPage::create(&path);
    let warm = rounds / 10;
    let child = ChildGuard::spawn_self(&child_args(
        "raw-shm-pong",
        child_core,
        &[("--path", path.display().to_string()), ("--count", (rounds + warm).to_string())],
    ));
    let mut samples = Vec::with_capacity(rounds);
    let deadline = Instant::now() + WAIT;
    for i in 1..=(rounds + warm) as u64 {
        let t = Instant::now();
        page.word(0).store(i, std::sync::atomic::Ordering::Release);
        while page.word(8).load(std::sync::atomic::Ordering::Acquire) != i {
            assert!(Instant::now() < deadline, "the shared-memory ping-pong child stopped answering");
            std::hint::spin_loop();
        }
        if i as usize > warm {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    child.finish(WAIT);
    let _ = std::fs::remove_file(&path);
    (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0))
}

/// One page of a file mapped shared.
struct SharedPage {
    ptr: *mut u64,
}

impl SharedPage {
    const LEN: usize = 4096;

    fn create(path: &std::path::Path) -> Self {
        let f =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).expect("create");
        f.set_len(Self::LEN as u64).expect("size the page");
        Self::map(&f)
    }

    fn open(path: &str) -> Self {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open the shared page");
        Self::map(&f)
    }

    fn map(f: &std::fs::File) -> Self {
        use std::os::fd::AsRawFd;
        // SAFETY: maps LEN bytes of a file at least LEN long, shared, at an address the kernel
        // picks; the result is checked. The mapping outlives the file descriptor by design.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert!(ptr != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        Self { ptr: ptr.cast() }
    }

    /// Word `i` (of 512) as an atomic.
    fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < Self::LEN / 8);
        // SAFETY: in bounds (checked), 8-aligned (page-aligned base), and only ever accessed
        // atomically, by this process and the other.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.ptr.add(i)) }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference to it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), Self::LEN) };
    }
}

fn write_all_spin(s: &mut StdStream, mut buf: &[u8]) {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("write: {e}"),
        }
    }
}

fn read_exact_spin(s: &mut StdStream, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!("peer closed"),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Runs the child side of a baseline when `role` is one; returns whether it was. Pins the
/// process to `--core` first.
///
/// # Panics
///
/// On a missing option or a failed socket call: the parent sees the child fail.
pub fn child_role(role: &str, args: &[String]) -> bool {
    if !role.starts_with("raw-") {
        return false;
    }
    let core: usize = arg(args, "--core").expect("--core").parse().expect("a core number");
    assert!(pin(core), "child cannot pin to core {core}");
    let num = |name: &str| -> usize { arg(args, name).unwrap_or("0").parse().expect("a number") };
    let count = num("--count");
    if role == "raw-shm-pong" {
        let page = SharedPage::open(arg(args, "--path").expect("--path"));
        for i in 1..=count as u64 {
            while page.word(0).load(std::sync::atomic::Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            page.word(8).store(i, std::sync::atomic::Ordering::Release);
        }
        return true;
    }
    let mut s = StdStream::connect(arg(args, "--addr").expect("--addr")).expect("connect to the parent");
    s.set_nodelay(true).expect("nodelay");
    match role {
        "raw-stream-recv" => {
            let total = num("--size") * count;
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0;
            while got < total {
                match s.read(&mut buf) {
                    Ok(0) => panic!("parent closed early"),
                    Ok(n) => got += n,
                    Err(e) => panic!("read: {e}"),
                }
            }
            s.write_all(b"k").expect("acknowledge");
        }
        "raw-pong-block" | "raw-pong-busy" => {
            s.set_nonblocking(role == "raw-pong-busy").expect("nonblocking");
            let mut buf = vec![0u8; num("--size")];
            for _ in 0..count {
                read_exact_spin(&mut s, &mut buf);
                write_all_spin(&mut s, &buf);
            }
        }
        other => panic!("unknown child role {other}"),
    }
    true
}
