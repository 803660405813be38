//! The workload's message payloads: self-describing and checksummed, so that a delivered payload
//! names its sender, shard and per-sender sequence number, and any corruption, truncation or
//! mix-up of slots is detected by the payload-integrity checker.
//!
//! Layout (little-endian):
//!
//! ```text
//! 0..4    sender NodeId (u32)
//! 4..6    subgroup (u16)
//! 6..8    shard index (u16)
//! 8..16   seq (u64): the sender's count of workload messages before this one, in this shard
//! 16..20  len (u32): the whole payload's length
//! 20..24  checksum (u32): FNV-1a over bytes 0..20 and 24..len
//! 24..    filler: a pseudo-random function of (sender, shard, seq), so two messages differ
//! ```

use crate::protocol::{NodeId, ShardIndex, ShardRef, SubgroupId};

use super::rng::SimRng;

/// Bytes of the payload header; the shortest payload the workload sends.
pub const PAYLOAD_HEADER_LEN: usize = 24;

/// What a valid payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadId {
    /// The sender that wrote it.
    pub sender: NodeId,
    /// The shard it was sent into.
    pub shard: ShardRef,
    /// The sender's workload sequence number in that shard (0, 1, 2, ...; nulls not counted).
    pub seq: u64,
    /// The checksum it carries.
    pub checksum: u32,
}

/// Why a payload is not one the workload wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Shorter than the header.
    #[error("payload of {0} bytes is shorter than the {PAYLOAD_HEADER_LEN}-byte header")]
    Short(usize),
    /// The length field disagrees with the delivered length.
    #[error("payload says it has {said} bytes but {got} were delivered")]
    Length {
        /// The length field.
        said: u32,
        /// The delivered length.
        got: usize,
    },
    /// The checksum does not match the bytes.
    #[error("payload checksum {said:#010x} does not match the bytes ({computed:#010x})")]
    Checksum {
        /// The checksum field.
        said: u32,
        /// The checksum of the bytes delivered.
        computed: u32,
    },
}

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h = crate::hash::Fnv64::new();
    for part in parts {
        h.write(part);
    }
    h.finish_u32()
}

/// Writes the payload of message `seq` of `sender` in `shard` into `buf` (its whole length).
///
/// # Panics
///
/// If `buf` is shorter than [`PAYLOAD_HEADER_LEN`] (the simulator's configuration forbids it).
pub fn encode(buf: &mut [u8], sender: NodeId, shard: ShardRef, seq: u64) {
    assert!(buf.len() >= PAYLOAD_HEADER_LEN, "payload of {} bytes cannot hold the header", buf.len());
    buf[0..4].copy_from_slice(&sender.0.to_le_bytes());
    buf[4..6].copy_from_slice(&shard.subgroup.0.to_le_bytes());
    buf[6..8].copy_from_slice(&shard.shard.0.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    let len = buf.len() as u32;
    buf[16..20].copy_from_slice(&len.to_le_bytes());
    let mut filler = SimRng::new(
        u64::from(sender.0) << 32 ^ u64::from(shard.subgroup.0) << 16 ^ u64::from(shard.shard.0) ^ seq.rotate_left(40),
    );
    for chunk in buf[PAYLOAD_HEADER_LEN..].chunks_mut(8) {
        let word = filler.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let sum = fnv1a(&[&buf[0..20], &buf[PAYLOAD_HEADER_LEN..]]);
    buf[20..24].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a delivered payload and returns what it says about itself.
///
/// # Errors
///
/// The payload is too short, its length field is wrong, or its checksum does not match.
pub fn decode(payload: &[u8]) -> Result<PayloadId, PayloadError> {
    if payload.len() < PAYLOAD_HEADER_LEN {
        return Err(PayloadError::Short(payload.len()));
    }
    let u16_at = |i: usize| u16::from_le_bytes([payload[i], payload[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
    let said_len = u32_at(16);
    if said_len as usize != payload.len() {
        return Err(PayloadError::Length { said: said_len, got: payload.len() });
    }
    let said = u32_at(20);
    let computed = fnv1a(&[&payload[0..20], &payload[PAYLOAD_HEADER_LEN..]]);
    if said != computed {
        return Err(PayloadError::Checksum { said, computed });
    }
    Ok(PayloadId {
        sender: NodeId(u32_at(0)),
        shard: ShardRef { subgroup: SubgroupId(u16_at(4)), shard: ShardIndex(u16_at(6)) },
        seq: u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes")),
        checksum: said,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> ShardRef {
        ShardRef { subgroup: SubgroupId(3), shard: ShardIndex(1) }
    }

    #[test]
    fn payloads_round_trip_and_differ_per_message() {
        let mut a = vec![0u8; 61];
        let mut b = vec![0u8; 61];
        encode(&mut a, NodeId(22), shard(), 7);
        encode(&mut b, NodeId(22), shard(), 8);
        assert_ne!(a[PAYLOAD_HEADER_LEN..], b[PAYLOAD_HEADER_LEN..]);
        let id = decode(&a).unwrap();
        assert_eq!((id.sender, id.shard, id.seq), (NodeId(22), shard(), 7));
        let mut short = vec![0u8; PAYLOAD_HEADER_LEN];
        encode(&mut short, NodeId(1), shard(), 0);
        assert_eq!(decode(&short).unwrap().seq, 0);
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let mut p = vec![0u8; 40];
        encode(&mut p, NodeId(11), shard(), 3);
        for byte in 0..p.len() {
            for bit in 0..8 {
                let mut q = p.clone();
                q[byte] ^= 1 << bit;
                assert!(decode(&q).is_err(), "flip of bit {bit} of byte {byte} went unnoticed");
            }
        }
        assert_eq!(decode(&p[..39]), Err(PayloadError::Length { said: 40, got: 39 }));
        assert_eq!(decode(&p[..10]), Err(PayloadError::Short(10)));
    }
}
