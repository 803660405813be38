//! Delivery only when stable (PROTOCOLS §2.2: "message `seq` is stable when `seq <= min over shard
//! members of seq_num`"; TESTING.md, slow member: "never delivery past what every member
//! received").
//!
//! When a member delivers the message of version `(v, seq)` in an ordered shard, every member of
//! the shard has received everything up to `seq`. The ground truth is each member's own row in
//! its own table: the `seq_num` column it writes itself (stored as `seq_num + 1`), not a copy a
//! peer may hold. Received counts only grow, so a value read after the step that delivered is
//! at least the value at the delivery.

use derecho::protocol::{DeliveryMode, NodeId, ShardRef, SstMemory};
use derecho::sim::Sim;

use super::{Checker, Cursor, describe, shard_layout};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct DeliveredWhenStable {
    cursor: Cursor,
}

/// `seq_num + 1` as `member` itself published it in `shard`: how many of the shard's sequence
/// numbers it has received contiguously.
pub fn received_seqs(sim: &Sim, member: NodeId, shard: ShardRef) -> u64 {
    let node = sim.node(member);
    let k = sim.view().shards.iter().position(|s| s.id == shard).expect("a shard of the view");
    let row = node.row_range(member).expect("a member").start;
    node.memory().load_u64(row + node.row_layout().shards[k].seq_num)
}

impl Checker for DeliveredWhenStable {
    fn name(&self) -> &'static str {
        "delivered-when-stable"
    }

    fn after_step(&mut self, sim: &Sim) -> Result<(), String> {
        self.cursor.for_new(sim, |_, member, d| {
            let layout = shard_layout(sim, d.shard)?;
            let (DeliveryMode::Ordered, Some(version)) = (layout.mode, d.version) else { return Ok(()) };
            for &m in &layout.members {
                let received = received_seqs(sim, m, d.shard);
                if received <= version.seq() {
                    return Err(format!(
                        "{member} delivered {} but {m} has received only seqs 0..{received} of {}",
                        describe(d),
                        d.shard
                    ));
                }
            }
            Ok(())
        })
    }
}
