//! The TCP transport: a full mesh of io_uring connections among a static set of peers.
//!
//! Every pair of peers shares one connection; the peer with the larger id connects to the smaller
//! one and both exchange a `Hello` (wire version, peer id, group tag) before anything else.
//! Pushes travel as `Push` frames applied by the receiver to its replica of the region, in order
//! with the data frames of the same connection.
//!
//! Sending is batched: frames and pushes queued while a `sendmsg` is in flight leave together in
//! the next one (up to 1024 pieces). Receiving reads into a 256 KiB aligned buffer and parses
//! every complete frame in it; a frame larger than that buffer is received straight into its own
//! allocation, after its header was validated against `max_frame_len`.
//!
//! `handshake` holds the `Hello` exchange both ends use; `acceptor` the listener a member with
//! membership runs (several transports on one port, one-shot messages, client sessions, and the
//! bounds that keep outsiders' connections cheap).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::frame::{self, HEADER_LEN, Header, Kind};
use super::region::Region;
use super::{
    EventQueue, FrameError, Payload, PeerFailure, PeerId, RegionId, Transport, TransportError, TransportEvent,
    TransportLimits, check_range,
};
use crate::buf::{AlignedBuf, BufPool};
use crate::executor::{HookId, JoinHandle, Park, PollHook, add_poll_hook, remove_poll_hook, spawn};
use crate::net::{TcpListener, TcpStream};
use crate::time;
use crate::tls::TlsIdentity;

mod acceptor;
mod handshake;

pub use acceptor::{MESSAGE_BYTES_MAX, MESSAGES_PER_SOURCE, TcpAcceptor, TcpSession, send_message};
use handshake::{Handshaken, accept_hello, hello, read_hello, refused};

/// Size of each connection's receive buffer.
const RECV_BUF_LEN: usize = 256 << 10;
/// Pieces (headers and bodies) in one `sendmsg`.
const SEND_BATCH_MAX: usize = 1024;
/// Frames with bodies up to this long are copied behind their header into one buffer.
const SMALL_FRAME_LEN: usize = 4 << 10;
/// Bodies at least this long that are not yet complete in the receive buffer are received
/// straight into their own buffer (one copy fewer).
const RECV_DIRECT_MIN: usize = 16 << 10;

/// Configuration of a [`TcpTransport`].
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// This side's id.
    pub me: PeerId,
    /// Every other peer and its address.
    pub peers: Vec<(PeerId, SocketAddr)>,
    /// Peers only connect to peers that present the same tag (a guard against mixing two groups
    /// on one set of ports). Default 0.
    pub group_tag: u32,
    /// Bodies up to this many bytes are covered by the frame's CRC32C; longer ones only have
    /// their header checked. Default 64 KiB: every push and control frame of the protocol is
    /// covered, while bulk payloads skip two passes over their bytes (CRC32C runs at about
    /// 20 GB/s here, which costs a 1 MiB frame about 50 µs on each side: 0.78 of the raw socket's
    /// streaming rate instead of 1.1 in the benchmark). They still have TCP's checksum and the
    /// receiver's validation of their contents. `usize::MAX` covers every body, 0 none.
    pub checksum_body_len_max: usize,
    /// Limits and timings.
    pub limits: TransportLimits,
    /// Mutual TLS on every connection, each peer's certificate naming its id
    /// ([`crate::tls::node_name`]); `None`: plaintext. Default `None`.
    pub tls: Option<TlsIdentity>,
}

impl TcpConfig {
    /// A configuration with default limits and group tag, without TLS.
    pub fn new(me: PeerId, peers: Vec<(PeerId, SocketAddr)>) -> Self {
        Self { me, peers, group_tag: 0, checksum_body_len_max: 64 << 10, limits: TransportLimits::default(), tls: None }
    }

    fn validate(&self) -> Result<(), TransportError> {
        self.limits.validate()?;
        let mut seen = std::collections::BTreeSet::new();
        for (p, _) in &self.peers {
            if *p == self.me {
                return Err(TransportError::Config(format!("peers: {p} is this side's own id (me)")));
            }
            if !seen.insert(*p) {
                return Err(TransportError::Config(format!("peers: {p} is listed twice")));
            }
        }
        Ok(())
    }
}

struct Conn {
    peer: PeerId,
    stream: TcpStream,
    out: RefCell<VecDeque<Payload>>,
    out_len: Cell<usize>,
    writer: RefCell<Option<Waker>>,
    space_waiters: RefCell<Vec<Waker>>,
    failed: Cell<bool>,
    last_recv: Cell<Instant>,
    last_send: Cell<Instant>,
    /// A receive handed to the spin hook (see [`SpinHook`]).
    spin_recv: RefCell<Option<SpinRecv>>,
    /// The reader waits for room in the event queue (not reading is then this side's doing).
    paused: Cell<bool>,
}

/// A receive that the [`SpinHook`] performs with non-blocking `recv` calls while the executor
/// spins.
struct SpinRecv {
    buf: AlignedBuf,
    range: Range<usize>,
    /// `Some(Ok(Some(n)))` bytes arrived, `Some(Ok(None))` the executor is about to park and the
    /// reader must arm an io_uring receive, `Some(Err(e))` the socket failed.
    result: Option<io::Result<Option<usize>>>,
    waker: Option<Waker>,
}

impl Conn {
    fn enqueue(&self, pieces: impl IntoIterator<Item = Payload>) {
        let mut out = self.out.borrow_mut();
        for p in pieces {
            self.out_len.set(self.out_len.get() + p.len());
            out.push_back(p);
        }
        drop(out);
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    fn wake_all(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
        for w in self.space_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

struct Inner {
    me: PeerId,
    peer_ids: Vec<PeerId>,
    limits: TransportLimits,
    conns: BTreeMap<PeerId, Rc<Conn>>,
    regions: RefCell<BTreeMap<RegionId, Rc<Region>>>,
    /// Per (region, peer): the only range that peer's pushes may write.
    push_windows: RefCell<BTreeMap<(RegionId, PeerId), Range<usize>>>,
    events: EventQueue,
    /// Set when [`TcpTransport::close`] begins: no more heartbeats.
    closing: Cell<bool>,
    closed: Cell<bool>,
    pool: BufPool,
    checksum_body_len_max: usize,
}

impl Inner {
    fn fail(&self, conn: &Conn, reason: PeerFailure) {
        if conn.failed.replace(true) {
            return;
        }
        tracing::debug!(me = %self.me, peer = %conn.peer, %reason, "peer failed");
        conn.stream.shutdown();
        conn.wake_all();
        if !self.closed.get() {
            self.events.push(TransportEvent::PeerFailed { peer: conn.peer, reason });
        }
    }

    fn conn(&self, peer: PeerId) -> Result<&Rc<Conn>, TransportError> {
        if self.closed.get() {
            return Err(TransportError::Closed);
        }
        let c = self.conns.get(&peer).ok_or(TransportError::UnknownPeer(peer))?;
        if c.failed.get() {
            return Err(TransportError::PeerFailed(peer));
        }
        Ok(c)
    }
}

/// A TCP mesh among a static set of peers. See the module docs.
///
/// [`TcpTransport::close`] lets queued frames leave before the connections close; dropping the
/// transport closes them at once and discards what is still queued.
///
/// # Examples
///
/// ```
/// use derecho_runtime::transport::tcp::{TcpConfig, TcpTransport};
/// use derecho_runtime::transport::{PeerId, Transport, TransportEvent};
/// use derecho_runtime::net::TcpListener;
///
/// let ex = derecho_runtime::Builder::new().build()?;
/// ex.block_on(async {
///     let la = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
///     let lb = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
///     let (a_addr, b_addr) = (la.local_addr(), lb.local_addr());
///     let a = derecho_runtime::spawn(TcpTransport::connect(la, TcpConfig::new(PeerId(0), vec![(PeerId(1), b_addr)])));
///     let b = TcpTransport::connect(lb, TcpConfig::new(PeerId(1), vec![(PeerId(0), a_addr)])).await.unwrap();
///     let a = a.await.unwrap();
///     a.send_frame(PeerId(1), b"hi".into()).await.unwrap();
///     match b.next_event().await {
///         TransportEvent::Frame { from, frame } => assert_eq!((from, &frame[..]), (PeerId(0), &b"hi"[..])),
///         other => panic!("{other:?}"),
///     }
/// });
/// # Ok::<(), derecho_runtime::RuntimeError>(())
/// ```
pub struct TcpTransport {
    inner: Rc<Inner>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    hook: Cell<Option<HookId>>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport").field("me", &self.inner.me).field("peers", &self.inner.peer_ids).finish()
    }
}

impl TcpTransport {
    /// Connects the mesh: accepts from peers with a larger id on `listener`, connects to peers
    /// with a smaller id (retrying while they are not yet listening), exchanges `Hello`s, and
    /// returns once every peer is connected.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for an invalid configuration, [`TransportError::ConnectTimeout`]
    /// naming the peers missing after `connect_timeout`, [`TransportError::Handshake`] when a
    /// peer we dialled answers wrongly.
    pub async fn connect(listener: TcpListener, config: TcpConfig) -> Result<Self, TransportError> {
        config.validate()?;
        let me = config.me;
        let limits = config.limits.clone();
        let tag = config.group_tag;
        let deadline = Instant::now() + limits.connect_timeout;
        let expected_accepts: Vec<PeerId> = config.peers.iter().map(|(p, _)| *p).filter(|p| *p > me).collect();
        let dials: Vec<(PeerId, SocketAddr)> = config.peers.iter().copied().filter(|(p, _)| *p < me).collect();

        let accepted: Rc<RefCell<BTreeMap<PeerId, Handshaken>>> = Rc::new(RefCell::new(BTreeMap::new()));
        let acceptor = {
            let tls = config.tls.clone();
            let accepted = accepted.clone();
            let expected = expected_accepts.clone();
            let max = limits.max_frame_len;
            spawn(async move {
                while accepted.borrow().len() < expected.len() {
                    let (stream, addr) = match listener.accept().await {
                        Ok(v) => v,
                        Err(e) => {
                            // Out of descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let Some((stream, peer, their_tag, buf, filled)) =
                        accept_hello(stream, addr, max, tls.as_ref()).await
                    else {
                        continue;
                    };
                    if !stream.peer_is_node(peer.0) {
                        refused(&addr, &format!("its certificate does not name {peer}, whom its hello claims to be"));
                        continue;
                    }
                    if their_tag != tag {
                        tracing::warn!(%addr, %peer, their_tag, tag, "refused a connection from another group");
                        continue;
                    }
                    if !expected.contains(&peer) || accepted.borrow().contains_key(&peer) {
                        tracing::warn!(%addr, %peer, "refused a connection from an unexpected or duplicate peer");
                        continue;
                    }
                    if stream.send_all(hello(me, tag).to_vec()).await.is_err() {
                        continue;
                    }
                    accepted.borrow_mut().insert(peer, Handshaken { peer, stream, buf, filled });
                }
            })
        };

        let mut dialled = Vec::new();
        let mut dial_error = None;
        for (peer, addr) in dials {
            match Self::dial(me, peer, addr, tag, limits.max_frame_len, deadline, config.tls.clone()).await {
                Ok(h) => dialled.push(h),
                Err(TransportError::ConnectTimeout { .. }) => {}
                Err(e) => {
                    dial_error = Some(e);
                    break;
                }
            }
        }
        let mut acceptor = acceptor;
        if dial_error.is_none() {
            let _ = time::timeout(deadline.saturating_duration_since(Instant::now()), &mut acceptor).await;
        }
        acceptor.abort();
        if let Some(e) = dial_error {
            return Err(e);
        }
        let mut all: BTreeMap<PeerId, Handshaken> = std::mem::take(&mut *accepted.borrow_mut());
        for h in dialled {
            all.insert(h.peer, h);
        }
        let missing: Vec<PeerId> = config.peers.iter().map(|(p, _)| *p).filter(|p| !all.contains_key(p)).collect();
        if !missing.is_empty() {
            return Err(TransportError::ConnectTimeout { after: limits.connect_timeout, missing });
        }
        Ok(Self::start(me, limits, config.checksum_body_len_max, all))
    }

    /// As [`TcpTransport::connect`], with the connections from peers with a larger id taken
    /// from `acceptor` (routed there by this configuration's group tag). With `missing_ok`, the
    /// peers not connected by the deadline do not fail the call: each is reported at once as
    /// [`TransportEvent::PeerFailed`] (a membership driver then suspects it) and the transport
    /// runs with the others.
    ///
    /// # Errors
    ///
    /// As [`TcpTransport::connect`] (a timeout only without `missing_ok`).
    pub async fn connect_via(
        acceptor: &TcpAcceptor,
        config: TcpConfig,
        missing_ok: bool,
    ) -> Result<Self, TransportError> {
        config.validate()?;
        let me = config.me;
        let limits = config.limits.clone();
        let tag = config.group_tag;
        let deadline = Instant::now() + limits.connect_timeout;
        let expected: Vec<PeerId> = config.peers.iter().map(|(p, _)| *p).filter(|p| *p > me).collect();
        let dials: Vec<(PeerId, SocketAddr)> = config.peers.iter().copied().filter(|(p, _)| *p < me).collect();
        let mut dialled: BTreeMap<PeerId, Handshaken> = BTreeMap::new();
        {
            // Dial every smaller peer concurrently, while the acceptor collects the larger ones.
            let mut tasks = Vec::new();
            for (peer, addr) in dials {
                let max = limits.max_frame_len;
                let tls = config.tls.clone();
                tasks.push(spawn(async move { Self::dial(me, peer, addr, tag, max, deadline, tls).await }));
            }
            let accepted = acceptor.claim(tag, &expected, deadline).await;
            dialled.extend(accepted);
            for t in tasks {
                match t.await {
                    Ok(h) => {
                        dialled.insert(h.peer, h);
                    }
                    Err(TransportError::ConnectTimeout { .. }) => {}
                    Err(TransportError::Handshake { .. }) if missing_ok => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let missing: Vec<PeerId> = config.peers.iter().map(|(p, _)| *p).filter(|p| !dialled.contains_key(p)).collect();
        if !missing.is_empty() && !missing_ok {
            return Err(TransportError::ConnectTimeout { after: limits.connect_timeout, missing });
        }
        let t = Self::start(me, limits.clone(), config.checksum_body_len_max, dialled);
        for peer in missing {
            t.inner
                .events
                .push(TransportEvent::PeerFailed { peer, reason: PeerFailure::Silent(limits.connect_timeout) });
        }
        Ok(t)
    }

    async fn dial(
        me: PeerId,
        peer: PeerId,
        addr: SocketAddr,
        tag: u32,
        max: usize,
        deadline: Instant,
        tls: Option<TlsIdentity>,
    ) -> Result<Handshaken, TransportError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::ConnectTimeout { after: Duration::ZERO, missing: vec![peer] });
            }
            let stream = match time::timeout(left, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {
                    time::sleep(Duration::from_millis(10).min(left)).await;
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(TransportError::Io { context: format!("connect to {peer} at {addr}"), source: e });
                }
                Err(_) => continue,
            };
            let handshake = |reason: String| TransportError::Handshake { addr: addr.to_string(), reason };
            let stream = match &tls {
                None => stream,
                Some(id) => match time::timeout(left.max(Duration::from_millis(1)), stream.connect_tls(id)).await {
                    Ok(Ok(s)) if s.peer_is_node(peer.0) => s,
                    Ok(Ok(_)) => return Err(handshake(format!("its certificate does not name {peer}"))),
                    Ok(Err(e)) => return Err(handshake(format!("TLS handshake failed: {e}"))),
                    Err(_) => {
                        return Err(TransportError::ConnectTimeout { after: Duration::ZERO, missing: vec![peer] });
                    }
                },
            };
            if stream.send_all(hello(me, tag).to_vec()).await.is_err() {
                time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let r = time::timeout(
                left.max(Duration::from_millis(1)),
                read_hello(&stream, AlignedBuf::zeroed(RECV_BUF_LEN), max, tag),
            )
            .await;
            return match r {
                Ok(Ok((got, buf, filled))) if got == peer => Ok(Handshaken { peer, stream, buf, filled }),
                Ok(Ok((got, ..))) => Err(handshake(format!("expected {peer}, the listener is {got}"))),
                // The listener refused us (closed the connection): it may not know us yet.
                Ok(Err(reason)) => Err(handshake(reason)),
                Err(_) => Err(TransportError::ConnectTimeout { after: Duration::ZERO, missing: vec![peer] }),
            };
        }
    }

    fn start(
        me: PeerId,
        limits: TransportLimits,
        checksum_body_len_max: usize,
        connected: BTreeMap<PeerId, Handshaken>,
    ) -> Self {
        let now = Instant::now();
        let mut conns = BTreeMap::new();
        let mut pending = Vec::new();
        for (peer, mut h) in connected {
            let conn = Rc::new(Conn {
                peer,
                stream: h.stream,
                out: RefCell::new(VecDeque::new()),
                out_len: Cell::new(0),
                writer: RefCell::new(None),
                space_waiters: RefCell::new(Vec::new()),
                failed: Cell::new(false),
                last_recv: Cell::new(now),
                last_send: Cell::new(now),
                spin_recv: RefCell::new(None),
                paused: Cell::new(false),
            });
            conns.insert(peer, conn.clone());
            // A connection accepted with a small buffer for its hello gets a full one.
            let buf = if h.buf.capacity() < RECV_BUF_LEN {
                let mut full = AlignedBuf::zeroed(RECV_BUF_LEN);
                full.spare_full()[..h.filled].copy_from_slice(&h.buf.spare_full()[..h.filled]);
                full
            } else {
                h.buf
            };
            pending.push((conn, buf, h.filled));
        }
        let inner = Rc::new(Inner {
            me,
            peer_ids: conns.keys().copied().collect(),
            conns,
            regions: RefCell::new(BTreeMap::new()),
            push_windows: RefCell::new(BTreeMap::new()),
            events: EventQueue::default(),
            closing: Cell::new(false),
            closed: Cell::new(false),
            pool: BufPool::new(limits.max_frame_len.max(8 << 20)),
            checksum_body_len_max,
            limits,
        });
        let mut tasks = Vec::new();
        for (conn, buf, filled) in pending {
            tasks.push(spawn(writer(inner.clone(), conn.clone())));
            tasks.push(spawn(reader(inner.clone(), conn, buf, filled)));
        }
        tasks.push(spawn(heartbeat(inner.clone())));
        let hook = add_poll_hook(SpinHook { inner: Rc::downgrade(&inner) });
        Self { inner, tasks: RefCell::new(tasks), hook: Cell::new(Some(hook)) }
    }

    /// When something last arrived from `peer` (a frame, a push or a heartbeat); `None` for an
    /// unknown or failed peer.
    pub fn last_heard(&self, peer: PeerId) -> Option<Instant> {
        self.inner.conns.get(&peer).filter(|c| !c.failed.get()).map(|c| c.last_recv.get())
    }

    /// Says goodbye to every live peer, waits (at most `linger`) until each peer has read
    /// everything up to the goodbye and closed its end, and closes every connection. Peers see
    /// [`PeerFailure::Closed`] after every frame sent before. Frames that arrive meanwhile are
    /// dropped.
    ///
    /// Waiting for the peer's end matters: closing a socket that still holds unread bytes (a
    /// peer's heartbeat, say) sends a reset, the kernel drops what it had not yet sent, and the
    /// peer learns of the reset before it has read everything.
    pub async fn close(&self, linger: Duration) {
        self.inner.closing.set(true);
        self.inner.events.drop_frames_from_now();
        for c in self.inner.conns.values() {
            if !c.failed.get() {
                c.enqueue([Payload::from(frame::Header::encode(Kind::Goodbye, 0, &[]).to_vec())]);
            }
        }
        // Each connection ends on its own (one whose peer reads slowly holds up no other):
        // what is queued leaves, then (with TLS) a close_notify, then the end of stream.
        let mut ending: Vec<JoinHandle<()>> = self
            .inner
            .conns
            .values()
            .map(|c| {
                let c = c.clone();
                spawn(async move {
                    while c.out_len.get() > 0 && !c.failed.get() {
                        time::sleep(Duration::from_micros(200)).await;
                    }
                    if !c.failed.get() {
                        let _ = c.stream.close_write().await;
                    }
                })
            })
            .collect();
        let _ = time::timeout(linger, async {
            for h in &mut ending {
                h.await;
            }
            for c in self.inner.conns.values() {
                while !c.failed.get() {
                    time::sleep(Duration::from_micros(200)).await;
                }
            }
        })
        .await;
        for h in ending {
            h.abort();
        }
        self.shutdown();
    }

    fn shutdown(&self) {
        if self.inner.closed.replace(true) {
            return;
        }
        for c in self.inner.conns.values() {
            c.failed.set(true);
            c.stream.shutdown();
            c.wake_all();
        }
        if let Some(h) = self.hook.take() {
            remove_poll_hook(h);
        }
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// Confines `peer`'s pushes into `region` to `range` (in Derecho, the peer's own row of the
    /// table): a push outside it is a protocol violation that drops the peer (PROTOCOLS §7,
    /// "sender = authenticated peer").
    pub fn confine_pushes(&self, region: RegionId, peer: PeerId, range: Range<usize>) {
        self.inner.push_windows.borrow_mut().insert((region, peer), range);
    }

    /// The frame carrying `range` of `region`: header, then the bytes read from the region.
    fn push_frame(&self, region: RegionId, range: Range<usize>) -> Result<Payload, TransportError> {
        let r = self.region(region).ok_or(TransportError::UnknownRegion(region))?;
        check_range(region, &range, r.len())?;
        let len = range.len();
        if len > self.inner.limits.max_frame_len {
            return Err(TransportError::FrameTooLong { len, max: self.inner.limits.max_frame_len });
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + len);
        bytes.extend_from_slice(&[0; HEADER_LEN]);
        r.append_to(range.start, len, &mut bytes);
        let aux = frame::push_aux(region.0, range.start as u32);
        let h = Header::encode_with(Kind::Push, aux, &bytes[HEADER_LEN..], len <= self.inner.checksum_body_len_max);
        bytes[..HEADER_LEN].copy_from_slice(&h);
        Ok(Payload::from(bytes))
    }

    /// Bytes queued for `peer` and not yet handed to the kernel.
    pub fn queued_len(&self, peer: PeerId) -> usize {
        self.inner.conns.get(&peer).map_or(0, |c| c.out_len.get())
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for TcpTransport {
    fn me(&self) -> PeerId {
        self.inner.me
    }

    fn peers(&self) -> &[PeerId] {
        &self.inner.peer_ids
    }

    fn max_frame_len(&self) -> usize {
        self.inner.limits.max_frame_len
    }

    fn register_region(&self, id: RegionId, len: usize) -> Result<Rc<Region>, TransportError> {
        if len > u32::MAX as usize {
            return Err(TransportError::Config(format!("region {id:?}: length {len} above 4 GiB")));
        }
        let mut regions = self.inner.regions.borrow_mut();
        if regions.contains_key(&id) {
            return Err(TransportError::RegionExists(id));
        }
        let r = Rc::new(Region::heap(id, len));
        regions.insert(id, r.clone());
        Ok(r)
    }

    fn region(&self, id: RegionId) -> Option<Rc<Region>> {
        self.inner.regions.borrow().get(&id).cloned()
    }

    fn push(&self, to: PeerId, region: RegionId, range: Range<usize>) -> Result<(), TransportError> {
        let mut errors = Vec::new();
        self.push_many(&[to], region, range, &mut errors);
        errors.pop().map_or(Ok(()), |(_, e)| Err(e))
    }

    fn push_many(
        &self,
        to: &[PeerId],
        region: RegionId,
        range: Range<usize>,
        errors: &mut Vec<(PeerId, TransportError)>,
    ) {
        let frame = match self.push_frame(region, range) {
            Ok(f) => f,
            Err(e) => {
                // About the region, not a peer: reported once.
                if let Some(&first) = to.first() {
                    errors.push((first, e));
                }
                return;
            }
        };
        for &peer in to {
            let conn = match self.inner.conn(peer) {
                Ok(c) => c,
                Err(e) => {
                    errors.push((peer, e));
                    continue;
                }
            };
            if conn.out_len.get() + frame.len() > self.inner.limits.send_queue_len_max {
                // Pushes do not wait (the protocol's rules run synchronously); a peer that stopped
                // reading must not make this side's memory grow without bound either.
                errors.push((peer, TransportError::QueueFull { peer, queued: conn.out_len.get() }));
                continue;
            }
            // One frame for every peer: the bytes are read and checksummed once.
            conn.enqueue([frame.clone()]);
        }
    }

    async fn send_frame(&self, to: PeerId, body: Payload) -> Result<(), TransportError> {
        let max = self.inner.limits.max_frame_len;
        if body.len() > max {
            return Err(TransportError::FrameTooLong { len: body.len(), max });
        }
        let conn = self.inner.conn(to)?.clone();
        let limit = self.inner.limits.send_queue_len_max;
        poll_fn(|cx| {
            if conn.failed.get() {
                return Poll::Ready(Err(TransportError::PeerFailed(to)));
            }
            if conn.out_len.get() + body.len() <= limit || conn.out_len.get() == 0 {
                return crate::executor::poll_coop(cx).map(Ok);
            }
            conn.space_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        let h = Header::encode_with(Kind::Data, 0, body.as_bytes(), body.len() <= self.inner.checksum_body_len_max);
        if body.len() <= SMALL_FRAME_LEN {
            // One contiguous buffer: a lone small frame then leaves in one plain `send`.
            let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
            bytes.extend_from_slice(&h);
            bytes.extend_from_slice(body.as_bytes());
            conn.enqueue([Payload::from(bytes)]);
        } else {
            conn.enqueue([Payload::from(h.to_vec()), body]);
        }
        Ok(())
    }

    async fn next_event(&self) -> TransportEvent {
        self.inner.events.pop().await
    }

    fn try_next_event(&self) -> Option<TransportEvent> {
        self.inner.events.try_pop()
    }
}

async fn writer(inner: Rc<Inner>, conn: Rc<Conn>) {
    let mut batch: Vec<Payload> = Vec::with_capacity(SEND_BATCH_MAX);
    loop {
        poll_fn(|cx| {
            if conn.failed.get() || !conn.out.borrow().is_empty() {
                Poll::Ready(())
            } else {
                *conn.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if conn.failed.get() {
            return;
        }
        {
            let mut out = conn.out.borrow_mut();
            let n = out.len().min(SEND_BATCH_MAX);
            batch.extend(out.drain(..n));
        }
        let total: usize = batch.iter().map(Payload::len).sum();
        let mut sent = 0;
        while sent < total {
            let res = if batch.len() == 1 {
                let (res, b) = conn.stream.send_one(batch.pop().expect("one piece"), sent).await;
                batch.push(b);
                res
            } else {
                let (res, b) = conn.stream.send_vectored(std::mem::take(&mut batch), sent).await;
                batch = b;
                res
            };
            match res {
                Ok(0) => {
                    inner.fail(&conn, PeerFailure::Io(io::ErrorKind::WriteZero.into()));
                    return;
                }
                Ok(n) => sent += n,
                Err(e) => {
                    inner.fail(&conn, PeerFailure::Io(e));
                    return;
                }
            }
        }
        batch.clear();
        conn.out_len.set(conn.out_len.get() - total);
        conn.last_send.set(Instant::now());
        for w in conn.space_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Receives into `buf[range]`. On a spinning executor the [`SpinHook`] looks at the socket with
/// a non-blocking `recv` on every loop iteration (a system call each, as a busy-polling socket
/// program does); that is cheaper per message than io_uring's poll arming and completion. When
/// the executor is about to park, the receive is armed in io_uring instead.
async fn receive(conn: &Conn, buf: AlignedBuf, range: Range<usize>, drained: bool) -> (io::Result<usize>, AlignedBuf) {
    if crate::executor::spin_budget().is_zero() {
        return conn.stream.recv_range(buf, range, drained).await;
    }
    *conn.spin_recv.borrow_mut() = Some(SpinRecv { buf, range: range.clone(), result: None, waker: None });
    let (result, buf) = poll_fn(|cx| {
        let mut slot = conn.spin_recv.borrow_mut();
        let s = slot.as_mut().expect("spin receive slot");
        if s.result.is_none() && conn.failed.get() {
            s.result = Some(Err(io::ErrorKind::NotConnected.into()));
        }
        match s.result.take() {
            Some(r) => {
                let s = slot.take().expect("spin receive slot");
                Poll::Ready((r, s.buf))
            }
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    match result {
        Ok(Some(n)) => (Ok(n), buf),
        Ok(None) => conn.stream.recv_range(buf, range, true).await,
        Err(e) => (Err(e), buf),
    }
}

/// Performs the receives of a spinning executor's connections (see [`receive`]).
struct SpinHook {
    inner: std::rc::Weak<Inner>,
}

impl PollHook for SpinHook {
    fn poll(&mut self) -> usize {
        let Some(inner) = self.inner.upgrade() else { return 0 };
        let mut progress = 0;
        for conn in inner.conns.values() {
            let mut slot = conn.spin_recv.borrow_mut();
            let Some(s) = slot.as_mut().filter(|s| s.result.is_none()) else { continue };
            let range = s.range.clone();
            match conn.stream.try_recv_now(&mut s.buf, range) {
                Ok(None) => continue,
                Ok(Some(n)) => s.result = Some(Ok(Some(n))),
                Err(e) => s.result = Some(Err(e)),
            }
            progress += 1;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        progress
    }

    fn prepare_park(&mut self, _park: &mut Park<'_>) -> bool {
        let Some(inner) = self.inner.upgrade() else { return true };
        let mut handed_back = false;
        for conn in inner.conns.values() {
            let mut slot = conn.spin_recv.borrow_mut();
            let Some(s) = slot.as_mut().filter(|s| s.result.is_none()) else { continue };
            // The executor is going to sleep: the reader must arm an io_uring receive first,
            // or nothing would wake it when bytes arrive.
            s.result = Some(Ok(None));
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            handed_back = true;
        }
        !handed_back
    }
}

/// Receives until `buf[..want]` is full, and never past `want`: the bytes after it belong to the
/// next frame, and `buf` (from the pool) may be larger than `want`.
async fn fill_to(
    conn: &Conn,
    mut buf: AlignedBuf,
    mut filled: usize,
    want: usize,
) -> Result<(AlignedBuf, usize), PeerFailure> {
    while filled < want {
        let (res, b) = conn.stream.recv_range(buf, filled..want, false).await;
        buf = b;
        match res {
            Ok(0) => return Err(PeerFailure::Closed),
            Ok(n) => {
                filled += n;
                conn.last_recv.set(Instant::now());
            }
            Err(e) => return Err(PeerFailure::Io(e)),
        }
    }
    Ok((buf, filled))
}

async fn reader(inner: Rc<Inner>, conn: Rc<Conn>, buf: AlignedBuf, filled: usize) {
    if let Err(reason) = read_loop(&inner, &conn, buf, filled).await {
        inner.fail(&conn, reason);
    }
}

async fn read_loop(inner: &Inner, conn: &Conn, mut buf: AlignedBuf, mut filled: usize) -> Result<(), PeerFailure> {
    // The handshake's Hello is at the start of the buffer.
    let mut start = HEADER_LEN;
    let max = inner.limits.max_frame_len;
    let mut drained = false;
    loop {
        // Parse every complete frame in the buffer.
        while filled - start >= HEADER_LEN {
            if !inner.events.has_room() {
                // Paused by this side's own backpressure: the peer is not silent meanwhile.
                conn.paused.set(true);
                inner.events.wait_room().await;
                conn.paused.set(false);
                conn.last_recv.set(Instant::now());
                if conn.failed.get() {
                    return Ok(());
                }
            }
            let raw: [u8; HEADER_LEN] = buf.spare_full()[start..start + HEADER_LEN].try_into().expect("header");
            let h = Header::decode(&raw, max)?;
            let body_len = h.len as usize;
            let need = HEADER_LEN + body_len;
            if filled - start >= need {
                let body = &buf.spare_full()[start + HEADER_LEN..start + need];
                h.verify(&raw, body)?;
                handle(inner, conn, h, body)?;
                start += need;
                continue;
            }
            if body_len >= RECV_DIRECT_MIN || need > RECV_BUF_LEN {
                // Receive the rest of the body straight into its own buffer.
                let have = filled - start - HEADER_LEN;
                let mut body = inner.pool.get(body_len);
                body[..have].copy_from_slice(&buf.spare_full()[start + HEADER_LEN..filled]);
                let (b, _) = fill_to(conn, body.into_inner(), have, body_len).await?;
                let body = inner.pool.wrap(b);
                h.verify(&raw, &body)?;
                if h.kind == Kind::Data {
                    inner.events.push(TransportEvent::Frame { from: conn.peer, frame: super::Frame::pooled(body) });
                } else {
                    handle(inner, conn, h, &body)?;
                }
                start = 0;
                filled = 0;
            } else if start + need > RECV_BUF_LEN {
                // Fits the buffer, not from here: move the partial frame to the front.
                buf.spare_full().copy_within(start..filled, 0);
                filled -= start;
                start = 0;
            }
            break;
        }
        if start == filled {
            start = 0;
            filled = 0;
        } else if RECV_BUF_LEN - filled < 4096 {
            buf.spare_full().copy_within(start..filled, 0);
            filled -= start;
            start = 0;
        }
        let room = RECV_BUF_LEN - filled;
        let (res, b) = receive(conn, buf, filled..RECV_BUF_LEN, drained).await;
        buf = b;
        match res {
            Ok(0) => return Err(PeerFailure::Closed),
            Ok(n) => {
                filled += n;
                // A read that did not fill the room emptied the socket: the next one waits for
                // data instead of trying first.
                drained = n < room;
                conn.last_recv.set(Instant::now());
            }
            Err(e) => return Err(PeerFailure::Io(e)),
        }
        if conn.failed.get() {
            return Ok(());
        }
    }
}

fn handle(inner: &Inner, conn: &Conn, h: Header, body: &[u8]) -> Result<(), PeerFailure> {
    match h.kind {
        Kind::Data => {
            let mut b = inner.pool.get(body.len());
            b.copy_from_slice(body);
            inner.events.push(TransportEvent::Frame { from: conn.peer, frame: super::Frame::pooled(b) });
        }
        Kind::Push => {
            let (region, offset) = frame::push_aux_parts(h.aux);
            let regions = inner.regions.borrow();
            let r = regions.get(&RegionId(region)).ok_or(FrameError::UnknownRegion(region))?;
            if offset.checked_add(body.len()).is_none_or(|end| end > r.len()) {
                return Err(FrameError::PushOutOfBounds { region, offset, len: body.len(), region_len: r.len() }.into());
            }
            if let Some(w) = inner.push_windows.borrow().get(&(RegionId(region), conn.peer))
                && (offset < w.start || offset + body.len() > w.end)
            {
                return Err(FrameError::PushOutsideWindow { region, offset, len: body.len() }.into());
            }
            r.write(offset, body);
        }
        Kind::Heartbeat => {}
        Kind::Goodbye => return Err(PeerFailure::Closed),
        Kind::Hello => return Err(FrameError::Unexpected(Kind::Hello).into()),
    }
    Ok(())
}

async fn heartbeat(inner: Rc<Inner>) {
    let period = inner.limits.heartbeat_interval;
    let mut tick = time::interval(period / 2);
    let beat = Payload::from(Header::encode(Kind::Heartbeat, 0, &[]).to_vec());
    let mut last_tick = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        // A tick far behind its time means this thread did not run (a loaded machine): what
        // arrived meanwhile is not read yet, so the stall is not the peers' silence.
        let stalled = now.saturating_duration_since(last_tick).saturating_sub(period);
        last_tick = now;
        for c in inner.conns.values() {
            if c.failed.get() {
                continue;
            }
            if !stalled.is_zero() {
                c.last_recv.set((c.last_recv.get() + stalled).min(now));
            }
            let silent = now.saturating_duration_since(c.last_recv.get());
            if silent > inner.limits.peer_timeout && !c.paused.get() {
                inner.fail(c, PeerFailure::Silent(silent));
                continue;
            }
            if now.saturating_duration_since(c.last_send.get()) >= period
                && c.out_len.get() == 0
                && !inner.closing.get()
            {
                c.last_send.set(now);
                c.enqueue([beat.clone()]);
            }
        }
    }
}
