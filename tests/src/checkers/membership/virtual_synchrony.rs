//! Virtual synchrony (PROTOCOLS §3.3 steps 7-9, TESTING.md "total order / virtual synchrony").
//!
//! Within a view, any two members' deliveries in a shard are prefix-consistent (one order); and
//! every member of a shard that moves from view `v` to view `v + 1` delivered exactly the same
//! messages of `v` in that shard, in the same order, as every other member of it that did; and
//! nobody delivered more of `v` than that closing sequence, not even a member that stopped or
//! crashed before anyone installed `v + 1` (a message delivered anywhere was stable, so every
//! survivor delivers it: a delivery past the trim is a member's own invention).

use std::collections::BTreeMap;

use derecho::protocol::{NodeId, ShardRef, ViewId};
use derecho::sim::{GroupSim, MemberEvent, MemberRecord};

use super::EventChecker;

type Seq = Vec<(NodeId, u64)>;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct VirtualSynchrony {
    /// Per member: its current view and what it delivered in it, per shard.
    current: BTreeMap<NodeId, (ViewId, BTreeMap<ShardRef, Seq>)>,
    /// Per (view, shard): the longest sequence delivered in it, and by whom.
    longest: BTreeMap<(ViewId, ShardRef), (Seq, NodeId)>,
    /// Per (view, shard): the deliveries of the first shard member that left it for the next view.
    closed: BTreeMap<(ViewId, ShardRef), (Seq, NodeId)>,
}

impl EventChecker for VirtualSynchrony {
    fn name(&self) -> &'static str {
        "virtual-synchrony"
    }

    fn restarted(&mut self, node: NodeId, view: ViewId) {
        self.current.remove(&node);
        self.longest.retain(|(v, _), _| *v < view);
        self.closed.retain(|(v, _), _| *v < view);
    }

    fn observe(&mut self, _sim: &GroupSim, e: &MemberRecord) -> Result<(), String> {
        match &e.what {
            MemberEvent::Installed(view) => {
                if let Some((old, seqs)) = self.current.remove(&e.node)
                    && view.id.0 == old.0 + 1
                {
                    for (shard, seq) in seqs {
                        match self.closed.get(&(old, shard)) {
                            Some((first, by)) if *first != seq => {
                                return Err(format!(
                                    "n{} and n{} both installed view {} but delivered different messages of view {} in {shard}: {} vs {}",
                                    e.node.0,
                                    by.0,
                                    view.id.0,
                                    old.0,
                                    summary(&seq),
                                    summary(first)
                                ));
                            }
                            Some(_) => {}
                            None => {
                                // Whoever delivered the most of this view so far (a member that
                                // stopped early included) delivered no more than this.
                                if let Some((longest, by)) = self.longest.get(&(old, shard))
                                    && longest.len() > seq.len()
                                {
                                    return Err(format!(
                                        "n{} delivered {} messages of view {} in {shard}, more than the {} n{} closed it with",
                                        by.0,
                                        longest.len(),
                                        old.0,
                                        seq.len(),
                                        e.node.0
                                    ));
                                }
                                self.closed.insert((old, shard), (seq, e.node));
                            }
                        }
                    }
                }
                // Every shard this member belongs to starts empty (no delivery is a sequence too).
                let mine = view.shards.iter().filter(|s| s.members.contains(&e.node)).map(|s| (s.id, Vec::new()));
                self.current.insert(e.node, (view.id, mine.collect()));
            }
            MemberEvent::Delivered { view, shard, sender, seq, .. } => {
                let Some((v, seqs)) = self.current.get_mut(&e.node) else {
                    return Err(format!("n{} delivered before it had a view", e.node.0));
                };
                if v != view {
                    return Err(format!("n{} delivered in view {} while in view {}", e.node.0, view.0, v.0));
                }
                let mine = seqs.entry(*shard).or_default();
                mine.push((*sender, *seq));
                let (longest, by) = self.longest.entry((*view, *shard)).or_insert_with(|| (Vec::new(), e.node));
                let i = mine.len() - 1;
                if i < longest.len() {
                    if longest[i] != mine[i] {
                        return Err(format!(
                            "view {} {shard}: delivery {i} is n{}:{} at n{} but n{}:{} at n{}",
                            view.0, sender.0, seq, e.node.0, longest[i].0.0, longest[i].1, by.0
                        ));
                    }
                } else {
                    longest.push(mine[i]);
                    *by = e.node;
                }
                if let Some((closed, by)) = self.closed.get(&(*view, *shard))
                    && closed.len() < mine.len()
                {
                    return Err(format!(
                        "n{} delivered {} messages of view {} in {shard}, more than the {} n{} left it with",
                        e.node.0,
                        mine.len(),
                        view.0,
                        closed.len(),
                        by.0
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn summary(seq: &Seq) -> String {
    format!("{} messages, last {:?}", seq.len(), seq.last())
}
