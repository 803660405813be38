//! One connection to one member: requests are written by the callers (whoever finds the socket
//! idle writes everything queued, so requests in flight leave in batches), replies are read by a
//! thread of the connection and handed to the waiting request.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use derecho_wire::client::{ClientView, Frames, Next, Outcome, Response, check_hello, hello};
use derecho_wire::frame::HEADER_LEN;
use derecho_wire::ids::Version;
use derecho_wire::remote::RemoteKind;
use rkyv::util::AlignedVec;

/// Locks, recovering from a poisoned lock (a panicking waiter must not wedge the connection).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a request came to.
#[derive(Debug)]
pub(crate) enum Done {
    View(ClientView),
    Reply(Result<(Version, AlignedVec), (RemoteKind, String)>),
    Ack,
    /// The connection failed before the answer came: the request may or may not have been
    /// read.
    Lost(String),
    /// No answer within the deadline.
    TimedOut,
}

#[derive(Debug)]
struct SlotState {
    done: Option<Done>,
    waker: Option<Waker>,
    deadline: Instant,
}

/// Where the answer to one request lands.
#[derive(Debug)]
pub(crate) struct Slot(Mutex<SlotState>);

impl Slot {
    fn complete(&self, done: Done) {
        let waker = {
            let mut s = lock(&self.0);
            if s.done.is_some() {
                return;
            }
            s.done = Some(done);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The answer to a request, as a future.
#[derive(Debug)]
pub(crate) struct Answer {
    slot: Arc<Slot>,
    conn: Arc<Conn>,
    req: u64,
}

impl Future for Answer {
    type Output = Done;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let mut s = lock(&self.slot.0);
        if let Some(d) = s.done.take() {
            return Poll::Ready(d);
        }
        if s.waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        lock(&self.conn.pending).remove(&self.req);
    }
}

/// A notification: its topic and bytes.
pub(crate) type Notification = (String, Vec<u8>);

/// Notifications pushed by members, for the client to take, and the task waiting for one.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) queue: Mutex<(VecDeque<Notification>, Vec<Waker>)>,
}

/// Notifications kept before the oldest are dropped.
const INBOX_MAX: usize = 1 << 16;

#[derive(Debug, Default)]
struct Writer {
    queued: Vec<u8>,
    /// Someone (a caller or the writer thread) is writing, and writes what is queued meanwhile.
    writing: bool,
    /// The writer thread waits on the condition variable.
    asleep: bool,
    closed: bool,
}

/// What is queued for the connection, shared with its writer thread.
#[derive(Debug, Default)]
struct Outgoing {
    writer: Mutex<Writer>,
    wake: std::sync::Condvar,
}

/// How bytes cross a connection: as they are, or in TLS records.
#[derive(Debug)]
enum Wire {
    Plain,
    Tls(Box<Mutex<rustls::ClientConnection>>),
}

impl Wire {
    /// Writes all of `buf` (encrypted, with TLS). Callers take turns (`Writer::writing`), so
    /// records leave in the order they were made.
    fn write_all(&self, mut stream: &TcpStream, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Wire::Plain => stream.write_all(buf),
            Wire::Tls(c) => {
                let records = {
                    let mut c = lock(c);
                    c.writer().write_all(buf)?;
                    let mut out = Vec::with_capacity(buf.len() + buf.len() / 16 + 64);
                    while c.wants_write() {
                        c.write_tls(&mut out)?;
                    }
                    out
                };
                stream.write_all(&records)
            }
        }
    }

    /// With TLS, ends the session with a close_notify alert (best effort: the connection is
    /// being closed either way; on a non-blocking socket it is not sent if there is no room).
    /// The caller holds the turn to write.
    fn close_notify(&self, mut stream: &TcpStream) {
        let Wire::Tls(c) = self else { return };
        let mut records = Vec::new();
        {
            let mut c = lock(c);
            c.send_close_notify();
            while c.wants_write() {
                if c.write_tls(&mut records).is_err() {
                    return;
                }
            }
        }
        let _ = stream.write_all(&records);
    }
}

/// What the reader thread received and has not decrypted yet.
struct Received {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Received {
    /// Reads into `out`: decrypted bytes with TLS (`Ok(0)` when the member closed). Timeouts
    /// of the socket come out as errors, as from `read`.
    fn read(&mut self, wire: &Wire, mut stream: &TcpStream, out: &mut [u8]) -> std::io::Result<usize> {
        let Wire::Tls(c) = wire else { return stream.read(out) };
        loop {
            {
                let mut c = lock(c);
                match c.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Ciphertext left from before (the session's plaintext buffer was full).
                let mut fed = false;
                while self.start < self.end {
                    let mut rd = &self.buf[self.start..self.end];
                    match c.read_tls(&mut rd) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => self.start += n,
                    }
                    fed = true;
                    c.process_new_packets().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                }
                if fed {
                    continue;
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = stream.read(&mut self.buf[self.end..])?;
            if n == 0 {
                // The end of the stream: the session's end only after the member's close_notify
                // (a FIN is not authenticated).
                return match lock(c).reader().read(out) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the member closed the connection without a TLS close_notify",
                    )),
                    Err(e) => Err(e),
                };
            }
            self.end += n;
        }
    }
}

/// A connection to one member.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) address: String,
    stream: TcpStream,
    wire: Arc<Wire>,
    out: Arc<Outgoing>,
    pending: Mutex<BTreeMap<u64, Arc<Slot>>>,
    closed: AtomicBool,
    why: Mutex<Option<String>>,
}

impl Conn {
    /// Connects to `address` (a host name resolves) and shakes hands with group tag `tag`;
    /// starts the thread that reads the member's answers.
    pub(crate) fn open(
        address: &str,
        tag: u32,
        within: Duration,
        frame_max: usize,
        tls: Option<&derecho_wire::tls::TlsIdentity>,
        inbox: Arc<Inbox>,
    ) -> Result<Arc<Self>, String> {
        let addrs: Vec<_> = address.to_socket_addrs().map_err(|e| format!("cannot resolve {address}: {e}"))?.collect();
        let mut last = format!("{address} resolves to no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, within) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("cannot connect to {address} ({a}): {e}"),
            }
        }
        let mut stream = stream.ok_or(last)?;
        let io = |e: std::io::Error| format!("handshake with {address}: {e}");
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(within)).map_err(io)?;
        stream.set_write_timeout(Some(within)).map_err(io)?;
        let wire = match tls {
            None => Wire::Plain,
            Some(id) => {
                let name = derecho_wire::tls::TlsIdentity::server_name();
                let mut c = rustls::ClientConnection::new(id.client_config(), name)
                    .map_err(|e| format!("TLS with {address}: {e}"))?;
                while c.is_handshaking() {
                    c.complete_io(&mut stream).map_err(|e| format!("TLS handshake with {address}: {e}"))?;
                }
                Wire::Tls(Box::new(Mutex::new(c)))
            }
        };
        // The member's answer is read by the connection's thread: a client may run on the
        // thread of a member it talks to, which must be free to answer.
        wire.write_all(&stream, &hello(tag)).map_err(io)?;
        let wire = Arc::new(wire);
        // The reader wakes at least this often to expire requests past their deadline.
        stream.set_read_timeout(Some(Duration::from_millis(100))).map_err(io)?;
        let reader = stream.try_clone().map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let out = Arc::new(Outgoing::default());
        let conn = Arc::new(Self {
            address: address.to_string(),
            stream,
            wire: wire.clone(),
            out: out.clone(),
            pending: Mutex::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
            why: Mutex::new(None),
        });
        let weak = Arc::downgrade(&conn);
        std::thread::Builder::new()
            .name(format!("derecho-client {address}"))
            .spawn({
                let wire = wire.clone();
                move || read_loop(weak, reader, &wire, tag, within, frame_max, inbox)
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let weak = Arc::downgrade(&conn);
        std::thread::Builder::new()
            .name(format!("derecho-client {address} writer"))
            .spawn(move || write_loop(&weak, &out, writer, &wire))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(conn)
    }

    /// The connection failed or was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the connection because the client is done with it: with TLS, a close_notify first
    /// (so the member can tell it from a connection cut on the way), unless a write is under way
    /// or the socket would have to wait for room (the client never waits to close).
    pub(crate) fn close_by_client(&self) {
        if self.is_closed() {
            return;
        }
        {
            // Nobody writes while this holds the writer's lock and no one has the turn.
            let w = lock(&self.out.writer);
            if !w.writing && !w.closed && self.stream.set_nonblocking(true).is_ok() {
                self.wire.close_notify(&self.stream);
            }
        }
        self.close("was closed by the client");
    }

    /// Closes the connection; every request waiting on it ends as [`Done::Lost`].
    pub(crate) fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        *lock(&self.why) = Some(why.to_string());
        let _ = self.stream.shutdown(Shutdown::Both);
        lock(&self.out.writer).closed = true;
        self.out.wake.notify_one();
        let pending = std::mem::take(&mut *lock(&self.pending));
        for slot in pending.into_values() {
            slot.complete(Done::Lost(format!("the connection to {} {why}", self.address)));
        }
    }

    /// Why it closed.
    pub(crate) fn why(&self) -> String {
        lock(&self.why).clone().unwrap_or_else(|| "closed".into())
    }

    /// Sends request `req` (its frame `frame`) and returns its answer's future, which ends at
    /// `deadline` at the latest.
    pub(crate) fn request(self: &Arc<Self>, req: u64, frame: &[u8], deadline: Instant) -> Answer {
        let slot = Arc::new(Slot(Mutex::new(SlotState { done: None, waker: None, deadline })));
        let answer = Answer { slot: slot.clone(), conn: self.clone(), req };
        if self.is_closed() {
            slot.complete(Done::Lost(format!("the connection to {} {}", self.address, self.why())));
            return answer;
        }
        // How many are in flight, counted under the same lock as the insert.
        let in_flight = {
            let mut pending = lock(&self.pending);
            pending.insert(req, slot.clone());
            pending.len()
        };
        if self.is_closed() {
            // Closed meanwhile: `close` may have completed the others before this one was in.
            lock(&self.pending).remove(&req);
            slot.complete(Done::Lost(format!("the connection to {} {}", self.address, self.why())));
            return answer;
        }
        self.write(frame, in_flight);
        answer
    }

    /// Sends `frame`. With nothing else in flight on the connection (one call at a time), the
    /// caller writes it at once; otherwise it is queued for the connection's writer thread, so
    /// that calls in flight leave in batches, one system call for many.
    fn write(&self, frame: &[u8], in_flight: usize) {
        // A large frame always goes to the writer thread: the caller may be a member's own
        // thread, which must stay free to read what it is sent.
        let alone = in_flight <= 1 && frame.len() <= 64 << 10;
        let mut w = lock(&self.out.writer);
        w.queued.extend_from_slice(frame);
        if w.writing {
            return;
        }
        if !alone {
            if w.asleep {
                self.out.wake.notify_one();
            }
            return;
        }
        w.writing = true;
        drop(w);
        if let Err(e) = drain(&self.out, &self.stream, &self.wire) {
            self.close(&format!("failed while sending: {e}"));
        }
    }

    fn expire(&self, now: Instant) {
        let expired: Vec<Arc<Slot>> = {
            let mut pending = lock(&self.pending);
            let mut out = Vec::new();
            pending.retain(|_, s| {
                let late = lock(&s.0).deadline <= now;
                if late {
                    out.push(s.clone());
                }
                !late
            });
            out
        };
        for s in expired {
            s.complete(Done::TimedOut);
        }
    }

    fn dispatch(&self, body: &[u8], inbox: &Inbox) -> Result<(), String> {
        let response = Response::decode(body).map_err(|e| e.to_string())?;
        let (req, done) = match response {
            Response::View { req, view } => (req, Done::View(view)),
            Response::Reply { req, outcome } => (
                req,
                Done::Reply(match outcome {
                    Outcome::Ok { version, reply } => {
                        let mut v = AlignedVec::with_capacity(reply.len());
                        v.extend_from_slice(reply);
                        Ok((version, v))
                    }
                    Outcome::Err { kind, reason } => Err((kind, reason.to_string())),
                }),
            ),
            Response::Subscribed { req } | Response::Pong { req } => (req, Done::Ack),
            Response::Notify { topic, body } => {
                let wakers = {
                    let mut q = lock(&inbox.queue);
                    if q.0.len() >= INBOX_MAX {
                        q.0.pop_front();
                    }
                    q.0.push_back((topic.to_string(), body.to_vec()));
                    std::mem::take(&mut q.1)
                };
                for w in wakers {
                    w.wake();
                }
                return Ok(());
            }
        };
        // An answer nobody waits for (given up) is dropped.
        let slot = lock(&self.pending).remove(&req);
        if let Some(s) = slot {
            s.complete(done);
        }
        Ok(())
    }
}

/// Writes what is queued until the queue is empty (the caller set `writing`; it is cleared).
fn drain(out: &Outgoing, stream: &TcpStream, wire: &Wire) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut w = lock(&out.writer);
    loop {
        std::mem::swap(&mut buf, &mut w.queued);
        if buf.is_empty() {
            w.writing = false;
            return Ok(());
        }
        drop(w);
        let r = wire.write_all(stream, &buf);
        buf.clear();
        w = lock(&out.writer);
        if let Err(e) = r {
            w.writing = false;
            w.queued.clear();
            return Err(e);
        }
    }
}

/// The writer thread: writes what callers queue while calls are in flight. After a batch it
/// looks again for a few microseconds before it sleeps (a wake costs more than the look).
fn write_loop(conn: &std::sync::Weak<Conn>, out: &Outgoing, stream: TcpStream, wire: &Wire) {
    loop {
        let mut w = lock(&out.writer);
        let mut looked = Instant::now();
        loop {
            if w.closed {
                return;
            }
            if !w.queued.is_empty() && !w.writing {
                break;
            }
            if looked.elapsed() < Duration::from_micros(20) {
                drop(w);
                std::thread::yield_now();
                w = lock(&out.writer);
                continue;
            }
            w.asleep = true;
            let (g, _) =
                out.wake.wait_timeout(w, Duration::from_millis(200)).unwrap_or_else(std::sync::PoisonError::into_inner);
            w = g;
            w.asleep = false;
            if conn.strong_count() == 0 {
                return;
            }
            looked = Instant::now();
        }
        w.writing = true;
        drop(w);
        if let Err(e) = drain(out, &stream, wire) {
            if let Some(c) = conn.upgrade() {
                c.close(&format!("failed while sending: {e}"));
            }
            return;
        }
    }
}

/// Reads the member's answers until the connection closes or the client lets it go.
fn read_loop(
    conn: std::sync::Weak<Conn>,
    stream: TcpStream,
    wire: &Wire,
    tag: u32,
    within: Duration,
    frame_max: usize,
    inbox: Arc<Inbox>,
) {
    // The member's hello first, within the connect timeout.
    let mut received = Received { buf: vec![0u8; 32 << 10], start: 0, end: 0 };
    let mut raw = [0u8; HEADER_LEN];
    let (mut got, until) = (0, Instant::now() + within);
    while got < HEADER_LEN {
        let why = match received.read(wire, &stream, &mut raw[got..]) {
            Ok(0) => Some(match wire {
                Wire::Plain => "closed the connection during the handshake (it may require TLS, be of another \
                                group, or not be a member)"
                    .to_string(),
                _ => "closed the connection during the handshake (another group, or not a member?)".to_string(),
            }),
            Ok(n) => {
                got += n;
                None
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                (Instant::now() >= until).then(|| format!("did not answer the handshake within {within:?}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            Err(e) => Some(format!("failed during the handshake: {e}")),
        };
        if let Some(why) = why {
            if let Some(c) = conn.upgrade() {
                c.close(&why);
            }
            return;
        }
    }
    let member = match check_hello(&raw, tag) {
        Ok(id) => id,
        Err(e) => {
            if let Some(c) = conn.upgrade() {
                c.close(&format!("answered the handshake wrongly: {e}"));
            }
            return;
        }
    };
    // With TLS, the listener must be the member its hello says: a certificate the authority
    // issued to a client (or anyone not a member) does not name a node.
    if let Wire::Tls(c) = wire {
        let names = lock(c)
            .peer_certificates()
            .and_then(|certs| certs.first())
            .is_some_and(|cert| derecho_wire::tls::names_node(cert, member.0));
        if !names {
            if let Some(c) = conn.upgrade() {
                c.close(&format!("its certificate does not name {member}, whom its hello claims to be"));
            }
            return;
        }
    }
    let frames = Frames::new(frame_max);
    let mut buf = vec![0u8; 64 << 10];
    let (mut start, mut end) = (0usize, 0usize);
    let mut expired_at = Instant::now();
    loop {
        // Every whole frame in the buffer.
        loop {
            match frames.next(&buf[start..end]) {
                Ok(Next::Frame { body }) => {
                    let Some(c) = conn.upgrade() else { return };
                    let r = c.dispatch(&buf[start + body.start..start + body.end], &inbox);
                    start += body.end;
                    if let Err(e) = r {
                        c.close(&format!("sent a malformed message ({e})"));
                        return;
                    }
                }
                Ok(Next::Need(n)) => {
                    // Make room: move what is left to the front, grow for a long frame.
                    if start > 0 {
                        buf.copy_within(start..end, 0);
                        end -= start;
                        start = 0;
                    }
                    if n > buf.len() {
                        buf.resize(n, 0);
                    }
                    break;
                }
                Err(e) => {
                    if let Some(c) = conn.upgrade() {
                        c.close(&format!("sent a bad frame ({e})"));
                    }
                    return;
                }
            }
        }
        match received.read(wire, &stream, &mut buf[end..]) {
            Ok(0) => {
                if let Some(c) = conn.upgrade() {
                    c.close("was closed by the member");
                }
                return;
            }
            Ok(n) => end += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                if let Some(c) = conn.upgrade() {
                    c.close(&format!("failed: {e}"));
                }
                return;
            }
        }
        let Some(c) = conn.upgrade() else { return };
        if c.is_closed() {
            return;
        }
        let now = Instant::now();
        if now.duration_since(expired_at) >= Duration::from_millis(50) {
            expired_at = now;
            c.expire(now);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
