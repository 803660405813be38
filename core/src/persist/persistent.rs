//! [`Persistent<T>`]: a field of a `#[replicated]` type that keeps every value it had, each with
//! the version and the time of the ordered call that set it (PROTOCOLS §4).
//!
//! Inside an ordered call's handler, [`Persistent::set`] records the new value at the call's
//! version and time (from [`crate::context::context`]); every replica applies the same calls in the
//! same order, so every replica holds the same versions. Reads: the latest value, the value at a
//! version, by index, and at a time. A read by time is answered only at or before the shard's
//! stable time (the time of its global persistence frontier, given to queries as
//! [`crate::context::CallContext::stable_time`]): every version up to it is durable everywhere and
//! none can still appear before it, so the answer is the same at every replica and after any
//! restart. Later times are refused with [`VersionError::BeyondStable`].
//!
//! The versions live in memory; what makes them durable is the service's log of the ordered
//! calls ([`crate::rpc::Service::persist_to`]), from which they can be rebuilt. A type that is
//! not persisted keeps its versions all the same (the volatile variant). A joiner receives the
//! versions with the rest of the state.

use rkyv::{Archive, Deserialize, Serialize};

use super::hlc::Hlc;
use super::versioned::{VersionError, Versioned};
use crate::protocol::Version;

/// A versioned field; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Persistent<T> {
    versions: Versioned<T>,
}

impl<T> Default for Persistent<T> {
    fn default() -> Self {
        Self { versions: Versioned::new() }
    }
}

impl<T> Persistent<T> {
    /// No value yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `value` as of the ordered call this handler applies: at its version and time.
    ///
    /// # Errors
    ///
    /// [`VersionError::NotInAnUpdate`] outside an ordered call's handler (a query, or no call);
    /// [`VersionError::OutOfOrder`] if this field was already set at this version.
    pub fn set(&mut self, value: T) -> Result<Version, VersionError> {
        let c = crate::context::context();
        let (Some(version), Some(time)) = (c.as_ref().and_then(|c| c.version), c.as_ref().and_then(|c| c.time)) else {
            return Err(VersionError::NotInAnUpdate);
        };
        self.versions.record(version, time, value)?;
        Ok(version)
    }

    /// Records `value` at an explicit `version` and `time` (replaying a log, tests).
    ///
    /// # Errors
    ///
    /// [`VersionError::OutOfOrder`] when the version does not increase or the time goes back.
    pub fn record(&mut self, version: Version, time: Hlc, value: T) -> Result<(), VersionError> {
        self.versions.record(version, time, value)
    }

    /// The latest value.
    pub fn latest(&self) -> Option<&T> {
        self.versions.latest().map(|(_, v)| v)
    }

    /// The latest value with its version.
    pub fn latest_versioned(&self) -> Option<(Version, &T)> {
        self.versions.latest()
    }

    /// The value at `version`: the last one set at or before it.
    ///
    /// # Errors
    ///
    /// [`VersionError::Trimmed`] when the versions up to `version` were trimmed.
    pub fn at_version(&self, version: Version) -> Result<Option<(Version, &T)>, VersionError> {
        self.versions.at_version(version)
    }

    /// The value at time `t`, inside a query to a persisting service: the last one set at or
    /// before `t`, if `t` is at or before the shard's stable time.
    ///
    /// # Errors
    ///
    /// [`VersionError::BeyondStable`] after the stable time; [`VersionError::NoStableTime`]
    /// when the query has none (the service does not persist, or nothing is durable everywhere
    /// yet).
    pub fn at_time(&self, t: Hlc) -> Result<Option<(Version, &T)>, VersionError> {
        let stable = crate::context::context().and_then(|c| c.stable_time).ok_or(VersionError::NoStableTime)?;
        self.versions.at_time(t, stable)
    }

    /// As [`Persistent::at_time`], with the stable time given.
    ///
    /// # Errors
    ///
    /// [`VersionError::BeyondStable`] after `stable`.
    pub fn at_time_with(&self, t: Hlc, stable: Hlc) -> Result<Option<(Version, &T)>, VersionError> {
        self.versions.at_time(t, stable)
    }

    /// The `i`-th version kept (0 is the oldest), with its time.
    pub fn by_index(&self, i: usize) -> Option<(Version, Hlc, &T)> {
        self.versions.by_index(i)
    }

    /// Versions kept.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no version is kept.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Drops the versions before `version`, keeping the one in force at it.
    pub fn trim_before(&mut self, version: Version) {
        self.versions.trim_before(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ViewId;

    fn v(seq: u64) -> Version {
        Version::new(ViewId(1), seq)
    }

    #[test]
    fn set_outside_an_update_is_refused() {
        let mut p = Persistent::new();
        assert_eq!(p.set(1u32), Err(VersionError::NotInAnUpdate));
        assert!(p.is_empty());
    }

    #[test]
    fn reads_by_version_time_and_index() {
        let mut p = Persistent::new();
        p.record(v(1), Hlc(10), "a").unwrap();
        p.record(v(4), Hlc(20), "b").unwrap();
        p.record(v(9), Hlc(30), "c").unwrap();
        assert_eq!(p.latest(), Some(&"c"));
        assert_eq!(p.at_version(v(5)).unwrap(), Some((v(4), &"b")));
        assert_eq!(p.at_version(v(0)).unwrap(), None);
        assert_eq!(p.at_time_with(Hlc(25), Hlc(30)).unwrap(), Some((v(4), &"b")));
        assert!(matches!(p.at_time_with(Hlc(31), Hlc(30)), Err(VersionError::BeyondStable { .. })));
        // Outside a query there is no stable time.
        assert_eq!(p.at_time(Hlc(5)), Err(VersionError::NoStableTime));
        assert_eq!(p.by_index(1), Some((v(4), Hlc(20), &"b")));
        assert!(p.record(v(9), Hlc(40), "d").is_err(), "a version twice");
        p.trim_before(v(5));
        assert_eq!(p.at_version(v(5)).unwrap(), Some((v(4), &"b")));
        assert!(p.at_version(v(1)).is_err());
        // A time whose value was trimmed away is refused, not answered "nothing".
        assert_eq!(p.at_time_with(Hlc(20), Hlc(30)).unwrap(), Some((v(4), &"b")));
        assert!(matches!(p.at_time_with(Hlc(15), Hlc(30)), Err(VersionError::TrimmedTime { .. })));
    }

    #[test]
    fn archives_and_restores() {
        let mut p = Persistent::new();
        p.record(v(1), Hlc(10), 7u64).unwrap();
        p.record(v(2), Hlc(11), 8u64).unwrap();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&p).unwrap();
        let back: Persistent<u64> = rkyv::from_bytes::<_, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, p);
    }
}
