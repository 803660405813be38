//! The pieces of the `ping` demo: its command line, connecting a transport, the ping and pong
//! loops, and the latency summary.
//!
//! The binary (`src/bin/ping.rs`) starts a second process and strings these together; the book
//! includes them, so they are written to be read.

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use derecho::runtime::time;
use derecho::{
    AnyTransport, Frame, PeerFailure, PeerId, Placement, RuntimeError, ShmConfig, ShmTransport, TcpConfig, TcpListener,
    TcpTransport, Transport, TransportError, TransportEvent, TransportLimits,
};

/// The parent process: it pings.
pub const PARENT: PeerId = PeerId(0);
/// The child process: it answers. Its id is the larger, so it is the one that dials over TCP.
pub const CHILD: PeerId = PeerId(1);

/// How long connecting may take before the demo gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a side waits for the next frame before it gives up.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Round trips run before measuring, so that caches, page tables and branch predictors are warm.
pub const WARMUP_ROUNDS: u64 = 200;

/// The largest `--size`.
pub const SIZE_MAX: usize = 1 << 20;
/// The smallest `--size`: the round number travels in the first 8 bytes of every frame.
pub const SIZE_MIN: usize = 8;
/// The largest `--rounds` (one 8-byte sample is kept per round).
pub const ROUNDS_MAX: u64 = 10_000_000;
/// The largest `--spin-us` (one second).
pub const SPIN_US_MAX: u64 = 1_000_000;

/// One of the runtime's transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP on loopback.
    Tcp,
    /// Shared memory in `/dev/shm`.
    Shm,
}

impl TransportKind {
    /// The short name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
        }
    }

    /// What the transport is, in one line.
    pub fn description(self) -> &'static str {
        match self {
            TransportKind::Tcp => {
                "TCP on loopback through io_uring: one connection per pair of peers, \
                 frames with a 24-byte checksummed header"
            }
            TransportKind::Shm => {
                "shared memory in /dev/shm: one ring per sender, drained by the \
                 receiver's executor loop, no system call while it spins"
            }
        }
    }
}

/// The options a user gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingOptions {
    /// The transports to measure, in order.
    pub transports: Vec<TransportKind>,
    /// Measured round trips per transport.
    pub rounds: u64,
    /// How long an idle executor polls before it parks, in microseconds.
    pub spin_us: u64,
    /// Bytes per frame.
    pub size: usize,
}

impl Default for PingOptions {
    fn default() -> Self {
        Self { transports: vec![TransportKind::Tcp, TransportKind::Shm], rounds: 10_000, spin_us: 50, size: 64 }
    }
}

impl PingOptions {
    /// The spin budget as a duration.
    pub fn spin_budget(&self) -> Duration {
        Duration::from_micros(self.spin_us)
    }
}

/// What the parent tells the child on its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildSetup {
    /// The address of the parent's TCP listener, which the child dials.
    pub parent_addr: SocketAddr,
    /// The shared-memory namespace both processes use.
    pub shm_namespace: String,
    /// Where the child's executor runs.
    pub placement: Placement,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the demo: start the child, ping it.
    Parent(PingOptions),
    /// Run as the child started by a parent: answer its pings.
    Child(PingOptions, ChildSetup),
}

/// A command line that cannot be run (clap's error: it prints itself with usage, exits 2, and
/// carries `--help` as kind `DisplayHelp`).
pub type UsageError = clap::Error;

/// The transports to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Transports {
    Tcp,
    Shm,
    Both,
}

/// Starts a second copy of itself, pins the two processes to different cores, and measures
/// ping-pong round trips between them over TCP on loopback, then over shared memory.
#[derive(Debug, clap::Parser)]
#[command(name = "ping", version)]
struct Cli {
    /// The transports to measure.
    #[arg(long, value_enum, default_value = "both")]
    transport: Transports,
    /// Measured round trips per transport.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=ROUNDS_MAX))]
    rounds: u64,
    /// Microseconds an idle executor polls before it parks; 0 parks at once, so every message
    /// pays a thread wake-up.
    #[arg(long, value_name = "N", default_value_t = 50, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(0..=SPIN_US_MAX))]
    spin_us: u64,
    /// Bytes per frame.
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(SIZE_MIN as u64..=SIZE_MAX as u64))]
    size: u64,
    /// Run as the child of a parent (the parent passes it, with the three below).
    #[arg(long, hide = true, requires_all = ["parent_addr", "shm_namespace"])]
    child: bool,
    /// The parent's TCP listener.
    #[arg(long, hide = true, requires = "child")]
    parent_addr: Option<SocketAddr>,
    /// The shared-memory namespace of both processes.
    #[arg(long, hide = true, requires = "child")]
    shm_namespace: Option<String>,
    /// The child's core.
    #[arg(long, hide = true, requires = "child", conflicts_with = "unpinned", value_parser = clap::value_parser!(u16))]
    core: Option<u16>,
    /// The child is not pinned.
    #[arg(long, hide = true, requires = "child")]
    unpinned: bool,
}

/// Parses the arguments (without the program name).
///
/// Besides the options `--help` lists, the parent passes the child `--child`,
/// `--parent-addr ADDR`, `--shm-namespace NAME` and `--core N` or `--unpinned`; see
/// [`child_args`].
///
/// # Errors
///
/// [`UsageError`] for an unknown flag, a missing or malformed value, or a child flag given
/// without `--child`; and for `--help`.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let cli = <Cli as clap::Parser>::try_parse_from(std::iter::once("ping".to_string()).chain(args))?;
    let transports = match cli.transport {
        Transports::Tcp => vec![TransportKind::Tcp],
        Transports::Shm => vec![TransportKind::Shm],
        Transports::Both => vec![TransportKind::Tcp, TransportKind::Shm],
    };
    let options = PingOptions { transports, rounds: cli.rounds, spin_us: cli.spin_us, size: cli.size as usize };
    let (Some(parent_addr), Some(shm_namespace)) = (cli.parent_addr, cli.shm_namespace) else {
        return Ok(Command::Parent(options));
    };
    let placement = match cli.core {
        Some(core) => Placement::Core(usize::from(core)),
        None if cli.unpinned => Placement::Unpinned,
        None => {
            let e = <Cli as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, "--child needs --core or --unpinned");
            return Err(e);
        }
    };
    Ok(Command::Child(options, ChildSetup { parent_addr, shm_namespace, placement }))
}

/// The command line that starts the child (without the program name); [`parse_args`] reads it
/// back as [`Command::Child`].
pub fn child_args(options: &PingOptions, setup: &ChildSetup) -> Vec<String> {
    let transport = match options.transports.as_slice() {
        [TransportKind::Tcp] => "tcp",
        [TransportKind::Shm] => "shm",
        _ => "both",
    };
    let mut args = vec![
        "--child".to_string(),
        "--transport".into(),
        transport.into(),
        "--rounds".into(),
        options.rounds.to_string(),
        "--spin-us".into(),
        options.spin_us.to_string(),
        "--size".into(),
        options.size.to_string(),
        "--parent-addr".into(),
        setup.parent_addr.to_string(),
        "--shm-namespace".into(),
        setup.shm_namespace.clone(),
    ];
    match setup.placement {
        Placement::Core(core) => args.extend(["--core".to_string(), core.to_string()]),
        Placement::Unpinned => args.push("--unpinned".into()),
    }
    args
}

/// Why a run of the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// The executor could not start (no such core, pinning refused, no io_uring).
    #[error("cannot start the executor: {0}")]
    Runtime(#[from] RuntimeError),
    /// The TCP listener could not be bound.
    #[error("cannot bind the TCP listener: {0}")]
    Bind(#[source] std::io::Error),
    /// A transport operation failed (connecting, sending).
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// Nothing arrived in time.
    #[error("no {waiting_for} within {after:?}")]
    Timeout {
        /// What was awaited.
        waiting_for: &'static str,
        /// How long.
        after: Duration,
    },
    /// The other process failed or went away.
    #[error("{peer} failed: {reason}")]
    PeerFailed {
        /// The peer.
        peer: PeerId,
        /// Why the transport declared it failed.
        reason: PeerFailure,
    },
    /// The echo of a ping is not the ping.
    #[error("round {round}: the echo is not the ping (got {len} bytes starting with round {echoed_round})")]
    WrongEcho {
        /// The round.
        round: u64,
        /// The echo's length.
        len: usize,
        /// The round number in the echo.
        echoed_round: u64,
    },
    /// The child process could not be started or waited for.
    #[error("child process: {0}")]
    ChildIo(#[source] std::io::Error),
    /// The child process exited before the demo was over, or unsuccessfully.
    #[error("the child process exited with {0}")]
    ChildExited(ExitStatus),
    /// The child process did not exit in time (it was killed).
    #[error("the child process did not exit within {0:?} and was killed")]
    ChildHung(Duration),
}

// ANCHOR: connect
/// How this process reaches the other one.
#[derive(Debug)]
pub enum Link {
    /// TCP: our listener, and the other side's address (dialled only if its id is smaller).
    Tcp {
        /// Accepts connections from peers with larger ids.
        listener: TcpListener,
        /// Where the other side listens.
        other_addr: SocketAddr,
    },
    /// Shared memory: files named after `namespace` in `/dev/shm`.
    Shm {
        /// The same on both sides.
        namespace: String,
    },
}

/// Connects this side (`me`) to `other` and returns once both are connected.
///
/// # Errors
///
/// [`TransportError::ConnectTimeout`] if the other side does not appear within
/// [`CONNECT_TIMEOUT`]; other [`TransportError`]s for bad configurations and I/O failures.
pub async fn connect(me: PeerId, other: PeerId, link: Link) -> Result<AnyTransport, TransportError> {
    let limits = TransportLimits { connect_timeout: CONNECT_TIMEOUT, ..TransportLimits::default() };
    match link {
        Link::Tcp { listener, other_addr } => {
            let config = TcpConfig { limits, ..TcpConfig::new(me, vec![(other, other_addr)]) };
            Ok(AnyTransport::Tcp(TcpTransport::connect(listener, config).await?))
        }
        Link::Shm { namespace } => {
            let config = ShmConfig { limits, ..ShmConfig::new(me, vec![other], namespace) };
            Ok(AnyTransport::Shm(ShmTransport::connect(config).await?))
        }
    }
}
// ANCHOR_END: connect

/// The next frame from the other side, with every other outcome turned into an error: a failed
/// peer, or nothing within [`FRAME_TIMEOUT`].
async fn next_frame(t: &impl Transport) -> Result<Frame, PingError> {
    match time::timeout(FRAME_TIMEOUT, t.next_event()).await {
        Ok(TransportEvent::Frame { frame, .. }) => Ok(frame),
        Ok(TransportEvent::PeerFailed { peer, reason }) => Err(PingError::PeerFailed { peer, reason }),
        Err(_) => Err(PingError::Timeout { waiting_for: "frame", after: FRAME_TIMEOUT }),
    }
}

// ANCHOR: ping
/// Sends `rounds` frames of `size` bytes to `peer` one at a time, waiting for each echo, and
/// returns the round-trip times.
///
/// # Errors
///
/// A failed send, a failed or silent peer, or an echo that is not the frame sent.
///
/// # Panics
///
/// If `size` is below [`SIZE_MIN`].
pub async fn ping(t: &impl Transport, peer: PeerId, rounds: u64, size: usize) -> Result<Vec<Duration>, PingError> {
    assert!(size >= SIZE_MIN, "a ping carries its round number in its first 8 bytes");
    let mut round_trips = Vec::with_capacity(rounds as usize);
    for round in 0..rounds {
        let mut body = vec![0u8; size];
        body[..8].copy_from_slice(&round.to_le_bytes());
        let sent_at = Instant::now();
        t.send_frame(peer, body.into()).await?;
        let echo = next_frame(t).await?;
        round_trips.push(sent_at.elapsed());

        let echoed_round = echo.get(..8).map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        if echo.len() != size || echoed_round != round {
            return Err(PingError::WrongEcho { round, len: echo.len(), echoed_round });
        }
    }
    Ok(round_trips)
}
// ANCHOR_END: ping

// ANCHOR: pong
/// Sends every frame from `peer` back, until `peer` closes its transport; returns how many frames
/// it echoed.
///
/// # Errors
///
/// A failed send, a peer that fails in any way other than closing, or a peer silent for
/// [`FRAME_TIMEOUT`].
pub async fn pong(t: &impl Transport, peer: PeerId) -> Result<u64, PingError> {
    let mut echoed = 0;
    loop {
        match time::timeout(FRAME_TIMEOUT, t.next_event()).await {
            // `into_buf` hands over the frame's bytes as an owned, aligned buffer, which
            // becomes the payload of the echo.
            Ok(TransportEvent::Frame { frame, .. }) => {
                t.send_frame(peer, frame.into_buf().into()).await?;
                echoed += 1;
            }
            // A graceful close is how the pinger says it is done.
            Ok(TransportEvent::PeerFailed { reason: PeerFailure::Closed, .. }) => return Ok(echoed),
            Ok(TransportEvent::PeerFailed { peer: failed, reason }) => {
                return Err(PingError::PeerFailed { peer: failed, reason });
            }
            Err(_) => return Err(PingError::Timeout { waiting_for: "frame", after: FRAME_TIMEOUT }),
        }
    }
}
// ANCHOR_END: pong

/// Order statistics of a set of round-trip times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latencies {
    /// Number of samples.
    pub count: usize,
    /// Fastest.
    pub min: Duration,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
    /// Sum of all samples.
    pub total: Duration,
}

impl Latencies {
    /// Summarises `samples`; `None` if there are none.
    pub fn new(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        // Nearest rank: the smallest sample with at least p% of the samples at or below it.
        let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
        Some(Self {
            count: samples.len(),
            min: samples[0],
            p50: rank(50),
            p99: rank(99),
            max: samples[samples.len() - 1],
            total: samples.iter().sum(),
        })
    }
}

impl fmt::Display for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} round trips in {:.1} ms: p50 {} µs, p99 {} µs (min {} µs, max {} µs)",
            self.count,
            self.total.as_secs_f64() * 1e3,
            micros(self.p50),
            micros(self.p99),
            micros(self.min),
            micros(self.max),
        )
    }
}

/// Microseconds, with two decimals below 10 µs and one above.
fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 { format!("{us:.2}") } else { format!("{us:.1}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_without_arguments() {
        assert_eq!(parse(&[]).unwrap(), Command::Parent(PingOptions::default()));
        let d = PingOptions::default();
        assert_eq!((d.rounds, d.spin_us, d.size), (10_000, 50, 64));
        assert_eq!(d.transports, [TransportKind::Tcp, TransportKind::Shm]);
    }

    #[test]
    fn options_in_both_spellings() {
        let got = parse(&["--transport", "shm", "--rounds=7", "--spin-us", "0", "--size=4096"]).unwrap();
        let want = PingOptions { transports: vec![TransportKind::Shm], rounds: 7, spin_us: 0, size: 4096 };
        assert_eq!(got, Command::Parent(want));
        for help in [&["-h"][..], &["--rounds", "3", "--help"]] {
            assert_eq!(parse(help).unwrap_err().kind(), clap::error::ErrorKind::DisplayHelp);
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["--verbose"]).contains("unexpected argument '--verbose'"));
        assert!(err(&["--transport", "rdma"]).contains("[possible values: tcp, shm, both]"));
        assert!(err(&["--rounds"]).contains("a value is required for '--rounds <N>'"));
        assert!(err(&["--rounds", "0"]).contains("--rounds"));
        assert!(err(&["--size", "4"]).contains("--size"));
        assert!(err(&["--spin-us", "-1"]).contains("--spin-us"));
        assert!(err(&["--core", "1"]).contains("--child"));
        assert!(err(&["--child", "--shm-namespace", "x", "--unpinned"]).contains("--parent-addr"));
        assert!(
            err(&["--child", "--shm-namespace", "x", "--parent-addr", "127.0.0.1:1"]).contains("--core or --unpinned")
        );
    }

    #[test]
    fn child_arguments_round_trip() {
        let options = PingOptions { transports: vec![TransportKind::Tcp], rounds: 5, spin_us: 3, size: 100 };
        for placement in [Placement::Core(1), Placement::Unpinned] {
            let setup = ChildSetup {
                parent_addr: "127.0.0.1:4000".parse().unwrap(),
                shm_namespace: "ping-1".into(),
                placement,
            };
            let args = child_args(&options, &setup);
            assert_eq!(parse_args(args).unwrap(), Command::Child(options.clone(), setup));
        }
        let both = PingOptions::default();
        let setup = ChildSetup {
            parent_addr: "[::1]:9".parse().unwrap(),
            shm_namespace: "n".into(),
            placement: Placement::Unpinned,
        };
        assert_eq!(parse_args(child_args(&both, &setup)).unwrap(), Command::Child(both, setup));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let l = Latencies::new(samples).unwrap();
        assert_eq!((l.count, l.min, l.max), (100, Duration::from_micros(1), Duration::from_micros(100)));
        assert_eq!((l.p50, l.p99), (Duration::from_micros(50), Duration::from_micros(99)));
        assert_eq!(l.total, Duration::from_micros(5050));
        let one = Latencies::new(vec![Duration::from_micros(7)]).unwrap();
        assert_eq!((one.p50, one.p99), (Duration::from_micros(7), Duration::from_micros(7)));
        assert_eq!(Latencies::new(Vec::new()), None);
        assert_eq!(micros(Duration::from_nanos(1234)), "1.23");
        assert_eq!(micros(Duration::from_nanos(12345)), "12.3");
    }
}
