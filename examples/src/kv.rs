//! A sharded, versioned key-value store replicated with ordered calls: the type the `kv` demo,
//! its linearizability test and the book's chapter on replicated objects build on.
//!
//! Every key's values are a [`Persistent`] field: each put is kept with the version it was
//! applied at (its place in the shard's order, the same at every replica) and its time, so a
//! read can ask for the value a key had at a version, or at a time. Keys are spread over the
//! shards of subgroup 0 by a hash every member and client computes alike.

use std::collections::BTreeMap;

use derecho::persist::{Hlc, Persistent};
use derecho::protocol::{ShardIndex, ShardRef, SubgroupId, Version};
use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

// ANCHOR: store
/// The replicated store: every key's values, with their versions and times.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct KvStore {
    entries: BTreeMap<String, Persistent<Vec<u8>>>,
}

#[derecho::replicated]
impl KvStore {
    /// Stores `value` under `key`; returns the version it was stored at.
    pub fn put(&mut self, key: &str, value: &[u8]) -> u64 {
        // Only an ordered call's handler runs this: it always has a version.
        self.entries.entry(key.to_owned()).or_default().set(value.to_vec()).map_or(0, |v| v.as_u64())
    }

    /// The latest value of `key`, with its version. Asked through a handle with stable reads
    /// (`Handle::stable_reads`), the latest as of the shard's stable point: then reads are
    /// linearizable.
    pub fn get(&self, key: &str) -> Option<(u64, Vec<u8>)> {
        let values = self.entries.get(key)?;
        let found = match derecho::rpc::context().and_then(|c| c.stable) {
            Some(stable) => values.at_version(stable).ok().flatten(),
            None => values.latest_versioned(),
        };
        found.map(|(v, value)| (v.as_u64(), value.clone()))
    }

    /// The value `key` had at `version`: the last put at or before it.
    pub fn get_at(&self, key: &str, version: u64) -> Option<Vec<u8>> {
        let values = self.entries.get(key)?;
        values.at_version(Version::from_u64(version)).ok().flatten().map(|(_, value)| value.clone())
    }

    /// The value `key` had at `micros` (microseconds since the Unix epoch), with its version.
    /// Refused for a time after the shard's stable time (the time of its global persistence
    /// frontier): the answer is then the same at every replica, now and after a restart.
    pub fn get_at_time(&self, key: &str, micros: u64) -> Result<Option<(u64, Vec<u8>)>, String> {
        // The end of that microsecond.
        if micros > u64::MAX >> Hlc::LOGICAL_BITS {
            return Err(format!("time {micros} is out of range"));
        }
        let t = Hlc((micros << Hlc::LOGICAL_BITS) | ((1 << Hlc::LOGICAL_BITS) - 1));
        let Some(values) = self.entries.get(key) else {
            // No value yet; a time beyond the stable one is still refused.
            return Persistent::<Vec<u8>>::new().at_time(t).map(|_| None).map_err(|e| e.to_string());
        };
        let found = values.at_time(t).map_err(|e| e.to_string())?;
        Ok(found.map(|(v, value)| (v.as_u64(), value.clone())))
    }

    /// How many keys this replica holds.
    pub fn key_count(&self) -> u64 {
        self.entries.len() as u64
    }
}
// ANCHOR_END: store

/// The shard of subgroup 0 that holds `key`, among `shards` (FNV-1a of the key).
pub fn shard_of(key: &str, shards: u16) -> ShardRef {
    let h = derecho::hash::fnv1a64(key.as_bytes());
    ShardRef { subgroup: SubgroupId(0), shard: ShardIndex((h % u64::from(shards.max(1))) as u16) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use derecho::rpc::Replicated;

    #[test]
    fn versions_and_reads_at_a_version() {
        let mut s = KvStore::default();
        let mut k = Persistent::new();
        k.record(Version::from_u64(5), Hlc(50), b"a".to_vec()).unwrap();
        k.record(Version::from_u64(9), Hlc(90), b"b".to_vec()).unwrap();
        s.entries.insert("k".into(), k);
        assert_eq!(s.get("k"), Some((9, b"b".to_vec())));
        assert_eq!(s.get_at("k", 4), None);
        assert_eq!(s.get_at("k", 5), Some(b"a".to_vec()));
        assert_eq!(s.get_at("k", 8), Some(b"a".to_vec()));
        assert_eq!(s.get_at("k", 100), Some(b"b".to_vec()));
        let state = Replicated::snapshot(&s).unwrap();
        assert_eq!(<KvStore as Replicated>::restore(&state).unwrap().get_at("k", 6), Some(b"a".to_vec()));
        assert_eq!(KvStore::METHODS.len(), 5);
        // Outside a query there is no stable time: reads by time are refused.
        assert!(s.get_at_time("k", 1).unwrap_err().contains("stable time"));
        // Keys spread over the shards, deterministically.
        let spread: std::collections::BTreeSet<u16> =
            (0..64).map(|i| shard_of(&format!("key{i}"), 4).shard.0).collect();
        assert_eq!(spread.len(), 4);
        assert_eq!(shard_of("x", 4), shard_of("x", 4));
    }
}
