//! No loss of a surviving sender's messages (PROTOCOLS §3.3 step 9).
//!
//! Every message that `send` accepted from a member still running at the end is in the log of
//! every member still running at the end that belongs to the message's shard (delivered there,
//! or received with the state), even if a view change came between its send and its delivery.
//! The only exception is a failure the sender was told about: messages it could not send again
//! because it is no longer a sender of the shard (`ResendFailed`, its last ones there).

use std::collections::BTreeMap;

use derecho::protocol::ShardRef;
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
            // Accepted messages per shard, in order, minus those whose failure was reported.
            let mut sent: BTreeMap<ShardRef, Vec<u64>> = BTreeMap::new();
            for e in sim.events().iter().filter(|e| e.node == sender) {
                match e.what {
                    MemberEvent::Sent { shard, seq, .. } => sent.entry(shard).or_default().push(seq),
                    // Restarted from its disk: what it had accepted before the crash and nobody
                    // delivered died with every member (only durable versions are owed).
                    MemberEvent::Restarted { .. } => sent.clear(),
                    MemberEvent::ResendFailed { shard, count } => {
                        let v = sent.entry(shard).or_default();
                        v.truncate(v.len().saturating_sub(count));
                    }
                    _ => {}
                }
            }
            for &member in &alive {
                let Some(node) = sim.node(member) else { continue };
                for (shard, seqs) in &sent {
                    if !node.view().shards.iter().any(|s| s.id == *shard && s.members.contains(&member)) {
                        continue;
                    }
                    let log = sim.log(member, *shard);
                    for &seq in seqs {
                        if !log.contains(&(sender, seq)) {
                            return Err(format!(
                                "n{}'s accepted message {seq} of {shard} is not in n{}'s log",
                                sender.0, member.0
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
