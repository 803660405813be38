//! FNV-1a, the one non-cryptographic hash of the project: deterministic across processes,
//! builds and toolchains (unlike `std`'s hashers), for tags that peers compare, digests that
//! tests compare, and placing keys on shards. Never for anything an adversary chooses the input
//! of and must not collide (it is not collision resistant).
//!
//! ```
//! use derecho_wire::hash::{Fnv64, fnv1a64};
//!
//! let mut h = Fnv64::new();
//! h.write(b"key").write(b"17");
//! assert_eq!(h.finish(), fnv1a64(b"key17"));
//! ```

/// FNV-1a over 64 bits, fed in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv64(u64);

impl Fnv64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    /// The hash of nothing.
    pub const fn new() -> Self {
        Self(Self::OFFSET)
    }

    /// A hash that goes on from `state` (a value [`Fnv64::finish`] returned).
    pub const fn from_state(state: u64) -> Self {
        Self(state)
    }

    /// Adds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        self
    }

    /// Adds `v` as 8 little-endian bytes.
    pub fn write_u64(&mut self, v: u64) -> &mut Self {
        self.write(&v.to_le_bytes())
    }

    /// The hash so far.
    pub const fn finish(&self) -> u64 {
        self.0
    }

    /// The hash so far folded to 32 bits (the halves xored).
    pub const fn finish_u32(&self) -> u32 {
        (self.0 ^ (self.0 >> 32)) as u32
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a over 32 bits, fed in pieces (the tags of TCP handshakes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv32(u32);

impl Fnv32 {
    /// The hash of nothing.
    pub const fn new() -> Self {
        Self(0x811c_9dc5)
    }

    /// Adds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        self
    }

    /// The hash so far.
    pub const fn finish(&self) -> u32 {
        self.0
    }
}

impl Default for Fnv32 {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a over 64 bits of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv64::new().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_test_vectors() {
        // From the FNV reference: the empty string and "a".
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(Fnv32::new().write(b"a").finish(), 0xe40c_292c);
        assert_eq!(Fnv32::new().write(b"foobar").finish(), 0xbf9c_f968);
        let mut h = Fnv64::new();
        h.write(b"foo");
        assert_eq!(Fnv64::from_state(h.finish()).write(b"bar").finish(), fnv1a64(b"foobar"));
    }
}
