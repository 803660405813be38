//! What a [`super::Group`] asks of its application, and the errors of its operations.

use std::time::Duration;

use derecho_runtime::transport::TransportError;

use super::GroupSender;
use crate::driver::GroupError;
use crate::protocol::member::EnterError;
use crate::protocol::restart::Waiting;
use crate::protocol::{Delivered, JoinRefusal, NodeId, ShardRef, StopReason, Version, View, ViewId};

pub use crate::protocol::member::ViewChange;

/// An application's own error, reported by the group with its message.
pub type AppError = Box<dyn std::error::Error>;

/// What the application gives a [`super::Group`]: the delivery of messages, and the state of
/// each shard for members that join it (PROTOCOLS §3.5). Any `FnMut(Delivered)` is an
/// application without state.
///
/// Every method runs on the group's executor, inside the driver, which holds no borrow of its
/// own state while it calls one: the application may call back into the [`super::Group`] or a
/// [`GroupSender`] (from [`Application::deliver`], a call that needs the protocol's state, such
/// as a send, answers a typed error: the delivery borrows the table). Each method should be
/// quick: a snapshot or restore that takes longer than the suspicion timeout silences this
/// member that long, and the others suspect it.
pub trait Application: 'static {
    /// The group exists: `sender` reaches it (called once, before anything else).
    fn attached(&mut self, _sender: GroupSender) {}

    /// A message delivered, in the shard's delivery order.
    fn deliver(&mut self, message: Delivered<'_>);

    /// The state of `shard` for a member joining it: everything delivered in the shard so far
    /// (called at the view change, before anything of the new view is delivered). An
    /// application still applying earlier deliveries (async handlers) answers
    /// [`State::Later`] and finishes them first.
    fn snapshot(&mut self, _shard: ShardRef) -> State {
        State::Ready(Vec::new())
    }

    /// Replaces the state of `shard` with a snapshot from an old member; called once, before
    /// anything is delivered in the shard. An error is reported ([`GroupEvent::StateRejected`])
    /// and the next source's copy is tried; once every source's copy failed, the member stops
    /// with [`StopReason::StateUnavailable`] (with [`StopReason::StateTransferTimeout`] if
    /// copies are still awaited when the transfer timeout passes).
    ///
    /// # Errors
    ///
    /// The snapshot is not one this application can read.
    ///
    /// [`GroupEvent::StateRejected`]: crate::driver::GroupEvent::StateRejected
    fn restore(&mut self, _shard: ShardRef, _state: &[u8]) -> Result<(), AppError> {
        Ok(())
    }

    /// A new view was installed here.
    fn view_installed(&mut self, _change: &ViewChange) {}

    /// A fingerprint of the application's replicated types (their method tables); 0 for none.
    /// A member refuses a joiner whose fingerprint differs from its own
    /// ([`JoinRefusal::AppMismatch`]).
    fn fingerprint(&self) -> u64 {
        0
    }

    /// Whether the application persists (PROTOCOLS §4): the group then has it save every view
    /// it proposes or acknowledges ([`Application::save_proposal`]) and every view it installs
    /// ([`Application::save_view`]), and refuses to run without partition safety.
    fn persistent(&self) -> bool {
        false
    }

    /// This member proposed or acknowledged the next view, `id` with `members` (persistent
    /// applications only). Its acknowledgement leaves only once this returns `Ok`
    /// (PROTOCOLS §4.1: a restart quorum must hear of every view that may have been committed).
    ///
    /// # Errors
    ///
    /// Why it could not be saved: the member stops ([`StopReason::Failed`]) and the
    /// acknowledgement never leaves.
    fn save_proposal(&mut self, _id: ViewId, _members: &[NodeId]) -> Result<(), AppError> {
        Ok(())
    }

    /// Save `view` (with its members' addresses) as this member's last view (persistent
    /// applications only): called once every state this member received for it is durable.
    ///
    /// # Errors
    ///
    /// Why it could not be saved: the member stops ([`StopReason::Failed`]).
    fn save_view(&mut self, _view: &View, _addresses: &[(NodeId, String)]) -> Result<(), AppError> {
        Ok(())
    }

    /// Messages of this member sent into `shard` in an earlier view and not delivered there
    /// were dropped at the view change (it is no longer a sender of the shard, or the view has
    /// no shards): `count` of them. Their senders should fail, not wait.
    fn resend_failed(&mut self, _shard: ShardRef, _count: usize) {}

    /// A frame another member sent this one with [`GroupSender::send_to`]. `body` is borrowed
    /// from the receive buffer, 16-byte aligned.
    fn receive(&mut self, _from: NodeId, _body: &[u8]) {}

    /// This member stopped (partitioned, removed, left, failed) or its group closed: nothing
    /// more will be delivered or received.
    fn stopped(&mut self) {}

    /// A persistence frontier of `shard` moved (PROTOCOLS §4): `local` is the highest version
    /// durable here ([`GroupSender::report_persisted`]), `global` the highest durable at every
    /// member of the shard in the current view.
    fn persisted(&mut self, _shard: ShardRef, _local: Option<Version>, _global: Option<Version>) {}

    /// A request from an external client (a process outside the group) sent to this member's
    /// listener; the answer goes back to the client. `None`: this application serves none.
    fn external(&mut self, _request: &[u8]) -> Option<State> {
        None
    }
}

/// A shard's state for a joining member ([`Application::snapshot`]).
pub enum State {
    /// The state now.
    Ready(Vec<u8>),
    /// The state once the application has applied everything delivered before the view change.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>>>>),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Ready(v) => write!(f, "State::Ready({} bytes)", v.len()),
            State::Later(_) => f.write_str("State::Later"),
        }
    }
}

impl From<Vec<u8>> for State {
    fn from(v: Vec<u8>) -> Self {
        State::Ready(v)
    }
}

impl<F: FnMut(Delivered<'_>) + 'static> Application for F {
    fn deliver(&mut self, message: Delivered<'_>) {
        self(message);
    }
}

/// Why joining (or restarting) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The group refused (an id in use, a full group, a group that did not restart).
    #[error("refused: {0}")]
    Refused(JoinRefusal),
    /// The contact speaks another version of the join handshake.
    #[error("the group speaks join version {theirs}, this build {ours}")]
    Version {
        /// The group's.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// No welcome within the join timeout.
    #[error("no answer from the group within {after:?} (contact {contact}, last asked {asked}){}", why(.reason))]
    Timeout {
        /// The timeout.
        after: Duration,
        /// The contact given.
        contact: String,
        /// The member last asked (the leader, after a redirect).
        asked: String,
        /// The last thing heard, if anything.
        reason: Option<String>,
    },
    /// The listener or the first view's transport could not be set up.
    #[error(transparent)]
    Start(#[from] GroupError),
    /// Admitted, but stopped before it could start (the state did not come in time, or the
    /// group removed it).
    #[error("stopped while joining: {0}")]
    Stopped(StopReason),
    /// The restart leader's quorum was not met in time ([`super::GroupBuilder::restart`]).
    #[error("no restart quorum within {after:?}: {waiting}")]
    NoQuorum {
        /// The restart timeout.
        after: Duration,
        /// What was still missing.
        waiting: Waiting,
    },
    /// A configuration this member cannot run with.
    #[error("configuration: {0}")]
    Config(&'static str),
}

fn why(reason: &Option<String>) -> String {
    reason.as_ref().map_or_else(String::new, |r| format!("; last heard: {r}"))
}

impl JoinError {
    /// The error of a member that could not enter its group.
    pub(super) fn from_enter(e: EnterError, connect: Option<GroupError>) -> Self {
        match e {
            EnterError::Refused(r) => JoinError::Refused(r),
            EnterError::Version { theirs, ours } => JoinError::Version { theirs, ours },
            EnterError::Timeout { waited_ms, contact, asked, reason } => {
                JoinError::Timeout { after: Duration::from_millis(waited_ms), contact, asked, reason }
            }
            EnterError::NoQuorum { waited_ms, waiting } => {
                JoinError::NoQuorum { after: Duration::from_millis(waited_ms), waiting }
            }
            // The first view's transport failed: its own error says more than the stop.
            EnterError::Stopped(_) if connect.is_some() => JoinError::Start(connect.expect("checked")),
            EnterError::Stopped(r) => JoinError::Stopped(r),
        }
    }
}

/// Why a total restart (and so persistence) needs partition safety.
pub const PARTITION_SAFETY_NEEDED: &str = "persistence needs partition safety \
    (MembershipConfig::partition_safety): a total restart relies on every view being committed by a majority \
    of the one before";

/// Errors of [`super::Group::wait_view`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No view matched in time.
    #[error("no matching view within {within:?}; the current view is {current:?}")]
    Timeout {
        /// How long it waited.
        within: Duration,
        /// The view when it gave up.
        current: View,
    },
    /// This member stopped.
    #[error("stopped: {0}")]
    Stopped(StopReason),
    /// The group was closed.
    #[error("the group is closed")]
    Closed,
}

/// Errors of [`GroupSender::wait_persisted`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistWaitError {
    /// The version was not durable everywhere in time.
    #[error("version {version} was not durable at every member within {within:?}")]
    Timeout {
        /// How long it waited.
        within: Duration,
        /// The version.
        version: Version,
    },
    /// This member is not in the shard.
    #[error("this member is not in {0}")]
    NotInShard(ShardRef),
    /// This member stopped.
    #[error("stopped: {0}")]
    Stopped(StopReason),
    /// The group is closed.
    #[error("the group is closed")]
    Closed,
}

/// Errors of [`GroupSender::send_to`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendToError {
    /// The node is not a member of the current view (or is this member).
    #[error("{0} is not another member of the current view")]
    NotAMember(NodeId),
    /// The connection to it failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The group is closed.
    #[error("the group is closed")]
    Closed,
}
