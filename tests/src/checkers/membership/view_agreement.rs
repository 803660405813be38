//! View agreement (PROTOCOLS §3.1, §3.3 step 2).
//!
//! One member list and one shard layout per view id everywhere; each member installs views with strictly increasing
//! ids; and every view holds a majority of its predecessor: fewer than half of the predecessor's
//! members are gone, graceful leavers not counted (no split brain).

use std::collections::BTreeMap;

use derecho::protocol::{NodeId, ViewId};
use derecho::sim::{GroupSim, MemberEvent, MemberRecord, Plan};

use super::EventChecker;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ViewAgreement {
    views: BTreeMap<ViewId, Vec<NodeId>>,
    /// Each view's shards, as first installed.
    layouts: BTreeMap<ViewId, (Vec<derecho::protocol::ShardLayout>, NodeId)>,
    last: BTreeMap<NodeId, ViewId>,
    /// First views of restarted members.
    restart_views: std::collections::BTreeSet<ViewId>,
}

impl EventChecker for ViewAgreement {
    fn name(&self) -> &'static str {
        "view-agreement"
    }

    fn restarted(&mut self, node: NodeId, view: ViewId) {
        self.views.retain(|id, _| *id < view);
        self.layouts.retain(|id, _| *id < view);
        self.last.remove(&node);
        // Its quorum (a majority of the last view any member back saved) is the restart plan's
        // rule, judged by `derecho::protocol::restart`'s tests; the predecessor here may be a
        // later view that no member back installed.
        self.restart_views.insert(view);
    }

    fn observe(&mut self, sim: &GroupSim, e: &MemberRecord) -> Result<(), String> {
        let MemberEvent::Installed(view) = &e.what else { return Ok(()) };
        if let Some(&last) = self.last.get(&e.node)
            && view.id <= last
        {
            return Err(format!("n{} installed view {} after view {}", e.node.0, view.id.0, last.0));
        }
        self.last.insert(e.node, view.id);
        match self.layouts.get(&view.id) {
            Some((shards, by)) if *shards != view.shards => {
                return Err(format!(
                    "view {} has shards {:?} at n{} but {:?} at n{}",
                    view.id.0, view.shards, e.node.0, shards, by.0
                ));
            }
            Some(_) => {}
            None => {
                self.layouts.insert(view.id, (view.shards.clone(), e.node));
            }
        }
        match self.views.get(&view.id) {
            Some(m) if *m != view.members => {
                return Err(format!("view {} is {:?} at n{} but {:?} elsewhere", view.id.0, view.members, e.node.0, m));
            }
            Some(_) => return Ok(()),
            None => {}
        }
        if view.id.0 > 0 && !self.restart_views.contains(&view.id) {
            let Some(prev) = self.views.get(&ViewId(view.id.0 - 1)) else {
                return Err(format!("view {} installed at n{} before any view {}", view.id.0, e.node.0, view.id.0 - 1));
            };
            let leavers: Vec<NodeId> = sim
                .config()
                .plan
                .iter()
                .filter_map(|p| match p {
                    Plan::Leave { node, .. } => Some(*node),
                    _ => None,
                })
                .collect();
            let gone = prev.iter().filter(|m| !view.members.contains(m) && !leavers.contains(m)).count();
            if gone > 0 && gone >= prev.len().div_ceil(2) {
                return Err(format!(
                    "view {} {:?} lost {gone} of the {} members of view {} {:?}: not a majority",
                    view.id.0,
                    view.members,
                    prev.len(),
                    view.id.0 - 1,
                    prev
                ));
            }
        }
        self.views.insert(view.id, view.members.clone());
        Ok(())
    }
}
