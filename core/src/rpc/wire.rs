//! The header of every call, query and reply (PROTOCOLS §6, §7).
//!
//! ```text
//! offset size field
//!  0     1    kind      1 ordered call (a multicast), 2 query, 3 reply, 4 error reply,
//!                       5 repeat (ask a member to send its reply to `call` again),
//!                       6 stable query (a query answered once what the member delivered is
//!                       delivered at every member of the shard, read as of that point)
//!  1     1    flags     1: an external client's ordered call, a 32-byte prefix before the
//!                       body (client, call number, lowest unanswered, retry); in an external
//!                       request only: 2 answer once persisted everywhere, 4 once applied
//!  2     2    subgroup
//!  4     2    shard
//!  6     2    reserved  0
//!  8     4    method    index in the type's method table
//! 12     4    caller    node id of the member that called
//! 16     8    call id   chosen by the caller, unique among its calls
//! 24     8    version   replies to ordered calls: the version the call was delivered at;
//!                       ordered calls: the caller's time; an external client's calls: the
//!                       fingerprint of the type it expects (0: not checked)
//! 32          body      rkyv-archived arguments or reply; an error reply's body is one byte,
//!                       the kind of error ([`RemoteKind`]), then UTF-8 text saying more
//! ```
//!
//! 32 bytes keep a 16-byte-aligned buffer's body aligned, so rkyv validates it in place.
//! Integers are little-endian. Decoding checks every field a peer chooses.

pub use derecho_wire::remote::RemoteKind;

use crate::protocol::{NodeId, ShardIndex, ShardRef, SubgroupId, Version};

/// Length of the header.
pub const HEADER_LEN: usize = 32;

/// Header flag: the body starts with an external client's session prefix.
pub const FLAG_SESSION: u8 = 1;
/// Header flag (external requests only): answer once persisted at every member of the shard.
pub const FLAG_ACK_PERSISTED: u8 = 2;
/// Header flag (external requests only): answer once applied by the relaying member.
pub const FLAG_ACK_APPLIED: u8 = 4;

/// What a frame or message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An ordered call, multicast in its shard.
    Ordered = 1,
    /// A P2P query, to one member.
    Query = 2,
    /// A reply.
    Reply = 3,
    /// The callee could not run the call; the body says why.
    Error = 4,
    /// The caller asks for its reply again (it may have been lost with a view's connections).
    Repeat = 5,
    /// A P2P query answered at the shard's stable point ([`crate::rpc::CallContext::stable`]).
    StableQuery = 6,
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What follows.
    pub kind: Kind,
    /// The shard the call is for.
    pub shard: ShardRef,
    /// The method.
    pub method: u32,
    /// The calling member.
    pub caller: NodeId,
    /// The caller's call id.
    pub call: u64,
    /// Replies to ordered calls: the version the call was delivered at.
    pub version: Version,
    /// [`FLAG_SESSION`], [`FLAG_ACK_PERSISTED`], [`FLAG_ACK_APPLIED`] (0 for members' own).
    pub flags: u8,
}

/// A header that breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed call header: {0}")]
pub struct HeaderError(pub &'static str);

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than the header (a programmer error).
    pub fn write(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_LEN];
        out.fill(0);
        out[0] = self.kind as u8;
        out[1] = self.flags;
        out[2..4].copy_from_slice(&self.shard.subgroup.0.to_le_bytes());
        out[4..6].copy_from_slice(&self.shard.shard.0.to_le_bytes());
        out[8..12].copy_from_slice(&self.method.to_le_bytes());
        out[12..16].copy_from_slice(&self.caller.0.to_le_bytes());
        out[16..24].copy_from_slice(&self.call.to_le_bytes());
        out[24..32].copy_from_slice(&self.version.as_u64().to_le_bytes());
    }

    /// The header followed by `body`, in one buffer.
    pub fn with_body(&self, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0; HEADER_LEN + body.len()];
        self.write(&mut v);
        v[HEADER_LEN..].copy_from_slice(body);
        v
    }

    /// Reads a header; returns it and the body.
    ///
    /// # Errors
    ///
    /// [`HeaderError`]: too short, an unknown kind, flags or reserved bytes set.
    pub fn read(bytes: &[u8]) -> Result<(Self, &[u8]), HeaderError> {
        if bytes.len() < HEADER_LEN {
            return Err(HeaderError("shorter than the header"));
        }
        let kind = match bytes[0] {
            1 => Kind::Ordered,
            2 => Kind::Query,
            3 => Kind::Reply,
            4 => Kind::Error,
            5 => Kind::Repeat,
            6 => Kind::StableQuery,
            _ => return Err(HeaderError("an unknown kind")),
        };
        if bytes[1] & !(FLAG_SESSION | FLAG_ACK_PERSISTED | FLAG_ACK_APPLIED) != 0 || bytes[6] != 0 || bytes[7] != 0 {
            return Err(HeaderError("flags or reserved bytes set"));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let header = Self {
            kind,
            shard: ShardRef { subgroup: SubgroupId(u16_at(2)), shard: ShardIndex(u16_at(4)) },
            method: u32_at(8),
            caller: NodeId(u32_at(12)),
            call: u64_at(16),
            version: Version::from_u64(u64_at(24)),
            flags: bytes[1],
        };
        Ok((header, &bytes[HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_headers() {
        let h = Header {
            kind: Kind::Reply,
            shard: ShardRef { subgroup: SubgroupId(3), shard: ShardIndex(7) },
            method: 9,
            caller: NodeId(42),
            call: u64::MAX - 1,
            version: Version::from_u64(77),
            flags: 0,
        };
        let bytes = h.with_body(b"xyz");
        let (got, body) = Header::read(&bytes).unwrap();
        assert_eq!((got, body), (h, &b"xyz"[..]));
        assert!(Header::read(&bytes[..HEADER_LEN - 1]).is_err());
        for kind in [Kind::Ordered, Kind::Query, Kind::Reply, Kind::Error, Kind::Repeat, Kind::StableQuery] {
            let h = Header { kind, ..h };
            assert_eq!(Header::read(&h.with_body(b"")).unwrap().0, h);
        }
        for (i, v) in [(0, 0), (0, 7), (0, 9), (1, 8), (6, 1), (7, 1)] {
            let mut b = bytes.clone();
            b[i] = v;
            assert!(Header::read(&b).is_err(), "byte {i} = {v} accepted");
        }
    }

    #[test]
    fn remote_kinds_round_trip_and_unknown_bytes_read_as_other() {
        for b in 0..=u8::MAX {
            let k = RemoteKind::from_u8(b);
            if b <= 16 {
                assert_eq!(k as u8, b);
            } else {
                assert_eq!(k, RemoteKind::Other);
            }
        }
        assert_eq!(RemoteKind::read(&[10, b'a', 0xff]), (RemoteKind::ReplyLost, "a\u{fffd}".to_string()));
        assert_eq!(RemoteKind::read(&[]), (RemoteKind::Other, String::new()));
    }
}
