//! Peer 1 of a two-peer transport, in a child process of a test (`tests/transport_processes.rs`).
//!
//! ```text
//! transport_peer --transport tcp|shm --scenario NAME [--parent-addr ADDR] [--ns NAME]
//! ```
//!
//! It connects to the parent (peer 0), plays the scenario (see
//! [`derecho_tests::peer_process::Scenario`]) and exits 0. A failed check panics, which prints
//! the scenario and the failure on stderr (the test lets the child's stderr through) and exits
//! non-zero. Every wait is bounded, and the child asks the kernel to kill it if the test's thread
//! goes away, so a failing test does not leave it behind.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::frame::{HEADER_LEN, Header, Kind};
use derecho_runtime::transport::shm::ShmTransport;
use derecho_runtime::transport::tcp::TcpTransport;
use derecho_runtime::transport::{AnyTransport, Payload, PeerFailure, Transport, TransportError};
use derecho_runtime::{Builder, time};
use derecho_tests::peer_process::{
    BAD_HEADER_BYTE, BAD_RECORD_KIND, CHILD, DATA_OFF, DONE, MAX_FRAME_COUNT, ORDERED_FRAME_COUNT, PARENT, PUSH_COUNT,
    PUSH_FRAME_EVERY, PeerArgs, READY, ROW, ROW_LEN, Scenario, USAGE, WAIT, Which, YIELD_EVERY, expect_frame, limits,
    max_frame, next_failure, ordered_frame, push_block, ring_layout, ring_path, shm_config, tcp_config,
};

/// How long a peer that waits to be killed waits before it gives up (and fails).
const KILL_WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    // The library's logs on standard error, filtered by `RUST_LOG` (warnings and errors if
    // unset: the tests read this process's output).
    derecho::logging::init_default("warn");
    let args = match PeerArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("transport_peer: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    die_with_parent();
    let label = args.to_string();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{label} (pid {}) failed:", std::process::id());
        default_hook(info);
    }));

    if (args.which, args.scenario) == (Which::Tcp, Scenario::Corrupt) {
        corrupt_tcp(args.parent_addr.expect("checked by PeerArgs::parse"));
        return ExitCode::SUCCESS;
    }
    let ex = Builder::new().build().expect("an executor");
    ex.block_on(async {
        let t = connect(&args).await;
        match args.scenario {
            Scenario::FramesInOrder => frames_in_order(&t).await,
            Scenario::Pushes => pushes(&t).await,
            Scenario::MaxFrames => max_frames(&t).await,
            Scenario::Killed | Scenario::Stopped => wait_to_be_killed(&t).await,
            Scenario::Corrupt => corrupt_shm(&t, args.namespace.as_deref().expect("checked by PeerArgs::parse")).await,
        }
        t.close(WAIT).await;
    });
    ExitCode::SUCCESS
}

/// Asks for SIGKILL when the thread that started us exits (the test's thread, which reaps us
/// itself when all goes well). If the parent is already gone, the bounded waits end us.
fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    assert_eq!(rc, 0, "prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error());
}

async fn connect(args: &PeerArgs) -> AnyTransport {
    let r = match args.which {
        Which::Tcp => {
            let parent = args.parent_addr.expect("checked by PeerArgs::parse");
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0");
            TcpTransport::connect(listener, tcp_config(CHILD, PARENT, parent)).await.map(AnyTransport::Tcp)
        }
        Which::Shm => {
            let ns = args.namespace.as_deref().expect("checked by PeerArgs::parse");
            ShmTransport::connect(shm_config(CHILD, PARENT, ns)).await.map(AnyTransport::Shm)
        }
    };
    r.unwrap_or_else(|e| panic!("connecting to the parent: {e}"))
}

async fn send(t: &AnyTransport, body: impl Into<Payload>) {
    t.send_frame(PARENT, body.into()).await.unwrap_or_else(|e| panic!("sending to the parent: {e}"));
}

async fn frames_in_order(t: &AnyTransport) {
    for i in 0..ORDERED_FRAME_COUNT {
        send(t, ordered_frame(i)).await;
        if i % YIELD_EVERY == 0 {
            derecho_runtime::yield_now().await;
        }
    }
    expect_frame(t, PARENT, DONE).await;
}

/// Writes the block then the counter, pushing each separately; a frame naming the counter follows
/// every `PUSH_FRAME_EVERY` pushes.
async fn pushes(t: &AnyTransport) {
    let r = t.register_region(ROW, ROW_LEN).expect("register the region");
    // Both sides register before anyone pushes: the parent's "ready" comes after its
    // registration.
    send(t, READY).await;
    expect_frame(t, PARENT, READY).await;
    for i in 1..=PUSH_COUNT {
        r.write(DATA_OFF, &push_block(i));
        t.push(PARENT, ROW, DATA_OFF..ROW_LEN).unwrap_or_else(|e| panic!("push {i} of the block: {e}"));
        r.store_u64(0, i);
        t.push(PARENT, ROW, 0..8).unwrap_or_else(|e| panic!("push {i} of the counter: {e}"));
        if i % PUSH_FRAME_EVERY == 0 {
            send(t, i.to_le_bytes().to_vec()).await;
        } else if i % 64 == 0 {
            // Let the transport's tasks (the TCP writer) run.
            derecho_runtime::yield_now().await;
        }
    }
    expect_frame(t, PARENT, DONE).await;
}

async fn max_frames(t: &AnyTransport) {
    let max = limits().max_frame_len;
    assert_eq!(t.max_frame_len(), max);
    match t.send_frame(PARENT, vec![0u8; max + 1].into()).await {
        Err(TransportError::FrameTooLong { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
        other => panic!("a frame of max_frame_len + 1 bytes was not refused with FrameTooLong: {other:?}"),
    }
    for k in 0..MAX_FRAME_COUNT {
        send(t, max_frame(k)).await;
        derecho_runtime::yield_now().await;
    }
    expect_frame(t, PARENT, DONE).await;
}

/// Says ready, then lives (heartbeats and all) until the parent kills it.
async fn wait_to_be_killed(t: &AnyTransport) {
    send(t, READY).await;
    // Sleep rather than wait for events: when the parent drops the connection to a stopped peer,
    // this peer must not exit on its own once continued (its exit status is asserted).
    time::sleep(KILL_WAIT).await;
    panic!("not killed within {KILL_WAIT:?} of saying ready");
}

/// Completes the handshake on a raw socket, sends a header with a bad magic, and checks that
/// the parent closes the connection.
fn corrupt_tcp(parent: SocketAddr) {
    let mut s = std::net::TcpStream::connect_timeout(&parent, WAIT).expect("connect to the parent");
    s.set_read_timeout(Some(WAIT)).expect("set a read timeout");
    s.write_all(&Header::encode(Kind::Hello, u64::from(CHILD.0), &[])).expect("send the hello");
    let mut hello = [0u8; HEADER_LEN];
    s.read_exact(&mut hello).expect("the parent's hello");
    let h = Header::decode(&hello, limits().max_frame_len).expect("a valid hello");
    assert_eq!((h.kind, h.aux as u32), (Kind::Hello, PARENT.0), "the parent's hello");
    s.write_all(&[BAD_HEADER_BYTE; HEADER_LEN]).expect("send the bad header");
    let deadline = Instant::now() + WAIT;
    let mut sink = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "the parent kept the connection open for {WAIT:?} after a bad header");
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue, // heartbeats sent before the parent read the bad header
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the parent did not close the connection after a bad header: {e}"),
        }
    }
}

/// Publishes a record of an unknown kind in the ring this side produces into, and waits for the
/// parent, which must drop us, to close.
async fn corrupt_shm(t: &AnyTransport, namespace: &str) {
    let path = ring_path(namespace, CHILD, PARENT);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open the ring to the parent");
    let map = memmap2::MmapOptions::new().map_raw(&f).expect("map the ring");
    assert!(map.len() > ring_layout::DATA_OFFSET + 64, "ring file too short");
    // SAFETY: the mapping is longer than the header and a record (checked); the tail word is at a
    // page-aligned base + 128, so 8-byte aligned; the transport on this side has sent nothing, so
    // the ring is empty (asserted), and only this process produces into it.
    unsafe {
        let base = map.as_mut_ptr();
        let tail = AtomicU64::from_ptr(base.add(ring_layout::TAIL_OFFSET).cast());
        assert_eq!(tail.load(Ordering::Acquire), 0, "ring not empty");
        base.add(ring_layout::DATA_OFFSET).cast::<u32>().write_volatile(5);
        base.add(ring_layout::DATA_OFFSET + 4).cast::<u32>().write_volatile(BAD_RECORD_KIND);
        tail.store(64, Ordering::Release);
    }
    let (peer, reason) = next_failure(t, "the parent to close after the bad record").await;
    assert_eq!(peer, PARENT);
    assert!(matches!(reason, PeerFailure::Closed), "expected the parent to close, got {reason:?}");
}
