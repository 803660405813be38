//! The `Hello` exchange that opens every connection: each side sends its id and the group tag
//! its connection is for, and reads the other's. An accepted connection must send its `Hello`
//! (after the TLS handshake, with TLS) within 5 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::PeerId;
use super::super::frame::{HEADER_LEN, Header, Kind};
use crate::buf::AlignedBuf;
use crate::net::TcpStream;
use crate::time;
use crate::tls::TlsIdentity;

/// An accepted connection's `Hello` is read into a buffer this small (a listener holds one per
/// connection in its handshake); a transport that claims the connection gets a full receive
/// buffer then.
pub(super) const HELLO_BUF_LEN: usize = 4 << 10;

/// A connection after its handshake, with bytes that arrived behind the `Hello`.
pub(super) struct Handshaken {
    pub(super) peer: PeerId,
    pub(super) stream: TcpStream,
    pub(super) buf: AlignedBuf,
    pub(super) filled: usize,
}

pub(super) fn hello(me: PeerId, tag: u32) -> [u8; HEADER_LEN] {
    Header::encode(Kind::Hello, u64::from(me.0) | (u64::from(tag) << 32), &[])
}

/// Reads until at least `HEADER_LEN` bytes are in `buf`, then validates them as a `Hello` with
/// group tag `tag`.
pub(super) async fn read_hello(
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
pub(super) async fn read_hello_any(
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
pub(super) const HELLO_WITHIN: Duration = Duration::from_secs(5);

thread_local! {
    /// Refused connections are logged at most ten a second per thread (an attack would
    /// otherwise write a line per connection).
    static REFUSALS: crate::limit::LogLimiter = crate::limit::LogLimiter::default();
}

/// Logs a refused connection, rate limited.
pub(super) fn refused(addr: &SocketAddr, reason: &str) {
    REFUSALS.with(|l| {
        if let Some(left_out) = l.admit(Instant::now()) {
            tracing::warn!(%addr, %reason, left_out, "refused a connection");
        }
    });
}

/// Reads the `Hello` of an accepted connection within 5 s; logs and returns `None` if it is
/// missing or malformed (the connection is then dropped).
pub(super) async fn accept_hello(
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
