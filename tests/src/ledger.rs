//! A replicated ledger of operation ids, for the external clients' exactly-once test: it
//! counts how many times each id was applied, so a call applied twice shows.

use std::collections::BTreeMap;

use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

/// Every id applied, with how many times.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Ledger {
    applied: BTreeMap<u64, u32>,
}

#[derecho::replicated]
impl Ledger {
    /// Applies operation `op`; returns how many times this replica applied it.
    pub fn add(&mut self, op: u64) -> u32 {
        let n = self.applied.entry(op).or_default();
        *n += 1;
        *n
    }

    /// The ids applied, and those applied more than once.
    pub fn report(&self) -> (Vec<u64>, Vec<u64>) {
        let all = self.applied.keys().copied().collect();
        let twice = self.applied.iter().filter(|(_, n)| **n > 1).map(|(op, _)| *op).collect();
        (all, twice)
    }
}
