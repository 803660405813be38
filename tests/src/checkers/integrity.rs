//! Payload integrity (PROTOCOLS §1: a member reads a peer's slot only after the counter that
//! covers it, so it never sees torn or stale data; §2.1: every message carries its header).
//!
//! Every delivered payload decodes (its checksum matches its bytes), names the sender and shard
//! the protocol delivered it for, and is exactly the message that sender's `send` accepted under
//! that index: same workload sequence number, length and checksum, and the header's timestamp is
//! the time of the send. A delivery never precedes its send.

use derecho::sim::{Sim, payload};

use super::{Checker, Cursor, describe};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PayloadIntegrity {
    cursor: Cursor,
}

impl Checker for PayloadIntegrity {
    fn name(&self) -> &'static str {
        "payload-integrity"
    }

    fn after_step(&mut self, sim: &Sim) -> Result<(), String> {
        self.cursor.for_new(sim, |_, member, d| {
            let id = payload::decode(&d.payload)
                .map_err(|e| format!("{member} delivered a corrupt payload in {}: {e}", describe(d)))?;
            if id.sender != d.sender || id.shard != d.shard {
                return Err(format!(
                    "{member} delivered {} whose payload was written by {} for {}",
                    describe(d),
                    id.sender,
                    id.shard
                ));
            }
            let stream = sim
                .stream(d.sender, d.shard)
                .ok_or_else(|| format!("{member} delivered {} but that sender sends nothing there", describe(d)))?;
            let sent = stream.sent().get(id.seq as usize).ok_or_else(|| {
                format!(
                    "{member} delivered {} carrying workload message {}, which {} has not sent",
                    describe(d),
                    id.seq,
                    d.sender
                )
            })?;
            if (sent.index, sent.len, sent.checksum) != (d.index, d.payload.len(), id.checksum) {
                return Err(format!(
                    "{member} delivered {}, but workload message {} was sent as #{} with {} bytes, checksum {:#010x}",
                    describe(d),
                    id.seq,
                    sent.index,
                    sent.len,
                    sent.checksum
                ));
            }
            if d.timestamp != sent.at || d.at < sent.at {
                return Err(format!(
                    "{member} delivered {} stamped t={}ns, sent at t={}ns",
                    describe(d),
                    d.timestamp.0,
                    sent.at.0
                ));
            }
            Ok(())
        })
    }
}
