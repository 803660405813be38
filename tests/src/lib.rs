//! Tests of derecho that need more than one crate or more than one process: the deterministic
//! simulation (TESTING.md tier T1) and the real-process transport tests (tier T3).
//!
//! The library part holds what the integration tests (`tests/*.rs`) and their helper programs
//! (`src/bin/*.rs`) share: the simulation's checkers and harness, and what both sides of a
//! cross-process test agree on. The tests themselves live in `tests/`.
//!
//! # Layout
//!
//! * [`checkers`]: one named invariant per file (total order, no duplicates, FIFO, stability,
//!   windows, payload integrity, no faults, all delivered), each citing PROTOCOLS.md, judging a
//!   `derecho::sim::Sim` after every step.
//! * [`simulation`]: running one seed with every checker, the `SIM_SEED` / `SIM_SEEDS` /
//!   `SIM_TRACE` environment variables, the replay line every failure prints, and fresh seeds.
//! * [`scenarios`]: random simulation configurations drawn from a seed.
//! * `tests/sim_multicast.rs`: the static-group multicast simulations.
//! * [`peer_process`]: the two-process transport scenarios: limits, peer ids, frame and push
//!   patterns, the command line of the `transport_peer` helper binary, and bounded waits.
//! * `src/bin/transport_peer.rs`: plays peer 1 of a two-peer transport in a child process.
//! * `tests/transport_processes.rs`: plays peer 0 in the test process, one test per
//!   (scenario, transport).
//! * [`kv_process`]: a `kv_member` child process (`src/bin/kv_member.rs`) driven through its
//!   standard input and output, for `tests/kv_linearizable.rs` and `tests/kv_restart.rs`.

pub mod checkers;
pub mod child;
pub mod explore;
pub mod kv_process;
pub mod ledger;
pub mod membership_sim;
pub mod peer_process;
pub mod scenarios;
pub mod simulation;
