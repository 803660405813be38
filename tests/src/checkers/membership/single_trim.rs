//! At most one ragged trim per (view, shard) is acted on (PROTOCOLS §3.3 step 7, §3.4).
//!
//! Every member that delivers up to a trim uses the same trims: a leader that takes over copies a
//! published record and never computes a second one. (A leader that others suspect by mistake
//! may still publish a record of its own before it learns it is suspected; nobody can act on it,
//! because the members it waits for follow the new leader, and it stops once it sees itself
//! suspected. The property is therefore judged on the trims members deliver by.)

use std::collections::BTreeMap;

use derecho::protocol::{NodeId, ShardRef, ViewId};
use derecho::sim::{GroupSim, MemberEvent, MemberRecord};

use super::EventChecker;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SingleTrim {
    trims: BTreeMap<(ViewId, ShardRef), (Vec<u64>, NodeId)>,
}

impl EventChecker for SingleTrim {
    fn name(&self) -> &'static str {
        "single-trim"
    }

    fn restarted(&mut self, _node: NodeId, view: ViewId) {
        self.trims.retain(|(v, _), _| *v < view);
    }

    fn observe(&mut self, _sim: &GroupSim, e: &MemberRecord) -> Result<(), String> {
        let MemberEvent::Final { view, trims } = &e.what else { return Ok(()) };
        for (shard, t) in trims {
            match self.trims.get(&(*view, *shard)) {
                Some((first, by)) if first != t => {
                    return Err(format!(
                        "view {} {shard}: n{} has trim {t:?}, n{} had {first:?}",
                        view.0, e.node.0, by.0
                    ));
                }
                Some(_) => {}
                None => {
                    self.trims.insert((*view, *shard), (t.clone(), e.node));
                }
            }
        }
        Ok(())
    }
}
