//! No loss (PROTOCOLS §3.3 steps 7 and 9).
//!
//! Every message that `send` accepted from a member still running at the end is in the log of
//! every member still running at the end that belongs to the message's shard (delivered there,
//! or received with the state), even if a view change came between its send and its delivery.
//! The only exception is a failure the sender was told about: messages it could not send again
//! because it is no longer a sender of the shard (`ResendFailed`, its last ones there).
//!
//! And every ordered message delivered by any member, survivor or not (and so perhaps
//! acknowledged to its caller), is in the log of every such member: it was stable, received by
//! every member of its view. After a total restart only the restarted run is judged here (what
//! the restart owes is judged by the restart checker).

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
                    // delivered may have died with it (only durable versions are owed).
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
        self.delivered_anywhere(sim, &alive)
    }

    /// Every ordered message delivered anywhere is in every surviving shard member's log,
    /// except in a shard resumed from a log since ([`MemberEvent::Resumed`]: a total restart,
    /// or a member back with the logs of a shard that lost every holder): there only the
    /// durable versions are owed, and the restart checker judges them.
    fn delivered_anywhere(&self, sim: &GroupSim, alive: &[derecho::protocol::NodeId]) -> Result<(), String> {
        use derecho::protocol::NodeId;
        let mut resumed: BTreeMap<ShardRef, usize> = BTreeMap::new();
        for (i, e) in sim.events().iter().enumerate() {
            if let MemberEvent::Resumed { shard, .. } = e.what {
                resumed.insert(shard, i);
            }
        }
        let mut delivered: BTreeMap<ShardRef, Vec<(NodeId, u64, NodeId)>> = BTreeMap::new();
        for (i, e) in sim.events().iter().enumerate() {
            if let MemberEvent::Delivered { shard, sender, seq, version: Some(_), .. } = e.what
                && resumed.get(&shard).is_none_or(|&r| i > r)
            {
                delivered.entry(shard).or_default().push((sender, seq, e.node));
            }
        }
        for &member in alive {
            let Some(node) = sim.node(member) else { continue };
            for (shard, msgs) in &delivered {
                if !node.view().shards.iter().any(|s| s.id == *shard && s.members.contains(&member)) {
                    continue;
                }
                let log = sim.log(member, *shard);
                if let Some((sender, seq, by)) = msgs.iter().find(|(s, q, _)| !log.contains(&(*s, *q))) {
                    return Err(format!(
                        "n{}:{seq} of {shard}, delivered by n{}, is not in n{}'s log",
                        sender.0, by.0, member.0
                    ));
                }
            }
        }
        Ok(())
    }
}
