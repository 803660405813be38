//! Simulated disks (PROTOCOLS §4): each member logs the versions it delivers and syncs them in
//! seeded rounds, reporting each durable version to its member; it keeps the last view its
//! member saved and the proposals it saved. A crash keeps a seeded prefix of what was not
//! synced (the last record perhaps torn), a planned bit flip damages a record, and a restart
//! rebuilds the member from what its disk holds and offers it to a restart leader, as the
//! service's recovery does.

use std::collections::{BTreeMap, BTreeSet};

use super::member::SimMember;
use super::{Ev, GroupSim, Log, MemberEvent, Plan, Stream, address};
use crate::protocol::member::{Input, Member};
use crate::protocol::restart::Offer;
use crate::protocol::{NodeId, ShardRef, Version, View, ViewId};

/// A member's simulated disk.
#[derive(Debug, Default)]
pub(super) struct Disk {
    /// The last version appended and durable, per shard.
    appended: BTreeMap<ShardRef, Version>,
    durable: BTreeMap<ShardRef, Version>,
    /// What the sync under way covers.
    in_flight: Option<BTreeMap<ShardRef, Version>>,
    /// The global frontier last seen, per view and shard.
    global_seen: BTreeMap<(ViewId, ShardRef), Version>,
    /// Per shard, its log files, oldest first (a replica that starts from a state starts a new
    /// one, as the service does).
    files: BTreeMap<ShardRef, Vec<LogFile>>,
    /// The last view saved, with its members' addresses.
    saved: Option<(View, Vec<(NodeId, String)>)>,
    /// Views proposed or acknowledged after the saved one, on the disk.
    proposals: Vec<(ViewId, Vec<NodeId>)>,
    /// Proposals being saved (on the disk once their save completes).
    pub(super) saving: Vec<(ViewId, Vec<NodeId>)>,
    /// Shards whose log a corrupt record cut at the last restart.
    damaged: BTreeSet<ShardRef>,
}

/// One simulated log file: its records in order, each with its version.
#[derive(Debug, Default)]
struct LogFile {
    records: Vec<(Version, Record)>,
    /// Records from this index on fail their checksum.
    corrupt_at: Option<usize>,
}

#[derive(Debug, Clone)]
enum Record {
    /// The state the replica started from.
    State(Log),
    /// A delivered message.
    Entry(NodeId, u64),
}

impl Disk {
    /// Appends a delivered message of `shard` at `version`.
    pub(super) fn append(&mut self, shard: ShardRef, version: Version, sender: NodeId, seq: u64) {
        self.appended.insert(shard, version);
        let files = self.files.entry(shard).or_default();
        if files.is_empty() {
            files.push(LogFile::default());
        }
        files.last_mut().expect("a file").records.push((version, Record::Entry(sender, seq)));
    }

    /// A replica of `shard` starts from `log`, a state received for `view`: the first record of
    /// a new log file, at the version just before the view's first (as the service does).
    pub(super) fn start_from_state(&mut self, shard: ShardRef, view: ViewId, log: Log) {
        let before = Version::from_u64(Version::new(view, 0).as_u64().saturating_sub(1));
        self.appended.insert(shard, before);
        let file = LogFile { records: vec![(before, Record::State(log))], corrupt_at: None };
        self.files.entry(shard).or_default().push(file);
    }

    /// The member saved `view` (atomically, at once).
    pub(super) fn save_view(&mut self, view: View, addresses: Vec<(NodeId, String)>) {
        self.proposals.retain(|(id, _)| *id > view.id);
        self.saved = Some((view, addresses));
    }

    /// The proposal of `view` with `members` being saved is on the disk.
    pub(super) fn proposal_saved(&mut self, view: ViewId, members: &[NodeId]) {
        let p = (view, members.to_vec());
        self.saving.retain(|s| *s != p);
        if !self.proposals.contains(&p) {
            self.proposals.push(p);
        }
    }
}

/// A shard's log as a state: `(sender, seq)` pairs, 12 bytes each.
pub(super) fn encode_log(log: &[(NodeId, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 * log.len());
    for (n, s) in log {
        v.extend_from_slice(&n.0.to_le_bytes());
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// The log [`encode_log`] wrote.
pub(super) fn decode_log(bytes: &[u8]) -> Result<Vec<(NodeId, u64)>, &'static str> {
    if !bytes.len().is_multiple_of(12) {
        return Err("a state whose length is not a multiple of 12");
    }
    Ok(bytes
        .chunks_exact(12)
        .map(|c| {
            let n = u32::from_le_bytes(c[..4].try_into().expect("4 bytes"));
            (NodeId(n), u64::from_le_bytes(c[4..].try_into().expect("8 bytes")))
        })
        .collect())
}

impl GroupSim {
    /// Starts a sync round at `id` if persistence is simulated, none is under way and something
    /// is not durable yet.
    pub(super) fn maybe_sync(&mut self, id: NodeId) {
        let Some(range) = self.config.sync_ns.clone() else { return };
        let m = self.members.get_mut(&id).expect("a member");
        if !m.alive || m.disk.in_flight.is_some() || m.disk.appended == m.disk.durable {
            return;
        }
        m.disk.in_flight = Some(m.disk.appended.clone());
        let at = self.now.plus_ns(self.disk_rng.range(range));
        self.schedule(at, Ev::SyncDone { node: id });
    }

    /// A sync round ends: its versions are durable and reported, or the planned failure stops
    /// the member.
    pub(super) fn sync_done(&mut self, id: NodeId) {
        let now = self.now;
        // The first sync at or after the planned time fails, once (a member restarted later
        // has its disk back).
        let planned = self.config.plan.iter().enumerate().find(|(i, p)| {
            matches!(p, Plan::SyncFails { node, at } if *node == id && *at <= now) && !self.fired.contains(i)
        });
        let fails = planned.map(|(i, _)| i);
        let m = self.members.get_mut(&id).expect("a member");
        let Some(covered) = m.disk.in_flight.take() else { return };
        if !m.alive {
            return;
        }
        if let Some(i) = fails {
            self.fired.insert(i);
            self.trace.record(format_args!("t={} sync fails n{}", now.0, id.0));
            self.record(id, MemberEvent::StorageFailed);
            self.crash(id, false);
            return;
        }
        let mut inputs = Vec::new();
        for (shard, version) in covered {
            m.disk.durable.insert(shard, version);
            inputs.push(Input::Persisted { shard, version });
            self.trace.record(format_args!("t={} durable n{} {shard} {version}", now.0, id.0));
            self.events.push(super::Event {
                at: now,
                step: self.steps,
                node: id,
                what: MemberEvent::Persisted { shard, version },
            });
        }
        self.run_member(id, inputs);
        self.maybe_sync(id);
    }

    /// Records growth of `id`'s global persistence frontiers.
    pub(super) fn observe_global(&mut self, id: NodeId) {
        if self.config.sync_ns.is_none() {
            return;
        }
        let m = self.members.get_mut(&id).expect("a member");
        let Some(node) = m.member.node() else { return };
        let view = node.view().id;
        let mut grown = Vec::new();
        for s in &node.view().shards {
            if let Some(v) = node.persisted_everywhere(s.id)
                && m.disk.global_seen.get(&(view, s.id)).is_none_or(|&seen| seen < v)
            {
                m.disk.global_seen.insert((view, s.id), v);
                grown.push((s.id, v));
            }
        }
        for (shard, version) in grown {
            self.record(id, MemberEvent::GlobalPersisted { view, shard, version });
        }
    }

    /// `torn`: the first unsynced record lost stays on disk, failing its checksum.
    pub(super) fn crash(&mut self, node: NodeId, torn: bool) {
        let Some(m) = self.members.get_mut(&node) else { return };
        if !m.alive {
            return;
        }
        m.alive = false;
        // What was written but not synced may or may not be on the disk: a seeded prefix of
        // it is, the last record perhaps torn (recovery cuts a torn record).
        for (shard, files) in &mut m.disk.files {
            let durable = m.disk.durable.get(shard).copied();
            for f in files.iter_mut() {
                let synced = f.records.iter().take_while(|(v, _)| durable.is_some_and(|d| *v <= d)).count();
                let kept = synced + self.loss_rng.below((f.records.len() - synced) as u64 + 1) as usize;
                if torn && kept < f.records.len() {
                    f.records.truncate(kept + 1);
                    f.corrupt_at = Some(f.corrupt_at.map_or(kept, |c| c.min(kept)));
                } else {
                    f.records.truncate(kept);
                }
            }
        }
        m.disk.in_flight = None;
        // A proposal whose save had not completed is not on the disk (and its acknowledgement
        // never left).
        m.disk.saving.clear();
        // A disk failure planned before the crash that no sync met is over: a restarted member
        // has its disk back.
        let now = self.now;
        for (i, p) in self.config.plan.iter().enumerate() {
            if matches!(p, Plan::SyncFails { node: n, at } if *n == node && *at <= now) {
                self.fired.insert(i);
            }
        }
        self.trace.record(format_args!("t={} crash n{}", self.now.0, node.0));
        self.record(node, MemberEvent::Crashed);
    }

    /// A bit flip in one record of the newest non-empty log of one of `id`'s shards.
    pub(super) fn corrupt(&mut self, id: NodeId) {
        let Some(m) = self.members.get_mut(&id) else { return };
        let candidates: Vec<ShardRef> = m
            .disk
            .files
            .iter()
            .filter(|(_, files)| files.iter().any(|f| !f.records.is_empty()))
            .map(|(s, _)| *s)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let shard = candidates[self.loss_rng.below(candidates.len() as u64) as usize];
        let f = m.disk.files.get_mut(&shard).and_then(|fs| fs.iter_mut().rev().find(|f| !f.records.is_empty()));
        let f = f.expect("a non-empty log");
        let at = self.loss_rng.below(f.records.len() as u64) as usize;
        f.corrupt_at = Some(f.corrupt_at.map_or(at, |c| c.min(at)));
        self.trace.record(format_args!("t={} corrupt n{} {shard} record {at}", self.now.0, id.0));
    }

    /// Restarts a crashed member from its disk (PROTOCOLS §4.1), as the service's recovery
    /// does: each shard's newest log that holds a valid record rebuilds its replica, and the
    /// member offers what it recovered to `leader` (itself: it looks for a running group, then
    /// leads the restart).
    pub(super) fn restart(&mut self, id: NodeId, leader: NodeId) {
        let now = self.now;
        let config = self.member_config(id);
        let Some(m) = self.members.get_mut(&id) else { return };
        if m.alive || self.config.sync_ns.is_none() {
            return;
        }
        let mut disk = std::mem::take(&mut m.disk);
        let Some((saved, addresses)) = disk.saved.clone() else {
            // It never saved a view (a joiner whose first state was not durable): as the
            // service does without a saved view, it offers only the views it acknowledged; a
            // restart leader counts it as back, holding no log.
            let proposals = std::mem::take(&mut disk.proposals);
            let mut fresh = Disk { proposals: proposals.clone(), ..Disk::default() };
            fresh.saved = None;
            let mut r = SimMember::new(Member::new(config), Stream { done: true, ..Stream::default() });
            r.disk = fresh;
            r.resuming = true;
            r.member.restart(now, Offer::without_saved_view(proposals), Vec::new(), Some(address(leader)));
            *m = r;
            self.trace.record(format_args!("t={} restart n{} without a saved view", now.0, id.0));
            self.record(id, MemberEvent::Restarted { logs: BTreeMap::new(), corrupted: false });
            self.activate(id, None);
            return;
        };
        let mut logs = BTreeMap::new();
        let mut corrupted = false;
        let mut recovered = BTreeMap::new();
        for (shard, files) in &mut disk.files {
            for f in files.iter_mut() {
                if let Some(c) = f.corrupt_at.take()
                    && c < f.records.len()
                {
                    // A record failing its checksum: recovery knows its log is damaged.
                    corrupted = true;
                    disk.damaged.insert(*shard);
                    f.records.truncate(c);
                }
            }
            files.retain(|f| !f.records.is_empty());
            let Some(f) = files.last() else { continue };
            let mut log = Vec::new();
            for (_, r) in &f.records {
                match r {
                    Record::State(l) => log = l.to_vec(),
                    Record::Entry(sender, seq) => log.push((*sender, *seq)),
                }
            }
            let last = f.records.last().expect("non-empty").0;
            logs.insert(*shard, last);
            recovered.insert(*shard, log);
        }
        disk.appended = logs.clone();
        disk.durable = logs.clone();
        disk.global_seen.clear();
        disk.in_flight = None;
        let proposed = disk.proposals.iter().filter(|(v, _)| *v > saved.id).cloned().collect();
        let offer =
            Offer { saved, logs: logs.clone(), damaged: disk.damaged.clone(), proposed, newest_file: ViewId(0) };
        // What it had not sent died with it.
        let sent = m.stream.next_seq;
        let mut r = SimMember::new(
            Member::new(config),
            Stream { done: true, total: sent, next_seq: sent, ..Stream::default() },
        );
        r.disk = disk;
        r.log = recovered;
        r.resuming = true;
        let contact = (id != leader).then(|| address(leader));
        r.member.restart(now, offer, addresses, contact);
        *m = r;
        self.trace.record(format_args!("t={} restart n{} leader n{} logs {logs:?}", now.0, id.0, leader.0));
        self.record(id, MemberEvent::Restarted { logs, corrupted });
        self.activate(id, None);
    }

    /// Records the final state of each shard of a restarted member's first view whose state
    /// is not on its way.
    pub(super) fn resumed(&mut self, id: NodeId, received: Option<ShardRef>) {
        let m = self.members.get_mut(&id).expect("a member");
        if !m.resuming {
            return;
        }
        let Some(node) = m.member.node() else { return };
        let view = node.view().clone();
        let waiting = |s: ShardRef| node.awaiting_state(s) && received != Some(s);
        let done: Vec<(ShardRef, Log)> = view
            .shards
            .iter()
            .filter(|s| s.members.contains(&id) && !waiting(s.id))
            .map(|s| (s.id, m.log.get(&s.id).cloned().unwrap_or_default().into()))
            .collect();
        if view.shards.iter().filter(|s| s.members.contains(&id)).all(|s| !waiting(s.id)) {
            m.resuming = false;
        }
        let judged: Vec<ShardRef> = self
            .events
            .iter()
            .rev()
            .take_while(|e| !(e.node == id && matches!(e.what, MemberEvent::Restarted { .. })))
            .filter_map(|e| match &e.what {
                MemberEvent::Resumed { shard, .. } if e.node == id => Some(*shard),
                _ => None,
            })
            .collect();
        for (shard, log) in done {
            if !judged.contains(&shard) {
                self.record(id, MemberEvent::Resumed { view: view.id, shard, log });
            }
        }
    }
}
