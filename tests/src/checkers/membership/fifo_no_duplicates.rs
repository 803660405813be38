//! FIFO per sender without duplicates, across views (PROTOCOLS §3.3 step 9).
//!
//! In every member's application log of a shard it belongs to (the state it received, then what
//! it delivered), each sender's sequence numbers strictly increase: a message sent again in a
//! later view is never delivered twice, and a later message never overtakes an earlier one.
//! (Gaps are for [`super::NoLoss`] to judge: a sender that moved to another shard continues its
//! numbering there.)

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
            for shard in node.view().shards.iter().filter(|s| s.members.contains(&id)).map(|s| s.id) {
                let mut last: BTreeMap<NodeId, u64> = BTreeMap::new();
                for (i, &(sender, seq)) in sim.log(id, shard).iter().enumerate() {
                    if let Some(&prev) = last.get(&sender)
                        && seq <= prev
                    {
                        return Err(format!(
                            "n{} {shard} entry {i}: n{}'s message {seq} after its message {prev}",
                            id.0, sender.0
                        ));
                    }
                    last.insert(sender, seq);
                }
            }
        }
        Ok(())
    }
}
