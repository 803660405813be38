//! Replicated, fault-tolerant services for one data centre, after Cornell's Derecho.
//!
//! derecho will keep the replicas of a plain Rust type consistent across the members of a group:
//! atomic multicast delivers every update to every member of a shard in the same order, a
//! virtual-synchrony membership protocol moves the group from view to view as members fail or
//! join, and persistent fields keep a versioned log on disk. The protocol is *sans-IO*: a
//! deterministic state machine that takes inputs (a row update, a frame, a timer) and returns
//! outputs (push this row range, send this frame, deliver this message). A driver turns those
//! outputs into I/O on the runtime ([`runtime`]): thread-per-core executors on io_uring and
//! transports over TCP or shared memory. The runtime is re-exported here. Every decision of a
//! member's life (joins, state transfer, view changes, total restart) lives in one sans-IO
//! [`protocol::member::Member`], which both the drivers and the simulator run. Multicast,
//! membership, subgroups, replicated objects, external clients and persistence with total
//! restart exist; the RDMA transport does not yet.
//!
//! # Layout
//!
//! * [`driver`]: runs the protocol on the runtime over a transport: the group with membership
//!   ([`driver::Group`], which runs a [`protocol::member::Member`]), the static group of fixed
//!   membership, and their configuration files.
//! * [`protocol`]: the sans-IO protocol core: identifiers, limits, views, the shared state table,
//!   ordered multicast, membership and subgroup layouts (PROTOCOLS §1, §2, §3, §5) in
//!   [`protocol::Node`], and around it [`protocol::member::Member`]: joins, state transfer,
//!   the lingering old view, total restart (§3.5, §4.1).
//! * [`rpc`]: replicated objects (`#[replicated]`), calls into them from members and from
//!   external clients (PROTOCOLS §6).
//! * [`persist`]: durable logs of versioned state and versioned fields (PROTOCOLS §4).
//! * `logging` (feature `logging`, on by default): [`logging::init`] installs a `tracing`
//!   subscriber for a program (`RUST_LOG`, text or JSON).
//! * [`hash`]: FNV-1a, the one deterministic hash for tags, digests and key placement.
//! * [`prelude`]: the names most programs need, in one `use derecho::prelude::*`.
//! * [`context`]: the call a handler serves ([`context::CallContext`]), read by versioned fields.
//! * `sim` (feature `sim`): the deterministic simulator of TESTING.md tier T1: the same
//!   `Member`s the driver runs, in one thread, over virtual time, seeded links (latency, slow
//!   members, cuts, partitions) and simulated disks, with a checksummed workload and a trace;
//!   the checkers that judge its runs are in the `derecho-tests` package.
//! * [`runtime`]: the whole `derecho-runtime` crate (executors, I/O, timers, channels, buffers,
//!   transports), for anything not re-exported at the top level.
//! * [`transport`]: the transports and their two primitives, push and frames;
//!   [`transport::tcp`] and [`transport::shm`] are the two implementations.
//! * top level: the items a program needs to start an executor ([`Builder`], [`Placement`],
//!   [`LocalExecutor`], [`spawn`], [`available_cores`]) and to connect a transport
//!   ([`TcpTransport`], [`ShmTransport`], [`Transport`], [`TransportEvent`], [`PeerId`]).
//!
//! # Examples
//!
//! An executor runs `!Send` tasks on the thread that built it:
//!
//! ```
//! use derecho::{Builder, Placement, spawn};
//!
//! let executor = Builder::new().placement(Placement::Unpinned).build()?;
//! let sum = executor.block_on(async {
//!     let a = spawn(async { 20 });
//!     let b = spawn(async { 22 });
//!     a.await + b.await
//! });
//! assert_eq!(sum, 42);
//! # Ok::<(), derecho::RuntimeError>(())
//! ```
//!
//! The repository's `README.md` opens with a complete replicated service (a `#[replicated]`
//! counter on three members, an ordered call and a query); it is compiled and run as a doctest
//! of this crate, and the book's first chapter starts from it. The book's chapter "Running the
//! transports" explains executors and transports in depth, and
//! `cargo run --release -p derecho-examples --bin ping` measures them.

pub mod context;
pub mod driver;
pub use derecho_wire::hash;
#[cfg(feature = "logging")]
pub mod logging;
pub mod persist;
pub mod prelude;
pub mod protocol;
pub mod rpc;
#[cfg(feature = "sim")]
pub mod sim;

pub use derecho_runtime as runtime;

/// rkyv, the zero-copy serialization that `#[replicated]` types and their calls use: derive its
/// traits on a replicated type's state with `#[rkyv(crate = derecho::rkyv)]`.
pub use crate::rpc::support::rkyv;

pub use derecho_macros::replicated;
pub use derecho_runtime::net::TcpListener;
pub use derecho_runtime::transport;
pub use derecho_runtime::transport::shm::{ShmConfig, ShmTransport};
pub use derecho_runtime::transport::tcp::{TcpConfig, TcpTransport};
pub use derecho_runtime::transport::{
    AnyTransport, Frame, Payload, PeerFailure, PeerId, RegionId, Transport, TransportError, TransportEvent,
    TransportLimits,
};
pub use derecho_runtime::{Builder, JoinHandle, LocalExecutor, Placement, RuntimeError, available_cores, spawn};

/// The README's code blocks, compiled and run as doctests (never part of the API).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
