//! Transport tests across processes: the test is peer 0 on its own executor, the `transport_peer`
//! binary is peer 1 in a child process (see `derecho_tests::peer_process`). Every scenario runs
//! on both transports; each test kills and reaps its child and removes its shm files, even when
//! it fails.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::pin::pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::shm::ShmTransport;
use derecho_runtime::transport::tcp::TcpTransport;
use derecho_runtime::transport::{AnyTransport, FrameError, PeerFailure, Transport, TransportError, TransportEvent};
use derecho_runtime::{Builder, time};
use derecho_tests::peer_process::{
    BAD_HEADER_BYTE, BAD_RECORD_KIND, CHILD, DATA_LEN, DATA_OFF, DONE, MAX_FRAME_COUNT, ORDERED_FRAME_COUNT, PARENT,
    PUSH_COUNT, PUSH_FRAME_EVERY, PeerArgs, READY, ROW, ROW_LEN, SHM_DIR, Scenario, WAIT, Which, YIELD_EVERY,
    expect_frame, first_difference, limits, max_frame, next_event, next_failure, next_frame, ordered_frame, shm_config,
    tcp_config, unused_addr,
};
use futures::future::{Either, select};

// ---- the child process and the fixture ----------------------------------------------------------

/// The `transport_peer` child. Dropping it kills and reaps it if it still runs.
struct PeerProcess {
    label: String,
    child: RefCell<Child>,
    status: Cell<Option<ExitStatus>>,
}

impl PeerProcess {
    fn spawn(args: &PeerArgs) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_transport_peer"))
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args}: {e}"));
        Self { label: args.to_string(), child: RefCell::new(child), status: Cell::new(None) }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.borrow().id() as libc::pid_t
    }

    /// The exit status if the child has exited (reaping it).
    fn try_status(&self) -> Option<ExitStatus> {
        if self.status.get().is_none() {
            let s = self.child.borrow_mut().try_wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.label));
            self.status.set(s);
        }
        self.status.get()
    }

    /// Sends `signal`. The child must not have been reaped (its pid could be reused).
    fn signal(&self, signal: libc::c_int) {
        assert!(self.status.get().is_none(), "{} already exited and was reaped", self.label);
        // SAFETY: kill(2) takes no pointers; the pid is our unreaped child's, so it names it.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}): {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Waits (at most `within`) for the child to exit.
    fn wait_exit(&self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            // std has no wait with a timeout; poll the exit every few milliseconds (bounded).
            assert!(Instant::now() < deadline, "{} did not exit within {within:?}", self.label);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn expect_success(&self) {
        let s = self.wait_exit(WAIT);
        assert!(s.success(), "{} failed with {s} (its stderr is above)", self.label);
    }

    fn expect_killed(&self) {
        let s = self.wait_exit(WAIT);
        assert_eq!(s.signal(), Some(libc::SIGKILL), "{} should have died of SIGKILL, but: {s}", self.label);
    }
}

impl Drop for PeerProcess {
    /// Kills and reaps the child if it still runs. Never panics.
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let status = match self.status.get() {
            Some(s) => Ok(s),
            None => match child.try_wait() {
                Ok(Some(s)) => Ok(s),
                _ => {
                    // Not reaped, so the pid is still our child's. SIGKILL ends a stopped process
                    // too.
                    let _ = child.kill();
                    Err(child.wait())
                }
            },
        };
        if std::thread::panicking() {
            match status {
                Ok(s) => eprintln!("{} had exited with {s}", self.label),
                Err(_) => eprintln!("{} was still running; killed it", self.label),
            }
        }
    }
}

/// A unique shm namespace, whose files are removed on drop.
struct ShmNamespace(String);

impl ShmNamespace {
    fn new(scenario: Scenario) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        Self(format!("xp{}-{}-{}", std::process::id(), scenario.name(), N.fetch_add(1, Ordering::Relaxed)))
    }

    /// Removes the namespace's files; returns how many there were.
    fn remove(&self) -> usize {
        ShmTransport::remove_namespace(Path::new(SHM_DIR), &self.0).expect("read /dev/shm")
    }
}

impl Drop for ShmNamespace {
    fn drop(&mut self) {
        let _ = ShmTransport::remove_namespace(Path::new(SHM_DIR), &self.0);
    }
}

/// One test's parent side: the child, and its listener or shm namespace. The child is killed
/// before the namespace is removed (fields drop in declaration order).
struct Fixture {
    which: Which,
    listener: Option<TcpListener>,
    peer: PeerProcess,
    namespace: ShmNamespace,
}

impl Fixture {
    /// Binds the parent's listener (TCP) or picks a namespace (shm), and starts the child.
    fn start(which: Which, scenario: Scenario) -> Self {
        let namespace = ShmNamespace::new(scenario);
        let listener = (which == Which::Tcp)
            .then(|| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0"));
        let args = PeerArgs {
            which,
            scenario,
            parent_addr: listener.as_ref().map(TcpListener::local_addr),
            namespace: (which == Which::Shm).then(|| namespace.0.clone()),
        };
        let peer = PeerProcess::spawn(&args);
        Self { which, listener, peer, namespace }
    }

    /// Connects peer 0 on a new executor and runs `body`; then closes the transport (letting
    /// queued frames leave).
    fn run<R>(&mut self, body: impl AsyncFnOnce(&AnyTransport, &PeerProcess) -> R) -> R {
        let ex = Builder::new().build().expect("an executor");
        let listener = self.listener.take();
        let (which, namespace, peer) = (self.which, self.namespace.0.as_str(), &self.peer);
        ex.block_on(async move {
            let t = connect_parent(which, listener, namespace, peer).await;
            let r = body(&t, peer).await;
            t.close(WAIT).await;
            r
        })
    }

    /// Asserts that no shm file of this test is left (both sides closed cleanly).
    fn expect_no_files_left(&self) {
        if self.which == Which::Shm {
            let n = self.namespace.remove();
            assert_eq!(n, 0, "{n} shm files of namespace {} left behind", self.namespace.0);
        }
    }
}

/// Connects as peer 0, failing at once (not after the connect timeout) if the child exits first.
async fn connect_parent(
    which: Which,
    listener: Option<TcpListener>,
    namespace: &str,
    peer: &PeerProcess,
) -> AnyTransport {
    let connect = async {
        match which {
            Which::Tcp => {
                let l = listener.expect("a listener for tcp");
                TcpTransport::connect(l, tcp_config(PARENT, CHILD, unused_addr())).await.map(AnyTransport::Tcp)
            }
            Which::Shm => ShmTransport::connect(shm_config(PARENT, CHILD, namespace)).await.map(AnyTransport::Shm),
        }
    };
    let exited = async {
        loop {
            if let Some(s) = peer.try_status() {
                return s;
            }
            time::sleep(Duration::from_millis(20)).await;
        }
    };
    match select(pin!(connect), pin!(exited)).await {
        Either::Left((Ok(t), _)) => t,
        Either::Left((Err(e), _)) => panic!("peer 0 could not connect to {}: {e}", peer.label),
        Either::Right((s, _)) => panic!("{} exited with {s} before the transport connected", peer.label),
    }
}

async fn send_done(t: &AnyTransport) {
    t.send_frame(CHILD, DONE.into()).await.unwrap_or_else(|e| panic!("sending done to the child: {e}"));
}

/// After a failure, sends to the peer fail with `PeerFailed`.
async fn expect_send_refused(t: &AnyTransport) {
    match t.send_frame(CHILD, b"anyone there?".into()).await {
        Err(TransportError::PeerFailed(p)) => assert_eq!(p, CHILD),
        other => panic!("a send to the failed child should fail with PeerFailed, got {other:?}"),
    }
}

// ---- 1. frames in order ---------------------------------------------------------------------------

fn frames_in_order(which: Which) {
    let mut fx = Fixture::start(which, Scenario::FramesInOrder);
    fx.run(async |t, _| {
        for i in 0..ORDERED_FRAME_COUNT {
            let (from, frame) = next_frame(t, &format!("frame {i} of {ORDERED_FRAME_COUNT}")).await;
            assert_eq!(from, CHILD);
            assert_eq!(frame.as_ptr() as usize % 16, 0, "frame {i}: buffer not 16-byte aligned");
            let seq = frame.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            assert_eq!(seq, Some(i), "frame {i}: wrong sequence number (lost, duplicated or reordered)");
            let want = ordered_frame(i);
            if frame[..] != want[..] {
                let at = first_difference(&frame, &want);
                panic!("frame {i}: {} bytes (want {}), first difference at byte {at:?}", frame.len(), want.len());
            }
            if i % YIELD_EVERY == 0 {
                derecho_runtime::yield_now().await;
            }
        }
        send_done(t).await;
    });
    fx.peer.expect_success();
    fx.expect_no_files_left();
}

#[test]
fn tcp_frames_arrive_in_order_across_processes() {
    frames_in_order(Which::Tcp);
}

#[test]
fn shm_frames_arrive_in_order_across_processes() {
    frames_in_order(Which::Shm);
}

// ---- 2. pushes keep data before counter -----------------------------------------------------------

/// The child writes a data block then a counter, pushing each. The data seen here is never older
/// than the counter read before it, and a frame naming a counter never overtakes its push.
fn pushes_keep_data_before_counter(which: Which) {
    let mut fx = Fixture::start(which, Scenario::Pushes);
    fx.run(async |t, _| {
        let r = t.register_region(ROW, ROW_LEN).expect("register the region");
        expect_frame(t, CHILD, READY).await;
        t.send_frame(CHILD, READY.into()).await.expect("send ready");
        let (mut last, mut frames_seen) = (0u64, 0u64);
        let mut data = [0u8; DATA_LEN];
        let started = Instant::now();
        let check_frame = |frames_seen: &mut u64, event: TransportEvent| match event {
            TransportEvent::Frame { from, frame } => {
                assert_eq!(from, CHILD);
                let i = u64::from_le_bytes(frame[..8].try_into().expect("a counter frame"));
                *frames_seen += 1;
                assert_eq!(i, *frames_seen * PUSH_FRAME_EVERY, "counter frames out of order");
                let c = r.load_u64(0);
                assert!(c >= i, "frame {i} arrived before its push (counter reads {c})");
            }
            TransportEvent::PeerFailed { peer, reason } => panic!("{peer} failed during the pushes: {reason:?}"),
        };
        while last < PUSH_COUNT {
            let c = r.load_u64(0);
            r.read(DATA_OFF, &mut data);
            assert!(c >= last, "counter went backwards: {last} -> {c}");
            // On shm the block may be mid-copy (a one-sided write), so only its first word, the
            // stamp, is read as a whole; it must not be older than the counter read before it.
            let stamp = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
            assert!(stamp >= c, "data of push {stamp} seen after counter {c}: a counter overtook its data");
            if which == Which::Tcp && c > 0 {
                // TCP applies a push whole on this thread, so the block is one push's.
                let fill = (stamp % 256) as u8;
                assert!(data[8..].iter().all(|&b| b == fill), "block of push {stamp} torn");
            }
            last = c;
            while let Some(e) = t.try_next_event() {
                check_frame(&mut frames_seen, e);
            }
            assert!(started.elapsed() < 3 * WAIT, "stuck at counter {last} of {PUSH_COUNT}");
            derecho_runtime::yield_now().await;
        }
        while frames_seen < PUSH_COUNT / PUSH_FRAME_EVERY {
            check_frame(&mut frames_seen, next_event(t, "the last counter frames").await);
        }
        send_done(t).await;
    });
    fx.peer.expect_success();
    fx.expect_no_files_left();
}

#[test]
fn tcp_pushes_keep_data_before_counter_across_processes() {
    pushes_keep_data_before_counter(Which::Tcp);
}

#[test]
fn shm_pushes_keep_data_before_counter_across_processes() {
    pushes_keep_data_before_counter(Which::Shm);
}

// ---- 3. frames of the maximum size ----------------------------------------------------------------

/// The child sends frames of exactly `max_frame_len` (after checking that one byte more is
/// refused); every byte arrives.
fn max_size_frames(which: Which) {
    let mut fx = Fixture::start(which, Scenario::MaxFrames);
    fx.run(async |t, _| {
        for k in 0..MAX_FRAME_COUNT {
            let (from, frame) = next_frame(t, &format!("maximum-size frame {k}")).await;
            assert_eq!(from, CHILD);
            assert_eq!(frame.as_ptr() as usize % 16, 0, "frame {k}: buffer not 16-byte aligned");
            assert_eq!(frame.len(), limits().max_frame_len, "frame {k}: wrong length");
            let want = max_frame(k);
            if frame[..] != want[..] {
                panic!("maximum-size frame {k} corrupted from byte {:?}", first_difference(&frame, &want));
            }
            derecho_runtime::yield_now().await;
        }
        send_done(t).await;
    });
    fx.peer.expect_success();
    fx.expect_no_files_left();
}

#[test]
fn tcp_max_size_frames_pass_and_larger_are_refused_across_processes() {
    max_size_frames(Which::Tcp);
}

#[test]
fn shm_max_size_frames_pass_and_larger_are_refused_across_processes() {
    max_size_frames(Which::Shm);
}

// ---- 4. a killed peer -----------------------------------------------------------------------------

/// `kill -9` of the child is reported as a failure of peer 1, and sends to it then fail.
fn killed_peer_is_reported(which: Which) {
    let mut fx = Fixture::start(which, Scenario::Killed);
    fx.run(async |t, peer| {
        expect_frame(t, CHILD, READY).await;
        // kill -9 without reaping: on shm the dead child stays a zombie, which `kill(pid, 0)`
        // still finds, so only the transport's pidfd can tell that it exited.
        peer.signal(libc::SIGKILL);
        let (p, reason) = next_failure(t, "the failure of the killed child").await;
        assert_eq!(p, CHILD);
        match (which, &reason) {
            (Which::Tcp, PeerFailure::Closed | PeerFailure::Io(_)) | (Which::Shm, PeerFailure::ProcessExited) => {}
            _ => panic!("{which:?}: a killed peer reported as {reason:?}"),
        }
        expect_send_refused(t).await;
    });
    fx.peer.expect_killed();
}

#[test]
fn tcp_killed_peer_is_reported_across_processes() {
    killed_peer_is_reported(Which::Tcp);
}

#[test]
fn shm_killed_peer_is_reported_across_processes() {
    killed_peer_is_reported(Which::Shm);
}

// ---- 5. a stopped peer ----------------------------------------------------------------------------

/// A child stopped with SIGSTOP (alive, silent) is reported `Silent` after the peer timeout.
fn stopped_peer_is_reported_silent(which: Which) {
    let mut fx = Fixture::start(which, Scenario::Stopped);
    fx.run(async |t, peer| {
        expect_frame(t, CHILD, READY).await;
        peer.signal(libc::SIGSTOP);
        let (p, reason) = next_failure(t, "the stopped child to be declared silent").await;
        assert_eq!(p, CHILD);
        match reason {
            PeerFailure::Silent(d) => assert!(d >= limits().peer_timeout, "declared silent after {d:?}"),
            other => panic!("{which:?}: a stopped peer reported as {other:?}, not Silent"),
        }
        expect_send_refused(t).await;
        peer.signal(libc::SIGCONT);
        peer.signal(libc::SIGKILL);
    });
    fx.peer.expect_killed();
}

#[test]
fn tcp_stopped_peer_is_reported_silent_across_processes() {
    stopped_peer_is_reported_silent(Which::Tcp);
}

#[test]
fn shm_stopped_peer_is_reported_silent_across_processes() {
    stopped_peer_is_reported_silent(Which::Shm);
}

// ---- 6. a peer that breaks the wire rules ---------------------------------------------------------

/// TCP: after the handshake the child writes a header with a bad magic; the parent reports a
/// protocol violation and closes the connection, which the child checks (it exits 0 on EOF).
#[test]
fn tcp_corrupted_header_drops_the_peer_across_processes() {
    let mut fx = Fixture::start(Which::Tcp, Scenario::Corrupt);
    fx.run(async |t, _| {
        let (p, reason) = next_failure(t, "a protocol violation").await;
        assert_eq!(p, CHILD);
        let bad = u32::from_le_bytes([BAD_HEADER_BYTE; 4]);
        assert!(
            matches!(reason, PeerFailure::Protocol(FrameError::BadMagic(m)) if m == bad),
            "expected BadMagic({bad:#x}), got {reason:?}"
        );
        expect_send_refused(t).await;
    });
    fx.peer.expect_success();
}

/// Shm: the child publishes a record of an unknown kind in its ring to the parent; the parent
/// reports a protocol violation. The child exits 0 once the parent has closed.
#[test]
fn shm_corrupted_ring_record_drops_the_peer_across_processes() {
    let mut fx = Fixture::start(Which::Shm, Scenario::Corrupt);
    fx.run(async |t, _| {
        let (p, reason) = next_failure(t, "a protocol violation").await;
        assert_eq!(p, CHILD);
        assert!(
            matches!(reason, PeerFailure::Protocol(FrameError::BadRecord { pos: 0, len }) if len == 5),
            "expected BadRecord of kind {BAD_RECORD_KIND} at 0, got {reason:?}"
        );
        expect_send_refused(t).await;
    });
    fx.peer.expect_success();
    fx.expect_no_files_left();
}
