//! A view's membership and shard layout, as the protocol core needs it.
//!
//! For now views are static (given at start-up); membership changes compute new views with the
//! same types (PROTOCOLS §3, §5).

use super::ids::{NodeId, ShardRef, ViewId};
use super::limits::Limits;

/// How a shard delivers (PROTOCOLS §2.2, §2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Total order; delivery once stable at every member; versions assigned.
    Ordered,
    /// FIFO per sender; delivery on receipt; no versions.
    Unordered,
}

/// One shard of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Which shard.
    pub id: ShardRef,
    /// Its members, in rank order (each is a member of the view).
    pub members: Vec<NodeId>,
    /// The members that may send (a subset of `members`, in rank order).
    pub senders: Vec<NodeId>,
    /// Ordered or unordered.
    pub mode: DeliveryMode,
}

/// A view: its id, its members (rank = index, oldest first) and its shard layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The epoch.
    pub id: ViewId,
    /// Members in rank order.
    pub members: Vec<NodeId>,
    /// Shards, each listed once, in the order every member uses for its SST columns.
    pub shards: Vec<ShardLayout>,
}

/// A layout that breaks a rule; the message says which.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// More members than `members_max`, or none.
    #[error("the view has {0} members; it must have between 1 and members_max")]
    MemberCount(usize),
    /// A node listed twice.
    #[error("{0} is listed twice among the view's members")]
    DuplicateMember(NodeId),
    /// More shards than `shards_max`.
    #[error("the layout has {0} shards, above shards_max")]
    ShardCount(usize),
    /// A shard listed twice.
    #[error("{0} is listed twice in the layout")]
    DuplicateShard(ShardRef),
    /// A shard member or sender that is not a member of the view (or of the shard).
    #[error("{shard}: {node} is not a member of the {of}")]
    NotAMember {
        /// The shard.
        shard: ShardRef,
        /// The node.
        node: NodeId,
        /// "view" or "shard".
        of: &'static str,
    },
    /// A shard with no member or no sender, or members out of rank order or repeated.
    #[error("{shard}: {reason}")]
    Shard {
        /// The shard.
        shard: ShardRef,
        /// What is wrong.
        reason: &'static str,
    },
}

impl View {
    /// The rank of `node`, if it is a member.
    pub fn rank_of(&self, node: NodeId) -> Option<usize> {
        self.members.iter().position(|&m| m == node)
    }

    /// Checks the view against the limits and the layout rules.
    ///
    /// # Errors
    ///
    /// The first rule broken.
    pub fn validate(&self, limits: &Limits) -> Result<(), LayoutError> {
        if self.members.is_empty() || self.members.len() > limits.members_max as usize {
            return Err(LayoutError::MemberCount(self.members.len()));
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].contains(m) {
                return Err(LayoutError::DuplicateMember(*m));
            }
        }
        if self.shards.len() > limits.shards_max as usize {
            return Err(LayoutError::ShardCount(self.shards.len()));
        }
        for (i, s) in self.shards.iter().enumerate() {
            if self.shards[..i].iter().any(|o| o.id == s.id) {
                return Err(LayoutError::DuplicateShard(s.id));
            }
            let bad = |reason| Err(LayoutError::Shard { shard: s.id, reason });
            if s.members.is_empty() {
                return bad("no members");
            }
            if s.senders.is_empty() {
                return bad("no senders");
            }
            let mut last_rank = None;
            for &m in &s.members {
                let Some(r) = self.rank_of(m) else {
                    return Err(LayoutError::NotAMember { shard: s.id, node: m, of: "view" });
                };
                if last_rank.is_some_and(|l| r <= l) {
                    return bad("members repeated or not in rank order");
                }
                last_rank = Some(r);
            }
            let mut last = None;
            for &n in &s.senders {
                let Some(i) = s.members.iter().position(|&m| m == n) else {
                    return Err(LayoutError::NotAMember { shard: s.id, node: n, of: "shard" });
                };
                if last.is_some_and(|l| i <= l) {
                    return bad("senders repeated or not in rank order");
                }
                last = Some(i);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::ids::{ShardIndex, SubgroupId};

    pub(crate) fn shard0() -> ShardRef {
        ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) }
    }

    pub(crate) fn one_shard_view(n: u32, senders: &[u32], mode: DeliveryMode) -> View {
        let members: Vec<NodeId> = (0..n).map(NodeId).collect();
        View {
            id: ViewId(0),
            shards: vec![ShardLayout {
                id: shard0(),
                members: members.clone(),
                senders: senders.iter().map(|&s| NodeId(s)).collect(),
                mode,
            }],
            members,
        }
    }

    #[test]
    fn layout_rules_table() {
        let limits = Limits::default();
        let ok = one_shard_view(3, &[0, 2], DeliveryMode::Ordered);
        ok.validate(&limits).unwrap();
        type Case = (&'static str, View, fn(&LayoutError) -> bool);
        let cases: Vec<Case> = vec![
            ("empty view", View { members: vec![], ..ok.clone() }, |e| matches!(e, LayoutError::MemberCount(0))),
            ("duplicate member", View { members: vec![NodeId(0), NodeId(0), NodeId(2)], ..ok.clone() }, |e| {
                matches!(e, LayoutError::DuplicateMember(NodeId(0)))
            }),
            ("sender outside shard", one_shard_view(3, &[5], DeliveryMode::Ordered), |e| {
                matches!(e, LayoutError::NotAMember { of: "shard", .. })
            }),
            ("no senders", one_shard_view(3, &[], DeliveryMode::Ordered), |e| {
                matches!(e, LayoutError::Shard { reason: "no senders", .. })
            }),
            ("senders out of order", one_shard_view(3, &[2, 0], DeliveryMode::Ordered), |e| {
                matches!(e, LayoutError::Shard { .. })
            }),
            (
                "shard member not in view",
                {
                    let mut v = ok.clone();
                    v.shards[0].members.push(NodeId(9));
                    v
                },
                |e| matches!(e, LayoutError::NotAMember { of: "view", .. }),
            ),
            (
                "duplicate shard",
                {
                    let mut v = ok.clone();
                    v.shards.push(v.shards[0].clone());
                    v
                },
                |e| matches!(e, LayoutError::DuplicateShard(_)),
            ),
        ];
        for (name, view, check) in cases {
            let e = view.validate(&limits).expect_err(name);
            assert!(check(&e), "{name}: unexpected {e:?}");
        }
    }
}
