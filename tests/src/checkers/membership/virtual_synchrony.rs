//! Virtual synchrony (PROTOCOLS §3.3 steps 7-9, TESTING.md "total order / virtual synchrony").
//!
//! Within a view, any two members' deliveries in a shard are prefix-consistent (one order); and
//! every member that moves from view `v` to view `v + 1` delivered exactly the same messages of
//! `v`, in the same order, as every other member that did.

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
    /// Per view: the deliveries of the first member that left it for the next view.
    closed: BTreeMap<ViewId, (BTreeMap<ShardRef, Seq>, NodeId)>,
}

impl EventChecker for VirtualSynchrony {
    fn name(&self) -> &'static str {
        "virtual-synchrony"
    }

    fn observe(&mut self, _sim: &GroupSim, e: &MemberRecord) -> Result<(), String> {
        match &e.what {
            MemberEvent::Installed(view) => {
                if let Some((old, seqs)) = self.current.remove(&e.node)
                    && view.id.0 == old.0 + 1
                {
                    match self.closed.get(&old) {
                        Some((first, by)) if *first != seqs => {
                            return Err(format!(
                                "n{} and n{} both installed view {} but delivered different messages of view {}: {} vs {}",
                                e.node.0,
                                by.0,
                                view.id.0,
                                old.0,
                                summary(&seqs),
                                summary(first)
                            ));
                        }
                        Some(_) => {}
                        None => {
                            self.closed.insert(old, (seqs, e.node));
                        }
                    }
                }
                self.current.insert(e.node, (view.id, BTreeMap::new()));
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
                if let Some((closed, by)) = self.closed.get(view)
                    && closed.get(shard).is_none_or(|c| c.len() < mine.len())
                {
                    return Err(format!(
                        "n{} delivered {} messages of view {} in {shard}, more than the {} n{} left it with",
                        e.node.0,
                        mine.len(),
                        view.0,
                        closed.get(shard).map_or(0, Vec::len),
                        by.0
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn summary(seqs: &BTreeMap<ShardRef, Seq>) -> String {
    seqs.iter().map(|(s, v)| format!("{s}: {} messages, last {:?}", v.len(), v.last())).collect::<Vec<_>>().join("; ")
}
