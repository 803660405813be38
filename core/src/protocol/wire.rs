//! The protocol's own messages besides the table, and their checked encoding (PROTOCOLS §7).
//!
//! Three families: *control messages* travel one per connection to a member's listener (a join
//! request and its answers: a refusal or the welcome that carries the joiner's first view; a
//! restart offer; an external client's requests), *view frames* travel on a view's transport (a
//! shard's state for a new member, and the "alive in another view" beat), and the *saved view*
//! and *saved proposals* a persisting member keeps on disk for total restart. Every integer is little-endian; strings and lists carry a `u32`
//! length. Decoding checks every length against the bytes left before allocating, so a lying
//! peer costs at most the bytes it sent, and every value it names is validated by the caller
//! (a view by [`View::validate`] through `Node::join`).

use super::restart::Offer;
use super::{
    DeliveryMode, JoinRefusal, NextView, NodeId, ShardIndex, ShardLayout, ShardRef, StateTransfer, SubgroupId, Version,
    View, ViewId,
};

/// The version of the join handshake; a joiner speaking another is refused with
/// [`Answer::Version`]. 3: an external client's ordered call may carry its TLS identity, and a
/// listener acknowledges a one-shot message over TLS with a close_notify (members of version 2
/// would skip such calls, or count such acknowledgements as failures).
pub const JOIN_VERSION: u16 = 3;

/// A message to a member's listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// A joiner asks to join.
    Join {
        /// Its join-handshake version.
        version: u16,
        /// Its id.
        node: NodeId,
        /// Where its peers reach it (its listener).
        address: String,
        /// A fingerprint of its application (the method tables of its replicated types; 0:
        /// none): members that disagree on it are refused ([`JoinRefusal::AppMismatch`]).
        app: u64,
    },
    /// The answer to a join.
    Answer(Answer),
    /// A member restarting from its logs (PROTOCOLS §4.1) offers itself to the restart leader;
    /// a running group takes it as a [`Control::Join`].
    Restart {
        /// Its join-handshake version.
        version: u16,
        /// Its id.
        node: NodeId,
        /// Where its peers reach it.
        address: String,
        /// Its application's fingerprint, as in [`Control::Join`].
        app: u64,
        /// Its last view and its logs.
        offer: Offer,
        /// Sent by a member restarting without a contact, which would lead the restart if no
        /// group runs (PROTOCOLS §4.1): of two such, the larger id follows the smaller.
        leading: bool,
    },
}

/// What a joiner hears back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Refused by the protocol (redirect to the leader included).
    Refused(JoinRefusal),
    /// The member speaks another join-handshake version.
    Version(u16),
    /// Admitted: the first view of the joiner.
    Welcome(Box<NextView>),
    /// The leader took the request and is admitting the joiner (its welcome comes with the
    /// view that adds it). Delivering it also shows the joiner's listener answers.
    Pending,
}

/// A frame on a view's transport besides the table's pushes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewFrame {
    /// A piece of the state of a shard for a new member, as the application's snapshot made
    /// it: the bytes from `offset` of a state of `total` bytes. A state travels in pieces, in
    /// order, so that no frame is larger than a piece.
    State {
        /// The view it is for.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// Where this piece starts in the state.
        offset: u64,
        /// The state's length.
        total: u64,
        /// The piece.
        body: Vec<u8>,
    },
    /// The sender is alive in view `view` (sent on a previous view's transport while peers may
    /// still be finishing that view).
    Alive {
        /// The sender's current view.
        view: ViewId,
    },
    /// The sender, a source of the state of `shard` for the new members of `view`, cannot
    /// send it (too long, say): they need not wait for its copy.
    StateRefused {
        /// The view it is for.
        view: ViewId,
        /// The shard.
        shard: ShardRef,
        /// Why.
        reason: String,
    },
}

/// The kind byte of an application frame ([`app_frame`]).
pub const APP_FRAME_KIND: u8 = 3;
/// Bytes before an application frame's body: the kind and padding, so that the body keeps the
/// 16-byte alignment of the received frame (rkyv reads archived bytes in place).
pub const APP_FRAME_HEADER_LEN: usize = 16;

/// An application frame on a view's transport: [`APP_FRAME_KIND`], padding, then `body`.
pub fn app_frame(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(APP_FRAME_HEADER_LEN + body.len());
    v.push(APP_FRAME_KIND);
    v.resize(APP_FRAME_HEADER_LEN, 0);
    v.extend_from_slice(body);
    v
}

/// Bytes that are not a well-formed message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct WireError {
    /// What was being read.
    pub what: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("a list of more than 4 G elements"));
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn nodes(&mut self, v: &[NodeId]) {
        self.len(v.len());
        for n in v {
            self.u32(n.0);
        }
    }
    fn shard(&mut self, s: ShardRef) {
        self.u16(s.subgroup.0);
        self.u16(s.shard.0);
    }
    fn view(&mut self, v: &View) {
        self.u32(v.id.0);
        self.nodes(&v.members);
        self.shards(&v.shards);
    }
    fn shards(&mut self, shards: &[ShardLayout]) {
        self.len(shards.len());
        for s in shards {
            self.shard(s.id);
            self.nodes(&s.members);
            self.nodes(&s.senders);
            self.u8(match s.mode {
                DeliveryMode::Ordered => 0,
                DeliveryMode::Unordered => 1,
            });
        }
    }
    fn next_view(&mut self, n: &NextView) {
        self.view(&n.view);
        match &n.inadequate {
            Some(why) => {
                self.u8(1);
                self.str(why);
            }
            None => self.u8(0),
        }
        self.len(n.addresses.len());
        for (node, address) in &n.addresses {
            self.u32(node.0);
            self.str(address);
        }
        self.nodes(&n.joined);
        self.nodes(&n.departed);
        self.len(n.transfers.len());
        for t in &n.transfers {
            self.shard(t.shard);
            self.nodes(&t.from);
            self.nodes(&t.to);
        }
        self.len(n.lost.len());
        for s in &n.lost {
            self.shard(*s);
        }
        self.shards(&n.history);
    }
    fn refusal(&mut self, r: &JoinRefusal) {
        match r {
            JoinRefusal::IdInUse(n) => {
                self.u8(0);
                self.u32(n.0);
            }
            JoinRefusal::NotLeader { leader, address } => {
                self.u8(1);
                self.u32(leader.0);
                self.str(address);
            }
            JoinRefusal::AddressTooLong => self.u8(2),
            JoinRefusal::GroupFull(n) => {
                self.u8(3);
                self.u32(*n);
            }
            JoinRefusal::NotRestarted { view, saved } => {
                self.u8(4);
                self.u32(*view);
                self.u32(*saved);
            }
            JoinRefusal::NotRunning => self.u8(5),
            JoinRefusal::AppMismatch { ours, theirs } => {
                self.u8(6);
                self.u64(*ours);
                self.u64(*theirs);
            }
            JoinRefusal::NotAllowed(n) => {
                self.u8(7);
                self.u32(n.0);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: &'static str) -> WireError {
        WireError { what: self.what, reason }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(self.err("shorter than its fields"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A list length whose elements take at least `each` bytes: never more than the bytes left.
    fn len(&mut self, each: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(each.max(1)) > self.bytes.len() {
            return Err(self.err("a length longer than the message"));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = self.len(1)?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("a string that is not UTF-8"))
    }
    fn nodes(&mut self) -> Result<Vec<NodeId>, WireError> {
        let n = self.len(4)?;
        (0..n).map(|_| self.u32().map(NodeId)).collect()
    }
    fn shard(&mut self) -> Result<ShardRef, WireError> {
        Ok(ShardRef { subgroup: SubgroupId(self.u16()?), shard: ShardIndex(self.u16()?) })
    }
    fn view(&mut self) -> Result<View, WireError> {
        let id = ViewId(self.u32()?);
        let members = self.nodes()?;
        let shards = self.shards()?;
        Ok(View { id, members, shards })
    }
    fn shards(&mut self) -> Result<Vec<ShardLayout>, WireError> {
        let n = self.len(17)?;
        let mut shards = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.shard()?;
            let members = self.nodes()?;
            let senders = self.nodes()?;
            let mode = match self.u8()? {
                0 => DeliveryMode::Ordered,
                1 => DeliveryMode::Unordered,
                _ => return Err(self.err("an unknown delivery mode")),
            };
            shards.push(ShardLayout { id, members, senders, mode });
        }
        Ok(shards)
    }
    fn next_view(&mut self) -> Result<NextView, WireError> {
        let view = self.view()?;
        let inadequate = match self.u8()? {
            0 => None,
            1 => Some(self.str()?),
            _ => return Err(self.err("a bad flag")),
        };
        let n = self.len(8)?;
        let mut addresses = Vec::with_capacity(n);
        for _ in 0..n {
            addresses.push((NodeId(self.u32()?), self.str()?));
        }
        let joined = self.nodes()?;
        let departed = self.nodes()?;
        let n = self.len(12)?;
        let mut transfers = Vec::with_capacity(n);
        for _ in 0..n {
            transfers.push(StateTransfer { shard: self.shard()?, from: self.nodes()?, to: self.nodes()? });
        }
        let n = self.len(4)?;
        let mut lost = Vec::with_capacity(n);
        for _ in 0..n {
            lost.push(self.shard()?);
        }
        let history = self.shards()?;
        Ok(NextView { view, inadequate, addresses, joined, departed, transfers, lost, history })
    }
    fn refusal(&mut self) -> Result<JoinRefusal, WireError> {
        Ok(match self.u8()? {
            0 => JoinRefusal::IdInUse(NodeId(self.u32()?)),
            1 => JoinRefusal::NotLeader { leader: NodeId(self.u32()?), address: self.str()? },
            2 => JoinRefusal::AddressTooLong,
            3 => JoinRefusal::GroupFull(self.u32()?),
            4 => JoinRefusal::NotRestarted { view: self.u32()?, saved: self.u32()? },
            5 => JoinRefusal::NotRunning,
            6 => JoinRefusal::AppMismatch { ours: self.u64()?, theirs: self.u64()? },
            7 => JoinRefusal::NotAllowed(NodeId(self.u32()?)),
            _ => return Err(self.err("an unknown refusal")),
        })
    }
    fn end(&self) -> Result<(), WireError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(self.err("bytes after the last field")) }
    }
}

impl Control {
    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            Control::Join { version, node, address, app } => {
                w.u8(1);
                w.u16(*version);
                w.u32(node.0);
                w.str(address);
                w.u64(*app);
            }
            Control::Answer(Answer::Refused(r)) => {
                w.u8(2);
                w.refusal(r);
            }
            Control::Answer(Answer::Version(v)) => {
                w.u8(3);
                w.u16(*v);
            }
            Control::Answer(Answer::Welcome(next)) => {
                w.u8(4);
                w.next_view(next);
            }
            Control::Answer(Answer::Pending) => w.u8(12),
            Control::Restart { version, node, address, app, offer, leading } => {
                w.u8(11);
                w.u8(u8::from(*leading));
                w.u16(*version);
                w.u32(node.0);
                w.str(address);
                w.u64(*app);
                w.view(&offer.saved);
                w.len(offer.logs.len());
                for (shard, v) in &offer.logs {
                    w.shard(*shard);
                    w.u64(v.as_u64());
                }
                w.len(offer.damaged.len());
                for shard in &offer.damaged {
                    w.shard(*shard);
                }
                w.len(offer.proposed.len());
                for (id, members) in &offer.proposed {
                    w.u32(id.0);
                    w.nodes(members);
                }
                w.u32(offer.newest_file.0);
            }
        }
        w.0
    }

    /// Decodes a message.
    ///
    /// # Errors
    ///
    /// [`WireError`] naming the first rule the bytes break.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { bytes, what: "control message" };
        let m = match r.u8()? {
            1 => Control::Join { version: r.u16()?, node: NodeId(r.u32()?), address: r.str()?, app: r.u64()? },
            2 => Control::Answer(Answer::Refused(r.refusal()?)),
            3 => Control::Answer(Answer::Version(r.u16()?)),
            4 => Control::Answer(Answer::Welcome(Box::new(r.next_view()?))),
            11 => {
                let leading = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.err("a bad flag")),
                };
                let (version, node, address, app) = (r.u16()?, NodeId(r.u32()?), r.str()?, r.u64()?);
                let saved = r.view()?;
                let n = r.len(12)?;
                let mut logs = std::collections::BTreeMap::new();
                for _ in 0..n {
                    logs.insert(r.shard()?, Version::from_u64(r.u64()?));
                }
                let n = r.len(4)?;
                let mut damaged = std::collections::BTreeSet::new();
                for _ in 0..n {
                    damaged.insert(r.shard()?);
                }
                let n = r.len(8)?;
                let mut proposed = Vec::with_capacity(n);
                for _ in 0..n {
                    proposed.push((ViewId(r.u32()?), r.nodes()?));
                }
                let newest_file = ViewId(r.u32()?);
                let offer = Offer { saved, logs, damaged, proposed, newest_file };
                Control::Restart { version, node, address, app, offer, leading }
            }
            12 => Control::Answer(Answer::Pending),
            _ => return Err(r.err("an unknown kind")),
        };
        r.end()?;
        Ok(m)
    }
}

/// Views proposed or acknowledged, as bytes (a member saves them for total restart).
pub fn encode_proposals(proposals: &[(ViewId, Vec<NodeId>)]) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.len(proposals.len());
    for (id, members) in proposals {
        w.u32(id.0);
        w.nodes(members);
    }
    w.0
}

/// The views [`encode_proposals`] wrote.
///
/// # Errors
///
/// [`WireError`] naming the first rule the bytes break.
pub fn decode_proposals(bytes: &[u8]) -> Result<Vec<(ViewId, Vec<NodeId>)>, WireError> {
    let mut r = Reader { bytes, what: "saved proposals" };
    let n = r.len(8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push((ViewId(r.u32()?), r.nodes()?));
    }
    r.end()?;
    Ok(out)
}

/// A view and its members' addresses as bytes (a persisting member saves its last view for
/// total restart; the addresses let it look for a running group there).
pub fn encode_saved_view(view: &View, addresses: &[(NodeId, String)]) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.view(view);
    w.len(addresses.len());
    for (n, a) in addresses {
        w.u32(n.0);
        w.str(a);
    }
    w.0
}

/// The view and addresses [`encode_saved_view`] wrote.
///
/// # Errors
///
/// [`WireError`] naming the first rule the bytes break.
pub fn decode_saved_view(bytes: &[u8]) -> Result<(View, Vec<(NodeId, String)>), WireError> {
    let mut r = Reader { bytes, what: "saved view" };
    let v = r.view()?;
    let n = r.len(8)?;
    let mut addresses = Vec::with_capacity(n);
    for _ in 0..n {
        addresses.push((NodeId(r.u32()?), r.str()?));
    }
    r.end()?;
    Ok((v, addresses))
}

/// A view as bytes.
pub fn encode_view(view: &View) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.view(view);
    w.0
}

/// The view [`encode_view`] wrote.
///
/// # Errors
///
/// [`WireError`] naming the first rule the bytes break.
pub fn decode_view(bytes: &[u8]) -> Result<View, WireError> {
    let mut r = Reader { bytes, what: "saved view" };
    let v = r.view()?;
    r.end()?;
    Ok(v)
}

impl ViewFrame {
    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            ViewFrame::State { view, shard, offset, total, body } => {
                w.0.reserve(25 + body.len());
                w.u8(1);
                w.u32(view.0);
                w.shard(*shard);
                w.u64(*offset);
                w.u64(*total);
                w.0.extend_from_slice(body);
            }
            ViewFrame::Alive { view } => {
                w.u8(2);
                w.u32(view.0);
            }
            ViewFrame::StateRefused { view, shard, reason } => {
                w.u8(3);
                w.u32(view.0);
                w.shard(*shard);
                w.str(reason);
            }
        }
        w.0
    }

    /// Decodes a frame.
    ///
    /// # Errors
    ///
    /// [`WireError`] naming the first rule the bytes break.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { bytes, what: "view frame" };
        let f = match r.u8()? {
            1 => {
                let view = ViewId(r.u32()?);
                let shard = r.shard()?;
                let offset = r.u64()?;
                let total = r.u64()?;
                let body = r.bytes.to_vec();
                if offset.checked_add(body.len() as u64).is_none_or(|end| end > total) {
                    return Err(r.err("a state piece beyond the state's length"));
                }
                return Ok(ViewFrame::State { view, shard, offset, total, body });
            }
            2 => ViewFrame::Alive { view: ViewId(r.u32()?) },
            3 => ViewFrame::StateRefused { view: ViewId(r.u32()?), shard: r.shard()?, reason: r.str()? },
            _ => return Err(r.err("an unknown kind")),
        };
        r.end()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next() -> NextView {
        let s = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(1) };
        NextView {
            view: View {
                id: ViewId(7),
                members: vec![NodeId(1), NodeId(4)],
                shards: vec![ShardLayout {
                    id: s,
                    members: vec![NodeId(1), NodeId(4)],
                    senders: vec![NodeId(4)],
                    mode: DeliveryMode::Unordered,
                }],
            },
            inadequate: Some("why".into()),
            addresses: vec![(NodeId(1), "127.0.0.1:1".into()), (NodeId(4), "127.0.0.1:4".into())],
            joined: vec![NodeId(4)],
            departed: vec![NodeId(2)],
            transfers: vec![StateTransfer { shard: s, from: vec![NodeId(1)], to: vec![NodeId(4)] }],
            lost: vec![ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(5) }],
            history: vec![ShardLayout {
                id: ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(2) },
                members: vec![NodeId(9)],
                senders: vec![NodeId(9)],
                mode: DeliveryMode::Ordered,
            }],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let all = [
            Control::Join { version: JOIN_VERSION, node: NodeId(3), address: "10.0.0.1:70".into(), app: 99 },
            Control::Answer(Answer::Refused(JoinRefusal::AppMismatch { ours: 1, theirs: 2 })),
            Control::Answer(Answer::Refused(JoinRefusal::IdInUse(NodeId(3)))),
            Control::Answer(Answer::Refused(JoinRefusal::NotLeader { leader: NodeId(0), address: "a:1".into() })),
            Control::Answer(Answer::Refused(JoinRefusal::AddressTooLong)),
            Control::Answer(Answer::Refused(JoinRefusal::GroupFull(9))),
            Control::Answer(Answer::Refused(JoinRefusal::NotRestarted { view: 2, saved: 7 })),
            Control::Answer(Answer::Version(2)),
            Control::Answer(Answer::Welcome(Box::new(next()))),
            Control::Restart {
                version: JOIN_VERSION,
                node: NodeId(4),
                address: "127.0.0.1:4".into(),
                app: 7,
                offer: Offer {
                    saved: next().view,
                    logs: [(ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(1) }, Version::new(ViewId(3), 9))]
                        .into_iter()
                        .collect(),
                    damaged: [ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(2) }].into_iter().collect(),
                    proposed: vec![(ViewId(8), vec![NodeId(1), NodeId(4)])],
                    newest_file: ViewId(6),
                },
                leading: true,
            },
            Control::Answer(Answer::Pending),
            Control::Answer(Answer::Refused(JoinRefusal::NotRunning)),
        ];
        assert_eq!(decode_view(&encode_view(&next().view)).unwrap(), next().view);
        let saved = encode_saved_view(&next().view, &next().addresses);
        assert_eq!(decode_saved_view(&saved).unwrap(), (next().view, next().addresses));
        for n in 0..saved.len() {
            assert!(decode_saved_view(&saved[..n]).is_err(), "a prefix of {n} bytes decoded");
        }
        for m in all {
            assert_eq!(Control::decode(&m.encode()).unwrap(), m);
        }
        let s = ShardRef { subgroup: SubgroupId(2), shard: ShardIndex(3) };
        for f in [
            ViewFrame::State { view: ViewId(4), shard: s, offset: 5, total: 8, body: vec![1, 2, 3] },
            ViewFrame::Alive { view: ViewId(5) },
            ViewFrame::StateRefused { view: ViewId(6), shard: s, reason: "too long".into() },
        ] {
            assert_eq!(ViewFrame::decode(&f.encode()).unwrap(), f);
        }
        let beyond = ViewFrame::State { view: ViewId(4), shard: s, offset: 6, total: 8, body: vec![1, 2, 3] };
        assert!(ViewFrame::decode(&beyond.encode()).is_err(), "a piece past the end decoded");
        let wraps = ViewFrame::State { view: ViewId(4), shard: s, offset: u64::MAX, total: 8, body: vec![1] };
        assert!(ViewFrame::decode(&wraps.encode()).is_err(), "an offset that wraps decoded");
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = Control::Answer(Answer::Welcome(Box::new(next()))).encode();
        for n in 0..bytes.len() {
            assert!(Control::decode(&bytes[..n]).is_err(), "a prefix of {n} bytes decoded");
        }
        // Flip every byte in turn: decoding may succeed (the value is then validated by the
        // caller) but never panics, and never allocates past the message.
        for i in 0..bytes.len() {
            for v in [0x00, 0xff, 0x7f] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = Control::decode(&b);
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Control::decode(&long).unwrap_err().reason.contains("after the last field"));
        // A list that claims four billion members.
        let lie = [4u8, 7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(Control::decode(&lie).unwrap_err().reason.contains("longer than the message"));
        assert!(ViewFrame::decode(&[9]).is_err());
        assert!(ViewFrame::decode(&[2, 1, 0]).is_err());
    }
}
