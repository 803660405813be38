//! Total order (PROTOCOLS §2.2, and §2.5 for what unordered shards must not do).
//!
//! In every ordered shard, the delivery sequences of any two members are prefix-consistent: the
//! same messages, in the same order, with the same versions. The checker keeps, per shard, the
//! longest sequence delivered anywhere; every member's sequence must be a prefix of it, which is
//! the same as every pair being prefix-consistent. It also checks what a version must be: in view
//! `v`, message `k` of the sender of rank `r` among `S` senders has version `(v, k * S + r)`, so
//! versions strictly increase along each member's sequence. Unordered deliveries carry no version.

use std::collections::BTreeMap;

use derecho::protocol::{DeliveryMode, NodeId, ShardRef, Version};
use derecho::sim::Sim;

use super::{Checker, Cursor, describe, shard_layout};

/// What identifies one ordered delivery.
type Entry = (NodeId, u64, Option<Version>);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct TotalOrder {
    cursor: Cursor,
    /// Per shard: the longest sequence delivered, and who delivered each entry first.
    reference: BTreeMap<ShardRef, Vec<(Entry, NodeId)>>,
    /// Per (member rank, shard): deliveries so far and the last version.
    position: BTreeMap<(usize, ShardRef), (usize, Option<Version>)>,
}

impl Checker for TotalOrder {
    fn name(&self) -> &'static str {
        "total-order"
    }

    fn after_step(&mut self, sim: &Sim) -> Result<(), String> {
        let Self { cursor, reference, position } = self;
        cursor.for_new(sim, |rank, member, d| {
            let layout = shard_layout(sim, d.shard)?;
            if layout.mode == DeliveryMode::Unordered {
                return match d.version {
                    None => Ok(()),
                    Some(_) => Err(format!("{member} delivered {} with a version in an unordered shard", describe(d))),
                };
            }
            let Some(version) = d.version else {
                return Err(format!("{member} delivered {} without a version in an ordered shard", describe(d)));
            };
            let r = layout
                .senders
                .iter()
                .position(|&s| s == d.sender)
                .ok_or_else(|| format!("{member} delivered {} from a node that is not a sender", describe(d)))?;
            let expected = Version::new(sim.view().id, d.index * layout.senders.len() as u64 + r as u64);
            if version != expected {
                return Err(format!(
                    "{member} delivered {} with version {version}; message {} of sender rank {r} of {} must be {expected}",
                    describe(d),
                    d.index,
                    layout.senders.len()
                ));
            }
            let (count, last) = position.entry((rank, d.shard)).or_insert((0, None));
            if last.is_some_and(|l| l >= version) {
                return Err(format!(
                    "{member} delivered {} after {}: versions must increase",
                    describe(d),
                    last.expect("checked")
                ));
            }
            let entry = (d.sender, d.index, d.version);
            let seq = reference.entry(d.shard).or_default();
            match seq.get(*count) {
                Some((theirs, by)) if *theirs != entry => {
                    return Err(format!(
                        "{member} delivered {} as its delivery {count} in {}, but {by} delivered {} #{} ({}) there",
                        describe(d),
                        d.shard,
                        theirs.0,
                        theirs.1,
                        theirs.2.map_or_else(|| "no version".into(), |v| v.to_string())
                    ));
                }
                Some(_) => {}
                None => seq.push((entry, member)),
            }
            *count += 1;
            *last = Some(version);
            Ok(())
        })
    }
}
