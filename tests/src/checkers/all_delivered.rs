//! Every message delivered everywhere: liveness of a fault-free static group (PROTOCOLS §2.1: a
//! full window makes `send` wait, never drop; §2.2: every message becomes stable and is
//! delivered; §2.3: nulls keep round-robin delivery from stalling).
//!
//! Judged once the run is over: the simulation must have gone quiet on its own (not stopped at
//! its step limit), every workload message must have been accepted by `send`, and every member of
//! each shard must have delivered every message sent into it. With the safety checkers (no
//! duplicates, FIFO, integrity), equal counts mean equal sets. A run with a cut link fails here,
//! and only here: the shard stalls, it does not misbehave.

use derecho::sim::{End, Outcome, Sim};

use super::{Checker, Property};

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllDelivered;

impl Checker for AllDelivered {
    fn name(&self) -> &'static str {
        "all-delivered"
    }

    fn property(&self) -> Property {
        Property::Liveness
    }

    fn after_step(&mut self, _sim: &Sim) -> Result<(), String> {
        Ok(())
    }

    fn at_end(&mut self, sim: &Sim, outcome: &Outcome) -> Result<(), String> {
        let mut problems = Vec::new();
        if outcome.end == End::StepLimit {
            problems.push(format!("the run did not go quiet within {} steps (livelock?)", outcome.steps));
        }
        for s in sim.streams() {
            if s.unsent() > 0 {
                problems.push(format!(
                    "{} sent {} of its {} messages in {}{}",
                    s.node(),
                    s.sent().len(),
                    s.total(),
                    s.shard(),
                    if s.blocked() { " (blocked on a full window)" } else { "" }
                ));
            }
            let shard = sim.view().shards.iter().find(|l| l.id == s.shard()).expect("a shard of the view");
            for &m in &shard.members {
                let got = sim.deliveries(m).iter().filter(|d| d.shard == s.shard() && d.sender == s.node()).count();
                if got != s.sent().len() {
                    problems.push(format!(
                        "{m} delivered {got} of the {} messages {} sent in {}",
                        s.sent().len(),
                        s.node(),
                        s.shard()
                    ));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let shown = problems.len().min(8);
        Err(format!(
            "no progress: at t={}ns after {} steps, {}{}",
            outcome.time.0,
            outcome.steps,
            problems[..shown].join("; "),
            if problems.len() > shown { format!("; and {} more", problems.len() - shown) } else { String::new() }
        ))
    }
}
