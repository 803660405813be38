//! The previous view, kept alive (PROTOCOLS §3.3 step 8).
//!
//! Once this member is done with a view it pushes nothing more in it, but members still
//! finishing it would suspect it for its silence. So from the moment the view change is done
//! here until every member of the next view has shown a heartbeat in it (or a connect timeout
//! and four suspicion timeouts passed), the old view's transport stays open: every heartbeat
//! period this member sends an "alive" beat on it ([`Command::Beat`]), and traffic heard on it
//! from a member of the current view counts as a sign of life ([`Input::HeardOnOldView`]).
//! Then the transport is closed ([`Command::CloseView`]).
//!
//! [`Input::HeardOnOldView`]: super::Input::HeardOnOldView

use std::rc::Rc;

use super::{Command, Member};
use crate::protocol::ids::{NodeId, Time, ViewId};
use crate::protocol::node::Input as NodeInput;
use crate::protocol::sst::SstMemory;
use crate::protocol::wire::ViewFrame;

/// An earlier view whose transport stays open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linger {
    /// The view.
    pub view: ViewId,
    /// Its members other than this one.
    pub members: Vec<NodeId>,
    /// When it closes at the latest.
    until: Time,
    /// When the next beat is due.
    next_beat: Time,
}

impl Linger {
    /// Lingers `view` of `members` from `now`, for at most `for_ns`; the first beat is due at
    /// once.
    pub fn new(view: ViewId, members: Vec<NodeId>, now: Time, for_ns: u64) -> Self {
        Self { view, members, until: now.plus_ns(for_ns), next_beat: now }
    }

    /// When it needs attention.
    pub fn next_timeout(&self) -> Time {
        self.next_beat.min(self.until)
    }
}

impl<M: SstMemory> Member<M> {
    /// Beats due on lingering views.
    pub(super) fn linger_tick(&mut self, now: Time) {
        let Some(node) = &self.node else { return };
        let period = self.config.membership.heartbeat_ns();
        let current = node.view().id;
        for l in &mut self.lingering {
            if now >= l.next_beat && now < l.until {
                l.next_beat = now.plus_ns(period);
                let frame = Rc::new(ViewFrame::Alive { view: current }.encode());
                self.commands.push_back(Command::Beat { view: l.view, to: l.members.clone(), frame });
            }
        }
    }

    /// Closes lingering views that are no longer needed: past their time, or every member of
    /// the current view that was in them has shown a heartbeat in the current view.
    pub(super) fn linger_done(&mut self, now: Time) {
        let Some(node) = &self.node else { return };
        let installed = node.next_view().is_none();
        let current = node.view();
        let mut i = 0;
        while i < self.lingering.len() {
            let l = &self.lingering[i];
            let moved_on = installed
                && current.id > l.view
                && l.members.iter().filter(|m| current.rank_of(**m).is_some()).all(|m| node.heard_in_view(*m));
            if moved_on || now >= l.until {
                let l = self.lingering.remove(i);
                self.commands.push_back(Command::CloseView { view: l.view, members: l.members });
            } else {
                i += 1;
            }
        }
    }

    /// Members heard on an old view's transport are alive, though their rows here do not move.
    pub(super) fn heard_on_old_view(&mut self, now: Time, view: ViewId, peers: &[NodeId]) {
        if !self.lingering.iter().any(|l| l.view == view) {
            return;
        }
        for &p in peers {
            if self.view().is_some_and(|v| v.rank_of(p).is_some()) {
                self.node_input(now, NodeInput::PeerAlive(p));
            }
        }
    }
}
