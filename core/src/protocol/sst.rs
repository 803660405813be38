//! The shared state table (PROTOCOLS §1): its row layout and the memory it lives in.
//!
//! One row per member, in rank order, every row with the same layout. A member writes only its
//! own row and pushes ranges of it to the others; it reads the others' rows from its own copy.
//! Counters are little-endian `u64`s at 8-byte aligned offsets; message rings are 64-byte aligned.
//!
//! Row layout: first the membership section (PROTOCOLS §3, pushed to every member of the view),
//! then, for each shard of the view in layout order, its multicast columns (all rows have every
//! shard's columns; only the shard's members use them):
//!
//! ```text
//! changes[C]     64 B each: a proposed change (node u32, kind u8, address length u8, address)
//! frozen[T]      u64 per shard and sender: the received counts frozen when this member wedged
//! trim[T]        u64 per shard and sender: the final ragged trim (valid once final_ready)
//! suspected      bitmask words, one bit per rank
//! heartbeat, wedged, leaving, proposer, num_changes, num_acked, final_len, final_ready   u64 each
//! ```
//!
//! The counters come last, so that one push of the whole section (copied in ascending order)
//! lands the data before the counters that announce it.
//!
//! Multicast columns of each shard:
//!
//! ```text
//! seq_num        i64   highest seq such that everything up to it was received here (§2.2)
//! delivered_num  i64   highest seq delivered here (ordered shards)
//! sent           u64   message indices this row's owner published as a sender (incl. nulls)
//! received[S]    u64   per sender: indices received contiguously (num_received + 1); in an
//!                      unordered shard, indices delivered
//! ring           ring_len bytes: this row's owner's messages as a sender, as records
//! ```
//!
//! A record is 16-byte aligned: a 32-byte header (`index u64`, `timestamp u64`, `len u32`,
//! `kind u8`, padding) and, for data, `len` payload bytes. A null record covers `len` consecutive
//! indices (coalesced nulls); a pad record fills the end of the ring before a wrap.

use std::ops::Range;

use super::layout::View;
use super::limits::Limits;

/// The memory of one member's copy of the table. Reads may race with peers writing (shared
/// memory, RDMA): implementations read with atomic loads, and `load_u64` has acquire ordering
/// so that data pushed before a counter is visible after it.
pub trait SstMemory {
    /// Length in bytes.
    fn len(&self) -> usize;

    /// Whether the table is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads the `u64` at an 8-byte aligned offset, with acquire ordering.
    fn load_u64(&self, offset: usize) -> u64;

    /// Stores a `u64` at an 8-byte aligned offset (this member's own row only).
    fn store_u64(&mut self, offset: usize, value: u64);

    /// Copies bytes out.
    fn read(&self, offset: usize, dst: &mut [u8]);

    /// Borrows bytes that the protocol guarantees stable while borrowed (a received message
    /// not yet released by flow control).
    fn slice(&self, range: Range<usize>) -> &[u8];

    /// Borrows bytes of this member's own row for writing (nobody else writes them).
    fn slice_mut(&mut self, range: Range<usize>) -> &mut [u8];
}

/// A table in ordinary memory: the simulator's, and the TCP driver's.
#[derive(Clone, Debug)]
pub struct HeapMemory {
    /// 64-byte aligned storage.
    words: Vec<[u64; 8]>,
    len: usize,
}

impl HeapMemory {
    /// A zeroed table of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self { words: vec![[0; 8]; len.div_ceil(64)], len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` is a contiguous allocation of `8 * 8 * words.len() >= len` initialised
        // bytes; u8 has no alignment or validity requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// Applies a push from a peer: bytes at `offset` (the simulator's and TCP's way of
    /// receiving one).
    ///
    /// # Panics
    ///
    /// If the range is outside the table (the caller validates foreign input first).
    pub fn apply(&mut self, offset: usize, bytes: &[u8]) {
        self.bytes_mut()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
}

impl SstMemory for HeapMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u64(&self, offset: usize) -> u64 {
        assert!(offset.is_multiple_of(8), "unaligned u64 at {offset}");
        u64::from_le_bytes(self.bytes()[offset..offset + 8].try_into().expect("8 bytes"))
    }

    fn store_u64(&mut self, offset: usize, value: u64) {
        assert!(offset.is_multiple_of(8), "unaligned u64 at {offset}");
        self.bytes_mut()[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn read(&self, offset: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.bytes()[offset..offset + dst.len()]);
    }

    fn slice(&self, range: Range<usize>) -> &[u8] {
        &self.bytes()[range]
    }

    fn slice_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        &mut self.bytes_mut()[range]
    }
}

/// Offsets of one shard's columns within a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardColumns {
    /// `seq_num`.
    pub seq_num: usize,
    /// `delivered_num`.
    pub delivered_num: usize,
    /// `sent`.
    pub sent: usize,
    /// `received[0]`; sender `i`'s column is at `received + 8 * i`.
    pub received: usize,
    /// `persisted`: one more than the highest version of the shard durable on this member
    /// (0: none), PROTOCOLS §4's `persisted_num`; after the `received` columns.
    pub persisted: usize,
    /// Start of the ring.
    pub ring: usize,
    /// Length of the ring.
    pub ring_len: usize,
}

impl ShardColumns {
    /// The counters, from `seq_num` to `persisted`: pushed together after data.
    pub fn counters(&self, _senders: usize) -> Range<usize> {
        self.seq_num..self.persisted + 8
    }
}

/// Length of one proposed change in the membership section.
pub const CHANGE_LEN: usize = 64;

/// Offsets of the membership columns within a row (PROTOCOLS §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GmsColumns {
    /// `changes[0]`; change `i` is at `changes + CHANGE_LEN * i`.
    pub changes: usize,
    /// Capacity of `changes`.
    pub changes_max: usize,
    /// Per shard (view order): offset of `frozen[0]` (one `u64` per sender).
    pub frozen: Vec<usize>,
    /// Per shard (view order): offset of `trim[0]` (one `u64` per sender).
    pub trim: Vec<usize>,
    /// First word of the suspicion bitmask.
    pub suspected: usize,
    /// Words of the bitmask.
    pub suspected_words: usize,
    /// First counter (`heartbeat`); the others follow in the order of [`GmsCounter`].
    pub counters: usize,
    /// End of the section (a multiple of 64).
    pub end: usize,
}

/// The counters of the membership section, in row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GmsCounter {
    /// Bumped every heartbeat period.
    Heartbeat = 0,
    /// 1 once this member stopped sending new multicasts in this view.
    Wedged,
    /// 1 once this member asked to leave.
    Leaving,
    /// `rank + 1` of the leader whose change list `changes` holds (0: none).
    Proposer,
    /// Changes in `changes`.
    NumChanges,
    /// How many of the proposer's changes this member acknowledged.
    NumAcked,
    /// Changes in the final (installed) list, once `final_ready`.
    FinalLen,
    /// 1 once this row carries the view's final change list and trims.
    FinalReady,
}

impl GmsColumns {
    /// Number of counters.
    pub const COUNTERS: usize = 8;

    /// Offset of a counter.
    pub fn counter(&self, c: GmsCounter) -> usize {
        self.counters + 8 * c as usize
    }

    /// The counters' range (pushed after the data).
    pub fn counter_range(&self) -> Range<usize> {
        self.counters..self.counters + 8 * Self::COUNTERS
    }

    /// The data's range (changes, frozen counts, trims, suspicions).
    pub fn data_range(&self) -> Range<usize> {
        self.changes..self.counters
    }
}

/// The layout of every row of a view's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLayout {
    /// Bytes per row (a multiple of 64).
    pub row_len: usize,
    /// The membership section.
    pub gms: GmsColumns,
    /// Columns of each shard, in the view's shard order.
    pub shards: Vec<ShardColumns>,
    /// Rows in the table.
    pub rows: usize,
}

/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 32;

impl RowLayout {
    /// Computes the layout of `view`'s table.
    pub fn new(view: &View, limits: &Limits) -> Self {
        let changes_max = limits.changes_max as usize;
        let mut off = CHANGE_LEN * changes_max;
        let mut frozen = Vec::with_capacity(view.shards.len());
        let mut trim = Vec::with_capacity(view.shards.len());
        for s in &view.shards {
            frozen.push(off);
            off += 8 * s.senders.len();
            trim.push(off);
            off += 8 * s.senders.len();
        }
        let suspected = off;
        let suspected_words = view.members.len().div_ceil(64).max(1);
        off += 8 * suspected_words;
        let counters = off;
        off = (off + 8 * GmsColumns::COUNTERS).next_multiple_of(64);
        let gms = GmsColumns { changes: 0, changes_max, frozen, trim, suspected, suspected_words, counters, end: off };
        let mut shards = Vec::with_capacity(view.shards.len());
        for s in &view.shards {
            let seq_num = off;
            let delivered_num = off + 8;
            let sent = off + 16;
            let received = off + 24;
            let persisted = received + 8 * s.senders.len();
            off = (persisted + 8).next_multiple_of(64);
            let ring = off;
            let ring_len = limits.ring_len as usize;
            off += ring_len;
            shards.push(ShardColumns { seq_num, delivered_num, sent, received, persisted, ring, ring_len });
        }
        Self { row_len: off.max(64).next_multiple_of(64), gms, shards, rows: view.members.len() }
    }

    /// Bytes of the whole table.
    pub fn table_len(&self) -> usize {
        self.row_len * self.rows
    }

    /// Offset of row `rank`.
    pub fn row(&self, rank: usize) -> usize {
        rank * self.row_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::layout::DeliveryMode;
    use crate::protocol::layout::tests::one_shard_view;

    #[test]
    fn columns_are_aligned_and_disjoint() {
        let view = one_shard_view(3, &[0, 1, 2], DeliveryMode::Ordered);
        let limits = Limits { ring_len: 4096, payload_len_max: 1000, ..Limits::default() };
        let l = RowLayout::new(&view, &limits);
        let c = &l.shards[0];
        assert_eq!(c.seq_num % 8, 0);
        assert_eq!(c.ring % 64, 0);
        assert!(c.received + 8 * 3 <= c.persisted && c.persisted + 8 <= c.ring);
        assert_eq!(l.row_len % 64, 0);
        assert!(c.ring + c.ring_len <= l.row_len);
        assert_eq!(l.table_len(), 3 * l.row_len);
        assert_eq!(c.counters(3), c.seq_num..c.received + 32);
    }

    #[test]
    fn heap_memory_round_trips_words_and_bytes() {
        let mut m = HeapMemory::new(100);
        m.store_u64(8, 0xdead_beef);
        assert_eq!(m.load_u64(8), 0xdead_beef);
        m.slice_mut(20..23).copy_from_slice(b"abc");
        assert_eq!(m.slice(20..23), b"abc");
        let mut out = [0u8; 3];
        m.read(20, &mut out);
        assert_eq!(&out, b"abc");
        m.apply(50, b"xyz");
        assert_eq!(m.slice(50..53), b"xyz");
    }
}
