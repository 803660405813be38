//! TCP sockets driven by io_uring.
//!
//! Every operation takes its buffers by value and returns them with the result, so the kernel
//! owns them while the operation is in flight (`crate::op`). Methods take `&self`: one task may
//! receive while another sends on the same stream (share it with `Rc`).

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::Waker;

use io_uring::{opcode, types};

use crate::buf::AlignedBuf;
use crate::op::Op;

/// `IORING_RECVSEND_POLL_FIRST` from `<linux/io_uring.h>` (the io-uring crate keeps its
/// constants private): wait for readiness before trying the receive.
const IORING_RECVSEND_POLL_FIRST: u16 = 1;

/// Bytes the kernel may read from an operation's buffer: stable heap memory owned by the value.
///
/// # Safety
///
/// `stable_ptr()` must point to `bytes_len()` initialised bytes owned (or kept alive) by the
/// value, and stay valid and unchanged in place when the value is moved, until it is dropped:
/// the kernel reads them while the operation is in flight, possibly after the value moved into
/// the reactor.
pub unsafe trait IoBuf: 'static {
    /// Start of the bytes; must not change when the value moves.
    fn stable_ptr(&self) -> *const u8;
    /// Number of bytes.
    fn bytes_len(&self) -> usize;
}

// SAFETY: heap (or static) memory owned by the value; moving the value does not move it.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}
// SAFETY: heap (or static) memory owned by the value; moving the value does not move it.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}
// SAFETY: heap (or static) memory owned by the value; moving the value does not move it.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}
// SAFETY: heap (or static) memory owned by the value; moving the value does not move it.
unsafe impl IoBuf for std::rc::Rc<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}
// SAFETY: heap (or static) memory owned by the value; moving the value does not move it.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.len()
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

pub(crate) fn socket_addr_to_raw(addr: &SocketAddr) -> (Box<libc::sockaddr_storage>, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is valid.
    let mut storage: Box<libc::sockaddr_storage> = Box::new(unsafe { mem::zeroed() });
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut *storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut *storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub(crate) fn raw_to_socket_addr(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        f => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unknown address family {f}"))),
    }
}

fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall, result checked.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`.
    cvt(unsafe {
        libc::setsockopt(fd, level, name, (&value as *const i32).cast(), mem::size_of::<i32>() as libc::socklen_t)
    })
    .map(drop)
}

fn local_addr_of(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: zeroed storage is valid; the kernel fills at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: pointers describe `storage` and `len`.
    cvt(unsafe { libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    raw_to_socket_addr(&storage)
}

/// A listening TCP socket.
#[derive(Debug)]
pub struct TcpListener {
    fd: OwnedFd,
    local: SocketAddr,
}

impl TcpListener {
    /// Binds and listens (with `SO_REUSEADDR`). Port 0 picks a free port; see
    /// [`TcpListener::local_addr`].
    ///
    /// # Errors
    ///
    /// The socket, bind or listen error.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let fd = new_socket(&addr)?;
        set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        let (raw, len) = socket_addr_to_raw(&addr);
        // SAFETY: `raw`/`len` describe a valid socket address.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&*raw as *const libc::sockaddr_storage).cast(), len) })
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        // SAFETY: plain syscall.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
        let local = local_addr_of(fd.as_raw_fd())?;
        Ok(Self { fd, local })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts one connection.
    ///
    /// # Errors
    ///
    /// The accept error.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        struct Data {
            // SAFETY-relevant: boxed so the kernel's pointers survive moves of `Data`.
            addr: Box<(MaybeUninit<libc::sockaddr_storage>, libc::socklen_t)>,
        }
        let data = Data {
            addr: Box::new((MaybeUninit::uninit(), mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t)),
        };
        let fd = self.fd.as_raw_fd();
        // SAFETY: the address buffers are boxed inside `data`, owned by the operation.
        let op = unsafe {
            Op::submit(data, |d| {
                opcode::Accept::new(types::Fd(fd), d.addr.0.as_mut_ptr().cast(), &mut d.addr.1)
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            })
        };
        let done = op.await;
        let raw = done.result? as RawFd;
        // SAFETY: the kernel returned a fresh descriptor.
        let stream = TcpStream::from_fd(unsafe { OwnedFd::from_raw_fd(raw) })?;
        // SAFETY: the accept succeeded, so the kernel initialised the address.
        let peer = raw_to_socket_addr(unsafe { done.data.addr.0.assume_init_ref() })?;
        Ok((stream, peer))
    }
}

/// A connected TCP stream with `TCP_NODELAY` set; with [`TcpStream::accept_tls`] or
/// [`TcpStream::connect_tls`], every byte is carried in TLS records (the methods below then
/// encrypt and decrypt on the way).
#[derive(Debug)]
pub struct TcpStream {
    fd: OwnedFd,
    tls: Option<Box<TlsState>>,
}

/// Ciphertext is received into a buffer this large at first: one record of the largest
/// (16 KiB of plaintext and 256 bytes of expansion, a 5-byte header) fits. A connection that
/// is only shaking hands (perhaps one of many an attacker opened) holds no more.
const TLS_IN_MIN: usize = 18 << 10;
/// A stream whose receives fill the buffer has it grown, doubling, up to this.
const TLS_IN_LEN: usize = 64 << 10;

/// A TLS stream's session and what it has not decrypted yet.
struct TlsState {
    conn: RefCell<rustls::Connection>,
    /// Received ciphertext not yet given to the session (`buf[start..end]`); `None` while a
    /// receive into the buffer is in flight.
    cin: RefCell<Option<(AlignedBuf, usize, usize)>>,
    /// A task is encrypting and sending: ciphertext leaves in the order it was made.
    sending: Cell<bool>,
    /// A send was abandoned after its records were made: the stream cannot be used.
    broken: Cell<bool>,
    /// Records being sent (kept between sends, the allocation reused).
    out: RefCell<Vec<u8>>,
    send_waiters: RefCell<Vec<Waker>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").finish_non_exhaustive()
    }
}

impl TlsState {
    fn new(mut conn: rustls::Connection) -> Self {
        // Everything written is drained at once by the writer: no limit needed on what waits.
        conn.set_buffer_limit(None);
        Self {
            conn: RefCell::new(conn),
            cin: RefCell::new(Some((AlignedBuf::zeroed(TLS_IN_MIN), 0, 0))),
            sending: Cell::new(false),
            broken: Cell::new(false),
            out: RefCell::new(Vec::new()),
            send_waiters: RefCell::new(Vec::new()),
        }
    }

    /// Decrypted bytes into `dst`: `None` when there are none yet; `Some(Ok(0))` once the peer
    /// closed the session.
    fn read_plain(&self, dst: &mut [u8]) -> Option<io::Result<usize>> {
        match io::Read::read(&mut self.conn.borrow_mut().reader(), dst) {
            Ok(n) => Some(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Gives the session the ciphertext received so far (as much as it takes: it stops while
    /// its plaintext buffer is full).
    fn feed(&self) -> io::Result<()> {
        let mut cin = self.cin.borrow_mut();
        let Some((buf, start, end)) = cin.as_mut() else { return Ok(()) };
        let mut conn = self.conn.borrow_mut();
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"));
        while *start < *end {
            let mut rd = &buf.spare_full()[*start..*end];
            match conn.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(n) => *start += n,
                Err(e) => {
                    // Only a full plaintext buffer is a reason to stop (it is read first, and
                    // the rest fed then); anything else is the peer's doing.
                    let io = conn.process_new_packets().map_err(|e| invalid(e.to_string()))?;
                    if io.plaintext_bytes_to_read() > 0 {
                        break;
                    }
                    return Err(invalid(e.to_string()));
                }
            }
            if let Err(e) = conn.process_new_packets() {
                return Err(invalid(e.to_string()));
            }
        }
        if start == end {
            (*start, *end) = (0, 0);
        }
        Ok(())
    }

    /// At the end of the TCP stream: the last plaintext, `Ok(0)` if the peer ended the session
    /// with a close_notify alert, or an error if it did not (the stream may have been cut short
    /// by someone on the path: a FIN is not authenticated, a close_notify is).
    fn at_eof(&self, dst: &mut [u8]) -> io::Result<usize> {
        self.read_plain(dst).unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without a TLS close_notify: what it sent may be cut short",
            ))
        })
    }

    /// Whether ciphertext waits to be given to the session.
    fn has_unfed(&self) -> bool {
        self.cin.borrow().as_ref().is_some_and(|(_, s, e)| s < e)
    }

    /// Takes the turn to send (see `sending`).
    async fn send_turn(&self) -> SendTurn<'_> {
        std::future::poll_fn(|cx| {
            if self.sending.replace(true) {
                self.send_waiters.borrow_mut().push(cx.waker().clone());
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(())
        })
        .await;
        SendTurn(self)
    }
}

/// Writes to a socket without waiting (`MSG_DONTWAIT`): `WouldBlock` once it takes no more.
struct DirectWriter(RawFd);

impl io::Write for DirectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: a zeroed msghdr is valid; it points at `bufs` (an `IoSlice` has the layout of
        // an `iovec`), which outlive the call.
        let n = unsafe {
            let mut msg: libc::msghdr = mem::zeroed();
            msg.msg_iov = bufs.as_ptr().cast_mut().cast();
            msg.msg_iovlen = bufs.len();
            libc::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The turn to send on a TLS stream, given back when dropped.
struct SendTurn<'a>(&'a TlsState);

impl Drop for SendTurn<'_> {
    fn drop(&mut self) {
        self.0.sending.set(false);
        for w in self.0.send_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

struct MsgData<B> {
    bufs: Vec<B>,
    iovecs: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
}

impl TcpStream {
    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        Ok(Self { fd, tls: None })
    }

    /// Connects to `addr`.
    ///
    /// # Errors
    ///
    /// The connect error (for example `ConnectionRefused`).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let fd = new_socket(&addr)?;
        let raw_fd = fd.as_raw_fd();
        let (raw, len) = socket_addr_to_raw(&addr);
        // SAFETY: the address is boxed and owned by the operation.
        let op = unsafe {
            Op::submit(raw, |r| {
                opcode::Connect::new(types::Fd(raw_fd), (&**r as *const libc::sockaddr_storage).cast(), len).build()
            })
        };
        op.await.result?;
        Self::from_fd(fd)
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// The `getsockname` error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr_of(self.fd.as_raw_fd())
    }

    /// Receives into `buf[offset..capacity]`; returns the byte count (0 at end of stream) and
    /// the buffer. The buffer's visible length is not changed.
    ///
    /// # Panics
    ///
    /// If `offset` is not below the buffer's capacity.
    pub async fn recv(&self, buf: AlignedBuf, offset: usize) -> (io::Result<usize>, AlignedBuf) {
        self.recv_with(buf, offset, false).await
    }

    /// [`TcpStream::recv`], telling the kernel whether the socket is known to be empty
    /// (`poll_first`): then it waits for data without first trying to read, which saves a failed
    /// attempt on a connection that was just drained.
    ///
    /// # Panics
    ///
    /// If `offset` is not below the buffer's capacity.
    pub async fn recv_with(&self, buf: AlignedBuf, offset: usize, poll_first: bool) -> (io::Result<usize>, AlignedBuf) {
        let end = buf.capacity();
        self.recv_range(buf, offset..end, poll_first).await
    }

    /// Receives into `buf[range]` and nothing beyond it, for a reader that must not consume the
    /// bytes after a frame's end (pooled buffers are larger than the frame they hold).
    ///
    /// # Panics
    ///
    /// If the range is empty or extends past the buffer's capacity.
    pub async fn recv_range(
        &self,
        buf: AlignedBuf,
        range: std::ops::Range<usize>,
        poll_first: bool,
    ) -> (io::Result<usize>, AlignedBuf) {
        assert!(
            range.start < range.end && range.end <= buf.capacity(),
            "recv range {range:?} empty or past capacity {}",
            buf.capacity()
        );
        match &self.tls {
            None => self.raw_recv_range(buf, range, poll_first).await,
            Some(tls) => self.tls_recv(tls, buf, range, poll_first).await,
        }
    }

    async fn tls_recv(
        &self,
        tls: &TlsState,
        mut buf: AlignedBuf,
        range: std::ops::Range<usize>,
        poll_first: bool,
    ) -> (io::Result<usize>, AlignedBuf) {
        loop {
            if let Some(r) = tls.read_plain(&mut buf.spare_full()[range.clone()]) {
                return (r, buf);
            }
            if tls.has_unfed() {
                if let Err(e) = tls.feed() {
                    return (Err(e), buf);
                }
                if let Some(r) = tls.read_plain(&mut buf.spare_full()[range.clone()]) {
                    return (r, buf);
                }
            }
            let Some((mut cbuf, start, end)) = tls.cin.borrow_mut().take() else {
                return (
                    Err(io::Error::other(
                        "another receive on this TLS stream is under way, or one was abandoned mid-way (the stream \
                         cannot be used after that)",
                    )),
                    buf,
                );
            };
            if start > 0 {
                cbuf.spare_full().copy_within(start..end, 0);
            }
            let end = end - start;
            let cap = cbuf.capacity();
            if end == cap {
                *tls.cin.borrow_mut() = Some((cbuf, 0, end));
                return (Err(io::Error::other("a TLS record does not fit the receive buffer")), buf);
            }
            let (r, mut cbuf) = self.raw_recv_range(cbuf, end..cap, poll_first).await;
            let n = *r.as_ref().unwrap_or(&0);
            if end + n == cap && cap < TLS_IN_LEN {
                // Bytes arrive faster than one buffer takes: a larger one, for fewer receives.
                let mut bigger = AlignedBuf::zeroed((cap * 2).min(TLS_IN_LEN));
                bigger.spare_full()[..cap].copy_from_slice(&cbuf.spare_full()[..cap]);
                cbuf = bigger;
            }
            *tls.cin.borrow_mut() = Some((cbuf, 0, end + n));
            match r {
                Ok(0) => {
                    let r = tls.at_eof(&mut buf.spare_full()[range.clone()]);
                    return (r, buf);
                }
                Ok(_) => {
                    if let Err(e) = tls.feed() {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn raw_recv_range(
        &self,
        mut buf: AlignedBuf,
        range: std::ops::Range<usize>,
        poll_first: bool,
    ) -> (io::Result<usize>, AlignedBuf) {
        let offset = range.start;
        assert!(
            range.start < range.end && range.end <= buf.capacity(),
            "recv range {range:?} empty or past capacity {}",
            buf.capacity()
        );
        let fd = self.fd.as_raw_fd();
        let room = range.len().min(u32::MAX as usize) as u32;
        let ioprio = if poll_first { IORING_RECVSEND_POLL_FIRST } else { 0 };
        // SAFETY: the pointer is into the heap allocation of `buf`, owned by the operation.
        let op = unsafe {
            Op::submit_deferred(buf, |b| {
                let p = b.as_mut_ptr().add(offset);
                opcode::Recv::new(types::Fd(fd), p, room).ioprio(ioprio).build()
            })
        };
        let done = op.await;
        buf = done.data;
        (done.result.map(|n| n as usize), buf)
    }

    /// Sends the bytes of one buffer from `skip` on, in one `send`; returns how many were sent
    /// (over TLS, all of them once they are sent).
    pub async fn send_one<B: IoBuf>(&self, buf: B, skip: usize) -> (io::Result<usize>, B) {
        let len = buf.bytes_len().saturating_sub(skip);
        if len == 0 {
            return (Ok(0), buf);
        }
        if let Some(tls) = &self.tls {
            // SAFETY: `IoBuf` promises `bytes_len` initialised bytes at `stable_ptr`.
            let bytes = unsafe { std::slice::from_raw_parts(buf.stable_ptr(), buf.bytes_len()) };
            let r = self.tls_send(tls, &[&bytes[skip..]]).await;
            return (r, buf);
        }
        let fd = self.fd.as_raw_fd();
        // SAFETY: the pointer is into the buffer's stable heap memory, owned by the operation;
        // `skip < bytes_len`.
        let op = unsafe {
            Op::submit(buf, |b| {
                opcode::Send::new(types::Fd(fd), b.stable_ptr().add(skip), len.min(u32::MAX as usize) as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            })
        };
        let done = op.await;
        (done.result.map(|n| n as usize), done.data)
    }

    /// Sends the bytes of `bufs`, skipping the first `skip` bytes, in one `sendmsg`. Returns how
    /// many bytes were sent (possibly fewer than offered; over TLS, all of them once they are
    /// sent) and the buffers.
    pub async fn send_vectored<B: IoBuf>(&self, bufs: Vec<B>, skip: usize) -> (io::Result<usize>, Vec<B>) {
        let Some(tls) = &self.tls else { return self.raw_send_vectored(bufs, skip).await };
        let mut parts: Vec<&[u8]> = Vec::with_capacity(bufs.len());
        let mut skip_left = skip;
        for b in &bufs {
            // SAFETY: `IoBuf` promises `bytes_len` initialised bytes at `stable_ptr`.
            let bytes = unsafe { std::slice::from_raw_parts(b.stable_ptr(), b.bytes_len()) };
            if skip_left >= bytes.len() {
                skip_left -= bytes.len();
                continue;
            }
            parts.push(&bytes[skip_left..]);
            skip_left = 0;
        }
        let r = self.tls_send(tls, &parts).await;
        drop(parts);
        (r, bufs)
    }

    /// Encrypts `parts` and sends the records; returns the plaintext bytes taken.
    async fn tls_send(&self, tls: &TlsState, parts: &[&[u8]]) -> io::Result<usize> {
        let _turn = tls.send_turn().await;
        if tls.broken.get() {
            return Err(io::Error::other("a send on this TLS stream was abandoned mid-way: records were lost"));
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        {
            // All the parts at once: records span them (a part per record would cost a record's
            // overhead and an encryption call for each small header).
            let mut conn = tls.conn.borrow_mut();
            let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
            let mut rest: &mut [io::IoSlice<'_>] = &mut slices;
            while !rest.is_empty() {
                let n = io::Write::write_vectored(&mut conn.writer(), rest)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                io::IoSlice::advance_slices(&mut rest, n);
            }
        }
        self.send_records(tls).await?;
        Ok(total)
    }

    /// Ends a TLS session: sends a close_notify alert, so the peer can tell this end's close
    /// from a connection cut short (it reads `Ok(0)` only after one). Then, as without TLS,
    /// the sending direction is shut down. Nothing more may be sent.
    ///
    /// # Errors
    ///
    /// The alert could not be sent.
    pub async fn close_write(&self) -> io::Result<()> {
        let mut r = Ok(());
        if let Some(tls) = &self.tls {
            let _turn = tls.send_turn().await;
            r = if tls.broken.get() {
                // Records of an abandoned send may still be on their way: an alert now would
                // not decrypt at the peer.
                Err(io::Error::other("a send on this TLS stream was abandoned mid-way: no close_notify"))
            } else {
                tls.conn.borrow_mut().send_close_notify();
                self.send_records(tls).await
            };
        }
        self.shutdown_write();
        r
    }

    /// Sends what the session has to send (handshake messages, alerts).
    async fn tls_flush(&self, tls: &TlsState) -> io::Result<()> {
        let _turn = tls.send_turn().await;
        self.send_records(tls).await
    }

    /// Sends every record the session has ready, through a buffer kept from one send to the
    /// next (up to 1 MiB). The caller holds the turn to send.
    async fn send_records(&self, tls: &TlsState) -> io::Result<()> {
        let mut out = std::mem::take(&mut *tls.out.borrow_mut());
        {
            let mut conn = tls.conn.borrow_mut();
            // Straight from the session's buffers to the socket while it takes them (no await:
            // this cannot be abandoned half-way); what it does not take is copied and sent
            // through the ring below.
            let mut direct = DirectWriter(self.fd.as_raw_fd());
            while conn.wants_write() {
                match conn.write_tls(&mut direct) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
        }
        if out.is_empty() {
            *tls.out.borrow_mut() = out;
            return Ok(());
        }
        // Records are numbered: if this send is abandoned before they all leave, the stream is
        // broken for good (the peer would fail to decrypt what follows).
        tls.broken.set(true);
        let mut out = self.raw_send_all(out).await?;
        tls.broken.set(false);
        if out.capacity() <= 1 << 20 {
            out.clear();
            *tls.out.borrow_mut() = out;
        }
        Ok(())
    }

    /// All of `buf`, without TLS (a loop of its own: [`TcpStream::send_all`] goes through
    /// the TLS layer, which calls this); gives the buffer back.
    async fn raw_send_all(&self, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut bufs = vec![buf];
        let total = bufs[0].len();
        let mut sent = 0;
        while sent < total {
            let (res, b) = self.raw_send_vectored(bufs, sent).await;
            bufs = b;
            match res? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => sent += n,
            }
        }
        Ok(bufs.pop().expect("one buffer"))
    }

    /// Runs the TLS handshake as the accepting side: the peer must present a certificate the
    /// authority of `identity` issued.
    ///
    /// # Errors
    ///
    /// The connection failed or closed, or the handshake failed (`InvalidData`, with rustls's
    /// reason: no certificate, one the authority did not issue, another protocol).
    pub async fn accept_tls(self, identity: &crate::tls::TlsIdentity) -> io::Result<Self> {
        let conn = rustls::ServerConnection::new(identity.server_config()).map_err(io::Error::other)?;
        self.handshake(rustls::Connection::Server(conn)).await
    }

    /// Runs the TLS handshake as the connecting side (see [`TcpStream::accept_tls`]).
    ///
    /// # Errors
    ///
    /// As [`TcpStream::accept_tls`].
    pub async fn connect_tls(self, identity: &crate::tls::TlsIdentity) -> io::Result<Self> {
        let name = crate::tls::TlsIdentity::server_name();
        let conn = rustls::ClientConnection::new(identity.client_config(), name).map_err(io::Error::other)?;
        self.handshake(rustls::Connection::Client(conn)).await
    }

    async fn handshake(mut self, conn: rustls::Connection) -> io::Result<Self> {
        assert!(self.tls.is_none(), "TLS on a TLS stream");
        self.tls = Some(Box::new(TlsState::new(conn)));
        let tls = self.tls.as_deref().expect("just set");
        loop {
            self.tls_flush(tls).await?;
            if !tls.conn.borrow().is_handshaking() {
                return Ok(self);
            }
            let Some((mut cbuf, start, end)) = tls.cin.borrow_mut().take() else { unreachable!("one task") };
            if start > 0 {
                cbuf.spare_full().copy_within(start..end, 0);
            }
            let end = end - start;
            let cap = cbuf.capacity();
            if end == cap {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a TLS handshake larger than its buffer"));
            }
            let (r, cbuf) = self.raw_recv_range(cbuf, end..cap, false).await;
            let n = *r.as_ref().unwrap_or(&0);
            *tls.cin.borrow_mut() = Some((cbuf, 0, end + n));
            match r {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the TLS handshake")),
                Ok(_) => {
                    if let Err(e) = tls.feed() {
                        // Tell the peer why (an alert), then fail.
                        let _ = self.tls_flush(tls).await;
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether this stream runs TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the peer's certificate names node `node` (`node-N.derecho`); true on a stream
    /// without TLS (there is nothing to check).
    pub fn peer_is_node(&self, node: u32) -> bool {
        let Some(tls) = &self.tls else { return true };
        let conn = tls.conn.borrow();
        conn.peer_certificates().and_then(|c| c.first()).is_some_and(|c| crate::tls::names_node(c, node))
    }

    /// The first DNS name of the peer's certificate (`None` without TLS).
    pub fn peer_identity(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let conn = tls.conn.borrow();
        conn.peer_certificates().and_then(|c| c.first()).and_then(crate::tls::first_dns_name)
    }

    async fn raw_send_vectored<B: IoBuf>(&self, bufs: Vec<B>, skip: usize) -> (io::Result<usize>, Vec<B>) {
        let mut iovecs = Vec::with_capacity(bufs.len());
        let mut skip_left = skip;
        for b in &bufs {
            let len = b.bytes_len();
            if skip_left >= len {
                skip_left -= len;
                continue;
            }
            // SAFETY: `skip_left < len`, so the pointer stays inside the buffer.
            let base = unsafe { b.stable_ptr().add(skip_left) };
            iovecs.push(libc::iovec { iov_base: base as *mut libc::c_void, iov_len: len - skip_left });
            skip_left = 0;
            if iovecs.len() == 1024 {
                break; // IOV_MAX
            }
        }
        if iovecs.is_empty() {
            return (Ok(0), bufs);
        }
        // SAFETY: msghdr is plain data; zeroed is valid.
        let msg: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        let data = MsgData { bufs, iovecs, msg };
        let fd = self.fd.as_raw_fd();
        // SAFETY: the iovecs, the msghdr and the bytes they point to are heap memory owned by
        // `data`, which the operation owns until completion.
        let op = unsafe {
            Op::submit(data, |d| {
                d.msg.msg_iov = d.iovecs.as_mut_ptr();
                d.msg.msg_iovlen = d.iovecs.len();
                opcode::SendMsg::new(types::Fd(fd), &*d.msg).flags(libc::MSG_NOSIGNAL as u32).build()
            })
        };
        let done = op.await;
        (done.result.map(|n| n as usize), done.data.bufs)
    }

    /// Sends all of `buf`.
    ///
    /// # Errors
    ///
    /// The send error; `WriteZero` if the peer stopped accepting bytes.
    pub async fn send_all<B: IoBuf>(&self, buf: B) -> io::Result<B> {
        let mut bufs = vec![buf];
        let total = bufs[0].bytes_len();
        let mut sent = 0;
        while sent < total {
            let (res, b) = self.send_vectored(bufs, sent).await;
            bufs = b;
            match res? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => sent += n,
            }
        }
        Ok(bufs.pop().expect("one buffer"))
    }

    /// One non-blocking `recv(2)` into `buf[range]`, outside io_uring: `Ok(None)` when no byte
    /// is there. For polling a socket from a spinning executor, where a system call per look is
    /// cheaper than io_uring's poll arming and completion (and no io_uring receive may be in
    /// flight on the socket at the same time).
    ///
    /// # Errors
    ///
    /// The receive error.
    ///
    /// # Panics
    ///
    /// If the range extends past the buffer's capacity.
    pub fn try_recv_now(&self, buf: &mut AlignedBuf, range: std::ops::Range<usize>) -> io::Result<Option<usize>> {
        assert!(range.start <= range.end && range.end <= buf.capacity(), "recv range {range:?} past capacity");
        let Some(tls) = &self.tls else { return self.raw_try_recv_now(buf, range) };
        if tls.cin.borrow().is_none() {
            return Ok(None); // a receive is in flight: it owns what arrives
        }
        if let Some(r) = tls.read_plain(&mut buf.spare_full()[range.clone()]) {
            return r.map(Some);
        }
        tls.feed()?;
        if let Some(r) = tls.read_plain(&mut buf.spare_full()[range.clone()]) {
            return r.map(Some);
        }
        let got = {
            let mut cin = tls.cin.borrow_mut();
            // A receive in flight owns the buffer: nothing now.
            let Some((cbuf, start, end)) = cin.as_mut() else { return Ok(None) };
            if *start > 0 {
                cbuf.spare_full().copy_within(*start..*end, 0);
                (*start, *end) = (0, *end - *start);
            }
            let cap = cbuf.capacity();
            if *end == cap {
                return Ok(None);
            }
            let n = self.raw_try_recv_now(cbuf, *end..cap)?;
            if let Some(n) = n {
                *end += n;
            }
            n
        };
        match got {
            None => Ok(None),
            Some(0) => tls.at_eof(&mut buf.spare_full()[range]).map(Some),
            Some(_) => {
                tls.feed()?;
                tls.read_plain(&mut buf.spare_full()[range]).transpose()
            }
        }
    }

    fn raw_try_recv_now(&self, buf: &mut AlignedBuf, range: std::ops::Range<usize>) -> io::Result<Option<usize>> {
        let dst = &mut buf.spare_full()[range];
        // SAFETY: `dst` is a valid, writable slice of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) }
    }

    /// Shuts down the sending direction: the kernel sends what it holds, then end of stream.
    /// Receiving goes on.
    pub fn shutdown_write(&self) {
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
    }

    /// Shuts down both directions (the peer sees end of stream); in-flight operations fail.
    pub fn shutdown(&self) {
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Builder;
    use std::rc::Rc;

    #[test]
    fn echo_over_loopback() {
        let ex = Builder::new().build().unwrap();
        ex.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr();
            let server = crate::spawn(async move {
                let (s, _) = listener.accept().await.unwrap();
                let mut buf = AlignedBuf::zeroed(1024);
                loop {
                    let (n, b) = s.recv(buf, 0).await;
                    buf = b;
                    let n = n.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.send_all(buf[..n].to_vec()).await.unwrap();
                }
            });
            let c = TcpStream::connect(addr).await.unwrap();
            c.send_all(b"hello".to_vec()).await.unwrap();
            let (n, buf) = c.recv(AlignedBuf::zeroed(64), 0).await;
            assert_eq!(&buf[..n.unwrap()], b"hello");
            c.shutdown();
            server.await;
        });
    }

    #[test]
    fn connect_refused_is_an_error() {
        let ex = Builder::new().build().unwrap();
        let port = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap().local_addr().port();
        let err = ex.block_on(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn dropped_recv_is_cancelled_and_stream_still_works() {
        let ex = Builder::new().build().unwrap();
        ex.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr();
            let accept = crate::spawn(async move { listener.accept().await.unwrap().0 });
            let c = Rc::new(TcpStream::connect(addr).await.unwrap());
            let s = accept.await;
            // A receive that times out is dropped while in flight; its buffer goes to the reactor.
            let r = crate::time::timeout(std::time::Duration::from_millis(5), c.recv(AlignedBuf::zeroed(64), 0)).await;
            assert!(r.is_err());
            s.send_all(b"after".to_vec()).await.unwrap();
            let (n, buf) = c.recv(AlignedBuf::zeroed(64), 0).await;
            assert_eq!(&buf[..n.unwrap()], b"after");
        });
    }

    #[test]
    fn a_task_that_keeps_yielding_does_not_starve_receives() {
        // Receives are deferred to let replies go first; a busy executor must still submit them.
        let ex = Builder::new().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = listener.accept().unwrap();
            for i in 0..100u8 {
                s.write_all(&[i]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        let got = ex.block_on(async move {
            let c = Rc::new(TcpStream::connect(addr).await.unwrap());
            let received = Rc::new(std::cell::Cell::new(0usize));
            let (c2, r2) = (c.clone(), received.clone());
            let reader = crate::spawn(async move {
                let mut buf = AlignedBuf::zeroed(64);
                loop {
                    let (n, b) = c2.recv(buf, 0).await;
                    buf = b;
                    match n.unwrap() {
                        0 => break,
                        n => r2.set(r2.get() + n),
                    }
                }
            });
            // The main future never stops being ready.
            let start = std::time::Instant::now();
            while received.get() < 100 && start.elapsed() < std::time::Duration::from_secs(10) {
                crate::yield_now().await;
            }
            reader.abort();
            received.get()
        });
        writer.join().unwrap();
        assert_eq!(got, 100, "receives starved by a busy task");
    }

    #[test]
    fn vectored_send_with_skip() {
        let ex = Builder::new().build().unwrap();
        ex.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr();
            let accept = crate::spawn(async move { listener.accept().await.unwrap().0 });
            let c = TcpStream::connect(addr).await.unwrap();
            let s = accept.await;
            let (n, _) = c.send_vectored(vec![b"abc".to_vec(), b"defg".to_vec()], 2).await;
            assert_eq!(n.unwrap(), 5);
            let mut got = Vec::new();
            let mut buf = AlignedBuf::zeroed(16);
            while got.len() < 5 {
                let (n, b) = s.recv(buf, 0).await;
                buf = b;
                got.extend_from_slice(&buf[..n.unwrap()]);
            }
            assert_eq!(got, b"cdefg");
        });
    }
}
