//! Identifiers, each a newtype with an explicit width (PROTOCOLS, "words used everywhere").

use std::fmt;

/// A member of the group: one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// An epoch of membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId(pub u32);

/// A subgroup: a set of members replicating one object type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubgroupId(pub u16);

/// A shard of a subgroup; replication and ordering happen per shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardIndex(pub u16);

/// A member's index in the view's member list (oldest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank(pub u32);

/// Identifies a shard within the view's layout: `(subgroup, shard)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardRef {
    /// The subgroup.
    pub subgroup: SubgroupId,
    /// The shard within it.
    pub shard: ShardIndex,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

impl fmt::Display for ShardRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subgroup {} shard {}", self.subgroup.0, self.shard.0)
    }
}

/// The identity of one delivered ordered update: the view it was delivered in and its global
/// sequence number in that view's shard order (PROTOCOLS §2.2). Packed into a `u64` as
/// `view << 40 | seq`, so versions of later views compare greater.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Version(u64);

/// Bits of a [`Version`] that hold the sequence number.
const SEQ_BITS: u32 = 40;

impl Version {
    /// Largest sequence number a version can hold (about 1.1e12 messages per view and shard).
    pub const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

    /// The version of message `seq` delivered in `view`.
    ///
    /// # Panics
    ///
    /// If `seq` exceeds [`Version::SEQ_MAX`] or the view id exceeds 24 bits (a programmer error:
    /// the protocol bounds both).
    pub fn new(view: ViewId, seq: u64) -> Self {
        assert!(seq <= Self::SEQ_MAX, "sequence number {seq} does not fit a version");
        assert!(view.0 < 1 << 24, "view id {} does not fit a version", view.0);
        Self((u64::from(view.0) << SEQ_BITS) | seq)
    }

    /// The view.
    pub fn view(self) -> ViewId {
        ViewId((self.0 >> SEQ_BITS) as u32)
    }

    /// The sequence number within the view.
    pub fn seq(self) -> u64 {
        self.0 & Self::SEQ_MAX
    }

    /// The packed value.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The version a packed value stands for (every `u64` is one).
    pub fn from_u64(v: u64) -> Self {
        Self(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.view().0, self.seq())
    }
}

/// A point in time in nanoseconds, from the driver's clock (or the simulator's virtual clock):
/// the protocol never reads a clock itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// `self + ns`.
    pub fn plus_ns(self, ns: u64) -> Self {
        Time(self.0.saturating_add(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pack_and_order_by_view_then_seq() {
        let a = Version::new(ViewId(1), Version::SEQ_MAX);
        let b = Version::new(ViewId(2), 0);
        assert!(a < b);
        assert_eq!((a.view(), a.seq()), (ViewId(1), Version::SEQ_MAX));
        assert_eq!((b.view(), b.seq()), (ViewId(2), 0));
        assert_eq!(b.to_string(), "v2.0");
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn oversized_seq_is_refused() {
        Version::new(ViewId(0), Version::SEQ_MAX + 1);
    }
}
