//! Joins (PROTOCOLS §3.5), from both ends.
//!
//! **Asking.** A joiner (or a restarting member with a contact) sends its request to its
//! contact; a member that is not the leader redirects it there ([`JoinRefusal::NotLeader`]).
//! Silence for [`MemberConfig::retry_ns`] asks the contact again (the member asked may have
//! failed, or be busy with a view change); a request that cannot be delivered is retried
//! sooner. An id still in use is retried for a few suspicion timeouts (a member that crashed
//! and came back at once is still in the view until the group removes it) before it is a
//! refusal. The first welcome that names this member is its first view.
//!
//! **Admitting.** The leader checks a request ([`Node::check_join`](crate::protocol::Node::check_join): leader, id free, room)
//! and answers [`Answer::Pending`] to the joiner's listener; only once that message is
//! delivered ([`Input::ControlSent`](super::Input::ControlSent)) does it propose the join. A request whose listener never
//! answers (a forged address) is never proposed, so it can never sit in a view as a member
//! that will not take part.

use std::rc::Rc;

use super::{Command, EnterError, Event, Member, MemberConfig, Phase};
use crate::protocol::ids::{NodeId, Time};
use crate::protocol::membership::JoinRefusal;
use crate::protocol::node::{Input as NodeInput, JoinCheck};
use crate::protocol::restart::Offer;
use crate::protocol::sst::SstMemory;
use crate::protocol::wire::{Answer, Control, JOIN_VERSION};

/// Joins a leader holds at most while it waits for their listeners to answer
/// ([`Answer::Pending`] delivered); more are dropped unanswered until some are done.
pub const ADMITTING_MAX: usize = 16;

/// A member asking to be let in (see the module documentation).
#[derive(Debug)]
pub struct Asking {
    /// The encoded request (a join, or a restart offer).
    request: Rc<[u8]>,
    /// The contact given.
    contact: String,
    /// The member asked last (the leader, after a redirect).
    target: String,
    /// A leader this member learned of (a restarting member that yielded): joiners asking it
    /// are redirected there.
    pub(super) leader: Option<(NodeId, String)>,
    started: Time,
    deadline: Time,
    retry_at: Time,
    /// Until when an id in use is asked again (set at the first such refusal).
    id_in_use_until: Option<Time>,
    /// The last thing heard, for the timeout's message.
    last_heard: Option<String>,
}

impl Asking {
    /// When the asking member must act if nothing arrives.
    pub fn next_timeout(&self) -> Time {
        self.retry_at.min(self.deadline)
    }
}

impl<M: SstMemory> Member<M> {
    /// Asks the group of the member at `contact` to let this member in (PROTOCOLS §3.5):
    /// [`Event::Installed`] once welcomed, or [`Event::EnterFailed`] (refused, another
    /// handshake version, no welcome within the join timeout).
    ///
    /// # Panics
    ///
    /// If the member already started, joined or restarted (a programmer error).
    pub fn join(&mut self, now: Time, contact: String) {
        assert!(matches!(self.phase, Phase::Idle), "join on a member that is not idle");
        let c = &self.config;
        let request =
            Control::Join { version: JOIN_VERSION, node: c.me, address: c.address.clone(), app: c.app }.encode();
        let timeout = c.join_timeout_ns;
        self.ask(now, contact, request.into(), timeout, None);
    }

    /// Starts asking `contact` with `request`.
    pub(super) fn ask(
        &mut self,
        now: Time,
        contact: String,
        request: Rc<[u8]>,
        timeout_ns: u64,
        leader: Option<(NodeId, String)>,
    ) {
        self.now = self.now.max(now);
        self.commands.push_back(Command::SendControl { to: contact.clone(), message: request.clone(), report: true });
        self.phase = Phase::Asking(Box::new(Asking {
            request,
            target: contact.clone(),
            contact,
            leader,
            started: now,
            deadline: now.plus_ns(timeout_ns),
            retry_at: now.plus_ns(self.config.retry_ns),
            id_in_use_until: None,
            last_heard: None,
        }));
    }

    /// Asks `target` again now.
    fn ask_again(&mut self, now: Time, target: String, why: String) {
        let Phase::Asking(a) = &mut self.phase else { return };
        a.target = target.clone();
        a.retry_at = now.plus_ns(self.config.retry_ns);
        let message = a.request.clone();
        self.events.push_back(Event::Waiting(format!("asking {target} to let this member in: {why}")));
        self.commands.push_back(Command::SendControl { to: target, message, report: true });
    }

    pub(super) fn asking_tick(&mut self, now: Time) {
        let Phase::Asking(a) = &mut self.phase else { return };
        if now >= a.deadline {
            let e = EnterError::Timeout {
                waited_ms: (now.0 - a.started.0) / 1_000_000,
                contact: a.contact.clone(),
                asked: a.target.clone(),
                reason: a.last_heard.clone(),
            };
            self.fail_entering(e);
        } else if now >= a.retry_at {
            // Silence: the member asked may have failed, or be busy with a view change.
            let (contact, target) = (a.contact.clone(), a.target.clone());
            let why = a.last_heard.clone().unwrap_or_else(|| format!("no answer from {target} yet"));
            self.ask_again(now, contact, why);
        }
    }

    /// A control message could not be delivered to `to`.
    pub(super) fn control_not_sent(&mut self, now: Time, to: &str) {
        match &mut self.phase {
            Phase::Asking(a) if a.target == to => {
                // Not listening yet, or gone: ask the contact again shortly.
                a.last_heard = Some(format!("{to} could not be reached"));
                a.target = a.contact.clone();
                a.retry_at = a.retry_at.min(now.plus_ns(50_000_000.min(self.config.retry_ns)));
            }
            Phase::Restarting(_) => self.probe_unreachable(to),
            _ => {
                // A joiner whose listener does not answer is not admitted.
                self.admitting.remove(to);
            }
        }
    }

    /// An answer to this member's request (or probe) from `from`.
    pub(super) fn answer(&mut self, now: Time, from: NodeId, answer: Answer) {
        if matches!(self.phase, Phase::Restarting(_)) {
            self.restarting_answer(now, from, answer);
            return;
        }
        let Phase::Asking(a) = &mut self.phase else { return };
        match answer {
            Answer::Welcome(next) if next.view.rank_of(self.config.me).is_some() => self.enter(Rc::new(*next)),
            Answer::Welcome(_) => {}
            Answer::Pending => {
                // The leader is admitting it: its view change may take a while.
                a.last_heard = Some(format!("{from} is admitting this member"));
                a.retry_at = now.plus_ns(self.config.retry_ns);
            }
            Answer::Refused(JoinRefusal::NotLeader { leader, address }) => {
                a.last_heard = Some(format!("redirected to the leader {leader} at {address}"));
                let why = format!("{from} redirected to its leader {leader}");
                self.ask_again(now, address, why);
            }
            Answer::Refused(JoinRefusal::NotRunning) => {
                // The contact is restarting too: its group is not running yet.
                a.last_heard = Some(format!("{from} is not running a group yet"));
            }
            Answer::Refused(JoinRefusal::IdInUse(n)) => {
                // An earlier life of this member may still be in the view until the group
                // removes it: ask again for a while.
                let grace = self.config.id_in_use_grace_ns();
                let until = *a.id_in_use_until.get_or_insert(now.plus_ns(grace));
                if now >= until {
                    self.fail_entering(EnterError::Refused(JoinRefusal::IdInUse(n)));
                } else {
                    a.last_heard = Some(format!("{n} is still a member of the group's view"));
                }
            }
            Answer::Refused(r) => self.fail_entering(EnterError::Refused(r)),
            Answer::Version(theirs) => self.fail_entering(EnterError::Version { theirs, ours: JOIN_VERSION }),
        }
    }

    /// A join request or restart offer (`restart`: the offer, and whether its sender would lead
    /// a restart) from `node` at `address`.
    pub(super) fn join_request(
        &mut self,
        now: Time,
        version: u16,
        node: NodeId,
        address: String,
        app: u64,
        restart: Option<(Offer, bool)>,
    ) {
        if !self.compatible(version, app, &address) {
            return;
        }
        // Before anything else, also a restart's offers: an id not allowed never counts.
        if self.config.allowed.as_ref().is_some_and(|ids| !ids.contains(&node)) {
            return self.answer_joiner(&address, Answer::Refused(JoinRefusal::NotAllowed(node)));
        }
        match &self.phase {
            Phase::Restarting(_) => return self.offer_received(now, node, address, restart),
            Phase::Asking(a) => {
                // Not in a group: redirect to the restart leader it follows, if any.
                let refusal = match &a.leader {
                    Some((leader, at)) => JoinRefusal::NotLeader { leader: *leader, address: at.clone() },
                    None => JoinRefusal::NotRunning,
                };
                return self.answer_joiner(&address, Answer::Refused(refusal));
            }
            Phase::Running => {}
            Phase::Idle | Phase::Entering(_) => {
                return self.answer_joiner(&address, Answer::Refused(JoinRefusal::NotRunning));
            }
            Phase::Done => return,
        }
        if node == self.config.me {
            return;
        }
        if let Some((offer, _)) = &restart
            && let Err(refusal) = self.admits_restart(node, offer)
        {
            return self.answer_joiner(&address, Answer::Refused(refusal));
        }
        // A member back with whole, undamaged logs may hold the state of a shard that lost
        // every other holder.
        let returning =
            restart.as_ref().is_some_and(|(o, _)| o.saved_a_view() && !o.logs.is_empty() && o.damaged.is_empty());
        let check = self.node.as_ref().map_or(Err(JoinRefusal::NotRunning), |n| n.check_join(node, &address));
        match check {
            Err(refusal) => self.answer_joiner(&address, Answer::Refused(refusal)),
            Ok(JoinCheck::UnderWay) => {
                // Asked again: it will be welcomed with the view that adds it.
                self.joiners.insert(node, address.clone());
                self.answer_joiner(&address, Answer::Pending);
            }
            Ok(JoinCheck::New) => {
                if self.admitting.contains_key(&address) {
                    return;
                }
                if self.admitting.len() >= ADMITTING_MAX {
                    // Too many joiners whose listeners have not answered yet: this one is not
                    // answered at all (an answer would be one more connection to an address
                    // the request names), and asks again after its retry period.
                    self.events.push_back(Event::Waiting(format!(
                        "dropped a join: {ADMITTING_MAX} joiners' listeners have not answered yet"
                    )));
                    return;
                }
                self.joiners.insert(node, address.clone());
                self.admitting.insert(address.clone(), (node, returning, now));
                let message = Control::Answer(Answer::Pending).encode().into();
                self.commands.push_back(Command::SendControl { to: address, message, report: true });
            }
        }
    }

    /// The joiner at `to` answered: propose it.
    pub(super) fn admitted(&mut self, now: Time, to: &str) {
        if let Some((node, returning, _)) = self.admitting.remove(to) {
            self.node_input(now, NodeInput::Join { node, address: to.to_string(), returning });
        }
    }
}

impl MemberConfig {
    /// How long a refused "id in use" is asked again: a member that crashed and came back at
    /// once is in the view until the group removes it, a few suspicion timeouts at most.
    pub fn id_in_use_grace_ns(&self) -> u64 {
        4 * self.membership.suspect_after_ns() + self.retry_ns
    }
}
