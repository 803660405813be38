//! Simulation configurations drawn from a seed, for the fresh-seed tests.
//!
//! [`random_static_group`] covers what a fault-free static group can vary: 1 to 6 members, one
//! or two (possibly overlapping) shards, every sender choice, ordered and unordered shards, idle
//! senders, windows from 1 up, rings from the smallest allowed, payload sizes, latency spreads,
//! and slow members. Limits are kept small so windows fill and rings wrap in every run.

use derecho::protocol::{DeliveryMode, Limits};
use derecho::sim::{Active, Members, Senders, ShardSpec, SimConfig, SimRng, SlowNode, Workload};

/// The configuration of fresh seed `seed`: every choice is drawn from the seed, and the
/// simulation itself runs with the same seed.
pub fn random_static_group(seed: u64) -> SimConfig {
    // A stream of its own, so that the configuration's draws do not shift the simulation's.
    let mut r = SimRng::new(seed ^ 0x5ce4_a210_5eed_0001);
    let members = r.range(1..=6) as u32;
    let payload_len_max = r.range(24..=160) as u32;
    let record_max = 32 + payload_len_max.next_multiple_of(16);
    let ring_len = (2 * record_max).next_multiple_of(64) + 64 * r.range(0..=6) as u32;
    let window_len = if r.chance(1, 5) { 1 } else { r.range(2..=12) as u32 };
    let shard_count = if members >= 2 && r.chance(1, 4) { 2 } else { 1 };
    let shards = (0..shard_count)
        .map(|_| {
            let shard_members = if r.chance(1, 2) {
                Members::All
            } else {
                let k = r.range(1..=u64::from(members)) as usize;
                Members::Ranks(r.choose(members as usize, k).into_iter().map(|m| m as u32).collect())
            };
            let senders = match r.below(4) {
                0 => Senders::All,
                1 => Senders::Half,
                2 => Senders::One,
                _ => {
                    let n = match &shard_members {
                        Members::All => members as usize,
                        Members::Ranks(m) => m.len(),
                    };
                    let k = r.range(1..=n as u64) as usize;
                    Senders::Positions(r.choose(n, k))
                }
            };
            let active = if r.chance(1, 4) { Active::One } else { Active::All };
            let mode = if r.chance(1, 4) { DeliveryMode::Unordered } else { DeliveryMode::Ordered };
            ShardSpec { members: shard_members, senders, active, mode }
        })
        .collect();
    let len_lo = r.range(24..=u64::from(payload_len_max)) as u32;
    let len_hi = r.range(u64::from(len_lo)..=u64::from(payload_len_max)) as u32;
    let interval_max = r.range(0..=20_000);
    let latency_min = r.range(0..=2_000);
    let latency_max = latency_min + r.range(0..=30_000);
    let slow_nodes = if r.chance(1, 3) {
        let rank = r.below(u64::from(members)) as u32;
        let tick_ns = r.chance(1, 2).then(|| r.range(1_000..=50_000));
        let extra_latency_ns = if r.chance(1, 2) { r.range(0..=50_000) } else { 0 };
        vec![SlowNode { rank, tick_ns, extra_latency_ns }]
    } else {
        Vec::new()
    };
    SimConfig {
        seed,
        members,
        shards,
        limits: Limits { window_len, payload_len_max, ring_len, ..Limits::default() },
        workload: Workload {
            messages_per_sender: r.range(1..=50),
            payload_len: len_lo..=len_hi,
            interval_ns: 0..=interval_max,
        },
        latency_ns: latency_min..=latency_max,
        slow_nodes,
        cuts: Vec::new(),
        max_steps: 2_000_000,
        record_trace: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_configurations_are_valid_and_varied() {
        let mut members = [false; 7];
        let (mut unordered, mut two_shards, mut slow, mut window_one) = (0, 0, 0, 0);
        for seed in 0..500 {
            let c = random_static_group(seed);
            c.validate().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(c, random_static_group(seed), "seed {seed} draws differently twice");
            members[c.members as usize] = true;
            unordered += usize::from(c.shards.iter().any(|s| s.mode == DeliveryMode::Unordered));
            two_shards += usize::from(c.shards.len() == 2);
            slow += usize::from(!c.slow_nodes.is_empty());
            window_one += usize::from(c.limits.window_len == 1);
        }
        assert_eq!(members[1..], [true; 6]);
        for (what, n) in
            [("unordered", unordered), ("two shards", two_shards), ("slow", slow), ("window 1", window_one)]
        {
            assert!(n > 25, "only {n} of 500 configurations have {what}");
        }
    }
}
