//! Windows never exceeded (PROTOCOLS §2.1 flow control: "sender with rank `r` among `S` senders
//! may send message `k` only if every shard member's `delivered_num >= (k - window) * S + r`. A
//! full window makes `send` wait, never drop").
//!
//! Two checks per sender and shard, after every step:
//!
//! * what the node reports: the most indices it ever had outstanding
//!   ([`Node::outstanding_max`](derecho::protocol::Node::outstanding_max)) is at most
//!   `window_len`;
//! * the ground truth, independent of that report: the indices it published (messages and nulls)
//!   minus those every member has delivered *now* is at most `window_len`. A sender decides from
//!   copies of its peers' counters that lag the truth, so if it respected the window with its
//!   copies, the truth shows at most as many outstanding.
//!
//! An ordered member's delivered count is its own `delivered_num + 1`
//! ([`Node::delivered_count`](derecho::protocol::Node::delivered_count)); an unordered member's,
//! per sender, is read from its deliveries (unordered senders publish no nulls).

use std::collections::BTreeMap;

use derecho::protocol::{DeliveryMode, NodeId, ShardRef};
use derecho::sim::Sim;

use super::{Checker, Cursor};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct WindowBound {
    cursor: Cursor,
    /// Unordered shards: (member rank, shard, sender) -> indices delivered (last index + 1).
    unordered_delivered: BTreeMap<(usize, ShardRef, NodeId), u64>,
}

/// Indices of the sender of rank `r` among `senders` that are delivered everywhere once every
/// member has delivered `min_delivered` sequence numbers: those `k` with `k * S + r <
/// min_delivered`.
pub fn released_indices(min_delivered: u64, r: u64, senders: u64) -> u64 {
    assert!(r < senders, "sender rank {r} of {senders}");
    if min_delivered > r { (min_delivered - r).div_ceil(senders) } else { 0 }
}

/// The window rule for one sender: `published - released <= window_len`.
///
/// # Errors
///
/// How far above the window the sender is.
pub fn check_outstanding(published: u64, released: u64, window_len: u64) -> Result<(), String> {
    let outstanding = published.saturating_sub(released);
    if outstanding > window_len {
        Err(format!(
            "{outstanding} indices outstanding ({published} published, {released} delivered everywhere), \
             above the window of {window_len}"
        ))
    } else {
        Ok(())
    }
}

impl Checker for WindowBound {
    fn name(&self) -> &'static str {
        "window-bound"
    }

    fn after_step(&mut self, sim: &Sim) -> Result<(), String> {
        let unordered = &mut self.unordered_delivered;
        self.cursor.for_new(sim, |rank, _, d| {
            let next = unordered.entry((rank, d.shard, d.sender)).or_insert(0);
            *next = (*next).max(d.index + 1);
            Ok(())
        })?;
        let window_len = u64::from(sim.config().limits.window_len);
        for shard in &sim.view().shards {
            let s = shard.senders.len() as u64;
            let min_delivered_ordered =
                || shard.members.iter().map(|&m| sim.node(m).delivered_count(shard.id).expect("a shard member")).min();
            for (r, &sender) in shard.senders.iter().enumerate() {
                let node = sim.node(sender);
                let max_seen = node.outstanding_max(shard.id).expect("a shard member");
                if max_seen > window_len {
                    return Err(format!(
                        "{sender} reports {max_seen} indices outstanding at once in {}, above the window of {window_len}",
                        shard.id
                    ));
                }
                let released = match shard.mode {
                    DeliveryMode::Ordered => released_indices(min_delivered_ordered().unwrap_or(0), r as u64, s),
                    DeliveryMode::Unordered => shard
                        .members
                        .iter()
                        .map(|&m| unordered.get(&(sim.rank(m), shard.id, sender)).copied().unwrap_or(0))
                        .min()
                        .unwrap_or(0),
                };
                let published = node.sent_count(shard.id).expect("a shard member");
                check_outstanding(published, released, window_len)
                    .map_err(|e| format!("{sender} in {}: {e}", shard.id))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_indices_follow_the_round_robin_order() {
        // Three senders: seqs 0, 1, 2 are index 0 of ranks 0, 1, 2; seq 3 is index 1 of rank 0.
        let table = [
            // (min_delivered, r, expected)
            (0, 0, 0),
            (1, 0, 1),
            (1, 1, 0),
            (2, 1, 1),
            (3, 2, 1),
            (4, 0, 2),
            (4, 1, 1),
            (6, 2, 2),
            (7, 2, 2),
        ];
        for (min_delivered, r, expected) in table {
            assert_eq!(released_indices(min_delivered, r, 3), expected, "min_delivered {min_delivered}, rank {r}");
        }
        assert_eq!(released_indices(5, 0, 1), 5);
    }

    #[test]
    fn the_window_rule_allows_exactly_window_len_outstanding() {
        assert!(check_outstanding(10, 6, 4).is_ok());
        assert!(check_outstanding(3, 5, 4).is_ok());
        let e = check_outstanding(11, 6, 4).unwrap_err();
        assert!(e.contains("5 indices outstanding") && e.contains("window of 4"), "{e}");
    }
}
