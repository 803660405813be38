//! FIFO per sender without duplicates, across views (PROTOCOLS §3.3 step 9).
//!
//! In every member's application log of a shard (the state it received, then what it
//! delivered), each sender's sequence numbers are `0, 1, 2, ...` with no gap and no repeat: a
//! message sent again in a later view is never delivered twice, and a later message never
//! overtakes an earlier one. A failed sender's dropped messages are its last ones, so they leave
//! no gap.

use std::collections::BTreeMap;

use derecho::protocol::NodeId;
use derecho::sim::GroupSim;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FifoNoDuplicates;

impl FifoNoDuplicates {
    /// Judges every member's final logs.
    ///
    /// # Errors
    ///
    /// The first gap, repeat or inversion.
    pub fn judge(&self, sim: &GroupSim) -> Result<(), String> {
        for id in sim.ids() {
            let Some(node) = sim.node(id) else { continue };
            for shard in node.view().shards.iter().map(|s| s.id) {
                let mut next: BTreeMap<NodeId, u64> = BTreeMap::new();
                for (i, &(sender, seq)) in sim.log(id, shard).iter().enumerate() {
                    let want = next.entry(sender).or_default();
                    if seq != *want {
                        return Err(format!(
                            "n{} {shard} entry {i}: n{}'s message {seq} where {} was due",
                            id.0, sender.0, want
                        ));
                    }
                    *want += 1;
                }
            }
        }
        Ok(())
    }
}
