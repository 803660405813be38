//! A persisting service's side of total restart (PROTOCOLS §4.1): the view it saves at each
//! view change, and the replicas it rebuilds from its logs at start-up.
//!
//! A member's persistence directory holds `view` (its last installed view, one checksummed
//! record, replaced atomically) and one log per shard and view in which its replica of the
//! shard started: `shard-{subgroup}-{index}-v{view}.log`. A log starts either with the state
//! the replica started from (a record whose payload's first byte is 0: the shard's time, 8
//! bytes of padding, the replica's archive) or, for a replica created fresh, with the first
//! call; every other record is a delivered ordered call with its version and time.
//!
//! Recovery takes each shard's newest log that holds a record (recovery of the log itself cut
//! any torn or corrupt tail), rebuilds the replica from its state and calls, and offers the
//! last version to the restart leader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rkyv::util::AlignedVec;

use super::persistence::unframe_state;
use super::replicas::call_context;
use super::replicated::{Applied, Hosted, InContext};
use super::service::ServiceInner;
use super::sessions::{Prefix, Seen, Table, session_reply};
use super::wire::{FLAG_SESSION, Header};
use crate::context::with_context;
use crate::persist::{DurableLog, LogError, record};
use crate::protocol::restart::Offer;
use crate::protocol::wire::{decode_proposals, decode_saved_view, encode_proposals, encode_saved_view};
use crate::protocol::{Addresses, NodeId, ShardIndex, ShardRef, SubgroupId, Version, View, ViewId};

/// The file of the last view, in the persistence directory.
const SAVED_VIEW: &str = "view";
/// The file of the views proposed or acknowledged since the last one saved.
const PROPOSED: &str = "proposed";

/// The marker of a shard whose log recovery found corrupt (it outlives the cut, so that a
/// second recovery still knows the log may lack durable versions); removed once a newer log of
/// the shard starts from a durable state.
fn damage_marker(shard: ShardRef) -> String {
    format!("shard-{}-{}.damaged", shard.subgroup.0, shard.shard.0)
}

/// Why a member could not be rebuilt from its persistence directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// A file or the directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The saved view is damaged (it is replaced atomically, so this is not a torn write).
    #[error("the saved view {path} is damaged: {reason}")]
    SavedView {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A log could not be opened or recovered.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A log's records cannot be replayed into a replica.
    #[error("{shard}: {path} cannot be replayed: {reason}")]
    Replay {
        /// The shard.
        shard: ShardRef,
        /// The log.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The name of the log of `shard` for a replica started in `view`.
pub(super) fn log_name(shard: ShardRef, view: ViewId) -> String {
    format!("shard-{}-{}-v{}.log", shard.subgroup.0, shard.shard.0, view.0)
}

/// The shard and view of a log's file name, `None` for any other name.
fn parse_log_name(name: &str) -> Option<(ShardRef, ViewId)> {
    let rest = name.strip_prefix("shard-")?.strip_suffix(".log")?;
    let mut parts = rest.split('-');
    let (sg, idx, view) = (parts.next()?, parts.next()?, parts.next()?.strip_prefix('v')?);
    if parts.next().is_some() {
        return None;
    }
    fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    Some((ShardRef { subgroup: SubgroupId(number(sg)?), shard: ShardIndex(number(idx)?) }, ViewId(number(view)?)))
}

fn io_error(path: &Path, e: std::io::Error) -> RecoveryError {
    RecoveryError::io(path, e)
}

impl RecoveryError {
    /// A file or directory that could not be read or written.
    pub(super) fn io(path: &Path, source: std::io::Error) -> Self {
        RecoveryError::Io { path: path.display().to_string(), source }
    }
}

/// Writes `payload` as the one record of the file `name` in `dir`: beside it first, synced,
/// renamed over the old one, and the directory synced, so that a crash leaves the old file or
/// the new one.
fn replace_file(dir: &Path, name: &str, version: u64, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = Vec::new();
    record::encode(&mut bytes, version, 0, payload);
    let (tmp, path) = (dir.join(format!("{name}.new")), dir.join(name));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The payload and version of the one record of the file `name` in `dir`, if it exists.
fn read_file(dir: &Path, name: &str) -> Result<Option<(u64, Vec<u8>)>, RecoveryError> {
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, e)),
    };
    let damaged = |reason: String| RecoveryError::SavedView { path: path.display().to_string(), reason };
    let scan = record::scan(&bytes);
    let [found] = scan.records.as_slice() else {
        return Err(damaged(format!("{} valid records, one expected", scan.records.len())));
    };
    if scan.valid_len != bytes.len() {
        return Err(damaged(format!("{} bytes after the record", bytes.len() - scan.valid_len)));
    }
    Ok(Some((found.version, bytes[found.payload_offset..found.payload_offset + found.payload_len].to_vec())))
}

/// Writes `view` and its members' addresses as the last view in `dir` (atomically).
pub(super) fn save_view(dir: &Path, view: &View, addresses: &[(NodeId, String)]) -> std::io::Result<()> {
    replace_file(dir, SAVED_VIEW, u64::from(view.id.0), &encode_saved_view(view, addresses))
}

/// Forgets the views this member acknowledged in a group it no longer belongs to (it starts
/// afresh): a restart must not wait for their members.
pub(super) fn forget_proposals(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(PROPOSED)) {
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the views proposed or acknowledged since the last one saved (atomically).
pub(super) fn save_proposals(dir: &Path, proposals: &[(ViewId, Vec<NodeId>)]) -> std::io::Result<()> {
    replace_file(dir, PROPOSED, 0, &encode_proposals(proposals))
}

/// The view saved in `dir` and its members' addresses, if there is one.
fn load_view(dir: &Path) -> Result<Option<(View, Addresses)>, RecoveryError> {
    let Some((version, payload)) = read_file(dir, SAVED_VIEW)? else { return Ok(None) };
    let damaged =
        |reason: String| RecoveryError::SavedView { path: dir.join(SAVED_VIEW).display().to_string(), reason };
    let (view, addresses) = decode_saved_view(&payload).map_err(|e| damaged(e.to_string()))?;
    if u64::from(view.id.0) != version {
        return Err(damaged(format!("the record says view {version}, the view {}", view.id.0)));
    }
    Ok(Some((view, addresses)))
}

/// The views proposed or acknowledged saved in `dir` (none if the file is absent).
fn load_proposals(dir: &Path) -> Result<Vec<(ViewId, Vec<NodeId>)>, RecoveryError> {
    let Some((_, payload)) = read_file(dir, PROPOSED)? else { return Ok(Vec::new()) };
    decode_proposals(&payload)
        .map_err(|e| RecoveryError::SavedView { path: dir.join(PROPOSED).display().to_string(), reason: e.to_string() })
}

/// Every shard log in `dir`, newest view first per shard.
fn logs_in(dir: &Path) -> Result<BTreeMap<ShardRef, Vec<(ViewId, PathBuf)>>, RecoveryError> {
    let mut out: BTreeMap<ShardRef, Vec<(ViewId, PathBuf)>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        if let Some((shard, view)) = entry.file_name().to_str().and_then(parse_log_name) {
            out.entry(shard).or_default().push((view, entry.path()));
        }
    }
    for files in out.values_mut() {
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
    }
    Ok(out)
}

/// Removes the logs of `shard` in `dir` older than the one started in `view`, whose head is a
/// durable state that covers them. A file that cannot be removed is only reported: it is
/// never read again while a newer log holds a record.
pub(super) fn remove_older_logs(dir: &Path, shard: ShardRef, view: ViewId) {
    let files = match logs_in(dir) {
        Ok(mut logs) => logs.remove(&shard).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "older logs not removed");
            return;
        }
    };
    let mut removed = false;
    for (v, path) in files.into_iter().filter(|(v, _)| *v < view) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                removed = true;
                tracing::debug!(path = %path.display(), older_than = view.0, "an older log removed");
            }
            Err(e) => tracing::warn!(path = %path.display(), view = v.0, error = %e, "an older log not removed"),
        }
    }
    // The shard's history now starts from that state: an earlier damage no longer matters.
    removed |= std::fs::remove_file(dir.join(damage_marker(shard))).is_ok();
    if removed && let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "the log directory not synced after removals");
    }
}

impl ServiceInner {
    /// Rebuilds this member's replicas from the logs in its persistence directory, if it holds
    /// a saved view: what to offer the restart leader. Without a saved view, an offer with an
    /// empty one if the member acknowledged views (it stopped before its first view was
    /// whole): the restart quorum counts on hearing of every view a member back acknowledged.
    /// `None`: a new member. With the offer, the saved view's members' addresses.
    pub(super) async fn recover(self: &Rc<Self>) -> Result<Option<(Offer, Addresses)>, RecoveryError> {
        let Some(dir) = self.persist_dir.borrow().clone() else { return Ok(None) };
        let logs = logs_in(&dir)?;
        let saved = load_view(&dir)?;
        let proposed: Vec<(ViewId, Vec<NodeId>)> =
            load_proposals(&dir)?.into_iter().filter(|(id, _)| saved.as_ref().is_none_or(|s| *id > s.0.id)).collect();
        // Kept in memory, so that the file is rewritten whole when more are saved.
        self.proposals.borrow_mut().clone_from(&proposed);
        let Some(saved) = saved else {
            // Logs and no saved view: a member that stopped before its first view was whole
            // (its state durable), so nobody counts on them; or another member's directory.
            // Moved aside, never deleted; the member starts afresh.
            for files in logs.values() {
                for (_, path) in files {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    let aside = dir.join(format!("orphan-{name}"));
                    tracing::warn!(path = %path.display(), to = %aside.display(), "a log without a saved view moved aside");
                    std::fs::rename(path, &aside).map_err(|e| io_error(path, e))?;
                }
            }
            return Ok((!proposed.is_empty()).then(|| (Offer::without_saved_view(proposed), Vec::new())));
        };
        let (saved, addresses) = saved;
        let newest_file = logs.values().filter_map(|f| f.first().map(|(v, _)| *v)).max().unwrap_or(ViewId(0));
        let mut offer = Offer { saved, logs: BTreeMap::new(), damaged: Default::default(), proposed, newest_file };
        for (shard, files) in logs {
            if dir.join(damage_marker(shard)).exists() {
                offer.damaged.insert(shard);
            }
            if !self.types.borrow().contains_key(&shard.subgroup) {
                tracing::warn!(%shard, "a log of a subgroup that hosts no type here: ignored");
                continue;
            }
            // The newest log that holds a record (a log created just before a crash may hold
            // nothing yet; the one before it then has the replica's history).
            for (_, path) in files {
                let (log, found) = DurableLog::open(&path).await?;
                drop(log);
                if found.cut > 0 {
                    tracing::warn!(path = %path.display(), cut = found.cut, damage = ?found.damage, "a log's damaged tail was cut");
                }
                // A corrupt record (not a write cut short) may have held durable versions: this
                // log, or an older one used in its place, may lack them.
                if matches!(found.damage, Some(crate::persist::record::Damage::Corrupt { .. })) {
                    // Marked before anything else: the cut is already on disk.
                    replace_file(&dir, &damage_marker(shard), 0, &[]).map_err(|e| io_error(&dir, e))?;
                    offer.damaged.insert(shard);
                }
                if found.records.is_empty() {
                    continue;
                }
                let last = self.replay(shard, &path, found.records).await?;
                tracing::info!(%shard, path = %path.display(), %last, "replica rebuilt from its log");
                offer.logs.insert(shard, last);
                break;
            }
        }
        Ok(Some((offer, addresses)))
    }

    /// Rebuilds the replica of `shard` from `records` (the first may be its starting state)
    /// and installs it, with its time and last version: the last version.
    async fn replay(
        self: &Rc<Self>,
        shard: ShardRef,
        path: &Path,
        records: Vec<(u64, u64, Vec<u8>)>,
    ) -> Result<Version, RecoveryError> {
        let fail = |reason: String| RecoveryError::Replay { shard, path: path.display().to_string(), reason };
        // Until the service is attached: tasks a replayed handler spawned call nothing.
        self.replaying.set(true);
        let mut records = records.into_iter().peekable();
        let head_is_state = records.peek().is_some_and(|(_, _, p)| p.first() == Some(&0));
        // The external clients' record, rebuilt as at delivery.
        let mut table = Table::default();
        let (mut replica, mut time, mut last): (Box<dyn Hosted>, u64, Option<Version>) = {
            let types = self.types.borrow();
            let t = types.get(&shard.subgroup).expect("checked by the caller");
            if head_is_state {
                let (version, _, payload) = records.next().expect("peeked");
                let (time, t_sessions, state) = unframe_state(&payload[1..]).map_err(fail)?;
                table = t_sessions;
                let mut archive = AlignedVec::<16>::with_capacity(state.len());
                archive.extend_from_slice(state);
                let replica = (t.restore)(&archive).map_err(|e| fail(format!("its state: {e}")))?;
                (replica, time, Some(Version::from_u64(version)))
            } else {
                ((t.make)(), 0, None)
            }
        };
        let mut bytes = AlignedVec::<16>::new();
        for (version, hlc, payload) in records {
            bytes.clear();
            bytes.extend_from_slice(&payload);
            let (h, args) = Header::read(&bytes).map_err(|e| fail(format!("the record of version {version}: {e}")))?;
            (time, last) = (hlc, Some(Version::from_u64(version)));
            let (client, args) = if h.flags & FLAG_SESSION == 0 {
                (None, args)
            } else {
                let Some((prefix, client, args)) = Prefix::read(args) else { continue };
                if table.deliver(&prefix, Version::from_u64(version)) != Seen::Fresh {
                    continue;
                }
                (client, args)
            };
            // As at delivery: the version's time travels in the header's version field.
            let header = Header { version: Version::from_u64(hlc), ..h };
            let context = call_context(&header, Some(Version::from_u64(version)), client.map(Rc::from));
            // A handler's error is its answer to the call, the same as the first time.
            self.replay_calls.set(0);
            let result = match with_context(context.clone(), || replica.apply(h.method, args)) {
                Applied::Now(r) => r,
                Applied::Later(f) => InContext { context, future: f }.await,
            };
            if h.flags & FLAG_SESSION != 0 {
                let v = Version::from_u64(version);
                table.answered(v, &session_reply(v, &result));
            }
            if self.replay_calls.get() > 0 {
                return Err(fail(format!(
                    "the handler of version {} made a call: what it did with the reply cannot be replayed",
                    Version::from_u64(version)
                )));
            }
        }
        let last = last.expect("at least one record");
        self.sessions.borrow_mut().insert(shard, table);
        // Tasks the handlers spawned take their first step now, while calls are refused.
        crate::runtime::yield_now().await;
        self.replicas.borrow_mut().entry(shard).or_default().replica = Some(replica);
        self.times.borrow_mut().insert(shard, time);
        self.delivered.borrow_mut().insert(shard, last);
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DeliveryMode, NodeId, ShardLayout};

    #[test]
    fn log_names_round_trip_and_others_are_not_logs() {
        let s = ShardRef { subgroup: SubgroupId(3), shard: ShardIndex(12) };
        assert_eq!(parse_log_name(&log_name(s, ViewId(40))), Some((s, ViewId(40))));
        for other in [
            "view",
            "view.new",
            "shard-1-2.log",
            "shard-1-2-v.log",
            "shard-1-2-3.log",
            "shard-1-2-v3-4.log",
            "shard--2-v3.log",
            "shard-+1-2-v3.log",
            "shard-1-2-v3.log.tmp",
            "shard-70000-2-v3.log",
        ] {
            assert_eq!(parse_log_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_member_without_a_saved_view_offers_the_views_it_acknowledged() {
        let dir = std::env::temp_dir().join(format!("derecho-no-saved-view-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let service = super::super::Service::new();
        service.persist_to(&dir).unwrap();
        let shard = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
        crate::Builder::new().build().unwrap().block_on(async {
            assert_eq!(service.inner.recover().await.unwrap(), None, "a new member offers nothing");
            // It joined in view 3 (its log's state not durable yet) and acknowledged view 4.
            std::fs::write(dir.join(log_name(shard, ViewId(3))), b"").unwrap();
            save_proposals(&dir, &[(ViewId(4), vec![NodeId(1), NodeId(2)])]).unwrap();
            let (offer, _) = service.inner.recover().await.unwrap().expect("an offer of the view acknowledged");
            assert!(offer.saved.members.is_empty() && offer.logs.is_empty(), "{offer:?}");
            assert_eq!(offer.proposed, vec![(ViewId(4), vec![NodeId(1), NodeId(2)])]);
            assert!(dir.join(format!("orphan-{}", log_name(shard, ViewId(3)))).exists(), "the log moved aside");
            // Started afresh, it forgets them.
            forget_proposals(&dir).unwrap();
            assert_eq!(service.inner.recover().await.unwrap(), None, "stale acknowledged views offered");
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_saved_view_reads_back_and_damage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("derecho-saved-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load_view(&dir).unwrap().is_none());
        let view = View {
            id: ViewId(9),
            members: vec![NodeId(1), NodeId(2)],
            shards: vec![ShardLayout {
                id: ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) },
                members: vec![NodeId(1), NodeId(2)],
                senders: vec![NodeId(1)],
                mode: DeliveryMode::Ordered,
            }],
        };
        let addresses = vec![(NodeId(1), "127.0.0.1:1".to_string()), (NodeId(2), "127.0.0.1:2".to_string())];
        save_view(&dir, &view, &addresses).unwrap();
        assert_eq!(load_view(&dir).unwrap(), Some((view, addresses)));
        let path = dir.join(SAVED_VIEW);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(load_view(&dir), Err(RecoveryError::SavedView { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
