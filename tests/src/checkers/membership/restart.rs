//! Durability across a total restart (PROTOCOLS §4, §4.1). Judged on each shard state a
//! restarted member resumes with ([`MemberEvent::Resumed`]):
//!
//! * every version any member's node said durable at every member of its shard, before, is in
//!   that state (not only the highest: each of them), bit flips and torn records included (a
//!   log cut at a record failing its checksum stands for its shard in the restart quorum only
//!   beside another whole log);
//! * no version durable everywhere was ever delivered as two different messages (a fork of the
//!   shard's history across a restart);
//! * the state of a member of the restart view is the longest log the members of that view
//!   brought back: it ends with the last entry of that log.
//!
//! Once a shard resumes from a state, what its earlier views delivered beyond that state (never
//! durable everywhere, or the check above fails) is abandoned: later frontiers, which count the
//! versions of the views after it, do not make it owed.

use std::collections::BTreeMap;

use derecho::protocol::{NodeId, ShardRef, Version, View, ViewId};
use derecho::sim::{GroupSim, MemberEvent, MemberRecord};

use super::EventChecker;

/// A delivered workload message: its sender and sequence number.
type Entry = (NodeId, u64);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RestartDurability {
    /// The highest version said durable everywhere, per shard.
    global: BTreeMap<ShardRef, Version>,
    /// The message delivered at each version.
    entries: BTreeMap<(ShardRef, Version), (NodeId, u64)>,
    /// Per restarted member: the last versions it recovered, and whether a bit flip cut a log.
    offers: BTreeMap<NodeId, (BTreeMap<ShardRef, Version>, bool)>,
    /// Every view installed (a restart view replaces an older one of the same id).
    views: BTreeMap<ViewId, View>,
    /// The first view of the restart.
    restart_view: Option<ViewId>,
    /// Versions delivered as two different messages, with both.
    forks: BTreeMap<(ShardRef, Version), (Entry, Entry)>,
}

impl RestartDurability {
    /// A version durable everywhere that was delivered as two different messages.
    fn check_forks(&self) -> Result<(), String> {
        for ((shard, v), (a, b)) in &self.forks {
            if self.global.get(shard).is_some_and(|g| v <= g) {
                return Err(format!(
                    "{shard} {v}, durable everywhere, was delivered as n{}:{} and as n{}:{}",
                    a.0.0, a.1, b.0.0, b.1
                ));
            }
        }
        Ok(())
    }
}

impl EventChecker for RestartDurability {
    fn name(&self) -> &'static str {
        "restart-durability"
    }

    fn restarted(&mut self, _node: NodeId, view: ViewId) {
        // The leader installs the restart view first; late members join later views.
        self.restart_view.get_or_insert(view);
    }

    fn observe(&mut self, _sim: &GroupSim, e: &MemberRecord) -> Result<(), String> {
        match &e.what {
            MemberEvent::Installed(view) => {
                self.views.insert(view.id, view.clone());
            }
            MemberEvent::Delivered { shard, sender, seq, version: Some(v), .. } => {
                let entry = (*sender, *seq);
                match self.entries.get(&(*shard, *v)) {
                    Some(first) if *first != entry => {
                        self.forks.insert((*shard, *v), (*first, entry));
                    }
                    Some(_) => {}
                    None => {
                        self.entries.insert((*shard, *v), entry);
                    }
                }
                self.check_forks()?;
            }
            MemberEvent::GlobalPersisted { shard, version, .. } => {
                let g = self.global.entry(*shard).or_insert(*version);
                *g = (*g).max(*version);
                self.check_forks()?;
            }
            MemberEvent::Restarted { logs, corrupted } => {
                self.offers.insert(e.node, (logs.clone(), *corrupted));
            }
            MemberEvent::Resumed { view, shard, log } => {
                // In a total restart, the restart view's members and what they brought back of
                // this shard; a member that came back into a running group brought its own.
                let restart = self.restart_view.and_then(|r| self.views.get(&r)).filter(|r| r.id == *view);
                let members = restart.map_or_else(|| vec![e.node], |r| r.members.clone());
                let brought: Vec<(NodeId, Version, bool)> = members
                    .iter()
                    .filter_map(|m| {
                        let (logs, corrupted) = self.offers.get(m)?;
                        logs.get(shard).map(|v| (*m, *v, *corrupted))
                    })
                    .collect();
                if let Some(&g) = self.global.get(shard) {
                    let owed = self.entries.range((*shard, Version::from_u64(0))..=(*shard, g));
                    if let Some(((_, v), entry)) = owed.into_iter().find(|(_, entry)| !log.contains(entry)) {
                        return Err(format!(
                            "n{} resumed {shard} in view {} without {v} (n{}:{}), durable everywhere before the \
                             restart (up to {g}); the restart view's members brought back {brought:?}",
                            e.node.0, view.0, entry.0.0, entry.1
                        ));
                    }
                }
                if restart.is_some()
                    && let Some(&(longest_by, longest, _)) = brought.iter().max_by_key(|(_, v, _)| *v)
                    && let Some(last) = self.entries.get(&(*shard, longest))
                    && log.last() != Some(last)
                {
                    return Err(format!(
                        "n{} resumed {shard} in the restart view {} ending with {:?}, but the longest log brought \
                         back (n{}'s, to {longest}) ends with n{}:{}",
                        e.node.0,
                        view.0,
                        log.last(),
                        longest_by.0,
                        last.0.0,
                        last.1
                    ));
                }
                // The shard goes on from this state: what earlier views delivered beyond it was
                // never durable everywhere (checked just above) and is abandoned with the members
                // that delivered it. Later frontiers count versions of the new views only.
                let resumed_at = Version::new(*view, 0);
                self.entries.retain(|(s, v), entry| s != shard || *v >= resumed_at || log.contains(entry));
            }
            _ => {}
        }
        Ok(())
    }
}
