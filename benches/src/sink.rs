//! The replicated object of the `rpc` and `client` benchmarks.

use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

/// The replicated object: counts what it applied.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Sink {
    applied: u64,
    bytes: u64,
}

#[derecho::replicated]
impl Sink {
    /// Applies a payload; returns how many this replica applied.
    pub fn put(&mut self, data: &[u8]) -> u64 {
        self.applied += 1;
        self.bytes += data.len() as u64;
        self.applied
    }

    /// Reads the counter (the payload only travels).
    pub fn peek(&self, data: &[u8]) -> u64 {
        self.applied + data.len() as u64
    }
}
