//! Liveness after faults heal (TESTING.md "liveness, as a separate phase").
//!
//! At the end of a run whose faults healed (and whose majority survived), the members still
//! running are exactly the members of one view, all installed, none wedged; every one of them
//! has had all its workload accepted; and the members of each shard have identical logs of it
//! (state transfer gave new shard members the same state as everyone else).

use derecho::sim::GroupSim;

use super::survivors;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Liveness;

impl Liveness {
    /// Judges the end of the run.
    ///
    /// # Errors
    ///
    /// What is not settled.
    pub fn judge(&self, sim: &GroupSim) -> Result<(), String> {
        let alive = survivors(sim);
        let Some(&first) = alive.first() else { return Err("no member is running".into()) };
        let view = sim.node(first).expect("a running member has a node").view().clone();
        let mut ids = alive.clone();
        ids.sort();
        let mut members = view.members.clone();
        members.sort();
        if ids != members {
            return Err(format!("running members {ids:?} but n{}'s view {} is {:?}", first.0, view.id.0, view.members));
        }
        for &id in &alive {
            let node = sim.node(id).expect("a node");
            if node.view() != &view {
                return Err(format!("n{} is in view {}, n{} in view {}", id.0, node.view().id.0, first.0, view.id.0));
            }
            if node.is_wedged() {
                return Err(format!("n{} is still wedged in view {}", id.0, view.id.0));
            }
            if sim.unsent(id) > 0 {
                return Err(format!("n{} still has {} messages not accepted", id.0, sim.unsent(id)));
            }
            for s in view.shards.iter().filter(|s| s.members.contains(&id)) {
                let other = s.members[0];
                if sim.log(id, s.id) != sim.log(other, s.id) {
                    return Err(format!(
                        "n{} and n{} have different logs of {}: {} vs {} entries",
                        id.0,
                        other.0,
                        s.id,
                        sim.log(id, s.id).len(),
                        sim.log(other, s.id).len()
                    ));
                }
            }
        }
        Ok(())
    }
}
