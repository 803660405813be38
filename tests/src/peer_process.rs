//! What the two sides of a cross-process transport test agree on.
//!
//! The test process is peer 0 ([`PARENT`]); the `transport_peer` binary, started by the test as a
//! child process, is peer 1 ([`CHILD`]). Both sides build their transports from [`limits`],
//! [`tcp_config`] and [`shm_config`], so the limits cannot drift apart; the child learns the rest
//! (transport, scenario, the parent's address or the shm namespace) from its command line,
//! written and parsed by [`PeerArgs`].
//!
//! Every wait here is bounded ([`WAIT`]) and fails with a message naming what was awaited.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use derecho_runtime::time;
use derecho_runtime::transport::shm::ShmConfig;
use derecho_runtime::transport::tcp::TcpConfig;
use derecho_runtime::transport::{
    AnyTransport, Frame, PeerFailure, PeerId, RegionId, Transport, TransportEvent, TransportLimits,
};

/// The test process.
pub const PARENT: PeerId = PeerId(0);
/// The `transport_peer` child process.
pub const CHILD: PeerId = PeerId(1);

/// The bound on every single wait for an event (a frame, a failure, an exit).
pub const WAIT: Duration = Duration::from_secs(10);

/// The first frame each side sends in scenarios that need a barrier.
pub const READY: &[u8] = b"ready";
/// The parent's last frame in the scenarios that end cleanly: the child closes and exits 0.
pub const DONE: &[u8] = b"done";

/// Loops over frames yield to the executor every this many frames. `send_frame` and
/// `next_event` return at once while there is room or there are events, so a loop over them
/// never gives the executor back: the transport's heartbeat task would not run, and under CPU
/// contention the other side would (rightly) declare this one silent.
pub const YIELD_EVERY: u64 = 64;

/// The limits both processes use: those of `runtime/tests/transport.rs`.
pub fn limits() -> TransportLimits {
    TransportLimits {
        max_frame_len: 1 << 20,
        heartbeat_interval: Duration::from_millis(20),
        peer_timeout: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(20),
        ..TransportLimits::default()
    }
}

/// The TCP configuration of peer `me` whose only peer is `other` at `other_addr`.
///
/// The parent never dials (the higher id dials the lower), so it passes a placeholder address
/// for the child: `TcpConfig` wants an address for every peer, even those that dial us.
pub fn tcp_config(me: PeerId, other: PeerId, other_addr: SocketAddr) -> TcpConfig {
    let mut cfg = TcpConfig::new(me, vec![(other, other_addr)]);
    cfg.limits = limits();
    cfg
}

/// A placeholder for the address of a peer that dials us (see [`tcp_config`]).
pub fn unused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

/// The shared-memory configuration of peer `me` whose only peer is `other`.
pub fn shm_config(me: PeerId, other: PeerId, namespace: &str) -> ShmConfig {
    let mut cfg = ShmConfig::new(me, vec![other], namespace);
    cfg.limits = limits();
    cfg.ring_len = 4 * (cfg.limits.max_frame_len + 64);
    cfg
}

/// Where the shared-memory files live.
pub const SHM_DIR: &str = "/dev/shm";

/// Which transport a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// [`derecho_runtime::transport::tcp`] on loopback.
    Tcp,
    /// [`derecho_runtime::transport::shm`] in `/dev/shm`.
    Shm,
}

impl Which {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Which::Tcp => "tcp",
            Which::Shm => "shm",
        }
    }
}

impl FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Which::Tcp),
            "shm" => Ok(Which::Shm),
            _ => Err(format!("unknown transport {s:?} (tcp or shm)")),
        }
    }
}

/// What the child does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Sends [`ORDERED_FRAME_COUNT`] frames [`ordered_frame`]`(0..)`, then waits for [`DONE`].
    FramesInOrder,
    /// Writes and pushes a data block then a counter [`PUSH_COUNT`] times, with a frame naming
    /// the counter every [`PUSH_FRAME_EVERY`] pushes, then waits for [`DONE`].
    Pushes,
    /// Checks that a frame of `max_frame_len + 1` is refused, sends [`MAX_FRAME_COUNT`] frames
    /// [`max_frame`]`(0..)`, then waits for [`DONE`].
    MaxFrames,
    /// Sends [`READY`], then sleeps until killed.
    Killed,
    /// Sends [`READY`], then sleeps until stopped and killed.
    Stopped,
    /// Breaks the wire rules. TCP: completes the handshake on a raw socket, writes
    /// [`BAD_HEADER_BYTE`] × header length, and waits for the parent to close the connection.
    /// Shm: writes a record of kind [`BAD_RECORD_KIND`] into the ring it produces into, and waits
    /// for the parent to close.
    Corrupt,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 6] = [
        Scenario::FramesInOrder,
        Scenario::Pushes,
        Scenario::MaxFrames,
        Scenario::Killed,
        Scenario::Stopped,
        Scenario::Corrupt,
    ];

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FramesInOrder => "frames-in-order",
            Scenario::Pushes => "pushes",
            Scenario::MaxFrames => "max-frames",
            Scenario::Killed => "killed",
            Scenario::Stopped => "stopped",
            Scenario::Corrupt => "corrupt",
        }
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL.into_iter().find(|sc| sc.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Scenario::ALL.iter().map(|sc| sc.name()).collect();
            format!("unknown scenario {s:?} (one of {})", names.join(", "))
        })
    }
}

/// The command line of `transport_peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerArgs {
    /// `--transport tcp|shm`.
    pub which: Which,
    /// `--scenario NAME`.
    pub scenario: Scenario,
    /// `--parent-addr ADDR`: the parent's listen address (TCP only).
    pub parent_addr: Option<SocketAddr>,
    /// `--ns NAME`: the shared-memory namespace (shm only).
    pub namespace: Option<String>,
}

/// How to call `transport_peer`.
pub const USAGE: &str =
    "usage: transport_peer --transport tcp|shm --scenario NAME [--parent-addr ADDR (tcp)] [--ns NAME (shm)]";

impl PeerArgs {
    /// The arguments, as [`PeerArgs::parse`] reads them.
    pub fn to_args(&self) -> Vec<String> {
        let mut v =
            vec!["--transport".into(), self.which.name().into(), "--scenario".into(), self.scenario.name().into()];
        if let Some(a) = self.parent_addr {
            v.extend(["--parent-addr".into(), a.to_string()]);
        }
        if let Some(ns) = &self.namespace {
            v.extend(["--ns".into(), ns.clone()]);
        }
        v
    }

    /// Parses the arguments (without the program name).
    ///
    /// # Errors
    ///
    /// A message naming the bad or missing argument.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let (mut which, mut scenario, mut parent_addr, mut namespace) = (None, None, None, None);
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--transport" => which = Some(value.parse::<Which>()?),
                "--scenario" => scenario = Some(value.parse::<Scenario>()?),
                "--parent-addr" => {
                    parent_addr = Some(value.parse().map_err(|e| format!("--parent-addr {value:?}: {e}"))?);
                }
                "--ns" => namespace = Some(value),
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        let which = which.ok_or("--transport is required")?;
        let scenario = scenario.ok_or("--scenario is required")?;
        match which {
            Which::Tcp if parent_addr.is_none() => return Err("--parent-addr is required with tcp".into()),
            Which::Shm if namespace.is_none() => return Err("--ns is required with shm".into()),
            _ => {}
        }
        Ok(Self { which, scenario, parent_addr, namespace })
    }
}

impl fmt::Display for PeerArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transport_peer ({} {})", self.which.name(), self.scenario.name())
    }
}

// ---- frames in order ------------------------------------------------------------------------------

/// Frames sent in [`Scenario::FramesInOrder`].
pub const ORDERED_FRAME_COUNT: u64 = 5000;

/// Length of frame `i`: mostly 8 to 3007 bytes; every 1000th is larger than the TCP
/// transport's 256 KiB receive buffer (its separate receive path) and wraps the shm ring.
pub fn ordered_frame_len(i: u64) -> usize {
    if i % 1000 == 999 { 300_000 + i as usize } else { 8 + (i as usize * 37) % 3000 }
}

/// Frame `i`: its sequence number (little-endian `u64`), then [`pattern`]`(i, ..)`.
pub fn ordered_frame(i: u64) -> Vec<u8> {
    let mut v = pattern(i, ordered_frame_len(i));
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Frames sent in [`Scenario::MaxFrames`].
pub const MAX_FRAME_COUNT: u64 = 4;

/// Maximum-size frame `k`: `limits().max_frame_len` bytes of [`pattern`]`(k, ..)`.
pub fn max_frame(k: u64) -> Vec<u8> {
    pattern(k, limits().max_frame_len)
}

/// `len` bytes that depend on `seed` and on the position of every 8-byte word, so a frame that is
/// swapped, shifted or cut short does not compare equal. Built a word at a time: the tests run
/// unoptimised, inside executor tasks that must not hog the thread (see [`YIELD_EVERY`]).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let base = seed.rotate_left(40);
    for (w, chunk) in v.chunks_mut(8).enumerate() {
        // The splitmix64 finaliser: every output bit depends on every input bit.
        let mut x = (w as u64 ^ base).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// The first position where `a` and `b` differ (or where the shorter ends), if they differ.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

// ---- pushes ---------------------------------------------------------------------------------------

/// The region of [`Scenario::Pushes`]: a counter (`u64` at 0) and a data block.
pub const ROW: RegionId = RegionId(7);
/// Offset of the data block; its first 8 bytes are a stamp, the push number.
pub const DATA_OFF: usize = 64;
/// Length of the data block.
pub const DATA_LEN: usize = 512;
/// Length of the region.
pub const ROW_LEN: usize = DATA_OFF + DATA_LEN;
/// Pushes of data then counter.
pub const PUSH_COUNT: u64 = 20_000;
/// A frame carrying the counter follows every this many pushes.
pub const PUSH_FRAME_EVERY: u64 = 1000;

/// The data block of push `i`: the stamp `i`, then the byte `i % 256`.
pub fn push_block(i: u64) -> [u8; DATA_LEN] {
    let mut b = [(i % 256) as u8; DATA_LEN];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

// ---- the wire, broken -----------------------------------------------------------------------------

/// The byte a corrupt TCP peer repeats where a header should be.
pub const BAD_HEADER_BYTE: u8 = 0xAB;

/// The record kind a corrupt shm peer writes (the transport knows 1, frame, and 2, padding).
pub const BAD_RECORD_KIND: u32 = 99;

/// The layout of a shm ring file that a corrupt peer writes behind the transport's back. These
/// mirror private constants of `derecho_runtime::transport::shm` (as `runtime/tests/transport.rs`
/// does): the producer position `tail: u64` at byte 128, the data area from byte 256, and a record
/// header `len: u32, kind: u32` padded to 16 bytes.
pub mod ring_layout {
    /// Offset of the producer position (bytes produced, monotonic).
    pub const TAIL_OFFSET: usize = 128;
    /// Offset of the data area.
    pub const DATA_OFFSET: usize = 256;
}

/// The ring file carrying frames from `from` to `to`.
pub fn ring_path(namespace: &str, from: PeerId, to: PeerId) -> PathBuf {
    Path::new(SHM_DIR).join(format!("derecho-{namespace}-{}-to-{}.ring", from.0, to.0))
}

// ---- bounded waits --------------------------------------------------------------------------------

/// The next event, or a panic naming `what` after [`WAIT`].
pub async fn next_event(t: &AnyTransport, what: &str) -> TransportEvent {
    match time::timeout(WAIT, t.next_event()).await {
        Ok(e) => e,
        Err(_) => panic!("waiting for {what}: no event within {WAIT:?}"),
    }
}

/// The next frame, or a panic naming `what` (after [`WAIT`], or on a peer failure).
pub async fn next_frame(t: &AnyTransport, what: &str) -> (PeerId, Frame) {
    match next_event(t, what).await {
        TransportEvent::Frame { from, frame } => (from, frame),
        TransportEvent::PeerFailed { peer, reason } => panic!("waiting for {what}: {peer} failed: {reason:?}"),
    }
}

/// Waits for the frame `want` from `from`.
pub async fn expect_frame(t: &AnyTransport, from: PeerId, want: &[u8]) {
    let what = format!("the frame {:?} from {from}", String::from_utf8_lossy(want));
    let (got_from, frame) = next_frame(t, &what).await;
    assert_eq!(got_from, from, "waiting for {what}");
    assert_eq!(&frame[..], want, "waiting for {what}");
}

/// The next event, which must be a peer failure, or a panic naming `what`.
pub async fn next_failure(t: &AnyTransport, what: &str) -> (PeerId, PeerFailure) {
    match next_event(t, what).await {
        TransportEvent::PeerFailed { peer, reason } => (peer, reason),
        TransportEvent::Frame { from, frame } => {
            panic!("waiting for {what}: unexpected frame of {} bytes from {from}", frame.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_args_round_trip() {
        let tcp = PeerArgs {
            which: Which::Tcp,
            scenario: Scenario::Corrupt,
            parent_addr: Some("127.0.0.1:4000".parse().unwrap()),
            namespace: None,
        };
        assert_eq!(PeerArgs::parse(tcp.to_args()), Ok(tcp));
        for scenario in Scenario::ALL {
            let shm = PeerArgs { which: Which::Shm, scenario, parent_addr: None, namespace: Some("ns-1".into()) };
            assert_eq!(PeerArgs::parse(shm.to_args()), Ok(shm));
        }
    }

    #[test]
    fn peer_args_name_what_is_wrong() {
        let parse = |s: &str| PeerArgs::parse(s.split_whitespace().map(String::from)).unwrap_err();
        assert!(parse("--transport tcp --scenario pushes").contains("--parent-addr"));
        assert!(parse("--transport shm --scenario pushes").contains("--ns"));
        assert!(parse("--transport udp --scenario pushes").contains("udp"));
        assert!(parse("--transport shm --scenario nap --ns x").contains("nap"));
        assert!(parse("--transport").contains("needs a value"));
        assert!(parse("--scenario killed --ns x").contains("--transport"));
    }

    #[test]
    fn patterns_differ_where_it_matters() {
        assert_eq!(first_difference(&ordered_frame(3), &ordered_frame(3)), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        // Frames of equal length differ beyond their sequence number.
        let (a, b) = (max_frame(0), max_frame(1));
        assert!(a[8..].iter().zip(&b[8..]).filter(|(x, y)| x != y).count() > a.len() / 2);
        // A block shifted by a word, or by 2 KiB, does not match itself.
        assert_ne!(a[..4096], a[8..4096 + 8]);
        assert_ne!(a[..4096], a[2048..4096 + 2048]);
        assert_eq!(pattern(5, 13)[..], pattern(5, 16)[..13]);
        assert!(ordered_frame_len(999) > 256 << 10);
        assert!(ordered_frame_len(0) >= 8);
    }
}
