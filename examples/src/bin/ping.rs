//! `ping`: round trips between two processes pinned to two cores, over TCP and shared memory.
//!
//! ```text
//! cargo run --release -p derecho-examples --bin ping [-- --transport tcp|shm|both --rounds N --spin-us N --size BYTES]
//! ```
//!
//! Run without arguments, this process is the *parent* (peer 0). It binds a TCP listener, starts
//! a copy of itself as the *child* (peer 1) with `--child` and the listener's address, and then,
//! for each transport: connects, pings, closes, and prints a summary. The child answers every
//! ping until the parent closes, then moves on to the next transport. At the end the parent waits
//! for the child and checks that it exited successfully. Every wait is bounded: a failure is
//! reported and the program exits with a non-zero status instead of hanging.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::pin;
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use derecho::runtime::time;
use derecho::{Builder, Placement, ShmTransport, TcpListener, available_cores};
use derecho_examples::ping::{
    CHILD, ChildSetup, Command, Latencies, Link, PARENT, PingError, PingOptions, TransportKind, WARMUP_ROUNDS,
    child_args, connect, parse_args, ping, pong,
};
use futures::future::{Either, select};

/// How long the parent waits for the child to exit once the last transport is closed.
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a TCP transport may wait for queued frames to leave.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Where both processes listen: loopback, on a port the kernel picks.
const LOOPBACK_ANY_PORT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

fn main() -> ExitCode {
    derecho::logging::init();
    // Usage errors exit 2 with clap's message; --help prints the help and exits 0.
    let command = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| e.exit());
    let (who, result) = match command {
        Command::Parent(options) => ("ping", run_parent(&options)),
        Command::Child(options, setup) => ("ping (child)", run_child(&options, &setup)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_parent(options: &PingOptions) -> Result<(), PingError> {
    // ANCHOR: placement
    // The parent chooses both placements, so that the two processes never share a core, and
    // tells the child its core on the command line.
    let (placement, child_placement) = match available_cores()[..] {
        [first, second, ..] => (Placement::Core(first), Placement::Core(second)),
        _ => {
            println!("note: fewer than 2 cores available: both processes run unpinned and share a core");
            (Placement::Unpinned, Placement::Unpinned)
        }
    };
    // ANCHOR_END: placement
    let listener = TcpListener::bind(LOOPBACK_ANY_PORT).map_err(PingError::Bind)?;
    let setup = ChildSetup {
        parent_addr: listener.local_addr(),
        shm_namespace: format!("ping-{}", std::process::id()),
        placement: child_placement,
    };
    let exe = std::env::current_exe().map_err(PingError::ChildIo)?;
    let mut child =
        std::process::Command::new(exe).args(child_args(options, &setup)).spawn().map_err(PingError::ChildIo)?;

    println!(
        "derecho ping: {} round trips per transport, {}-byte frames, spin budget {} µs before parking",
        options.rounds, options.size, options.spin_us
    );
    println!(
        "parent pid {} on {}, child pid {} on {}",
        std::process::id(),
        describe(placement),
        child.id(),
        describe(child_placement)
    );
    let run = Builder::new()
        .placement(placement)
        .spin_budget(options.spin_budget())
        .build()
        .map_err(PingError::from)
        .and_then(|executor| executor.block_on(ping_child(options, listener, &setup.shm_namespace, &mut child)));
    match run {
        Ok(()) => {
            wait_for_child(&mut child, CHILD_EXIT_TIMEOUT)?;
            println!("\nboth processes done; the child exited with status 0");
            Ok(())
        }
        Err(e) => {
            // Do not leave the child (or its shared-memory files) behind.
            let _ = child.kill();
            let _ = child.wait();
            let _ = ShmTransport::remove_namespace(Path::new("/dev/shm"), &setup.shm_namespace);
            Err(e)
        }
    }
}

// ANCHOR: parent_loop
/// The parent's side of every transport in turn: connect, warm up, measure, close, report.
async fn ping_child(
    options: &PingOptions,
    listener: TcpListener,
    shm_namespace: &str,
    child: &mut Child,
) -> Result<(), PingError> {
    let mut listener = Some(listener);
    for &kind in &options.transports {
        let link = match kind {
            TransportKind::Tcp => Link::Tcp {
                listener: listener.take().expect("TCP is measured once"),
                // The child has the larger id, so it dials us and we never dial it: the config
                // needs an address for every peer, but this one is not used.
                other_addr: LOOPBACK_ANY_PORT,
            },
            TransportKind::Shm => Link::Shm { namespace: shm_namespace.to_string() },
        };
        let transport = unless_child_exits(child, connect(PARENT, CHILD, link)).await??;
        ping(&transport, CHILD, WARMUP_ROUNDS.min(options.rounds), options.size).await?;
        let round_trips = ping(&transport, CHILD, options.rounds, options.size).await?;
        // Closing is how the child learns that this transport is done.
        transport.close(CLOSE_LINGER).await;

        let latencies = Latencies::new(round_trips).expect("at least one round");
        println!("\n{:<4} {}", kind.name(), kind.description());
        println!("     {latencies}");
    }
    Ok(())
}
// ANCHOR_END: parent_loop

// ANCHOR: child
fn run_child(options: &PingOptions, setup: &ChildSetup) -> Result<(), PingError> {
    let executor = Builder::new().placement(setup.placement).spin_budget(options.spin_budget()).build()?;
    executor.block_on(async {
        for &kind in &options.transports {
            let link = match kind {
                // The child dials the parent; it still needs a listener of its own, unused here
                // because no peer has a larger id.
                TransportKind::Tcp => Link::Tcp {
                    listener: TcpListener::bind(LOOPBACK_ANY_PORT).map_err(PingError::Bind)?,
                    other_addr: setup.parent_addr,
                },
                TransportKind::Shm => Link::Shm { namespace: setup.shm_namespace.clone() },
            };
            let transport = connect(CHILD, PARENT, link).await?;
            let echoed = pong(&transport, PARENT).await;
            transport.close(CLOSE_LINGER).await;
            echoed?;
        }
        Ok(())
    })
}
// ANCHOR_END: child

/// Runs `work` unless the child process exits first (a child that fails to start would
/// otherwise leave the parent waiting for the whole connect timeout).
async fn unless_child_exits<T>(child: &mut Child, work: impl Future<Output = T>) -> Result<T, PingError> {
    let watch = async {
        loop {
            match child.try_wait() {
                Ok(None) => time::sleep(Duration::from_millis(20)).await,
                Ok(Some(status)) => return PingError::ChildExited(status),
                Err(e) => return PingError::ChildIo(e),
            }
        }
    };
    match select(pin!(work), pin!(watch)).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right((error, _)) => Err(error),
    }
}

/// Waits (at most `within`) for the child to exit, and checks that it succeeded.
fn wait_for_child(child: &mut Child, within: Duration) -> Result<(), PingError> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().map_err(PingError::ChildIo)? {
            return if status.success() { Ok(()) } else { Err(PingError::ChildExited(status)) };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PingError::ChildHung(within));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn describe(placement: Placement) -> String {
    match placement {
        Placement::Core(core) => format!("core {core}"),
        Placement::Unpinned => "no particular core".to_string(),
    }
}
