//! Ordered (atomic) and unordered multicast within one shard (PROTOCOLS §2).
//!
//! Counters are kept as counts (value + 1) so that a zeroed table means "nothing yet":
//! `received[j]` is `num_received[j] + 1`, `seq` is `seq_num + 1`, `delivered` is
//! `delivered_num + 1`.
//!
//! * Sending (§2.1): a message is a record appended to the sender's ring in its own row; the
//!   `sent` counter is bumped after it. Pushes are batched: one push of the new ring bytes, then
//!   one of the counters (data before counter).
//! * Total order (§2.2): message `k` of sender rank `r` among `S` senders has `seq = k * S + r`.
//!   `seq = received[j] * S + j` for the first sender `j` with the fewest messages received.
//!   Stable: `seq < min over members of their seq`. Delivered in seq order, each exactly once.
//! * Nulls (§2.3): a sender that sees another sender ahead of it publishes null indices so that
//!   round-robin delivery does not stall; an idle shard sends nothing.
//! * Unordered (§2.5): delivered on receipt, FIFO per sender, `received` then counts deliveries.
//! * Flow control: a sender reuses window and ring space only once every member has delivered
//!   what occupied it; a full window makes `send` report [`SendError::WindowFull`], never drop.

use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use super::ids::{NodeId, ShardRef, Time, Version, ViewId};
use super::layout::{DeliveryMode, ShardLayout};
use super::sst::{RECORD_HEADER_LEN, ShardColumns, SstMemory};

/// Kinds of records in a sender's ring.
const KIND_DATA: u8 = 1;
const KIND_NULL: u8 = 2;
const KIND_PAD: u8 = 3;

/// Why a message could not be sent now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// This member is not in that shard, or the shard does not exist.
    #[error("this member does not belong to {0}")]
    NotAMember(ShardRef),
    /// This member is in the shard but not one of its senders.
    #[error("this member is not a sender of {0}")]
    NotASender(ShardRef),
    /// The payload is longer than `payload_len_max`.
    #[error("payload of {len} bytes is above payload_len_max {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The window (or the ring) is full until earlier messages are delivered everywhere: try
    /// again after the next input.
    #[error("the send window of {0} is full")]
    WindowFull(ShardRef),
    /// A view change is under way (PROTOCOLS §3.3): try again once the next view is installed.
    #[error("{0} is wedged by a view change; send again in the next view")]
    Wedged(ShardRef),
    /// This member stopped (partitioned, removed, left): nothing more can be sent.
    #[error("this member has stopped: {0}")]
    Stopped(String),
}

/// A peer's row broke the protocol (PROTOCOLS §7): its messages are not read any more and the
/// driver should suspect it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowViolation {
    /// A membership column out of range or moving the wrong way (PROTOCOLS §3).
    #[error("membership column {column}: {reason}")]
    Membership {
        /// Which column.
        column: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A counter went backwards.
    #[error("{column} of {shard} went backwards from {was} to {now}")]
    CounterBackwards {
        /// The shard.
        shard: ShardRef,
        /// Which column.
        column: &'static str,
        /// Previous value.
        was: u64,
        /// New value.
        now: u64,
    },
    /// A record header that does not match what the counters promise.
    #[error("bad record in {shard} at ring position {pos}: {reason}")]
    BadRecord {
        /// The shard.
        shard: ShardRef,
        /// Position in the ring.
        pos: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A message delivered to the application, borrowed from the SST (zero copy).
#[derive(Debug)]
pub struct Delivered<'a> {
    /// The shard.
    pub shard: ShardRef,
    /// The sender.
    pub sender: NodeId,
    /// The sender's message index in this view.
    pub index: u64,
    /// The version (ordered shards only).
    pub version: Option<Version>,
    /// The sender's timestamp.
    pub timestamp: Time,
    /// The payload.
    pub payload: &'a [u8],
}

/// A message (or run of nulls) received and not yet delivered.
#[derive(Clone, Debug)]
struct Pending {
    first: u64,
    count: u64,
    data: bool,
    timestamp: u64,
    payload: Range<usize>,
}

/// Per sender, what this member has read from its ring.
#[derive(Clone, Debug, Default)]
struct FromSender {
    /// Indices received (contiguous): `num_received + 1`.
    received: u64,
    /// Byte position (monotonic) of the next record to read.
    read_pos: u64,
    /// Last `sent` counter seen (monotonicity check).
    sent_seen: u64,
    pending: VecDeque<Pending>,
    /// A violation was found: nothing more is read from this sender.
    broken: bool,
}

/// What this member sends into the shard.
#[derive(Clone, Debug, Default)]
struct Outgoing {
    /// Indices published (the `sent` column).
    next_index: u64,
    /// Byte position (monotonic) where the next record goes.
    write_pos: u64,
    /// Start of the oldest record not yet released by every member.
    head_pos: u64,
    /// Published records not yet released: (last index, end position).
    outstanding: VecDeque<(u64, u64)>,
    /// Ring bytes written since the last push: positions.
    unpushed: Option<Range<u64>>,
}

/// One shard's multicast state at one member.
#[derive(Clone, Debug)]
pub(crate) struct ShardState {
    pub(crate) id: ShardRef,
    mode: DeliveryMode,
    view: ViewId,
    cols: ShardColumns,
    row_len: usize,
    /// Table rows of the shard's members.
    member_rows: Vec<usize>,
    /// Table rows of the senders, in sender rank order.
    sender_rows: Vec<usize>,
    senders: Vec<NodeId>,
    /// Peers to push to (the shard's other members).
    pub(crate) push_to: Rc<[NodeId]>,
    my_row: usize,
    my_sender_rank: Option<usize>,
    window_len: u64,
    payload_len_max: usize,
    from: Vec<FromSender>,
    out: Outgoing,
    /// `seq_num + 1` published.
    seq: u64,
    /// `delivered_num + 1`.
    delivered: u64,
    /// Messages (not nulls) delivered here in this view.
    messages_delivered: u64,
    /// Counters changed since the last push.
    counters_dirty: bool,
    /// Largest number of this member's indices outstanding at once (for the window checker).
    pub(crate) outstanding_max_seen: u64,
    /// Received counts per sender, reused by each step (seq and nulls need them as a slice).
    received_scratch: Vec<u64>,
    /// Wedged (PROTOCOLS §3.3): no new sends or nulls, no normal delivery, and the published
    /// counters stay as they were; records are still read, for the ragged trim.
    pub(crate) frozen: bool,
    /// A new member waits for the shard's state before delivering (PROTOCOLS §3.5).
    pub(crate) awaiting_state: bool,
}

fn round16(n: usize) -> usize {
    n.next_multiple_of(16)
}

// ANCHOR: delivery_rule
/// PROTOCOLS §2.2 in counts: given how many indices have been received (contiguously) from each
/// sender, in sender rank order, the number of global sequence positions received contiguously
/// (`seq_num + 1`). With `j` the first sender with the fewest, it is `received[j] * S + j`.
///
/// # Panics
///
/// If there is no sender.
pub fn seq_count(received: &[u64]) -> u64 {
    let (j, m) = received.iter().copied().enumerate().min_by_key(|&(_, m)| m).expect("a shard has senders");
    m * received.len() as u64 + j as u64
}

/// PROTOCOLS §2.3 in counts: how many indices sender `r` must have published, given what it has
/// received from every sender: `received[q]` if `r < q`, `received[q] - 1` if `r > q`, the most
/// over the others. An idle shard (nothing received) needs nothing.
pub fn indices_needed(r: usize, received: &[u64]) -> u64 {
    received
        .iter()
        .enumerate()
        .filter(|&(q, _)| q != r)
        .map(|(q, &c)| if r < q { c } else { c.saturating_sub(1) })
        .max()
        .unwrap_or(0)
}

/// How many of sender `r`'s indices (out of `senders`) lie below `delivered` global sequence
/// positions, i.e. are delivered wherever `delivered` positions are: `ceil((delivered - r) / S)`.
pub fn indices_below(delivered: u64, senders: u64, r: u64) -> u64 {
    if delivered > r { (delivered - r).div_ceil(senders) } else { 0 }
}
// ANCHOR_END: delivery_rule

impl ShardState {
    #[allow(clippy::too_many_arguments)] // one call site (Node::new); a struct would only rename them
    pub(crate) fn new(
        layout: &ShardLayout,
        view_id: ViewId,
        cols: ShardColumns,
        row_len: usize,
        rank_of: impl Fn(NodeId) -> usize,
        me: NodeId,
        window_len: u32,
        payload_len_max: u32,
    ) -> Self {
        let member_rows: Vec<usize> = layout.members.iter().map(|&m| rank_of(m)).collect();
        let sender_rows: Vec<usize> = layout.senders.iter().map(|&s| rank_of(s)).collect();
        let push_to: Rc<[NodeId]> = layout.members.iter().copied().filter(|&m| m != me).collect();
        Self {
            id: layout.id,
            mode: layout.mode,
            view: view_id,
            cols,
            row_len,
            my_row: rank_of(me),
            my_sender_rank: layout.senders.iter().position(|&s| s == me),
            senders: layout.senders.clone(),
            from: vec![FromSender::default(); sender_rows.len()],
            member_rows,
            sender_rows,
            push_to,
            window_len: u64::from(window_len),
            payload_len_max: payload_len_max as usize,
            out: Outgoing::default(),
            seq: 0,
            delivered: 0,
            messages_delivered: 0,
            counters_dirty: false,
            outstanding_max_seen: 0,
            received_scratch: Vec::with_capacity(layout.senders.len()),
            frozen: false,
            awaiting_state: false,
        }
    }

    fn col(&self, row: usize, offset: usize) -> usize {
        row * self.row_len + offset
    }

    fn s(&self) -> u64 {
        self.senders.len() as u64
    }

    fn ring_abs(&self, row: usize, pos: u64) -> usize {
        self.col(row, self.cols.ring) + (pos % self.cols.ring_len as u64) as usize
    }

    /// Indices of this member released everywhere (their window and ring space reusable).
    fn released_indices<M: SstMemory>(&self, mem: &M, r: usize) -> u64 {
        match self.mode {
            DeliveryMode::Ordered => {
                indices_below(self.min_over_members(mem, self.cols.delivered_num), self.s(), r as u64)
            }
            DeliveryMode::Unordered => self.min_over_members(mem, self.cols.received + 8 * r),
        }
    }

    fn min_over_members<M: SstMemory>(&self, mem: &M, offset: usize) -> u64 {
        self.member_rows.iter().map(|&row| mem.load_u64(self.col(row, offset))).min().unwrap_or(0)
    }

    /// Releases this member's records that every member has delivered.
    fn release<M: SstMemory>(&mut self, mem: &M) {
        let Some(r) = self.my_sender_rank else { return };
        let released = self.released_indices(mem, r);
        while let Some(&(last, end)) = self.out.outstanding.front() {
            if last >= released {
                break;
            }
            self.out.head_pos = end;
            self.out.outstanding.pop_front();
        }
        if self.out.outstanding.is_empty() {
            self.out.head_pos = self.out.write_pos;
        }
    }

    /// If `count` more indices in a record of `payload` bytes fit the window and ring, the number
    /// of this member's indices released everywhere (which `append` needs too).
    fn fits<M: SstMemory>(&self, mem: &M, count: u64, payload: usize) -> Option<u64> {
        let r = self.my_sender_rank?;
        let released = self.released_indices(mem, r);
        if self.out.next_index + count > released + self.window_len {
            return None;
        }
        let ring_len = self.cols.ring_len as u64;
        let rec = (RECORD_HEADER_LEN + round16(payload)) as u64;
        let pos = self.out.write_pos % ring_len;
        let pad = if rec > ring_len - pos { ring_len - pos } else { 0 };
        (self.out.write_pos + pad + rec - self.out.head_pos <= ring_len).then_some(released)
    }

    /// Appends a record to this member's ring; the caller checked `fits`, which gave `released`.
    #[allow(clippy::too_many_arguments)] // private; each argument is one field of the record
    fn append<M: SstMemory>(
        &mut self,
        mem: &mut M,
        released: u64,
        now: Time,
        kind: u8,
        count: u64,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> u64 {
        let ring_len = self.cols.ring_len as u64;
        let rec = (RECORD_HEADER_LEN + round16(payload_len)) as u64;
        let start = self.out.write_pos;
        let mut pos = start;
        if rec > ring_len - pos % ring_len {
            // Pad to the end of the ring and wrap. A gap shorter than a header holds no pad
            // record (the reader skips it by position): writing one would run past the ring
            // into the next row (found by the simulator, SIM_SEED=60).
            let remaining = ring_len - pos % ring_len;
            if remaining >= RECORD_HEADER_LEN as u64 {
                let at = self.ring_abs(self.my_row, pos);
                let h = mem.slice_mut(at..at + RECORD_HEADER_LEN);
                h.fill(0);
                h[20] = KIND_PAD;
            }
            pos += remaining;
        }
        let at = self.ring_abs(self.my_row, pos);
        let index = self.out.next_index;
        {
            let h = mem.slice_mut(at..at + RECORD_HEADER_LEN);
            h[0..8].copy_from_slice(&index.to_le_bytes());
            h[8..16].copy_from_slice(&now.0.to_le_bytes());
            let len_field = if kind == KIND_NULL { count as u32 } else { payload_len as u32 };
            h[16..20].copy_from_slice(&len_field.to_le_bytes());
            h[20] = kind;
            h[21..32].fill(0);
        }
        if payload_len > 0 {
            fill(mem.slice_mut(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + payload_len));
        }
        let end = pos + rec;
        self.out.write_pos = end;
        self.out.next_index += count;
        self.out.outstanding.push_back((self.out.next_index - 1, end));
        self.outstanding_max_seen = self.outstanding_max_seen.max(self.out.next_index - released);
        self.out.unpushed = Some(match self.out.unpushed.take() {
            Some(r) => r.start..end,
            None => start..end,
        });
        mem.store_u64(self.col(self.my_row, self.cols.sent), self.out.next_index);
        self.counters_dirty = true;
        index
    }

    /// Sends a message: `fill` writes the payload in place in the ring.
    pub(crate) fn send<M: SstMemory>(
        &mut self,
        mem: &mut M,
        now: Time,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64, SendError> {
        if self.my_sender_rank.is_none() {
            return Err(SendError::NotASender(self.id));
        }
        if len > self.payload_len_max {
            return Err(SendError::TooLarge { len, max: self.payload_len_max });
        }
        if self.frozen {
            return Err(SendError::Wedged(self.id));
        }
        self.release(mem);
        let Some(released) = self.fits(mem, 1, len) else {
            return Err(SendError::WindowFull(self.id));
        };
        Ok(self.append(mem, released, now, KIND_DATA, 1, len, fill))
    }

    /// Whether a message of `len` bytes could be sent now.
    pub(crate) fn can_send<M: SstMemory>(&mut self, mem: &M, len: usize) -> bool {
        self.release(mem);
        !self.frozen && self.my_sender_rank.is_some() && len <= self.payload_len_max && self.fits(mem, 1, len).is_some()
    }

    /// Reads new records from every sender's row; returns violations found.
    pub(crate) fn receive<M: SstMemory>(&mut self, mem: &M, violations: &mut Vec<(NodeId, RowViolation)>) -> bool {
        let mut changed = false;
        let ring_len = self.cols.ring_len as u64;
        for j in 0..self.sender_rows.len() {
            if self.from[j].broken {
                continue;
            }
            let row = self.sender_rows[j];
            let sent = mem.load_u64(self.col(row, self.cols.sent));
            let f = &mut self.from[j];
            if sent < f.sent_seen {
                let v = RowViolation::CounterBackwards { shard: self.id, column: "sent", was: f.sent_seen, now: sent };
                f.broken = true;
                violations.push((self.senders[j], v));
                continue;
            }
            f.sent_seen = sent;
            let ring_base = row * self.row_len + self.cols.ring;
            let mut header = [0u8; RECORD_HEADER_LEN];
            while self.from[j].received < sent {
                let f = &mut self.from[j];
                let pos = f.read_pos % ring_len;
                if ring_len - pos < RECORD_HEADER_LEN as u64 {
                    // Too short for a header: the writer wrapped without a pad record.
                    f.read_pos += ring_len - pos;
                    continue;
                }
                mem.read(ring_base + pos as usize, &mut header);
                let index = u64::from_le_bytes(header[0..8].try_into().expect("8"));
                let timestamp = u64::from_le_bytes(header[8..16].try_into().expect("8"));
                let len = u64::from(u32::from_le_bytes(header[16..20].try_into().expect("4")));
                let bad = |reason| RowViolation::BadRecord { shard: self.id, pos: f.read_pos, reason };
                let (count, rec, data) = match header[20] {
                    // A record always fits at the start of the ring, so an honest writer never pads
                    // there; a pad at 0 would send this loop round the ring forever.
                    KIND_PAD if pos == 0 => (0, 0, false),
                    KIND_PAD => {
                        f.read_pos += ring_len - pos;
                        continue;
                    }
                    KIND_DATA if len as usize <= self.payload_len_max => {
                        (1, RECORD_HEADER_LEN + round16(len as usize), true)
                    }
                    KIND_DATA => (0, 0, false),
                    KIND_NULL if len >= 1 && len <= self.window_len => (len, RECORD_HEADER_LEN, false),
                    _ => (0, 0, false),
                };
                let problem = if count == 0 {
                    Some("unknown kind or length out of range")
                } else if index != f.received {
                    Some("index does not follow the previous record")
                } else if pos + rec as u64 > ring_len {
                    Some("record runs past the end of the ring")
                } else if f.received + count > sent {
                    Some("record covers indices beyond the sent counter")
                } else {
                    None
                };
                if let Some(reason) = problem {
                    let v = bad(reason);
                    f.broken = true;
                    violations.push((self.senders[j], v));
                    break;
                }
                let start = ring_base + pos as usize + RECORD_HEADER_LEN;
                let payload = if data { start..start + len as usize } else { start..start };
                f.pending.push_back(Pending { first: index, count, data, timestamp, payload });
                f.received += count;
                f.read_pos += rec as u64;
                changed = true;
            }
        }
        changed
    }

    /// After receiving: publishes `received` and `seq`, and sends the nulls §2.3 requires.
    pub(crate) fn update<M: SstMemory>(&mut self, mem: &mut M, now: Time) {
        if self.frozen {
            return;
        }
        if self.mode == DeliveryMode::Ordered {
            for j in 0..self.from.len() {
                let at = self.col(self.my_row, self.cols.received + 8 * j);
                if mem.load_u64(at) != self.from[j].received {
                    mem.store_u64(at, self.from[j].received);
                    self.counters_dirty = true;
                }
            }
            self.refresh_received_scratch();
            let seq = seq_count(&self.received_scratch);
            if seq != self.seq {
                debug_assert!(seq > self.seq, "seq went backwards");
                self.seq = seq;
                mem.store_u64(self.col(self.my_row, self.cols.seq_num), seq);
                self.counters_dirty = true;
            }
            self.send_nulls(mem, now);
        }
        self.release(mem);
    }

    /// PROTOCOLS §2.3: if sender `q` reached index `n`, this sender (rank `r`) must have sent
    /// indices up to `n` if `r < q`, up to `n - 1` if `r > q`.
    fn send_nulls<M: SstMemory>(&mut self, mem: &mut M, now: Time) {
        let Some(r) = self.my_sender_rank else { return };
        self.refresh_received_scratch();
        let needed = indices_needed(r, &self.received_scratch);
        if needed <= self.out.next_index {
            return;
        }
        self.release(mem);
        let mut count = needed - self.out.next_index;
        // As many as the window allows now; the rest once it opens.
        while count > 0 {
            if let Some(released) = self.fits(mem, count, 0) {
                self.append(mem, released, now, KIND_NULL, count, 0, |_| {});
                break;
            }
            count /= 2;
        }
    }

    /// Delivers what may be delivered; returns how many application messages were delivered.
    pub(crate) fn deliver<M: SstMemory>(&mut self, mem: &mut M, f: &mut impl FnMut(Delivered<'_>)) -> usize {
        if self.frozen || self.awaiting_state {
            return 0;
        }
        let mut n = 0;
        match self.mode {
            DeliveryMode::Ordered => {
                // ANCHOR: stable
                let stable = self.min_over_members(mem, self.cols.seq_num);
                let s = self.s();
                while self.delivered < stable {
                    let seq = self.delivered;
                    let (j, k) = ((seq % s) as usize, seq / s);
                    // ANCHOR_END: stable
                    let p = self.from[j].pending.front().expect("a stable message was received");
                    debug_assert!(p.first <= k && k < p.first + p.count, "pending out of step with seq");
                    n += self.deliver_position(mem, j, k, seq, f);
                    self.delivered += 1;
                }
                let at = self.col(self.my_row, self.cols.delivered_num);
                if mem.load_u64(at) != self.delivered {
                    mem.store_u64(at, self.delivered);
                    self.counters_dirty = true;
                }
            }
            DeliveryMode::Unordered => {
                for j in 0..self.from.len() {
                    let mut delivered_to = None;
                    while let Some(p) = self.from[j].pending.pop_front() {
                        if p.data {
                            self.messages_delivered += 1;
                            f(Delivered {
                                shard: self.id,
                                sender: self.senders[j],
                                index: p.first,
                                version: None,
                                timestamp: Time(p.timestamp),
                                payload: mem.slice(p.payload.clone()),
                            });
                            n += 1;
                        }
                        delivered_to = Some(p.first + p.count);
                    }
                    if let Some(d) = delivered_to {
                        mem.store_u64(self.col(self.my_row, self.cols.received + 8 * j), d);
                        self.counters_dirty = true;
                    }
                }
            }
        }
        self.release(mem);
        n
    }

    /// The pushes this shard owes its peers: new ring bytes first, then the counters.
    pub(crate) fn flush(&mut self, out: &mut impl FnMut(Range<usize>)) {
        if let Some(r) = self.out.unpushed.take() {
            let ring_len = self.cols.ring_len as u64;
            let base = self.col(self.my_row, self.cols.ring);
            let (start, end) = (r.start, r.end);
            if end - start >= ring_len {
                out(base..base + ring_len as usize);
            } else {
                let (a, b) = (start % ring_len, end % ring_len);
                if a < b || b == 0 {
                    let b = if b == 0 { ring_len } else { b };
                    out(base + a as usize..base + b as usize);
                } else {
                    out(base + a as usize..base + ring_len as usize);
                    out(base..base + b as usize);
                }
            }
        }
        if self.counters_dirty {
            self.counters_dirty = false;
            let c = self.cols.counters(self.senders.len());
            let row = self.my_row * self.row_len;
            out(row + c.start..row + c.end);
        }
    }

    /// Publishes this member's `persisted` column (a version plus one); pushed with the
    /// counters.
    pub(crate) fn set_persisted<M: SstMemory>(&mut self, mem: &mut M, value: u64) {
        let at = self.col(self.my_row, self.cols.persisted);
        if mem.load_u64(at) < value {
            mem.store_u64(at, value);
            self.counters_dirty = true;
        }
    }

    /// The minimum over the shard's members of their `persisted` columns.
    pub(crate) fn persisted_everywhere<M: SstMemory>(&self, mem: &M) -> u64 {
        self.min_over_members(mem, self.cols.persisted)
    }

    /// Whether pushes are owed.
    pub(crate) fn dirty(&self) -> bool {
        self.counters_dirty || self.out.unpushed.is_some()
    }

    /// Messages delivered here so far (`delivered_num + 1`), ordered shards.
    pub(crate) fn delivered_count(&self) -> u64 {
        self.delivered
    }

    /// Messages (not nulls) delivered here in this view, in either mode.
    pub(crate) fn messages_delivered(&self) -> u64 {
        self.messages_delivered
    }

    /// Wedges the shard (PROTOCOLS §3.3 step 1): from now on nothing new is published. Returns
    /// the published `received` column per sender, frozen: in an ordered shard what was
    /// received, in an unordered one what was delivered. Every message delivered anywhere is
    /// within every member's frozen counts, because delivery needed every member's published
    /// `seq_num`, which this member no longer raises.
    pub(crate) fn freeze<M: SstMemory>(&mut self, mem: &M) -> Vec<u64> {
        self.frozen = true;
        (0..self.senders.len()).map(|j| mem.load_u64(self.col(self.my_row, self.cols.received + 8 * j))).collect()
    }

    /// Delivers global position `seq` (message `k` of sender rank `j`, at the front of its
    /// pending queue) if it is data, and drops the pending record once its last index is
    /// delivered. Returns the application messages delivered (0 or 1).
    #[inline]
    fn deliver_position<M: SstMemory>(
        &mut self,
        mem: &M,
        j: usize,
        k: u64,
        seq: u64,
        f: &mut impl FnMut(Delivered<'_>),
    ) -> usize {
        let p = self.from[j].pending.front().expect("the caller checked the pending record");
        let n = if p.data {
            self.messages_delivered += 1;
            f(Delivered {
                shard: self.id,
                sender: self.senders[j],
                index: k,
                version: Some(Version::new(self.view, seq)),
                timestamp: Time(p.timestamp),
                payload: mem.slice(p.payload.clone()),
            });
            1
        } else {
            0
        };
        if k + 1 == p.first + p.count {
            self.from[j].pending.pop_front();
        }
        n
    }

    /// Ragged-edge delivery (PROTOCOLS §3.3 step 7): delivers, in `seq` order, every message
    /// whose index is below `trim[sender]` (counts) and nothing above. Returns how many
    /// application messages were delivered, or `Err` with the sender whose messages below its
    /// trim were not all received here (a protocol bug: the trim is a minimum that includes this
    /// member's frozen counts).
    pub(crate) fn deliver_trimmed<M: SstMemory>(
        &mut self,
        mem: &mut M,
        trim: &[u64],
        f: &mut impl FnMut(Delivered<'_>),
    ) -> Result<usize, NodeId> {
        if self.awaiting_state {
            // Without the state, deliveries would apply to nothing; the member stops at the
            // install instead (see `Node::install`).
            return Ok(0);
        }
        let mut n = 0;
        match self.mode {
            DeliveryMode::Ordered => {
                let s = self.s();
                // Trims come from another member's row: checked arithmetic, and a trim beyond
                // what was received here is reported below, never trusted.
                let mut end = 0u64;
                for (j, &t) in trim.iter().enumerate() {
                    if t == 0 {
                        continue;
                    }
                    let Some(e) = (t - 1).checked_mul(s).and_then(|x| x.checked_add(j as u64 + 1)) else {
                        return Err(self.senders[j]);
                    };
                    if t > self.from[j].received {
                        return Err(self.senders[j]);
                    }
                    end = end.max(e);
                }
                while self.delivered < end {
                    let seq = self.delivered;
                    let (j, k) = ((seq % s) as usize, seq / s);
                    if k < trim[j] {
                        if self.from[j].pending.front().is_none_or(|p| p.first > k) {
                            return Err(self.senders[j]);
                        }
                        n += self.deliver_position(mem, j, k, seq, f);
                    }
                    self.delivered += 1;
                }
            }
            DeliveryMode::Unordered => {
                for (j, &t) in trim.iter().enumerate().take(self.from.len()) {
                    while let Some(p) = self.from[j].pending.front() {
                        if p.first >= t {
                            break;
                        }
                        if p.data {
                            self.messages_delivered += 1;
                            f(Delivered {
                                shard: self.id,
                                sender: self.senders[j],
                                index: p.first,
                                version: None,
                                timestamp: Time(p.timestamp),
                                payload: mem.slice(p.payload.clone()),
                            });
                            n += 1;
                        }
                        self.from[j].pending.pop_front();
                    }
                }
            }
        }
        Ok(n)
    }

    /// After ragged delivery in an ordered shard: this member's own messages above its trim,
    /// oldest first, as `(timestamp, payload)`, to be sent again in the next view (PROTOCOLS
    /// §3.3 step 9). Unordered shards re-send nothing (their messages may already have been
    /// delivered on receipt somewhere).
    pub(crate) fn undelivered_own<M: SstMemory>(&self, mem: &M, trim: &[u64]) -> Vec<(Time, Vec<u8>)> {
        let Some(r) = self.my_sender_rank else { return Vec::new() };
        if self.mode == DeliveryMode::Unordered {
            return Vec::new();
        }
        self.from[r]
            .pending
            .iter()
            .filter(|p| p.data && p.first >= trim[r])
            .map(|p| (Time(p.timestamp), mem.slice(p.payload.clone()).to_vec()))
            .collect()
    }

    /// Copies the received counts into the reused scratch buffer (no allocation per step).
    fn refresh_received_scratch(&mut self) {
        self.received_scratch.clear();
        self.received_scratch.extend(self.from.iter().map(|f| f.received));
    }

    /// Indices this member has published as a sender.
    pub(crate) fn sent_count(&self) -> u64 {
        self.out.next_index
    }

    /// What this member has delivered, as a frontier: in ordered mode one count (the delivered
    /// positions), in unordered mode one count per sender (that sender's indices delivered).
    /// Nulls count too.
    pub(crate) fn delivery_frontier<M: SstMemory>(&self, mem: &M) -> Vec<u64> {
        match self.mode {
            DeliveryMode::Ordered => vec![self.delivered],
            DeliveryMode::Unordered => (0..self.senders.len())
                .map(|j| mem.load_u64(self.col(self.my_row, self.cols.received + 8 * j)))
                .collect(),
        }
    }

    /// Whether every member of the shard has delivered at least `frontier` (as returned by
    /// [`ShardState::delivery_frontier`]), sender by sender in unordered mode.
    pub(crate) fn delivered_everywhere<M: SstMemory>(&self, mem: &M, frontier: &[u64]) -> bool {
        match self.mode {
            DeliveryMode::Ordered => frontier.iter().all(|&f| self.min_over_members(mem, self.cols.delivered_num) >= f),
            DeliveryMode::Unordered => frontier
                .iter()
                .enumerate()
                .all(|(j, &f)| j < self.senders.len() && self.min_over_members(mem, self.cols.received + 8 * j) >= f),
        }
    }

    /// A number that grows whenever what every member has delivered grows (a sum of minimums
    /// over members, each monotonic): a driver wakes waiters on [`ShardState::delivered_everywhere`]
    /// when it changes.
    pub(crate) fn delivered_everywhere_progress<M: SstMemory>(&self, mem: &M) -> u64 {
        match self.mode {
            DeliveryMode::Ordered => self.min_over_members(mem, self.cols.delivered_num),
            DeliveryMode::Unordered => {
                (0..self.senders.len()).map(|j| self.min_over_members(mem, self.cols.received + 8 * j)).sum()
            }
        }
    }

    /// This member's indices released by every member (0 if it is not a sender): when it grows,
    /// a full window has room again.
    pub(crate) fn released<M: SstMemory>(&self, mem: &M) -> u64 {
        self.my_sender_rank.map_or(0, |r| self.released_indices(mem, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_count_table() {
        // (received per sender, seq_num + 1)
        let cases: &[(&[u64], u64)] = &[
            (&[0, 0, 0], 0), // nothing: seq_num = -1
            (&[1, 0, 0], 1), // seq 0 (k0 of r0) received
            (&[1, 1, 0], 2), // seqs 0, 1
            (&[1, 1, 1], 3), // one full round
            (&[2, 2, 1], 5), // r2 lacks k1: seqs 0..=4
            (&[2, 1, 2], 4), // r1 lacks k1: seqs 0..=3
            (&[5], 5),       // a single sender: its count
            (&[3, 7, 9], 9), // r0 at 3: 3 * 3 + 0
        ];
        for &(received, want) in cases {
            assert_eq!(seq_count(received), want, "received {received:?}");
        }
    }

    #[test]
    fn indices_needed_table() {
        // (my rank, received per sender, indices I must have published)
        let cases: &[(usize, &[u64], u64)] = &[
            (0, &[0, 0, 0], 0), // idle shard: no nulls
            (0, &[0, 0, 3], 3), // r0 < r2, r2 at index 2: I need indices 0..=2
            (2, &[3, 0, 0], 2), // r2 > r0, r0 at index 2: I need indices 0..=1
            (1, &[1, 0, 4], 4), // the most over the others
            (1, &[0, 9, 0], 0), // my own count does not count
        ];
        for &(r, received, want) in cases {
            assert_eq!(indices_needed(r, received), want, "rank {r}, received {received:?}");
        }
    }

    #[test]
    fn nulls_never_go_beyond_what_lets_others_deliver() {
        // After publishing what is needed, the sequence number of the sender with the highest
        // count is deliverable: seq_count covers it.
        for s in 1..5usize {
            for r in 0..s {
                for lead in 0..s {
                    let mut received = vec![0u64; s];
                    received[lead] = 4;
                    let need = indices_needed(r, &received);
                    received[r] = received[r].max(need);
                    for q in 0..s {
                        if q != lead && q != r {
                            received[q] = indices_needed(q, &received).max(received[q]);
                        }
                    }
                    // Every member of the round before the leader's last message is there.
                    assert!(seq_count(&received) >= 3 * s as u64 + lead as u64, "s {s} r {r} lead {lead} {received:?}");
                }
            }
        }
    }

    #[test]
    fn indices_below_table() {
        // (delivered positions, senders, rank, indices of that rank below)
        let cases =
            [(0, 3, 0, 0), (1, 3, 0, 1), (1, 3, 1, 0), (3, 3, 2, 1), (4, 3, 0, 2), (7, 3, 1, 2), (10, 1, 0, 10)];
        for (d, s, r, want) in cases {
            assert_eq!(indices_below(d, s, r), want, "delivered {d}, S {s}, r {r}");
        }
    }
}
