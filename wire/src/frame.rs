//! The TCP wire header and its validation (PROTOCOLS §7).
//!
//! ```text
//! offset size field
//!  0     4    magic      0x44524543 ("DREC" read as a little-endian u32)
//!  4     2    version    WIRE_VERSION
//!  6     1    kind       Kind
//!  7     1    flags      bit 0: the checksum covers the body; other bits reserved (0)
//!  8     4    length     body length in bytes, at most the configured max_frame_len
//! 12     4    checksum   CRC32C of bytes 0..12, bytes 16..24 and, if flag 0 is set, the body
//! 16     8    aux        kind-specific: Hello = sender id and group tag, Push = region and offset
//! ```
//! All integers are little-endian. A header is validated completely (magic, version, kind, length
//! against the maximum) before a single byte of its body is allocated.

/// `"DREC"` as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DREC");
/// The wire protocol version spoken by this build.
pub const WIRE_VERSION: u16 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 24;
/// Flag: the checksum covers the body too.
pub const FLAG_BODY_CHECKSUM: u8 = 1;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Handshake: aux = sender peer id (low 32 bits) and group tag (high 32 bits).
    Hello = 1,
    /// An application frame.
    Data = 2,
    /// A push: aux = region id (low 16 bits) and offset (bits 16..48); the body is the bytes.
    Push = 3,
    /// Keeps a quiet connection alive.
    Heartbeat = 4,
    /// The sender is closing its transport.
    Goodbye = 5,
}

impl Kind {
    fn from_u8(k: u8) -> Option<Self> {
        Some(match k {
            1 => Kind::Hello,
            2 => Kind::Data,
            3 => Kind::Push,
            4 => Kind::Heartbeat,
            5 => Kind::Goodbye,
            _ => return None,
        })
    }
}

/// A malformed frame. Receiving one drops the connection and fails the peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not the magic number (not a derecho peer, or lost framing).
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// A wire version this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    Version(u16),
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Reserved flags set.
    #[error("reserved flags {0:#04x} set")]
    Flags(u8),
    /// A body longer than the maximum; nothing was allocated for it.
    #[error("frame length {len} above the maximum {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The checksum does not match the bytes.
    #[error("checksum mismatch (header says {expected:#010x}, bytes give {actual:#010x})")]
    Checksum {
        /// From the header.
        expected: u32,
        /// Computed.
        actual: u32,
    },
    /// A push to a region this side has not registered.
    #[error("push to unregistered region {0}")]
    UnknownRegion(u16),
    /// A push outside its region.
    #[error("push of {len} bytes at {offset} outside region {region} of {region_len} bytes")]
    PushOutOfBounds {
        /// Region.
        region: u16,
        /// Offset.
        offset: usize,
        /// Length.
        len: usize,
        /// The region's length.
        region_len: usize,
    },
    /// A push outside the range the sending peer may write (its own row).
    #[error("push of {len} bytes at {offset} into region {region} outside what this peer may write")]
    PushOutsideWindow {
        /// Region.
        region: u16,
        /// Offset.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// A frame kind that is not allowed at this point (a second Hello, say).
    #[error("unexpected {0:?} frame")]
    Unexpected(Kind),
    /// A shared-memory ring record that does not fit the ring.
    #[error("ring record of {len} bytes at {pos} does not fit the ring")]
    BadRecord {
        /// Position in the ring.
        pos: u64,
        /// Record length.
        len: u64,
    },
}

/// A decoded, validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The kind.
    pub kind: Kind,
    /// Body length.
    pub len: u32,
    /// Checksum from the wire.
    pub checksum: u32,
    /// Flags from the wire.
    pub flags: u8,
    /// Kind-specific word.
    pub aux: u64,
}

impl Header {
    /// Encodes the header; the checksum covers the header and `body`.
    pub fn encode(kind: Kind, aux: u64, body: &[u8]) -> [u8; HEADER_LEN] {
        Self::encode_with(kind, aux, body, true)
    }

    /// Encodes the header; the checksum covers the header, and the body if `checksum_body`.
    pub fn encode_with(kind: Kind, aux: u64, body: &[u8], checksum_body: bool) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..6].copy_from_slice(&WIRE_VERSION.to_le_bytes());
        h[6] = kind as u8;
        h[7] = if checksum_body { FLAG_BODY_CHECKSUM } else { 0 };
        let len = u32::try_from(body.len()).expect("frame body above 4 GiB");
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[16..24].copy_from_slice(&aux.to_le_bytes());
        let sum = checksum(&h, if checksum_body { body } else { &[] });
        h[12..16].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Decodes and validates a header: magic, version, kind, flags, and length against `max_len`.
    ///
    /// # Errors
    ///
    /// The first rule the bytes break.
    pub fn decode(h: &[u8; HEADER_LEN], max_len: usize) -> Result<Self, FrameError> {
        let word = |r: std::ops::Range<usize>| -> u32 { u32::from_le_bytes(h[r].try_into().expect("4 bytes")) };
        let magic = word(0..4);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != WIRE_VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = Kind::from_u8(h[6]).ok_or(FrameError::Kind(h[6]))?;
        let flags = h[7];
        if flags & !FLAG_BODY_CHECKSUM != 0 {
            return Err(FrameError::Flags(flags));
        }
        let len = word(8..12);
        if len as usize > max_len {
            return Err(FrameError::TooLong { len: len as usize, max: max_len });
        }
        let checksum = word(12..16);
        let aux = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        Ok(Self { kind, len, checksum, flags, aux })
    }

    /// Checks the checksum against the raw header bytes and the body.
    ///
    /// # Errors
    ///
    /// [`FrameError::Checksum`].
    pub fn verify(&self, raw: &[u8; HEADER_LEN], body: &[u8]) -> Result<(), FrameError> {
        let covered = if self.flags & FLAG_BODY_CHECKSUM != 0 { body } else { &[] };
        let actual = checksum(raw, covered);
        if actual != self.checksum {
            return Err(FrameError::Checksum { expected: self.checksum, actual });
        }
        Ok(())
    }
}

fn checksum(h: &[u8; HEADER_LEN], body: &[u8]) -> u32 {
    let c = crc32c::crc32c(&h[0..12]);
    let c = crc32c::crc32c_append(c, &h[16..24]);
    crc32c::crc32c_append(c, body)
}

/// Packs the aux word of a push.
pub fn push_aux(region: u16, offset: u32) -> u64 {
    u64::from(region) | (u64::from(offset) << 16)
}

/// Unpacks the aux word of a push: (region, offset).
pub fn push_aux_parts(aux: u64) -> (u16, usize) {
    ((aux & 0xffff) as u16, ((aux >> 16) & 0xffff_ffff) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let body = b"some bytes";
        let raw = Header::encode(Kind::Data, 42, body);
        let h = Header::decode(&raw, 100).unwrap();
        assert_eq!((h.kind, h.len, h.aux), (Kind::Data, 10, 42));
        h.verify(&raw, body).unwrap();
    }

    #[test]
    fn every_header_rule_is_checked() {
        let good = Header::encode(Kind::Push, push_aux(3, 1000), &[1, 2, 3]);
        let mut cases: Vec<([u8; HEADER_LEN], FrameError)> = Vec::new();
        let mut b = good;
        b[0] ^= 1;
        cases.push((b, FrameError::BadMagic(MAGIC ^ 1)));
        let mut b = good;
        b[4] = 9;
        cases.push((b, FrameError::Version(9)));
        let mut b = good;
        b[6] = 77;
        cases.push((b, FrameError::Kind(77)));
        let mut b = good;
        b[7] = 2;
        cases.push((b, FrameError::Flags(2)));
        let mut b = good;
        b[8..12].copy_from_slice(&1_000_000u32.to_le_bytes());
        cases.push((b, FrameError::TooLong { len: 1_000_000, max: 64 }));
        for (raw, want) in cases {
            assert_eq!(Header::decode(&raw, 64), Err(want));
        }
    }

    #[test]
    fn corrupted_body_or_aux_fails_the_checksum() {
        let raw = Header::encode(Kind::Data, 5, b"abc");
        let h = Header::decode(&raw, 64).unwrap();
        assert!(matches!(h.verify(&raw, b"abd"), Err(FrameError::Checksum { .. })));
        let mut bad = raw;
        bad[16] ^= 0xff;
        let h = Header::decode(&bad, 64).unwrap();
        assert!(matches!(h.verify(&bad, b"abc"), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn header_only_checksum_ignores_the_body_but_not_the_header() {
        let raw = Header::encode_with(Kind::Data, 5, b"abc", false);
        let h = Header::decode(&raw, 64).unwrap();
        h.verify(&raw, b"xyz").unwrap();
        let mut bad = raw;
        bad[17] ^= 1;
        assert!(matches!(Header::decode(&bad, 64).unwrap().verify(&bad, b"abc"), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn push_aux_round_trip() {
        assert_eq!(push_aux_parts(push_aux(65535, u32::MAX)), (65535, u32::MAX as usize));
        assert_eq!(push_aux_parts(push_aux(7, 12)), (7, 12));
    }

    #[test]
    fn arbitrary_headers_never_panic() {
        // A cheap deterministic sweep over byte patterns; the fuzz target covers more.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            let mut raw = [0u8; HEADER_LEN];
            for b in raw.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if x.is_multiple_of(4) {
                raw[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                raw[4..6].copy_from_slice(&WIRE_VERSION.to_le_bytes());
            }
            let _ = Header::decode(&raw, 1 << 20);
        }
    }
}
