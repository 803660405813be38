//! Durability of the persistence frontiers (PROTOCOLS §4): when a member's node says a version
//! of a shard is durable at every member of the shard (its global frontier reached it), every
//! member of that shard in that view has reported that version durable: the frontier never runs
//! ahead of any disk. (The simulator's disks report a version only once a sync covering it has
//! completed; a failed sync reports nothing and stops the member.)

use std::collections::BTreeMap;

use derecho::protocol::{NodeId, ShardRef, Version, View, ViewId};
use derecho::sim::{GroupSim, MemberEvent, MemberRecord};

use super::EventChecker;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Durability {
    /// The highest version each member reported durable, per shard.
    durable: BTreeMap<(NodeId, ShardRef), Version>,
    /// Every view installed so far.
    views: BTreeMap<ViewId, View>,
}

impl EventChecker for Durability {
    fn name(&self) -> &'static str {
        "durability"
    }

    fn restarted(&mut self, _node: NodeId, view: ViewId) {
        self.views.retain(|v, _| *v < view);
    }

    fn observe(&mut self, _sim: &GroupSim, e: &MemberRecord) -> Result<(), String> {
        match &e.what {
            // What it recovered is all its disk holds now.
            MemberEvent::Restarted { logs, .. } => {
                self.durable.retain(|(n, _), _| *n != e.node);
                for (shard, v) in logs {
                    self.durable.insert((e.node, *shard), *v);
                }
            }
            MemberEvent::Installed(view) => {
                self.views.insert(view.id, view.clone());
            }
            MemberEvent::Persisted { shard, version } => {
                let d = self.durable.entry((e.node, *shard)).or_insert(*version);
                *d = (*d).max(*version);
            }
            MemberEvent::GlobalPersisted { view, shard, version } => {
                let v = self.views.get(view).ok_or_else(|| format!("n{} saw view {} uninstalled", e.node.0, view.0))?;
                let members = v
                    .shards
                    .iter()
                    .find(|s| s.id == *shard)
                    .map(|s| s.members.clone())
                    .ok_or_else(|| format!("view {} has no {shard}", view.0))?;
                for m in members {
                    let durable = self.durable.get(&(m, *shard)).copied();
                    if durable.is_none_or(|d| d < *version) {
                        return Err(format!(
                            "n{} says {version} of {shard} is durable everywhere in view {}, but n{} has only {durable:?}",
                            e.node.0, view.0, m.0
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
