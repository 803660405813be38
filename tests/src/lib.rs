//! Tests of derecho that need more than one crate or more than one process (TESTING.md, tier T3).
//!
//! The library part holds what the integration tests (`tests/*.rs`) and their helper programs
//! (`src/bin/*.rs`) must agree on; the tests themselves live in `tests/`.
//!
//! # Layout
//!
//! * [`peer_process`]: the two-process transport scenarios: limits, peer ids, frame and push
//!   patterns, the command line of the `transport_peer` helper binary, and bounded waits.
//! * `src/bin/transport_peer.rs`: plays peer 1 of a two-peer transport in a child process.
//! * `tests/transport_processes.rs`: plays peer 0 in the test process, one test per
//!   (scenario, transport).

pub mod peer_process;
