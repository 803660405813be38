//! No loss of a surviving sender's messages (PROTOCOLS §3.3 step 9).
//!
//! Every message that `send` accepted from a member still running at the end is in the log of
//! every member still running at the end (delivered there, or received with the state), even if
//! a view change came between its send and its delivery.

use derecho::sim::{GroupSim, MemberEvent};

use super::survivors;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NoLoss;

impl NoLoss {
    /// Judges the final logs against the accepted sends.
    ///
    /// # Errors
    ///
    /// The first accepted message missing at a survivor.
    pub fn judge(&self, sim: &GroupSim) -> Result<(), String> {
        let alive = survivors(sim);
        for &sender in &alive {
            let sent: Vec<u64> = sim
                .events()
                .iter()
                .filter(|e| e.node == sender)
                .filter_map(|e| match e.what {
                    MemberEvent::Sent { seq, .. } => Some(seq),
                    _ => None,
                })
                .collect();
            for &member in &alive {
                let Some(node) = sim.node(member) else { continue };
                let Some(shard) = node.view().shards.first().map(|s| s.id) else { continue };
                let log = sim.log(member, shard);
                for &seq in &sent {
                    if !log.contains(&(sender, seq)) {
                        return Err(format!("n{}'s accepted message {seq} is not in n{}'s log", sender.0, member.0));
                    }
                }
            }
        }
        Ok(())
    }
}
