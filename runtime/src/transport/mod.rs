//! Transports: how members reach each other.
//!
//! Every transport offers the same two primitives (ARCHITECTURE.md):
//!
//! * **push**: copy a byte range of a local [`Region`] into the same range of a peer's replica of
//!   that region. Pushes to one peer are applied in the order they were issued, so a counter
//!   pushed after its data is never seen before the data. Receivers discover pushes by reading
//!   the region (Derecho's SST is polled, not notified).
//! * **frames**: length-delimited messages to one peer, delivered in order as
//!   [`TransportEvent::Frame`], in buffers aligned to [`crate::buf::BUF_ALIGN`].
//!
//! A frame sent after a push reaches the peer after the push is visible there.
//!
//! A peer that fails (connection closed or reset, process gone, silent past the timeout, or
//! sending bytes that break the wire rules) is reported once as [`TransportEvent::PeerFailed`];
//! nothing panics on foreign bytes.
//!
//! The shape fits a verbs (RDMA) backend: regions are registered before use (as memory regions
//! are), pushes are one-sided writes issued without waiting, receivers poll memory, and frames are
//! sends whose buffers the transport owns until they complete.
//!
//! # Layout
//!
//! * [`region`]: registered regions and the atomic copies that read and write them.
//! * [`frame`]: the TCP wire header (magic, version, kind, length, checksum) and its validation.
//! * [`tcp`]: a mesh of io_uring TCP connections; pushes travel as frames.
//! * [`shm`]: shared memory in `/dev/shm` between processes of one host.

pub use derecho_wire::frame;
pub mod region;
pub mod shm;
pub mod tcp;

use std::fmt;
use std::future::Future;
use std::io;
use std::ops::{Deref, Range};
use std::rc::Rc;
use std::time::Duration;

pub use frame::FrameError;
pub use region::Region;

use crate::buf::AlignedBuf;
use crate::net::IoBuf;

/// A peer of a transport. The runtime knows nothing of Derecho node ids; the driver maps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u32);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

/// Identifies a registered region (the same id names the replicas at every peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u16);

/// A received frame: the body, 16-byte aligned (rkyv validates archived bytes in place).
///
/// On TCP the body sits in a pooled buffer; on shared memory it is read in place from the ring
/// (zero copy) and the ring space is released when the frame is dropped, so a frame held for a
/// long time holds back its sender: keep frames briefly, or take the bytes with
/// [`Frame::into_buf`]. Frames stay on the executor thread that received them.
pub struct Frame {
    body: FrameBody,
}

enum FrameBody {
    Pooled(crate::buf::PooledBuf),
    Ring(shm::RingFrame),
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.body {
            FrameBody::Pooled(_) => "pooled",
            FrameBody::Ring(_) => "in ring",
        };
        f.debug_struct("Frame").field("len", &self.len()).field("body", &kind).finish()
    }
}

impl Frame {
    pub(crate) fn pooled(buf: crate::buf::PooledBuf) -> Self {
        Self { body: FrameBody::Pooled(buf) }
    }

    pub(crate) fn ring(f: shm::RingFrame) -> Self {
        Self { body: FrameBody::Ring(f) }
    }

    /// Takes the bytes as an owned buffer (a copy for frames read in place).
    pub fn into_buf(self) -> AlignedBuf {
        match self.body {
            FrameBody::Pooled(b) => b.into_inner(),
            FrameBody::Ring(r) => AlignedBuf::from_slice(r.bytes()),
        }
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.body {
            FrameBody::Pooled(b) => b,
            FrameBody::Ring(r) => r.bytes(),
        }
    }
}

/// The bytes of a frame to send. Cheap to clone, so one payload can go to many peers.
#[derive(Clone, Debug)]
pub enum Payload {
    /// Owned bytes.
    Vec(Rc<Vec<u8>>),
    /// An aligned buffer.
    Aligned(Rc<AlignedBuf>),
    /// Static bytes.
    Static(&'static [u8]),
}

impl Payload {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Vec(v) => v,
            Payload::Aligned(b) => b,
            Payload::Static(s) => s,
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Vec(Rc::new(v))
    }
}
impl From<AlignedBuf> for Payload {
    fn from(b: AlignedBuf) -> Self {
        Payload::Aligned(Rc::new(b))
    }
}
impl From<&'static [u8]> for Payload {
    fn from(s: &'static [u8]) -> Self {
        Payload::Static(s)
    }
}
impl<const N: usize> From<&'static [u8; N]> for Payload {
    fn from(s: &'static [u8; N]) -> Self {
        Payload::Static(s)
    }
}

// SAFETY: every variant is heap memory kept alive by an `Rc` (or static); moving the payload moves
// only the pointer.
unsafe impl IoBuf for Payload {
    fn stable_ptr(&self) -> *const u8 {
        self.as_bytes().as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}

/// Something a transport reports.
#[derive(Debug)]
pub enum TransportEvent {
    /// A frame arrived.
    Frame {
        /// The sender.
        from: PeerId,
        /// The body.
        frame: Frame,
    },
    /// A peer failed; nothing more will arrive from it, and sends to it fail.
    PeerFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: PeerFailure,
    },
}

/// Why a peer was declared failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFailure {
    /// The peer closed the connection or its transport.
    #[error("the peer closed the connection")]
    Closed,
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    /// Nothing arrived from the peer for longer than the peer timeout.
    #[error("no sign of life for {0:?}")]
    Silent(Duration),
    /// The peer process exited (shared memory).
    #[error("the peer process exited")]
    ProcessExited,
    /// The peer sent bytes that break the wire rules; its connection was dropped.
    #[error("protocol violation: {0}")]
    Protocol(#[from] FrameError),
    /// This side closed the transport.
    #[error("the local transport was closed")]
    LocalClose,
}

/// Errors of transport operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is not part of this transport.
    #[error("{0} is not a peer of this transport")]
    UnknownPeer(PeerId),
    /// The peer has failed (see the [`TransportEvent::PeerFailed`] event for why).
    #[error("{0} has failed")]
    PeerFailed(PeerId),
    /// A frame longer than the configured maximum.
    #[error("frame of {len} bytes is above the maximum frame length {max}")]
    FrameTooLong {
        /// The frame's length.
        len: usize,
        /// The maximum (`max_frame_len`).
        max: usize,
    },
    /// The region is not registered.
    #[error("region {0:?} is not registered")]
    UnknownRegion(RegionId),
    /// The region is already registered.
    #[error("region {0:?} is already registered")]
    RegionExists(RegionId),
    /// The peer has not registered the region yet (shared memory).
    #[error("{peer} has not registered region {region:?} yet")]
    RegionNotReady {
        /// The peer.
        peer: PeerId,
        /// The region.
        region: RegionId,
    },
    /// A push range outside the region.
    #[error("range {start}..{end} is outside region {region:?} of {len} bytes")]
    OutOfBounds {
        /// The region.
        region: RegionId,
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
        /// Length of the region.
        len: usize,
    },
    /// Not every peer could be reached in time.
    #[error("timed out after {after:?} connecting; peers not connected: {missing:?}")]
    ConnectTimeout {
        /// How long it waited.
        after: Duration,
        /// The peers that did not connect.
        missing: Vec<PeerId>,
    },
    /// A peer answered the handshake wrongly (wrong id, version or group).
    #[error("handshake with {addr} failed: {reason}")]
    Handshake {
        /// Who.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The configuration is invalid; the message names the field.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// Setting up the transport failed (binding, creating shared-memory files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The transport was closed.
    #[error("the transport is closed")]
    Closed,
    /// A push found the peer's queue at `send_queue_len_max`: the peer is not reading. Retry
    /// later; the peer will be failed if it stays silent.
    #[error("the queue to {peer} is full ({queued} bytes)")]
    QueueFull {
        /// The peer.
        peer: PeerId,
        /// Bytes queued to it.
        queued: usize,
    },
}

/// Limits and timings shared by every transport. Every field has a default
/// ([`TransportLimits::default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// Largest frame body accepted or sent, in bytes. Checked before any allocation.
    /// Default 4 MiB.
    pub max_frame_len: usize,
    /// How often a live peer is told we are alive when nothing else is sent. Default 100 ms.
    pub heartbeat_interval: Duration,
    /// A peer from which nothing arrives for this long is failed. Default 2 s.
    pub peer_timeout: Duration,
    /// How long to wait for every peer at start-up. Default 30 s.
    pub connect_timeout: Duration,
    /// Bytes of frames queued for one peer before `send_frame` waits. Default 64 MiB.
    pub send_queue_len_max: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_frame_len: 4 << 20,
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(30),
            send_queue_len_max: 64 << 20,
        }
    }
}

impl TransportLimits {
    /// Checks the limits, naming the field at fault.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`].
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |m: &str| Err(TransportError::Config(m.to_string()));
        if self.max_frame_len == 0 || self.max_frame_len > u32::MAX as usize {
            return bad("max_frame_len must be between 1 and 4294967295");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat_interval must be above zero");
        }
        if self.peer_timeout <= self.heartbeat_interval {
            return bad("peer_timeout must be longer than heartbeat_interval");
        }
        if self.send_queue_len_max < self.max_frame_len {
            return bad("send_queue_len_max must be at least max_frame_len");
        }
        Ok(())
    }
}

/// What every transport offers (see the module docs for the guarantees).
///
/// All methods are called on the executor thread that created the transport.
pub trait Transport {
    /// This side's id.
    fn me(&self) -> PeerId;

    /// The other peers, in id order.
    fn peers(&self) -> &[PeerId];

    /// The largest frame body this transport sends or accepts.
    fn max_frame_len(&self) -> usize;

    /// Registers a zeroed region of `len` bytes. Every peer must register it before anyone
    /// pushes to it.
    ///
    /// # Errors
    ///
    /// [`TransportError::RegionExists`], or an I/O error creating its memory.
    fn register_region(&self, id: RegionId, len: usize) -> Result<Rc<Region>, TransportError>;

    /// A registered region.
    fn region(&self, id: RegionId) -> Option<Rc<Region>>;

    /// Copies `range` of this side's region into the peer's replica. Does not wait.
    ///
    /// # Errors
    ///
    /// Unknown peer or region, a range out of bounds, a failed peer, or (shared memory) a peer
    /// that has not registered the region.
    fn push(&self, to: PeerId, region: RegionId, range: Range<usize>) -> Result<(), TransportError>;

    /// Pushes `range` to every peer that has not failed; returns how many it was pushed to.
    ///
    /// # Errors
    ///
    /// As [`Transport::push`], except that failed peers are skipped.
    fn push_all(&self, region: RegionId, range: Range<usize>) -> Result<usize, TransportError> {
        let mut n = 0;
        for &p in self.peers() {
            match self.push(p, region, range.clone()) {
                Ok(()) => n += 1,
                Err(TransportError::PeerFailed(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Pushes `range` to each peer of `to`, reading the bytes once where the transport can share
    /// them between peers (TCP builds one frame for all). Every peer is tried; the errors of
    /// those that failed are appended to `errors`. TCP appends an error about the region itself
    /// (unknown, range out of bounds, too long) once, with the first peer; this default
    /// implementation appends it for every peer.
    fn push_many(
        &self,
        to: &[PeerId],
        region: RegionId,
        range: Range<usize>,
        errors: &mut Vec<(PeerId, TransportError)>,
    ) {
        for &p in to {
            if let Err(e) = self.push(p, region, range.clone()) {
                errors.push((p, e));
            }
        }
    }

    /// Sends a frame, waiting while the peer's queue (or ring) is full.
    ///
    /// # Errors
    ///
    /// Unknown or failed peer, a frame above the maximum, a closed transport.
    fn send_frame(&self, to: PeerId, body: Payload) -> impl Future<Output = Result<(), TransportError>>;

    /// The next event, waiting for one. A transport has a single consumer of events: one task
    /// at a time may wait here.
    fn next_event(&self) -> impl Future<Output = TransportEvent>;

    /// The next event if one is ready.
    fn try_next_event(&self) -> Option<TransportEvent>;
}

/// Either transport, chosen at run time (the trait's async methods make it unusable as a trait
/// object; this enum is the dynamic choice, with static dispatch inside).
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyTransport {
    /// TCP.
    Tcp(tcp::TcpTransport),
    /// Shared memory.
    Shm(shm::ShmTransport),
}

macro_rules! delegate {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            AnyTransport::Tcp($t) => $e,
            AnyTransport::Shm($t) => $e,
        }
    };
}

impl AnyTransport {
    /// Closes gracefully: frames already queued leave first (TCP waits at most `linger` for
    /// them; shared memory has nothing queued outside the rings). Peers see
    /// [`PeerFailure::Closed`].
    pub async fn close(&self, linger: Duration) {
        match self {
            AnyTransport::Tcp(t) => t.close(linger).await,
            AnyTransport::Shm(t) => t.close(),
        }
    }

    /// When `peer` last showed a sign of life; `None` for an unknown or failed peer. TCP counts
    /// every byte received; shared memory looks at heartbeats and ring traffic once per
    /// heartbeat interval.
    pub fn last_heard(&self, peer: PeerId) -> Option<std::time::Instant> {
        match self {
            AnyTransport::Tcp(t) => t.last_heard(peer),
            AnyTransport::Shm(t) => t.last_heard(peer),
        }
    }

    /// Confines `peer`'s pushes into `region` to `range` (see
    /// [`tcp::TcpTransport::confine_pushes`]). Over shared memory peers store into the region
    /// directly, so nothing can be enforced: a same-host trust assumption, and a no-op here.
    pub fn confine_pushes(&self, region: RegionId, peer: PeerId, range: Range<usize>) {
        if let AnyTransport::Tcp(t) = self {
            t.confine_pushes(region, peer, range);
        }
    }
}

impl Transport for AnyTransport {
    fn me(&self) -> PeerId {
        delegate!(self, t => t.me())
    }
    fn peers(&self) -> &[PeerId] {
        delegate!(self, t => t.peers())
    }
    fn max_frame_len(&self) -> usize {
        delegate!(self, t => t.max_frame_len())
    }
    fn register_region(&self, id: RegionId, len: usize) -> Result<Rc<Region>, TransportError> {
        delegate!(self, t => t.register_region(id, len))
    }
    fn region(&self, id: RegionId) -> Option<Rc<Region>> {
        delegate!(self, t => t.region(id))
    }
    fn push(&self, to: PeerId, region: RegionId, range: Range<usize>) -> Result<(), TransportError> {
        delegate!(self, t => t.push(to, region, range))
    }
    fn push_many(
        &self,
        to: &[PeerId],
        region: RegionId,
        range: Range<usize>,
        errors: &mut Vec<(PeerId, TransportError)>,
    ) {
        delegate!(self, t => t.push_many(to, region, range, errors))
    }
    async fn send_frame(&self, to: PeerId, body: Payload) -> Result<(), TransportError> {
        delegate!(self, t => t.send_frame(to, body).await)
    }
    async fn next_event(&self) -> TransportEvent {
        delegate!(self, t => t.next_event().await)
    }
    fn try_next_event(&self) -> Option<TransportEvent> {
        delegate!(self, t => t.try_next_event())
    }
}

/// Checks that `range` lies inside a region of `len` bytes.
pub(crate) fn check_range(region: RegionId, range: &Range<usize>, len: usize) -> Result<(), TransportError> {
    if range.start > range.end || range.end > len {
        return Err(TransportError::OutOfBounds { region, start: range.start, end: range.end, len });
    }
    Ok(())
}

/// Frames waiting in a transport's event queue beyond which receiving pauses (TCP stops reading
/// the socket, shared memory stops draining rings) until the application catches up: memory stays
/// bounded and the senders feel backpressure.
pub(crate) const EVENTS_QUEUED_MAX: usize = 4096;
/// Bytes of frames waiting in a transport's event queue beyond which receiving pauses likewise.
pub(crate) const EVENTS_QUEUED_LEN_MAX: usize = 64 << 20;

/// The queue of events of one transport, with the waker of its (single) consumer.
#[derive(Default)]
pub(crate) struct EventQueue {
    events: std::cell::RefCell<std::collections::VecDeque<TransportEvent>>,
    /// Bytes of the frames queued.
    queued_len: std::cell::Cell<usize>,
    waker: std::cell::RefCell<Option<std::task::Waker>>,
    room_wakers: std::cell::RefCell<Vec<std::task::Waker>>,
    /// Set while the transport closes: frames are dropped on arrival and receiving never pauses.
    dropping_frames: std::cell::Cell<bool>,
}

impl EventQueue {
    pub(crate) fn push(&self, e: TransportEvent) {
        if let TransportEvent::Frame { frame, .. } = &e {
            if self.dropping_frames.get() {
                return;
            }
            self.queued_len.set(self.queued_len.get() + frame.len());
        }
        self.events.borrow_mut().push_back(e);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.events.borrow().len()
    }

    pub(crate) fn has_room(&self) -> bool {
        self.dropping_frames.get() || (self.len() < EVENTS_QUEUED_MAX && self.queued_len.get() < EVENTS_QUEUED_LEN_MAX)
    }

    /// From now on, frames that arrive are dropped (the transport is closing and nobody will read
    /// them), so that receiving never pauses for room; paused receivers resume.
    pub(crate) fn drop_frames_from_now(&self) {
        self.dropping_frames.set(true);
        for w in self.room_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until the queue has room for more frames.
    pub(crate) async fn wait_room(&self) {
        std::future::poll_fn(|cx| {
            if self.has_room() {
                return std::task::Poll::Ready(());
            }
            self.room_wakers.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }

    pub(crate) fn try_pop(&self) -> Option<TransportEvent> {
        let e = self.events.borrow_mut().pop_front();
        if let Some(TransportEvent::Frame { frame, .. }) = &e {
            self.queued_len.set(self.queued_len.get() - frame.len());
        }
        if e.is_some() && !self.room_wakers.borrow().is_empty() && self.has_room() {
            for w in self.room_wakers.borrow_mut().drain(..) {
                w.wake();
            }
        }
        e
    }

    pub(crate) async fn pop(&self) -> TransportEvent {
        std::future::poll_fn(|cx| {
            if !self.events.borrow().is_empty() && crate::executor::poll_coop(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            if let Some(e) = self.try_pop() {
                return std::task::Poll::Ready(e);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_bad_field() {
        let l = TransportLimits { peer_timeout: Duration::from_millis(10), ..Default::default() };
        let e = l.validate().unwrap_err().to_string();
        assert!(e.contains("peer_timeout"), "{e}");
        let l = TransportLimits { max_frame_len: 0, ..Default::default() };
        assert!(l.validate().unwrap_err().to_string().contains("max_frame_len"));
        TransportLimits::default().validate().unwrap();
    }
}
