//! The shared-memory transport: processes of one host exchanging pushes and frames through files
//! in `/dev/shm`.
//!
//! Each peer creates, for itself, in `dir` (default `/dev/shm`):
//!
//! * a **control block** `derecho-{ns}-{id}.ctl`: magic, state, pid, a per-run nonce, a heartbeat
//!   counter, and a **doorbell**: a futex word that other peers bump after every push or frame,
//!   and wake when this peer sleeps;
//! * one **ring** per sender, `derecho-{ns}-{from}-to-{id}.ring`: a single-producer byte ring of
//!   16-byte aligned records (`len: u32, kind: u32`, then the body) carrying frames;
//! * one file per **region**, `derecho-{ns}-{id}.r{region}`, which peers map and write into
//!   directly: a push is a copy into the peer's mapping, words stored after a release fence.
//!
//! Files are created under a temporary name and renamed into place once initialised, so a peer
//! never maps a half-written file, and a run replaces files a crashed run left behind. A peer
//! accepts another's files only if the control block says `ready`, names a live process and
//! carries the same nonce as the files. Files are removed when the transport is dropped.
//!
//! Every file is created with mode 0600 and `O_EXCL`, and a file is mapped only if it belongs to
//! this user, is open to no other user and has one name: in a directory every user may write
//! into, another user could otherwise make a file first under a name a peer will use, and read
//! or write what travels through it.
//!
//! Receiving happens in a [poll hook](crate::PollHook): every loop iteration it drains the rings
//! into [`TransportEvent::Frame`]s. Before the executor parks, the hook marks this peer asleep
//! and arms an io_uring futex wait on its doorbell; a sender that sees the mark wakes it (one
//! `FUTEX_WAKE` per sleep). A spinning executor never makes a system call to receive.
//!
//! Peer death is noticed through a pidfd (process exit), the control block's state (graceful
//! close) and the heartbeat counter (a stopped or hung process).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};

use super::region::{Region, copy_shared_to_shared};
use super::{
    EventQueue, Frame, FrameError, Payload, PeerFailure, PeerId, RegionId, Transport, TransportError, TransportEvent,
    TransportLimits, check_range,
};
use crate::executor::{HookId, JoinHandle, Park, PollHook, add_poll_hook, disarm_futex, remove_poll_hook, spawn};
use crate::time;

const CTL_MAGIC: u64 = u64::from_le_bytes(*b"DRECSHMC");
const RING_MAGIC: u64 = u64::from_le_bytes(*b"DRECSHMR");
const REGION_MAGIC: u64 = u64::from_le_bytes(*b"DRECSHMG");
const SHM_VERSION: u32 = 1;
const CTL_LEN: usize = 4096;
const RING_DATA_OFFSET: usize = 256;
const REGION_DATA_OFFSET: usize = 64;
const RECORD_HEADER: usize = 16;
const KIND_FRAME: u32 = 1;
const KIND_PAD: u32 = 2;
const STATE_READY: u32 = 1;
const STATE_CLOSED: u32 = 2;
/// How long an idle receiver sleeps between looks at its rings when the kernel cannot wake it
/// through a futex (io_uring futex waits need Linux 6.7).
const FUTEXLESS_PARK: Duration = Duration::from_micros(200);

/// The control block at the start of a `.ctl` file.
#[repr(C, align(64))]
struct Ctl {
    magic: AtomicU64,
    version: AtomicU32,
    state: AtomicU32,
    pid: AtomicU32,
    _pad0: u32,
    nonce: AtomicU64,
    heartbeat: AtomicU64,
    _pad1: [u64; 3],
    /// Bumped by senders after each push or frame; the futex word a sleeping owner waits on.
    doorbell: AtomicU32,
    /// 1 while the owner is about to sleep or sleeping.
    sleeping: AtomicU32,
}

/// The header of a `.ring` file; the data follows at `RING_DATA_OFFSET`.
#[repr(C, align(64))]
struct RingHeader {
    magic: AtomicU64,
    nonce: AtomicU64,
    capacity: AtomicU64,
    _pad0: [u64; 5],
    /// Consumer position (bytes consumed, monotonic).
    head: AtomicU64,
    /// 1 when the producer waits for space.
    producer_waiting: AtomicU32,
    /// 1 once the producer has opened the ring (the second half of the connect barrier).
    producer_attached: AtomicU32,
    _pad1: [u32; 12],
    /// Producer position (bytes produced, monotonic).
    tail: AtomicU64,
}

/// The header of a region file.
#[repr(C, align(64))]
struct RegionHeader {
    magic: AtomicU64,
    nonce: AtomicU64,
    len: AtomicU64,
}

const _: () = assert!(size_of::<Ctl>() <= CTL_LEN);
const _: () = assert!(size_of::<RingHeader>() <= RING_DATA_OFFSET);
const _: () = assert!(size_of::<RegionHeader>() <= REGION_DATA_OFFSET);

/// Configuration of a [`ShmTransport`].
#[derive(Clone, Debug)]
pub struct ShmConfig {
    /// This side's id.
    pub me: PeerId,
    /// The other peers.
    pub peers: Vec<PeerId>,
    /// Names this group's files; every peer uses the same one. Letters, digits, `_`, `.`, `-`;
    /// at most 64 characters.
    pub namespace: String,
    /// Where the files live. Default `/dev/shm`.
    pub dir: PathBuf,
    /// Bytes of each incoming ring; at least twice the largest record
    /// (`2 * (max_frame_len + 32)`), a multiple of 64. Default 16 MiB.
    pub ring_len: usize,
    /// Limits and timings.
    pub limits: TransportLimits,
    /// Regions created before this side announces itself ready: once connected, every peer's
    /// copy of them exists, so pushes into them can start at once (no barrier of their own).
    /// Taken with [`Transport::region`].
    pub regions: Vec<(RegionId, usize)>,
}

impl ShmConfig {
    /// A configuration with defaults.
    pub fn new(me: PeerId, peers: Vec<PeerId>, namespace: impl Into<String>) -> Self {
        Self {
            me,
            peers,
            namespace: namespace.into(),
            dir: PathBuf::from("/dev/shm"),
            ring_len: 16 << 20,
            limits: TransportLimits::default(),
            regions: Vec::new(),
        }
    }

    /// The smallest valid ring length for frames of up to `max_frame_len` bytes, or `at_least`
    /// if that is larger (rounded up to a multiple of 64).
    pub fn ring_len_for(max_frame_len: usize, at_least: usize) -> usize {
        (2 * (RECORD_HEADER + round16(max_frame_len))).max(at_least).next_multiple_of(64)
    }

    fn validate(&self) -> Result<(), TransportError> {
        self.limits.validate()?;
        let ns = &self.namespace;
        if ns.is_empty() || ns.len() > 64 || !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(TransportError::Config(format!(
                "namespace {ns:?} must be 1 to 64 letters, digits, '_', '.' or '-'"
            )));
        }
        let record_max = RECORD_HEADER + round16(self.limits.max_frame_len);
        if !self.ring_len.is_multiple_of(64) || self.ring_len < 2 * record_max {
            return Err(TransportError::Config(format!(
                "ring_len {} must be a multiple of 64 and at least {} (twice the largest record for max_frame_len {})",
                self.ring_len,
                2 * record_max,
                self.limits.max_frame_len
            )));
        }
        let mut ids = std::collections::BTreeSet::new();
        if let Some((id, _)) = self.regions.iter().find(|(id, _)| !ids.insert(*id)) {
            return Err(TransportError::Config(format!("regions: {id:?} is listed twice")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.peers {
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

fn round16(n: usize) -> usize {
    (n + 15) & !15
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TransportError {
    let context = context.into();
    move |source| TransportError::Io { context, source }
}

fn ctl_of(map: &MmapRaw) -> &Ctl {
    assert!(map.len() >= CTL_LEN);
    // SAFETY: the mapping is page-aligned and at least CTL_LEN bytes; `Ctl` is made of atomics
    // (and padding), valid for any bit pattern, and only accessed atomically.
    unsafe { &*map.as_ptr().cast::<Ctl>() }
}

fn ring_of(map: &MmapRaw) -> &RingHeader {
    assert!(map.len() >= RING_DATA_OFFSET);
    // SAFETY: as in `ctl_of`.
    unsafe { &*map.as_ptr().cast::<RingHeader>() }
}

fn region_header_of(map: &MmapRaw) -> &RegionHeader {
    assert!(map.len() >= REGION_DATA_OFFSET);
    // SAFETY: as in `ctl_of`.
    unsafe { &*map.as_ptr().cast::<RegionHeader>() }
}

fn map_file(path: &Path, create_len: Option<usize>) -> io::Result<MmapRaw> {
    use std::os::unix::fs::OpenOptionsExt;
    // Created readable and writable by this user only: rings and tables hold the group's
    // messages, and other users of the host must neither read nor write them. A new file is
    // made with O_EXCL, so that another user's file of that name is never taken over, and no
    // file is opened through a symbolic link.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create_len.is_some())
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    owned_here(path, &f)?;
    if let Some(len) = create_len {
        f.set_len(len as u64)?;
    }
    MmapOptions::new().map_raw(&f)
}

/// Refuses a file this transport did not make for this user: one of another user (who could read
/// or write what travels through it, having made it first under a name a member would use), one
/// others may read or write, or one with other names (links).
fn owned_here(path: &Path, f: &std::fs::File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}; refusing to share memory through it", path.display()),
        ))
    };
    if !m.file_type().is_file() {
        return refuse("not a regular file".into());
    }
    if m.uid() != me {
        return refuse(format!("it belongs to user {}, not to this user ({me})", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return refuse(format!("its mode {:o} lets other users in", m.mode() & 0o777));
    }
    if m.nlink() != 1 {
        return refuse(format!("it has {} names (hard links)", m.nlink()));
    }
    Ok(())
}

thread_local! {
    /// Files refused by [`owned_here`] are logged at most ten a second per thread (they are
    /// looked for again and again while a peer is awaited).
    static REFUSED_FILES: crate::limit::LogLimiter = crate::limit::LogLimiter::default();
}

/// Maps a peer's file: `None` if it is not there (yet), or is refused (logged, rate limited).
fn map_peer_file(path: &Path) -> Option<MmapRaw> {
    match map_file(path, None) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            REFUSED_FILES.with(|l| {
                if let Some(left_out) = l.admit(Instant::now()) {
                    tracing::warn!(error = %e, left_out, "refused a shared-memory file");
                }
            });
            None
        }
        Err(_) => None,
    }
}

/// Creates `path` atomically: a temporary file is sized, mapped, initialised by `init`, then
/// renamed over `path` (replacing a stale file from a crashed run).
fn create_file(path: &Path, len: usize, init: impl FnOnce(&MmapRaw)) -> Result<MmapRaw, TransportError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let map = map_file(&tmp, Some(len)).map_err(io_err(format!("create {}", tmp.display())))?;
    init(&map);
    std::fs::rename(&tmp, path).map_err(io_err(format!("rename {} into place", path.display())))?;
    Ok(map)
}

/// Files made by a connect still under way, removed if it does not finish.
struct CreatedFiles(Vec<PathBuf>);

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn init_region(map: &MmapRaw, len: usize, nonce: u64) {
    let h = region_header_of(map);
    h.len.store(len as u64, Ordering::Relaxed);
    h.nonce.store(nonce, Ordering::Relaxed);
    h.magic.store(REGION_MAGIC, Ordering::Release);
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn new_nonce() -> u64 {
    // Not for security: it tells this run's files from a crashed run's. Mixed from the clock, the
    // pid and a stack address (so two transports in one process differ).
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ (&local as *const u8 as u64).rotate_left(17);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x | 1
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, mapped, 4-byte aligned word; the other arguments are unused.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0usize, 0usize, 0u32);
    }
}

/// Bumps a peer's doorbell and wakes it if it sleeps.
fn ring_doorbell(ctl: &Ctl) {
    ctl.doorbell.fetch_add(1, Ordering::SeqCst);
    if ctl.sleeping.load(Ordering::SeqCst) != 0 && ctl.sleeping.swap(0, Ordering::SeqCst) != 0 {
        futex_wake(&ctl.doorbell);
    }
}

/// The consumer side of one incoming ring. Frames are handed out in place; ring space is released
/// in ring order as the frames are dropped (a frame dropped early waits for those before it).
pub(crate) struct InRing {
    map: MmapRaw,
    /// The producer's control block, to ring its doorbell when it waits for space.
    producer_ctl: Rc<MmapRaw>,
    /// Published consumer position.
    head: Cell<u64>,
    /// Position up to which records have been read.
    read: Cell<u64>,
    /// Ends of records read but not released, with whether they were released.
    outstanding: RefCell<std::collections::VecDeque<(u64, bool)>>,
}

impl InRing {
    fn header(&self) -> &RingHeader {
        ring_of(&self.map)
    }

    fn release(&self, end: u64) {
        let mut out = self.outstanding.borrow_mut();
        if let Some(e) = out.iter_mut().find(|(e, _)| *e == end) {
            e.1 = true;
        }
        let mut head = self.head.get();
        while let Some(&(e, true)) = out.front() {
            head = e;
            out.pop_front();
        }
        if out.is_empty() {
            head = self.read.get();
        }
        drop(out);
        self.publish(head);
    }

    fn publish(&self, head: u64) {
        if head == self.head.get() {
            return;
        }
        self.head.set(head);
        let hdr = self.header();
        hdr.head.store(head, Ordering::Release);
        if hdr.producer_waiting.load(Ordering::SeqCst) != 0 && hdr.producer_waiting.swap(0, Ordering::SeqCst) != 0 {
            ring_doorbell(ctl_of(&self.producer_ctl));
        }
    }
}

/// A frame read in place from a ring; releases its ring space when dropped.
pub(crate) struct RingFrame {
    ring: Rc<InRing>,
    offset: usize,
    len: usize,
    end: u64,
}

impl RingFrame {
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the record `[offset, offset + len)` lies inside the mapping (checked when it was
        // read), the mapping lives as long as `self.ring`, and the producer does not write the
        // record until it is released (when `self` is dropped). A producer that breaks that rule
        // can only make these bytes change under the reader, which validates them anyway.
        unsafe { std::slice::from_raw_parts(self.ring.map.as_ptr().add(self.offset), self.len) }
    }
}

impl Drop for RingFrame {
    fn drop(&mut self) {
        self.ring.release(self.end);
    }
}

struct Peer {
    id: PeerId,
    pid: u32,
    ctl: Rc<MmapRaw>,
    /// The peer's ring that we produce into.
    out_ring: MmapRaw,
    out_tail: Cell<u64>,
    out_waiters: RefCell<Vec<Waker>>,
    out_head_seen: Cell<u64>,
    /// Our ring that the peer produces into.
    in_ring: Rc<InRing>,
    regions: RefCell<BTreeMap<RegionId, MmapRaw>>,
    failed: Cell<bool>,
    /// The peer's heartbeat counter and ring tail when last seen changing, and when.
    heartbeat_seen: Cell<(u64, u64, Instant)>,
}

impl Peer {
    fn ctl(&self) -> &Ctl {
        ctl_of(&self.ctl)
    }
}

struct Inner {
    me: PeerId,
    config: ShmConfig,
    nonce: u64,
    my_ctl: MmapRaw,
    peers: BTreeMap<PeerId, Peer>,
    peer_ids: Vec<PeerId>,
    regions: RefCell<BTreeMap<RegionId, Rc<Region>>>,
    events: EventQueue,
    closed: Cell<bool>,
    created: RefCell<Vec<PathBuf>>,
}

impl Inner {
    fn path(&self, name: &str) -> PathBuf {
        self.config.dir.join(format!("derecho-{}-{}", self.config.namespace, name))
    }

    fn my_ctl(&self) -> &Ctl {
        ctl_of(&self.my_ctl)
    }

    fn fail(&self, peer: &Peer, reason: PeerFailure) {
        if peer.failed.replace(true) {
            return;
        }
        tracing::debug!(me = %self.me, peer = %peer.id, %reason, "peer failed");
        for w in peer.out_waiters.borrow_mut().drain(..) {
            w.wake();
        }
        if !self.closed.get() {
            self.events.push(TransportEvent::PeerFailed { peer: peer.id, reason });
        }
    }

    fn live_peer(&self, id: PeerId) -> Result<&Peer, TransportError> {
        if self.closed.get() {
            return Err(TransportError::Closed);
        }
        let p = self.peers.get(&id).ok_or(TransportError::UnknownPeer(id))?;
        if p.failed.get() {
            return Err(TransportError::PeerFailed(id));
        }
        Ok(p)
    }

    /// Writes one frame record into the peer's ring if there is room.
    fn try_write(&self, peer: &Peer, body: &[u8]) -> bool {
        let hdr = ring_of(&peer.out_ring);
        let cap = self.config.ring_len as u64;
        let rec = (RECORD_HEADER + round16(body.len())) as u64;
        let mut tail = peer.out_tail.get();
        let head = hdr.head.load(Ordering::Acquire);
        if head > tail || tail - head > cap {
            // The consumer's position is foreign memory: a value no consumer could publish.
            self.fail(peer, PeerFailure::Protocol(FrameError::BadRecord { pos: head, len: tail.wrapping_sub(head) }));
            return false;
        }
        let pos = tail % cap;
        let contiguous = cap - pos;
        let pad = if rec > contiguous { contiguous } else { 0 };
        if tail - head + pad + rec > cap {
            return false;
        }
        // SAFETY: `[tail, tail + pad + rec)` is free space of the ring (checked against `head`),
        // which only this producer writes; the consumer reads it only after the release store of
        // `tail` below. Offsets stay inside the data area (`pos + rec <= cap` after padding).
        unsafe {
            let data = peer.out_ring.as_mut_ptr().add(RING_DATA_OFFSET);
            let mut pos = pos as usize;
            if pad > 0 {
                write_record_header(data.add(pos), 0, KIND_PAD);
                tail += pad;
                pos = 0;
            }
            std::ptr::copy_nonoverlapping(body.as_ptr(), data.add(pos + RECORD_HEADER), body.len());
            write_record_header(data.add(pos), body.len() as u32, KIND_FRAME);
        }
        tail += rec;
        peer.out_tail.set(tail);
        hdr.tail.store(tail, Ordering::Release);
        true
    }

    /// Reads the new records of the ring from `peer` into frame events (in place); returns the
    /// number of frames received.
    fn drain(&self, peer: &Peer) -> usize {
        let ring = &peer.in_ring;
        let hdr = ring.header();
        let cap = self.config.ring_len as u64;
        let tail = hdr.tail.load(Ordering::Acquire);
        let mut read = ring.read.get();
        let mut n = 0;
        let result = loop {
            if read == tail || !self.events.has_room() {
                break Ok(());
            }
            if tail < read || tail - ring.head.get() > cap {
                break Err(FrameError::BadRecord { pos: read, len: tail.wrapping_sub(read) });
            }
            let pos = read % cap;
            // SAFETY: `pos + 16 <= cap` (records are 16-aligned and cap is a multiple of 64), the
            // record was published by the producer's release store of `tail`, and the producer
            // does not write `[head, tail)` until we advance `head`.
            let (len, kind) = unsafe { read_record_header(ring.map.as_ptr().add(RING_DATA_OFFSET + pos as usize)) };
            let rec = match kind {
                KIND_PAD => cap - pos,
                KIND_FRAME if (len as usize) <= self.config.limits.max_frame_len => {
                    (RECORD_HEADER + round16(len as usize)) as u64
                }
                KIND_FRAME => {
                    break Err(FrameError::TooLong { len: len as usize, max: self.config.limits.max_frame_len });
                }
                _ => break Err(FrameError::BadRecord { pos: read, len: u64::from(len) }),
            };
            if pos + rec > cap || read + rec > tail {
                break Err(FrameError::BadRecord { pos: read, len: rec });
            }
            read += rec;
            ring.read.set(read);
            if kind == KIND_FRAME {
                ring.outstanding.borrow_mut().push_back((read, false));
                let frame = RingFrame {
                    ring: ring.clone(),
                    offset: RING_DATA_OFFSET + pos as usize + RECORD_HEADER,
                    len: len as usize,
                    end: read,
                };
                self.events.push(TransportEvent::Frame { from: peer.id, frame: Frame::ring(frame) });
                n += 1;
            } else if ring.outstanding.borrow().is_empty() {
                ring.publish(read);
            } else {
                ring.outstanding.borrow_mut().push_back((read, true));
            }
        };
        if let Err(e) = result {
            self.fail(peer, PeerFailure::Protocol(e));
        }
        n
    }

    /// Whether every record the peer published has been read.
    fn fully_drained(&self, peer: &Peer) -> bool {
        peer.in_ring.read.get() == peer.in_ring.header().tail.load(Ordering::Acquire)
    }

    fn peer_region(&self, peer: &Peer, id: RegionId, len: usize) -> Result<*mut u8, TransportError> {
        let mut regions = peer.regions.borrow_mut();
        if let Some(m) = regions.get(&id) {
            // SAFETY: the mapping holds REGION_DATA_OFFSET + len bytes (checked when opened).
            return Ok(unsafe { m.as_mut_ptr().add(REGION_DATA_OFFSET) });
        }
        let path = self.path(&format!("{}.r{}", peer.id.0, id.0));
        let not_ready = || TransportError::RegionNotReady { peer: peer.id, region: id };
        let map = map_peer_file(&path).ok_or_else(not_ready)?;
        if map.len() < REGION_DATA_OFFSET + len {
            return Err(not_ready());
        }
        let h = region_header_of(&map);
        let peer_nonce = peer.ctl().nonce.load(Ordering::Acquire);
        if h.magic.load(Ordering::Acquire) != REGION_MAGIC
            || h.nonce.load(Ordering::Acquire) != peer_nonce
            || h.len.load(Ordering::Acquire) != len as u64
        {
            return Err(not_ready());
        }
        // SAFETY: as above.
        let ptr = unsafe { map.as_mut_ptr().add(REGION_DATA_OFFSET) };
        regions.insert(id, map);
        Ok(ptr)
    }
}

/// Writes a ring record header.
///
/// # Safety
///
/// `p` must be valid for 16 bytes of writes and 4-byte aligned.
unsafe fn write_record_header(p: *mut u8, len: u32, kind: u32) {
    // SAFETY: forwarded from the caller.
    unsafe {
        p.cast::<u32>().write_volatile(len);
        p.add(4).cast::<u32>().write_volatile(kind);
    }
}

/// Reads a ring record header.
///
/// # Safety
///
/// `p` must be valid for 8 bytes of reads and 4-byte aligned.
unsafe fn read_record_header(p: *const u8) -> (u32, u32) {
    // SAFETY: forwarded from the caller.
    unsafe { (p.cast::<u32>().read_volatile(), p.add(4).cast::<u32>().read_volatile()) }
}

struct Hook {
    inner: Rc<Inner>,
    doorbell_seen: u32,
}

impl PollHook for Hook {
    fn poll(&mut self) -> usize {
        let inner = &*self.inner;
        if inner.closed.get() {
            return 0;
        }
        let bell = inner.my_ctl().doorbell.load(Ordering::Acquire);
        let mut progress = usize::from(bell != self.doorbell_seen);
        self.doorbell_seen = bell;
        for peer in inner.peers.values() {
            if peer.failed.get() {
                continue;
            }
            progress += inner.drain(peer);
            if peer.ctl().state.load(Ordering::Acquire) == STATE_CLOSED && inner.fully_drained(peer) {
                // A graceful close rings our doorbell: report it now, not at the next heartbeat,
                // and only once every frame sent before the close has been received.
                inner.fail(peer, PeerFailure::Closed);
                progress += 1;
                continue;
            }
            if !peer.out_waiters.borrow().is_empty() {
                let head = ring_of(&peer.out_ring).head.load(Ordering::Acquire);
                if head != peer.out_head_seen.get() {
                    peer.out_head_seen.set(head);
                    for w in peer.out_waiters.borrow_mut().drain(..) {
                        w.wake();
                    }
                }
            }
        }
        progress
    }

    fn prepare_park(&mut self, park: &mut Park<'_>) -> bool {
        let inner = &*self.inner;
        if inner.closed.get() {
            return true;
        }
        let ctl = inner.my_ctl();
        ctl.sleeping.store(1, Ordering::SeqCst);
        let bell = ctl.doorbell.load(Ordering::SeqCst);
        if bell != self.doorbell_seen {
            // A push or frame arrived after this iteration's poll: run another iteration.
            ctl.sleeping.store(0, Ordering::SeqCst);
            return false;
        }
        // SAFETY: the doorbell lives in our control block, mapped until the transport closes,
        // which disarms the wait first.
        let armed = unsafe { park.futex_wait(ctl.doorbell.as_ptr(), bell) };
        if !armed {
            // No io_uring futex waits on this kernel: look again soon.
            park.wake_within(FUTEXLESS_PARK);
        }
        // Waiting producers of ours are woken by the consumer's doorbell; heartbeats and peer
        // checks are timers. Nothing else needs a bounded park.
        true
    }

    fn after_park(&mut self) {
        if !self.inner.closed.get() {
            self.inner.my_ctl().sleeping.store(0, Ordering::SeqCst);
        }
    }
}

/// A shared-memory transport among processes (or threads) of one host. See the module docs.
pub struct ShmTransport {
    inner: Rc<Inner>,
    hook: Cell<Option<HookId>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTransport")
            .field("me", &self.inner.me)
            .field("namespace", &self.inner.config.namespace)
            .field("peers", &self.inner.peer_ids)
            .finish()
    }
}

impl ShmTransport {
    /// Creates this side's files, waits for every peer's, and starts receiving.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for an invalid configuration, [`TransportError::Io`] if files
    /// cannot be created, [`TransportError::ConnectTimeout`] naming the peers that did not appear
    /// (with a live process) within `connect_timeout`.
    pub async fn connect(config: ShmConfig) -> Result<Self, TransportError> {
        Self::connect_inner(config, false).await
    }

    /// As [`ShmTransport::connect`], except that peers whose files are not there at the
    /// deadline do not fail the call: each is reported at once as
    /// [`TransportEvent::PeerFailed`] (a membership driver then suspects it) and the transport
    /// runs with the others. A peer whose files were found but which has not yet attached to
    /// our ring is kept: it attaches later, or falls silent and is reported then.
    ///
    /// # Errors
    ///
    /// As [`ShmTransport::connect`], except the timeout.
    pub async fn connect_allowing_missing(config: ShmConfig) -> Result<Self, TransportError> {
        Self::connect_inner(config, true).await
    }

    async fn connect_inner(config: ShmConfig, missing_ok: bool) -> Result<Self, TransportError> {
        config.validate()?;
        let me = config.me;
        let nonce = new_nonce();
        let ns_path = |name: &str| config.dir.join(format!("derecho-{}-{}", config.namespace, name));
        // Removes what it holds when dropped: on an error, and when this future is dropped
        // while it waits for peers (a member closing during a view change).
        let mut created = CreatedFiles(Vec::new());

        // Our incoming rings first, the control block last: a peer that sees our control block
        // ready finds our rings in place.
        let mut in_rings = BTreeMap::new();
        for &p in &config.peers {
            let path = ns_path(&format!("{}-to-{}.ring", p.0, me.0));
            let map = create_file(&path, RING_DATA_OFFSET + config.ring_len, |m| {
                let h = ring_of(m);
                h.capacity.store(config.ring_len as u64, Ordering::Relaxed);
                h.nonce.store(nonce, Ordering::Relaxed);
                h.magic.store(RING_MAGIC, Ordering::Release);
            })?;
            created.0.push(path);
            in_rings.insert(p, map);
        }
        // Then the regions named in the configuration, also before the control block.
        let mut regions = BTreeMap::new();
        for &(id, len) in &config.regions {
            let path = ns_path(&format!("{}.r{}", me.0, id.0));
            let map = create_file(&path, REGION_DATA_OFFSET + len.max(8), |m| init_region(m, len, nonce))?;
            created.0.push(path);
            regions.insert(id, Rc::new(Region::mapped(id, map, REGION_DATA_OFFSET, len)));
        }
        let ctl_path = ns_path(&format!("{}.ctl", me.0));
        let my_ctl = create_file(&ctl_path, CTL_LEN, |m| {
            let c = ctl_of(m);
            c.version.store(SHM_VERSION, Ordering::Relaxed);
            c.pid.store(std::process::id(), Ordering::Relaxed);
            c.nonce.store(nonce, Ordering::Relaxed);
            c.state.store(STATE_READY, Ordering::Relaxed);
            c.magic.store(CTL_MAGIC, Ordering::Release);
        })?;
        created.0.push(ctl_path);

        let deadline = Instant::now() + config.limits.connect_timeout;
        let mut peers = BTreeMap::new();
        let mut pidfds = Vec::new();
        let mut waiting: Vec<PeerId> = config.peers.clone();
        loop {
            let mut still = Vec::new();
            for p in waiting {
                match Self::open_peer(&config, p) {
                    Some((ctl, out_ring, pid)) => {
                        ring_of(&out_ring).producer_attached.store(1, Ordering::Release);
                        let now = Instant::now();
                        let hb = ctl_of(&ctl).heartbeat.load(Ordering::Acquire);
                        let tail = ring_of(&out_ring).tail.load(Ordering::Acquire);
                        let ctl = Rc::new(ctl);
                        let in_ring = Rc::new(InRing {
                            map: in_rings.remove(&p).expect("ring per peer"),
                            producer_ctl: ctl.clone(),
                            head: Cell::new(0),
                            read: Cell::new(0),
                            outstanding: RefCell::new(std::collections::VecDeque::new()),
                        });
                        peers.insert(
                            p,
                            Peer {
                                id: p,
                                pid,
                                ctl,
                                out_ring,
                                out_tail: Cell::new(tail),
                                out_waiters: RefCell::new(Vec::new()),
                                out_head_seen: Cell::new(0),
                                in_ring,
                                regions: RefCell::new(BTreeMap::new()),
                                failed: Cell::new(false),
                                heartbeat_seen: Cell::new((hb, 0, now)),
                            },
                        );
                        if pid != std::process::id() {
                            // SAFETY: plain syscall; the result is checked.
                            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
                            if fd >= 0 {
                                // SAFETY: a fresh descriptor.
                                pidfds.push((p, unsafe { OwnedFd::from_raw_fd(fd as i32) }));
                            }
                        }
                    }
                    None => still.push(p),
                }
            }
            waiting = still;
            // Connecting is a barrier: done when we have every peer's files and every peer has
            // attached to the ring we read from it (so a peer that connects, sends and closes at
            // once cannot leave the other side waiting for files that are already gone).
            let unattached: Vec<PeerId> = peers
                .keys()
                .copied()
                .filter(|p| peers[p].in_ring.header().producer_attached.load(Ordering::Acquire) == 0)
                .collect();
            if waiting.is_empty() && unattached.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                if missing_ok {
                    // Peers whose files we found are kept even if they have not attached yet.
                    break;
                }
                let mut missing = waiting;
                missing.extend(unattached);
                missing.sort();
                return Err(TransportError::ConnectTimeout { after: config.limits.connect_timeout, missing });
            }
            time::sleep(Duration::from_millis(1)).await;
        }

        let inner = Rc::new(Inner {
            me,
            peer_ids: peers.keys().copied().collect(),
            peers,
            nonce,
            my_ctl,
            regions: RefCell::new(regions),
            events: EventQueue::default(),
            closed: Cell::new(false),
            created: RefCell::new(std::mem::take(&mut created.0)),
            config,
        });
        for p in waiting {
            let reason = PeerFailure::Silent(inner.config.limits.connect_timeout);
            inner.events.push(TransportEvent::PeerFailed { peer: p, reason });
        }
        let bell = inner.my_ctl().doorbell.load(Ordering::Acquire);
        let hook = add_poll_hook(Hook { inner: inner.clone(), doorbell_seen: bell.wrapping_sub(1) });
        let mut tasks = vec![spawn(heartbeat(inner.clone()))];
        for (p, fd) in pidfds {
            let inner = inner.clone();
            tasks.push(spawn(async move {
                if crate::op::poll_readable(fd.as_raw_fd()).await.is_ok()
                    && let Some(peer) = inner.peers.get(&p)
                {
                    inner.fail(peer, PeerFailure::ProcessExited);
                }
            }));
        }
        Ok(Self { inner, hook: Cell::new(Some(hook)), tasks: RefCell::new(tasks) })
    }

    /// Opens a peer's control block and the ring we produce into, if both are in place, ready,
    /// of this run (same nonce) and owned by a live process.
    fn open_peer(config: &ShmConfig, p: PeerId) -> Option<(MmapRaw, MmapRaw, u32)> {
        let path = |name: &str| config.dir.join(format!("derecho-{}-{}", config.namespace, name));
        let ctl = map_peer_file(&path(&format!("{}.ctl", p.0)))?;
        if ctl.len() < CTL_LEN {
            return None;
        }
        let c = ctl_of(&ctl);
        if c.magic.load(Ordering::Acquire) != CTL_MAGIC
            || c.version.load(Ordering::Acquire) != SHM_VERSION
            || c.state.load(Ordering::Acquire) != STATE_READY
        {
            return None;
        }
        let pid = c.pid.load(Ordering::Acquire);
        // 0 and values past i32::MAX would make kill() address process groups: not a pid.
        if pid == 0 || pid > i32::MAX as u32 || !process_alive(pid) {
            return None; // a crashed run's file: wait for the new one to replace it
        }
        let nonce = c.nonce.load(Ordering::Acquire);
        let ring = map_peer_file(&path(&format!("{}-to-{}.ring", config.me.0, p.0)))?;
        if ring.len() < RING_DATA_OFFSET + config.ring_len {
            return None;
        }
        let r = ring_of(&ring);
        if r.magic.load(Ordering::Acquire) != RING_MAGIC
            || r.nonce.load(Ordering::Acquire) != nonce
            || r.capacity.load(Ordering::Acquire) != config.ring_len as u64
        {
            return None;
        }
        Some((ctl, ring, pid))
    }

    /// Marks this side closed (peers see [`PeerFailure::Closed`]), stops receiving and removes
    /// this side's files.
    pub fn close(&self) {
        let inner = &self.inner;
        if inner.closed.replace(true) {
            return;
        }
        let ctl = inner.my_ctl();
        ctl.state.store(STATE_CLOSED, Ordering::SeqCst);
        if let Some(h) = self.hook.take() {
            remove_poll_hook(h);
        }
        disarm_futex(ctl.doorbell.as_ptr());
        for p in inner.peers.values() {
            ring_doorbell(p.ctl());
            for w in p.out_waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
        for path in inner.created.borrow_mut().drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// When `peer` last showed a sign of life (a heartbeat, or anything it wrote into its ring),
    /// to the resolution of the heartbeat interval; `None` for an unknown or failed peer.
    pub fn last_heard(&self, peer: PeerId) -> Option<Instant> {
        self.inner.peers.get(&peer).filter(|p| !p.failed.get()).map(|p| p.heartbeat_seen.get().2)
    }

    /// Removes the files that `peer` created in `namespace`, unless the process that created
    /// them is still alive (it removes them itself when it closes): what a killed member leaves
    /// behind. Returns how many were removed.
    ///
    /// # Errors
    ///
    /// The error reading the directory.
    pub fn remove_files_of(dir: &Path, namespace: &str, peer: PeerId) -> io::Result<usize> {
        let prefix = format!("derecho-{namespace}-");
        let ctl = dir.join(format!("{prefix}{}.ctl", peer.0));
        if let Ok(map) = map_file(&ctl, None)
            && map.len() >= CTL_LEN
        {
            let c = ctl_of(&map);
            let pid = c.pid.load(Ordering::Acquire);
            if c.magic.load(Ordering::Acquire) == CTL_MAGIC
                && c.state.load(Ordering::Acquire) == STATE_READY
                && pid != 0
                && pid <= i32::MAX as u32
                && process_alive(pid)
            {
                return Ok(0);
            }
        }
        let mut n = 0;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let owner = name.to_string_lossy().strip_prefix(&prefix).and_then(file_owner);
            if owner == Some(peer) && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Removes every file of `namespace` in `dir` (for tests and tools cleaning up after a crash).
    ///
    /// # Errors
    ///
    /// The error reading the directory.
    pub fn remove_namespace(dir: &Path, namespace: &str) -> io::Result<usize> {
        let prefix = format!("derecho-{namespace}-");
        let mut n = 0;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let ours = e.file_name().to_string_lossy().strip_prefix(&prefix).and_then(file_owner).is_some();
            if ours && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Who created a file of a namespace, from its name after `derecho-{ns}-`: `{id}.ctl`,
/// `{id}.r{region}`, `{from}-to-{id}.ring`, or one of those under its temporary name
/// (`.tmp{pid}` in place of the extension). `None` for a name of another form, such as a file
/// of another namespace that starts like this one (`g-v1` and `g-v1-v2`).
fn file_owner(rest: &str) -> Option<PeerId> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (stem, ext) = rest.rsplit_once('.')?;
    let ext_ok = match ext {
        "ctl" | "ring" => true,
        e => e.strip_prefix('r').is_some_and(digits) || e.strip_prefix("tmp").is_some_and(digits),
    };
    if !ext_ok {
        return None;
    }
    let owner = match stem.split_once("-to-") {
        Some((from, to)) if digits(from) && (ext == "ring" || ext.starts_with("tmp")) => to,
        Some(_) => return None,
        None if ext != "ring" => stem,
        None => return None,
    };
    if !digits(owner) {
        return None;
    }
    owner.parse().ok().map(PeerId)
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        self.close();
    }
}

async fn heartbeat(inner: Rc<Inner>) {
    let mut tick = time::interval(inner.config.limits.heartbeat_interval);
    loop {
        tick.tick().await;
        inner.my_ctl().heartbeat.fetch_add(1, Ordering::Release);
        let now = Instant::now();
        for peer in inner.peers.values() {
            if peer.failed.get() {
                continue;
            }
            let c = peer.ctl();
            if c.state.load(Ordering::Acquire) == STATE_CLOSED {
                // Frames sent before the close still count: report the close once they are in.
                inner.drain(peer);
                if inner.fully_drained(peer) {
                    inner.fail(peer, PeerFailure::Closed);
                }
                continue;
            }
            if peer.pid != std::process::id() && !process_alive(peer.pid) {
                inner.fail(peer, PeerFailure::ProcessExited);
                continue;
            }
            // A sign of life is a heartbeat or anything the peer published in its ring.
            let hb = c.heartbeat.load(Ordering::Acquire);
            let tail = peer.in_ring.header().tail.load(Ordering::Acquire);
            let (seen_hb, seen_tail, at) = peer.heartbeat_seen.get();
            if (hb, tail) != (seen_hb, seen_tail) {
                peer.heartbeat_seen.set((hb, tail, now));
            } else if now.duration_since(at) > inner.config.limits.peer_timeout {
                inner.fail(peer, PeerFailure::Silent(now.duration_since(at)));
            }
        }
    }
}

impl Transport for ShmTransport {
    fn me(&self) -> PeerId {
        self.inner.me
    }

    fn peers(&self) -> &[PeerId] {
        &self.inner.peer_ids
    }

    fn max_frame_len(&self) -> usize {
        self.inner.config.limits.max_frame_len
    }

    fn register_region(&self, id: RegionId, len: usize) -> Result<Rc<Region>, TransportError> {
        let inner = &self.inner;
        if inner.closed.get() {
            return Err(TransportError::Closed);
        }
        if inner.regions.borrow().contains_key(&id) {
            return Err(TransportError::RegionExists(id));
        }
        let path = inner.path(&format!("{}.r{}", inner.me.0, id.0));
        let map = create_file(&path, REGION_DATA_OFFSET + len.max(8), |m| init_region(m, len, inner.nonce))?;
        inner.created.borrow_mut().push(path);
        let r = Rc::new(Region::mapped(id, map, REGION_DATA_OFFSET, len));
        inner.regions.borrow_mut().insert(id, r.clone());
        Ok(r)
    }

    fn region(&self, id: RegionId) -> Option<Rc<Region>> {
        self.inner.regions.borrow().get(&id).cloned()
    }

    fn push(&self, to: PeerId, region: RegionId, range: Range<usize>) -> Result<(), TransportError> {
        let inner = &*self.inner;
        let peer = inner.live_peer(to)?;
        let r = self.region(region).ok_or(TransportError::UnknownRegion(region))?;
        check_range(region, &range, r.len())?;
        let dst = inner.peer_region(peer, region, r.len())?;
        // SAFETY: both regions are `r.len()` bytes long (the peer's length was checked when it
        // was mapped) and the range is inside them; region memory is only accessed atomically.
        unsafe { copy_shared_to_shared(dst.add(range.start), r.as_ptr().add(range.start), range.len()) };
        ring_doorbell(peer.ctl());
        Ok(())
    }

    async fn send_frame(&self, to: PeerId, body: Payload) -> Result<(), TransportError> {
        let inner = &*self.inner;
        let max = inner.config.limits.max_frame_len;
        if body.len() > max {
            return Err(TransportError::FrameTooLong { len: body.len(), max });
        }
        let peer = inner.live_peer(to)?;
        poll_fn(|cx| {
            if inner.closed.get() {
                return Poll::Ready(Err(TransportError::Closed));
            }
            if peer.failed.get() {
                return Poll::Ready(Err(TransportError::PeerFailed(to)));
            }
            if crate::executor::poll_coop(cx).is_pending() {
                return Poll::Pending;
            }
            if inner.try_write(peer, body.as_bytes()) {
                return Poll::Ready(Ok(()));
            }
            let hdr = ring_of(&peer.out_ring);
            hdr.producer_waiting.store(1, Ordering::SeqCst);
            if inner.try_write(peer, body.as_bytes()) {
                return Poll::Ready(Ok(()));
            }
            if peer.failed.get() {
                // `try_write` may have failed the peer (a corrupt consumer position).
                return Poll::Ready(Err(TransportError::PeerFailed(to)));
            }
            peer.out_head_seen.set(hdr.head.load(Ordering::Acquire));
            peer.out_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        ring_doorbell(peer.ctl());
        Ok(())
    }

    async fn next_event(&self) -> TransportEvent {
        self.inner.events.pop().await
    }

    fn try_next_event(&self) -> Option<TransportEvent> {
        self.inner.events.try_pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_another_user_or_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("derecho-shm-owned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("derecho-x-1.ctl");
        // Ours, 0600: mapped.
        drop(map_file(&path, Some(4096)).expect("a new file"));
        map_file(&path, None).expect("our own file");
        // A new file where one exists: refused (O_EXCL), never taken over.
        assert_eq!(map_file(&path, Some(4096)).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        // Readable by others: refused, saying why.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = map_file(&path, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("mode 644") && e.to_string().contains("derecho-x-1.ctl"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A second name: refused.
        let link = dir.join("derecho-x-2.ctl");
        std::fs::hard_link(&path, &link).unwrap();
        assert!(map_file(&path, None).unwrap_err().to_string().contains("2 names"));
        std::fs::remove_file(&link).unwrap();
        // A symbolic link to it: refused (not followed).
        let sym = dir.join("derecho-x-3.ctl");
        std::os::unix::fs::symlink(&path, &sym).unwrap();
        assert!(map_file(&sym, None).is_err(), "a mapping through a symbolic link");
        std::fs::remove_file(&sym).unwrap();
        // Another user's (root can hand it to `nobody`; others cannot make one to test with).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            let e = map_file(&path, None).unwrap_err();
            assert!(e.to_string().contains("belongs to user 65534"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_owners_are_read_from_exact_names() {
        let cases: &[(&str, Option<u32>)] = &[
            ("3.ctl", Some(3)),
            ("3.r0", Some(3)),
            ("13.r12", Some(13)),
            ("1-to-3.ring", Some(3)),
            ("1-to-3.tmp4242", Some(3)),
            ("3.tmp99", Some(3)),
            // Files of another namespace that begins like this one (`g-v1` and `g-v1-v2`).
            ("v2-3.ctl", None),
            ("v2-1-to-3.ring", None),
            ("3.ring", None),
            ("1-to-3.ctl", None),
            ("3.rx", None),
            ("3", None),
            ("x.ctl", None),
            ("-to-3.ring", None),
        ];
        for (name, want) in cases {
            assert_eq!(file_owner(name), want.map(PeerId), "{name}");
        }
    }
}
