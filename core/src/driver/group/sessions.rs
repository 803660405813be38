//! External clients' sessions on the member's listener (PROTOCOLS §6, `derecho_wire::client`):
//! one task per connection reads the client's requests and hands calls to the application;
//! answers and notifications are queued on the session and written by a task of their own, so
//! many calls are in flight on one connection and their answers leave in batches.
//!
//! Bounded: at most [`ClientLimits::max`] sessions (beyond, the one silent longest is closed
//! for the newcomer); per session, [`ClientLimits::in_flight_max`] calls under way (more are
//! answered `Overloaded`) and [`ClientLimits::queued_bytes_max`] of answers waiting to be
//! written (a client that stops reading is closed); a session silent for
//! [`ClientLimits::idle`] is closed. A session reads into a buffer of [`READ_BUF_LEN`]; one
//! that receives a longer request holds more while it arrives, and all of those extra bytes
//! together stay within [`ClientLimits::buffered_bytes_max`] (beyond, the session holding the
//! most is closed). None of it touches the group's own traffic.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use derecho_runtime::transport::tcp::TcpSession;
use derecho_runtime::{AlignedBuf, spawn, time};
use derecho_wire::client::{ClientView, Frames, Next, Outcome, Request, Response, encode_reply};

use super::app::State;
use super::runner::Inner;
use crate::protocol::Version;
use crate::rpc::RemoteKind;
use crate::rpc::wire::{FLAG_ACK_APPLIED, FLAG_ACK_PERSISTED, FLAG_SESSION, HEADER_LEN, Header, Kind};

/// How a member bounds its external clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Sessions open at once; beyond, the session silent longest is closed for a new one
    /// (default 1024).
    pub max: usize,
    /// Calls under way per session; more are answered `Overloaded` (default 1024).
    pub in_flight_max: usize,
    /// Bytes of answers waiting to be written to one client; beyond, the client (which is not
    /// reading) is closed (default 16 MiB).
    pub queued_bytes_max: usize,
    /// A session that sends nothing this long is closed (default 5 minutes; clients reconnect).
    pub idle: Duration,
    /// The longest request accepted (default 64 MiB; the group's `payload_len_max` still
    /// bounds an ordered call).
    pub frame_max: usize,
    /// Bytes of requests longer than a session's read buffer, held while they arrive, over all
    /// sessions; beyond, the session holding the most is closed (default 64 MiB; at least
    /// `frame_max`).
    pub buffered_bytes_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max: 1024,
            in_flight_max: 1024,
            queued_bytes_max: 16 << 20,
            idle: Duration::from_secs(300),
            frame_max: derecho_wire::client::FRAME_MAX,
            buffered_bytes_max: 64 << 20,
        }
    }
}

/// The member's sessions.
#[derive(Default)]
pub(super) struct Sessions {
    next: Cell<u64>,
    open: RefCell<BTreeMap<u64, Rc<Session>>>,
    /// Sessions subscribed to each topic.
    topics: RefCell<BTreeMap<String, Vec<Weak<Session>>>>,
    /// Warnings about sessions closed for newcomers, rate limited.
    refusals: derecho_runtime::limit::LogLimiter,
}

/// A session's read buffer (a longer request gets a larger one while it arrives).
pub const READ_BUF_LEN: usize = 64 << 10;

/// Topics, and subscribers per topic, a member keeps at most.
const TOPICS_MAX: usize = 256;
const SUBSCRIBERS_MAX: usize = 4096;
/// The longest topic name.
const TOPIC_LEN_MAX: usize = 256;

pub(super) struct Session {
    stream: derecho_runtime::net::TcpStream,
    addr: std::net::SocketAddr,
    out: RefCell<Vec<u8>>,
    writer: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    in_flight: Cell<usize>,
    queued_max: usize,
    /// Bytes of its read buffer beyond [`READ_BUF_LEN`] (a long request arriving).
    extra: Cell<usize>,
    /// When it last received something.
    active: Cell<std::time::Instant>,
    /// The client's TLS identity (its certificate's first DNS name).
    identity: Option<Rc<str>>,
}

impl Session {
    /// Queues a frame (built by `f`); closes the session if the client does not read.
    fn push(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.closed.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        f(&mut out);
        if out.len() > self.queued_max {
            drop(out);
            tracing::warn!(addr = %self.addr, "closed a client that does not read its answers");
            self.close();
            return;
        }
        drop(out);
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    fn close(&self) {
        if !self.closed.replace(true) {
            match self.writer.borrow_mut().take() {
                // The writer waits for something to send: it ends the session (with TLS, with a
                // close_notify, so the client can tell it from a connection cut on the way).
                Some(w) => w.wake(),
                // It is sending (perhaps to a client that does not read), or has not started:
                // cut at once.
                None => self.stream.shutdown(),
            }
        }
    }
}

impl Sessions {
    /// Pushes a notification to every session subscribed to `topic`; returns how many.
    pub(super) fn notify(&self, topic: &str, body: &[u8]) -> usize {
        let mut topics = self.topics.borrow_mut();
        let Some(list) = topics.get_mut(topic) else { return 0 };
        list.retain(|s| s.upgrade().is_some_and(|s| !s.closed.get()));
        for s in list.iter().filter_map(Weak::upgrade) {
            s.push(|out| Response::Notify { topic, body }.encode(out));
        }
        list.len()
    }

    /// Closes every session.
    pub(super) fn close_all(&self) {
        for s in std::mem::take(&mut *self.open.borrow_mut()).into_values() {
            s.close();
        }
    }

    /// Makes room for a new session when `max` are open: closes the one silent longest.
    fn evict_for_newcomer(&self, max: usize) -> bool {
        let open = self.open.borrow();
        let live = || open.values().filter(|s| !s.closed.get());
        if live().count() < max {
            return false;
        }
        if let Some(s) = live().min_by_key(|s| s.active.get()) {
            s.close();
        }
        true
    }

    /// Session `s` needs `extra` bytes beyond its read buffer; closes the sessions holding the
    /// most while all of them would hold more than `max`. Whether `s` may have them.
    fn charge(&self, s: &Session, extra: usize, max: usize) -> bool {
        s.extra.set(extra);
        let open = self.open.borrow();
        let mut total: usize = open.values().map(|o| o.extra.get()).sum();
        while total > max {
            let greediest = open.values().max_by_key(|o| o.extra.get()).expect("over the budget: someone holds bytes");
            total -= greediest.extra.replace(0);
            greediest.close();
            if std::ptr::eq(&**greediest, s) {
                return false;
            }
            tracing::debug!(addr = %greediest.addr, "closed the client holding the most bytes of incomplete requests");
        }
        true
    }
}

/// Accepts sessions from the listener while the member runs.
pub(super) async fn serve(weak: Weak<Inner>) {
    loop {
        // (The group aborts this task when it stops.)
        let Some(inner) = weak.upgrade() else { return };
        let s = inner.acceptor.next_session().await;
        if inner.closed.get() {
            return;
        }
        let limits = inner.settings.clients.clone();
        if inner.sessions.evict_for_newcomer(limits.max)
            && let Some(left_out) = inner.sessions.refusals.admit(std::time::Instant::now())
        {
            tracing::warn!(addr = %s.addr, max = limits.max, left_out, "too many client sessions: closed the one silent longest");
        }
        // Counted at once (not when its task first runs): the next newcomer sees it.
        let TcpSession { stream, addr, early, identity } = s;
        let session = Rc::new(Session {
            stream,
            addr,
            out: RefCell::new(Vec::new()),
            writer: RefCell::new(None),
            closed: Cell::new(false),
            in_flight: Cell::new(0),
            queued_max: limits.queued_bytes_max,
            extra: Cell::new(0),
            active: Cell::new(std::time::Instant::now()),
            identity: identity.map(Rc::from),
        });
        let id = inner.sessions.next.get();
        inner.sessions.next.set(id + 1);
        inner.sessions.open.borrow_mut().insert(id, session.clone());
        drop(spawn(run_session(weak.clone(), session, id, early, limits)));
    }
}

async fn run_session(weak: Weak<Inner>, session: Rc<Session>, id: u64, early: Vec<u8>, limits: ClientLimits) {
    tracing::debug!(addr = %session.addr, "a client connected");
    let writer = spawn(write_loop(session.clone()));
    let why = read_loop(&weak, &session, early, &limits).await;
    tracing::debug!(addr = %session.addr, %why, "a client's session ended");
    session.close();
    drop(writer);
    if let Some(inner) = weak.upgrade() {
        inner.sessions.open.borrow_mut().remove(&id);
    }
}

/// Writes what is queued, in batches, until the session closes.
async fn write_loop(s: Rc<Session>) {
    let mut buf = Vec::new();
    loop {
        poll_fn(|cx| {
            if s.closed.get() || !s.out.borrow().is_empty() {
                return Poll::Ready(());
            }
            *s.writer.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if s.closed.get() {
            let _ = time::timeout(Duration::from_secs(1), s.stream.close_write()).await;
            s.stream.shutdown();
            return;
        }
        std::mem::swap(&mut buf, &mut *s.out.borrow_mut());
        match s.stream.send_all(std::mem::take(&mut buf)).await {
            Ok(b) => {
                buf = b;
                buf.clear();
            }
            Err(e) => {
                tracing::debug!(addr = %s.addr, error = %e, "a client's connection failed");
                s.close();
                return;
            }
        }
    }
}

/// Reads requests until the client leaves, breaks the protocol or falls silent; says why.
async fn read_loop(weak: &Weak<Inner>, s: &Rc<Session>, early: Vec<u8>, limits: &ClientLimits) -> String {
    let frames = Frames::new(limits.frame_max);
    // The acceptor may have read more than a buffer's worth behind the hello.
    let mut buf = AlignedBuf::zeroed(READ_BUF_LEN.max(early.len()));
    buf.spare_full()[..early.len()].copy_from_slice(&early);
    let (mut start, mut end) = (0, early.len());
    loop {
        loop {
            match frames.next(&buf.spare_full()[start..end]) {
                Ok(Next::Frame { body }) => {
                    let Some(inner) = weak.upgrade() else { return "the member closed".into() };
                    let range = start + body.start..start + body.end;
                    start += body.end;
                    if let Err(why) = handle(&inner, s, &buf.spare_full()[range]) {
                        tracing::warn!(addr = %s.addr, %why, "closed a client that broke the protocol");
                        return why;
                    }
                }
                Ok(Next::Need(n)) => {
                    if start > 0 {
                        buf.spare_full().copy_within(start..end, 0);
                        end -= start;
                        start = 0;
                    }
                    if n > buf.capacity() {
                        let len = n.next_multiple_of(READ_BUF_LEN);
                        let Some(inner) = weak.upgrade() else { return "the member closed".into() };
                        if !inner.sessions.charge(s, len - READ_BUF_LEN, limits.buffered_bytes_max) {
                            return format!(
                                "a request of {n} bytes while the member holds too many bytes of incomplete requests"
                            );
                        }
                        let mut bigger = AlignedBuf::zeroed(len);
                        bigger.spare_full()[..end].copy_from_slice(&buf.spare_full()[..end]);
                        buf = bigger;
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(addr = %s.addr, error = %e, "closed a client that sent a bad frame");
                    return format!("a bad frame: {e}");
                }
            }
        }
        if s.closed.get() {
            return "closed".into();
        }
        if start == end && buf.capacity() > READ_BUF_LEN {
            // A large frame is done: its buffer goes.
            buf = AlignedBuf::zeroed(READ_BUF_LEN);
            (start, end) = (0, 0);
            s.extra.set(0);
        }
        let (r, b) = match time::timeout(limits.idle, s.stream.recv(buf, end)).await {
            Ok(r) => r,
            Err(_) => return format!("silent for {:?}", limits.idle),
        };
        buf = b;
        match r {
            Ok(0) => return "the client closed the connection".into(),
            Ok(n) => {
                end += n;
                s.active.set(std::time::Instant::now());
            }
            Err(e) => return format!("receive failed: {e}"),
        }
    }
}

/// Answers one request.
fn handle(inner: &Rc<Inner>, s: &Rc<Session>, body: &[u8]) -> Result<(), String> {
    let request = Request::decode(body).map_err(|e| e.to_string())?;
    match request {
        Request::Ping { req } => s.push(|out| Response::Pong { req }.encode(out)),
        Request::View { req } => {
            let view = {
                let m = inner.member.try_borrow().map_err(|_| "the member is busy".to_string());
                m.ok().and_then(|m| {
                    let node = m.node()?;
                    let v = node.view();
                    Some(ClientView {
                        id: v.id,
                        members: node.addresses(),
                        shards: v.shards.iter().map(|sh| (sh.id, sh.members.clone())).collect(),
                        inadequate: inner.published.borrow().inadequate.clone(),
                    })
                })
            };
            match view {
                Some(view) => s.push(|out| Response::View { req, view }.encode(out)),
                // Not in a view yet (joining, restarting): the client asks another member.
                None => s.push(|out| {
                    encode_reply(
                        out,
                        req,
                        Outcome::Err { kind: RemoteKind::Stopped, reason: "this member has no view" },
                    )
                }),
            }
        }
        Request::Subscribe { req, topic } => {
            let refused = {
                let mut topics = inner.sessions.topics.borrow_mut();
                // Topics whose subscribers are all gone make room.
                topics.retain(|_, list| {
                    list.retain(|w| w.upgrade().is_some_and(|s| !s.closed.get()));
                    !list.is_empty()
                });
                if topic.len() > TOPIC_LEN_MAX {
                    Some(format!("a topic name longer than {TOPIC_LEN_MAX} bytes"))
                } else if topics.len() >= TOPICS_MAX && !topics.contains_key(topic) {
                    Some(format!("too many notification topics ({TOPICS_MAX})"))
                } else {
                    let list = topics.entry(topic.to_string()).or_default();
                    if list.len() >= SUBSCRIBERS_MAX {
                        Some(format!("too many subscribers of {topic:?}"))
                    } else {
                        list.push(Rc::downgrade(s));
                        None
                    }
                }
            };
            match refused {
                None => s.push(|out| Response::Subscribed { req }.encode(out)),
                Some(reason) => {
                    s.push(|out| encode_reply(out, req, Outcome::Err { kind: RemoteKind::Overloaded, reason: &reason }))
                }
            }
        }
        Request::Call(call) => {
            let req = call.req;
            let refuse = |kind: RemoteKind, reason: &str| {
                s.push(|out| encode_reply(out, req, Outcome::Err { kind, reason }));
            };
            if call.to.is_some_and(|n| Some(n) != Some(inner.settings.me)) {
                refuse(RemoteKind::NoReplica, &format!("this member is {}", inner.settings.me));
                return Ok(());
            }
            if s.in_flight.get() >= inner.settings.clients.in_flight_max {
                refuse(RemoteKind::Overloaded, "too many calls under way on this connection");
                return Ok(());
            }
            let ordered = call.kind == derecho_wire::client::CallKind::Ordered;
            let mut flags = 0;
            if call.flags & derecho_wire::client::FLAG_ACK_PERSISTED != 0 {
                flags |= FLAG_ACK_PERSISTED;
            }
            if call.flags & derecho_wire::client::FLAG_ACK_APPLIED != 0 {
                flags |= FLAG_ACK_APPLIED;
            }
            let prefix_len = if ordered { crate::rpc::SESSION_PREFIX_LEN } else { 0 };
            let header = Header {
                kind: if ordered { Kind::Ordered } else { Kind::Query },
                shard: call.shard,
                method: call.method,
                caller: crate::rpc::EXTERNAL,
                call: req,
                version: Version::from_u64(call.fingerprint),
                flags: flags | if ordered { FLAG_SESSION } else { 0 },
            };
            let mut request = rkyv::util::AlignedVec::<16>::with_capacity(HEADER_LEN + prefix_len + call.args.len());
            request.resize(HEADER_LEN + prefix_len, 0);
            header.write(&mut request);
            if ordered {
                let t = call.session;
                crate::rpc::write_session_prefix(
                    &mut request[HEADER_LEN..],
                    t.client,
                    t.seq,
                    t.answered_below,
                    call.flags & derecho_wire::client::FLAG_RETRY != 0,
                );
            }
            request.extend_from_slice(call.args);
            let identity = s.identity.clone();
            match crate::rpc::with_external_identity(identity, || inner.upcall(|app| app.external(&request))).flatten()
            {
                None => refuse(RemoteKind::Other, "this member serves no external calls"),
                Some(State::Ready(answer)) => answer_call(s, req, ordered, &answer),
                Some(State::Later(f)) => {
                    s.in_flight.set(s.in_flight.get() + 1);
                    let s = s.clone();
                    drop(spawn(async move {
                        let answer = f.await;
                        s.in_flight.set(s.in_flight.get() - 1);
                        answer_call(&s, req, ordered, &answer);
                    }));
                }
            }
        }
    }
    Ok(())
}

/// Sends an application's answer (1, for an ordered call the version, the archived reply; or
/// 0, the kind of error, its text) as a reply frame.
fn answer_call(s: &Session, req: u64, ordered: bool, answer: &[u8]) {
    let outcome = match answer.split_first() {
        Some((1, rest)) if !ordered => Outcome::Ok { version: Version::from_u64(0), reply: rest },
        Some((1, rest)) if rest.len() >= 8 => Outcome::Ok {
            version: Version::from_u64(u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"))),
            reply: &rest[8..],
        },
        Some((0, rest)) => {
            let (kind, reason) = RemoteKind::read(rest);
            s.push(|out| encode_reply(out, req, Outcome::Err { kind, reason: &reason }));
            return;
        }
        _ => Outcome::Err { kind: RemoteKind::Other, reason: "the member's answer is malformed" },
    };
    s.push(|out| encode_reply(out, req, outcome));
}
