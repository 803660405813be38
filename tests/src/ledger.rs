//! A replicated ledger of operation ids, for the external clients' exactly-once test: it
//! counts how many times each id was applied, so a call applied twice shows. It also records
//! who signed an operation (the TLS identity of the client that called), for the TLS test.

use std::collections::BTreeMap;

use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

/// Every id applied, with how many times.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Ledger {
    applied: BTreeMap<u64, u32>,
    signed: BTreeMap<u64, String>,
}

#[derecho::replicated]
impl Ledger {
    /// Applies operation `op`; returns how many times this replica applied it.
    pub fn add(&mut self, op: u64) -> u32 {
        let n = self.applied.entry(op).or_default();
        *n += 1;
        *n
    }

    /// Records operation `op` as signed by the caller (`context().client`, "-" if none);
    /// returns the name recorded.
    pub fn sign(&mut self, op: u64) -> String {
        let who = derecho::rpc::context().and_then(|c| c.client).map_or_else(|| "-".to_string(), |c| c.to_string());
        self.signed.insert(op, who.clone());
        who
    }

    /// Who signed `op` at this replica.
    pub fn signer(&self, op: u64) -> Option<String> {
        self.signed.get(&op).cloned()
    }

    /// The caller of this query, as its context names it.
    pub fn whoami(&self) -> Option<String> {
        derecho::rpc::context().and_then(|c| c.client).map(|c| c.to_string())
    }

    /// The ids applied, and those applied more than once.
    pub fn report(&self) -> (Vec<u64>, Vec<u64>) {
        let all = self.applied.keys().copied().collect();
        let twice = self.applied.iter().filter(|(_, n)| **n > 1).map(|(op, _)| *op).collect();
        (all, twice)
    }
}
