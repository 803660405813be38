//! The record format of a durable log, and the scan that recovers a log after a crash
//! (PROTOCOLS §4, §7). Pure: bytes in, records out.
//!
//! ```text
//! offset size field
//!  0     4    magic     "DLOG"
//!  4     4    length    payload length in bytes
//!  8     8    version   the version the record stores (strictly increasing along the log)
//! 16     8    hlc       hybrid logical clock timestamp of the version (never decreasing)
//! 24     4    crc       CRC32C of bytes 0..24 and the payload
//! 28     4    reserved  0
//! 32          payload, then zeros up to a multiple of 8
//! ```
//!
//! A log is a sequence of records. The scan reads from the start and stops at the first record
//! that is torn (shorter than its header says, or the last one, failing its checksum, with zeros
//! from a sector boundary inside it to the end: a write cut short over zeros written ahead),
//! fails its checksum, breaks a field rule or goes
//! backwards in version or time; everything before it is the valid prefix, and recovery cuts the
//! file there. So a crash in the middle of a write, or a bit flipped on disk, loses the records
//! from the damage on, never returns a damaged one, and never skips over a hole. Zeros after the
//! last record (to the end of the bytes) are the log's end, not damage: a log is written ahead
//! with zeros (see [`DurableLog`](super::DurableLog)), and no record starts with a zero byte.

/// `"DLOG"` as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DLOG");
/// Bytes of a record's header.
pub const HEADER_LEN: usize = 32;
/// The longest payload a record holds (a version of a persistent field).
pub const PAYLOAD_LEN_MAX: usize = 1 << 30;

/// Bytes a record of `payload_len` bytes takes in the log.
pub fn record_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len.next_multiple_of(8)
}

/// Appends a record to `out`.
///
/// # Panics
///
/// If the payload is longer than [`PAYLOAD_LEN_MAX`] (a programmer error: the persistent
/// field's limit is checked before).
pub fn encode(out: &mut Vec<u8>, version: u64, hlc: u64, payload: &[u8]) {
    assert!(payload.len() <= PAYLOAD_LEN_MAX, "a payload of {} bytes is above the record limit", payload.len());
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&hlc.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 24]), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out.resize(start + record_len(payload.len()), 0);
}

/// One valid record found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its version.
    pub version: u64,
    /// Its timestamp.
    pub hlc: u64,
    /// Where its payload starts in the scanned bytes.
    pub payload_offset: usize,
    /// Its payload's length.
    pub payload_len: usize,
}

/// Why a scan stopped before the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The last record is shorter than its header says: a write that did not complete.
    Torn {
        /// Where it starts.
        at: usize,
    },
    /// A record that fails its checksum or a field rule: corruption.
    Corrupt {
        /// Where it starts.
        at: usize,
        /// Which rule.
        why: &'static str,
    },
}

/// What a log holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The valid records, in log order.
    pub records: Vec<Found>,
    /// The length of the valid prefix: where the next record goes, and where recovery cuts
    /// the log if it is damaged.
    pub valid_len: usize,
    /// Why the scan stopped before the end, if it did (zeros to the end are no damage).
    pub damage: Option<Damage>,
}

/// Bytes a disk writes whole (a write torn by a power cut keeps or loses whole sectors).
pub const SECTOR: usize = 512;

/// Whether a record at file offset `at` that fails its checksum is a write torn by a power cut
/// over zeros written ahead: nothing but zeros follows it, and it ends in zeros from a sector
/// boundary inside it on (its first sectors reached the disk, the others did not). A flipped
/// bit leaves no such run of zeros, unless the payload itself ends in one.
fn torn_in_zeros(at: usize, record: &[u8], after: &[u8]) -> bool {
    // Where the record's trailing zeros start, and the first sector boundary from there.
    let zeros_from = record.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let boundary = (at + zeros_from).next_multiple_of(SECTOR) - at;
    boundary < record.len() && after.iter().all(|&b| b == 0)
}

/// Reads `bytes` (a whole log) from the start; see the module documentation.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut at = 0;
    let mut last: Option<(u64, u64)> = None;
    let damage = loop {
        if at == bytes.len() {
            break None;
        }
        let rest = &bytes[at..];
        // Zeros after the last record are the log's end: written ahead of the records, or a
        // write that never started. (A record starts with its magic, so this looks at one byte
        // until the end.)
        if rest.iter().all(|&b| b == 0) {
            break None;
        }
        if rest.len() < HEADER_LEN {
            break Some(Damage::Torn { at });
        }
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            break Some(Damage::Corrupt { at, why: "bad magic" });
        }
        let len = u32_at(4) as usize;
        if len > PAYLOAD_LEN_MAX {
            break Some(Damage::Corrupt { at, why: "a length above the limit" });
        }
        let total = record_len(len);
        if rest.len() < total {
            break Some(Damage::Torn { at });
        }
        let (version, hlc) = (u64_at(8), u64_at(16));
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rest[..24]), payload);
        if crc != u32_at(24) {
            if torn_in_zeros(at, &rest[..total], &rest[total..]) {
                break Some(Damage::Torn { at });
            }
            break Some(Damage::Corrupt { at, why: "checksum mismatch" });
        }
        if u32_at(28) != 0 || rest[HEADER_LEN + len..total].iter().any(|&b| b != 0) {
            break Some(Damage::Corrupt { at, why: "reserved bytes set" });
        }
        if let Some((v, t)) = last
            && (version <= v || hlc < t)
        {
            break Some(Damage::Corrupt { at, why: "a version or timestamp that goes backwards" });
        }
        last = Some((version, hlc));
        records.push(Found { version, hlc, payload_offset: at + HEADER_LEN, payload_len: len });
        at += total;
    };
    Scan { records, valid_len: at, damage }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let payload: Vec<u8> = (0..(i * 7 % 23)).map(|b| b as u8 ^ i as u8).collect();
            encode(&mut out, 10 + i * 3, 1000 + i, &payload);
        }
        out
    }

    #[test]
    fn records_round_trip() {
        let bytes = log(20);
        let s = scan(&bytes);
        assert_eq!(s.damage, None);
        assert_eq!(s.valid_len, bytes.len());
        assert_eq!(s.records.len(), 20);
        for (i, r) in s.records.iter().enumerate() {
            let i = i as u64;
            assert_eq!((r.version, r.hlc), (10 + i * 3, 1000 + i));
            let want: Vec<u8> = (0..(i * 7 % 23)).map(|b| b as u8 ^ i as u8).collect();
            assert_eq!(&bytes[r.payload_offset..r.payload_offset + r.payload_len], &want[..]);
        }
        assert_eq!(scan(&[]).records, vec![]);
    }

    #[test]
    fn a_torn_write_at_any_byte_keeps_exactly_the_whole_records_before_it() {
        let bytes = log(8);
        let ends: Vec<usize> = {
            let s = scan(&bytes);
            s.records.iter().map(|r| r.payload_offset + r.payload_len.next_multiple_of(8)).collect()
        };
        for cut in 0..=bytes.len() {
            let s = scan(&bytes[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(s.records.len(), whole, "cut at {cut}");
            assert_eq!(s.valid_len, if whole == 0 { 0 } else { ends[whole - 1] }, "cut at {cut}");
            assert!(matches!(s.damage, None | Some(Damage::Torn { .. })), "cut at {cut}: {:?}", s.damage);
        }
        // Zeros after the last record (written ahead, or a write that never started) are the
        // log's end, not damage; anything else after them is.
        for zeros in [1, 7, 31, 32, 100, 4096] {
            let mut z = bytes.clone();
            z.resize(bytes.len() + zeros, 0);
            let s = scan(&z);
            assert_eq!((s.damage, s.valid_len, s.records.len()), (None, bytes.len(), 8), "{zeros} zeros");
            z.push(1);
            assert!(matches!(scan(&z).damage, Some(Damage::Torn { .. } | Damage::Corrupt { .. })), "{zeros} zeros");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_never_yields_a_damaged_record() {
        let bytes = log(6);
        let good = scan(&bytes);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                let s = scan(&b);
                // Every record returned is one of the original ones, byte for byte, in order,
                // and they form a prefix of the log.
                for (k, r) in s.records.iter().enumerate() {
                    let o = good.records[k];
                    assert_eq!((r.version, r.hlc, r.payload_len), (o.version, o.hlc, o.payload_len), "byte {i}");
                    assert_eq!(
                        &b[r.payload_offset..r.payload_offset + r.payload_len],
                        &bytes[o.payload_offset..o.payload_offset + o.payload_len],
                        "byte {i}"
                    );
                }
                assert!(s.records.len() < good.records.len() || s.damage.is_none(), "byte {i}: damage unnoticed");
                assert!(s.damage.is_some(), "flipping byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn a_write_torn_over_zeros_is_torn_and_a_flipped_bit_there_is_corrupt() {
        let mut bytes = log(3);
        let start = bytes.len();
        encode(&mut bytes, 100, 2000, &[0x5a; 3000]);
        let end = bytes.len();
        bytes.resize(end + 8192, 0); // zeros written ahead
        // Only the sectors up to the second boundary inside the record reached the disk.
        let mut torn = bytes.clone();
        let cut = (start + 1).next_multiple_of(SECTOR) + SECTOR;
        torn[cut..end].fill(0);
        let s = scan(&torn);
        assert_eq!((s.records.len(), s.valid_len), (3, start));
        assert_eq!(s.damage, Some(Damage::Torn { at: start }));
        // A flipped bit in the same record, whole otherwise: corrupt.
        let mut flipped = bytes.clone();
        flipped[start + 40] ^= 4;
        assert!(matches!(scan(&flipped).damage, Some(Damage::Corrupt { .. })));
        // Zeros inside the record but something after it: corrupt.
        let mut later = torn.clone();
        later[end + 100] = 1;
        assert!(matches!(scan(&later).damage, Some(Damage::Corrupt { .. })));
        // A record within one sector cannot be torn inside: a bad checksum there is corrupt.
        let mut small = log(3);
        let at = small.len();
        encode(&mut small, 100, 2000, &[0x5a; 8]);
        small.resize(small.len() + 4096, 0);
        small[at + 33] ^= 1;
        let boundary = (at + 1).next_multiple_of(SECTOR);
        assert!(boundary >= at + record_len(8), "the test record sits in one sector");
        assert!(matches!(scan(&small).damage, Some(Damage::Corrupt { .. })));
    }

    #[test]
    fn versions_and_times_must_go_forward() {
        let mut out = Vec::new();
        encode(&mut out, 5, 100, b"a");
        encode(&mut out, 5, 101, b"b");
        let s = scan(&out);
        assert_eq!(s.records.len(), 1);
        assert!(matches!(s.damage, Some(Damage::Corrupt { why: "a version or timestamp that goes backwards", .. })));
        let mut out = Vec::new();
        encode(&mut out, 5, 100, b"a");
        encode(&mut out, 6, 99, b"b");
        assert_eq!(scan(&out).records.len(), 1);
    }
}
