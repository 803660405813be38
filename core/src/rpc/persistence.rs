//! A service's persistence (PROTOCOLS §4): each shard's log of delivered calls, written and
//! synced in rounds and reported as the local frontier; the views and proposals it saves for
//! total restart; the stable time of reads.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

use super::recovery;
use super::service::ServiceInner;
use super::sessions::Table;
use crate::protocol::{NodeId, ShardRef, Version, View, ViewId};

/// Why a service's persistence failed; the member stops, and its logs are never trusted to
/// say more than they said before.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// A file or directory of the persistence directory could not be written.
    #[error("{what} in {}: {reason}", path.display())]
    Io {
        /// What was being done.
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// A shard's log could not be created, appended to or synced.
    #[error("the log of {shard} failed: {reason}")]
    Log {
        /// The shard.
        shard: ShardRef,
        /// What failed.
        reason: String,
    },
    /// A replica's state could not be archived for its log.
    #[error("{shard}: its state could not be archived: {reason}")]
    Snapshot {
        /// The shard.
        shard: ShardRef,
        /// Why.
        reason: String,
    },
}

/// The least bytes before the replica's archive in a state sent to a joiner: the shard's last
/// time and the length of its external clients' record.
pub(super) const STATE_PREFIX: usize = 16;

/// A callback on persistence frontiers: the shard, the local frontier, the global one.
pub(super) type PersistCallback = Box<dyn FnMut(ShardRef, Option<Version>, Option<Version>)>;

/// A shard's log: every ordered call delivered in the shard, in order, with its version and
/// timestamp (the operation log of the whole object: one write and one sync cover every field
/// it changed, and replaying it rebuilds every version). A record whose first byte is 0 holds a
/// state instead (the replica's starting point when it came by state transfer); a call's first
/// byte is its kind, 1.
pub(super) struct ShardLog {
    pub(super) log: Rc<crate::persist::DurableLog>,
    /// The view its replica started in (its file's name).
    pub(super) view: crate::protocol::ViewId,
    /// A flush task is running.
    pub(super) flushing: Cell<bool>,
}

/// A shard's state as it travels and is logged: the time of its last version, the length of
/// its external clients' record (`sessions`), the record padded to 16 bytes (the archive stays
/// 16-byte aligned), then the replica's archive. (A state written before clients had records
/// has length 0 there: it reads as an empty record.)
pub(super) fn framed_state(time: u64, sessions: &[u8], archive: &[u8]) -> Vec<u8> {
    let padded = sessions.len().next_multiple_of(16);
    let mut v = Vec::with_capacity(STATE_PREFIX + padded + archive.len());
    v.extend_from_slice(&time.to_le_bytes());
    v.extend_from_slice(&(sessions.len() as u64).to_le_bytes());
    v.extend_from_slice(sessions);
    v.resize(STATE_PREFIX + padded, 0);
    v.extend_from_slice(archive);
    v
}

/// Splits a [`framed_state`]: the time, the clients' record, the archive.
///
/// # Errors
///
/// The state is shorter than its header or its record says.
pub(super) fn unframe_state(state: &[u8]) -> Result<(u64, Table, &[u8]), String> {
    if state.len() < STATE_PREFIX {
        return Err(format!("a state of {} bytes, shorter than its header", state.len()));
    }
    let time = u64::from_le_bytes(state[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(state[8..16].try_into().expect("8 bytes"));
    let padded = usize::try_from(len).ok().and_then(|l| l.checked_next_multiple_of(16));
    let end = padded.and_then(|p| p.checked_add(STATE_PREFIX)).filter(|e| *e <= state.len());
    let Some(end) = end else { return Err(format!("a clients' record of {len} bytes longer than its state")) };
    let table = Table::decode(&state[STATE_PREFIX..STATE_PREFIX + len as usize])?;
    Ok((time, table, &state[end..]))
}

impl ServiceInner {
    /// Saves `view` as this member's last view (PROTOCOLS §4.1), with its members' addresses;
    /// the member asks once every state it received for the view is durable. The shards whose
    /// log starts from such a state no longer need their older logs: they go.
    ///
    /// # Errors
    ///
    /// Persistence failed, now or before.
    pub(super) fn save_view(&self, view: &View, addresses: &[(NodeId, String)]) -> Result<(), PersistError> {
        let Some(dir) = self.persist_dir.borrow().clone() else { return Ok(()) };
        if let Some(e) = self.persist_failed.borrow().clone() {
            return Err(e);
        }
        if let Err(e) = recovery::save_view(&dir, view, addresses) {
            let e = PersistError::Io {
                what: format!("saving view {}", view.id.0),
                path: dir.clone(),
                reason: e.to_string(),
            };
            self.persistence_failed(e.clone());
            return Err(e);
        }
        self.saved_view.set(Some(view.id));
        let mut proposals = self.proposals.borrow_mut();
        let before = proposals.len();
        proposals.retain(|(id, _)| *id > view.id);
        if proposals.len() != before
            && let Err(e) = recovery::save_proposals(&dir, &proposals)
        {
            drop(proposals);
            let e = PersistError::Io { what: "saving the proposed views".into(), path: dir, reason: e.to_string() };
            self.persistence_failed(e.clone());
            return Err(e);
        }
        drop(proposals);
        // The state at the head of a log started in this view or before holds everything
        // older logs of the shard held (a restart reads the newest log only).
        let started: Vec<(ShardRef, ViewId)> =
            self.logs.borrow().iter().filter(|(_, l)| l.view <= view.id).map(|(s, l)| (*s, l.view)).collect();
        for (shard, from) in started {
            recovery::remove_older_logs(&dir, shard, from);
        }
        Ok(())
    }

    /// Saves a view this member proposed or acknowledged, before the acknowledgement leaves.
    ///
    /// # Errors
    ///
    /// Persistence failed, now or before (the member must not acknowledge).
    pub(super) fn save_proposal(&self, id: ViewId, members: &[NodeId]) -> Result<(), PersistError> {
        let Some(dir) = self.persist_dir.borrow().clone() else { return Ok(()) };
        if let Some(e) = self.persist_failed.borrow().clone() {
            return Err(e);
        }
        let mut proposals = self.proposals.borrow_mut();
        if proposals.iter().any(|(i, m)| *i == id && m.as_slice() == members) {
            return Ok(());
        }
        proposals.push((id, members.to_vec()));
        if let Err(e) = recovery::save_proposals(&dir, &proposals) {
            drop(proposals);
            let e =
                PersistError::Io { what: format!("saving proposed view {}", id.0), path: dir, reason: e.to_string() };
            self.persistence_failed(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Starts the log of `shard` for a replica created in the current view: empty for a fresh
    /// replica, or with `state` (the state it was restored from) as its first record.
    pub(super) fn open_log(self: &Rc<Self>, shard: ShardRef, state: Option<&[u8]>) {
        let Some(dir) = self.persist_dir.borrow().clone() else { return };
        let Some(view) = self.view.borrow().as_ref().map(|v| v.id) else { return };
        let path = dir.join(recovery::log_name(shard, view));
        let log = match crate::persist::DurableLog::create(&path) {
            Ok(l) => l,
            Err(e) => return self.persistence_failed(PersistError::Log { shard, reason: e.to_string() }),
        };
        let slog = Rc::new(ShardLog { log, view, flushing: Cell::new(false) });
        self.logs.borrow_mut().insert(shard, slog.clone());
        if let Some(state) = state {
            // Everything before the view's first message (versions of view 0 never come by
            // state transfer: that view has one member).
            let before = Version::from_u64(Version::new(view, 0).as_u64().saturating_sub(1));
            let time = state.get(..8).map_or(0, |t| u64::from_le_bytes(t.try_into().expect("8 bytes")));
            let mut record = Vec::with_capacity(1 + state.len());
            record.push(0);
            record.extend_from_slice(state);
            if let Err(e) = slog.log.append(before.as_u64(), time, &record) {
                return self.persistence_failed(PersistError::Log { shard, reason: e.to_string() });
            }
            // Durable and reported at once: the shard's global frontier (and the stable time of
            // reads) must not wait for this member's first call.
            self.recent_times.borrow_mut().entry(shard).or_default().push_back((before, time));
            self.flush(shard, slog);
        }
    }

    /// Appends a delivered call to its shard's log with its version and time, and makes sure a
    /// flush is under way.
    pub(super) fn log_call(self: &Rc<Self>, shard: ShardRef, version: Version, hlc: u64, payload: &[u8]) {
        let Some(slog) = self.logs.borrow().get(&shard).cloned() else { return };
        if let Err(e) = slog.log.append(version.as_u64(), hlc, payload) {
            return self.persistence_failed(PersistError::Log { shard, reason: e.to_string() });
        }
        let mut recent = self.recent_times.borrow_mut();
        let q = recent.entry(shard).or_default();
        q.push_back((version, hlc));
        // Bounded: when the global frontier lags this far, the oldest times are forgotten and
        // reads by time are refused until it catches up (never answered differently).
        while q.len() > 1 << 16 {
            q.pop_front();
        }
        drop(recent);
        self.flush(shard, slog);
    }

    /// Makes sure a flush of `slog` is under way: rounds of one write and one sync for
    /// everything appended, each reported as the local frontier once durable.
    pub(super) fn flush(self: &Rc<Self>, shard: ShardRef, slog: Rc<ShardLog>) {
        if slog.flushing.replace(true) {
            return;
        }
        // The sender is looked up at each report: a joiner's first log (its state) is flushed
        // before the service is attached ([`Service::attach`] republishes what was durable).
        let weak = Rc::downgrade(self);
        let sender = {
            let weak = weak.clone();
            move || weak.upgrade().and_then(|i| i.sender.borrow().clone())
        };
        drop(crate::spawn(async move {
            while let Some(target) = slog.log.last_appended() {
                if let Err(e) = slog.log.persist(target).await {
                    // Never retried: what a failed sync wrote cannot be trusted. Recorded, so
                    // that a service not attached yet stops its member when it is.
                    if let Some(inner) = weak.upgrade() {
                        inner.persistence_failed(PersistError::Log { shard, reason: e.to_string() });
                    }
                    return;
                }
                if let Some(s) = sender() {
                    s.report_persisted(shard, Version::from_u64(target));
                }
                if slog.log.last_appended() == Some(target) {
                    break;
                }
            }
            slog.flushing.set(false);
        }));
    }

    /// Persistence failed: this member can no longer persist, and stops (the first failure is
    /// kept; a service not attached yet stops its member when it is).
    pub(super) fn persistence_failed(&self, e: PersistError) {
        tracing::error!(error = %e, "persistence failed");
        let first = self.persist_failed.borrow().is_none();
        self.persist_failed.borrow_mut().get_or_insert(e.clone());
        if first && let Some(s) = self.sender.borrow().as_ref() {
            s.fatal(&format!("persistence failed: {e}"));
        }
    }

    /// The time of `shard`'s global persistence frontier plus one, 0 if there is none (what a
    /// query's header carries into [`CallContext::stable_time`]).
    pub(super) fn stable_time_field(&self, shard: ShardRef) -> u64 {
        if self.persist_dir.borrow().is_none() {
            return 0; // nothing is persisted: there is no stable time
        }
        let Some(global) = self.sender.borrow().as_ref().and_then(|s| s.persisted(shard).1) else { return 0 };
        let mut recent = self.recent_times.borrow_mut();
        let Some(q) = recent.get_mut(&shard) else { return 0 };
        while q.len() >= 2 && q[1].0 <= global {
            q.pop_front();
        }
        match q.front() {
            Some(&(v, t)) if v <= global => t.saturating_add(1),
            _ => 0,
        }
    }
}
