//! No faults among honest members (PROTOCOLS §1: "a member writes only its own row"; §7: a
//! violation suspects the peer, so a false accusation removes a correct member).
//!
//! In the simulator every member runs the protocol faithfully, so a member reporting that a peer's
//! row broke the protocol (`Output::Violation`), or a push outside the sender's own row or to a
//! node that is not a peer, is a bug in the protocol.

use derecho::sim::{FaultKind, Sim};

use super::Checker;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NoFaults {
    seen: usize,
}

impl Checker for NoFaults {
    fn name(&self) -> &'static str {
        "no-faults"
    }

    fn after_step(&mut self, sim: &Sim) -> Result<(), String> {
        let faults = sim.faults();
        let Some(f) = faults.get(self.seen) else { return Ok(()) };
        self.seen = faults.len();
        let what = match &f.kind {
            FaultKind::Violation { peer, violation } => format!("{} accused honest {peer}: {violation}", f.node),
            FaultKind::PushOutsideRow { from, range } => {
                format!("{from} pushed table bytes {range:?}, outside its own row (seen at {})", f.node)
            }
            FaultKind::PushToNonPeer { from, to } => format!("{from} pushed to {to}, which is not a peer"),
        };
        Err(format!("{what} (step {}, t={}ns; {} fault(s) in all)", f.step, f.at.0, faults.len()))
    }
}
