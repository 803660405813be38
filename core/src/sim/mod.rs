//! The deterministic simulator (TESTING.md tier T1), behind the `sim` feature.
//!
//! N protocol [`Node`](crate::protocol::Node)s run in one thread over a virtual clock. Every push
//! a node asks for becomes one message per peer, carrying a copy of the bytes at the time of the
//! push, on a FIFO link with a latency drawn from a seeded generator: the simulator honours the
//! ordering contract of PROTOCOLS §1 (pushes from one member reach a peer in the order issued) and
//! nothing stronger. Faults: slow members (rules run only at ticks, or extra latency) and cut
//! links. A seeded workload sends checksummed, self-describing payloads; a full window is retried,
//! never dropped. Every event is traced, and the same seed gives the same trace.
//!
//! The checkers that judge a run (total order, no duplicates, FIFO, delivery, windows, payload
//! integrity) live in the `derecho-tests` package and run through the hook of [`Sim::run`].
//!
//! Nothing here reads a clock, starts a thread or draws an unseeded random number, and no
//! `HashMap` or `HashSet` decides an order: a run is a function of its [`SimConfig`].
//!
//! # Layout
//!
//! * [`rng`]: [`SimRng`], the seeded generator (SplitMix64).
//! * [`config`]: [`SimConfig`] and its parts: members, shards, senders, workload, latency,
//!   slow members, cuts, limits.
//! * [`payload`]: the workload's self-describing, checksummed payloads.
//! * [`trace`]: [`Trace`], one line per event, hashed.
//! * [`world`]: [`Sim`], the event loop of a static group, and the history it records for checkers.
//! * [`group`]: [`GroupSim`], a group with membership: crashes (also on a named step of a view
//!   change), partitions, joins, leaves, state transfer.
//!
//! # Examples
//!
//! ```
//! use derecho::protocol::DeliveryMode;
//! use derecho::sim::{Sim, SimConfig};
//!
//! let run = |seed| {
//!     let mut sim = Sim::new(SimConfig::new(seed, 3, DeliveryMode::Ordered, 10)).unwrap();
//!     sim.run(|sim| if sim.faults().is_empty() { Ok(()) } else { Err("a fault".into()) }).unwrap();
//!     sim.trace().hash()
//! };
//! assert_eq!(run(1), run(1));
//! assert_ne!(run(1), run(2));
//! ```

pub mod config;
pub mod group;
pub mod payload;
pub mod rng;
pub mod trace;
pub mod world;

pub use config::{
    Active, ConfigError, Cut, Members, Senders, ShardSpec, SimConfig, SlowNode, Workload, node_id, shard_id,
};
pub use group::{Event as MemberRecord, GroupConfig, GroupSim, MemberEvent, Plan, StepKind};
pub use payload::{PAYLOAD_HEADER_LEN, PayloadError, PayloadId};
pub use rng::SimRng;
pub use trace::{TRACE_TAIL_LEN, Trace};
pub use world::{Delivery, End, Failure, Fault, FaultKind, History, Outcome, SendStream, SentMessage, Sim, Stats};
