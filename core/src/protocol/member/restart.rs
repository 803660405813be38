//! Restarting from saved logs (PROTOCOLS §4.1).
//!
//! A member that finds a saved view at start-up offers its logs ([`Offer`]). With a contact
//! it asks the contact as a joiner does ([`super::join`]): a running group takes the offer as a
//! join (its logs superseded by the state it receives), a restart leader counts it.
//!
//! Without a contact it first looks for a running group: it sends its offer, marked as from a
//! would-be leader, to every other member of its saved view. A running member answers as it
//! would a join (a welcome, a redirect to its leader, "admitting", or "still in the view"
//! while the group has not yet removed this member's earlier life): this member then joins
//! that group. A member that is restarting too answers "not running"; one that cannot be
//! reached counts as not running. Once every member asked has answered so (or a retry period
//! passed with no sign of a running group), it leads the restart: it collects offers until
//! [`crate::protocol::restart::plan`] has a quorum, welcomes the members of the restart view
//! and enters it. It keeps asking the saved view's members meanwhile: a running group found
//! late still wins. Two members leading at once settle it by id: the one with the larger id
//! follows the other.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::{Command, EnterError, Event, Member, Phase};
use crate::protocol::ids::{NodeId, Time, ViewId};
use crate::protocol::membership::{JoinRefusal, NextView};
use crate::protocol::restart::{self, Offer, Waiting};
use crate::protocol::sst::SstMemory;
use crate::protocol::wire::{Answer, Control, JOIN_VERSION};

/// A member restarting without a contact (see the module documentation).
#[derive(Debug)]
pub struct Restarting {
    /// Its own offer.
    offer: Offer,
    /// The offers collected, its own included.
    pub(super) offers: BTreeMap<NodeId, Offer>,
    /// Every address known: the saved view's members', and those of the offers.
    addresses: BTreeMap<NodeId, String>,
    /// Members of the saved view asked whether a group runs, not yet answered.
    asked: BTreeMap<NodeId, String>,
    /// A running group answered (admitting, or still holding this member's earlier life):
    /// never lead while it may welcome this member.
    running_seen: Option<Time>,
    /// Every member asked said it is not running (or a retry period passed): it leads.
    leading: bool,
    started: Time,
    deadline: Time,
    next_probe: Time,
    /// What the plan waits for, and when it was last said.
    waiting: Option<Waiting>,
    said_at: Time,
}

impl Restarting {
    /// When it must act if nothing arrives.
    pub fn next_timeout(&self) -> Time {
        self.next_probe.min(self.deadline)
    }
}

/// View ids must leave room for the restart view's versions (24 bits).
fn id_fits(v: ViewId) -> bool {
    v.0 < (1 << 24) - 2
}

impl<M: SstMemory> Member<M> {
    /// Restarts from this member's logs (PROTOCOLS §4.1): `offer` is its saved view and logs,
    /// `addresses` the saved view's members' addresses. With `contact`, it offers itself there;
    /// without, it looks for a running group among the saved view's members and, finding none,
    /// leads the restart. [`Event::Installed`] once in a view, or [`Event::EnterFailed`] (no
    /// quorum within the restart timeout, refused).
    ///
    /// # Panics
    ///
    /// If the member is not idle, or leads with an offer without a saved view (a programmer
    /// error: such a member has nothing to lead with).
    pub fn restart(&mut self, now: Time, offer: Offer, addresses: Vec<(NodeId, String)>, contact: Option<String>) {
        assert!(matches!(self.phase, Phase::Idle), "restart on a member that is not idle");
        self.now = self.now.max(now);
        let me = self.config.me;
        let timeout = self.config.restart_timeout_ns;
        if let Some(contact) = contact {
            let request = self.restart_request(&offer, false);
            self.ask(now, contact, request, timeout, None);
            return;
        }
        assert!(offer.saved_a_view(), "a restart leader needs a saved view");
        let mut known: BTreeMap<NodeId, String> = addresses.into_iter().collect();
        known.insert(me, self.config.address.clone());
        let asked: BTreeMap<NodeId, String> = offer
            .saved
            .members
            .iter()
            .filter(|&&m| m != me)
            .filter_map(|m| Some((*m, known.get(m)?.clone())))
            .collect();
        let r = Restarting {
            offers: BTreeMap::from([(me, offer.clone())]),
            offer,
            addresses: known,
            asked,
            running_seen: None,
            leading: false,
            started: now,
            deadline: now.plus_ns(timeout),
            next_probe: now.plus_ns(self.config.retry_ns),
            waiting: None,
            said_at: now,
        };
        let leads_at_once = r.asked.is_empty();
        self.phase = Phase::Restarting(Box::new(r));
        self.probe();
        if leads_at_once {
            self.lead(now);
        }
    }

    /// The encoded restart offer of this member.
    fn restart_request(&self, offer: &Offer, leading: bool) -> Rc<[u8]> {
        offer_message(&self.config, offer, leading)
    }
}

/// The encoded restart offer of the member `c` describes.
fn offer_message(c: &super::MemberConfig, offer: &Offer, leading: bool) -> Rc<[u8]> {
    {
        let (node, address, app) = (c.me, c.address.clone(), c.app);
        Control::Restart { version: JOIN_VERSION, node, address, app, offer: offer.clone(), leading }.encode().into()
    }
}

impl<M: SstMemory> Member<M> {
    /// Asks every member of the saved view whether a group runs (its offer, as a would-be
    /// leader).
    fn probe(&mut self) {
        let Phase::Restarting(r) = &self.phase else { return };
        let request = offer_message(&self.config, &r.offer, true);
        let me = self.config.me;
        let targets: Vec<String> =
            r.offer.saved.members.iter().filter(|&&m| m != me).filter_map(|m| r.addresses.get(m).cloned()).collect();
        for to in targets {
            self.commands.push_back(Command::SendControl { to, message: request.clone(), report: true });
        }
    }

    pub(super) fn restarting_tick(&mut self, now: Time) {
        let Phase::Restarting(r) = &mut self.phase else { return };
        if now >= r.deadline {
            let waiting = r.waiting.clone().unwrap_or(Waiting::Majority { view: r.offer.saved.id, have: 1, of: 0 });
            let waited_ms = (now.0 - r.started.0) / 1_000_000;
            return self.fail_entering(EnterError::NoQuorum { waited_ms, waiting });
        }
        if now >= r.next_probe {
            r.next_probe = now.plus_ns(self.config.retry_ns);
            // A running group that answered once but never welcomed this member may be gone.
            if r.running_seen.is_some_and(|t| now >= t.plus_ns(self.config.id_in_use_grace_ns())) {
                r.running_seen = None;
            }
            let lead = !r.leading && r.running_seen.is_none();
            self.probe();
            if lead {
                self.lead(now);
            }
        }
        self.say_waiting(now);
    }

    /// An answer to this member's probe.
    pub(super) fn restarting_answer(&mut self, now: Time, from: NodeId, answer: Answer) {
        let Phase::Restarting(r) = &mut self.phase else { return };
        match answer {
            // A running group took the offer as a join.
            Answer::Welcome(next) if next.view.rank_of(self.config.me).is_some() => self.enter(Rc::new(*next)),
            Answer::Welcome(_) => {}
            Answer::Pending | Answer::Refused(JoinRefusal::IdInUse(_)) => {
                r.running_seen = Some(now);
                r.asked.remove(&from);
            }
            Answer::Refused(JoinRefusal::NotLeader { leader, address }) => {
                // A running group, led by `leader`: offer the logs there, as a joiner.
                let request = offer_message(&self.config, &r.offer, false);
                let timeout = self.config.restart_timeout_ns;
                self.events.push_back(Event::Waiting(format!(
                    "{from} runs a group led by {leader}: asking it to let this member in"
                )));
                self.ask(now, address.clone(), request, timeout, Some((leader, address)));
            }
            Answer::Refused(JoinRefusal::NotRunning | JoinRefusal::NotRestarted { .. }) => {
                r.asked.remove(&from);
                if r.asked.is_empty() && r.running_seen.is_none() {
                    self.lead(now);
                }
            }
            Answer::Refused(refusal) => self.fail_entering(EnterError::Refused(refusal)),
            Answer::Version(theirs) => self.fail_entering(EnterError::Version { theirs, ours: JOIN_VERSION }),
        }
    }

    /// A probed member could not be reached: it runs nothing.
    pub(super) fn probe_unreachable(&mut self, to: &str) {
        let Phase::Restarting(r) = &mut self.phase else { return };
        r.asked.retain(|_, a| a != to);
        if r.asked.is_empty() && r.running_seen.is_none() && !r.leading {
            let now = self.now;
            self.lead(now);
        }
    }

    /// A join request or offer reached this restarting member.
    pub(super) fn offer_received(&mut self, now: Time, node: NodeId, address: String, restart: Option<(Offer, bool)>) {
        let me = self.config.me;
        let Phase::Restarting(r) = &mut self.phase else { return };
        if node == me {
            return;
        }
        let limits = &self.config.limits;
        match restart {
            Some((offer, leading)) => {
                let fits = id_fits(offer.saved.id)
                    && id_fits(offer.newest_file)
                    && offer.logs.values().all(|v| id_fits(v.view()))
                    && offer.proposed.iter().all(|(id, m)| id_fits(*id) && m.len() <= limits.members_max as usize);
                // A member that saved no view offers only the views it acknowledged.
                let valid = if offer.saved_a_view() {
                    offer.saved.validate(limits).is_ok()
                } else {
                    offer.logs.is_empty() && offer.damaged.is_empty()
                };
                if !valid || !fits {
                    self.events.push_back(Event::Waiting(format!(
                        "ignored a restart offer from {node} with a bad view or view ids out of range"
                    )));
                    return;
                }
                if leading && node < me {
                    // Two would-be leaders: the smaller id leads, this one offers itself there.
                    let request = offer_message(&self.config, &r.offer, false);
                    let timeout = self.config.restart_timeout_ns;
                    let leader = Some((node, address.clone()));
                    self.events.push_back(Event::Waiting(format!("{node} leads the restart too: following it")));
                    return self.ask(now, address, request, timeout, leader);
                }
                r.addresses.insert(node, address);
                r.offers.insert(node, offer);
            }
            None => {
                // A member with nothing to recover asks to join: it is back, holding no log (a
                // later view acknowledged by another may be waiting for it).
                r.addresses.insert(node, address);
                r.offers.entry(node).or_insert_with(|| Offer::without_saved_view(Vec::new()));
            }
        }
        if r.leading {
            self.try_plan(now);
        }
    }

    /// No running group answered: lead the restart.
    fn lead(&mut self, now: Time) {
        let Phase::Restarting(r) = &mut self.phase else { return };
        if !r.leading {
            r.leading = true;
            self.events.push_back(Event::Waiting(
                "no running group answered among the saved view's members: leading the restart".into(),
            ));
        }
        self.try_plan(now);
    }

    /// Installs the restart view once the offers make a quorum.
    fn try_plan(&mut self, now: Time) {
        let me = self.config.me;
        let Phase::Restarting(r) = &mut self.phase else { return };
        let plan = match restart::plan(me, &r.offers, &*self.config.layout) {
            Ok(p) => p,
            Err(w) => {
                if r.waiting.as_ref() != Some(&w) {
                    r.waiting = Some(w);
                    r.said_at = Time(0);
                }
                return self.say_waiting(now);
            }
        };
        let next = NextView {
            addresses: plan
                .view
                .members
                .iter()
                .map(|m| (*m, r.addresses.get(m).cloned().unwrap_or_default()))
                .collect(),
            joined: plan.view.members.iter().copied().filter(|&m| m != me).collect(),
            departed: plan.last.members.iter().copied().filter(|m| !plan.view.members.contains(m)).collect(),
            transfers: plan.transfers,
            inadequate: None,
            lost: Vec::new(),
            history: Vec::new(),
            view: plan.view,
        };
        self.events
            .push_back(Event::Waiting(format!("restart view {} with members {:?}", next.view.id.0, next.view.members)));
        // A member that does not take its welcome misses the view's connect and is reported
        // failed there, as any member that fails.
        let welcome: Rc<[u8]> = Control::Answer(Answer::Welcome(Box::new(next.clone()))).encode().into();
        for (node, address) in &next.addresses {
            if *node != me {
                let message = welcome.clone();
                self.commands.push_back(Command::SendControl { to: address.clone(), message, report: false });
            }
        }
        self.enter(Rc::new(next));
    }

    /// Says what the restart waits for when it changes, and every five seconds while it lasts.
    fn say_waiting(&mut self, now: Time) {
        let Phase::Restarting(r) = &mut self.phase else { return };
        if r.said_at != Time(0) && now < r.said_at.plus_ns(5_000_000_000) {
            return;
        }
        r.said_at = now.max(Time(1));
        let what = match (&r.waiting, r.leading, r.running_seen) {
            (_, false, Some(_)) => "a running group is admitting this member".to_string(),
            (_, false, None) => format!("asking {:?} whether a group runs", r.asked.keys().collect::<Vec<_>>()),
            (Some(w), true, _) => format!("leading the restart, waiting: {w}"),
            (None, true, _) => "leading the restart".to_string(),
        };
        self.events.push_back(Event::Waiting(what));
    }
}
