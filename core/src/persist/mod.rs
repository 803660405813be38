//! Persistence (PROTOCOLS §4): durable logs of versioned state.
//!
//! This is the first layer of the persistence work: the on-disk record format with its
//! recovery scan, a durable log that batches writes and syncs through io_uring, the hybrid
//! logical clock and the in-memory index of versions. Versioned persistent fields, persistence
//! frontiers and total restart build on them.
//!
//! # Layout
//!
//! * [`record`]: the record format (CRC32C on every record) and the scan that recovers the
//!   valid prefix of a log after a crash (pure).
//! * [`DurableLog`]: appends in memory, one write and one `fdatasync` per batch, recovery at
//!   open, and a failure that is final.
//! * [`hlc`]: the hybrid logical clock that timestamps versions (pure).
//! * [`versioned`]: the versions of a value, read by version, index, latest and time, with reads
//!   after the shard's stable time refused (pure).
//!
//! * [`Persistent`]: a versioned field of a `#[replicated]` type, set at the ordered call's
//!   version and time, read by version, index, latest and time (up to the shard's stable time).
//!
//! The service logs every ordered call of a shard ([`crate::rpc::Service::persist_to`]) and the
//! members publish their persistence frontiers through the table. After the whole group stopped,
//! each member rebuilds its replicas from its logs and the group restarts from the longest log
//! of each shard ([`crate::protocol::restart`], [`crate::driver::GroupBuilder::restart`]).

mod durable;
pub mod hlc;
pub mod persistent;
pub mod record;
pub mod versioned;

pub use durable::{DurableLog, LogError, Recovered};
pub use hlc::{Hlc, HlcClock};
pub use persistent::Persistent;
pub use versioned::{VersionError, Versioned};
