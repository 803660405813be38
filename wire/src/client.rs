//! The external-client protocol (PROTOCOLS §6): how a process outside the group talks to a
//! member over one long-lived TCP connection.
//!
//! The client connects to a member's listener and sends a `Hello` frame ([`crate::frame`]) with peer id
//! [`CLIENT_PEER`] and the group's [`session_tag`](crate::session_tag); the member answers with
//! its own `Hello`. From then on both sides send `Data` frames, each holding one message, and
//! the connection stays open: requests are numbered by the client and may be many in flight;
//! the member answers each on the same connection, in any order, and pushes notifications.
//! The member never connects to the client.
//!
//! Requests (client to member), little-endian, after a one-byte tag:
//!
//! ```text
//! 1 view       req u64
//! 2 call       kind u8 (1 ordered, 2 query), flags u8, pad u8, subgroup u16, shard u16,
//!              to u32 (u32::MAX: any member), method u32, req u64, fingerprint u64,
//!              client u64, seq u64, answered_below u64, then the archived arguments
//!              (56 bytes in: with the frame's header, 80, a multiple of 16)
//!              (flags: 1 the call is a retry; 2 answer once persisted at every member of
//!              the shard, 4 once applied by the member asked; neither: the service's default)
//! 3 subscribe  req u64, topic (u32 length, UTF-8)
//! 4 ping       req u64
//! ```
//!
//! Responses (member to client):
//!
//! ```text
//! 1 view       req u64, view u32, members (u32 count; id u32, address), shards (u32 count;
//!              subgroup u16, shard u16, members: u32 count, ids), inadequate u8 (1: followed
//!              by why the view has no shards, UTF-8)
//! 2 reply      status u8 (1 ok, 0 error), req u64, version u64, then the archived reply, or
//!              the error's kind (one byte, RemoteKind) and UTF-8 text
//! 3 subscribed req u64
//! 4 notify     topic, then the body
//! 5 pong       req u64
//! ```
//!
//! Ordered calls carry the client's id, a number the client gives each of its ordered calls
//! (`seq`), and the lowest number among its calls not yet answered (`answered_below`): the
//! replicas remember each client's replies from there on, so that a call sent again after a
//! lost reply is answered with the first reply instead of being applied twice.

use crate::frame::{HEADER_LEN, Header, Kind};
use crate::ids::{NodeId, ShardRef, Version, ViewId};
use crate::remote::RemoteKind;

/// The peer id a client's `Hello` carries.
pub const CLIENT_PEER: u32 = u32::MAX;

/// The longest frame either side accepts by default (a call's arguments or reply plus the
/// message's header): 64 MiB.
pub const FRAME_MAX: usize = 64 << 20;

/// The fixed part of a call request, before its arguments.
pub const CALL_HEADER_LEN: usize = 56;

/// Call flag: the client sent this call before (its reply was lost).
pub const FLAG_RETRY: u8 = 1;
/// Call flag: answer once the call's version is persisted at every member of its shard.
pub const FLAG_ACK_PERSISTED: u8 = 2;
/// Call flag: answer once the member asked applied the call (even if the service persists).
pub const FLAG_ACK_APPLIED: u8 = 4;

/// What a call asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// An ordered call, relayed by the member as a multicast in the shard.
    Ordered,
    /// A query of one member's replica.
    Query,
}

/// Exactly-once bookkeeping of an ordered call: who calls, and which of its calls this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTag {
    /// The client's id (chosen at random by the client).
    pub client: u64,
    /// The call's number among the client's ordered calls (from 1).
    pub seq: u64,
    /// Every call of the client numbered below this has been answered.
    pub answered_below: u64,
}

/// A call request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call<'a> {
    /// The client's number for the request; the reply carries it.
    pub req: u64,
    /// Ordered call or query.
    pub kind: CallKind,
    /// [`FLAG_RETRY`], and [`FLAG_ACK_PERSISTED`] or [`FLAG_ACK_APPLIED`].
    pub flags: u8,
    /// The shard.
    pub shard: ShardRef,
    /// For a query: the member that must answer (`None`: the one asked).
    pub to: Option<NodeId>,
    /// The method's index in the type's method table.
    pub method: u32,
    /// The fingerprint of the type's method table the client expects (0: unchecked).
    pub fingerprint: u64,
    /// For ordered calls.
    pub session: SessionTag,
    /// The archived arguments.
    pub args: &'a [u8],
}

/// A request, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// The member's current view, with every member's address.
    View {
        /// The request's number.
        req: u64,
    },
    /// A call.
    Call(Call<'a>),
    /// Push notifications on `topic` on this connection.
    Subscribe {
        /// The request's number.
        req: u64,
        /// The topic.
        topic: &'a str,
    },
    /// Keeps an idle connection open.
    Ping {
        /// The request's number.
        req: u64,
    },
}

/// A view as clients see it: members with their addresses, and the shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientView {
    /// The view's id.
    pub id: ViewId,
    /// Every member and the address of its listener.
    pub members: Vec<(NodeId, String)>,
    /// Every shard and its members.
    pub shards: Vec<(ShardRef, Vec<NodeId>)>,
    /// Why the view has no shards, if it is inadequate (a shard lost every member holding its
    /// state, say): calls wait for a view that has them.
    pub inadequate: Option<String>,
}

impl ClientView {
    /// The members of `shard`, `None` if the view has no such shard.
    pub fn shard(&self, shard: ShardRef) -> Option<&[NodeId]> {
        self.shards.iter().find(|(s, _)| *s == shard).map(|(_, m)| m.as_slice())
    }

    /// The address of member `node`.
    pub fn address(&self, node: NodeId) -> Option<&str> {
        self.members.iter().find(|(n, _)| *n == node).map(|(_, a)| a.as_str())
    }
}

/// A call's outcome as the member sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The archived reply; for ordered calls, the version the call was applied at.
    Ok {
        /// The version (0 for queries).
        version: Version,
        /// The archived reply.
        reply: &'a [u8],
    },
    /// Refused or failed.
    Err {
        /// Why, as a kind.
        kind: RemoteKind,
        /// What the member said.
        reason: &'a str,
    },
}

/// A response, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// The answer to [`Request::View`].
    View {
        /// The request's number.
        req: u64,
        /// The view.
        view: ClientView,
    },
    /// The answer to a call.
    Reply {
        /// The request's number.
        req: u64,
        /// What became of it.
        outcome: Outcome<'a>,
    },
    /// The answer to [`Request::Subscribe`].
    Subscribed {
        /// The request's number.
        req: u64,
    },
    /// A notification.
    Notify {
        /// Its topic.
        topic: &'a str,
        /// Its bytes.
        body: &'a [u8],
    },
    /// The answer to [`Request::Ping`].
    Pong {
        /// The request's number.
        req: u64,
    },
}

/// A message that breaks the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed client message: {0}")]
pub struct ProtocolError(pub String);

/// Appends one `Data` frame to `out`, its body written by `body`.
fn framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    body(out);
    let header = Header::encode(Kind::Data, 0, &out[start + HEADER_LEN..]);
    out[start..start + HEADER_LEN].copy_from_slice(&header);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Request<'_> {
    /// Appends the request as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        framed(out, |o| match self {
            Request::View { req } => {
                o.push(1);
                o.extend_from_slice(&req.to_le_bytes());
            }
            Request::Call(c) => {
                o.push(2);
                o.push(match c.kind {
                    CallKind::Ordered => 1,
                    CallKind::Query => 2,
                });
                o.push(c.flags);
                o.push(0);
                o.extend_from_slice(&c.shard.subgroup.0.to_le_bytes());
                o.extend_from_slice(&c.shard.shard.0.to_le_bytes());
                o.extend_from_slice(&c.to.map_or(u32::MAX, |n| n.0).to_le_bytes());
                o.extend_from_slice(&c.method.to_le_bytes());
                for w in [c.req, c.fingerprint, c.session.client, c.session.seq, c.session.answered_below] {
                    o.extend_from_slice(&w.to_le_bytes());
                }
                o.extend_from_slice(c.args);
            }
            Request::Subscribe { req, topic } => {
                o.push(3);
                o.extend_from_slice(&req.to_le_bytes());
                put_str(o, topic);
            }
            Request::Ping { req } => {
                o.push(4);
                o.extend_from_slice(&req.to_le_bytes());
            }
        });
    }

    /// Decodes a frame's body.
    ///
    /// # Errors
    ///
    /// [`ProtocolError`] for anything but a well-formed request.
    pub fn decode(body: &[u8]) -> Result<Request<'_>, ProtocolError> {
        let mut r = Reader { bytes: body, at: 0 };
        let tag = r.u8()?;
        let out = match tag {
            1 => Request::View { req: r.u64()? },
            2 => {
                let kind = match r.u8()? {
                    1 => CallKind::Ordered,
                    2 => CallKind::Query,
                    k => return Err(ProtocolError(format!("unknown call kind {k}"))),
                };
                let flags = r.u8()?;
                if flags & !(FLAG_RETRY | FLAG_ACK_PERSISTED | FLAG_ACK_APPLIED) != 0 || flags & 6 == 6 {
                    return Err(ProtocolError(format!("unknown call flags {flags:#04x}")));
                }
                let _pad = r.u8()?;
                let shard = ShardRef::new(r.u16()?, r.u16()?);
                let to = match r.u32()? {
                    u32::MAX => None,
                    n => Some(NodeId(n)),
                };
                let method = r.u32()?;
                let (req, fingerprint) = (r.u64()?, r.u64()?);
                let session = SessionTag { client: r.u64()?, seq: r.u64()?, answered_below: r.u64()? };
                let args = r.rest();
                Request::Call(Call { req, kind, flags, shard, to, method, fingerprint, session, args })
            }
            3 => Request::Subscribe { req: r.u64()?, topic: r.str()? },
            4 => Request::Ping { req: r.u64()? },
            t => return Err(ProtocolError(format!("unknown request {t}"))),
        };
        if tag != 2 {
            r.end()?;
        }
        Ok(out)
    }
}

impl Response<'_> {
    /// Appends the response as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        framed(out, |o| match self {
            Response::View { req, view } => {
                o.push(1);
                o.extend_from_slice(&req.to_le_bytes());
                o.extend_from_slice(&view.id.0.to_le_bytes());
                o.extend_from_slice(&(view.members.len() as u32).to_le_bytes());
                for (n, a) in &view.members {
                    o.extend_from_slice(&n.0.to_le_bytes());
                    put_str(o, a);
                }
                o.extend_from_slice(&(view.shards.len() as u32).to_le_bytes());
                for (s, members) in &view.shards {
                    o.extend_from_slice(&s.subgroup.0.to_le_bytes());
                    o.extend_from_slice(&s.shard.0.to_le_bytes());
                    o.extend_from_slice(&(members.len() as u32).to_le_bytes());
                    for n in members {
                        o.extend_from_slice(&n.0.to_le_bytes());
                    }
                }
                match &view.inadequate {
                    Some(why) => {
                        o.push(1);
                        put_str(o, why);
                    }
                    None => o.push(0),
                }
            }
            Response::Reply { req, outcome } => Self::reply_into(o, *req, *outcome),
            Response::Subscribed { req } => {
                o.push(3);
                o.extend_from_slice(&req.to_le_bytes());
            }
            Response::Notify { topic, body } => {
                o.push(4);
                put_str(o, topic);
                o.extend_from_slice(body);
            }
            Response::Pong { req } => {
                o.push(5);
                o.extend_from_slice(&req.to_le_bytes());
            }
        });
    }

    fn reply_into(o: &mut Vec<u8>, req: u64, outcome: Outcome<'_>) {
        o.push(2);
        match outcome {
            Outcome::Ok { version, reply } => {
                o.push(1);
                o.extend_from_slice(&req.to_le_bytes());
                o.extend_from_slice(&version.as_u64().to_le_bytes());
                o.extend_from_slice(reply);
            }
            Outcome::Err { kind, reason } => {
                o.push(0);
                o.extend_from_slice(&req.to_le_bytes());
                o.extend_from_slice(&0u64.to_le_bytes());
                o.push(kind as u8);
                o.extend_from_slice(reason.as_bytes());
            }
        }
    }

    /// Decodes a frame's body.
    ///
    /// # Errors
    ///
    /// [`ProtocolError`] for anything but a well-formed response.
    pub fn decode(body: &[u8]) -> Result<Response<'_>, ProtocolError> {
        let mut r = Reader { bytes: body, at: 0 };
        let out = match r.u8()? {
            1 => {
                let req = r.u64()?;
                let id = ViewId(r.u32()?);
                let n = r.count(6)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push((NodeId(r.u32()?), r.str()?.to_string()));
                }
                let n = r.count(8)?;
                let mut shards = Vec::with_capacity(n);
                for _ in 0..n {
                    let shard = ShardRef::new(r.u16()?, r.u16()?);
                    let m = r.count(4)?;
                    let mut ids = Vec::with_capacity(m);
                    for _ in 0..m {
                        ids.push(NodeId(r.u32()?));
                    }
                    shards.push((shard, ids));
                }
                let inadequate = match r.u8()? {
                    0 => None,
                    1 => Some(r.str()?.to_string()),
                    b => return Err(ProtocolError(format!("inadequacy flag {b}"))),
                };
                r.end()?;
                Response::View { req, view: ClientView { id, members, shards, inadequate } }
            }
            2 => {
                let status = r.u8()?;
                let (req, version) = (r.u64()?, Version::from_u64(r.u64()?));
                let outcome = match status {
                    1 => Outcome::Ok { version, reply: r.rest() },
                    0 => {
                        let kind = RemoteKind::from_u8(r.u8()?);
                        let reason = std::str::from_utf8(r.rest())
                            .map_err(|_| ProtocolError("an error's text is not UTF-8".into()))?;
                        Outcome::Err { kind, reason }
                    }
                    s => return Err(ProtocolError(format!("unknown reply status {s}"))),
                };
                Response::Reply { req, outcome }
            }
            3 => {
                let req = r.u64()?;
                r.end()?;
                Response::Subscribed { req }
            }
            4 => Response::Notify { topic: r.str()?, body: r.rest() },
            5 => {
                let req = r.u64()?;
                r.end()?;
                Response::Pong { req }
            }
            t => return Err(ProtocolError(format!("unknown response {t}"))),
        };
        Ok(out)
    }

    /// The offset of a successful reply's bytes in its frame's body.
    pub const REPLY_OFFSET: usize = 18;
}

/// Appends a reply frame to `out` (without building a [`Response`]).
pub fn encode_reply(out: &mut Vec<u8>, req: u64, outcome: Outcome<'_>) {
    framed(out, |o| Response::reply_into(o, req, outcome));
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| ProtocolError(format!("truncated at byte {}", self.at)))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count of items of at least `min` bytes each, checked against what is left (so a lying
    /// count allocates nothing).
    fn count(&mut self, min: usize) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.bytes.len() - self.at {
            return Err(ProtocolError(format!("a count of {n} longer than the message")));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<&'a str, ProtocolError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| ProtocolError("a string that is not UTF-8".into()))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.at..];
        self.at = self.bytes.len();
        s
    }
    fn end(&self) -> Result<(), ProtocolError> {
        if self.at != self.bytes.len() {
            return Err(ProtocolError(format!("{} bytes after the message", self.bytes.len() - self.at)));
        }
        Ok(())
    }
}

/// Splits a byte stream into frames: validates each header (magic, version, kind `Data`,
/// length at most the maximum) before its body is awaited, and each checksum.
#[derive(Debug)]
pub struct Frames {
    max: usize,
}

impl Frames {
    /// Frames of at most `max` bytes of body.
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    /// The first frame of `bytes`: `Ok(Some((body range, frame length)))`, `Ok(None)` if more
    /// bytes are needed (with the frame's total length once its header is in), or the error that
    /// ends the connection.
    ///
    /// # Errors
    ///
    /// The rule the bytes break.
    pub fn next(&self, bytes: &[u8]) -> Result<Next, crate::frame::FrameError> {
        if bytes.len() < HEADER_LEN {
            return Ok(Next::Need(HEADER_LEN));
        }
        let raw: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("header");
        let h = Header::decode(raw, self.max)?;
        if h.kind != Kind::Data {
            return Err(crate::frame::FrameError::Unexpected(h.kind));
        }
        let total = HEADER_LEN + h.len as usize;
        if bytes.len() < total {
            return Ok(Next::Need(total));
        }
        h.verify(raw, &bytes[HEADER_LEN..total])?;
        Ok(Next::Frame { body: HEADER_LEN..total })
    }
}

/// What [`Frames::next`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole frame: its body's range (the frame ends where the body ends).
    Frame {
        /// The body.
        body: std::ops::Range<usize>,
    },
    /// Not yet: the frame (or its header) needs this many bytes.
    Need(usize),
}

/// The client's `Hello` for group tag `tag`.
pub fn hello(tag: u32) -> [u8; HEADER_LEN] {
    Header::encode(Kind::Hello, u64::from(CLIENT_PEER) | (u64::from(tag) << 32), &[])
}

/// Checks a member's answer to [`hello`]: a valid `Hello` with the same tag.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_hello(raw: &[u8; HEADER_LEN], tag: u32) -> Result<NodeId, String> {
    let h = Header::decode(raw, 0).map_err(|e| format!("bad hello: {e}"))?;
    h.verify(raw, &[]).map_err(|e| format!("bad hello: {e}"))?;
    if h.kind != Kind::Hello {
        return Err(format!("expected a hello, got {:?}", h.kind));
    }
    let their = (h.aux >> 32) as u32;
    if their != tag {
        return Err(format!("group tag {their} differs from ours ({tag}): another group, or not a client port"));
    }
    Ok(NodeId(h.aux as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        match Frames::new(FRAME_MAX).next(frame).unwrap() {
            Next::Frame { body } => {
                assert_eq!(body.end, frame.len());
                &frame[body]
            }
            Next::Need(n) => panic!("a whole frame, not {n}"),
        }
    }

    #[test]
    fn requests_round_trip_and_arguments_stay_aligned() {
        let call = Call {
            req: 7,
            kind: CallKind::Ordered,
            flags: FLAG_RETRY | FLAG_ACK_PERSISTED,
            shard: ShardRef::new(3, 4),
            to: Some(NodeId(9)),
            method: 2,
            fingerprint: 0xfeed,
            session: SessionTag { client: 11, seq: 12, answered_below: 10 },
            args: b"arguments",
        };
        let all = [
            Request::View { req: 1 },
            Request::Call(call),
            Request::Call(Call { kind: CallKind::Query, to: None, flags: 0, args: b"", ..call }),
            Request::Subscribe { req: 3, topic: "t\u{e9}" },
            Request::Ping { req: u64::MAX },
        ];
        for r in all {
            let mut out = vec![0xaa; 16];
            r.encode(&mut out);
            let b = body(&out[16..]);
            assert_eq!(Request::decode(b).unwrap(), r);
            if let Request::Call(c) = r {
                // The arguments start 16-byte aligned relative to the frame.
                assert_eq!((HEADER_LEN + CALL_HEADER_LEN) % 16, 0);
                assert_eq!(&out[16 + HEADER_LEN + CALL_HEADER_LEN..], c.args);
            }
        }
    }

    #[test]
    fn responses_round_trip() {
        let view = ClientView {
            id: ViewId(5),
            members: vec![(NodeId(0), "127.0.0.1:1".into()), (NodeId(4), "h:2".into())],
            shards: vec![(ShardRef::new(0, 0), vec![NodeId(0), NodeId(4)]), (ShardRef::new(0, 1), vec![])],
            inadequate: None,
        };
        let all = [
            Response::View { req: 1, view: view.clone() },
            Response::Reply { req: 2, outcome: Outcome::Ok { version: Version::from_u64(99), reply: b"r" } },
            Response::Reply { req: 3, outcome: Outcome::Err { kind: RemoteKind::TooLarge, reason: "big" } },
            Response::Subscribed { req: 4 },
            Response::Notify { topic: "t", body: b"b" },
            Response::Pong { req: 5 },
        ];
        for r in all {
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(Response::decode(body(&out)).unwrap(), r);
        }
        let mut out = Vec::new();
        encode_reply(&mut out, 9, Outcome::Ok { version: Version::from_u64(1), reply: b"xyz" });
        assert_eq!(&body(&out)[Response::REPLY_OFFSET..], b"xyz");
        assert_eq!(view.shard(ShardRef::new(0, 0)), Some(&[NodeId(0), NodeId(4)][..]));
        assert_eq!(view.address(NodeId(4)), Some("h:2"));
    }

    #[test]
    fn hostile_bytes_are_errors() {
        // Every truncation of every message is an error or a shorter valid message, never a
        // panic; lying counts allocate nothing.
        let mut out = Vec::new();
        Response::View {
            req: 1,
            view: ClientView {
                id: ViewId(1),
                members: vec![(NodeId(1), "a".into())],
                shards: vec![],
                inadequate: Some("subgroup 0 shard 1 lost every member".into()),
            },
        }
        .encode(&mut out);
        let b = body(&out).to_vec();
        for n in 0..b.len() {
            assert!(Response::decode(&b[..n]).is_err(), "{n}");
        }
        let mut lying = b.clone();
        lying[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Response::decode(&lying).is_err());
        for bad in [&[][..], &[0], &[9], &[2, 7], &[2, 3, 0], &[2, 1, 6], &[2, 1, 8], &[1, 1, 2]] {
            assert!(Request::decode(bad).is_err(), "{bad:?}");
        }
        // Frames: too long, wrong kind, damaged.
        let f = Frames::new(8);
        let mut big = Vec::new();
        Request::Ping { req: 1 }.encode(&mut big);
        assert!(matches!(f.next(&big), Err(crate::frame::FrameError::TooLong { .. })));
        assert!(matches!(Frames::new(64).next(&hello(1)), Err(crate::frame::FrameError::Unexpected(Kind::Hello))));
        let mut bad = big.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(Frames::new(64).next(&bad), Err(crate::frame::FrameError::Checksum { .. })));
        assert_eq!(Frames::new(64).next(&big[..10]), Ok(Next::Need(HEADER_LEN)));
        assert_eq!(Frames::new(64).next(&big[..HEADER_LEN + 1]), Ok(Next::Need(big.len())));
        assert_eq!(check_hello(&hello(5), 5), Ok(NodeId(CLIENT_PEER)));
        assert!(check_hello(&hello(5), 6).unwrap_err().contains("differs"));
    }
}
