//! What a simulation runs: the group, its shards, the workload, the network and its faults.
//!
//! Members are named by rank here (`0..members`); the simulator gives rank `r` the node id
//! [`node_id`]`(r)`, deliberately different from the rank so that confusing the two breaks a run.

use std::ops::RangeInclusive;

use crate::protocol::{DeliveryMode, Limits, NodeId, ShardIndex, ShardRef, SubgroupId, Time};

use super::payload::PAYLOAD_HEADER_LEN;

/// The node id the simulator gives the member of rank `rank`: `11 * (rank + 1)`.
pub fn node_id(rank: u32) -> NodeId {
    NodeId(11 * (rank + 1))
}

/// The id of the `index`-th shard of a configuration: subgroup `index`, shard 0.
pub fn shard_id(index: usize) -> ShardRef {
    ShardRef { subgroup: SubgroupId(index as u16), shard: ShardIndex(0) }
}

/// Which members belong to a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Members {
    /// Every member of the group.
    All,
    /// These ranks (increasing).
    Ranks(Vec<u32>),
}

/// Which of a shard's members are senders in its layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Senders {
    /// Every shard member.
    All,
    /// Half of the shard's members (at least one), chosen by the seed.
    Half,
    /// One shard member, chosen by the seed.
    One,
    /// These positions in the shard's member list (increasing).
    Positions(Vec<usize>),
}

/// Which of a shard's senders the workload makes send. The others stay idle, and in an ordered
/// shard send only nulls (PROTOCOLS §2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Active {
    /// Every sender.
    All,
    /// One sender, chosen by the seed.
    One,
}

/// One shard of the simulated group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// Its members.
    pub members: Members,
    /// Its senders.
    pub senders: Senders,
    /// Which senders send.
    pub active: Active,
    /// Ordered or unordered.
    pub mode: DeliveryMode,
}

impl ShardSpec {
    /// A shard of every member, with every member sending.
    pub fn all(mode: DeliveryMode) -> Self {
        Self { members: Members::All, senders: Senders::All, active: Active::All, mode }
    }
}

/// What each active sender sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Messages each active sender sends in each of its shards.
    pub messages_per_sender: u64,
    /// Payload lengths, drawn per message; the minimum is at least [`PAYLOAD_HEADER_LEN`].
    pub payload_len: RangeInclusive<u32>,
    /// Time between one message being accepted and the sender trying the next, drawn per message.
    pub interval_ns: RangeInclusive<u64>,
}

/// A member that runs slowly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowNode {
    /// Its rank.
    pub rank: u32,
    /// If set, the member evaluates its rules, sends and delivers only at multiples of this
    /// period; pushes still land in its memory when they arrive (one-sided writes).
    pub tick_ns: Option<u64>,
    /// Added to the latency of every push to or from the member.
    pub extra_latency_ns: u64,
}

/// A directed link that stops carrying pushes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The sender's rank.
    pub from: u32,
    /// The receiver's rank.
    pub to: u32,
    /// From this time on, every push on the link is dropped, including pushes issued earlier
    /// that had not arrived yet. A static group has no retransmission, so the cut is permanent.
    pub at: Time,
}

/// A whole simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Fixes every random choice.
    pub seed: u64,
    /// Members of the group (ranks `0..members`).
    pub members: u32,
    /// Shards, each with its own columns and order.
    pub shards: Vec<ShardSpec>,
    /// Window, payload and ring limits of the protocol.
    pub limits: Limits,
    /// What the senders send.
    pub workload: Workload,
    /// Latency of one push on one link, drawn per push and link.
    pub latency_ns: RangeInclusive<u64>,
    /// Slow members.
    pub slow_nodes: Vec<SlowNode>,
    /// Cut links.
    pub cuts: Vec<Cut>,
    /// The run stops (and reports it) after this many events.
    pub max_steps: u64,
    /// Keep every trace line (for determinism tests and debugging), not only the hash and tail.
    pub record_trace: bool,
}

impl SimConfig {
    /// `members` members in one shard, everyone sending `messages_per_sender` messages, with
    /// small limits so that windows fill and rings wrap, and up to 10 µs of latency.
    pub fn new(seed: u64, members: u32, mode: DeliveryMode, messages_per_sender: u64) -> Self {
        Self {
            seed,
            members,
            shards: vec![ShardSpec::all(mode)],
            limits: Limits { window_len: 4, payload_len_max: 96, ring_len: 512, ..Limits::default() },
            workload: Workload { messages_per_sender, payload_len: 24..=96, interval_ns: 0..=5_000 },
            latency_ns: 500..=10_000,
            slow_nodes: Vec::new(),
            cuts: Vec::new(),
            max_steps: 2_000_000,
            record_trace: false,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// The first problem found, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        self.limits.validate().map_err(|e| ConfigError { field: "limits", reason: e.to_string() })?;
        if self.members == 0 || self.members > self.limits.members_max {
            return bad("members", format!("{} is not between 1 and members_max", self.members));
        }
        if self.shards.is_empty() {
            return bad("shards", "at least one shard is needed".into());
        }
        for (i, s) in self.shards.iter().enumerate() {
            let len = match &s.members {
                Members::All => self.members as usize,
                Members::Ranks(r) => {
                    if r.is_empty() || r.windows(2).any(|w| w[0] >= w[1]) || r.iter().any(|&x| x >= self.members) {
                        return bad("shards", format!("shard {i}: member ranks {r:?} must be increasing ranks"));
                    }
                    r.len()
                }
            };
            if let Senders::Positions(p) = &s.senders
                && (p.is_empty() || p.windows(2).any(|w| w[0] >= w[1]) || p.iter().any(|&x| x >= len))
            {
                return bad("shards", format!("shard {i}: sender positions {p:?} must be increasing positions"));
            }
        }
        let w = &self.workload;
        if *w.payload_len.start() < PAYLOAD_HEADER_LEN as u32
            || w.payload_len.start() > w.payload_len.end()
            || *w.payload_len.end() > self.limits.payload_len_max
        {
            return bad(
                "workload.payload_len",
                format!("{:?} must lie in {PAYLOAD_HEADER_LEN}..=payload_len_max", w.payload_len),
            );
        }
        if w.interval_ns.start() > w.interval_ns.end() {
            return bad("workload.interval_ns", format!("{:?} is empty", w.interval_ns));
        }
        if self.latency_ns.start() > self.latency_ns.end() {
            return bad("latency_ns", format!("{:?} is empty", self.latency_ns));
        }
        for s in &self.slow_nodes {
            if s.rank >= self.members || s.tick_ns == Some(0) {
                return bad("slow_nodes", format!("{s:?}: rank out of range or zero tick"));
            }
        }
        for c in &self.cuts {
            if c.from >= self.members || c.to >= self.members || c.from == c.to {
                return bad("cuts", format!("{c:?}: ranks out of range or equal"));
            }
        }
        if self.max_steps == 0 {
            return bad("max_steps", "must be positive".into());
        }
        Ok(())
    }
}

/// A simulation configuration that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulation config {field}: {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_bad_fields_are_named() {
        let ok = SimConfig::new(1, 3, DeliveryMode::Ordered, 10);
        ok.validate().unwrap();
        let cases: Vec<(&str, SimConfig)> = vec![
            ("members", SimConfig { members: 0, ..ok.clone() }),
            ("shards", SimConfig { shards: vec![], ..ok.clone() }),
            (
                "shards",
                SimConfig {
                    shards: vec![ShardSpec {
                        members: Members::Ranks(vec![2, 1]),
                        ..ShardSpec::all(DeliveryMode::Ordered)
                    }],
                    ..ok.clone()
                },
            ),
            (
                "shards",
                SimConfig {
                    shards: vec![ShardSpec {
                        senders: Senders::Positions(vec![3]),
                        ..ShardSpec::all(DeliveryMode::Ordered)
                    }],
                    ..ok.clone()
                },
            ),
            (
                "workload.payload_len",
                SimConfig { workload: Workload { payload_len: 8..=40, ..ok.workload.clone() }, ..ok.clone() },
            ),
            (
                "workload.payload_len",
                SimConfig { workload: Workload { payload_len: 24..=97, ..ok.workload.clone() }, ..ok.clone() },
            ),
            ("latency_ns", SimConfig { latency_ns: RangeInclusive::new(5, 4), ..ok.clone() }),
            (
                "slow_nodes",
                SimConfig { slow_nodes: vec![SlowNode { rank: 3, tick_ns: None, extra_latency_ns: 0 }], ..ok.clone() },
            ),
            ("cuts", SimConfig { cuts: vec![Cut { from: 1, to: 1, at: Time(0) }], ..ok.clone() }),
            ("limits", SimConfig { limits: Limits { window_len: 0, ..ok.limits.clone() }, ..ok.clone() }),
        ];
        for (field, config) in cases {
            let e = config.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }
}
