//! Subgroups and shards (PROTOCOLS §5): how each registered replicated type is laid out over a
//! view's members.
//!
//! A [`GroupLayout`] lists one [`SubgroupSpec`] per replicated type; subgroup `i` of every view
//! is the `i`-th spec. Each spec has a [`Policy`] (one shard of every member, fixed even shards,
//! or flexible shards with a minimum and a maximum), a delivery mode per shard, the members that
//! may send, node ids reserved for particular shards, and whether it draws on members the
//! subgroups before it already took. A view that some subgroup cannot lay out is *inadequate*:
//! it has no shards and waits for joins.
//!
//! The layout is a pure function of the view's members (rank order) and of the previous layout,
//! so every member computes the same one: no hash maps, no clocks. Flexible shards keep their
//! surviving members, so a failure moves as little state as it can.

use std::fmt;

use super::ids::{NodeId, ShardIndex, ShardRef, SubgroupId};
use super::layout::{DeliveryMode, ShardLayout};
use super::membership::LayoutFn;

/// How one subgroup's members are chosen and split into shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// One shard of every member available to the subgroup (at least `min` of them).
    AllMembers {
        /// Fewest members for the subgroup to be adequate.
        min: usize,
    },
    /// `shards` shards of exactly `per_shard` members each: the first available members in rank
    /// order, shard `i` taking the `i`-th run of `per_shard`. Members beyond are not in the
    /// subgroup. A failure shifts the runs.
    Fixed {
        /// Number of shards.
        shards: u16,
        /// Members per shard.
        per_shard: usize,
    },
    /// `shards` shards of `min..=max` members. Members of a shard in the previous layout stay in
    /// it; shards below `min` are filled first (the smallest first), then spare members join the
    /// shards below `max` round robin, the smallest first.
    Flexible {
        /// Number of shards.
        shards: u16,
        /// Fewest members per shard.
        min: usize,
        /// Most members per shard.
        max: usize,
    },
}

/// Which members of a shard may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Senders {
    /// Every member.
    All,
    /// The first `n` members of the shard in rank order (the oldest).
    First(usize),
    /// These nodes, when they are members of the shard; a shard with none of them is inadequate.
    Only(Vec<NodeId>),
}

/// One subgroup: one replicated type's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubgroupSpec {
    /// A name for diagnostics (the type's name).
    pub name: String,
    /// How members are chosen and sharded.
    pub policy: Policy,
    /// The delivery mode of every shard, unless `shard_modes` names it.
    pub mode: DeliveryMode,
    /// Per-shard modes, by shard index; shards beyond the list use `mode`.
    pub shard_modes: Vec<DeliveryMode>,
    /// Which members may send.
    pub senders: Senders,
    /// Node ids reserved for shards, by shard index: a reserved node that is a member of the
    /// view goes to its shard first (it still counts toward `max`).
    pub reserved: Vec<Vec<NodeId>>,
    /// Members taken by an earlier disjoint subgroup are not available to this one.
    pub disjoint: bool,
}

impl SubgroupSpec {
    /// A subgroup named `name` with `policy`: ordered, every member a sender, nothing reserved,
    /// overlapping the others.
    pub fn new(name: impl Into<String>, policy: Policy) -> Self {
        Self {
            name: name.into(),
            policy,
            mode: DeliveryMode::Ordered,
            shard_modes: Vec::new(),
            senders: Senders::All,
            reserved: Vec::new(),
            disjoint: false,
        }
    }

    /// Every shard delivers in `mode`.
    pub fn mode(mut self, mode: DeliveryMode) -> Self {
        self.mode = mode;
        self
    }

    /// Shard `i` delivers in `modes[i]`.
    pub fn shard_modes(mut self, modes: Vec<DeliveryMode>) -> Self {
        self.shard_modes = modes;
        self
    }

    /// Which members may send.
    pub fn senders(mut self, senders: Senders) -> Self {
        self.senders = senders;
        self
    }

    /// Node ids reserved for each shard.
    pub fn reserved(mut self, by_shard: Vec<Vec<NodeId>>) -> Self {
        self.reserved = by_shard;
        self
    }

    /// Only members no earlier disjoint subgroup took.
    pub fn disjoint(mut self) -> Self {
        self.disjoint = true;
        self
    }

    fn shard_count(&self) -> usize {
        match self.policy {
            Policy::AllMembers { .. } => 1,
            Policy::Fixed { shards, .. } | Policy::Flexible { shards, .. } => usize::from(shards.max(1)),
        }
    }

    /// Checks the spec on its own (a layout that can never be adequate is a configuration
    /// error, not an inadequate view).
    ///
    /// # Errors
    ///
    /// What is wrong, naming the subgroup.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |why: &str| Err(format!("subgroup {:?}: {why}", self.name));
        match self.policy {
            Policy::AllMembers { .. } => {}
            Policy::Fixed { shards, per_shard } => {
                if shards == 0 || per_shard == 0 {
                    return bad("fixed shards need at least one shard of at least one member");
                }
            }
            Policy::Flexible { shards, min, max } => {
                if shards == 0 || min == 0 || max < min {
                    return bad("flexible shards need shards >= 1 and 1 <= min <= max");
                }
            }
        }
        if self.reserved.len() > self.shard_count() {
            return bad("reserved nodes for a shard that does not exist");
        }
        let mut seen: Vec<NodeId> = Vec::new();
        for n in self.reserved.iter().flatten() {
            if seen.contains(n) {
                return bad("a node reserved twice");
            }
            seen.push(*n);
        }
        if matches!(self.senders, Senders::First(0)) || matches!(&self.senders, Senders::Only(v) if v.is_empty()) {
            return bad("no member may send");
        }
        Ok(())
    }

    /// Lays this subgroup out over `available` (rank order), given its `previous` shards (by
    /// shard index, possibly empty).
    fn lay_out(
        &self,
        id: SubgroupId,
        available: &[NodeId],
        previous: &[&ShardLayout],
    ) -> Result<Vec<Vec<NodeId>>, String> {
        let k = self.shard_count();
        let rank = |n: &NodeId| available.iter().position(|m| m == n).unwrap_or(usize::MAX);
        let mut shards: Vec<Vec<NodeId>> = vec![Vec::new(); k];
        let mut taken: Vec<NodeId> = Vec::new();
        for (i, res) in self.reserved.iter().enumerate() {
            for n in res {
                if available.contains(n) {
                    shards[i].push(*n);
                    taken.push(*n);
                }
            }
        }
        let short = |what: String| Err(format!("subgroup {} ({:?}): {what}", id.0, self.name));
        match self.policy {
            Policy::AllMembers { min } => {
                shards[0].extend(available.iter().copied().filter(|n| !taken.contains(n)));
                if shards[0].len() < min.max(1) {
                    return short(format!("{} members, fewer than {}", shards[0].len(), min.max(1)));
                }
            }
            Policy::Fixed { per_shard, .. } => {
                let mut rest = available.iter().copied().filter(|n| !taken.contains(n));
                for (i, shard) in shards.iter_mut().enumerate() {
                    while shard.len() < per_shard {
                        match rest.next() {
                            Some(n) => shard.push(n),
                            None => return short(format!("shard {i} has {} of {per_shard} members", shard.len())),
                        }
                    }
                }
            }
            Policy::Flexible { min, max, .. } => {
                // Survivors keep their shard (up to max), in rank order.
                for (i, shard) in shards.iter_mut().enumerate() {
                    if let Some(old) = previous.get(i) {
                        let mut keep: Vec<NodeId> = old
                            .members
                            .iter()
                            .copied()
                            .filter(|n| available.contains(n) && !taken.contains(n))
                            .collect();
                        keep.sort_by_key(rank);
                        for n in keep {
                            if shard.len() < max {
                                shard.push(n);
                                taken.push(n);
                            }
                        }
                    }
                }
                let mut rest = available.iter().copied().filter(|n| !taken.contains(n)).collect::<Vec<_>>().into_iter();
                // The smallest shard below `limit` (lowest index on ties).
                let smallest_below = |shards: &[Vec<NodeId>], limit: usize| {
                    (0..shards.len()).filter(|&i| shards[i].len() < limit).min_by_key(|&i| (shards[i].len(), i))
                };
                while let Some(i) = smallest_below(&shards, min) {
                    match rest.next() {
                        Some(n) => shards[i].push(n),
                        None => return short(format!("shard {i} has {} members, fewer than {min}", shards[i].len())),
                    }
                }
                for n in rest {
                    match smallest_below(&shards, max) {
                        Some(i) => shards[i].push(n),
                        None => break,
                    }
                }
            }
        }
        for s in &mut shards {
            s.sort_by_key(rank);
        }
        Ok(shards)
    }

    fn senders_of(&self, members: &[NodeId]) -> Vec<NodeId> {
        match &self.senders {
            Senders::All => members.to_vec(),
            Senders::First(n) => members.iter().copied().take(*n).collect(),
            Senders::Only(v) => members.iter().copied().filter(|m| v.contains(m)).collect(),
        }
    }
}

/// The layout of every replicated type of a group: subgroup `i` is `subgroups[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    /// The subgroups, in id order.
    pub subgroups: Vec<SubgroupSpec>,
}

impl GroupLayout {
    /// A layout of these subgroups.
    ///
    /// # Errors
    ///
    /// A spec that can never be laid out, or more than 65,536 subgroups.
    pub fn new(subgroups: Vec<SubgroupSpec>) -> Result<Self, String> {
        if subgroups.is_empty() || subgroups.len() > usize::from(u16::MAX) + 1 {
            return Err("a group layout needs 1 to 65536 subgroups".into());
        }
        for s in &subgroups {
            s.validate()?;
        }
        Ok(Self { subgroups })
    }
}

impl fmt::Display for GroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.subgroups.iter().enumerate() {
            write!(f, "{}{} {:?}", if i > 0 { "; " } else { "" }, s.name, s.policy)?;
        }
        Ok(())
    }
}

impl LayoutFn for GroupLayout {
    fn layout(&self, members: &[NodeId]) -> Result<Vec<ShardLayout>, String> {
        self.layout_next(members, &[])
    }

    fn layout_next(&self, members: &[NodeId], previous: &[ShardLayout]) -> Result<Vec<ShardLayout>, String> {
        let mut out = Vec::new();
        let mut used: Vec<NodeId> = Vec::new();
        for (i, spec) in self.subgroups.iter().enumerate() {
            let id = SubgroupId(i as u16);
            let available: Vec<NodeId> =
                members.iter().copied().filter(|m| !spec.disjoint || !used.contains(m)).collect();
            let prev: Vec<&ShardLayout> = (0..spec.shard_count())
                .map_while(|s| previous.iter().find(|p| p.id == ShardRef { subgroup: id, shard: ShardIndex(s as u16) }))
                .collect();
            let shards = spec.lay_out(id, &available, &prev)?;
            for (s, shard_members) in shards.into_iter().enumerate() {
                let senders = spec.senders_of(&shard_members);
                let sid = ShardRef { subgroup: id, shard: ShardIndex(s as u16) };
                if senders.is_empty() {
                    return Err(format!("{sid} ({:?}) has no member that may send", spec.name));
                }
                if spec.disjoint {
                    used.extend(shard_members.iter().copied());
                }
                out.push(ShardLayout {
                    id: sid,
                    senders,
                    members: shard_members,
                    mode: spec.shard_modes.get(s).copied().unwrap_or(spec.mode),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<NodeId> {
        v.iter().map(|&n| NodeId(n)).collect()
    }

    /// The members of each shard, as plain numbers, subgroup by subgroup.
    fn members_of(layout: &[ShardLayout]) -> Vec<Vec<u32>> {
        layout.iter().map(|s| s.members.iter().map(|n| n.0).collect()).collect()
    }

    fn layout(subgroups: Vec<SubgroupSpec>) -> GroupLayout {
        GroupLayout::new(subgroups).unwrap()
    }

    struct Case {
        name: &'static str,
        subgroups: Vec<SubgroupSpec>,
        members: &'static [u32],
        /// The previous layout's shards (subgroup 0), as member lists.
        previous: &'static [&'static [u32]],
        /// Expected members of every shard, or `None` for an inadequate view.
        expect: Option<&'static [&'static [u32]]>,
    }

    fn previous(p: &[&[u32]]) -> Vec<ShardLayout> {
        p.iter()
            .enumerate()
            .map(|(i, m)| ShardLayout {
                id: ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(i as u16) },
                members: ids(m),
                senders: ids(m),
                mode: DeliveryMode::Ordered,
            })
            .collect()
    }

    #[test]
    fn policies_against_synthetic_views() {
        let flex = |shards, min, max| SubgroupSpec::new("kv", Policy::Flexible { shards, min, max });
        let cases = vec![
            Case {
                name: "all members",
                subgroups: vec![SubgroupSpec::new("a", Policy::AllMembers { min: 2 })],
                members: &[4, 1, 7],
                previous: &[],
                expect: Some(&[&[4, 1, 7]]),
            },
            Case {
                name: "all members, too few",
                subgroups: vec![SubgroupSpec::new("a", Policy::AllMembers { min: 2 })],
                members: &[4],
                previous: &[],
                expect: None,
            },
            Case {
                name: "fixed even shards in rank order, spares left out",
                subgroups: vec![SubgroupSpec::new("f", Policy::Fixed { shards: 2, per_shard: 2 })],
                members: &[0, 1, 2, 3, 4],
                previous: &[],
                expect: Some(&[&[0, 1], &[2, 3]]),
            },
            Case {
                name: "fixed shards, one member short",
                subgroups: vec![SubgroupSpec::new("f", Policy::Fixed { shards: 2, per_shard: 2 })],
                members: &[0, 1, 2],
                previous: &[],
                expect: None,
            },
            Case {
                name: "flexible from nothing: minimum first, spares round robin",
                subgroups: vec![flex(2, 1, 3)],
                members: &[0, 1, 2, 3, 4],
                previous: &[],
                expect: Some(&[&[0, 2, 4], &[1, 3]]),
            },
            Case {
                name: "flexible: survivors keep their shard after a failure",
                subgroups: vec![flex(2, 2, 3)],
                members: &[0, 1, 3, 4, 5],
                previous: &[&[0, 2, 4], &[1, 3, 5]],
                expect: Some(&[&[0, 4], &[1, 3, 5]]),
            },
            Case {
                name: "flexible: a shard below its minimum is refilled by a joiner",
                subgroups: vec![flex(2, 2, 3)],
                members: &[0, 1, 3, 9],
                previous: &[&[0, 2], &[1, 3]],
                expect: Some(&[&[0, 9], &[1, 3]]),
            },
            Case {
                name: "flexible: survivors above max stay up to max",
                subgroups: vec![flex(2, 1, 2)],
                members: &[0, 1, 2, 3],
                previous: &[&[0, 1, 2], &[]],
                expect: Some(&[&[0, 1], &[2, 3]]),
            },
            Case {
                name: "flexible: too few for the minimum",
                subgroups: vec![flex(3, 2, 3)],
                members: &[0, 1, 2, 3, 4],
                previous: &[],
                expect: None,
            },
            Case {
                name: "reserved nodes go to their shard first",
                subgroups: vec![flex(2, 1, 2).reserved(vec![vec![], vec![NodeId(0)]])],
                members: &[0, 1, 2],
                previous: &[],
                expect: Some(&[&[1, 2], &[0]]),
            },
            Case {
                name: "overlapping subgroups share members",
                subgroups: vec![
                    SubgroupSpec::new("a", Policy::AllMembers { min: 1 }),
                    SubgroupSpec::new("b", Policy::Fixed { shards: 1, per_shard: 2 }),
                ],
                members: &[0, 1, 2],
                previous: &[],
                expect: Some(&[&[0, 1, 2], &[0, 1]]),
            },
            Case {
                name: "disjoint subgroups do not",
                subgroups: vec![
                    SubgroupSpec::new("a", Policy::Fixed { shards: 1, per_shard: 2 }).disjoint(),
                    SubgroupSpec::new("b", Policy::AllMembers { min: 1 }).disjoint(),
                ],
                members: &[0, 1, 2, 3],
                previous: &[],
                expect: Some(&[&[0, 1], &[2, 3]]),
            },
            Case {
                name: "a disjoint subgroup left without members makes the view inadequate",
                subgroups: vec![
                    SubgroupSpec::new("a", Policy::AllMembers { min: 1 }).disjoint(),
                    SubgroupSpec::new("b", Policy::AllMembers { min: 1 }).disjoint(),
                ],
                members: &[0, 1],
                previous: &[],
                expect: None,
            },
        ];
        for c in cases {
            let l = layout(c.subgroups);
            let got = l.layout_next(&ids(c.members), &previous(c.previous));
            match (c.expect, got) {
                (Some(want), Ok(got)) => {
                    let want: Vec<Vec<u32>> = want.iter().map(|s| s.to_vec()).collect();
                    assert_eq!(members_of(&got), want, "{}", c.name);
                }
                (None, Err(_)) => {}
                (want, got) => panic!("{}: expected {want:?}, got {got:?}", c.name),
            }
        }
    }

    #[test]
    fn senders_modes_and_ids() {
        let l = layout(vec![
            SubgroupSpec::new("a", Policy::Fixed { shards: 2, per_shard: 2 })
                .senders(Senders::First(1))
                .shard_modes(vec![DeliveryMode::Unordered]),
            SubgroupSpec::new("b", Policy::AllMembers { min: 1 }).senders(Senders::Only(ids(&[3, 9]))),
        ]);
        let s = l.layout(&ids(&[5, 3, 8, 6])).unwrap();
        let refs: Vec<(u16, u16)> = s.iter().map(|s| (s.id.subgroup.0, s.id.shard.0)).collect();
        assert_eq!(refs, vec![(0, 0), (0, 1), (1, 0)]);
        assert_eq!(s[0].senders, ids(&[5]));
        assert_eq!(s[1].senders, ids(&[8]));
        assert_eq!(s[2].senders, ids(&[3]));
        assert_eq!(
            (s[0].mode, s[1].mode, s[2].mode),
            (DeliveryMode::Unordered, DeliveryMode::Ordered, DeliveryMode::Ordered)
        );
        // Without node 3 nobody may send in subgroup b: inadequate.
        assert!(l.layout(&ids(&[5, 8, 6, 7])).unwrap_err().contains("may send"));
    }

    #[test]
    fn the_same_inputs_give_the_same_layout_and_views_validate() {
        let l = layout(vec![SubgroupSpec::new("kv", Policy::Flexible { shards: 3, min: 1, max: 4 })]);
        let mut prev = Vec::new();
        let mut members: Vec<u32> = (0..7).collect();
        for step in 0..20u32 {
            // Churn: the member of rank step % len leaves, a new id joins.
            let gone = members.remove((step as usize * 3) % members.len());
            members.push(100 + step);
            let now = l.layout_next(&ids(&members), &prev).unwrap();
            assert_eq!(now, l.layout_next(&ids(&members), &prev).unwrap(), "not deterministic");
            let view = super::super::layout::View {
                id: super::super::ids::ViewId(step),
                members: ids(&members),
                shards: now.clone(),
            };
            view.validate(&super::super::limits::Limits::default()).unwrap_or_else(|e| panic!("step {step}: {e}"));
            // Survivors kept their shard.
            for old in &prev {
                let new = now.iter().find(|s| s.id == old.id).unwrap();
                for m in &old.members {
                    if m.0 != gone {
                        assert!(new.members.contains(m), "step {step}: {m} left its shard {}", old.id);
                    }
                }
            }
            prev = now;
        }
    }

    #[test]
    fn specs_that_can_never_work_are_refused() {
        for spec in [
            SubgroupSpec::new("x", Policy::Fixed { shards: 0, per_shard: 1 }),
            SubgroupSpec::new("x", Policy::Flexible { shards: 1, min: 3, max: 2 }),
            SubgroupSpec::new("x", Policy::AllMembers { min: 1 }).senders(Senders::First(0)),
            SubgroupSpec::new("x", Policy::AllMembers { min: 1 }).reserved(vec![vec![], vec![NodeId(1)]]),
            SubgroupSpec::new("x", Policy::Flexible { shards: 2, min: 1, max: 1 })
                .reserved(vec![vec![NodeId(1)], vec![NodeId(1)]]),
        ] {
            assert!(GroupLayout::new(vec![spec.clone()]).is_err(), "{spec:?}");
        }
        assert!(GroupLayout::new(Vec::new()).is_err());
    }
}
