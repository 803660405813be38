//! Exactly-once ordered calls of external clients (PROTOCOLS §6).
//!
//! A client's ordered call is multicast with a prefix: the client's id, the call's number, the
//! lowest number among the client's calls not yet answered, and whether this is a retry; then,
//! if the client connected with TLS, its identity as the relaying member checked it (so every
//! replica's handler sees the same [`crate::context::CallContext::client`]). Every
//! replica keeps, per shard, a [`Table`] of each client's calls from that lowest number on, with
//! the version each was applied at and its reply. It is updated at delivery, in the shard's
//! order, so it is the same at every replica; it travels with the state to joiners and is
//! rebuilt from the log on restart. A call delivered again (a retry through another member after
//! a lost reply, or a relay that failed after multicasting it) is not applied: the relay answers
//! with the first reply.
//!
//! Bounded: at most [`CLIENTS_MAX`] clients per shard (the one whose last call is oldest is
//! forgotten first) and [`CALLS_MAX`] calls per client. Once a client was forgotten, a retry
//! from a client the table does not know is refused ([`Seen::Expired`]): whether its first copy
//! was applied is unknown.

use std::collections::BTreeMap;

use rkyv::util::AlignedVec;

use super::replicated::HandlerError;
use super::service::{ServiceInner, SessionKey, external_error};
use super::wire::RemoteKind;
use crate::protocol::{NodeId, ShardRef, Version};

/// Clients remembered per shard.
pub(super) const CLIENTS_MAX: usize = 10_000;
/// Calls remembered per client (from its lowest unanswered one; the client keeps at most
/// `derecho_client`'s 1024 ordered calls outstanding, far fewer).
pub(super) const CALLS_MAX: usize = 4096;
/// The prefix of a client's ordered call, before its arguments (16-byte multiple: the
/// arguments stay aligned).
pub(super) const PREFIX_LEN: usize = 32;

/// The prefix flag: the client sent this call before.
const PREFIX_RETRY: u64 = 1;
/// The prefix flag: the client's identity follows the prefix (a length byte, the name, zeros
/// to a 16-byte multiple). Only the relaying member sets it; a client's request carrying it is
/// refused.
const PREFIX_IDENTITY: u64 = 2;
/// The longest identity carried (a DNS name has at most 253 bytes).
pub(super) const IDENTITY_LEN_MAX: usize = 255;

/// The bytes an identity takes after the prefix.
pub(super) fn identity_block_len(identity: Option<&str>) -> usize {
    identity.map_or(0, |i| (1 + i.len()).div_ceil(16) * 16)
}

/// Who made a call, and which of its calls it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Prefix {
    pub(super) client: u64,
    pub(super) seq: u64,
    pub(super) answered_below: u64,
    pub(super) retry: bool,
}

impl Prefix {
    /// Writes the prefix without an identity into `out` (`PREFIX_LEN` bytes).
    pub(super) fn write(&self, out: &mut [u8]) {
        self.write_with(None, out);
    }

    /// Writes the prefix and `identity` into `out`: `PREFIX_LEN` bytes and
    /// [`identity_block_len`]. The identity is at most [`IDENTITY_LEN_MAX`] bytes.
    pub(super) fn write_with(&self, identity: Option<&str>, out: &mut [u8]) {
        assert_eq!(out.len(), PREFIX_LEN + identity_block_len(identity), "the prefix's room");
        out[0..8].copy_from_slice(&self.client.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.answered_below.to_le_bytes());
        let mut flags = if self.retry { PREFIX_RETRY } else { 0 };
        if let Some(i) = identity {
            assert!(i.len() <= IDENTITY_LEN_MAX, "an identity of {} bytes", i.len());
            flags |= PREFIX_IDENTITY;
            out[PREFIX_LEN] = i.len() as u8;
            out[PREFIX_LEN + 1..PREFIX_LEN + 1 + i.len()].copy_from_slice(i.as_bytes());
            out[PREFIX_LEN + 1 + i.len()..].fill(0);
        }
        out[24..32].copy_from_slice(&flags.to_le_bytes());
    }

    /// The prefix, the identity it carries, and the arguments behind them; `None` if
    /// malformed.
    pub(super) fn read(body: &[u8]) -> Option<(Self, Option<&str>, &[u8])> {
        if body.len() < PREFIX_LEN {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let flags = w(24);
        if flags & !(PREFIX_RETRY | PREFIX_IDENTITY) != 0 {
            return None;
        }
        let p = Self { client: w(0), seq: w(8), answered_below: w(16), retry: flags & PREFIX_RETRY != 0 };
        let rest = &body[PREFIX_LEN..];
        if flags & PREFIX_IDENTITY == 0 {
            return Some((p, None, rest));
        }
        let len = usize::from(*rest.first()?);
        let name = std::str::from_utf8(rest.get(1..1 + len)?).ok()?;
        let block = identity_block_len(Some(name));
        Some((p, Some(name), rest.get(block..)?))
    }
}

/// What a delivered call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// New: apply it.
    Fresh,
    /// Applied before (at `version`): do not apply it again.
    Duplicate(Version),
    /// A retry the table cannot judge: refuse it.
    Expired,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Client {
    /// The version of its last call delivered (the least recent client is forgotten first).
    last: Version,
    /// The highest `answered_below` it sent: every call below was answered, and a late copy
    /// of one is refused, never applied.
    floor: u64,
    /// Its calls from its lowest unanswered one on: the version applied at, the reply once
    /// known (a status byte, then the version and the archived reply, or the error).
    calls: BTreeMap<u64, (Version, Option<Vec<u8>>)>,
}

/// One shard's record of its external clients' calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Table {
    clients: BTreeMap<u64, Client>,
    /// Some client was forgotten (the bound): a retry from a client the table does not know may
    /// then be a copy of a call applied before. Until then such a retry is new (every call
    /// delivered is recorded).
    forgot: bool,
    /// Calls applied and not answered yet, by version.
    running: BTreeMap<Version, (u64, u64)>,
}

impl Table {
    /// Records a call delivered at `version` and says what to do with it.
    pub(super) fn deliver(&mut self, p: &Prefix, version: Version) -> Seen {
        if !self.clients.contains_key(&p.client) {
            if p.retry && self.forgot {
                return Seen::Expired;
            }
            if self.clients.len() >= CLIENTS_MAX {
                let oldest = self.clients.iter().min_by_key(|(id, c)| (c.last, **id)).map(|(id, _)| *id);
                if let Some(id) = oldest {
                    self.clients.remove(&id);
                    self.forgot = true;
                }
            }
        }
        let c = self.clients.entry(p.client).or_default();
        c.last = version;
        // What the client has, it will not ask again (a late copy carries an older floor).
        if p.answered_below > c.floor {
            c.floor = p.answered_below;
            c.calls = c.calls.split_off(&c.floor);
        }
        if p.seq < c.floor {
            return Seen::Expired;
        }
        if let Some((v, _)) = c.calls.get(&p.seq) {
            return Seen::Duplicate(*v);
        }
        if c.calls.len() >= CALLS_MAX {
            // The oldest is forgotten: a later copy of it (or of anything below) is refused,
            // never applied again.
            if let Some((old, _)) = c.calls.pop_first() {
                c.floor = c.floor.max(old + 1);
                self.running.retain(|_, (client, seq)| !(*client == p.client && *seq == old));
            }
        }
        c.calls.insert(p.seq, (version, None));
        self.running.insert(version, (p.client, p.seq));
        Seen::Fresh
    }

    /// The call applied at `version` was answered with `reply`; returns its client and number,
    /// and whether the reply is kept (the client may have moved past the call meanwhile).
    pub(super) fn answered(&mut self, version: Version, reply: &[u8]) -> Option<(u64, u64, bool)> {
        let (client, seq) = self.running.remove(&version)?;
        let entry = self.clients.get_mut(&client).and_then(|c| c.calls.get_mut(&seq));
        let kept = entry.is_some();
        if let Some(entry) = entry {
            entry.1 = Some(reply.to_vec());
        }
        Some((client, seq, kept))
    }

    /// The reply to a client's call, once known.
    pub(super) fn reply(&self, client: u64, seq: u64) -> Option<&[u8]> {
        self.clients.get(&client)?.calls.get(&seq)?.1.as_deref()
    }

    /// Fills the replies this copy lacks from `later` (the same table further on).
    pub(super) fn fill_from(&mut self, later: &Table) {
        for (id, c) in &mut self.clients {
            for (seq, entry) in &mut c.calls {
                if entry.1.is_none() {
                    entry.1 = later.reply(*id, *seq).map(<[u8]>::to_vec);
                }
            }
        }
        self.running.retain(|_, (client, seq)| {
            self.clients.get(client).and_then(|c| c.calls.get(seq)).is_some_and(|e| e.1.is_none())
        });
    }

    /// The table as bytes (little-endian: whether a client was forgotten (0 or 1), client
    /// count; per client its id, last version,
    /// floor and call count; per call its number, version, reply length (u32::MAX: none) and reply).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u64::from(self.forgot).to_le_bytes());
        out.extend_from_slice(&(self.clients.len() as u64).to_le_bytes());
        for (id, c) in &self.clients {
            for w in [*id, c.last.as_u64(), c.floor, c.calls.len() as u64] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            for (seq, (v, reply)) in &c.calls {
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&v.as_u64().to_le_bytes());
                match reply {
                    Some(r) => {
                        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                        out.extend_from_slice(r);
                    }
                    None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
                }
            }
        }
        out
    }

    /// Reads [`Table::encode`]'s bytes.
    ///
    /// # Errors
    ///
    /// What is wrong with them.
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        struct R<'a>(&'a [u8], usize);
        impl<'a> R<'a> {
            fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
                let s = self.1.checked_add(n).and_then(|end| self.0.get(self.1..end));
                let s = s.ok_or_else(|| format!("the clients' record is truncated at byte {}", self.1))?;
                self.1 += n;
                Ok(s)
            }
            fn u64(&mut self) -> Result<u64, String> {
                Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
            }
        }
        let mut r = R(bytes, 0);
        let forgot = match r.u64()? {
            0 => false,
            1 => true,
            v => return Err(format!("the clients' record says {v} where 0 or 1 belongs")),
        };
        let mut t = Table { forgot, ..Table::default() };
        for _ in 0..r.u64()? {
            let (id, last, floor, calls) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let mut c = Client { last: Version::from_u64(last), floor, calls: BTreeMap::new() };
            for _ in 0..calls {
                let (seq, v) = (r.u64()?, Version::from_u64(r.u64()?));
                let len = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                let reply = if len == u32::MAX { None } else { Some(r.take(len as usize)?.to_vec()) };
                if reply.is_none() {
                    t.running.insert(v, (id, seq));
                }
                c.calls.insert(seq, (v, reply));
            }
            t.clients.insert(id, c);
        }
        if r.1 != bytes.len() {
            return Err(format!("{} bytes after the clients' record", bytes.len() - r.1));
        }
        Ok(t)
    }
}

/// The reply a client gets for a call applied at `version`: 1, the version, the archived
/// reply; or the error (0, its kind, its text).
pub(super) fn session_reply(version: Version, result: &Result<AlignedVec, HandlerError>) -> Vec<u8> {
    match result {
        Ok(bytes) => {
            let mut v = Vec::with_capacity(9 + bytes.len());
            v.push(1);
            v.extend_from_slice(&version.as_u64().to_le_bytes());
            v.extend_from_slice(bytes);
            v
        }
        Err(e) => external_error(e.kind(), &e.to_string()),
    }
}

impl ServiceInner {
    /// A call of an external client delivered at `version` (its body: the prefix, then the
    /// arguments): recorded; returns the client's identity and the arguments if it is to be
    /// applied, `None` if not.
    pub(super) fn session_call<'a>(
        &self,
        shard: ShardRef,
        version: Version,
        caller: NodeId,
        body: &'a [u8],
    ) -> Option<(Option<&'a str>, &'a [u8])> {
        let Some((prefix, identity, args)) = Prefix::read(body) else {
            tracing::warn!(%caller, %shard, "a client's call with a malformed prefix: ignored");
            return None;
        };
        let seen = self.sessions.borrow_mut().entry(shard).or_default().deliver(&prefix, version);
        let key = (shard, prefix.client, prefix.seq);
        match seen {
            Seen::Fresh => return Some((identity, args)),
            Seen::Duplicate(_) => {}
            Seen::Expired => {
                if Some(caller) == self.me.get() {
                    let why = "the call was sent again, but the shard no longer remembers the client's calls: \
                               whether it was applied is unknown";
                    self.session_refusals.borrow_mut().insert(key, external_error(RemoteKind::SessionExpired, why));
                }
            }
        }
        self.wake_session(key);
        None
    }

    /// A client's call applied at `version` ended with `result`: its reply is recorded and its
    /// relay woken.
    pub(super) fn session_answered(
        &self,
        shard: ShardRef,
        version: Version,
        result: &Result<AlignedVec, HandlerError>,
    ) {
        let reply = session_reply(version, result);
        let key = self.sessions.borrow_mut().get_mut(&shard).and_then(|t| t.answered(version, &reply));
        if let Some((client, seq, kept)) = key {
            if !kept && self.session_waiters.borrow().contains_key(&(shard, client, seq)) {
                // The client moved past the call while it ran: its relay still answers.
                self.session_refusals.borrow_mut().insert((shard, client, seq), reply);
            }
            self.wake_session((shard, client, seq));
        }
    }

    fn wake_session(&self, key: SessionKey) {
        let waiters = self.session_waiters.borrow_mut().remove(&key);
        for w in waiters.into_iter().flatten() {
            w.wake();
        }
    }

    /// Wakes every relay (a view changed: their calls may have failed).
    pub(super) fn wake_sessions(&self) {
        let all = std::mem::take(&mut *self.session_waiters.borrow_mut());
        for w in all.into_values().flatten() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(client: u64, seq: u64, answered_below: u64, retry: bool) -> Prefix {
        Prefix { client, seq, answered_below, retry }
    }

    fn v(n: u64) -> Version {
        Version::from_u64(n)
    }

    #[test]
    fn a_call_delivered_twice_is_applied_once_and_answered_with_the_first_reply() {
        let mut t = Table::default();
        assert_eq!(t.deliver(&p(7, 1, 1, false), v(10)), Seen::Fresh);
        assert_eq!(t.deliver(&p(7, 2, 1, false), v(11)), Seen::Fresh);
        // The copy of call 1 arrives (a retry through another member) before its reply.
        assert_eq!(t.deliver(&p(7, 1, 1, true), v(12)), Seen::Duplicate(v(10)));
        assert_eq!(t.reply(7, 1), None);
        assert_eq!(t.answered(v(10), b"one"), Some((7, 1, true)));
        assert_eq!(t.answered(v(12), b"never"), None, "a duplicate is not running");
        assert_eq!(t.reply(7, 1), Some(&b"one"[..]));
        // The client has reply 1: it is forgotten; a copy of it now is refused.
        assert_eq!(t.deliver(&p(7, 3, 2, false), v(13)), Seen::Fresh);
        assert_eq!(t.reply(7, 1), None);
        assert_eq!(t.deliver(&p(7, 1, 1, true), v(14)), Seen::Expired);
        assert_eq!(t.deliver(&p(7, 1, 1, false), v(14)), Seen::Expired, "a late first copy");
        assert_eq!(t.deliver(&p(7, 3, 1, true), v(14)), Seen::Duplicate(v(13)), "an older floor");
        // A retry from a client the table does not know: new, as long as no client was forgotten
        // (every call delivered is recorded).
        assert_eq!(t.deliver(&p(8, 5, 5, true), v(15)), Seen::Fresh);
        t.forgot = true;
        assert_eq!(t.deliver(&p(9, 5, 5, true), v(16)), Seen::Expired);
        assert_eq!(t.deliver(&p(9, 5, 5, false), v(16)), Seen::Fresh);
    }

    #[test]
    fn the_table_round_trips_and_a_copy_fills_in_later_replies() {
        let mut t = Table::default();
        t.deliver(&p(1, 1, 1, false), v(1));
        t.deliver(&p(2, 1, 1, false), v(2));
        t.answered(v(1), b"r1");
        let copy = t.clone();
        let bytes = copy.encode();
        assert_eq!(Table::decode(&bytes).unwrap(), copy);
        for n in 0..bytes.len() {
            assert!(Table::decode(&bytes[..n]).is_err(), "{n}");
        }
        t.answered(v(2), b"r2");
        let mut filled = Table::decode(&bytes).unwrap();
        filled.fill_from(&t);
        assert_eq!(filled.reply(2, 1), Some(&b"r2"[..]));
        assert!(filled.running.is_empty());
    }

    #[test]
    fn a_call_forgotten_for_the_bound_is_refused_not_applied_again() {
        let mut t = Table::default();
        for seq in 1..=CALLS_MAX as u64 + 1 {
            assert_eq!(t.deliver(&p(7, seq, 1, false), v(seq)), Seen::Fresh);
        }
        // Call 1 was forgotten (it is still running): a copy of it is refused, and its reply
        // is not kept.
        assert_eq!(t.deliver(&p(7, 1, 1, true), v(1 << 20)), Seen::Expired);
        assert_eq!(t.answered(v(1), b"late"), None, "no longer running");
        assert_eq!(t.answered(v(2), b"two"), Some((7, 2, true)));
    }

    #[test]
    fn clients_beyond_the_bound_forget_the_least_recent() {
        let mut t = Table::default();
        for c in 0..CLIENTS_MAX as u64 + 1 {
            t.deliver(&p(c + 100, 1, 1, false), v(c + 1));
        }
        assert_eq!(t.clients.len(), CLIENTS_MAX);
        assert!(!t.clients.contains_key(&100));
        assert!(t.forgot);
        // The forgotten client's retry cannot be judged.
        assert_eq!(t.deliver(&p(100, 2, 1, true), v(1 << 20)), Seen::Expired);
        let mut prefix = [0u8; PREFIX_LEN];
        p(3, 4, 2, true).write(&mut prefix);
        assert_eq!(Prefix::read(&prefix), Some((p(3, 4, 2, true), None, &[][..])));
        prefix[24] = 4;
        assert_eq!(Prefix::read(&prefix), None);
    }

    #[test]
    fn an_identity_travels_after_the_prefix_and_keeps_the_arguments_aligned() {
        for name in ["a", "alice.example", &"x".repeat(15), &"y".repeat(IDENTITY_LEN_MAX)] {
            let room = PREFIX_LEN + identity_block_len(Some(name));
            assert_eq!(room % 16, 0, "{name}: the arguments stay aligned");
            let mut body = vec![0xAAu8; room];
            body.extend_from_slice(b"args");
            p(3, 4, 2, false).write_with(Some(name), &mut body[..room]);
            assert_eq!(Prefix::read(&body), Some((p(3, 4, 2, false), Some(name), &b"args"[..])), "{name}");
            // Cut anywhere inside the identity: malformed, never a panic.
            for cut in PREFIX_LEN..room {
                let got = Prefix::read(&body[..cut]);
                assert!(got.is_none(), "{name} cut at {cut}: {got:?}");
            }
        }
        // A name that is not UTF-8, or longer than what follows: malformed.
        let mut body = vec![0u8; PREFIX_LEN + 16];
        p(1, 1, 1, false).write_with(Some("bob"), &mut body);
        body[PREFIX_LEN + 1] = 0xFF;
        assert_eq!(Prefix::read(&body), None);
        body[PREFIX_LEN] = 200;
        assert_eq!(Prefix::read(&body), None);
    }
}
