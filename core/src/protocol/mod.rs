//! The sans-IO protocol core (PROTOCOLS.md): plain state machines fed inputs with the current
//! time and drained for outputs. No sockets, files, threads, clocks, async or unseeded
//! randomness below this module; a test in `tests/` reads these sources and fails if any appear.
//!
//! # Layout
//!
//! * [`ids`]: identifiers (`NodeId`, `ViewId`, `SubgroupId`, `ShardIndex`, `Version`, `Time`).
//! * [`limits`]: the validated limits that size everything.
//! * [`layout`]: views and their shard layout.
//! * [`sst`]: the shared state table's row layout and the memory trait it lives in.
//! * [`membership`]: views, failure detection and view changes (§3).
//! * [`subgroup`]: subgroups and shards of replicated types, laid out over each view (§5).
//! * [`multicast`]: ordered and unordered multicast in one shard (§2).
//! * [`node`]: one member: `handle`, `send`, `deliver`, `poll_output`, `poll_timeout`.
//! * [`restart`]: total restart's quorum and restart view (§4.1).
//! * [`member`]: one member's whole life around its node: joins, state transfer, the lingering
//!   old view, restart, saved views (§3.5, §4.1); what the driver and the simulator run.
//! * [`wire`]: the encoded control messages, view frames and saved views (§7).

pub use derecho_wire::ids;
pub mod layout;
pub mod limits;
pub mod member;
pub mod membership;
pub mod multicast;
pub mod node;
pub mod restart;
pub mod sst;
pub mod subgroup;
pub mod wire;

pub use ids::{NodeId, ParseVersionError, Rank, ShardIndex, ShardRef, SubgroupId, Time, Version, ViewId};
pub use layout::{DeliveryMode, LayoutError, ShardLayout, View};
pub use limits::{LimitError, Limits};
pub use membership::{
    ADDRESS_LEN_MAX, Addresses, Change, FixedShards, GmsStep, JoinRefusal, LayoutFn, LostShards, MembershipConfig,
    MembershipConfigError, NextView, OneShard, RoundRobinShards, StateTransfer, StopReason,
};
pub use multicast::{Delivered, RowViolation, SendError, indices_below, indices_needed, seq_count};
pub use node::{Input, JoinCheck, Node, NodeError, Output, Progress};
pub use sst::{HeapMemory, RowLayout, ShardColumns, SstMemory};
pub use subgroup::{GroupLayout, Policy, Senders, SubgroupSpec};
