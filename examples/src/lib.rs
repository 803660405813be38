//! Runnable programs for derecho, and the pieces they share.
//!
//! Each program is a binary in `src/bin/`, run with
//! `cargo run --release -p derecho-examples --bin NAME`. The code they have in common lives in
//! this library, written to be read: the book includes parts of it.
//!
//! # Layout
//!
//! * [`ping`]: the `ping` demo's command line, connecting a transport, the ping and pong loops,
//!   and the latency summary. The binary `ping` starts a second process and measures round trips
//!   between the two, pinned to different cores, over TCP and over shared memory.
//! * [`multicast`]: the `multicast` demo's command line, a member's life (start from the
//!   configuration file, send, deliver, settle, close), and the messages it writes and checks.
//!   The binary `multicast-demo` starts one process per member of `multicast.toml`.
//! * [`group`]: the `group` demo's member: a replicated digest of everything delivered, joins
//!   with state transfer, the view changes it prints. The binary `group-demo` starts three
//!   members, kills one, lets a fourth join and checks the members' delivery logs.
//! * [`kv`]: a sharded, versioned key-value store (`#[replicated]`), and the hash that places
//!   keys on shards.
//! * [`status`]: `kv status`: members' state as a table, read from their metrics listeners.

pub mod group;
pub mod kv;
pub mod multicast;
pub mod ping;
pub mod status;

/// The log filter a launcher gives the member processes it starts: the launcher's own
/// `RUST_LOG` if set, else warnings only (members' logs would interleave with the story a demo
/// tells on standard output).
pub fn child_log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())
}
