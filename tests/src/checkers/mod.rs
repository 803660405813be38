//! Named invariants over a simulation's history (TESTING.md "Checkers", STYLE principle 5).
//!
//! Each checker is one property, in its own file, citing the section of PROTOCOLS.md it checks.
//! Safety checkers run after every step of a [`Sim`] (through the hook of [`Sim::run`]) and read
//! only what changed since their last call, so a run stays linear in its length. The liveness
//! checker ([`AllDelivered`]) judges the run once it is over.
//!
//! # Layout
//!
//! * [`total_order`]: ordered shards deliver one sequence everywhere, with versions `k * S + r`.
//! * [`no_duplicates`]: nothing is delivered twice at a member.
//! * [`fifo`]: each sender's messages are delivered in order, without gaps.
//! * [`stability`]: an ordered message is delivered only once every shard member received it.
//! * [`window`]: no sender has more messages outstanding than its window.
//! * [`integrity`]: every delivered payload is one that was sent, byte for byte.
//! * [`no_faults`]: no honest member is accused of breaking the protocol; no push leaves its row.
//! * [`all_delivered`]: (liveness) every message sent is delivered at every shard member.
//!
//! # Examples
//!
//! ```
//! use derecho::protocol::DeliveryMode;
//! use derecho::sim::{Sim, SimConfig};
//! use derecho_tests::checkers::Checkers;
//!
//! let mut sim = Sim::new(SimConfig::new(1, 3, DeliveryMode::Unordered, 5)).unwrap();
//! let mut checkers = Checkers::all();
//! let outcome = sim.run(|sim| checkers.check(sim)).unwrap();
//! assert!(checkers.finish(&sim, &outcome).is_empty());
//! ```

use std::fmt;

use derecho::protocol::{NodeId, ShardLayout, ShardRef};
use derecho::sim::{Delivery, Outcome, Sim};

pub mod all_delivered;
pub mod fifo;
pub mod integrity;
pub mod linearizability;
pub mod membership;
pub mod no_duplicates;
pub mod no_faults;
pub mod stability;
pub mod total_order;
pub mod window;

pub use all_delivered::AllDelivered;
pub use fifo::FifoPerSender;
pub use integrity::PayloadIntegrity;
pub use no_duplicates::NoDuplicates;
pub use no_faults::NoFaults;
pub use stability::DeliveredWhenStable;
pub use total_order::TotalOrder;
pub use window::WindowBound;

/// Whether a property says nothing bad happens, or something good eventually does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// Checked after every step; one counter-example fails the run.
    Safety,
    /// Checked when the run is over (a stall is reported here, never as a safety violation).
    Liveness,
}

/// One invariant.
pub trait Checker: fmt::Debug {
    /// Its name, as failure messages print it.
    fn name(&self) -> &'static str;

    /// What kind of property it is.
    fn property(&self) -> Property {
        Property::Safety
    }

    /// After every step (and once before the first).
    ///
    /// # Errors
    ///
    /// A counter-example, described.
    fn after_step(&mut self, sim: &Sim) -> Result<(), String>;

    /// Once the run is over.
    ///
    /// # Errors
    ///
    /// What did not happen, described.
    fn at_end(&mut self, sim: &Sim, outcome: &Outcome) -> Result<(), String> {
        let _ = (sim, outcome);
        Ok(())
    }
}

/// A checker that failed at the end of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckFailure {
    /// The checker's name.
    pub checker: &'static str,
    /// Safety or liveness.
    pub property: Property,
    /// What it said.
    pub message: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} {:?}] {}", self.checker, self.property, self.message)
    }
}

/// A set of checkers run together.
#[derive(Debug)]
pub struct Checkers {
    list: Vec<Box<dyn Checker>>,
}

impl Checkers {
    /// Every safety checker.
    pub fn safety() -> Self {
        Self {
            list: vec![
                Box::new(NoFaults::default()),
                Box::new(PayloadIntegrity::default()),
                Box::new(NoDuplicates::default()),
                Box::new(FifoPerSender::default()),
                Box::new(TotalOrder::default()),
                Box::new(DeliveredWhenStable::default()),
                Box::new(WindowBound::default()),
            ],
        }
    }

    /// Every safety checker and the liveness checker.
    pub fn all() -> Self {
        let mut c = Self::safety();
        c.list.push(Box::new(AllDelivered));
        c
    }

    /// These checkers only.
    pub fn of(list: Vec<Box<dyn Checker>>) -> Self {
        Self { list }
    }

    /// Runs every checker's per-step check; the first failure, prefixed with the checker's name.
    ///
    /// # Errors
    ///
    /// `"[name] counter-example"`.
    pub fn check(&mut self, sim: &Sim) -> Result<(), String> {
        for c in &mut self.list {
            c.after_step(sim).map_err(|m| format!("[{}] {m}", c.name()))?;
        }
        Ok(())
    }

    /// Runs every checker's end-of-run check; every failure (empty when all hold).
    pub fn finish(&mut self, sim: &Sim, outcome: &Outcome) -> Vec<CheckFailure> {
        let mut failures = Vec::new();
        for c in &mut self.list {
            if let Err(message) = c.after_step(sim).and_then(|()| c.at_end(sim, outcome)) {
                failures.push(CheckFailure { checker: c.name(), property: c.property(), message });
            }
        }
        failures
    }
}

/// Per member, how many deliveries a checker has already read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cursor {
    seen: Vec<usize>,
}

impl Cursor {
    /// Calls `f(rank, member, delivery)` for every delivery not seen before, member by member.
    pub(crate) fn for_new(
        &mut self,
        sim: &Sim,
        mut f: impl FnMut(usize, NodeId, &Delivery) -> Result<(), String>,
    ) -> Result<(), String> {
        self.seen.resize(sim.node_ids().len(), 0);
        for (rank, &member) in sim.node_ids().iter().enumerate() {
            let deliveries = sim.deliveries(member);
            for d in deliveries.iter().skip(self.seen[rank]) {
                // Advance first: a failure is reported once, not again at the next step.
                self.seen[rank] += 1;
                f(rank, member, d)?;
            }
        }
        Ok(())
    }
}

/// The layout of `shard` in the simulated view.
pub(crate) fn shard_layout(sim: &Sim, shard: ShardRef) -> Result<&ShardLayout, String> {
    sim.view().shards.iter().find(|s| s.id == shard).ok_or_else(|| format!("delivery in unknown shard {shard}"))
}

/// `n11 s0.0 #3 (v1.7)`: a delivery, for messages.
pub(crate) fn describe(d: &Delivery) -> String {
    let version = d.version.map_or_else(|| "no version".to_string(), |v| v.to_string());
    format!(
        "{} #{} in {} ({version}, {} bytes, step {}, t={}ns)",
        d.sender,
        d.index,
        d.shard,
        d.payload.len(),
        d.step,
        d.at.0
    )
}
