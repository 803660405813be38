//! Linearizability of a key-value history, key by key (each key a register), in the manner of
//! Wing and Gong's search (and porcupine's): find an order of the operations that respects real
//! time (an operation that responded before another was invoked comes first) in which every read
//! returns the value of the last write before it.
//!
//! A write that never responded (its caller failed) may have taken effect or not: the search may
//! place it anywhere after its invocation, or leave it out. A read that failed is not in the
//! history. The search is exhaustive with memoisation on (operations placed, current value), so
//! it is exact; histories of up to 64 operations per key keep it small.

use std::collections::{BTreeMap, BTreeSet};

/// One operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Who did it (for the report).
    pub client: u32,
    /// Logical time of the invocation.
    pub invoke: u64,
    /// Logical time of the response; `None` for a write whose outcome is unknown.
    pub response: Option<u64>,
    /// What it did.
    pub kind: OpKind,
}

/// A write of a value, or a read and what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote this value.
    Put(String),
    /// Read this value (`None`: the key had none).
    Get(Option<String>),
}

/// A history that no order explains, with the key's operations for the report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?} is not linearizable; its operations: {ops:#?}")]
pub struct NotLinearizable {
    /// The key.
    pub key: String,
    /// Its history.
    pub ops: Vec<Op>,
}

/// Checks every key's history.
///
/// # Errors
///
/// The first key whose history no order explains.
///
/// # Panics
///
/// If a key has more than 64 operations (the search's bound), or a read without a response.
pub fn check(history: &BTreeMap<String, Vec<Op>>) -> Result<(), NotLinearizable> {
    for (key, ops) in history {
        assert!(ops.len() <= 64, "key {key:?} has {} operations; the checker handles 64", ops.len());
        assert!(
            ops.iter().all(|o| o.response.is_some() || matches!(o.kind, OpKind::Put(_))),
            "a read without a response is not in a history"
        );
        if !register(ops) {
            return Err(NotLinearizable { key: key.clone(), ops: ops.clone() });
        }
    }
    Ok(())
}

/// Whether one register's operations are linearizable from an empty value.
fn register(ops: &[Op]) -> bool {
    // Operations that must be placed: every completed one.
    let required: u64 = (0..ops.len()).filter(|&i| ops[i].response.is_some()).fold(0, |m, i| m | 1 << i);
    let mut failed: BTreeSet<(u64, Option<String>)> = BTreeSet::new();
    search(ops, required, 0, None, &mut failed)
}

/// Depth-first: `placed` operations are ordered and the register holds `value`.
fn search(
    ops: &[Op],
    required: u64,
    placed: u64,
    value: Option<String>,
    failed: &mut BTreeSet<(u64, Option<String>)>,
) -> bool {
    if placed & required == required {
        return true; // what is left are writes with unknown outcome: leave them out
    }
    if failed.contains(&(placed, value.clone())) {
        return false;
    }
    // The earliest response among unplaced completed operations: nothing invoked after it can go
    // before it.
    let horizon =
        (0..ops.len()).filter(|&i| placed & (1 << i) == 0).filter_map(|i| ops[i].response).min().unwrap_or(u64::MAX);
    for i in 0..ops.len() {
        if placed & (1 << i) != 0 || ops[i].invoke > horizon {
            continue;
        }
        let next = match &ops[i].kind {
            OpKind::Put(v) => Some(v.clone()),
            OpKind::Get(seen) => {
                if *seen != value {
                    continue;
                }
                value.clone()
            }
        };
        if search(ops, required, placed | 1 << i, next, failed) {
            return true;
        }
    }
    failed.insert((placed, value));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: u32, invoke: u64, response: Option<u64>, v: &str) -> Op {
        Op { client, invoke, response, kind: OpKind::Put(v.into()) }
    }

    fn get(client: u32, invoke: u64, response: u64, v: Option<&str>) -> Op {
        Op { client, invoke, response: Some(response), kind: OpKind::Get(v.map(Into::into)) }
    }

    fn one(ops: Vec<Op>) -> Result<(), NotLinearizable> {
        check(&[("k".to_string(), ops)].into_iter().collect())
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        // Sequential: write a, read a, write b, read b.
        assert!(
            one(vec![
                put(0, 1, Some(2), "a"),
                get(1, 3, 4, Some("a")),
                put(0, 5, Some(6), "b"),
                get(1, 7, 8, Some("b"))
            ])
            .is_ok()
        );
        // A read concurrent with a write may see either value.
        assert!(one(vec![put(0, 1, Some(2), "a"), put(0, 3, Some(6), "b"), get(1, 4, 5, Some("a"))]).is_ok());
        assert!(one(vec![put(0, 1, Some(2), "a"), put(0, 3, Some(6), "b"), get(1, 4, 5, Some("b"))]).is_ok());
        // An empty read before any write.
        assert!(one(vec![get(1, 1, 2, None), put(0, 3, Some(4), "a")]).is_ok());
        // A write whose caller failed: it may have happened, or not.
        assert!(one(vec![put(0, 1, None, "x"), get(1, 5, 6, Some("x"))]).is_ok());
        assert!(one(vec![put(0, 1, None, "x"), get(1, 5, 6, None)]).is_ok());
    }

    #[test]
    fn violations_are_found() {
        // A stale read: b completed before the read began, yet the read saw a.
        let e = one(vec![put(0, 1, Some(2), "a"), put(0, 3, Some(4), "b"), get(1, 5, 6, Some("a"))]).unwrap_err();
        assert_eq!(e.key, "k");
        // A read of a value never written.
        assert!(one(vec![put(0, 1, Some(2), "a"), get(1, 3, 4, Some("z"))]).is_err());
        // Two reads that see the writes in opposite orders.
        assert!(
            one(vec![
                put(0, 1, Some(10), "a"),
                put(1, 1, Some(10), "b"),
                get(2, 11, 12, Some("a")),
                get(3, 13, 14, Some("b")),
                get(2, 15, 16, Some("a")),
            ])
            .is_err()
        );
        // A read that saw a value before it was written.
        assert!(one(vec![get(1, 1, 2, Some("a")), put(0, 3, Some(4), "a")]).is_err());
    }
}
