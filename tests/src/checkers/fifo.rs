//! FIFO per sender (PROTOCOLS §2.2: seq order implies each sender's index order; §2.5: unordered
//! shards deliver "FIFO per sender").
//!
//! At every member, in every shard, the messages of one sender are delivered in the order they
//! were sent and without gaps: protocol indices strictly increase (nulls may skip indices), and
//! the workload sequence numbers in the payloads are exactly 0, 1, 2, ... (a gap is a lost or
//! overtaken message, in a static group where nothing may be lost).

use std::collections::BTreeMap;

use derecho::protocol::{NodeId, ShardRef};
use derecho::sim::{Sim, payload};

use super::{Checker, Cursor, describe};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FifoPerSender {
    cursor: Cursor,
    /// (member rank, shard, sender) -> (last index delivered, workload messages delivered).
    streams: BTreeMap<(usize, ShardRef, NodeId), (u64, u64)>,
}

impl Checker for FifoPerSender {
    fn name(&self) -> &'static str {
        "fifo-per-sender"
    }

    fn after_step(&mut self, sim: &Sim) -> Result<(), String> {
        let Self { cursor, streams } = self;
        cursor.for_new(sim, |rank, member, d| {
            let entry = streams.entry((rank, d.shard, d.sender));
            let first = matches!(entry, std::collections::btree_map::Entry::Vacant(_));
            let (last_index, delivered) = entry.or_insert((0, 0));
            if !first && d.index <= *last_index {
                return Err(format!(
                    "{member} delivered {} after index {} of the same sender",
                    describe(d),
                    *last_index
                ));
            }
            if let Ok(id) = payload::decode(&d.payload)
                && id.sender == d.sender
                && id.seq != *delivered
            {
                return Err(format!(
                    "{member} delivered workload message {} of {} when message {} of that sender comes \
                     next (lost or overtaken): {}",
                    id.seq,
                    d.sender,
                    *delivered,
                    describe(d)
                ));
            }
            *last_index = d.index;
            *delivered += 1;
            Ok(())
        })
    }
}
