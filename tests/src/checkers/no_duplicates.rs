//! No duplicates (PROTOCOLS §2.2: "deliver stable messages in seq order, each exactly once";
//! §2.5 for unordered shards).
//!
//! A member never delivers the same message twice: neither the same (shard, sender, index) as
//! the protocol names it, nor the same workload message as its payload names it (which would
//! catch a message re-published under a new index).

use std::collections::BTreeSet;

use derecho::protocol::{NodeId, ShardRef};
use derecho::sim::{Sim, payload};

use super::{Checker, Cursor, describe};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NoDuplicates {
    cursor: Cursor,
    /// (member rank, shard, sender, index) delivered.
    by_index: BTreeSet<(usize, ShardRef, NodeId, u64)>,
    /// (member rank, shard, payload sender, payload seq) delivered.
    by_payload: BTreeSet<(usize, ShardRef, NodeId, u64)>,
}

impl Checker for NoDuplicates {
    fn name(&self) -> &'static str {
        "no-duplicates"
    }

    fn after_step(&mut self, sim: &Sim) -> Result<(), String> {
        let Self { cursor, by_index, by_payload } = self;
        cursor.for_new(sim, |rank, member, d| {
            if !by_index.insert((rank, d.shard, d.sender, d.index)) {
                return Err(format!("{member} delivered {} a second time", describe(d)));
            }
            // A payload that does not decode is the integrity checker's to report.
            if let Ok(id) = payload::decode(&d.payload)
                && !by_payload.insert((rank, id.shard, id.sender, id.seq))
            {
                return Err(format!(
                    "{member} delivered workload message {} of {} in {} a second time, now as {}",
                    id.seq,
                    id.sender,
                    id.shard,
                    describe(d)
                ));
            }
            Ok(())
        })
    }
}
