//! A versioned value in memory (the *volatile* variant of a persistent field, and the index a
//! durable one keeps over its log): every ordered update that changes it adds a version, with
//! the update's version (its place in the shard's order) and its hybrid-clock timestamp.
//!
//! Reads by version ("the value at version v": the last version at or before v), by index, the
//! latest, and by time ("the value at or before time t"). A read by time is a consistent
//! snapshot across the shard only at or before the shard's *stable* time, the time every member
//! has delivered up to; beyond it a later version could still appear, so such a read is refused
//! with [`VersionError::BeyondStable`] (PROTOCOLS §4).

use std::collections::VecDeque;

use super::hlc::Hlc;
use crate::protocol::Version;

/// Why a versioned read or write was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// A version or time that does not go forward.
    #[error("version {version} at {hlc} does not follow version {last} at {last_hlc}")]
    OutOfOrder {
        /// The version recorded.
        version: Version,
        /// Its time.
        hlc: Hlc,
        /// The latest version.
        last: Version,
        /// Its time.
        last_hlc: Hlc,
    },
    /// The versions asked for were trimmed.
    #[error("version {asked} is before the oldest kept, {oldest}")]
    Trimmed {
        /// What was asked.
        asked: Version,
        /// The oldest version kept.
        oldest: Version,
    },
    /// A time before the oldest version kept, after a trim: the value then may have been
    /// trimmed away.
    #[error(
        "time {asked} is before the oldest time kept after a trim ({})",
        .oldest.map_or_else(|| "nothing is kept".to_string(), |t| t.to_string())
    )]
    TrimmedTime {
        /// What was asked.
        asked: Hlc,
        /// The oldest time kept (`None`: nothing is kept).
        oldest: Option<Hlc>,
    },
    /// A value set outside an ordered call's handler: there is no version to set it at.
    #[error("a persistent value is set inside an ordered call's handler, at the call's version")]
    NotInAnUpdate,
    /// A read by time without a stable time (outside a query to a persisting service, or
    /// before anything is durable at every member).
    #[error(
        "no stable time: reads by time need a query to a service that persists, once something is durable everywhere"
    )]
    NoStableTime,
    /// A time after the shard's stable time: later versions could still appear before it.
    #[error("time {asked} is after the shard's stable time {stable}")]
    BeyondStable {
        /// What was asked.
        asked: Hlc,
        /// The stable time.
        stable: Hlc,
    },
}

/// The versions of one value; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Versioned<T> {
    entries: VecDeque<(Version, Hlc, T)>,
    /// Versions before this one were trimmed away.
    trimmed_before: Option<Version>,
}

impl<T> Default for Versioned<T> {
    fn default() -> Self {
        Self { entries: VecDeque::new(), trimmed_before: None }
    }
}

impl<T> Versioned<T> {
    /// No versions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `value` as of `version` at time `hlc`.
    ///
    /// # Errors
    ///
    /// [`VersionError::OutOfOrder`] when the version does not increase or the time goes back.
    pub fn record(&mut self, version: Version, hlc: Hlc, value: T) -> Result<(), VersionError> {
        if let Some((last, last_hlc, _)) = self.entries.back()
            && (version <= *last || hlc < *last_hlc)
        {
            return Err(VersionError::OutOfOrder { version, hlc, last: *last, last_hlc: *last_hlc });
        }
        self.entries.push_back((version, hlc, value));
        Ok(())
    }

    /// Versions kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no version is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The latest version and its value.
    pub fn latest(&self) -> Option<(Version, &T)> {
        self.entries.back().map(|(v, _, t)| (*v, t))
    }

    /// The `i`-th version kept (0 is the oldest).
    pub fn by_index(&self, i: usize) -> Option<(Version, Hlc, &T)> {
        self.entries.get(i).map(|(v, h, t)| (*v, *h, t))
    }

    /// The value at `version`: the last version at or before it (`None` if there is none yet).
    ///
    /// # Errors
    ///
    /// [`VersionError::Trimmed`] when the versions up to `version` were trimmed.
    pub fn at_version(&self, version: Version) -> Result<Option<(Version, &T)>, VersionError> {
        if let Some(oldest) = self.trimmed_before
            && version < oldest
        {
            return Err(VersionError::Trimmed { asked: version, oldest });
        }
        let i = self.entries.partition_point(|(v, _, _)| *v <= version);
        Ok(i.checked_sub(1).map(|i| (self.entries[i].0, &self.entries[i].2)))
    }

    /// The value at time `t`: the last version at or before it, if `t` is at or before the
    /// shard's stable time `stable`.
    ///
    /// # Errors
    ///
    /// [`VersionError::BeyondStable`] when `t` is after `stable`.
    pub fn at_time(&self, t: Hlc, stable: Hlc) -> Result<Option<(Version, &T)>, VersionError> {
        if t > stable {
            return Err(VersionError::BeyondStable { asked: t, stable });
        }
        let i = self.entries.partition_point(|(_, h, _)| *h <= t);
        if i == 0 && self.trimmed_before.is_some() {
            return Err(VersionError::TrimmedTime { asked: t, oldest: self.entries.front().map(|e| e.1) });
        }
        Ok(i.checked_sub(1).map(|i| (self.entries[i].0, &self.entries[i].2)))
    }

    /// Drops the versions before `version`, keeping the one in force at `version` (so reads at
    /// `version` and later still answer).
    pub fn trim_before(&mut self, version: Version) {
        let keep_from = self.entries.partition_point(|(v, _, _)| *v <= version).saturating_sub(1);
        self.entries.drain(..keep_from);
        if keep_from > 0 || self.trimmed_before.is_some() {
            self.trimmed_before = Some(self.trimmed_before.map_or(version, |t| t.max(version)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ViewId;

    fn v(seq: u64) -> Version {
        Version::new(ViewId(1), seq)
    }

    fn history() -> Versioned<&'static str> {
        let mut h = Versioned::new();
        h.record(v(10), Hlc(100), "a").unwrap();
        h.record(v(20), Hlc(200), "b").unwrap();
        h.record(v(30), Hlc(200), "c").unwrap();
        h
    }

    #[test]
    fn reads_by_version_index_latest_and_time() {
        let h = history();
        assert_eq!(h.latest(), Some((v(30), &"c")));
        assert_eq!(h.by_index(1), Some((v(20), Hlc(200), &"b")));
        assert_eq!(h.at_version(v(5)).unwrap(), None);
        assert_eq!(h.at_version(v(10)).unwrap(), Some((v(10), &"a")));
        assert_eq!(h.at_version(v(25)).unwrap(), Some((v(20), &"b")));
        assert_eq!(h.at_version(v(99)).unwrap(), Some((v(30), &"c")));
        assert_eq!(h.at_time(Hlc(150), Hlc(1000)).unwrap(), Some((v(10), &"a")));
        // Two versions at one time: the later one is the value at that time.
        assert_eq!(h.at_time(Hlc(200), Hlc(1000)).unwrap(), Some((v(30), &"c")));
        assert_eq!(h.at_time(Hlc(50), Hlc(1000)).unwrap(), None);
    }

    #[test]
    fn reads_beyond_the_stable_time_are_refused() {
        let h = history();
        assert_eq!(
            h.at_time(Hlc(300), Hlc(250)).unwrap_err(),
            VersionError::BeyondStable { asked: Hlc(300), stable: Hlc(250) }
        );
        assert!(h.at_time(Hlc(250), Hlc(250)).is_ok());
    }

    #[test]
    fn order_is_enforced_and_trims_keep_the_value_in_force() {
        let mut h = history();
        assert!(matches!(h.record(v(30), Hlc(300), "x"), Err(VersionError::OutOfOrder { .. })));
        assert!(matches!(h.record(v(40), Hlc(150), "x"), Err(VersionError::OutOfOrder { .. })));
        h.trim_before(v(25));
        assert_eq!(h.len(), 2, "b stays: it is the value at version 25");
        assert_eq!(h.at_version(v(25)).unwrap(), Some((v(20), &"b")));
        assert!(matches!(h.at_version(v(15)), Err(VersionError::Trimmed { .. })));
        h.record(v(40), Hlc(300), "d").unwrap();
        assert_eq!(h.latest(), Some((v(40), &"d")));
    }
}
