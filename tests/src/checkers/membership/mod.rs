//! Checkers over a membership simulation ([`GroupSim`]), one property per file, each citing
//! PROTOCOLS §3 (TESTING.md "Checkers").
//!
//! Safety checkers read the member events incrementally after every step ([`GroupCheckers::check`]);
//! the liveness checker judges the run once it is over ([`GroupCheckers::finish`]).
//!
//! # Layout
//!
//! * [`view_agreement`]: one member list per view id, ids increase, each view holds a majority of
//!   its predecessor.
//! * [`single_trim`]: at most one ragged trim per (view, shard).
//! * [`virtual_synchrony`]: prefix-consistent deliveries per view; every member that installs
//!   the next view delivered the same messages of this one in the same order.
//! * [`fifo_no_duplicates`]: per member and sender, a log of consecutive sequence numbers.
//! * [`no_loss`]: every message a surviving sender had accepted is in every survivor's log.
//! * [`liveness`]: after the faults heal, the survivors share one settled view and one log.
//! * [`no_faults`]: no honest member is accused of breaking the protocol.
//! * [`durability`]: a version said durable everywhere is durable at every member of the shard.
//! * [`restart`]: after a total restart, every version said durable everywhere is in the
//!   restarted state, which is the longest log brought back.

use std::collections::BTreeSet;

use derecho::protocol::{NodeId, ViewId};
use derecho::sim::{GroupSim, MemberEvent, MemberRecord};

pub mod durability;
pub mod fifo_no_duplicates;
pub mod liveness;
pub mod no_faults;
pub mod no_loss;
pub mod restart;
pub mod single_trim;
pub mod view_agreement;
pub mod virtual_synchrony;

pub use durability::Durability;
pub use fifo_no_duplicates::FifoNoDuplicates;
pub use liveness::Liveness;
pub use no_faults::NoFaults;
pub use no_loss::NoLoss;
pub use restart::RestartDurability;
pub use single_trim::SingleTrim;
pub use view_agreement::ViewAgreement;
pub use virtual_synchrony::VirtualSynchrony;

/// A safety property judged one member event at a time.
pub trait EventChecker {
    /// The property's name, for failure messages.
    fn name(&self) -> &'static str;

    /// Judges one new event.
    ///
    /// # Errors
    ///
    /// A counter-example.
    fn observe(&mut self, sim: &GroupSim, event: &MemberRecord) -> Result<(), String>;

    /// Member `node`, restarted from its disk (PROTOCOLS §4.1), is about to install its first
    /// view, `view`. A restarted group's views are a new run of the group: their ids may
    /// repeat those of views installed only by members that are not back (nothing of those
    /// views was durable everywhere, and the restart discards it), so what a checker knows of
    /// views from `view` on, and of `node`'s past, no longer applies. The default forgets
    /// nothing.
    fn restarted(&mut self, node: NodeId, view: ViewId) {
        let _ = (node, view);
    }
}

/// Every membership checker, fed incrementally.
#[allow(missing_debug_implementations)] // boxed checkers; nothing to show
pub struct GroupCheckers {
    safety: Vec<Box<dyn EventChecker>>,
    seen: usize,
    /// Members restarted from their disk that have not installed a view since.
    restarting: BTreeSet<NodeId>,
    /// Members in a view of the running group (installed one, not crashed or restarted since).
    active: BTreeSet<NodeId>,
    /// Restart views (first installed by restarted members only).
    restart_views: BTreeSet<ViewId>,
}

impl Default for GroupCheckers {
    fn default() -> Self {
        Self::all()
    }
}

impl GroupCheckers {
    /// Every safety checker.
    pub fn all() -> Self {
        Self {
            safety: vec![
                Box::new(ViewAgreement::default()),
                Box::new(SingleTrim::default()),
                Box::new(VirtualSynchrony::default()),
                Box::new(NoFaults),
                Box::new(Durability::default()),
                Box::new(RestartDurability::default()),
            ],
            seen: 0,
            restarting: BTreeSet::new(),
            active: BTreeSet::new(),
            restart_views: BTreeSet::new(),
        }
    }

    /// Feeds the events since the last call to every safety checker.
    ///
    /// # Errors
    ///
    /// The first counter-example, prefixed with the checker's name.
    pub fn check(&mut self, sim: &GroupSim) -> Result<(), String> {
        let events = sim.events();
        while self.seen < events.len() {
            let e = &events[self.seen];
            self.seen += 1;
            match &e.what {
                MemberEvent::Restarted { .. } => {
                    self.restarting.insert(e.node);
                    self.active.remove(&e.node);
                }
                MemberEvent::Crashed | MemberEvent::Stopped(_) => {
                    self.active.remove(&e.node);
                }
                // A restarted member's first view is a restart view (a new run of the group)
                // if no member of it is in the running group; otherwise it joined a group
                // that ran on (or already restarted), and the view is judged as any view.
                MemberEvent::Installed(view) => {
                    if self.restarting.remove(&e.node)
                        && (self.restart_views.contains(&view.id)
                            || !view.members.iter().any(|m| self.active.contains(m)))
                    {
                        self.restart_views.insert(view.id);
                        for c in &mut self.safety {
                            c.restarted(e.node, view.id);
                        }
                    }
                    self.active.insert(e.node);
                }
                _ => {}
            }
            for c in &mut self.safety {
                c.observe(sim, e).map_err(|m| format!("{}: {m}", c.name()))?;
            }
        }
        Ok(())
    }

    /// The end-of-run properties: FIFO without duplicates and no loss (on the final logs) and,
    /// if `expect_live`, liveness.
    ///
    /// # Errors
    ///
    /// Every property that fails, one message each.
    pub fn finish(&mut self, sim: &GroupSim, expect_live: bool) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if let Err(e) = self.check(sim) {
            errors.push(e);
        }
        if let Err(e) = FifoNoDuplicates.judge(sim) {
            errors.push(format!("fifo-no-duplicates: {e}"));
        }
        if let Err(e) = NoLoss.judge(sim) {
            errors.push(format!("no-loss: {e}"));
        }
        if expect_live && let Err(e) = Liveness.judge(sim) {
            errors.push(format!("liveness: {e}"));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// Members alive and not stopped at the end of the run.
pub fn survivors(sim: &GroupSim) -> Vec<NodeId> {
    sim.ids().into_iter().filter(|&id| sim.is_running(id)).collect()
}
