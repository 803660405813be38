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

impl ShardRef {
    /// Shard `shard` of subgroup `subgroup`: `ShardRef::new(0, 0)` is the first shard of the
    /// first subgroup (the only one of a group with one subgroup of one shard).
    pub const fn new(subgroup: u16, shard: u16) -> Self {
        Self { subgroup: SubgroupId(subgroup), shard: ShardIndex(shard) }
    }
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
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
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

/// A version that did not parse: neither `vVIEW.SEQ` (as [`Version`] prints), `VIEW.SEQ`, nor a
/// packed number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version: give vVIEW.SEQ (as in v2.17) or a packed number")]
pub struct ParseVersionError(pub String);

impl std::str::FromStr for Version {
    type Err = ParseVersionError;

    /// Reads what [`Display`](fmt::Display) writes (`v2.17`), also without the `v`, or the packed
    /// number ([`Version::as_u64`]).
    fn from_str(s: &str) -> Result<Self, ParseVersionError> {
        let bad = || ParseVersionError(s.to_string());
        let t = s.trim();
        if let Some((view, seq)) = t.strip_prefix('v').unwrap_or(t).split_once('.') {
            let view: u32 = view.parse().map_err(|_| bad())?;
            let seq: u64 = seq.parse().map_err(|_| bad())?;
            if view >= 1 << 24 || seq > Self::SEQ_MAX {
                return Err(bad());
            }
            return Ok(Self::new(ViewId(view), seq));
        }
        t.parse::<u64>().map(Self::from_u64).map_err(|_| bad())
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
    fn versions_parse_as_they_print() {
        for v in [Version::new(ViewId(2), 2), Version::new(ViewId(0), 0), Version::new(ViewId(77), Version::SEQ_MAX)] {
            assert_eq!(v.to_string().parse::<Version>(), Ok(v));
            assert_eq!(v.as_u64().to_string().parse::<Version>(), Ok(v));
        }
        assert_eq!("2.3".parse::<Version>(), Ok(Version::new(ViewId(2), 3)));
        for bad in ["", "v", "v2", "v2.", "vx.1", "v2.-1", "v16777216.0", "two"] {
            assert_eq!(bad.parse::<Version>(), Err(ParseVersionError(bad.to_string())), "{bad}");
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn oversized_seq_is_refused() {
        Version::new(ViewId(0), Version::SEQ_MAX + 1);
    }
}
