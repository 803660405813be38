//! No honest member is accused (PROTOCOLS §7): in the simulator every member is honest, so a
//! violation reported by one about another, a bad payload or a push outside its row is a bug of
//! the protocol or of the simulator.

use derecho::sim::{GroupSim, MemberEvent, MemberRecord};

use super::EventChecker;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NoFaults;

impl EventChecker for NoFaults {
    fn name(&self) -> &'static str {
        "no-faults"
    }

    fn observe(&mut self, _sim: &GroupSim, e: &MemberRecord) -> Result<(), String> {
        match &e.what {
            MemberEvent::Fault(what) => Err(format!("at n{}: {what}", e.node.0)),
            _ => Ok(()),
        }
    }
}
