//! Transport tests in one process: each peer runs on its own executor thread. Every test runs
//! against both transports unless it is about one transport's wire.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::frame::{self, HEADER_LEN, Header, Kind};
use derecho_runtime::transport::shm::{ShmConfig, ShmTransport};
use derecho_runtime::transport::tcp::{TcpConfig, TcpTransport};
use derecho_runtime::transport::{
    AnyTransport, FrameError, Payload, PeerFailure, PeerId, RegionId, Transport, TransportError, TransportEvent,
    TransportLimits,
};
use derecho_runtime::{Builder, time};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Tcp,
    Shm,
}

const A: PeerId = PeerId(0);
const B: PeerId = PeerId(1);

fn limits() -> TransportLimits {
    TransportLimits {
        max_frame_len: 1 << 20,
        heartbeat_interval: Duration::from_millis(20),
        peer_timeout: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(20),
        ..TransportLimits::default()
    }
}

fn unique_ns(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}-{}-{}", std::process::id(), tag, N.fetch_add(1, Ordering::Relaxed))
}

struct Plan {
    which: Which,
    limits: TransportLimits,
    ns: String,
    listeners: Option<(TcpListener, TcpListener)>,
    /// Spin budget of both executors (zero: they park whenever idle).
    spin: Duration,
    /// Peer 1's limits, if not those of peer 0.
    limits_b: Option<TransportLimits>,
}

impl Plan {
    fn new(which: Which, limits: TransportLimits) -> Self {
        let listeners = (which == Which::Tcp).then(|| {
            let l = || TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            (l(), l())
        });
        Self { which, limits, ns: unique_ns("pair"), listeners, spin: Duration::ZERO, limits_b: None }
    }

    /// Peer 1 runs with `limits` (peer 0 with those of [`Plan::new`]).
    fn peer_b_limits(mut self, limits: TransportLimits) -> Self {
        self.limits_b = Some(limits);
        self
    }

    /// Both executors spin for `spin` before parking (TCP then receives with non-blocking reads
    /// from its poll hook while spinning).
    fn spinning(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }
}

async fn connect_side(
    which: Which,
    me: PeerId,
    other: PeerId,
    listener: Option<TcpListener>,
    other_addr: Option<SocketAddr>,
    ns: String,
    limits: TransportLimits,
) -> Result<AnyTransport, TransportError> {
    match which {
        Which::Tcp => {
            let mut cfg = TcpConfig::new(me, vec![(other, other_addr.unwrap())]);
            cfg.limits = limits;
            TcpTransport::connect(listener.unwrap(), cfg).await.map(AnyTransport::Tcp)
        }
        Which::Shm => {
            let mut cfg = ShmConfig::new(me, vec![other], ns);
            cfg.limits = limits;
            cfg.ring_len = 4 * (cfg.limits.max_frame_len + 64);
            ShmTransport::connect(cfg).await.map(AnyTransport::Shm)
        }
    }
}

/// Runs `a` as peer 0 and `b` as peer 1, each on its own executor thread with its own transport.
fn run_pair<FA, FB, XA, XB, RA, RB>(plan: Plan, a: FA, b: FB) -> (RA, RB)
where
    FA: FnOnce(Rc<AnyTransport>) -> XA + Send + 'static,
    FB: FnOnce(Rc<AnyTransport>) -> XB + Send + 'static,
    XA: Future<Output = RA> + 'static,
    XB: Future<Output = RB> + 'static,
    RA: Send + 'static,
    RB: Send + 'static,
{
    let Plan { which, limits, ns, listeners, spin, limits_b } = plan;
    let (la, lb, addr_a, addr_b) = match listeners {
        Some((la, lb)) => {
            let (aa, ab) = (la.local_addr(), lb.local_addr());
            (Some(la), Some(lb), Some(aa), Some(ab))
        }
        None => (None, None, None, None),
    };
    let (ns_a, ns_b, lim_a) = (ns.clone(), ns.clone(), limits.clone());
    let lim_b = limits_b.unwrap_or(limits);
    let ta = Builder::new()
        .spin_budget(spin)
        .name("peer-a")
        .spawn_thread(move || async move {
            let t = Rc::new(connect_side(which, A, B, la, addr_b, ns_a, lim_a).await.expect("peer 0 connects"));
            let r = a(t.clone()).await;
            t.close(Duration::from_secs(5)).await;
            r
        })
        .unwrap();
    let tb = Builder::new()
        .spin_budget(spin)
        .name("peer-b")
        .spawn_thread(move || async move {
            let t = Rc::new(connect_side(which, B, A, lb, addr_a, ns_b, lim_b).await.expect("peer 1 connects"));
            let r = b(t.clone()).await;
            t.close(Duration::from_secs(5)).await;
            r
        })
        .unwrap();
    let ra = ta.join().expect("peer 0 thread");
    let rb = tb.join().expect("peer 1 thread");
    let _ = ShmTransport::remove_namespace(Path::new("/dev/shm"), &ns);
    (ra, rb)
}

/// The next frame, failing the test (not hanging) if none comes within 10 s.
async fn next_frame(t: &AnyTransport) -> (PeerId, Vec<u8>) {
    match time::timeout(Duration::from_secs(10), t.next_event()).await {
        Ok(TransportEvent::Frame { from, frame }) => (from, frame.to_vec()),
        Ok(other) => panic!("expected a frame, got {other:?}"),
        Err(_) => panic!("no frame within 10 s"),
    }
}

/// The next peer failure, within 10 s.
async fn next_failure(t: &AnyTransport) -> (PeerId, PeerFailure) {
    loop {
        match time::timeout(Duration::from_secs(10), t.next_event()).await {
            Ok(TransportEvent::PeerFailed { peer, reason }) => return (peer, reason),
            Ok(TransportEvent::Frame { .. }) => continue,
            Err(_) => panic!("no peer failure reported within 10 s"),
        }
    }
}

fn frame_body(i: u32) -> Vec<u8> {
    let len = 4 + (i as usize * 37) % 3000;
    let mut v = vec![(i % 251) as u8; len];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

fn frames_arrive_in_order(which: Which) {
    frames_arrive_in_order_with(which, Duration::ZERO);
}

fn frames_arrive_in_order_with(which: Which, spin: Duration) {
    const N: u32 = 3000;
    run_pair(
        Plan::new(which, limits()).spinning(spin),
        |t| async move {
            for i in 0..N {
                t.send_frame(B, frame_body(i).into()).await.unwrap();
            }
            assert_eq!(next_frame(&t).await.1, b"done");
        },
        |t| async move {
            for i in 0..N {
                let (from, body) = next_frame(&t).await;
                assert_eq!(from, A);
                assert_eq!(body, frame_body(i), "frame {i} wrong or out of order");
                assert_eq!(body.as_ptr() as usize % 16, 0, "frame buffer not 16-byte aligned");
            }
            t.send_frame(A, b"done".into()).await.unwrap();
        },
    );
}

#[test]
fn shm_files_are_readable_and_writable_by_their_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let plan = Plan::new(Which::Shm, limits());
    let prefix = format!("derecho-{}-", plan.ns);
    let modes = move || -> Vec<(String, u32)> {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().permissions().mode() & 0o777))
            .collect()
    };
    run_pair(
        plan,
        move |t| async move {
            let files = modes();
            assert!(files.len() >= 2, "the pair's files: {files:?}");
            assert!(files.iter().all(|(_, m)| *m == 0o600), "{files:?}");
            t.send_frame(B, b"checked".into()).await.unwrap();
        },
        |t| async move {
            assert_eq!(next_frame(&t).await.1, b"checked");
        },
    );
}

#[test]
fn tcp_frames_arrive_in_order() {
    frames_arrive_in_order(Which::Tcp);
}

#[test]
fn shm_frames_arrive_in_order() {
    frames_arrive_in_order(Which::Shm);
}

const ROW: RegionId = RegionId(7);
const DATA_OFF: usize = 64;
const DATA_LEN: usize = 512;

/// Peer 0 repeatedly writes a data block then a counter, pushing each separately, and now and
/// then sends a frame naming the counter. Peer 1 checks that the data it sees is never older than
/// the counter it read before it, and that a frame never overtakes the push before it.
fn pushes_keep_data_before_counter(which: Which) {
    pushes_keep_data_before_counter_with(which, Duration::ZERO);
}

fn pushes_keep_data_before_counter_with(which: Which, spin: Duration) {
    const N: u64 = 20_000;
    run_pair(
        Plan::new(which, limits()).spinning(spin),
        |t| async move {
            let r = t.register_region(ROW, DATA_OFF + DATA_LEN).unwrap();
            // Both sides register before anyone pushes (a frame is the barrier).
            t.send_frame(B, b"ready".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"ready");
            for i in 1..=N {
                r.write(DATA_OFF, &[(i % 256) as u8; DATA_LEN]);
                r.write(DATA_OFF, &i.to_le_bytes());
                t.push(B, ROW, DATA_OFF..DATA_OFF + DATA_LEN).unwrap();
                r.store_u64(0, i);
                t.push(B, ROW, 0..8).unwrap();
                if i % 1000 == 0 {
                    t.send_frame(B, i.to_le_bytes().to_vec().into()).await.unwrap();
                } else if i % 64 == 0 {
                    derecho_runtime::yield_now().await;
                }
            }
            assert_eq!(next_frame(&t).await.1, b"done");
        },
        |t| async move {
            let r = t.register_region(ROW, DATA_OFF + DATA_LEN).unwrap();
            assert_eq!(next_frame(&t).await.1, b"ready");
            t.send_frame(A, b"ready".into()).await.unwrap();
            let mut last = 0;
            let mut data = vec![0u8; DATA_LEN];
            let started = std::time::Instant::now();
            while last < N {
                let c = r.load_u64(0);
                r.read(DATA_OFF, &mut data);
                let stamp = u64::from_le_bytes(data[..8].try_into().unwrap());
                assert!(c >= last, "counter went backwards: {last} -> {c}");
                // The block is rewritten by every push, so a concurrent reader may see parts of
                // two pushes (as with one-sided writes); what must hold is that the data is never
                // older than the counter read before it.
                assert!(stamp >= c, "data of push {stamp} seen after counter {c}: a counter overtook its data");
                last = c;
                while let Some(TransportEvent::Frame { frame, .. }) = t.try_next_event() {
                    let i = u64::from_le_bytes(frame[..8].try_into().unwrap());
                    assert!(r.load_u64(0) >= i, "frame {i} arrived before the push before it");
                }
                assert!(started.elapsed() < Duration::from_secs(30), "stuck at counter {last}");
                derecho_runtime::yield_now().await;
            }
            t.send_frame(A, b"done".into()).await.unwrap();
        },
    );
}

#[test]
fn tcp_pushes_keep_data_before_counter() {
    pushes_keep_data_before_counter(Which::Tcp);
}

#[test]
fn shm_pushes_keep_data_before_counter() {
    pushes_keep_data_before_counter(Which::Shm);
}

fn max_frame_passes_and_larger_is_refused(which: Which) {
    let max = limits().max_frame_len;
    let big: Vec<u8> = (0..max).map(|i| (i * 7 % 256) as u8).collect();
    let expect = big.clone();
    run_pair(
        Plan::new(which, limits()),
        move |t| async move {
            match t.send_frame(B, vec![0u8; max + 1].into()).await {
                Err(TransportError::FrameTooLong { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
                other => panic!("a frame over the maximum was not refused: {other:?}"),
            }
            for _ in 0..3 {
                t.send_frame(B, big.clone().into()).await.unwrap();
            }
            assert_eq!(next_frame(&t).await.1, b"done");
        },
        move |t| async move {
            for _ in 0..3 {
                let (_, body) = next_frame(&t).await;
                assert_eq!(body.len(), max);
                assert!(body == expect, "maximum-size frame corrupted");
            }
            t.send_frame(A, b"done".into()).await.unwrap();
        },
    );
}

#[test]
fn tcp_max_frame_passes_and_larger_is_refused() {
    max_frame_passes_and_larger_is_refused(Which::Tcp);
}

#[test]
fn shm_max_frame_passes_and_larger_is_refused() {
    max_frame_passes_and_larger_is_refused(Which::Shm);
}

fn closed_peer_is_reported(which: Which) {
    closed_peer_is_reported_with(which, Duration::ZERO);
}

fn closed_peer_is_reported_with(which: Which, spin: Duration) {
    run_pair(
        Plan::new(which, limits()).spinning(spin),
        |t| async move {
            t.send_frame(B, b"bye".into()).await.unwrap();
            t.close(Duration::from_secs(5)).await;
        },
        |t| async move {
            assert_eq!(next_frame(&t).await.1, b"bye");
            let (peer, reason) = next_failure(&t).await;
            assert_eq!(peer, A);
            assert!(matches!(reason, PeerFailure::Closed), "expected Closed, got {reason:?}");
            match t.send_frame(A, b"x".into()).await {
                Err(TransportError::PeerFailed(p)) => assert_eq!(p, A),
                other => panic!("send to a failed peer: {other:?}"),
            }
        },
    );
}

#[test]
fn tcp_closed_peer_is_reported() {
    closed_peer_is_reported(Which::Tcp);
}

#[test]
fn shm_closed_peer_is_reported() {
    closed_peer_is_reported(Which::Shm);
}

/// A peer whose thread hangs (no heartbeats, nothing read) is reported silent.
fn hung_peer_is_reported_silent(which: Which) {
    hung_peer_is_reported_silent_with(which, Duration::ZERO);
}

fn hung_peer_is_reported_silent_with(which: Which, spin: Duration) {
    run_pair(
        Plan::new(which, limits()).spinning(spin),
        |t| async move {
            // Block the whole executor thread, longer than the peer timeout.
            std::thread::sleep(Duration::from_millis(1500));
            drop(t);
        },
        |t| async move {
            let (peer, reason) = next_failure(&t).await;
            assert_eq!(peer, A);
            match reason {
                PeerFailure::Silent(d) => assert!(d >= limits().peer_timeout, "declared silent after {d:?}"),
                other => panic!("expected Silent, got {other:?}"),
            }
        },
    );
}

#[test]
fn tcp_hung_peer_is_reported_silent() {
    hung_peer_is_reported_silent(Which::Tcp);
}

#[test]
fn shm_hung_peer_is_reported_silent() {
    hung_peer_is_reported_silent(Which::Shm);
}

fn push_errors_are_typed(which: Which) {
    run_pair(
        Plan::new(which, limits()),
        |t| async move {
            let r = t.register_region(ROW, 64).unwrap();
            assert!(matches!(t.register_region(ROW, 64), Err(TransportError::RegionExists(ROW))));
            assert!(matches!(t.push(PeerId(9), ROW, 0..8), Err(TransportError::UnknownPeer(PeerId(9)))));
            assert!(matches!(t.push(B, RegionId(3), 0..8), Err(TransportError::UnknownRegion(RegionId(3)))));
            match t.push(B, ROW, 60..72) {
                Err(TransportError::OutOfBounds { start: 60, end: 72, len: 64, .. }) => {}
                other => panic!("out-of-bounds push: {other:?}"),
            }
            r.store_u64(0, 5);
            t.send_frame(B, b"go".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"registered");
            t.push(B, ROW, 0..8).unwrap();
            t.send_frame(B, b"pushed".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"done");
        },
        |t| async move {
            assert_eq!(next_frame(&t).await.1, b"go");
            let r = t.register_region(ROW, 64).unwrap();
            t.send_frame(A, b"registered".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"pushed");
            assert_eq!(r.load_u64(0), 5);
            t.send_frame(A, b"done".into()).await.unwrap();
        },
    );
}

#[test]
fn tcp_push_errors_are_typed() {
    push_errors_are_typed(Which::Tcp);
}

#[test]
fn shm_push_errors_are_typed() {
    push_errors_are_typed(Which::Shm);
}

// ---- the TCP wire: a peer that lies ------------------------------------------------------------

/// Starts peer 0 on a transport and an "evil" peer 1 on a plain socket that completes the
/// handshake and then writes `bytes`. Returns the failure peer 0 reports and whether the evil peer
/// then saw its connection closed.
fn evil_tcp_peer(bytes: Vec<u8>) -> (PeerFailure, bool) {
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let evil = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&Header::encode(Kind::Hello, 1, &[])).unwrap();
        let mut hello = [0u8; HEADER_LEN];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&bytes).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = [0u8; 4096];
        loop {
            match s.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue, // heartbeats
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    });
    let ex = Builder::new().build().unwrap();
    let failure = ex.block_on(async move {
        let mut cfg = TcpConfig::new(A, vec![(B, "127.0.0.1:1".parse().unwrap())]);
        cfg.limits = limits();
        let t = TcpTransport::connect(listener, cfg).await.expect("handshake with the evil peer");
        t.register_region(ROW, 64).unwrap();
        let t = AnyTransport::Tcp(t);
        let (peer, reason) = next_failure(&t).await;
        assert_eq!(peer, B);
        reason
    });
    (failure, evil.join().unwrap())
}

fn protocol_error(f: PeerFailure) -> FrameError {
    match f {
        PeerFailure::Protocol(e) => e,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[test]
fn tcp_bad_magic_drops_the_connection() {
    let (f, closed) = evil_tcp_peer(vec![0xAB; HEADER_LEN]);
    assert_eq!(protocol_error(f), FrameError::BadMagic(0xABAB_ABAB));
    assert!(closed, "connection left open after a bad header");
}

#[test]
fn tcp_oversized_length_is_refused_before_allocating() {
    let mut h = Header::encode(Kind::Data, 0, &[]);
    h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let (f, closed) = evil_tcp_peer(h.to_vec());
    assert_eq!(protocol_error(f), FrameError::TooLong { len: u32::MAX as usize, max: limits().max_frame_len });
    assert!(closed);
}

#[test]
fn tcp_corrupted_body_fails_the_checksum() {
    let mut bytes = Header::encode(Kind::Data, 0, b"hello").to_vec();
    bytes.extend_from_slice(b"jello");
    let (f, closed) = evil_tcp_peer(bytes);
    assert!(matches!(protocol_error(f), FrameError::Checksum { .. }));
    assert!(closed);
}

#[test]
fn tcp_push_to_unknown_region_or_out_of_bounds_is_a_violation() {
    let body = [1u8; 8];
    let mut bytes = Header::encode(Kind::Push, frame::push_aux(9, 0), &body).to_vec();
    bytes.extend_from_slice(&body);
    let (f, _) = evil_tcp_peer(bytes);
    assert_eq!(protocol_error(f), FrameError::UnknownRegion(9));

    let mut bytes = Header::encode(Kind::Push, frame::push_aux(ROW.0, 60), &body).to_vec();
    bytes.extend_from_slice(&body);
    let (f, _) = evil_tcp_peer(bytes);
    assert_eq!(protocol_error(f), FrameError::PushOutOfBounds { region: ROW.0, offset: 60, len: 8, region_len: 64 });
}

#[test]
fn tcp_push_outside_the_peers_window_is_a_violation() {
    // The evil peer may write bytes 0..16 of the region; it pushes at 16.
    let body = [1u8; 8];
    let mut bytes = Header::encode(Kind::Push, frame::push_aux(ROW.0, 16), &body).to_vec();
    bytes.extend_from_slice(&body);
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let evil = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&Header::encode(Kind::Hello, 1, &[])).unwrap();
        let mut hello = [0u8; HEADER_LEN];
        s.read_exact(&mut hello).unwrap();
        // Inside the window first: accepted.
        let ok = [2u8; 8];
        let mut good = Header::encode(Kind::Push, frame::push_aux(ROW.0, 8), &ok).to_vec();
        good.extend_from_slice(&ok);
        s.write_all(&good).unwrap();
        s.write_all(&bytes).unwrap();
        let mut sink = [0u8; 64];
        while s.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    let ex = Builder::new().build().unwrap();
    let (f, seen) = ex.block_on(async move {
        let mut cfg = TcpConfig::new(A, vec![(B, "127.0.0.1:1".parse().unwrap())]);
        cfg.limits = limits();
        let t = TcpTransport::connect(listener, cfg).await.unwrap();
        let r = t.register_region(ROW, 64).unwrap();
        t.confine_pushes(ROW, B, 0..16);
        let t = AnyTransport::Tcp(t);
        let f = next_failure(&t).await.1;
        (f, r.to_vec(8, 16))
    });
    evil.join().unwrap();
    assert_eq!(protocol_error(f), FrameError::PushOutsideWindow { region: ROW.0, offset: 16, len: 8 });
    assert_eq!(
        seen,
        [2u8; 8].iter().chain([0u8; 8].iter()).copied().collect::<Vec<_>>(),
        "the push inside the window was not applied, or the one outside was"
    );
}

#[test]
fn tcp_second_hello_is_a_violation() {
    let (f, _) = evil_tcp_peer(Header::encode(Kind::Hello, 1, &[]).to_vec());
    assert_eq!(protocol_error(f), FrameError::Unexpected(Kind::Hello));
}

#[test]
fn tcp_truncated_frame_then_close_is_reported_closed() {
    let mut bytes = Header::encode(Kind::Data, 0, &[0u8; 100]).to_vec();
    bytes.extend_from_slice(&[0u8; 10]); // 90 bytes short, then the evil peer waits
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let evil = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&Header::encode(Kind::Hello, 1, &[])).unwrap();
        let mut hello = [0u8; HEADER_LEN];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&bytes).unwrap();
        drop(s);
    });
    let ex = Builder::new().build().unwrap();
    let f = ex.block_on(async move {
        let mut cfg = TcpConfig::new(A, vec![(B, "127.0.0.1:1".parse().unwrap())]);
        cfg.limits = limits();
        let t = AnyTransport::Tcp(TcpTransport::connect(listener, cfg).await.unwrap());
        next_failure(&t).await.1
    });
    evil.join().unwrap();
    assert!(matches!(f, PeerFailure::Closed), "{f:?}");
}

#[test]
fn tcp_handshake_with_wrong_group_is_refused() {
    let ex = Builder::new().build().unwrap();
    let (la, lb) = (
        TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap(),
        TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap(),
    );
    let (aa, ab) = (la.local_addr(), lb.local_addr());
    let short = TransportLimits { connect_timeout: Duration::from_millis(500), ..limits() };
    let (ra, rb) = ex.block_on(async move {
        let mut ca = TcpConfig::new(A, vec![(B, ab)]);
        ca.limits = short.clone();
        let mut cb = TcpConfig::new(B, vec![(A, aa)]);
        cb.limits = short;
        cb.group_tag = 99;
        let a = derecho_runtime::spawn(TcpTransport::connect(la, ca));
        let rb = TcpTransport::connect(lb, cb).await;
        (a.await, rb)
    });
    match ra {
        Err(TransportError::ConnectTimeout { missing, .. }) => assert_eq!(missing, vec![B]),
        other => panic!("peer 0 accepted a peer of another group: {other:?}"),
    }
    match rb {
        Err(TransportError::Handshake { reason, .. }) => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("peer 1 should see its handshake refused: {other:?}"),
    }
}

#[test]
fn tcp_connect_timeout_names_missing_peers() {
    let ex = Builder::new().build().unwrap();
    let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap().local_addr();
    let r = ex.block_on(async move {
        let mut cfg = TcpConfig::new(A, vec![(B, dead), (PeerId(2), dead)]);
        cfg.limits.connect_timeout = Duration::from_millis(300);
        TcpTransport::connect(l, cfg).await
    });
    match r {
        Err(TransportError::ConnectTimeout { missing, .. }) => assert_eq!(missing, vec![B, PeerId(2)]),
        other => panic!("{other:?}"),
    }
}

// ---- shared memory: a lying ring, stale files, configuration -----------------------------------

const RING_TAIL_OFFSET: usize = 128;
const RING_DATA_OFFSET: usize = 256;

/// Writes a raw record into the ring from peer 0 to peer 1 and publishes it.
fn inject_record(ns: &str, len: u32, kind: u32) {
    let path = format!("/dev/shm/derecho-{ns}-0-to-1.ring");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let map = memmap2::MmapOptions::new().map_raw(&f).unwrap();
    // SAFETY: the ring file is larger than its header; the tail word is 8-byte aligned and the
    // record is written at position 0 of the data area of an empty ring.
    unsafe {
        let base = map.as_mut_ptr();
        let tail = &*base.add(RING_TAIL_OFFSET).cast::<AtomicU64>();
        assert_eq!(tail.load(Ordering::Acquire), 0, "ring not empty");
        base.add(RING_DATA_OFFSET).cast::<u32>().write_volatile(len);
        base.add(RING_DATA_OFFSET + 4).cast::<u32>().write_volatile(kind);
        tail.store(64, Ordering::Release);
    }
}

fn lying_ring(len: u32, kind: u32) -> FrameError {
    let plan = Plan::new(Which::Shm, limits());
    let ns = plan.ns.clone();
    let (_, f) = run_pair(
        plan,
        move |t| async move {
            inject_record(&ns, len, kind);
            // Wake peer 1 with a legitimate push-free doorbell: a frame to nobody would be
            // simplest, but any ring activity works; the hook polls every iteration anyway.
            time::sleep(Duration::from_millis(600)).await;
            drop(t);
        },
        |t| async move { next_failure(&t).await },
    );
    assert_eq!(f.0, A);
    protocol_error(f.1)
}

#[test]
fn shm_unknown_record_kind_is_a_violation() {
    assert!(matches!(lying_ring(5, 99), FrameError::BadRecord { .. }));
}

#[test]
fn shm_record_over_the_maximum_is_a_violation() {
    assert_eq!(lying_ring(u32::MAX, 1), FrameError::TooLong { len: u32::MAX as usize, max: limits().max_frame_len });
}

#[test]
fn shm_stale_files_of_a_crashed_run_are_replaced() {
    let plan = Plan::new(Which::Shm, limits());
    // A crashed run of peer 0: a ready control block naming a dead process, and a garbage ring.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let mut ctl = vec![0u8; 4096];
    ctl[0..8].copy_from_slice(b"DRECSHMC");
    ctl[8..12].copy_from_slice(&1u32.to_le_bytes());
    ctl[12..16].copy_from_slice(&1u32.to_le_bytes());
    ctl[16..20].copy_from_slice(&dead_pid.to_le_bytes());
    std::fs::write(format!("/dev/shm/derecho-{}-0.ctl", plan.ns), &ctl).unwrap();
    std::fs::write(format!("/dev/shm/derecho-{}-1-to-0.ring", plan.ns), vec![0xEEu8; 8192]).unwrap();
    run_pair(
        plan,
        |t| async move {
            t.send_frame(B, b"fresh".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"ack");
        },
        |t| async move {
            assert_eq!(next_frame(&t).await.1, b"fresh");
            t.send_frame(A, b"ack".into()).await.unwrap();
        },
    );
}

#[test]
fn shm_files_are_removed_on_close() {
    let plan = Plan::new(Which::Shm, limits());
    let ns = plan.ns.clone();
    run_pair(
        plan,
        |t| async move {
            t.register_region(ROW, 128).unwrap();
            t.send_frame(B, b"x".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"y");
        },
        |t| async move {
            assert_eq!(next_frame(&t).await.1, b"x");
            t.send_frame(A, b"y".into()).await.unwrap();
            time::sleep(Duration::from_millis(50)).await;
        },
    );
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("derecho-{ns}-")))
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn shm_config_errors_name_the_field() {
    let ex = Builder::new().build().unwrap();
    ex.block_on(async {
        let bad_ns = ShmConfig::new(A, vec![B], "no/slashes");
        let e = ShmTransport::connect(bad_ns).await.unwrap_err().to_string();
        assert!(e.contains("namespace"), "{e}");
        let mut small = ShmConfig::new(A, vec![B], unique_ns("cfg"));
        small.ring_len = 4096;
        let e = ShmTransport::connect(small).await.unwrap_err().to_string();
        assert!(e.contains("ring_len"), "{e}");
        let mut me_too = ShmConfig::new(A, vec![A], unique_ns("cfg"));
        me_too.ring_len = 16 << 20;
        let e = ShmTransport::connect(me_too).await.unwrap_err().to_string();
        assert!(e.contains("peers"), "{e}");
    });
}

#[test]
fn shm_connect_timeout_names_missing_peers_and_cleans_up() {
    let ex = Builder::new().build().unwrap();
    let ns = unique_ns("lonely");
    let n2 = ns.clone();
    let r = ex.block_on(async move {
        let mut cfg = ShmConfig::new(A, vec![B, PeerId(2)], n2);
        cfg.limits.connect_timeout = Duration::from_millis(200);
        ShmTransport::connect(cfg).await
    });
    match r {
        Err(TransportError::ConnectTimeout { missing, .. }) => assert_eq!(missing, vec![B, PeerId(2)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(ShmTransport::remove_namespace(Path::new("/dev/shm"), &ns).unwrap(), 0, "files left behind");
}

#[test]
fn payloads_of_every_kind_send() {
    run_pair(
        Plan::new(Which::Tcp, limits()),
        |t| async move {
            t.send_frame(B, Payload::from(b"static")).await.unwrap();
            t.send_frame(B, Payload::from(vec![1, 2, 3])).await.unwrap();
            t.send_frame(B, Payload::from(derecho_runtime::AlignedBuf::from_slice(b"aligned"))).await.unwrap();
            t.send_frame(B, Payload::from(Vec::new())).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"ok");
        },
        |t| async move {
            assert_eq!(next_frame(&t).await.1, b"static");
            assert_eq!(next_frame(&t).await.1, [1, 2, 3]);
            assert_eq!(next_frame(&t).await.1, b"aligned");
            assert_eq!(next_frame(&t).await.1, b"");
            t.send_frame(A, b"ok".into()).await.unwrap();
        },
    );
}

/// Shared-memory frames are read in place and release their ring space when dropped, in ring
/// order even when dropped out of order. The sender pushes far more than the ring holds, so it
/// finishes only if every release reaches it.
#[test]
fn shm_frames_dropped_out_of_order_release_the_ring() {
    let small = TransportLimits { max_frame_len: 64 << 10, ..limits() };
    const N: u32 = 400; // 400 x 32 KiB = 12.5 MiB through a ring of about 256 KiB
    let body = |i: u32| -> Vec<u8> {
        let mut v = vec![(i % 253) as u8; 32 << 10];
        v[..4].copy_from_slice(&i.to_le_bytes());
        v
    };
    run_pair(
        Plan::new(Which::Shm, small),
        move |t| async move {
            for i in 0..N {
                t.send_frame(B, body(i).into()).await.unwrap();
            }
            assert_eq!(next_frame(&t).await.1, b"done");
        },
        move |t| async move {
            let mut i = 0;
            while i < N {
                // Hold up to three frames, then drop them in the order 2, 3, 1.
                let take = (N - i).min(3);
                let mut held = Vec::new();
                for _ in 0..take {
                    match time::timeout(Duration::from_secs(10), t.next_event()).await {
                        Ok(TransportEvent::Frame { frame, .. }) => held.push(frame),
                        other => panic!("expected frame {i}: {other:?}"),
                    }
                }
                for (k, f) in held.iter().enumerate() {
                    assert!(f[..] == body(i + k as u32)[..], "frame {} corrupted while held", i + k as u32);
                }
                let order: &[usize] = if held.len() == 3 { &[1, 2, 0] } else { &[] };
                let mut slots: Vec<_> = held.into_iter().map(Some).collect();
                for &k in order {
                    drop(slots[k].take());
                }
                drop(slots);
                i += take;
            }
            t.send_frame(A, b"done".into()).await.unwrap();
        },
    );
}

/// A peer that sends more frames than the receiver's event queue holds and then closes: every
/// frame arrives, in order, before the close is reported.
fn close_after_a_burst_loses_nothing(which: Which) {
    close_after_a_burst_loses_nothing_with(which, Duration::ZERO);
}

fn close_after_a_burst_loses_nothing_with(which: Which, spin: Duration) {
    const N: u32 = 10_000;
    run_pair(
        Plan::new(which, limits()).spinning(spin),
        |t| async move {
            for i in 0..N {
                t.send_frame(B, i.to_le_bytes().to_vec().into()).await.unwrap();
            }
            t.close(Duration::from_secs(10)).await;
        },
        |t| async move {
            // Not a synchronisation: the receiver starts late on purpose so that its queue fills
            // and the close arrives while frames are still waiting. The assertions hold whatever
            // the timing.
            std::thread::sleep(Duration::from_millis(300));
            for i in 0..N {
                let (_, body) = next_frame(&t).await;
                assert_eq!(body, i.to_le_bytes(), "frame {i} lost or out of order");
            }
            let (peer, reason) = next_failure(&t).await;
            assert_eq!(peer, A);
            assert!(matches!(reason, PeerFailure::Closed), "{reason:?}");
        },
    );
}

/// A peer whose thread did not run for longer than the peer timeout (a loaded machine) does not
/// take that stall for the other's silence: the other's heartbeats are waiting in its socket.
/// (Peer 1 waits longer before it calls peer 0 silent: peer 0's stall is real silence to it.)
fn a_stalled_thread_does_not_suspect_its_peer(which: Which, spin: Duration) {
    let patient = TransportLimits { peer_timeout: Duration::from_secs(10), ..limits() };
    run_pair(
        Plan::new(which, limits()).peer_b_limits(patient).spinning(spin),
        |t| async move {
            // Blocks the thread, past the 400 ms peer timeout.
            std::thread::sleep(Duration::from_millis(900));
            let (from, body) = next_frame(&t).await;
            assert_eq!((from, body.as_slice()), (B, &b"still here"[..]));
            assert!(t.last_heard(B).is_some(), "peer 1 was reported failed after the stall");
            t.send_frame(B, b"ack".into()).await.unwrap();
        },
        |t| async move {
            time::sleep(Duration::from_millis(1200)).await;
            t.send_frame(A, b"still here".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"ack");
        },
    );
}

#[test]
fn tcp_a_stalled_thread_does_not_suspect_its_peer() {
    a_stalled_thread_does_not_suspect_its_peer(Which::Tcp, Duration::ZERO);
}

#[test]
fn tcp_spinning_a_stalled_thread_does_not_suspect_its_peer() {
    a_stalled_thread_does_not_suspect_its_peer(Which::Tcp, SPIN);
}

#[test]
fn shm_a_stalled_thread_does_not_suspect_its_peer() {
    a_stalled_thread_does_not_suspect_its_peer(Which::Shm, Duration::ZERO);
}

#[test]
fn tcp_close_after_a_burst_loses_nothing() {
    close_after_a_burst_loses_nothing(Which::Tcp);
}

#[test]
fn shm_close_after_a_burst_loses_nothing() {
    close_after_a_burst_loses_nothing(Which::Shm);
}

/// Frames of sizes that are not powers of two, large ones (received straight into a pooled
/// buffer, which is larger than the frame) interleaved with small ones: nothing after a large
/// frame may be swallowed by it.
fn mixed_sizes_arrive_intact(which: Which) {
    mixed_sizes_arrive_intact_with(which, Duration::ZERO);
}

fn mixed_sizes_arrive_intact_with(which: Which, spin: Duration) {
    const SIZES: [usize; 8] = [100, 300_999, 50, 20_000, 65_537, 7, (1 << 20) - 3, 16 << 10];
    let body = |i: usize| -> Vec<u8> {
        let len = SIZES[i % SIZES.len()];
        (0..len).map(|k| (k as u8).wrapping_mul(13).wrapping_add(i as u8)).collect()
    };
    const N: usize = 64;
    run_pair(
        Plan::new(which, limits()).spinning(spin),
        move |t| async move {
            for i in 0..N {
                t.send_frame(B, body(i).into()).await.unwrap();
            }
            assert_eq!(next_frame(&t).await.1, b"done");
        },
        move |t| async move {
            for i in 0..N {
                let (_, got) = next_frame(&t).await;
                assert_eq!(got.len(), SIZES[i % SIZES.len()], "frame {i} has the wrong length");
                assert!(got == body(i), "frame {i} corrupted");
            }
            t.send_frame(A, b"done".into()).await.unwrap();
        },
    );
}

#[test]
fn tcp_mixed_sizes_arrive_intact() {
    mixed_sizes_arrive_intact(Which::Tcp);
}

#[test]
fn shm_mixed_sizes_arrive_intact() {
    mixed_sizes_arrive_intact(Which::Shm);
}

// ---- the same scenarios on spinning executors -------------------------------------------------
// A spinning executor receives TCP bytes with non-blocking reads from a poll hook and hands the
// receive back to io_uring before it parks: these cover both paths and the hand-over.

const SPIN: Duration = Duration::from_micros(300);

#[test]
fn tcp_spinning_frames_arrive_in_order() {
    frames_arrive_in_order_with(Which::Tcp, SPIN);
}

#[test]
fn tcp_spinning_pushes_keep_data_before_counter() {
    pushes_keep_data_before_counter_with(Which::Tcp, SPIN);
}

#[test]
fn tcp_spinning_mixed_sizes_arrive_intact() {
    mixed_sizes_arrive_intact_with(Which::Tcp, SPIN);
}

#[test]
fn tcp_spinning_close_after_a_burst_loses_nothing() {
    close_after_a_burst_loses_nothing_with(Which::Tcp, SPIN);
}

#[test]
fn tcp_spinning_hung_peer_is_reported_silent() {
    hung_peer_is_reported_silent_with(Which::Tcp, SPIN);
}

#[test]
fn tcp_spinning_closed_peer_is_reported() {
    closed_peer_is_reported_with(Which::Tcp, SPIN);
}

#[test]
fn shm_spinning_frames_arrive_in_order() {
    frames_arrive_in_order_with(Which::Shm, SPIN);
}

#[test]
fn shm_spinning_close_after_a_burst_loses_nothing() {
    close_after_a_burst_loses_nothing_with(Which::Shm, SPIN);
}

/// A spinning executor that goes quiet parks with its receive armed in io_uring, and wakes when
/// bytes arrive: exchanges separated by idle gaps longer than the spin budget all complete.
#[test]
fn tcp_spinning_executor_parks_and_wakes_between_exchanges() {
    run_pair(
        Plan::new(Which::Tcp, limits()).spinning(SPIN),
        |t| async move {
            for i in 0u32..20 {
                // Idle for longer than the spin budget: both executors park.
                time::sleep(Duration::from_millis(3)).await;
                t.send_frame(B, i.to_le_bytes().to_vec().into()).await.unwrap();
                assert_eq!(next_frame(&t).await.1, i.to_le_bytes());
            }
            let s = derecho_runtime::loop_stats();
            assert!(s.parks >= 10, "the spinning executor never parked: {s:?}");
        },
        |t| async move {
            for _ in 0u32..20 {
                let (_, body) = next_frame(&t).await;
                t.send_frame(A, body.into()).await.unwrap();
            }
        },
    );
}

/// Data and its counter in one push (the counter the range's last word): the counter is still
/// never seen before the data it covers.
fn one_push_data_then_counter(which: Which) {
    const N: u64 = 20_000;
    const COUNTER: usize = DATA_LEN; // the last word of the pushed range
    run_pair(
        Plan::new(which, limits()),
        |t| async move {
            let r = t.register_region(ROW, DATA_LEN + 8).unwrap();
            t.send_frame(B, b"ready".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"ready");
            for i in 1..=N {
                r.write(0, &i.to_le_bytes());
                r.write(8, &[(i % 256) as u8; DATA_LEN - 8]);
                r.store_u64(COUNTER, i);
                t.push(B, ROW, 0..DATA_LEN + 8).unwrap();
                if i % 64 == 0 {
                    derecho_runtime::yield_now().await;
                }
            }
            assert_eq!(next_frame(&t).await.1, b"done");
        },
        |t| async move {
            let r = t.register_region(ROW, DATA_LEN + 8).unwrap();
            assert_eq!(next_frame(&t).await.1, b"ready");
            t.send_frame(A, b"ready".into()).await.unwrap();
            let started = std::time::Instant::now();
            let mut last = 0;
            while last < N {
                let c = r.load_u64(COUNTER);
                let stamp = r.load_u64(0);
                assert!(stamp >= c, "counter {c} seen before its data (stamp {stamp})");
                last = c;
                assert!(started.elapsed() < Duration::from_secs(30), "stuck at {last}");
                derecho_runtime::yield_now().await;
            }
            t.send_frame(A, b"done".into()).await.unwrap();
        },
    );
}

#[test]
fn tcp_one_push_data_then_counter() {
    one_push_data_then_counter(Which::Tcp);
}

#[test]
fn shm_one_push_data_then_counter() {
    one_push_data_then_counter(Which::Shm);
}

/// Pushes to a peer that stopped reading do not grow this side's memory without bound: once the
/// queue reaches `send_queue_len_max` a push is refused with `QueueFull`.
#[test]
fn tcp_pushes_to_a_peer_that_stopped_reading_are_bounded() {
    let bounded = TransportLimits { send_queue_len_max: 2 << 20, peer_timeout: Duration::from_secs(10), ..limits() };
    run_pair(
        Plan::new(Which::Tcp, bounded),
        |t| async move {
            let _r = t.register_region(ROW, 64 << 10).unwrap();
            t.send_frame(B, b"go".into()).await.unwrap();
            assert_eq!(next_frame(&t).await.1, b"stopped");
            let mut refused = None;
            for i in 0..10_000 {
                match t.push(B, ROW, 0..64 << 10) {
                    Ok(()) => {}
                    Err(TransportError::QueueFull { peer, queued }) => {
                        assert_eq!(peer, B);
                        assert!(queued <= 2 << 20, "queued {queued} past the bound");
                        refused = Some(i);
                        break;
                    }
                    Err(e) => panic!("push {i}: {e}"),
                }
                if i % 16 == 0 {
                    derecho_runtime::yield_now().await;
                }
            }
            assert!(refused.is_some(), "10000 pushes of 64 KiB to a peer that reads nothing were all queued");
        },
        |t| async move {
            let _r = t.register_region(ROW, 64 << 10).unwrap();
            assert_eq!(next_frame(&t).await.1, b"go");
            t.send_frame(A, b"stopped".into()).await.unwrap();
            // Let the frame leave, then stop reading: the whole thread sleeps.
            time::sleep(Duration::from_millis(20)).await;
            std::thread::sleep(Duration::from_secs(2));
        },
    );
}

/// `connect_allowing_missing` goes on without a peer that never appears (reporting it failed),
/// and regions named in the configuration exist before a peer can see this side: pushes into
/// them work at once, with no barrier of their own.
#[test]
fn shm_missing_peer_is_reported_and_configured_regions_are_ready() {
    let ns = unique_ns("missing");
    let side = |me: PeerId, other: PeerId, ns: String| {
        Builder::new()
            .name("shm-side")
            .spawn_thread(move || async move {
                let absent = PeerId(9);
                let mut cfg = ShmConfig::new(me, vec![other, absent], ns);
                cfg.limits = TransportLimits { connect_timeout: Duration::from_millis(1500), ..limits() };
                cfg.ring_len = ShmConfig::ring_len_for(cfg.limits.max_frame_len, 0);
                cfg.regions = vec![(ROW, 64)];
                let t = ShmTransport::connect_allowing_missing(cfg).await.expect("connects without peer 9");
                assert_eq!(t.peers(), [other], "only the peer that appeared");
                let row = t.region(ROW).expect("the configured region");
                assert!(matches!(t.register_region(ROW, 64), Err(TransportError::RegionExists(_))));
                let mine = if me == A { 0..8 } else { 8..16 };
                row.write(mine.start, &[me.0 as u8 + 1; 8]);
                t.push(other, ROW, mine).expect("the peer's region is in place");
                let t = AnyTransport::Shm(t);
                let (peer, reason) = next_failure(&t).await;
                assert_eq!(peer, absent);
                assert!(matches!(reason, PeerFailure::Silent(_)), "{reason:?}");
                let theirs = if me == A { 8..16 } else { 0..8 };
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let mut got = [0u8; 8];
                    row.read(theirs.start, &mut got);
                    if got == [other.0 as u8 + 1; 8] {
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "the peer's push never arrived: {got:?}");
                    time::sleep(Duration::from_millis(1)).await;
                }
                // The peer is alive until it has our "done".
                assert!(t.last_heard(other).is_some());
                assert_eq!(t.last_heard(absent), None);
                // Both have seen each other's push before either closes.
                t.send_frame(other, b"done".into()).await.unwrap();
                assert_eq!(next_frame(&t).await.1, b"done");
                t.close(Duration::ZERO).await;
            })
            .unwrap()
    };
    let a = side(A, B, ns.clone());
    let b = side(B, A, ns.clone());
    a.join().expect("side A");
    b.join().expect("side B");
    assert_eq!(ShmTransport::remove_namespace(Path::new("/dev/shm"), &ns).unwrap(), 0, "files left behind");
}

/// What a killed member leaves in a namespace is removed by `remove_files_of`, and nothing of a
/// live process is.
#[test]
fn shm_files_of_a_killed_member_are_removed() {
    let ns = unique_ns("killed");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let ctl = |pid: u32| {
        let mut ctl = vec![0u8; 4096];
        ctl[0..8].copy_from_slice(b"DRECSHMC");
        ctl[8..12].copy_from_slice(&1u32.to_le_bytes());
        ctl[12..16].copy_from_slice(&1u32.to_le_bytes());
        ctl[16..20].copy_from_slice(&pid.to_le_bytes());
        ctl
    };
    let file = |name: &str| format!("/dev/shm/derecho-{ns}-{name}");
    // As a member makes them: readable and writable by their user only (a file open to others
    // is never trusted to say its process is alive).
    let write_600 = |path: String, bytes: &[u8]| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write_600(file("3.ctl"), &ctl(dead_pid));
    for f in ["1-to-3.ring", "2-to-3.ring", "3.r0", "3.r7"] {
        write_600(file(f), b"x");
    }
    // Another member's files, one of them for peer 13 (a prefix of nothing of 3's).
    write_600(file("13.ctl"), &ctl(std::process::id()));
    write_600(file("3-to-1.ring"), b"x");
    write_600(file("1-to-13.ring"), b"x");
    // A namespace that starts like this one (group `{ns}-v2`...): none of its files are 3's here.
    write_600(file("v2-3.ctl"), &ctl(dead_pid));
    write_600(file("v2-1-to-3.ring"), b"x");
    let dir = Path::new("/dev/shm");
    assert_eq!(ShmTransport::remove_files_of(dir, &ns, PeerId(13)).unwrap(), 0, "peer 13 is alive (our pid)");
    assert_eq!(ShmTransport::remove_files_of(dir, &ns, PeerId(3)).unwrap(), 5);
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("derecho-{ns}-")))
        .collect();
    left.sort();
    let want: Vec<String> = ["1-to-13.ring", "13.ctl", "3-to-1.ring", "v2-1-to-3.ring", "v2-3.ctl"]
        .iter()
        .map(|f| format!("derecho-{ns}-{f}"))
        .collect();
    assert_eq!(left, want);
    assert_eq!(ShmTransport::remove_namespace(dir, &ns).unwrap(), 3, "only this namespace's files");
    assert_eq!(ShmTransport::remove_namespace(dir, &format!("{ns}-v2")).unwrap(), 2);
}
