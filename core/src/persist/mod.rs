//! Persistence (PROTOCOLS §4): durable logs of versioned state.
//!
//! This is the first layer of the persistence work: the on-disk record format with its
//! recovery scan, and a durable log that batches writes and syncs through io_uring. Versioned
//! persistent fields, persistence frontiers and total restart build on it.
//!
//! # Layout
//!
//! * [`record`]: the record format (CRC32C on every record) and the scan that recovers the
//!   valid prefix of a log after a crash (pure).
//! * [`DurableLog`]: appends in memory, one write and one `fdatasync` per batch, recovery at
//!   open, and a failure that is final.

mod durable;
pub mod record;

pub use durable::{DurableLog, LogError, Recovered};
