//! The listener of a member with membership: one port for every view's transport (connections
//! parked until their transport claims them, by group tag), one-shot messages (joins, answers,
//! restart offers) and external clients' sessions, each bounded so that outsiders' connections
//! cost little: handshakes, messages arriving and their bytes, sessions waiting, and messages
//! per source address.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::super::frame::{HEADER_LEN, Header, Kind};
use super::super::{PeerId, TransportError, TransportLimits};
use super::handshake::{HELLO_BUF_LEN, HELLO_WITHIN, Handshaken, accept_hello, hello, read_hello, refused};
use crate::buf::AlignedBuf;
use crate::executor::{JoinHandle, spawn};
use crate::net::{TcpListener, TcpStream};
use crate::time;
use crate::tls::TlsIdentity;

/// The bytes of one-shot messages ([`TcpAcceptor::accept_messages`]) an acceptor holds while
/// they arrive, over all connections; beyond it, the connection holding the most is dropped.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// One-shot messages accepted per second from one source address by default, and how many may
/// come at once ([`TcpAcceptor::message_rate`]).
pub const MESSAGES_PER_SOURCE: (f64, f64) = (100.0, 200.0);
/// Source addresses whose message rates an acceptor tracks at once.
const SOURCES_MAX: usize = 4096;

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
        let (receiver, ..) = read_hello(&stream, AlignedBuf::zeroed(HELLO_BUF_LEN), 0, tag)
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
/// transport with its tag claims it ([`TcpTransport::connect_via`](super::TcpTransport::connect_via)): a peer that installed a
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
        if stream.is_tls() && stream.peer_identity().is_none() {
            // Handlers tell external callers by their name; one without would look like a
            // member's own call.
            refused(&addr, "a client certificate without a DNS name");
            return;
        }
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
    pub(super) async fn claim(&self, tag: u32, peers: &[PeerId], deadline: Instant) -> BTreeMap<PeerId, Handshaken> {
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
