//! Total restart (PROTOCOLS §4.1), the restart leader's decision: when enough members of the
//! last view are back, and the first view of the restarted group with the state each shard
//! starts from. Pure: the driver collects the offers and sends the result.
//!
//! Every member logs what it delivers, in delivery order, so the logs of one shard's members
//! are prefixes of one sequence: the longest is the shard's state and nothing in it was left
//! undelivered by the protocol (a version is logged only once delivered, and delivered only
//! once stable at every member of its view). The restart view starts each shard from its
//! longest log; members with a shorter one (or none) receive that state, as joiners do.

use std::collections::{BTreeMap, BTreeSet};

use super::ids::{NodeId, ShardRef, Version, ViewId};
use super::layout::View;
use super::membership::{LayoutFn, StateTransfer};

/// What a restarting member brings: the last view it saved and, for each shard it has a log
/// of, the last version in it.
///
/// A member saves a view only once the state of every shard it received for it is durable, so
/// a member whose saved view is the last one holds, for each of its shards there, everything
/// durable at every member of that shard, unless its log was damaged. It saves adequate views
/// only (an inadequate one has no shards and delivers nothing): the last view saved is the
/// last that had shards, and the views after it are known from the acknowledged ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The last view this member saved.
    pub saved: View,
    /// The last version of each shard's log here.
    pub logs: BTreeMap<ShardRef, Version>,
    /// Shards whose log had a corrupt record (recovery cut it there): it may lack versions it
    /// had made durable, so it stands for its shard in the quorum only beside another whole
    /// log of it (it still counts among the logs to pick the longest from).
    pub damaged: BTreeSet<ShardRef>,
    /// Views after the saved one that this member proposed or acknowledged (id and members),
    /// saved before its acknowledgement left: any of them may have been committed and installed
    /// by members that are not back.
    pub proposed: Vec<(ViewId, Vec<NodeId>)>,
    /// The newest view a log file of this member is named after (its replica started in it),
    /// so that the restart view's logs never take an existing file's name.
    pub newest_file: ViewId,
}

impl Offer {
    /// The offer of a member that saved no view (it joined, and stopped before the state it
    /// received was durable): no log, only the views it acknowledged.
    pub fn without_saved_view(proposed: Vec<(ViewId, Vec<NodeId>)>) -> Self {
        Self {
            saved: View { id: ViewId(0), members: Vec::new(), shards: Vec::new() },
            logs: BTreeMap::new(),
            damaged: BTreeSet::new(),
            proposed,
            newest_file: ViewId(0),
        }
    }

    /// Whether the member saved a view (an offer without one holds no log).
    pub fn saved_a_view(&self) -> bool {
        !self.saved.members.is_empty()
    }
}

/// Why the restart leader waits for more members.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Waiting {
    /// Fewer than a majority of the last view's members are back.
    #[error("{have} of the {of} members of view {} are back; a majority is needed", view.0)]
    Majority {
        /// The last view.
        view: ViewId,
        /// Its members that are back.
        have: usize,
        /// Its members.
        of: usize,
    },
    /// No member of a shard of the last view is back with a whole, undamaged log of it (saved
    /// in the last view), nor two with whole but damaged ones: its state may be on no other
    /// disk.
    #[error("no member of {0} in the last view is back with a whole log of it")]
    Shard(ShardRef),
    /// A member back acknowledged view `view`, after the last one saved, and it may have been
    /// committed (those back that acknowledged it, with those of its predecessor not back, can
    /// make a majority of its predecessor): it may have been installed, and its members may
    /// hold versions durable in it. All of them must be back.
    #[error(
        "view {} may have been installed ({acknowledged:?} acknowledged it, and {unknown:?} of the view before it are not \
         back to say): its members {missing:?} must be back too",
        view.0
    )]
    Proposed {
        /// The view acknowledged.
        view: ViewId,
        /// Its members not back.
        missing: Vec<NodeId>,
        /// The members back that acknowledged it.
        acknowledged: Vec<NodeId>,
        /// Members of the view before it that are not back (each may have acknowledged it).
        unknown: Vec<NodeId>,
    },
    /// A view that may have been installed (see [`Waiting::Proposed`]) has a shard with no
    /// member back holding an undamaged log of it (nor two damaged ones).
    #[error("view {} may have been installed, and none of its members back holds a whole log of {shard}", view.0)]
    ProposedShard {
        /// The view.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
    },
    /// The members back cannot be laid out.
    #[error("the members back cannot be laid out: {0}")]
    Inadequate(String),
}

/// The restart view and the state transfers that start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The first view of the restarted group: the members back, the leader first.
    pub view: View,
    /// The last view before the restart.
    pub last: View,
    /// Per shard of the new view whose longest log is not at every one of its members: the
    /// members with the longest log send it to the others.
    pub transfers: Vec<StateTransfer>,
}

/// The restart view once `offers` (the leader's own included) meet the quorum: a majority of
/// the last view's members; for each of its shards, one of its members whose log of it is
/// whole (it saved the last view, or the one before while already in the shard) and undamaged,
/// or two whose logs are whole but damaged; and every member of any later view a member back
/// acknowledged (PROTOCOLS §4.1).
///
/// The new view's id follows every view saved or seen in a log, so its versions follow every
/// logged one. Its members are those back: `leader` first, then the others in their rank
/// order in the last view, then any that were not in it, by id. Its shards come from `layout`
/// with the last view's shards as the previous layout (members keep their shards where the
/// policy allows).
///
/// # Errors
///
/// [`Waiting`]: why more members are needed.
///
/// # Panics
///
/// If `offers` lacks the leader's own (a programmer error).
pub fn plan(leader: NodeId, offers: &BTreeMap<NodeId, Offer>, layout: &dyn LayoutFn) -> Result<Plan, Waiting> {
    assert!(offers.contains_key(&leader), "the leader's own offer is missing");
    // (A member back with nothing to recover offers an empty view.)
    let Some(last) = offers.values().filter(|o| o.saved_a_view()).map(|o| &o.saved).max_by_key(|v| v.id) else {
        return Err(Waiting::Majority { view: ViewId(0), have: 0, of: 0 });
    };
    let last = last.clone();
    let back: BTreeSet<NodeId> = offers.keys().copied().collect();
    let have = last.members.iter().filter(|m| back.contains(m)).count();
    if have * 2 <= last.members.len() {
        return Err(Waiting::Majority { view: last.id, have, of: last.members.len() });
    }
    // A member of a shard of the last view stands for it if its log of the shard holds every
    // version it reported durable there: it saved the last view (its states were durable), or
    // it saved the view just before, in which it was already in the shard (it needed no new
    // state); and recovery found no corrupt record in it.
    let whole = |m: &NodeId, s: ShardRef| {
        offers.get(m).is_some_and(|o| {
            let kept =
                o.saved.id.0 + 1 == last.id.0 && o.saved.shards.iter().any(|x| x.id == s && x.members.contains(m));
            o.saved.id == last.id || kept
        })
    };
    // A damaged log stands for its shard with another whole log beside it. Recovery calls
    // damaged every log with a record that fails its checksum, and a write torn by a power cut
    // looks the same as a flipped bit; a torn write holds nothing reported durable (it was not
    // synced), so losing a durable version needs corrupt synced records in two logs.
    let stands = |s: &crate::protocol::ShardLayout| {
        let logs: Vec<&NodeId> = s.members.iter().filter(|m| whole(m, s.id)).collect();
        logs.len() >= 2 || logs.iter().any(|m| offers.get(m).is_some_and(|o| !o.damaged.contains(&s.id)))
    };
    if let Some(s) = last.shards.iter().find(|s| !stands(s)) {
        return Err(Waiting::Shard(s.id));
    }
    // Views after the last one that a member back acknowledged: one may have been committed
    // (a majority of its predecessor acknowledged it, and every member saves what it
    // acknowledges first) and installed by members not back, which may then have made versions
    // durable that no member of the last view holds. Every member of such a view must be back,
    // with the logs of its shards.
    for (view, members, acknowledged, unknown) in maybe_committed(&last, offers, &back) {
        let missing: Vec<NodeId> = members.iter().copied().filter(|m| !back.contains(m)).collect();
        if !missing.is_empty() {
            return Err(Waiting::Proposed { view, missing, acknowledged, unknown });
        }
        let shards = layout.layout_next(&members, &last.shards).unwrap_or_default();
        for s in &shards {
            let logs: Vec<&Offer> =
                s.members.iter().filter_map(|m| offers.get(m)).filter(|o| o.logs.contains_key(&s.id)).collect();
            let stands = logs.len() >= 2 || logs.iter().any(|o| !o.damaged.contains(&s.id));
            let had_history = last.shards.iter().any(|l| l.id == s.id);
            if had_history && !stands {
                return Err(Waiting::ProposedShard { view, shard: s.id });
            }
        }
    }
    // After every view saved, acknowledged, seen in a log or naming a log file.
    let newest = offers
        .values()
        .flat_map(|o| o.logs.values().map(|v| v.view()).chain(o.proposed.iter().map(|(id, _)| *id)))
        .chain(offers.values().map(|o| o.newest_file))
        .fold(last.id, ViewId::max);
    let id = ViewId(newest.0 + 1);
    let mut members = vec![leader];
    members.extend(last.members.iter().filter(|m| **m != leader && back.contains(m)));
    members.extend(back.iter().filter(|m| !members.contains(m)).copied().collect::<Vec<_>>());
    let shards = layout.layout_next(&members, &last.shards).map_err(Waiting::Inadequate)?;
    let mut transfers = Vec::new();
    for s in &shards {
        let holders: Vec<(NodeId, Version)> =
            offers.iter().filter_map(|(n, o)| o.logs.get(&s.id).map(|v| (*n, *v))).collect();
        let Some(best) = holders.iter().map(|(_, v)| *v).max() else { continue };
        let longest: Vec<NodeId> = holders.iter().filter(|(_, v)| *v == best).map(|(n, _)| *n).collect();
        let in_shard: Vec<NodeId> = longest.iter().copied().filter(|n| s.members.contains(n)).collect();
        let from = if in_shard.is_empty() { longest } else { in_shard };
        let to: Vec<NodeId> = s.members.iter().copied().filter(|m| !from.contains(m)).collect();
        if !to.is_empty() {
            transfers.push(StateTransfer { shard: s.id, from, to });
        }
    }
    Ok(Plan { view: View { id, members, shards }, last, transfers })
}

/// The views after `last` that members back acknowledged and that may have been committed:
/// a proposal of view `k` with members `P` may have been, only if a majority of view `k - 1`
/// may have acknowledged it: those back that saved it, and every member of `k - 1` not back.
/// View `k - 1` is `last`, or itself such a proposal. Each with the members back that
/// acknowledged it and the members of its predecessor not back.
type MaybeCommitted = (ViewId, Vec<NodeId>, Vec<NodeId>, Vec<NodeId>);

fn maybe_committed(last: &View, offers: &BTreeMap<NodeId, Offer>, back: &BTreeSet<NodeId>) -> Vec<MaybeCommitted> {
    let mut proposals: Vec<(ViewId, Vec<NodeId>)> =
        offers.values().flat_map(|o| o.proposed.iter().cloned()).filter(|(id, _)| *id > last.id).collect();
    proposals.sort();
    proposals.dedup();
    // Predecessors that may have been installed, by id: `last`, then proposals found possible.
    let mut possible: Vec<(ViewId, Vec<NodeId>)> = vec![(last.id, last.members.clone())];
    let mut out = Vec::new();
    for (id, members) in proposals {
        let acknowledged: Vec<NodeId> =
            offers.iter().filter(|(_, o)| o.proposed.contains(&(id, members.clone()))).map(|(n, _)| *n).collect();
        let mut first_unknown = None;
        let committable = possible.iter().filter(|(p, _)| p.0 + 1 == id.0).any(|(_, before)| {
            let acks = before.iter().filter(|m| acknowledged.contains(m)).count();
            let unknown: Vec<NodeId> = before.iter().copied().filter(|m| !back.contains(m)).collect();
            let can = (acks + unknown.len()) * 2 > before.len();
            if can && first_unknown.is_none() {
                first_unknown = Some(unknown);
            }
            can
        });
        if committable {
            possible.push((id, members.clone()));
            out.push((id, members, acknowledged, first_unknown.unwrap_or_default()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DeliveryMode, FixedShards, OneShard, ShardIndex, ShardLayout, SubgroupId};

    fn shard(i: u16) -> ShardRef {
        ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(i) }
    }

    fn view(id: u32, shards: &[&[u32]]) -> View {
        let mut members: Vec<NodeId> = shards.iter().flat_map(|s| s.iter().map(|n| NodeId(*n))).collect();
        members.dedup();
        View {
            id: ViewId(id),
            members,
            shards: shards
                .iter()
                .enumerate()
                .map(|(i, s)| ShardLayout {
                    id: shard(i as u16),
                    members: s.iter().map(|n| NodeId(*n)).collect(),
                    senders: s.iter().map(|n| NodeId(*n)).collect(),
                    mode: DeliveryMode::Ordered,
                })
                .collect(),
        }
    }

    fn offer(saved: &View, logs: &[(u16, u32, u32)]) -> Offer {
        Offer {
            saved: saved.clone(),
            logs: logs.iter().map(|&(s, v, seq)| (shard(s), Version::new(ViewId(v), seq.into()))).collect(),
            damaged: BTreeSet::new(),
            proposed: Vec::new(),
            newest_file: ViewId(0),
        }
    }

    #[test]
    fn a_view_acknowledged_after_the_last_needs_all_its_members_and_ids_follow_files() {
        // View 1 {0, 1, 2} (3 removed) was acknowledged by 0 and 2, who crashed before
        // installing it; 1 may have acknowledged it too, and installed it alone.
        let v0 = view(0, &[&[0, 2], &[1, 3]]);
        let proposal = (ViewId(1), vec![NodeId(0), NodeId(1), NodeId(2)]);
        let mut a = offer(&v0, &[(0, 0, 9)]);
        a.proposed = vec![proposal.clone()];
        let mut c = offer(&v0, &[(0, 0, 9)]);
        c.proposed = vec![proposal];
        let mut offers = BTreeMap::from([(NodeId(0), a), (NodeId(2), c), (NodeId(3), offer(&v0, &[(1, 0, 5)]))]);
        let layout = FixedShards(v0.shards.clone());
        assert_eq!(
            plan(NodeId(0), &offers, &layout),
            Err(Waiting::Proposed {
                view: ViewId(1),
                missing: vec![NodeId(1)],
                acknowledged: vec![NodeId(0), NodeId(2)],
                unknown: vec![NodeId(1)]
            })
        );
        let mut b = offer(&v0, &[(1, 0, 7)]);
        b.newest_file = ViewId(4); // a log file of an earlier, failed restart
        offers.insert(NodeId(1), b);
        let p = plan(NodeId(0), &offers, &layout).unwrap();
        assert_eq!(p.view.id, ViewId(5), "the restart view follows the acknowledged view and every file");
    }

    /// Member-core finding 5: a proposal that a majority of the view before it cannot have
    /// acknowledged (those back that did not acknowledge it are too many) was never committed,
    /// and does not hold the restart; nor does a later proposal built on it.
    #[test]
    fn a_proposal_that_cannot_have_been_committed_does_not_hold_the_restart() {
        // View 3 {0, 1, 2, 3, 4}; 0 acknowledged view 4 {0, 5} and view 5 {0, 5, 6}; 1, 2 and 3
        // are back and did not: at most 0 and 4 did, two of five.
        let v3 = view(3, &[&[0, 1, 2, 3, 4]]);
        let mut a = offer(&v3, &[(0, 3, 9)]);
        a.proposed = vec![(ViewId(4), vec![NodeId(0), NodeId(5)]), (ViewId(5), vec![NodeId(0), NodeId(5), NodeId(6)])];
        let mut offers = BTreeMap::from([(NodeId(0), a)]);
        for n in [1, 2, 3] {
            offers.insert(NodeId(n), offer(&v3, &[(0, 3, 9)]));
        }
        let p = plan(NodeId(0), &offers, &one_shard()).expect("no wait for 5 and 6");
        assert_eq!(p.view.members, vec![NodeId(0), NodeId(1), NodeId(2), NodeId(3)]);
        // With 1 and 2 not back, view 4 could have been committed (0, 1, 2 and 4 make three of
        // five): its members must be back, and the error says why.
        offers.remove(&NodeId(1));
        offers.remove(&NodeId(2));
        offers.insert(NodeId(4), offer(&v3, &[(0, 3, 9)]));
        assert_eq!(
            plan(NodeId(0), &offers, &one_shard()),
            Err(Waiting::Proposed {
                view: ViewId(4),
                missing: vec![NodeId(5)],
                acknowledged: vec![NodeId(0)],
                unknown: vec![NodeId(1), NodeId(2)]
            })
        );
    }

    /// A view that may have been installed after the last one needs a whole log of each of its
    /// shards among its members back: one damaged log alone does not do.
    #[test]
    fn a_later_view_needs_an_undamaged_log_of_each_shard() {
        let v1 = view(1, &[&[0, 1, 2]]);
        let proposal = (ViewId(2), vec![NodeId(0), NodeId(1)]);
        let mut offers = BTreeMap::new();
        for n in [0, 1] {
            let mut o = offer(&v1, if n == 0 { &[(0, 1, 9)][..] } else { &[][..] });
            o.proposed = vec![proposal.clone()];
            offers.insert(NodeId(n), o);
        }
        offers.get_mut(&NodeId(0)).unwrap().damaged.insert(shard(0));
        assert_eq!(
            plan(NodeId(0), &offers, &one_shard()),
            Err(Waiting::ProposedShard { view: ViewId(2), shard: shard(0) })
        );
        // A second whole log of the shard (node 1's, undamaged) stands for it.
        offers.get_mut(&NodeId(1)).unwrap().logs.insert(shard(0), Version::new(ViewId(1), 4));
        assert!(plan(NodeId(0), &offers, &one_shard()).is_ok());
    }

    #[test]
    fn a_damaged_log_or_an_older_saved_view_does_not_stand_for_its_shard() {
        let (old, last) = (view(3, &[&[0, 1], &[2]]), view(4, &[&[0, 1], &[2, 3]]));
        let layout = FixedShards(last.shards.clone());
        // Node 3 joined shard 1 in view 4 and saved only view 3 (its state was not durable
        // yet); node 2's log of shard 1 was damaged. Nobody stands for shard 1.
        let mut damaged = offer(&last, &[(1, 4, 2)]);
        damaged.damaged.insert(shard(1));
        let mut offers = BTreeMap::from([
            (NodeId(0), offer(&last, &[(0, 4, 5)])),
            (NodeId(2), damaged),
            (NodeId(3), offer(&old, &[(1, 2, 9)])),
        ]);
        assert_eq!(plan(NodeId(0), &offers, &layout), Err(Waiting::Shard(shard(1))));
        offers.get_mut(&NodeId(2)).unwrap().damaged.clear();
        let p = plan(NodeId(0), &offers, &layout).unwrap();
        // Node 2's log is the longest of shard 1.
        assert_eq!(p.transfers, vec![StateTransfer { shard: shard(1), from: vec![NodeId(2)], to: vec![NodeId(3)] }]);
    }

    #[test]
    fn a_view_acknowledged_by_a_member_that_saved_none_needs_its_members() {
        // View 1 {0, 1, 2}; 2 joined in it and saved no view. 1 failed; view 2 {0, 2} was
        // acknowledged by 0 and 2 and perhaps installed by both (0 never saved it). 0 is not
        // back: 1 and 2 make a majority of view 1, but 0 may hold versions durable in view 2.
        let v1 = view(1, &[&[0, 1, 2]]);
        let joiner = Offer::without_saved_view(vec![(ViewId(2), vec![NodeId(0), NodeId(2)])]);
        let offers = BTreeMap::from([(NodeId(1), offer(&v1, &[(0, 1, 5)])), (NodeId(2), joiner)]);
        assert_eq!(
            plan(NodeId(1), &offers, &one_shard()),
            Err(Waiting::Proposed {
                view: ViewId(2),
                missing: vec![NodeId(0)],
                acknowledged: vec![NodeId(2)],
                unknown: vec![NodeId(0)]
            })
        );
    }

    #[test]
    fn two_damaged_whole_logs_stand_for_their_shard_one_does_not() {
        // A power cut tore the last record of every log of shard 0 (each looks corrupt).
        let v = view(7, &[&[0, 1, 2]]);
        let damaged = |seq| {
            let mut o = offer(&v, &[(0, 7, seq)]);
            o.damaged.insert(shard(0));
            o
        };
        let mut offers = BTreeMap::from([(NodeId(0), damaged(4)), (NodeId(1), offer(&view(6, &[&[0, 2]]), &[]))]);
        // Node 1 was not in the shard in view 6: its log is not whole. One damaged log is not
        // enough.
        assert_eq!(plan(NodeId(0), &offers, &one_shard()), Err(Waiting::Shard(shard(0))));
        offers.insert(NodeId(2), damaged(6));
        let p = plan(NodeId(0), &offers, &one_shard()).unwrap();
        assert_eq!(
            p.transfers,
            vec![StateTransfer { shard: shard(0), from: vec![NodeId(2)], to: vec![NodeId(0), NodeId(1)] }],
            "the longest damaged log sends"
        );
    }

    fn one_shard() -> OneShard {
        OneShard { mode: DeliveryMode::Ordered, min_members: 1 }
    }

    #[test]
    fn waits_for_a_majority_of_the_last_view() {
        let v = view(4, &[&[0, 1, 2]]);
        let mut offers = BTreeMap::from([(NodeId(0), offer(&v, &[(0, 4, 9)]))]);
        assert_eq!(plan(NodeId(0), &offers, &one_shard()), Err(Waiting::Majority { view: ViewId(4), have: 1, of: 3 }));
        offers.insert(NodeId(2), offer(&v, &[(0, 4, 12)]));
        let p = plan(NodeId(0), &offers, &one_shard()).unwrap();
        assert_eq!(p.view.id, ViewId(5));
        assert_eq!(p.view.members, vec![NodeId(0), NodeId(2)]);
        // Node 2's log is longer: it sends, node 0 receives.
        assert_eq!(p.transfers, vec![StateTransfer { shard: shard(0), from: vec![NodeId(2)], to: vec![NodeId(0)] }]);
    }

    #[test]
    fn an_older_saved_view_does_not_hide_the_newest() {
        // Node 1 crashed before saving view 6; node 0 saved it. The quorum is judged on view 6.
        let (old, new) = (view(5, &[&[0, 1, 2]]), view(6, &[&[0, 1, 2, 3]]));
        let offers = BTreeMap::from([(NodeId(0), offer(&new, &[(0, 6, 1)])), (NodeId(1), offer(&old, &[(0, 5, 3)]))]);
        assert_eq!(plan(NodeId(0), &offers, &one_shard()), Err(Waiting::Majority { view: ViewId(6), have: 2, of: 4 }));
    }

    #[test]
    fn every_shard_needs_a_member_back_and_keeps_its_members() {
        let v = view(2, &[&[0, 1], &[2, 3], &[4, 5]]);
        let layout = FixedShards(v.shards.clone());
        let mut offers = BTreeMap::new();
        for n in [0, 1, 2, 3] {
            offers.insert(NodeId(n), offer(&v, &[((n / 2) as u16, 2, 7 + n)]));
        }
        assert_eq!(plan(NodeId(0), &offers, &layout), Err(Waiting::Shard(shard(2))));
        offers.insert(NodeId(5), offer(&v, &[(2, 2, 1)]));
        let p = plan(NodeId(0), &offers, &layout).unwrap();
        assert_eq!(p.view.shards[2].members, vec![NodeId(5)]);
        offers.insert(NodeId(4), offer(&v, &[(2, 1, 9)]));
        let p = plan(NodeId(0), &offers, &layout).unwrap();
        for (i, s) in p.view.shards.iter().enumerate() {
            assert_eq!(s.members, v.shards[i].members, "shard {i} kept its members");
        }
        // In each shard the member with the higher version sends to the other.
        let from: Vec<_> = p.transfers.iter().map(|t| (t.shard, t.from.clone(), t.to.clone())).collect();
        assert_eq!(
            from,
            vec![
                (shard(0), vec![NodeId(1)], vec![NodeId(0)]),
                (shard(1), vec![NodeId(3)], vec![NodeId(2)]),
                (shard(2), vec![NodeId(5)], vec![NodeId(4)]),
            ]
        );
    }

    #[test]
    fn a_longest_log_outside_the_shard_still_sends() {
        // Node 2 held shard 0 and is back; the layout now leaves it out of the shard.
        let v = view(1, &[&[0, 1, 2]]);
        let layout = FixedShards(view(0, &[&[0, 1]]).shards);
        let offers = BTreeMap::from([(NodeId(0), offer(&v, &[(0, 1, 3)])), (NodeId(2), offer(&v, &[(0, 1, 5)]))]);
        let p = plan(NodeId(0), &offers, &layout).unwrap();
        assert_eq!(p.transfers, vec![StateTransfer { shard: shard(0), from: vec![NodeId(2)], to: vec![NodeId(0)] }]);
    }

    #[test]
    fn the_new_view_follows_every_logged_version_and_equal_logs_send_nothing() {
        let v = view(3, &[&[0, 1, 2]]);
        // A log reaching view 8 (views between were installed but not saved everywhere).
        let offers = BTreeMap::from([
            (NodeId(1), offer(&v, &[(0, 8, 2)])),
            (NodeId(2), offer(&v, &[(0, 8, 2)])),
            (NodeId(0), offer(&v, &[(0, 8, 2)])),
        ]);
        let p = plan(NodeId(1), &offers, &one_shard()).unwrap();
        assert_eq!(p.view.id, ViewId(9));
        assert_eq!(p.view.members, vec![NodeId(1), NodeId(0), NodeId(2)], "the leader first, then rank order");
        assert!(p.transfers.is_empty(), "{:?}", p.transfers);
    }

    #[test]
    fn a_shard_nobody_logged_starts_fresh_and_a_member_without_a_log_receives() {
        let v = view(1, &[&[0, 1, 2]]);
        let offers = BTreeMap::from([(NodeId(0), offer(&v, &[])), (NodeId(1), offer(&v, &[]))]);
        assert!(plan(NodeId(0), &offers, &one_shard()).unwrap().transfers.is_empty());
        let offers = BTreeMap::from([(NodeId(0), offer(&v, &[])), (NodeId(1), offer(&v, &[(0, 1, 4)]))]);
        let p = plan(NodeId(0), &offers, &one_shard()).unwrap();
        assert_eq!(p.transfers, vec![StateTransfer { shard: shard(0), from: vec![NodeId(1)], to: vec![NodeId(0)] }]);
    }
}
