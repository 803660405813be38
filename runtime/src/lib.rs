//! A small thread-per-core runtime on io_uring, and the transports derecho runs over.
//!
//! This crate knows nothing of Derecho. It gives the protocol driver three things:
//!
//! * **Executors** pinned to cores ([`Builder`], [`LocalExecutor`]), each with its own io_uring
//!   instance, running `!Send` tasks ([`spawn`]). An idle executor spins for a configured budget
//!   and then parks in the kernel; [poll hooks](PollHook) run on every loop iteration, which is
//!   where shared-memory rows (and, later, RDMA completion queues) are polled, like Derecho's
//!   polling thread but inside the loop rather than on a core of its own.
//! * **I/O operations** that own their buffers until the kernel completes them ([`net`], [`fs`]),
//!   timers ([`time`]) and cross-core channels ([`channel`]).
//! * **Transports** ([`transport`]) with two primitives: a one-sided *push* of a byte range of a
//!   registered region into every peer's replica of it, and ordered *frames* to a peer. TCP
//!   emulates pushes with frames; shared memory stores into the peer's mapping directly.
//!
//! # Why not glommio
//!
//! glommio was evaluated and is not used: it has had no release since 2024-03 and carries an open
//! call for maintainers, its event loop cannot host memory pollers between completions (which is
//! how shared-memory and RDMA receives are discovered), and on the project's 2-core machines it
//! measured no faster than plain sockets. The loop here is small enough to own.
//!
//! # Layout
//!
//! * [`executor`]: the loop, task spawning, placement on cores, adaptive polling, poll hooks.
//! * `reactor`: the io_uring instance and the slots of operations in flight.
//! * `op`: the future of one operation, owning its buffers, cancellation-safe.
//! * [`net`]: TCP listener and stream.
//! * [`fs`]: positional file reads and writes, fsync.
//! * [`time`]: sleep, timeout, interval.
//! * [`channel`]: bounded SPSC channels between executors.
//! * [`buf`]: aligned buffers (rkyv validates archived bytes in place and needs alignment).
//! * [`transport`]: regions, frames, the TCP and shared-memory transports.
//!
//! # Requirements
//!
//! Linux with io_uring, 5.19 or newer (receives use `IORING_RECVSEND_POLL_FIRST`). It prefers the
//! deferred task-run mode (Linux 6.1) and falls back to a plain ring; idle shared-memory receivers
//! sleep on io_uring futex waits (Linux 6.7) or, without them, look again every 200 µs. It runs within the default 8 MiB locked-memory limit: nothing is registered with
//! the kernel that counts against it.

pub mod buf;
pub mod channel;
mod error;
pub mod executor;
pub mod fs;
pub mod limit;
pub mod net;
mod op;
mod reactor;
pub mod signal;
pub mod time;
/// Mutual TLS identities (shared with the client crate).
pub use derecho_wire::tls;
pub mod transport;

pub use buf::AlignedBuf;
pub use error::RuntimeError;
pub use executor::{
    Builder, ExecutorThread, HookId, JoinHandle, LocalExecutor, LoopStats, Park, Placement, PollHook, add_poll_hook,
    available_cores, loop_stats, remove_poll_hook, set_spin_budget, spawn, spin_budget, timers_pending, yield_now,
};
