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

/// Size of each connection's receive buffer.
const RECV_BUF_LEN: usize = 256 << 10;
/// An accepted connection's `Hello` is read into a buffer this small (a listener holds one per
/// connection in its handshake); a transport that claims the connection gets a full receive
/// buffer then.
const HELLO_BUF_LEN: usize = 4 << 10;
/// The bytes of one-shot messages ([`TcpAcceptor::accept_messages`]) an acceptor holds while
/// they arrive, over all connections; beyond it, the connection holding the most is dropped.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// One-shot messages accepted per second from one source address by default, and how many may
/// come at once ([`TcpAcceptor::message_rate`]).
pub const MESSAGES_PER_SOURCE: (f64, f64) = (100.0, 200.0);
/// Source addresses whose message rates an acceptor tracks at once.
const SOURCES_MAX: usize = 4096;
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

/// A connection after its handshake, with bytes that arrived behind the `Hello`.
struct Handshaken {
    peer: PeerId,
    stream: TcpStream,
    buf: AlignedBuf,
    filled: usize,
}

fn hello(me: PeerId, tag: u32) -> [u8; HEADER_LEN] {
    Header::encode(Kind::Hello, u64::from(me.0) | (u64::from(tag) << 32), &[])
}

/// Reads until at least `HEADER_LEN` bytes are in `buf`, then validates them as a `Hello` with
/// group tag `tag`.
async fn read_hello(
    stream: &TcpStream,
    buf: AlignedBuf,
    max_frame_len: usize,
    tag: u32,
) -> Result<(PeerId, AlignedBuf, usize), String> {
    let (peer, their_tag, buf, filled) = read_hello_any(stream, buf, max_frame_len).await?;
    if their_tag != tag {
        return Err(format!("group tag {their_tag} differs from ours ({tag})"));
    }
    Ok((peer, buf, filled))
}

/// Reads and validates a `Hello`; returns the peer, its group tag and what was read.
async fn read_hello_any(
    stream: &TcpStream,
    mut buf: AlignedBuf,
    max_frame_len: usize,
) -> Result<(PeerId, u32, AlignedBuf, usize), String> {
    let mut filled = 0;
    while filled < HEADER_LEN {
        let (res, b) = stream.recv(buf, filled).await;
        buf = b;
        match res {
            Ok(0) => return Err("connection closed during the handshake".into()),
            Ok(n) => filled += n,
            Err(e) => return Err(format!("receive failed during the handshake: {e}")),
        }
    }
    let raw: [u8; HEADER_LEN] = buf.spare_full()[..HEADER_LEN].try_into().expect("header");
    let h = Header::decode(&raw, max_frame_len).map_err(|e| format!("bad hello: {e}"))?;
    h.verify(&raw, &[]).map_err(|e| format!("bad hello: {e}"))?;
    if h.kind != Kind::Hello || h.len != 0 {
        return Err(format!("expected a hello, got {:?}", h.kind));
    }
    Ok((PeerId(h.aux as u32), (h.aux >> 32) as u32, buf, filled))
}

/// How long an accepted connection has to send its `Hello`.
const HELLO_WITHIN: Duration = Duration::from_secs(5);

thread_local! {
    /// Refused connections are logged at most ten a second per thread (an attack would
    /// otherwise write a line per connection).
    static REFUSALS: crate::limit::LogLimiter = crate::limit::LogLimiter::default();
}

/// Logs a refused connection, rate limited.
fn refused(addr: &SocketAddr, reason: &str) {
    REFUSALS.with(|l| {
        if let Some(left_out) = l.admit(Instant::now()) {
            tracing::warn!(%addr, %reason, left_out, "refused a connection");
        }
    });
}

/// Reads the `Hello` of an accepted connection within 5 s; logs and returns `None` if it is
/// missing or malformed (the connection is then dropped).
async fn accept_hello(
    stream: TcpStream,
    addr: SocketAddr,
    max_frame_len: usize,
    tls: Option<&TlsIdentity>,
) -> Option<(TcpStream, PeerId, u32, AlignedBuf, usize)> {
    let handshake = async {
        let stream = match tls {
            Some(id) => stream.accept_tls(id).await.map_err(|e| format!("TLS handshake failed: {e}"))?,
            None => stream,
        };
        let (peer, tag, buf, filled) =
            read_hello_any(&stream, AlignedBuf::zeroed(HELLO_BUF_LEN), max_frame_len).await?;
        Ok::<_, String>((stream, peer, tag, buf, filled))
    };
    let r = time::timeout(HELLO_WITHIN, handshake).await;
    match r {
        Ok(Ok(v)) => Some(v),
        Ok(Err(reason)) => {
            refused(&addr, &reason);
            None
        }
        Err(_) => {
            refused(&addr, "no hello within 5 s");
            None
        }
    }
}

/// Reads one `Data` frame of at most `max` bytes behind a `Hello` already read (`filled` bytes
/// of `buf`, the hello first), checksum verified.
/// `charge` is told the bytes held after each read, and says whether they may be kept.
async fn read_message(
    stream: &TcpStream,
    mut buf: AlignedBuf,
    filled: usize,
    max: usize,
    charge: impl Fn(usize) -> bool,
) -> Result<Vec<u8>, String> {
    let mut got = buf.spare_full()[HEADER_LEN..filled].to_vec();
    let mut need = HEADER_LEN;
    let mut header = None;
    loop {
        if header.is_none() && got.len() >= HEADER_LEN {
            let raw: [u8; HEADER_LEN] = got[..HEADER_LEN].try_into().expect("header");
            let h = Header::decode(&raw, max).map_err(|e| e.to_string())?;
            if h.kind != Kind::Data {
                return Err(format!("expected a data frame, got {:?}", h.kind));
            }
            need = HEADER_LEN + h.len as usize;
            header = Some((h, raw));
        }
        if let Some((h, raw)) = &header
            && got.len() >= need
        {
            let body = &got[HEADER_LEN..need];
            h.verify(raw, body).map_err(|e| e.to_string())?;
            return Ok(body.to_vec());
        }
        let (res, b) = stream.recv(buf, 0).await;
        buf = b;
        match res {
            Ok(0) => return Err("closed before the message was complete".into()),
            Ok(n) => {
                got.extend_from_slice(&buf.spare_full()[..n]);
                if got.len() > HEADER_LEN + max {
                    return Err("more bytes than one message".into());
                }
                if !charge(got.len()) {
                    return Err("dropped: the listener holds too many bytes of incomplete messages".into());
                }
            }
            Err(e) => return Err(format!("receive failed: {e}")),
        }
    }
}

/// Sends one message to the [`TcpAcceptor`] at `addr` that accepts messages with group tag `tag`
/// ([`TcpAcceptor::accept_messages`]), as peer `me`; returns once the receiver has read it (it
/// closes the connection; with TLS, with a close_notify, so that a connection cut by someone
/// else is an error, not a delivery), or fails after `within`.
///
/// # Errors
///
/// [`TransportError::ConnectTimeout`] when it did not complete in time,
/// [`TransportError::Io`] when the connection failed, [`TransportError::Handshake`] when the
/// receiver answered wrongly.
pub async fn send_message(
    me: PeerId,
    addr: SocketAddr,
    tag: u32,
    body: &[u8],
    within: Duration,
    tls: Option<&TlsIdentity>,
) -> Result<(), TransportError> {
    let io = |context: &str, source| TransportError::Io { context: format!("{context} {addr}"), source };
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| io("connect to", e))?;
        let stream = match tls {
            None => stream,
            Some(id) => stream.connect_tls(id).await.map_err(|e| TransportError::Handshake {
                addr: addr.to_string(),
                reason: format!("TLS handshake failed: {e}"),
            })?,
        };
        stream.send_all(hello(me, tag).to_vec()).await.map_err(|e| io("send to", e))?;
        // The receiver's hello, read before sending (unread bytes would turn our close into a
        // reset, which may discard the message at the receiver).
        let (receiver, ..) = read_hello(&stream, AlignedBuf::zeroed(RECV_BUF_LEN), 0, tag)
            .await
            .map_err(|reason| TransportError::Handshake { addr: addr.to_string(), reason })?;
        // With TLS, the listener is the member its hello says (a client's certificate, also
        // issued by the authority, does not name a node).
        if !stream.peer_is_node(receiver.0) {
            return Err(TransportError::Handshake {
                addr: addr.to_string(),
                reason: format!("its certificate does not name {receiver}, whom its hello claims to be"),
            });
        }
        let mut frame = Header::encode(Kind::Data, 0, body).to_vec();
        frame.extend_from_slice(body);
        stream.send_all(frame).await.map_err(|e| io("send to", e))?;
        // The receiver closes once it has read the message.
        let (res, _) = stream.recv(AlignedBuf::zeroed(64), 0).await;
        match res {
            Ok(0) => Ok(()),
            Ok(_) => Err(TransportError::Handshake { addr: addr.to_string(), reason: "unexpected bytes".into() }),
            Err(e) => Err(io("receive from", e)),
        }
    };
    match time::timeout(within, exchange).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::ConnectTimeout { after: within, missing: Vec::new() }),
    }
}

/// Accepts connections on one listener for several transports of one member, routing each by
/// the group tag of its `Hello` (a membership driver runs one transport per view, each with a
/// tag of its own, on one port).
///
/// A connection is answered as soon as its `Hello` is read, and then waits, parked, until a
/// transport with its tag claims it ([`TcpTransport::connect_via`]): a peer that installed a
/// view first connects to one still finishing the previous view, and what it sends meanwhile
/// waits in the socket. At most `park_max` connections wait at once, each at most
/// `park_timeout`; beyond that they are closed, so foreign or stale connections cost bounded
/// memory.
#[derive(Debug)]
pub struct TcpAcceptor {
    inner: Rc<AcceptorInner>,
    task: RefCell<Option<JoinHandle<()>>>,
    local_addr: SocketAddr,
}

#[derive(Debug)]
struct AcceptorInner {
    parked: RefCell<BTreeMap<(u32, PeerId), (Instant, ParkedConn)>>,
    waiters: RefCell<Vec<Waker>>,
    park_max: usize,
    park_timeout: Duration,
    /// Connections with this tag carry one message each ([`send_message`]); their longest body.
    message_tag: Cell<Option<(u32, usize)>>,
    /// Messages read, waiting for [`TcpAcceptor::next_message`] (at most `park_max`).
    messages: RefCell<VecDeque<(PeerId, Vec<u8>)>>,
    /// Messages being read now (at most `park_max`), by connection: the bytes held, and the
    /// connection (shut down to drop it).
    reading: RefCell<BTreeMap<u64, (usize, Rc<TcpStream>)>>,
    /// Connections in their handshake or reading a message (at most `park_max`; the oldest is
    /// dropped for a new one), by number (they are numbered in order of arrival).
    handshaking: RefCell<BTreeMap<u64, JoinHandle<()>>>,
    next_conn: Cell<u64>,
    /// Messages per second from one source address, and the burst.
    message_rate: Cell<(f64, f64)>,
    /// Each source's tokens and when they were counted.
    sources: RefCell<BTreeMap<std::net::IpAddr, (f64, Instant)>>,
    /// Mutual TLS on every connection accepted.
    tls: RefCell<Option<TlsIdentity>>,
    message_waiter: RefCell<Option<Waker>>,
    /// Connections with this tag are sessions of external clients, handed out as they arrive.
    session_tag: Cell<Option<u32>>,
    /// Sessions handshaken, waiting for [`TcpAcceptor::next_session`] (at most `park_max`).
    sessions: RefCell<VecDeque<TcpSession>>,
    session_waiter: RefCell<Option<Waker>>,
}

/// An external client's connection after its `Hello` was answered
/// ([`TcpAcceptor::accept_sessions`]).
pub struct TcpSession {
    /// The connection.
    pub stream: TcpStream,
    /// Where it comes from.
    pub addr: SocketAddr,
    /// Bytes the client sent behind its `Hello`.
    pub early: Vec<u8>,
    /// The first DNS name of the client's certificate (`None` without TLS).
    pub identity: Option<String>,
}

impl std::fmt::Debug for TcpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSession").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// A handshaken connection waiting for its transport.
struct ParkedConn(Handshaken);

impl std::fmt::Debug for ParkedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParkedConn({})", self.0.peer)
    }
}

impl AcceptorInner {
    /// Whether one more message from `ip` is within its rate (a token bucket per source).
    fn message_allowed(&self, ip: std::net::IpAddr, now: Instant) -> bool {
        let (rate, burst) = self.message_rate.get();
        let mut sources = self.sources.borrow_mut();
        if sources.len() >= SOURCES_MAX && !sources.contains_key(&ip) {
            // Forget sources whose bucket is full again (idle ones); with none idle, a new
            // source waits (clearing the others would reset their limits).
            sources.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
            if sources.len() >= SOURCES_MAX {
                return false;
            }
        }
        let (tokens, at) = sources.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Connection `id` now holds `held` bytes of a message; drops the connections holding the
    /// most while all of them hold more than [`MESSAGE_BYTES_MAX`]. Whether `id` may go on.
    fn charge(&self, id: u64, held: usize) -> bool {
        let mut reading = self.reading.borrow_mut();
        let Some(entry) = reading.get_mut(&id) else { return false };
        entry.0 = held;
        let mut total: usize = reading.values().map(|e| e.0).sum();
        while total > MESSAGE_BYTES_MAX {
            let greediest = *reading.iter().max_by_key(|(_, e)| e.0).expect("over the budget: someone holds bytes").0;
            let (bytes, stream) = reading.remove(&greediest).expect("present");
            total -= bytes;
            if greediest == id {
                return false;
            }
            tracing::debug!(bytes, "dropped the connection holding the most bytes of an incomplete message");
            stream.shutdown();
        }
        true
    }

    fn expire(&self) {
        let now = Instant::now();
        self.parked.borrow_mut().retain(|(tag, peer), (at, _)| {
            let keep = now.duration_since(*at) < self.park_timeout;
            if !keep {
                tracing::warn!(%peer, tag, "closed a connection no transport claimed");
            }
            keep
        });
    }

    fn wake(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// The handshake of one accepted connection, and where it goes: read as a message (within
/// `park_timeout`), or parked for its transport.
async fn route(inner: Rc<AcceptorInner>, id: u64, me: PeerId, stream: TcpStream, addr: SocketAddr, max: usize) {
    /// Forgets the connection however the task ends (done, or dropped for a newer one).
    struct Slot(Rc<AcceptorInner>, u64);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.reading.borrow_mut().remove(&self.1);
            // Taken out first: dropping the handle (this very task's) borrows nothing.
            let handle = self.0.handshaking.borrow_mut().remove(&self.1);
            drop(handle);
        }
    }
    let _slot = Slot(inner.clone(), id);
    route_inner(&inner, id, me, stream, addr, max).await;
}

async fn route_inner(inner: &Rc<AcceptorInner>, id: u64, me: PeerId, stream: TcpStream, addr: SocketAddr, max: usize) {
    let tls = inner.tls.borrow().clone();
    let Some((stream, peer, tag, mut buf, filled)) = accept_hello(stream, addr, max, tls.as_ref()).await else {
        return;
    };
    if inner.session_tag.get() != Some(tag) && !stream.peer_is_node(peer.0) {
        refused(&addr, &format!("its certificate does not name {peer}, whom its hello claims to be"));
        return;
    }
    if inner.session_tag.get() == Some(tag) {
        if inner.sessions.borrow().len() >= inner.park_max {
            refused(&addr, "too many client sessions waiting to be served");
            return;
        }
        if stream.send_all(hello(me, tag).to_vec()).await.is_err() {
            return;
        }
        let early = buf.spare_full()[HEADER_LEN..filled].to_vec();
        let identity = stream.peer_identity();
        inner.sessions.borrow_mut().push_back(TcpSession { stream, addr, early, identity });
        if let Some(w) = inner.session_waiter.borrow_mut().take() {
            w.wake();
        }
        return;
    }
    if let Some((message_tag, message_max)) = inner.message_tag.get()
        && tag == message_tag
    {
        let busy = inner.reading.borrow().len() + inner.messages.borrow().len() >= inner.park_max;
        if busy {
            refused(&addr, "too many messages arriving or waiting");
            return;
        }
        if !inner.message_allowed(addr.ip(), Instant::now()) {
            refused(&addr, "more messages from this address than its rate allows");
            return;
        }
        if stream.send_all(hello(me, tag).to_vec()).await.is_err() {
            return;
        }
        let stream = Rc::new(stream);
        inner.reading.borrow_mut().insert(id, (0, stream.clone()));
        let read = read_message(&stream, buf, filled, message_max, |held| inner.charge(id, held));
        let r = time::timeout(inner.park_timeout, read).await;
        inner.reading.borrow_mut().remove(&id);
        match r {
            Ok(Ok(body)) => {
                inner.messages.borrow_mut().push_back((peer, body));
                if let Some(w) = inner.message_waiter.borrow_mut().take() {
                    w.wake();
                }
                // Closing tells the sender its message was read; with TLS, a close_notify
                // says so (a FIN alone could come from anyone on the path).
                let _ = time::timeout(HELLO_WITHIN, stream.close_write()).await;
            }
            Ok(Err(reason)) => refused(&addr, &format!("a bad message from {peer}: {reason}")),
            Err(_) => refused(&addr, &format!("a message from {peer} not complete in time")),
        }
        stream.shutdown();
        return;
    }
    let full = inner.parked.borrow().len() >= inner.park_max;
    if full || inner.parked.borrow().contains_key(&(tag, peer)) {
        let why = if full { "too many connections waiting for their transport" } else { "a duplicate connection" };
        refused(&addr, &format!("{why} (peer {peer}, tag {tag})"));
        return;
    }
    if stream.send_all(hello(me, tag).to_vec()).await.is_err() {
        return;
    }
    let conn = ParkedConn(Handshaken { peer, stream, buf, filled });
    inner.parked.borrow_mut().insert((tag, peer), (Instant::now(), conn));
    inner.wake();
}

impl TcpAcceptor {
    /// Starts accepting on `listener` for member `me`. Call on the executor that will run the
    /// transports.
    ///
    pub fn new(
        listener: TcpListener,
        me: PeerId,
        limits: &TransportLimits,
        park_max: usize,
        park_timeout: Duration,
    ) -> Self {
        let local_addr = listener.local_addr();
        let inner = Rc::new(AcceptorInner {
            parked: RefCell::new(BTreeMap::new()),
            waiters: RefCell::new(Vec::new()),
            park_max,
            park_timeout,
            message_tag: Cell::new(None),
            messages: RefCell::new(VecDeque::new()),
            reading: RefCell::new(BTreeMap::new()),
            handshaking: RefCell::new(BTreeMap::new()),
            next_conn: Cell::new(0),
            message_rate: Cell::new(MESSAGES_PER_SOURCE),
            sources: RefCell::new(BTreeMap::new()),
            tls: RefCell::new(None),
            message_waiter: RefCell::new(None),
            session_tag: Cell::new(None),
            sessions: RefCell::new(VecDeque::new()),
            session_waiter: RefCell::new(None),
        });
        let task = {
            let inner = inner.clone();
            let max = limits.max_frame_len;
            spawn(async move {
                loop {
                    let (stream, addr) = match listener.accept().await {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    inner.expire();
                    // Each connection's handshake runs on its own, so one silent connection does
                    // not hold up the others; at most `park_max` at once, the oldest dropped for
                    // a new one (a peer's handshake takes microseconds: the oldest are the ones
                    // that hold a slot without using it).
                    if inner.handshaking.borrow().len() >= inner.park_max {
                        let oldest = inner.handshaking.borrow_mut().pop_first();
                        refused(&addr, "too many handshakes under way: the oldest dropped");
                        if let Some((_, task)) = oldest {
                            task.abort();
                        }
                    }
                    let id = inner.next_conn.get();
                    inner.next_conn.set(id + 1);
                    let task = spawn(route(inner.clone(), id, me, stream, addr, max));
                    inner.handshaking.borrow_mut().insert(id, task);
                }
            })
        };
        Self { inner, task: RefCell::new(Some(task)), local_addr }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting (connections already handed out are not affected; parked ones close).
    pub fn stop(&self) {
        if let Some(t) = self.task.borrow_mut().take() {
            t.abort();
        }
        self.inner.parked.borrow_mut().clear();
        self.inner.sessions.borrow_mut().clear();
        let handshakes = std::mem::take(&mut *self.inner.handshaking.borrow_mut());
        for task in handshakes.into_values() {
            task.abort();
        }
    }

    /// Connections waiting for a transport.
    pub fn parked(&self) -> usize {
        self.inner.parked.borrow().len()
    }

    /// From now on, connections with group tag `tag` each carry one message of at most
    /// `max_len` bytes ([`send_message`]), read as they arrive and handed out by
    /// [`TcpAcceptor::next_message`] (at most `park_max` read or waiting at once; more are
    /// dropped).
    pub fn accept_messages(&self, tag: u32, max_len: usize) {
        self.inner.message_tag.set(Some((tag, max_len)));
    }

    /// Requires mutual TLS on every connection accepted from now on: the peer's certificate must
    /// chain to `identity`'s authority and, but for external clients, name the id its hello
    /// claims ([`crate::tls::node_name`]). Call before the executor runs the acceptor.
    pub fn require_tls(&self, identity: TlsIdentity) {
        *self.inner.tls.borrow_mut() = Some(identity);
    }

    /// Accepts at most `per_second` one-shot messages a second from one source address, and
    /// `burst` at once (default [`MESSAGES_PER_SOURCE`]); more are closed unread.
    pub fn message_rate(&self, per_second: f64, burst: f64) {
        self.inner.message_rate.set((per_second, burst.max(1.0)));
    }

    /// From now on, connections with group tag `tag` are sessions of external clients: each is
    /// answered with a `Hello` and handed out by [`TcpAcceptor::next_session`] (at most
    /// `park_max` waiting; more are refused).
    pub fn accept_sessions(&self, tag: u32) {
        self.inner.session_tag.set(Some(tag));
    }

    /// The next client session, waiting for one.
    pub async fn next_session(&self) -> TcpSession {
        poll_fn(|cx| {
            if let Some(s) = self.inner.sessions.borrow_mut().pop_front() {
                return Poll::Ready(s);
            }
            *self.inner.session_waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The next message, waiting for one: the sender's id (as its `Hello` says) and the body.
    pub async fn next_message(&self) -> (PeerId, Vec<u8>) {
        poll_fn(|cx| {
            if let Some(m) = self.inner.messages.borrow_mut().pop_front() {
                return Poll::Ready(m);
            }
            *self.inner.message_waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits until every peer of `peers` has connected with `tag`, or until `deadline`; returns
    /// the connections that arrived.
    async fn claim(&self, tag: u32, peers: &[PeerId], deadline: Instant) -> BTreeMap<PeerId, Handshaken> {
        let mut got = BTreeMap::new();
        let wait = poll_fn(|cx| {
            {
                let mut parked = self.inner.parked.borrow_mut();
                for p in peers {
                    if let Some((_, c)) = parked.remove(&(tag, *p)) {
                        got.insert(*p, c.0);
                    }
                }
            }
            if got.len() == peers.len() {
                return Poll::Ready(());
            }
            self.inner.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        let _ = time::timeout(deadline.saturating_duration_since(Instant::now()), wait).await;
        got
    }
}

impl Drop for TcpAcceptor {
    fn drop(&mut self) {
        if let Some(t) = self.task.borrow_mut().take() {
            t.abort();
        }
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
        let _ = time::timeout(linger, async {
            for c in self.inner.conns.values() {
                while c.out_len.get() > 0 && !c.failed.get() {
                    time::sleep(Duration::from_micros(200)).await;
                }
                if !c.failed.get() {
                    // With TLS, a close_notify after the goodbye.
                    let _ = c.stream.close_write().await;
                }
            }
            for c in self.inner.conns.values() {
                while !c.failed.get() {
                    time::sleep(Duration::from_micros(200)).await;
                }
            }
        })
        .await;
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
